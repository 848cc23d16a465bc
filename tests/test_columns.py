"""Column bookkeeping (skivcnf/_columns.py): the mask, the layout, scaling and completing."""

import numpy as np

from skivcnf._columns import ColumnLayout, missing_mask


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
