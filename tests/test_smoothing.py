"""Pareto-smoothed importance sampling: the tail-shape estimate and the smoothed weights."""

import math

import pytest
import torch

from skivcnf.conditional import PARETO_K_THRESHOLD, pareto_smoothed_log_weights


def pareto_log_weights(shape, n_samples, n_rows, generator):
    """Log-weights whose weights are generalised-Pareto with shape ``shape`` (scale 1): ``k_hat`` estimates it."""
    u = torch.rand(n_samples, n_rows, generator=generator, dtype=torch.float64)
    return -shape * torch.log1p(-u)  # w = (1 - u)^(-shape), a Pareto tail of index 1 / shape


@pytest.mark.parametrize("shape", [0.2, 0.5, 0.9])
def test_k_hat_recovers_the_tail_shape(shape):
    # 4,000 draws: a tail of 190; over 50 rows the mean estimate is within 0.05 of the shape
    # (its standard deviation per row is ~0.07-0.16, so the mean's is ~0.02; the prior's pull
    # towards 0.5 is 10 / 200 of the distance).
    _, k_hat = pareto_smoothed_log_weights(pareto_log_weights(shape, 4000, 50, torch.Generator().manual_seed(0)))
    assert abs(float(k_hat.mean()) - shape) < 0.05


def test_smoothing_changes_only_the_tail_and_never_exceeds_the_largest_weight():
    log_weight = pareto_log_weights(0.8, 64, 20, torch.Generator().manual_seed(1))
    smoothed, k_hat = pareto_smoothed_log_weights(log_weight)
    tail = math.ceil(0.2 * 64)  # min(0.2 S, 3 sqrt(S)) = 13
    shift = log_weight.max(dim=0).values
    order = torch.argsort(log_weight, dim=0)
    body, top = order[:-tail], order[-tail:]
    assert torch.allclose(smoothed.gather(0, body), (log_weight - shift).gather(0, body), atol=1e-12)
    smoothed_top = smoothed.gather(0, top)
    assert bool((smoothed_top <= 1e-12).all())                             # truncated at the largest weight
    assert bool((smoothed_top.diff(dim=0) >= -1e-12).all())                # order kept
    assert bool(torch.isfinite(k_hat).all())


def test_concentrated_weights_are_flagged_and_too_few_draws_are_not_diagnosed():
    gen = torch.Generator().manual_seed(2)
    log_weight = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    log_weight[:60, 1] = float("-inf")                                     # 4 draws with weight
    log_weight[:, 2] = 20 * log_weight[:, 2]                               # one draw dominates
    _, k_hat = pareto_smoothed_log_weights(log_weight)
    assert k_hat[1] == float("inf") and k_hat[2] > PARETO_K_THRESHOLD
    smoothed, k_small = pareto_smoothed_log_weights(log_weight[:16])
    assert bool(k_small.isnan().all()) and torch.equal(smoothed, log_weight[:16])
