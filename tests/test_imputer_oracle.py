"""IVCNFImputer against the closed-form law of the Gaussian it learned.

With ``hidden_layer_sizes=()`` every residual block's ``h`` is affine, so the fitted flow is
an affine map ``x = A y + c`` of the standardised modelled columns ``y = (X - center_) /
scale_``, and the model's law is Gaussian: ``y ~ N(-A^{-1} c, (A^T A)^{-1})``, hence
``X ~ N(center_ + scale_ * m, diag(scale_) S diag(scale_))``. Each row's conditional law of
its missing entries given its observed ones, and the density of its observed entries, are
then known exactly (float64), and ``transform``, ``sample_multiple_imputations``,
``score_samples`` and ``conditional_draws`` are checked against them. The oracle is the
Gaussian the imputer learned, not the data's, so training need not converge.

Tolerances are Monte Carlo standard errors. ``transform`` is a self-normalised importance
sampling (SNIS) mean of ``K = n_draws`` draws; its delta-method variance is
``sum_k w_k^2 (x_k - mu)^2`` (``w`` the normalised weights, ``mu`` the exact mean), which
scales like ``1 / K``. It is estimated from an independent set of ``4 K`` draws
(``conditional_draws``) and multiplied by 4: in a trial, the estimate from ``K`` draws alone
missed the tail of one row's weights (an error of 5.1 of its standard errors, 3.7 of the
standard error estimated from ``4 K`` draws). The imputer computes in float32, whose rounding
(relative 6e-8) is orders of magnitude below these errors.

The posterior has ``n_reflections = d - 1 = 3`` Householder reflections, so its family holds
the exact (Gaussian) latent conditional: the importance weights are then light-tailed and the
standard errors estimated from the draws are trustworthy. With a diagonal posterior, a few
rows of this table had weights heavy-tailed enough (ESS 8 of 256 in one set of draws, 126
in another) that no standard error estimated from the draws bounds the error.
"""

import pickle

import numpy as np
import pytest
import torch

from skivcnf import IVCNFImputer

from .helpers import affine_gaussian, gaussian_conditional

N_DRAWS = 256
#: Draws behind the estimated standard errors (see the module docstring).
SE_DRAWS = 4 * N_DRAWS
N_COPIES = 16
#: Whitened errors beyond this many standard errors fail a test: over the ~400 checked
#: entries a Gaussian error passes it with probability 1 - 2e-4, and the estimate of each
#: standard error from ``SE_DRAWS`` draws is good to about 5% (relative error ~sqrt(1 / (2 ESS))
#: with ESS >= 240 of 1024 here).
MAX_Z = 5.0
#: Pooled checks (means over rows) allow this many of their standard errors.
POOLED_Z = 4.0
#: Adam steps of per-row posterior refinement in the refinement test.
REFINEMENT_STEPS = 30
SETTINGS = {"n_blocks": 2, "hidden_layer_sizes": (), "n_reflections": 3, "n_train_draws": 8, "max_epochs": 3,
            "n_draws": N_DRAWS, "early_stopping": False, "random_state": 0}


@pytest.fixture(scope="module")
def table():
    """300 rows of a correlated 4-D Gaussian, columns on very different scales, 30% missing.

    Rows 0-4 are entirely missing and rows 5-14 complete. The column scales make
    ``sum log scale`` over any non-empty set of observed columns at least 0.5 nats away
    from 0, so a density that forgot the change of scale would be far off.
    """
    rng = np.random.default_rng(0)
    mixing = np.array([[1.0, 0, 0, 0], [0.8, 0.6, 0, 0], [-0.5, 0.3, 0.8, 0], [0.3, -0.6, 0.2, 0.7]])
    X = np.array([5.0, -2.0, 100.0, 0.0]) + np.array([10.0, 0.2, 3.0, 50.0]) * (
        rng.standard_normal((300, 4)) @ mixing.T)
    mask = rng.random(X.shape) < 0.3
    mask[:5], mask[5:15] = True, False
    return np.where(mask, np.nan, X), mask


@pytest.fixture(scope="module")
def fitted(table):
    return IVCNFImputer(**SETTINGS).fit(table[0])


@pytest.fixture(scope="module")
def oracle(fitted, table):
    """Per row: the exact conditional mean and covariance of the missing entries, and ``log p(x^O)``."""
    X_missing, mask = table
    flow = pickle.loads(pickle.dumps(fitted)).flow_.double()
    mean_y, cov_y = affine_gaussian(flow)  # from the weights, not from the flow's Jacobian code
    scale = torch.as_tensor(fitted.scale_)
    mean = torch.as_tensor(fitted.center_) + scale * mean_y
    cov = cov_y * torch.outer(scale, scale)
    x = torch.as_tensor(np.nan_to_num(X_missing))
    rows = [gaussian_conditional(mean, cov, x[i], torch.as_tensor(mask[i])) for i in range(len(x))]
    return {"mean": mean, "cov": cov, "flow": flow,
            "cond_mean": [r[0].numpy() for r in rows], "cond_cov": [r[1].numpy() for r in rows],
            "log_marginal": np.array([r[2] for r in rows])}


@pytest.fixture(scope="module")
def draws(fitted, table):
    """An independent set of ``SE_DRAWS`` draws per row, for standard errors."""
    return fitted.conditional_draws(table[0], SE_DRAWS)


def snis_variance(draws, row, hidden, exact, n_draws):
    """Delta-method variance of an SNIS mean of ``n_draws`` draws, estimated from ``draws``.

    ``sum_k w_k^2 (x_k - mu)^2`` over the draws, rescaled from their number to ``n_draws``.
    """
    weights, values = draws.weights[:, row, None], draws.values[:, row][:, hidden]
    return (weights**2 * (values - exact) ** 2).sum(axis=0) * len(draws.weights) / n_draws


def snis_z_scores(estimate, draws, oracle, mask, n_draws=N_DRAWS):
    """Errors of per-row SNIS means of ``n_draws`` draws, each over its delta-method standard error.

    ``estimate`` (n_samples, n_features) holds the estimated conditional means (rows of
    ``draws`` and ``mask`` alike).
    """
    scores = []
    for i in np.flatnonzero(mask.any(axis=1)):
        exact = oracle["cond_mean"][i]
        scores.append((estimate[i, mask[i]] - exact) / np.sqrt(snis_variance(draws, i, mask[i], exact, n_draws)))
    return np.concatenate(scores)


def check_z_scores(z):
    """Each error within ``MAX_Z`` standard errors, and their mean square near 1.

    Under the delta method ``z ~ N(0, 1)`` entry by entry, so ``mean(z^2)`` has mean 1 and
    standard deviation about ``sqrt(2 / len(z))`` (entries of one row are correlated, which
    this ignores; the band is ``POOLED_Z`` of those).
    """
    assert np.abs(z).max() < MAX_Z, np.sort(np.abs(z))[-5:]
    assert np.mean(z**2) < 1 + POOLED_Z * np.sqrt(2 / len(z)), np.mean(z**2)


def test_the_fitted_flow_is_affine(oracle):
    # The premise of the oracle: the Jacobian is the same at every row (to float64 rounding)
    # and the moments computed from it equal those computed from the weights.
    flow, d = oracle["flow"], oracle["flow"].features
    rows = torch.randn(5, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    jacobians = flow.jacobian(torch.cat([torch.zeros(1, d, dtype=torch.float64), rows])).detach()
    torch.testing.assert_close(jacobians[1:], jacobians[:1].expand(5, -1, -1), rtol=1e-12, atol=1e-12)
    a, c = jacobians[0], flow(torch.zeros(1, d, dtype=torch.float64))[0].detach()
    mean_y, cov_y = affine_gaussian(flow)
    torch.testing.assert_close(-torch.linalg.solve(a, c), mean_y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.linalg.inv(a.T @ a), cov_y, rtol=1e-10, atol=1e-10)


def test_transform_is_the_exact_conditional_mean(fitted, table, oracle, draws):
    X_missing, mask = table
    out = fitted.transform(X_missing)
    np.testing.assert_array_equal(out[~mask], X_missing[~mask])
    check_z_scores(snis_z_scores(out, draws, oracle, mask))
    # Rows with nothing observed get the model's marginal mean (the same bound, spelled out).
    mean = oracle["mean"].numpy()
    assert mask[:5].all()
    for i in range(5):
        np.testing.assert_array_equal(oracle["cond_mean"][i], mean)
        z = (out[i] - mean) / np.sqrt(snis_variance(draws, i, mask[i], mean, N_DRAWS))
        assert np.abs(z).max() < MAX_Z, z


def test_conditional_draws_follow_the_exact_conditional(table, oracle, draws):
    X_missing, mask = table
    n = len(X_missing)
    assert draws.values.shape == (SE_DRAWS, n, 4) and draws.weights.shape == (SE_DRAWS, n)
    assert draws.ess.shape == (n,) and draws.converged.dtype == bool
    # An affine constraint is solved exactly by the first Newton step.
    assert draws.converged.all()
    # The weights are float32 softmax outputs: each is within a relative 2^-24 of its exact
    # value, so their sum is within (SE_DRAWS + 1) * 2^-24 of 1.
    np.testing.assert_allclose(draws.weights.sum(axis=0), 1.0, rtol=0, atol=(SE_DRAWS + 1) * 2.0**-24)
    np.testing.assert_allclose(draws.ess, 1 / (draws.weights**2).sum(axis=0), rtol=(SE_DRAWS + 1) * 2.0**-23)
    for k in range(SE_DRAWS):
        np.testing.assert_array_equal(draws.values[k][~mask], X_missing[~mask])
    # Complete rows: every draw is the row itself, with equal weights (exactly 1/1024).
    np.testing.assert_array_equal(draws.weights[:, 5:15], 1 / SE_DRAWS)
    # The weighted mean of the draws is an SNIS estimate of the exact conditional mean.
    weighted_mean = np.einsum("kn,knd->nd", draws.weights, draws.values)
    check_z_scores(snis_z_scores(weighted_mean, draws, oracle, mask, n_draws=SE_DRAWS))


def test_multiple_imputations_follow_the_exact_conditional(fitted, table, oracle):
    """Copies whitened by the exact conditional law are standard normal.

    For row ``i``, ``u = L^{-1} (copy - mu_i)`` with ``L L^T`` the exact conditional
    covariance is ``N(0, I)`` when the copies follow the exact conditional. Each row's
    copies are resampled from that row's own proposals, so the per-row statistics (mean of
    ``u``, mean of ``u^2``, mean of ``u_a u_b`` over pairs) are independent across rows and
    their pooled standard error is their standard deviation over ``sqrt(n_rows)``. The
    copies follow the weighted empirical law of ``max(n_draws, 4 * N_COPIES) = 256``
    proposals, whose moments are SNIS estimates with a bias of order 1 / ESS (about 1/150
    here), well inside the bands (about 0.04).
    """
    X_missing, mask = table
    copies = fitted.sample_multiple_imputations(X_missing, N_COPIES, proper=False)  # the fitted model's law
    assert copies.shape == (N_COPIES, *X_missing.shape)
    for copy in copies:
        np.testing.assert_array_equal(copy[~mask], X_missing[~mask])
    means, squares, products = [], [], []
    for i in np.flatnonzero(mask.any(axis=1)):
        h = mask[i]
        chol = np.linalg.cholesky(oracle["cond_cov"][i])
        u = np.linalg.solve(chol, (copies[:, i][:, h] - oracle["cond_mean"][i]).T)  # (n_hidden, N_COPIES)
        means.append(u.mean())
        squares.append((u**2).mean())
        if h.sum() > 1:
            pairs = np.triu_indices(h.sum(), k=1)
            products.append((u[pairs[0]] * u[pairs[1]]).mean())
    for statistic, target in ((means, 0.0), (squares, 1.0), (products, 0.0)):
        statistic = np.asarray(statistic)
        standard_error = statistic.std(ddof=1) / np.sqrt(len(statistic))
        assert abs(statistic.mean() - target) < POOLED_Z * standard_error, (target, statistic.mean(), standard_error)


def test_score_samples_is_the_exact_log_marginal_up_to_the_iwae_gap(fitted, table, oracle, draws):
    """``score_samples`` is the importance-weighted bound of ``log p(x^O)`` on the input's scale.

    With normalised weights ``w`` of ``K`` draws, the bound is ``log p(x^O) + log(mean of
    w~)`` with ``w~ = K w`` of mean 1 and variance about ``K / ESS - 1``: by the delta
    method its error has mean ``-(1/ESS - 1/K) / 2`` (the IWAE gap; <= 0) and standard
    deviation ``sqrt(1/ESS - 1/K)``. ``ESS / K`` is estimated from ``SE_DRAWS`` draws.
    """
    X_missing, mask = table
    scores = fitted.score_samples(X_missing)
    error = scores - oracle["log_marginal"]
    # Complete rows: every draw is the row, the bound is exact. The log-density (terms of up
    # to ~20 nats) is evaluated in float32 with ~100 roundings of 2^-24: ~1e-4 at most.
    # Omitting the change of scale, - sum log scale_, would be off by 5.7 nats here.
    np.testing.assert_allclose(error[5:15], 0.0, atol=1e-4)
    rows = mask.any(axis=1) & ~mask.all(axis=1)
    ess = draws.ess * N_DRAWS / SE_DRAWS  # the ESS of N_DRAWS draws
    spread = np.sqrt(np.maximum(1 / ess[rows] - 1 / N_DRAWS, 0.0))
    gap = spread**2 / 2
    assert np.abs(error[rows] + gap).max() < MAX_Z * spread.max()
    assert np.all(np.abs(error[rows] + gap) < MAX_Z * spread + 1e-4)
    # In expectation a lower bound: the mean error is at most noise above 0, and no further
    # below than the mean gap.
    standard_error = error[rows].std(ddof=1) / np.sqrt(rows.sum())
    assert error[rows].mean() < POOLED_Z * standard_error
    assert error[rows].mean() > -gap.mean() - POOLED_Z * standard_error
    # Rows with nothing observed: log p of no coordinates is 0, estimated by the same bound.
    assert np.abs(error[:5]).max() < MAX_Z * np.sqrt(1 / ess[:5] - 1 / N_DRAWS).max()
    assert fitted.score(X_missing) == pytest.approx(scores.mean(), rel=1e-12)


def test_refinement_keeps_the_exact_mean_and_raises_the_effective_sample_size(fitted, table, oracle, draws):
    # Per-row refinement fits each row's Gaussian posterior on the ELBO. Its family holds the
    # exact latent conditional here, so refinement moves the proposal towards it: the
    # weights even out (higher ESS) and the weighted mean stays consistent. One batch of
    # rows (refinement costs REFINEMENT_STEPS training steps per batch).
    X_missing, mask = table
    rows = slice(0, fitted.batch_size)
    refined = pickle.loads(pickle.dumps(fitted)).set_params(refinement_steps=REFINEMENT_STEPS)
    refined_draws = refined.conditional_draws(X_missing[rows], SE_DRAWS)
    hidden_rows = mask[rows].any(axis=1)
    assert np.median(refined_draws.ess[hidden_rows]) > np.median(draws.ess[rows][hidden_rows])
    out = refined.transform(X_missing[rows])
    np.testing.assert_array_equal(out[~mask[rows]], X_missing[rows][~mask[rows]])
    check_z_scores(snis_z_scores(out, refined_draws, oracle, mask[rows]))
