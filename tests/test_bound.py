import math

import pytest
import torch

from skivcnf.conditional import SolverOptions, solve_constraint
from skivcnf.conditional.bound import (
    OBJECTIVES,
    BoundTerms,
    bound_integrand,
    bound_terms,
    importance_weighted_bound,
    masked_bound,
)
from skivcnf.conditional.posteriors import GaussianPosterior, prior_parameters, rsample
from skivcnf.conditional.warm_starts import draw_guesses

from .helpers import affine_gaussian, gaussian_conditional, make_flow

HIDDEN = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)


def test_exact_integrand_gradcheck(generator):
    flow = make_flow(4, generator, n_blocks=2, hidden_features=(8,))
    y = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    x_hidden = torch.randn(3, 4, generator=generator, dtype=torch.float64)

    def integrand(x, yy):
        return bound_integrand(flow, yy, HIDDEN, x, torch.zeros(3, dtype=torch.float64),
                               options=SolverOptions(tol=1e-13))[0]

    inputs = (x_hidden.requires_grad_(), y.requires_grad_())
    assert torch.autograd.gradcheck(integrand, inputs, atol=1e-6)


def test_integrand_is_log_marginal_under_the_exact_posterior(generator):
    """For an affine flow, log w = log p(y^O) for every draw of the exact latent conditional."""
    flow = make_flow(4, generator, n_blocks=2, hidden_features=())
    mean, cov = affine_gaussian(flow)
    y = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    for row in range(3):
        h = HIDDEN[row]
        cond_mean, cond_cov, log_marginal = gaussian_conditional(mean, cov, y[row], h)
        draws = torch.distributions.MultivariateNormal(cond_mean, cond_cov).sample((5,))
        completed = y[row].repeat(5, 1)
        completed[:, h] = draws
        latent = flow(completed).detach()
        # q(x^H) = the latent conditional: the image of N(cond_mean, cond_cov) under g^H.
        block = flow.jacobian(completed[:1])[0][h][:, h].detach()
        q = torch.distributions.MultivariateNormal(latent[0, h] - block @ (draws[0] - cond_mean),
                                                   block @ cond_cov @ block.T)
        x_hidden = torch.zeros(5, 4, dtype=torch.float64)
        x_hidden[:, h] = latent[:, h]
        log_w, _ = bound_integrand(flow, y[row].repeat(5, 1), h.repeat(5, 1), x_hidden, q.log_prob(latent[:, h]))
        torch.testing.assert_close(log_w.detach(), torch.full((5,), log_marginal, dtype=torch.float64),
                                   atol=1e-9, rtol=0)


def _projected_gradients(flow, y, x_hidden, logdet, generator, warm, direction):
    x = x_hidden.clone().requires_grad_()
    params = list(flow.parameters())
    log_w, _ = bound_integrand(flow, y, HIDDEN, x, torch.zeros(3, dtype=torch.float64), logdet,
                               options=SolverOptions(tol=1e-12), warm_start=warm, generator=generator)
    grads = torch.autograd.grad(log_w.sum(), [x, *params], allow_unused=True)
    along = sum((g * d).sum() for g, d in zip(grads[1:], direction, strict=True) if g is not None)
    return torch.cat([grads[0][HIDDEN], along.reshape(1)])


def test_hutchinson_values_equal_exact(generator):
    flow = make_flow(4, generator, n_blocks=2, hidden_features=(8,))
    y = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    x_hidden = torch.where(HIDDEN, torch.randn(3, 4, generator=generator, dtype=torch.float64), 0.0)
    log_q = torch.randn(3, generator=generator, dtype=torch.float64)
    values = {logdet: bound_integrand(flow, y, HIDDEN, x_hidden, log_q, logdet, options=SolverOptions(tol=1e-12),
                                      generator=generator)[0].detach() for logdet in ("exact", "hutchinson")}
    # Both take the log-determinants from the same full Jacobians: equal to rounding.
    torch.testing.assert_close(values["hutchinson"], values["exact"], atol=1e-10, rtol=0)


@pytest.mark.parametrize("logdet", ["hutchinson", "clade", "nlade"])
def test_stochastic_gradients_match_exact_in_expectation(generator, logdet):
    # c = 0.6: the roulette estimator of log|det G| has finite variance (see logdet.py).
    flow = make_flow(4, generator, n_blocks=2, hidden_features=(8,), lipschitz_coeff=0.6)
    y = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    x_hidden = torch.where(HIDDEN, torch.randn(3, 4, generator=generator, dtype=torch.float64), 0.0)
    warm = solve_constraint(flow, y, HIDDEN, x_hidden, options=SolverOptions(tol=1e-12)).solution
    direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in flow.parameters()]
    exact = _projected_gradients(flow, y, x_hidden, "exact", generator, warm, direction)
    n = 200 if logdet == "nlade" else 400  # NLADE's Neumann series make each draw dearer
    draws = torch.stack([_projected_gradients(flow, y, x_hidden, logdet, generator, warm, direction)
                         for _ in range(n)])
    z = (draws.mean(0) - exact) / (draws.std(0) / n**0.5)
    assert bool((z.abs() < 3).all()), z


def test_importance_weighted_bound_is_tighter_than_elbo(generator):
    flow = make_flow(4, generator, n_blocks=2, hidden_features=(8,))
    y = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        terms = bound_terms(flow, y, HIDDEN, prior_parameters(3, 4, torch.float64), n_samples=64, generator=generator)
    assert bool((importance_weighted_bound(terms.log_weight) >= terms.log_weight.mean(0)).all())
    assert terms.samples.shape == (64, 3, 4) and bool(terms.converged.all())


def test_elbo_is_differentiable_in_posterior_parameters(generator):
    flow = make_flow(4, generator, n_blocks=2, hidden_features=(8,))
    y = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    posterior = GaussianPosterior(3, 4, n_reflections=2, generator=generator).double()
    state = generator.get_state()
    terms = bound_terms(flow, y, HIDDEN, posterior(), n_samples=4, generator=generator)
    terms.log_weight.mean(0).sum().backward()
    assert bool((posterior.mean.grad[~HIDDEN] == 0).all())  # observed coordinates play no part
    # Reparameterised: x^H = mean^H + ..., and log q does not depend on the mean, so the mean's
    # gradient is the draws' average gradient of log w. Same draws, same integrand: to rounding.
    generator.set_state(state)
    with torch.no_grad():
        x_hidden, log_q = rsample(posterior(), HIDDEN, 4, generator)
    x = x_hidden.reshape(-1, 4).requires_grad_()
    start = draw_guesses(flow, y, HIDDEN, x_hidden)  # bound_terms' guesses: the same solutions
    log_w, _ = bound_integrand(flow, y.repeat(4, 1), HIDDEN.repeat(4, 1), x, log_q.reshape(-1), warm_start=start)
    log_w.sum().backward()
    expected = torch.where(HIDDEN, x.grad.reshape(4, 3, 4).mean(0), 0.0)
    torch.testing.assert_close(posterior.mean.grad, expected, atol=1e-12, rtol=0)


def test_unknown_logdet_raises(generator):
    flow = make_flow(4, generator, n_blocks=1, hidden_features=(8,))
    y = torch.zeros(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="logdet"):
        bound_integrand(flow, y, HIDDEN, y, torch.zeros(3), logdet="girard")


def test_a_batch_with_nothing_hidden_is_the_exact_likelihood(generator):
    flow = make_flow(4, generator, n_blocks=2, hidden_features=(8,))
    y = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    nothing = torch.zeros(3, 4, dtype=torch.bool)
    terms = bound_terms(flow, y, nothing, prior_parameters(3, 4, torch.float64), n_samples=2, generator=generator)
    torch.testing.assert_close(terms.log_weight, flow.log_prob(y).expand(2, 3))
    params = [p for p in flow.parameters() if p.requires_grad]
    # Gradients to the weights are those of maximum likelihood (two draws, each the full row),
    # through another code path (no hidden tangents): equal to rounding.
    grads = torch.autograd.grad(terms.log_weight.sum(), params)
    expected = torch.autograd.grad(2 * flow.log_prob(y).sum(), params)
    for grad, reference in zip(grads, expected, strict=True):
        torch.testing.assert_close(grad, reference, atol=1e-12, rtol=1e-12)


def _terms(log_weight, converged):
    log_weight = torch.tensor(log_weight, dtype=torch.float64)
    return BoundTerms(log_weight, None, torch.tensor(converged), None)


def test_masked_bound_leaves_out_unsolved_draws():
    # Three draws of three rows: all solved; one left out; none solved (bound 0 by convention).
    terms = _terms([[0.0, 1.0, -2.0], [2.0, 5.0, -4.0], [4.0, 9.0, -6.0]],
                   [[True, True, False], [True, False, False], [True, True, False]])
    elbo, n_unsolved = masked_bound(terms, "elbo")
    assert n_unsolved == 4
    # Small exact binary fractions and logs of them: equal to the last bit or nearly.
    torch.testing.assert_close(elbo, torch.tensor([2.0, 5.0, 0.0], dtype=torch.float64), atol=1e-15, rtol=0)
    iwae, _ = masked_bound(terms, "iwae")
    expected = [math.log((1 + math.exp(2) + math.exp(4)) / 3), math.log((math.exp(1) + math.exp(9)) / 2), 0.0]
    torch.testing.assert_close(iwae, torch.tensor(expected, dtype=torch.float64), atol=1e-14, rtol=0)


def test_masked_bound_with_every_draw_solved_is_the_plain_bound(generator):
    log_weight = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    terms = BoundTerms(log_weight, None, torch.ones(5, 3, dtype=torch.bool), None)
    # The same means and log-sum-exps, with masks that keep everything: equal to rounding.
    torch.testing.assert_close(masked_bound(terms, "elbo")[0], log_weight.mean(0), atol=1e-15, rtol=0)
    torch.testing.assert_close(masked_bound(terms, "iwae")[0], importance_weighted_bound(log_weight),
                               atol=1e-15, rtol=0)
    assert OBJECTIVES == ("elbo", "iwae")
    with pytest.raises(ValueError, match="objective"):
        masked_bound(terms, "vimco")
