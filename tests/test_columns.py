"""Column bookkeeping (skivcnf/_columns.py): the mask, the layout, scaling and completing."""

import numpy as np

from skivcnf._columns import ColumnLayout, grid_steps, missing_mask


def _table():
    X = np.array([[1.0, 5.0, np.nan, 2.0], [3.0, 5.0, np.nan, -1.0], [np.nan, np.nan, np.nan, 4.0],
                  [5.0, 5.0, np.nan, np.nan]])
    return X, missing_mask(X, np.nan)


def test_missing_mask_takes_the_placeholder_and_nan():
    X = np.array([[0.0, -1.0, np.nan]])
    assert missing_mask(X, -1).tolist() == [[False, True, True]]
    assert missing_mask(X, np.nan).tolist() == missing_mask(X, None).tolist() == [[False, False, True]]


def test_layout_splits_empty_constant_and_modelled_columns():
    X, mask = _table()
    layout = ColumnLayout.fit(X, mask)
    assert layout.empty.tolist() == [False, False, True, False]
    assert layout.modelled.tolist() == [True, False, False, True] and layout.n_modelled == 2
    assert layout.constant_values.tolist() == [0.0, 5.0, 0.0, 0.0]
    # Observed mean and (population) standard deviation of the modelled columns.
    np.testing.assert_allclose(layout.center, [3.0, 5.0 / 3.0], rtol=1e-15)
    np.testing.assert_allclose(layout.scale, [np.std([1.0, 3.0, 5.0]), np.std([2.0, -1.0, 4.0])], rtol=1e-15)


def test_standardise_round_trips_and_the_density_correction_counts_observed_entries():
    X, mask = _table()
    layout = ColumnLayout.fit(X, mask)
    z = layout.standardise(X)
    assert np.array_equal(np.isnan(z), mask[:, layout.modelled])
    np.testing.assert_allclose(layout.unstandardise(np.nan_to_num(z))[~mask[:, layout.modelled]],
                               X[:, layout.modelled][~mask[:, layout.modelled]], rtol=1e-15)
    expected = [np.log(layout.scale).sum(), np.log(layout.scale).sum(), np.log(layout.scale[1]),
                np.log(layout.scale[0])]
    np.testing.assert_allclose(layout.observed_log_scale(mask), expected, rtol=1e-15)


def test_complete_fills_only_missing_entries():
    X, mask = _table()
    layout = ColumnLayout.fit(X, mask)
    values = np.full((4, 2), 9.0)
    out = layout.complete(X, mask, values, keep_empty=False)
    assert out.shape == (4, 3)  # the empty column is dropped
    assert out.tolist() == [[1.0, 5.0, 2.0], [3.0, 5.0, -1.0], [9.0, 5.0, 4.0], [5.0, 5.0, 9.0]]
    kept = layout.complete(X, mask, values, keep_empty=True)
    assert kept[:, 2].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert np.isnan(layout.complete(X, mask, None, keep_empty=False)[2, 0])  # nothing to fill it with


def test_grid_steps_find_integer_decimal_and_scaled_grids_and_nothing_else():
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, 200).astype(float)                   # step 1 (gaps of 1 and more)
    money = 1000.0 + np.round(rng.normal(0, 50, 200), 2)           # step 0.01, with float error of the sums
    pixels = rng.integers(0, 17, 200) / 16.0                       # step 1/16
    continuous = rng.normal(size=200)
    binary = rng.choice([-0.05, 0.05], 200)                        # two values: one step between them
    constant = np.full(200, 2.5)
    X = np.column_stack([counts, money, pixels, continuous, binary, constant])
    mask = np.zeros(X.shape, dtype=bool)
    steps = grid_steps(X, mask)
    np.testing.assert_allclose(steps[:3], [1.0, 0.01, 1 / 16], rtol=1e-6)
    assert steps[3] == 0.0 and steps[5] == 0.0
    np.testing.assert_allclose(steps[4], 0.1, rtol=1e-12)
    # Missing entries do not count: a value off the grid that is masked leaves the step.
    X[0, 0], mask[0, 0] = 0.5, True
    assert grid_steps(X, mask)[0] == 1.0
    mask[0, 0] = False
    assert grid_steps(X, mask)[0] == 0.5
    # Gaps of 2 and 3 lie on a grid of step 1; gaps whose ratio is no small fraction lie on none.
    assert grid_steps(np.array([[0.0], [2.0], [5.0]]), np.zeros((3, 1), dtype=bool))[0] == 1.0
    assert grid_steps(np.array([[0.0], [1.0], [1.0 + np.pi]]), np.zeros((3, 1), dtype=bool))[0] == 0.0

