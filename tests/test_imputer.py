import pickle

import numpy as np
import pytest
from sklearn.datasets import load_diabetes

from skivcnf import IVCNFImputer

FAST = {"max_epochs": 3, "n_draws": 8, "early_stopping": False, "random_state": 0}


@pytest.fixture(scope="module")
def table():
    X = load_diabetes().data[:120]
    rng = np.random.default_rng(0)
    mask = rng.random(X.shape) < 0.2
    X_missing = X.copy()
    X_missing[mask] = np.nan
    return X, X_missing, mask


@pytest.fixture(scope="module")
def fitted(table):
    _, X_missing, _ = table
    return IVCNFImputer(**FAST).fit(X_missing)


def test_observed_entries_unchanged_and_missing_filled(table, fitted):
    X, X_missing, mask = table
    out = fitted.transform(X_missing)
    assert np.array_equal(out[~mask], X[~mask])
    assert np.isfinite(out).all()
    # Imputations stay within the range the data spans (standardised columns, a trained flow).
    assert (np.abs(out[mask]) < 10 * np.nanstd(X_missing, axis=0).max()).all()


def test_transform_is_reproducible(table, fitted):
    _, X_missing, _ = table
    assert np.array_equal(fitted.transform(X_missing), fitted.transform(X_missing))


def test_pickle_round_trip_gives_identical_transforms(table, fitted):
    _, X_missing, _ = table
    clone = pickle.loads(pickle.dumps(fitted))
    assert np.array_equal(clone.transform(X_missing), fitted.transform(X_missing))


def test_multiple_imputations_shape_and_observed(table, fitted):
    X, X_missing, mask = table
    draws = fitted.sample_multiple_imputations(X_missing, 4)
    assert draws.shape == (4, *X.shape)
    assert all(np.array_equal(d[~mask], X[~mask]) for d in draws)
    assert np.std(draws[:, mask], axis=0).mean() > 0  # honest uncertainty: copies differ


def test_score_samples_is_finite_per_row(table, fitted):
    _, X_missing, _ = table
    scores = fitted.score_samples(X_missing)
    assert scores.shape == (len(X_missing),) and np.isfinite(scores).all()


def test_empty_and_constant_columns(table):
    _, X_missing, _ = table
    X = np.column_stack([X_missing[:, :3], np.full(len(X_missing), np.nan), np.full(len(X_missing), 2.5)])
    X[::7, 4] = np.nan
    dropped = IVCNFImputer(**FAST).fit_transform(X)
    assert dropped.shape == (len(X), 4) and np.all(dropped[:, 3] == 2.5)
    kept = IVCNFImputer(keep_empty_features=True, **FAST).fit_transform(X)
    assert kept.shape == (len(X), 5) and np.all(kept[:, 3] == 0)


def test_inf_and_strings_raise():
    X = np.array([[1.0, np.inf], [2.0, 3.0], [4.0, 5.0]])
    with pytest.raises(ValueError, match="infinity"):
        IVCNFImputer(**FAST).fit(X)
    with pytest.raises(ValueError):
        IVCNFImputer(**FAST).fit(np.array([["a", "b"], ["c", "d"]], dtype=object))


def test_bad_device_raises():
    with pytest.raises(ValueError, match="device"):
        IVCNFImputer(device="tpu", **FAST).fit(np.array([[1.0, 2.0], [3.0, np.nan], [5.0, 4.0]]))
