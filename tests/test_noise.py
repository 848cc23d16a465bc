"""Counter-based random numbers keyed by row: a row's numbers are its own, whatever its batch."""

import numpy as np
import pytest
import torch

from skivcnf.conditional.noise import RowNoise, distinct_keys, row_keys, sobol_uniform, standard_normal, uniform

KEYS = np.array([3, 1 << 40, 12345678901234567, 7], dtype=np.uint64)


def test_a_rows_numbers_do_not_depend_on_its_batch_mates_or_order():
    full = RowNoise(KEYS)
    first, second = full.normal((5, 4, 3), torch.float64), full.uniform((6, 4), torch.float64)
    order = np.array([2, 0, 3])
    part = RowNoise(KEYS[order])
    assert torch.equal(part.normal((5, 3, 3), torch.float64), first[:, order])
    assert torch.equal(part.uniform((6, 3), torch.float64), second[:, order])
    # A subset taken after some calls continues at the same counter.
    assert torch.equal(full.rows([1]).normal((2, 1, 3), torch.float64),
                       RowNoise(KEYS[[1]], calls=2).normal((2, 1, 3), torch.float64))


def test_numbers_follow_their_laws():
    # 200,000 normals: mean and variance within 5 standard errors of 0 and 1; uniforms in (0, 1).
    noise = RowNoise(np.arange(1000, dtype=np.uint64))
    z = noise.normal((200, 1000), torch.float64, rows_axis=-1)
    assert abs(float(z.mean())) < 5 / np.sqrt(z.numel())
    assert abs(float(z.var()) - 1) < 5 * np.sqrt(2 / z.numel())
    u = noise.uniform((200, 1000), torch.float64)
    assert 0 < float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 5 * np.sqrt(1 / 12 / u.numel())
    # Successive calls and neighbouring keys are uncorrelated (|r| < 5 / sqrt(n)).
    again = noise.normal((200, 1000), torch.float64, rows_axis=-1)
    r_calls = np.corrcoef(z.ravel().numpy(), again.ravel().numpy())[0, 1]
    r_keys = np.corrcoef(z[:, :-1].ravel().numpy(), z[:, 1:].ravel().numpy())[0, 1]
    assert abs(r_calls) < 5 / np.sqrt(z.numel()) and abs(r_keys) < 5 / np.sqrt(z.numel())


def test_flattened_draws_are_laid_out_sample_major():
    stacked = RowNoise(KEYS).normal((3, 4, 2), torch.float64)
    flat = standard_normal((12, 2), RowNoise(KEYS), torch.float64, "cpu")
    assert torch.equal(flat, stacked.reshape(12, 2))
    # A torch.Generator (or None) is used as before.
    a = standard_normal((2, 3), torch.Generator().manual_seed(0), torch.float64, "cpu")
    assert torch.equal(a, torch.randn((2, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert uniform((2, 3), None, torch.float32, "cpu").shape == (2, 3)


def test_a_shape_without_the_rows_raises():
    with pytest.raises(ValueError, match="RowNoise has 4 rows"):
        RowNoise(KEYS).normal((2, 5, 3))


def test_row_keys_depend_on_observed_values_mask_and_seed_only():
    values = np.array([[1.0, np.nan, 2.0], [1.0, 9.0, 2.0], [1.0, 5.0, 2.0], [1.0, np.nan, 2.0]])
    hidden = np.isnan(values)
    keys = row_keys(7, values, hidden)
    assert keys[0] == keys[3]                                    # equal rows, equal keys
    assert len(set(keys[:3].tolist())) == 3                      # values and mask both count
    other = values.copy()
    other[0, 1] = 123.0                                          # a hidden entry's value is ignored
    assert row_keys(7, other, hidden)[0] == keys[0]
    assert row_keys(8, values, hidden)[0] != keys[0]
    assert row_keys(7, values.astype(np.float32), hidden)[1] == keys[1]


def test_distinct_keys_separate_repeats_and_keep_first_occurrences():
    keys = np.array([5, 9, 5, 5, 9], dtype=np.uint64)
    out = distinct_keys(keys)
    assert len(set(out.tolist())) == 5
    assert out[0] == 5 and out[1] == 9                          # first occurrences unchanged
    assert out[2] == distinct_keys(np.array([5, 5], dtype=np.uint64))[1]


# ---------------------------------------------------------------------------------------------- Sobol


def test_shifted_sobol_points_stratify_each_row_and_continue_its_sequence():
    counts = torch.tensor([3, 1, 2, 3])
    u = sobol_uniform(16, counts, RowNoise(KEYS))
    assert u.shape == (16, 4, 3) and bool(((u > 0) & (u < 1)).all())
    for row in range(4):
        for j in range(int(counts[row])):
            # A digitally shifted (0, m, s)-net: one point in each sixteenth of any coordinate ...
            assert sorted(np.floor(u[:, row, j] * 16).astype(int).tolist()) == list(range(16))
        # ... and of the first two coordinates jointly, one in each of the 4 x 4 squares.
        if counts[row] >= 2:
            cells = np.floor(u[:, row, 0] * 4) * 4 + np.floor(u[:, row, 1] * 4)
            assert sorted(cells.astype(int).tolist()) == list(range(16))
    # The next 16 points, from the same call of the row's stream, complete a net of 32.
    more = sobol_uniform(16, counts, RowNoise(KEYS), start=16)
    both = np.concatenate([u, more])[:, :, 0]
    for row in range(4):
        assert sorted(np.floor(both[:, row] * 32).astype(int).tolist()) == list(range(32))
    # A row's points depend on its key and count only: alone, or with a wider batch-mate, the same.
    alone = sobol_uniform(16, counts[1:2], RowNoise(KEYS[1:2]))
    assert np.array_equal(alone[:, 0, :1], u[:, 1, :1])
    # The shift is one call of the stream: the next call shifts differently.
    noise = RowNoise(KEYS)
    first = sobol_uniform(16, counts, noise)
    assert noise.calls == 1 and not np.array_equal(sobol_uniform(16, counts, noise), first)


def test_shifted_sobol_means_are_unbiased_with_a_smaller_error_than_independent_draws():
    # f(u) = u1 * u2 on (0, 1)^2: integral 1/4, variance 1/9 - 1/16. 64 independent points estimate
    # it with a standard error of sqrt(7 / 144 / 64) = 0.0276; a randomised Sobol net's error is
    # O(log(n) / n) for such a smooth f. Over 400 rows (independent shifts) the mean of the row
    # estimates has a standard error of at most 0.0276 / 20 = 0.0014.
    keys = np.arange(400, dtype=np.uint64) * np.uint64(7919) + np.uint64(1)
    u = sobol_uniform(64, torch.full((400,), 2), RowNoise(keys))
    estimates = (u[..., 0] * u[..., 1]).mean(axis=0)
    assert abs(estimates.mean() - 0.25) < 4 * 0.0014
    assert estimates.std() < 0.25 * np.sqrt(7 / 144 / 64)
