"""Reliable draws: bounded and smoothed weights, extra draws where needed, a row's draws its own.

Against the Gaussian oracle of ``test_sampling.py``: an affine flow (``hidden_features=()``)
whose conditional laws are known in closed form.
"""

import numpy as np
import torch

from skivcnf.conditional import (
    RowNoise,
    conditional_mean,
    monte_carlo_error,
    prior_parameters,
    reliable_draws,
    shrunk_mean,
)

from .helpers import affine_gaussian, gaussian_conditional, make_flow

HIDDEN = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
KEYS = np.array([101, 202, 303, 404], dtype=np.uint64)


def setting(generator):
    flow = make_flow(4, generator, n_blocks=2, hidden_features=())
    y = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    return flow, y, prior_parameters(4, 4, torch.float64, "cpu")


def test_weighted_mean_of_reliable_draws_matches_the_oracle(generator):
    flow, y, params = setting(generator)
    mean, cov = affine_gaussian(flow)
    result = reliable_draws(flow, y, HIDDEN, params, 2000, RowNoise(KEYS))
    point, _ = conditional_mean(result.draws)
    assert torch.equal(point[~HIDDEN], y[~HIDDEN])
    for row in range(4):
        cond_mean, cond_cov, _ = gaussian_conditional(mean, cov, y[row], HIDDEN[row])
        # The reported Monte Carlo error is the estimate's standard error: 5 of them bound the error.
        err = (point[row, HIDDEN[row]] - cond_mean).abs().max()
        assert err < 5 * result.mc_error[row] + 1e-12, (row, err, result.mc_error[row])
    # A row whose weights stay uneven (the prior is a poor proposal for it) made every extra draw.
    assert bool((result.n_draws[result.unreliable] == 2000 + 2000 + 4000).all())


def test_rows_draw_again_while_their_error_is_large_and_keep_their_own_draws(generator):
    flow, y, params = setting(generator)
    noise = RowNoise(KEYS)
    result = reliable_draws(flow, y, HIDDEN, params, 16, noise, mc_tolerance=0.0, max_rounds=2)
    # Every row is above a zero tolerance: 16, then 16 and 32 more.
    assert result.n_draws.tolist() == [64] * 4 and result.draws.samples.shape[0] == 64
    assert noise.calls == 3
    # A subset of the rows, alone and in another order, gets the same draws, weights and counts.
    order = [3, 1]
    sub = reliable_draws(flow, y[order], HIDDEN[order], type(params)(*(p[order] for p in params[:2]), None), 16,
                         RowNoise(KEYS[order]), mc_tolerance=0.0, max_rounds=2)
    assert torch.allclose(sub.draws.samples, result.draws.samples[:, order], atol=1e-12)
    assert torch.allclose(sub.weights, result.weights[:, order], atol=1e-12)
    # With a tolerance that only some rows miss, only they draw again.
    mixed = reliable_draws(flow, y, HIDDEN, params, 16, RowNoise(KEYS), mc_tolerance=float(result.mc_error.median()),
                           max_rounds=1)
    assert set(mixed.n_draws.tolist()) <= {16, 32}
    padded = mixed.draws.converged[16:]
    assert bool((padded.any(dim=0) == (mixed.n_draws == 32)).all())            # padding is unsolved, weightless
    assert bool((mixed.weights[16:][~padded] == 0).all())


def test_draws_outside_the_bounds_get_no_weight(generator):
    flow, y, params = setting(generator)
    lower, upper = torch.full((4,), -1.0, dtype=torch.float64), torch.full((4,), 1.0, dtype=torch.float64)
    result = reliable_draws(flow, y, HIDDEN, params, 64, RowNoise(KEYS), bounds=(lower, upper), max_rounds=0)
    # The same draws without bounds (bounds change no draw when no row draws again).
    samples = reliable_draws(flow, y, HIDDEN, params, 64, RowNoise(KEYS), max_rounds=0).draws.samples
    outside = (((samples < lower) | (samples > upper)) & HIDDEN).any(dim=-1)
    inside = ~outside & result.draws.converged
    # Rows with a draw inside weigh only those.
    has_inside = inside.any(dim=0)
    assert bool(outside[:, has_inside].any())
    assert bool((result.weights[:, has_inside][outside[:, has_inside]] == 0).all())
    # A row with none (row 1 here) gets its solved draws clipped into the bounds, equally weighted.
    assert torch.equal(result.clipped, ~has_inside & result.draws.converged.any(dim=0)) and bool(result.clipped.any())
    assert torch.equal(result.usable, has_inside | result.clipped)
    clipped = result.clipped
    assert bool((result.weights[:, clipped] == 1 / 64).all())
    assert torch.allclose(result.weights.sum(dim=0), torch.ones(4, dtype=torch.float64))
    point, _ = conditional_mean(result.draws)
    within = (point >= -1 - 1e-12) & (point <= 1 + 1e-12)
    assert bool((within | ~HIDDEN).all())
    assert torch.equal(result.draws.samples[:, ~HIDDEN], samples[:, ~HIDDEN])  # observed entries untouched
    box = (result.draws.samples[:, clipped] >= -1) & (result.draws.samples[:, clipped] <= 1)
    assert bool((box | ~HIDDEN[clipped]).all())


def test_monte_carlo_error_is_the_delta_method_standard_error():
    samples = torch.tensor([[[1.0, 5.0]], [[3.0, 5.0]], [[2.0, 8.0]]], dtype=torch.float64)  # 3 draws, 1 row
    weights = torch.tensor([[0.5], [0.25], [0.25]], dtype=torch.float64)
    hidden = torch.tensor([[True, False]])
    mean = 0.5 * 1 + 0.25 * 3 + 0.25 * 2
    expected = np.sqrt(0.25 * (1 - mean) ** 2 + 0.0625 * (3 - mean) ** 2 + 0.0625 * (2 - mean) ** 2)
    assert torch.allclose(monte_carlo_error(samples, weights, hidden), torch.tensor([expected], dtype=torch.float64))


def test_paired_monte_carlo_error_treats_each_antithetic_pair_as_one_draw():
    # 4 draws of 1 row: pairs (0, 1) and (2, 3). Per pair, sum_k w_k (x_k - mean).
    samples = torch.tensor([[[1.0]], [[3.0]], [[0.0]], [[6.0]]], dtype=torch.float64)
    weights = torch.tensor([[0.25], [0.25], [0.25], [0.25]], dtype=torch.float64)
    hidden = torch.tensor([[True]])
    mean = 2.5
    pair_terms = [0.25 * (1 - mean) + 0.25 * (3 - mean), 0.25 * (0 - mean) + 0.25 * (6 - mean)]
    expected = np.sqrt(sum(t ** 2 for t in pair_terms))
    assert torch.allclose(monte_carlo_error(samples, weights, hidden, paired=True),
                          torch.tensor([expected], dtype=torch.float64))


def test_shrunk_mean_moves_a_noisy_weighted_mean_toward_the_posteriors_mean():
    # 4 draws of 2 rows, 3 features: feature 0 observed (every draw agrees), 1 and 2 hidden.
    samples = torch.tensor([[[0.5, 1.0, 2.0], [1.0, 0.0, 0.0]],
                            [[0.5, 3.0, 2.2], [1.0, 4.0, 1.0]],
                            [[0.5, 2.0, 5.0], [1.0, 2.0, 2.0]],
                            [[0.5, 6.0, 1.0], [1.0, 1.0, 3.0]]], dtype=torch.float64)
    weights = torch.tensor([[0.1, 0.25], [0.2, 0.25], [0.3, 0.25], [0.4, 0.25]], dtype=torch.float64)
    # row 0: the posterior's own draws are the first two; row 1 has none (keeps its weighted mean)
    first = torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    out = shrunk_mean(samples, weights, first)
    weighted = (weights.unsqueeze(-1) * samples).sum(dim=0)
    assert torch.equal(out[:, 0], samples[0, :, 0])  # observed entries exactly
    assert torch.allclose(out[1], weighted[1])
    for j in (1, 2):
        variance = float((weights[:, 0] ** 2 * (samples[:, 0, j] - weighted[0, j]) ** 2).sum())
        plain = float(samples[:2, 0, j].mean())
        share = min(1.0, variance / (plain - float(weighted[0, j])) ** 2)
        expected = float(weighted[0, j]) + share * (plain - float(weighted[0, j]))
        assert abs(float(out[0, j]) - expected) < 1e-12, (j, float(out[0, j]), expected)
    # feature 1: the gap (2.0 - 3.7)^2 exceeds the variance, a partial move; feature 2: all the way
    assert 0 < (float(out[0, 1]) - float(weighted[0, 1])) / (2.0 - float(weighted[0, 1])) < 1
    assert abs(float(out[0, 2]) - 2.1) < 1e-12


def test_shrunk_mean_of_reliable_draws_stays_within_a_standard_error_of_the_weighted_mean(generator):
    flow, y, params = setting(generator)
    mean, cov = affine_gaussian(flow)
    for n in (16, 2000):
        result = reliable_draws(flow, y, HIDDEN, params, n, RowNoise(KEYS), antithetic=True)
        point = shrunk_mean(result.draws.samples, result.weights, result.first_weights, paired=True)
        weighted, _ = conditional_mean(result.draws)
        assert torch.equal(point[~HIDDEN], y[~HIDDEN])
        # |a (m_q - m_w)| = min(|gap|, v / |gap|) <= sqrt(v): the move is at most the entry's standard error,
        # and the row's reported error is its entries' largest.
        move = (point - weighted).abs().amax(dim=-1)
        assert bool((move <= result.mc_error + 1e-12).all()), (move, result.mc_error)
        assert torch.allclose(result.first_weights.sum(dim=0), torch.ones(4, dtype=torch.float64))
        assert bool((result.first_weights[n:] == 0).all())
    # Unweighted draws have no weighted mean to shrink: the point estimate is their plain mean.
    plain = reliable_draws(flow, y, HIDDEN, params, 16, RowNoise(KEYS), weighted=False, antithetic=True)
    assert bool((plain.first_weights == 0).all())
    assert torch.equal(shrunk_mean(plain.draws.samples, plain.weights, plain.first_weights, paired=True),
                       conditional_mean(plain.draws)[0])
    for row in range(4):
        cond_mean, _, _ = gaussian_conditional(mean, cov, y[row], HIDDEN[row])
        err = (point[row, HIDDEN[row]] - cond_mean).abs().max()
        assert err < 6 * result.mc_error[row] + 1e-12, (row, err, result.mc_error[row])


def test_antithetic_pairs_cancel_what_is_linear_in_the_noise(generator):
    # Through an affine flow a completion is affine in the posterior's noise, so with equal weights
    # every mirrored pair has the same mean (the completion at the posterior's mean): the point
    # estimate has no Monte Carlo error, and the paired error estimate says so.
    flow, y, params = setting(generator)
    paired = reliable_draws(flow, y, HIDDEN, params, 8, RowNoise(KEYS), weighted=False, antithetic=True)
    samples = paired.draws.samples
    pair_means = (samples[0::2] + samples[1::2]) / 2
    assert torch.allclose(pair_means, pair_means[:1].expand_as(pair_means), atol=1e-10)
    assert float(paired.mc_error.max()) < 1e-8 and paired.n_draws.tolist() == [8] * 4
    assert torch.allclose(conditional_mean(paired.draws)[0], pair_means[0], atol=1e-10)
    # Independent draws of the same proposal leave an error: the prior's unit scale over sqrt(8) or so.
    independent = reliable_draws(flow, y, HIDDEN, params, 8, RowNoise(KEYS), weighted=False, max_rounds=0)
    assert bool((independent.mc_error > 0.05).all())


def test_quasi_random_rounds_continue_each_rows_sequence(generator):
    # Every row misses a zero tolerance and draws 16, 16 and 32: with quasi-random noise its 64 draws
    # are the first 64 points of its one shifted Sobol sequence, as one call of 64 would draw them.
    flow, y, params = setting(generator)
    result = reliable_draws(flow, y, HIDDEN, params, 16, RowNoise(KEYS), mc_tolerance=0.0, max_rounds=2, quasi=True)
    assert result.n_draws.tolist() == [64] * 4
    from skivcnf.conditional import sample_conditional

    whole = sample_conditional(flow, y, HIDDEN, params, 64, RowNoise(KEYS), quasi_start=0)
    assert torch.allclose(result.draws.samples, whole.samples, atol=1e-10)
    # Antithetic: 8 points and their mirrors a round first, then 8 and 16 more points.
    paired = reliable_draws(flow, y, HIDDEN, params, 16, RowNoise(KEYS), mc_tolerance=0.0, max_rounds=2, quasi=True,
                            antithetic=True)
    whole = sample_conditional(flow, y, HIDDEN, params, 64, RowNoise(KEYS), quasi_start=0, antithetic=True)
    assert torch.allclose(paired.draws.samples, whole.samples, atol=1e-10)


def test_quasi_random_draws_lower_the_monte_carlo_error_of_a_mean(generator):
    # Through an affine flow a completion is affine in the posterior's noise, so the equally weighted
    # mean of the draws estimates the completion at the noise's mean (a mirrored pair gives it exactly).
    # 32 independent draws miss it by the prior's scale over sqrt(32) or so; a shifted Sobol net's
    # error on this smooth integrand is under a third of it (0.063 against 0.212 measured).
    flow, y, params = setting(generator)
    exact = conditional_mean(reliable_draws(flow, y, HIDDEN, params, 2, RowNoise(KEYS), weighted=False,
                                            antithetic=True, max_rounds=0).draws)[0]
    errors = {}
    for quasi in (False, True):
        squared = []
        for repeat in range(20):
            keys = KEYS * np.uint64(31) + np.uint64(repeat)
            result = reliable_draws(flow, y, HIDDEN, params, 32, RowNoise(keys), weighted=False, max_rounds=0,
                                    quasi=quasi)
            squared.append(((conditional_mean(result.draws)[0] - exact)[HIDDEN] ** 2).mean())
        errors[quasi] = float(torch.stack(squared).mean().sqrt())
    assert errors[True] < 0.5 * errors[False], errors


def test_adaptive_rounds_match_the_oracle_with_more_even_weights(generator):
    # The prior is a poor proposal for some rows: their extra rounds drawn from a Gaussian matched
    # to the weighted draws (weighted against the mixture of the row's proposals) give a consistent
    # estimate with a larger effective sample size than more draws of the prior.
    flow, y, params = setting(generator)
    mean, cov = affine_gaussian(flow)
    plain = reliable_draws(flow, y, HIDDEN, params, 256, RowNoise(KEYS), mc_tolerance=0.0, max_rounds=2)
    adapted = reliable_draws(flow, y, HIDDEN, params, 256, RowNoise(KEYS), mc_tolerance=0.0, max_rounds=2, adapt=True)
    assert adapted.n_draws.tolist() == plain.n_draws.tolist() == [1024] * 4
    # The first round is the same draws with the same weights.
    assert torch.equal(adapted.draws.samples[:256], plain.draws.samples[:256])
    point, ess = conditional_mean(adapted.draws)
    _, plain_ess = conditional_mean(plain.draws)
    for row in range(4):
        cond_mean, _, _ = gaussian_conditional(mean, cov, y[row], HIDDEN[row])
        err = (point[row, HIDDEN[row]] - cond_mean).abs().max()
        assert err < 5 * adapted.mc_error[row] + 1e-12, (row, err, adapted.mc_error[row])
    # Row 3 (the prior's least even weights here) gains most.
    assert float(plain_ess.min()) < 0.2 * 1024 and float(ess[plain_ess.argmin()]) > 2 * float(plain_ess.min())
    assert bool((ess >= 0.9 * plain_ess).all())


def test_adaptive_rounds_keep_a_rows_draws_its_own(generator):
    flow, y, params = setting(generator)
    result = reliable_draws(flow, y, HIDDEN, params, 16, RowNoise(KEYS), mc_tolerance=0.05, max_rounds=2, adapt=True,
                            antithetic=True, quasi=True)
    assert len(set(result.n_draws.tolist())) > 1  # some rows adapted, some did not
    order = [3, 1, 0]
    sub = reliable_draws(flow, y[order], HIDDEN[order], type(params)(*(p[order] for p in params[:2]), None), 16,
                         RowNoise(KEYS[order]), mc_tolerance=0.05, max_rounds=2, adapt=True, antithetic=True,
                         quasi=True)
    assert torch.equal(sub.n_draws, result.n_draws[order])
    assert torch.allclose(sub.draws.samples, result.draws.samples[:, order], atol=1e-12)
    assert torch.allclose(sub.weights, result.weights[:, order], atol=1e-12)
    # A row that did not draw again has the weights of a run without adaptation.
    alone = reliable_draws(flow, y, HIDDEN, params, 16, RowNoise(KEYS), mc_tolerance=0.05, max_rounds=2,
                           antithetic=True, quasi=True)
    kept = result.n_draws == 16
    assert torch.equal(result.weights[:16, kept], alone.weights[:16, kept])
