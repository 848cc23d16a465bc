import pytest
import torch

from skivcnf.conditional.fitting import fit_inference_network, fit_posterior
from skivcnf.conditional.posteriors import GaussianPosterior, InferenceNetwork, prior_parameters
from skivcnf.conditional.sampling import sample_conditional
from skivcnf.exceptions import NumericalWarning

from .helpers import make_flow


def correlated_rows(generator, n=256):
    flow = make_flow(4, generator, n_blocks=2, hidden_features=())
    y = flow.sample(n, generator=generator)
    hidden = torch.rand(n, 4, generator=generator) < 0.4
    hidden[hidden.all(1), 0] = False
    return flow, y, hidden


def mean_bound(flow, y, hidden, params, generator):
    draws = sample_conditional(flow, y, hidden, params, n_samples=32, generator=generator)
    return draws.log_weight.mean().item()


def test_inference_network_learns_a_better_posterior_than_the_prior(generator):
    flow, y, hidden = correlated_rows(generator)
    net = InferenceNetwork(4, hidden_features=(32, 32), generator=generator).double()
    history = fit_inference_network(flow, torch.where(hidden, float("nan"), y), hidden, net, max_epochs=15,
                                    batch_size=64, lr=3e-3, n_samples=4, generator=generator)
    assert len(history.elbo) == 15 and history.elbo[-1] > history.elbo[0]
    with torch.no_grad():
        amortised = mean_bound(flow, y, hidden, net(y, hidden), generator)
    prior = mean_bound(flow, y, hidden, prior_parameters(len(y), 4, torch.float64), generator)
    assert amortised > prior + 0.05
    assert all(p.grad is None or p.requires_grad for p in flow.parameters())


def test_joint_training_moves_the_flow(generator):
    flow, y, hidden = correlated_rows(generator, n=128)
    before = [p.detach().clone() for p in flow.parameters()]
    net = InferenceNetwork(4, hidden_features=(16,), generator=generator).double()
    fit_inference_network(flow, y, hidden, net, max_epochs=2, batch_size=64, n_samples=2, train_flow=True,
                          generator=generator)
    assert any(not torch.equal(a, b) for a, b in zip(before, flow.parameters(), strict=True))
    net_only = [p.detach().clone() for p in flow.parameters()]
    fit_inference_network(flow, y, hidden, net, max_epochs=1, batch_size=64, n_samples=2, generator=generator)
    assert all(torch.equal(a, b) for a, b in zip(net_only, flow.parameters(), strict=True))


def test_fit_posterior_improves_the_bound_and_restores_flow_gradients(generator):
    flow, y, hidden = correlated_rows(generator, n=16)
    posterior = GaussianPosterior(16, 4).double()
    history = fit_posterior(flow, y, hidden, posterior, max_steps=100, generator=generator)
    assert history.elbo[-1] > history.elbo[0]
    assert all(p.requires_grad for p in flow.parameters())


def test_non_finite_bound_steps_are_skipped(generator, monkeypatch):
    import skivcnf.conditional.fitting as fitting

    flow, y, hidden = correlated_rows(generator, n=8)
    real, calls = fitting.elbo, []

    def broken(*args, **kwargs):
        calls.append(1)
        estimate = real(*args, **kwargs)
        if len(calls) % 2:
            return estimate._replace(log_weight=estimate.log_weight * float("nan"))
        return estimate

    monkeypatch.setattr(fitting, "elbo", broken)
    posterior = GaussianPosterior(8, 4).double()
    with pytest.warns(NumericalWarning, match="skipped"):
        history = fit_posterior(flow, y, hidden, posterior, max_steps=6, generator=generator)
    assert history.n_skipped_steps == 3
    assert bool(torch.isfinite(posterior.mean).all())


def test_iwae_objective_is_at_least_the_elbo(generator):
    from skivcnf.conditional.bound import elbo
    from skivcnf.conditional.fitting import masked_elbo_loss

    flow, y, hidden = correlated_rows(generator, n=32)
    with torch.no_grad():
        estimate = elbo(flow, y, hidden, prior_parameters(32, 4, torch.float64), n_samples=16, generator=generator)
    elbo_loss, _ = masked_elbo_loss(estimate, "elbo")
    iwae_loss, _ = masked_elbo_loss(estimate, "iwae")
    assert iwae_loss.item() <= elbo_loss.item()
    # An unconverged draw is left out of both.
    estimate = estimate._replace(converged=estimate.converged.clone())
    estimate.converged[0, 0] = False
    assert masked_elbo_loss(estimate, "iwae")[1] == 1


def test_iwae_trains_an_inference_network(generator):
    flow, y, hidden = correlated_rows(generator, n=128)
    net = InferenceNetwork(4, hidden_features=(16,), generator=generator).double()
    history = fit_inference_network(flow, y, hidden, net, max_epochs=4, batch_size=64, lr=3e-3, n_samples=4,
                                    objective="iwae", generator=generator)
    assert history.elbo[-1] > history.elbo[0]


@pytest.mark.parametrize(("kwargs", "match"), [({"objective": "kl"}, "objective"),
                                               ({"objective": "iwae", "logdet": "clade"}, "exact")])
def test_bad_objectives_raise(generator, kwargs, match):
    flow, y, hidden = correlated_rows(generator, n=8)
    with pytest.raises(ValueError, match=match):
        fit_inference_network(flow, y, hidden, InferenceNetwork(4).double(), **kwargs)


def test_validation_split_early_stops_and_restores_the_best(generator):
    flow, y, hidden = correlated_rows(generator, n=128)
    net = InferenceNetwork(4, hidden_features=(16,), generator=generator).double()
    history = fit_inference_network(flow, y, hidden, net, max_epochs=40, batch_size=32, lr=0.05, n_samples=2,
                                    train_flow=True, validation_fraction=0.25, patience=2, generator=generator)
    assert len(history.validation) == len(history.elbo)
    assert history.validation[history.best_epoch] == max(history.validation)
    if history.converged:
        assert len(history.validation) - 1 - history.best_epoch == 2


def test_unsolved_draws_are_left_out_and_reported_once(generator):
    import warnings

    from skivcnf.conditional import SolverOptions
    from skivcnf.exceptions import ConstraintWarning

    flow, y, hidden = correlated_rows(generator, n=128)
    net = InferenceNetwork(4, hidden_features=(8,), generator=generator).double()
    # One Newton step at a tolerance below rounding: most draws with a hidden entry stay unsolved
    # (the flow is affine, so a few land exactly).
    options = SolverOptions(tol=1e-30, max_iter=1, fixed_point_max_iter=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fit_inference_network(flow, y, hidden, net, max_epochs=2, batch_size=32, n_samples=2,
                                        solver="newton", options=options, generator=generator)
    constraint = [w for w in caught if issubclass(w.category, ConstraintWarning)]
    assert len(constraint) == 1 and "not solved" in str(constraint[0].message)
    possible = 2 * 2 * int(hidden.any(1).sum())  # epochs x draws x rows with a hidden entry
    assert possible / 2 < history.n_unsolved_draws <= possible


def test_imputation_monitor_records_held_out_rmse(generator):
    flow, y, hidden = correlated_rows(generator, n=128)
    net = InferenceNetwork(4, hidden_features=(8,), generator=generator).double()
    history = fit_inference_network(flow, y, hidden, net, max_epochs=3, batch_size=32, n_samples=2,
                                    validation_fraction=0.25, monitor="imputation", generator=generator)
    # Minus an RMSE of standardised-scale completions: negative, and far below the ~1 of guessing 0.
    assert len(history.validation) == 3 and all(-1.0 < v < 0.0 for v in history.validation)
    with pytest.raises(ValueError, match="monitor"):
        fit_inference_network(flow, y, hidden, net, max_epochs=1, monitor="loss")
