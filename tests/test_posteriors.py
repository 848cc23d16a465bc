import math

import numpy as np
import pytest
import torch

from skivcnf.conditional.posteriors import (
    GaussianPosterior,
    InferenceNetwork,
    log_density,
    prior_parameters,
    rsample,
)

HIDDEN = torch.tensor([[True, False, True, True], [False, False, True, False]])


def test_diagonal_draws_have_the_right_moments_and_density(generator):
    posterior = GaussianPosterior(2, 4).double()
    with torch.no_grad():
        posterior.mean.normal_(generator=generator)
        posterior.log_scale.normal_(generator=generator).mul_(0.3)
    x, log_q = rsample(posterior(), HIDDEN, 20000, generator)
    assert bool((x[:, ~HIDDEN] == 0).all())
    sd = posterior.log_scale.exp().detach()
    se = sd / 20000**0.5
    assert bool(((x.mean(0) - posterior.mean.detach()).abs()[HIDDEN] < 4 * se[HIDDEN]).all())
    expected = torch.distributions.Normal(posterior.mean, sd).log_prob(x)
    torch.testing.assert_close(log_q, (expected * HIDDEN).sum(-1))


def test_householder_covariance_and_volume(generator):
    posterior = GaussianPosterior(2, 4, n_reflections=3, generator=generator).double()
    with torch.no_grad():
        posterior.log_scale.copy_(torch.tensor([0.5, 0.0, -0.5, 0.2]))
    params = posterior()
    x, log_q = rsample(params, HIDDEN, 40000, generator)
    h = HIDDEN[0]
    xs = x[:, 0][:, h]
    # Reflections are orthogonal: the covariance is Q diag(sigma^2) Q^T, its determinant prod sigma^2.
    cov = xs.T.cov()
    sigma2 = (2 * posterior.log_scale.detach()[0, h]).exp()
    assert torch.linalg.det(cov).item() == pytest.approx(sigma2.prod().item(), rel=0.05)
    q = torch.eye(3, dtype=torch.float64)
    for v in posterior.reflections.detach()[0, :, h]:  # x = mu + H_3 H_2 H_1 (sigma * eps)
        q = (torch.eye(3, dtype=torch.float64) - 2 * torch.outer(v, v) / (v @ v)) @ q
    expected = q @ torch.diag(sigma2) @ q.T
    # Standard error of a sample covariance: sqrt((S_ii S_jj + S_ij^2) / n); 5 of them.
    se = ((expected.diagonal()[:, None] * expected.diagonal()[None, :] + expected**2) / xs.shape[0]).sqrt()
    assert bool(((cov - expected).abs() < 5 * se).all()), (cov - expected) / se
    torch.testing.assert_close(log_density(params, HIDDEN, x), log_q.detach(), atol=1e-10, rtol=0)
    assert bool((x[:, ~HIDDEN] == 0).all())


def test_stick_the_landing_keeps_the_value(generator):
    posterior = GaussianPosterior(2, 4, n_reflections=2, generator=generator).double()
    state = generator.get_state()
    x1, log_q1 = rsample(posterior(), HIDDEN, 5, generator)
    generator.set_state(state)
    x2, log_q2 = rsample(posterior(), HIDDEN, 5, generator, stick_the_landing=True)
    torch.testing.assert_close(x1, x2)
    torch.testing.assert_close(log_q1, log_q2)


def test_prior_parameters_are_standard_normal():
    params = prior_parameters(2, 4, torch.float64)
    x = torch.zeros(1, 2, 4, dtype=torch.float64)
    expected = -0.5 * math.log(2 * math.pi) * HIDDEN.sum(1).to(torch.float64)
    torch.testing.assert_close(log_density(params, HIDDEN, x)[0], expected)


def test_inference_network_handles_any_mask_and_starts_near_the_prior(generator):
    net = InferenceNetwork(4, hidden_features=(16,), n_reflections=2, generator=generator).double()
    y = torch.randn(2, 4, generator=generator, dtype=torch.float64)
    y[HIDDEN] = float("nan")
    params = net(y, HIDDEN)
    assert params.mean.shape == (2, 4) and params.reflections.shape == (2, 2, 4)
    # The last layer's mean and log-scale rows start at 1% of torch's init: near the prior (a NaN
    # from the hidden entries would fail these comparisons too).
    assert params.mean.abs().max().item() < 0.1 and params.log_scale.abs().max().item() < 0.1
    # Hidden values do not leak: changing them leaves the output alone.
    y2 = y.clone()
    y2[HIDDEN] = 123.0
    torch.testing.assert_close(net(y2, HIDDEN).mean, params.mean)


def test_construction_leaves_global_rng_alone(generator):
    state = torch.random.get_rng_state()
    InferenceNetwork(4, generator=generator)
    GaussianPosterior(3, 4, n_reflections=2, generator=generator)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_negative_reflections_raise():
    with pytest.raises(ValueError, match="n_reflections"):
        GaussianPosterior(1, 3, n_reflections=-1)


def test_antithetic_draws_mirror_each_other_about_the_mean(generator):
    from skivcnf.conditional import GaussianPosterior, rsample

    posterior = GaussianPosterior(3, 4, n_reflections=2, generator=generator).double()
    hidden = torch.tensor([[True, False, True, True], [False, True, False, False], [True, True, True, True]])
    params = posterior()
    x, log_q = rsample(params, hidden, 6, generator=generator, antithetic=True)
    # Reflections are linear in the noise, so a pair's mean is the posterior's mean.
    assert torch.allclose((x[0::2] + x[1::2]) / 2, torch.where(hidden, params.mean, 0.0).expand(3, -1, -1))
    assert torch.allclose(log_q[0::2], log_q[1::2])
    assert not torch.allclose(x[0], x[2])  # pairs differ from each other
    with pytest.raises(ValueError, match="n_samples must be even"):
        rsample(params, hidden, 5, generator=generator, antithetic=True)


def test_quasi_random_draws_follow_q_and_cover_it_evenly(generator):
    from scipy.special import ndtr

    from skivcnf.conditional import GaussianPosterior, RowNoise, log_density, rsample

    posterior = GaussianPosterior(3, 4, n_reflections=2, generator=generator).double()
    hidden = torch.tensor([[True, False, True, True], [False, True, False, False], [True, True, True, True]])
    params = posterior()
    keys = np.array([5, 6, 7], dtype=np.uint64)
    x, log_q = rsample(params, hidden, 32, RowNoise(keys), quasi_start=0)
    assert bool((x[:, ~hidden] == 0).all()) and torch.allclose(log_q, log_density(params, hidden, x))
    # Row 1's one hidden entry (a reflection of one coordinate only flips its sign): its 32 standardised draws are
    # the normal quantiles of a shifted Sobol net, one in each thirty-second of the probability scale.
    eps = ((x[:, 1, 1] - params.mean[1, 1]) / params.log_scale[1, 1].exp()).detach()
    assert sorted(np.floor(ndtr(eps.numpy()) * 32).astype(int).tolist()) == list(range(32))
    # Antithetic quasi-random draws: 16 points and their mirrors.
    paired, _ = rsample(params, hidden, 32, RowNoise(keys), antithetic=True, quasi_start=0)
    assert torch.allclose((paired[0::2] + paired[1::2]) / 2, torch.where(hidden, params.mean, 0.0).expand(16, -1, -1))
    assert torch.allclose(paired[0::2], x[:16])


def test_marginal_variance_is_the_diagonal_of_the_draws_covariance():
    # A Householder posterior: the variances of its hidden entries, from the parameters, against the
    # empirical variances of many draws (relative standard error about sqrt(2 / n) = 0.6%).
    import torch

    from skivcnf.conditional import GaussianPosterior, marginal_variance, rsample

    posterior = GaussianPosterior(2, 4, n_reflections=2, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        params = posterior()
        params = params._replace(log_scale=params.log_scale + torch.tensor([0.0, 0.5, -0.5, 1.0], dtype=torch.float64))
        hidden = torch.tensor([[True, True, False, True], [False, True, True, False]])
        x, _ = rsample(params, hidden, 50_000, generator=torch.Generator().manual_seed(1))
        expected = marginal_variance(params, hidden)
    assert torch.equal(expected == 0, ~hidden)
    empirical = x.var(dim=0)
    assert torch.allclose(expected[hidden], empirical[hidden], rtol=0.03)
    # Reflections mix the scales: some variance differs from its own scale's square.
    assert not torch.allclose(expected[hidden], torch.exp(2 * params.log_scale)[hidden], rtol=0.03)
