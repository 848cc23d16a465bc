"""IVCNFImputer in scikit-learn's machinery, persistence, and bad input."""

import pickle
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.datasets import load_diabetes
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline

from skivcnf import IVCNFImputer
from skivcnf.exceptions import ConstraintWarning

# A small flow and few epochs: these tests are about plumbing, not accuracy.
TINY = {"n_blocks": 1, "hidden_layer_sizes": (8,), "max_epochs": 2, "n_draws": 4, "n_train_draws": 2,
        "early_stopping": False, "random_state": 0}


@pytest.fixture(scope="module")
def data():
    X = load_diabetes().data[:80] * 10
    y = load_diabetes().target[:80]
    mask = np.random.default_rng(0).random(X.shape) < 0.2
    X_missing = np.where(mask, np.nan, X)
    return X, X_missing, mask, y


@pytest.fixture(scope="module")
def fitted(data):
    return IVCNFImputer(**TINY).fit(data[1])


# ---------------------------------------------------------------- scikit-learn machinery
def test_clone_and_params_round_trip():
    imputer = IVCNFImputer(**TINY)
    twin = clone(imputer)
    assert twin.get_params() == imputer.get_params() and twin is not imputer
    twin.set_params(n_draws=7, lipschitz_coeff=0.5)
    assert (twin.n_draws, twin.lipschitz_coeff) == (7, 0.5)
    with pytest.raises(ValueError, match="lipschitz_coeff"):
        IVCNFImputer(lipschitz_coeff=1.5).fit(np.ones((4, 2)))


def test_pipeline_and_cross_val_score(data):
    _, X_missing, _, y = data
    pipe = Pipeline([("impute", IVCNFImputer(**TINY)), ("ridge", Ridge())])
    scores = cross_val_score(pipe, X_missing, y, cv=2)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    # The imputer must carry signal to the regressor: better than predicting the mean.
    assert scores.mean() > 0


def test_grid_search_picks_by_held_out_likelihood(data):
    _, X_missing, _, _ = data
    search = GridSearchCV(IVCNFImputer(**TINY), {"lipschitz_coeff": [0.5, 0.9]}, cv=2).fit(X_missing)
    assert search.best_params_["lipschitz_coeff"] in (0.5, 0.9)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    completed = search.transform(X_missing)
    assert not np.isnan(completed).any()


def test_feature_names_and_pandas_output(data):
    X, X_missing, mask, _ = data
    columns = [f"c{i}" for i in range(X.shape[1])]
    frame = pd.DataFrame(X_missing, columns=columns, index=np.arange(100, 100 + len(X)))
    imputer = IVCNFImputer(add_indicator=True, **TINY).set_output(transform="pandas").fit(frame)
    assert list(imputer.feature_names_in_) == columns and imputer.n_features_in_ == X.shape[1]
    out = imputer.transform(frame)
    assert list(out.columns) == list(imputer.get_feature_names_out())
    assert list(out.columns[: X.shape[1]]) == columns and out.columns[-1].startswith("missingindicator_")
    assert (out.index == frame.index).all()
    np.testing.assert_array_equal(out.to_numpy()[:, : X.shape[1]][~mask], X[~mask])
    copies = imputer.sample_multiple_imputations(frame, 3)
    assert isinstance(copies, pd.DataFrame) and copies.shape == (3 * len(X), out.shape[1])
    assert copies.index.names[0] == "imputation"
    first = copies.xs(0, level="imputation")
    assert (first.index == frame.index).all() and list(first.columns) == list(out.columns)


def test_multiple_imputations_reproducible_with_random_state(data):
    _, X_missing, _, _ = data
    a = IVCNFImputer(**TINY).fit(X_missing).sample_multiple_imputations(X_missing, 2)
    b = IVCNFImputer(**TINY).fit(X_missing).sample_multiple_imputations(X_missing, 2)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- persistence
def test_joblib_round_trip(tmp_path, data, fitted):
    _, X_missing, _, _ = data
    path = tmp_path / "imputer.joblib"
    joblib.dump(fitted, path)
    np.testing.assert_array_equal(joblib.load(path).transform(X_missing), fitted.transform(X_missing))


def test_safe_save_and_load(tmp_path, data):
    X, X_missing, _, _ = data
    frame = pd.DataFrame(X_missing, columns=[f"c{i}" for i in range(X.shape[1])])
    imputer = IVCNFImputer(add_indicator=True, **TINY).fit(frame)
    path = tmp_path / "imputer.pt"
    imputer.save(path)
    loaded = IVCNFImputer.load(path)
    assert loaded.get_params() == imputer.get_params()
    np.testing.assert_array_equal(loaded.transform(frame), imputer.transform(frame))
    np.testing.assert_array_equal(loaded.score_samples(frame), imputer.score_samples(frame))
    assert list(loaded.get_feature_names_out()) == list(imputer.get_feature_names_out())
    # The file is plain data: the restricted unpickler reads it.
    torch.load(path, weights_only=True)


def test_load_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a file written by IVCNFImputer.save"):
        IVCNFImputer.load(path)
    pickled = tmp_path / "pickled.pt"
    with open(pickled, "wb") as handle:
        pickle.dump(IVCNFImputer(), handle, protocol=2)
    with pytest.raises(pickle.UnpicklingError):  # weights_only refuses arbitrary objects
        IVCNFImputer.load(pickled)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad, error, match", [
    (np.array([[1.0, np.inf], [2.0, 3.0], [4.0, 5.0]]), ValueError, "infinity"),
    (np.array([["a", "b"], ["c", "d"]], dtype=object), ValueError, "could not convert|string"),
    (sp.csr_matrix(np.eye(3)), TypeError, "[Ss]parse"),
    (np.empty((0, 3)), ValueError, "0 sample"),
])
def test_bad_input_raises_a_clear_error(bad, error, match):
    with pytest.raises(error, match=match):
        IVCNFImputer(**TINY).fit(bad)


def test_object_column_in_a_frame_is_refused(data):
    _, X_missing, _, _ = data
    frame = pd.DataFrame(X_missing[:, :3], columns=["a", "b", "c"]).assign(kind="x")
    with pytest.raises(ValueError, match="could not convert|string"):
        IVCNFImputer(**TINY).fit(frame)


def test_wrong_number_of_features_at_transform(fitted, data):
    _, X_missing, _, _ = data
    with pytest.raises(ValueError, match="features"):
        fitted.transform(X_missing[:, :-1])


def test_mismatched_feature_names_warn(data):
    _, X_missing, _, _ = data
    frame = pd.DataFrame(X_missing, columns=[f"c{i}" for i in range(X_missing.shape[1])])
    imputer = IVCNFImputer(**TINY).fit(frame)
    with pytest.warns(UserWarning, match="feature names"):
        imputer.transform(X_missing)
    with pytest.raises(ValueError, match="feature names"):
        imputer.transform(frame.rename(columns={"c0": "other"}))


def test_all_missing_rows_are_imputed_from_the_model(fitted, data):
    _, X_missing, _, _ = data
    rows = X_missing[:3].copy()
    rows[1] = np.nan
    out = fitted.transform(rows)
    assert np.isfinite(out).all()
    # No observed entry: the row's imputation is the model's marginal mean, near the data's.
    spread = np.nanstd(X_missing, axis=0)
    assert (np.abs(out[1] - np.nanmean(X_missing, axis=0)) < 3 * spread).all()


def test_single_row_at_transform(fitted, data):
    X, X_missing, mask, _ = data
    row = X_missing[[0]]
    out = fitted.transform(row)
    assert out.shape == (1, X.shape[1]) and np.array_equal(out[~mask[[0]]], X[[0]][~mask[[0]]])


def test_integer_input_with_a_sentinel(data):
    X, _, _, _ = data
    ints = np.round(X * 10).astype(np.int64)
    ints[::5, 2] = -999
    out = IVCNFImputer(missing_values=-999, **TINY).fit_transform(ints)
    assert out.dtype == np.float64 and not (out == -999).any()
    keep = ints != -999
    np.testing.assert_array_equal(out[keep], ints[keep])


def test_huge_values_round_trip_exactly(data):
    X, X_missing, mask, _ = data
    big = X_missing + 1e12
    out = IVCNFImputer(**TINY).fit_transform(big)
    np.testing.assert_array_equal(out[~mask], big[~mask])
    # Imputations land on the data's scale (within its spread of 1e12), not at 0 or at inf.
    assert np.isfinite(out).all() and (np.abs(out[mask] - 1e12) < 10 * np.nanstd(big, axis=0).max()).all()


def test_nan_is_missing_whatever_the_placeholder(data):
    X, X_missing, mask, _ = data
    mixed = X_missing.copy()
    mixed[0, 0], mask = -1.0, mask.copy()
    mask[0, 0] = True
    out = IVCNFImputer(missing_values=-1.0, **TINY).fit_transform(mixed)
    assert np.isfinite(out).all() and out[0, 0] != -1.0
    np.testing.assert_array_equal(out[~mask], X[~mask])


def test_exact_logdet_refuses_very_wide_tables():
    X = np.random.default_rng(0).standard_normal((30, 101))
    with pytest.raises(ValueError, match="logdet='clade'"):
        IVCNFImputer(**TINY).fit(X)


def test_tiny_validation_split_turns_early_stopping_off_quietly(data):
    _, X_missing, _, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        imputer = IVCNFImputer(**{**TINY, "early_stopping": True}, validation_fraction=0.01).fit(X_missing)
    assert imputer.history_.validation == []


def test_unfitted_imputer_refuses_to_transform():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        IVCNFImputer().transform(np.ones((2, 2)))


def test_unsolved_rows_fall_back_with_a_warning(fitted, data, monkeypatch):
    _, X_missing, mask, _ = data
    import skivcnf.imputer as module

    real = module.sample_conditional

    def failing(*args, **kwargs):
        draws = real(*args, **kwargs)
        converged = draws.converged.clone()
        converged[:, 0] = False
        log_weight = draws.log_weight.clone()
        log_weight[:, 0] = -np.inf
        return draws._replace(converged=converged, log_weight=log_weight)

    monkeypatch.setattr(module, "sample_conditional", failing)
    with pytest.warns(ConstraintWarning, match="no draw"):
        out = fitted.transform(X_missing[:5])
    # Row 0's missing entries take the training means; its observed entries are untouched.
    means = fitted.scaler_.mean_
    np.testing.assert_allclose(out[0, mask[0]], means[mask[0]], rtol=1e-12)
    for weighted in (True, False):
        imputer = pickle.loads(pickle.dumps(fitted)).set_params(importance_weighting=weighted)
        with pytest.warns(ConstraintWarning, match="every imputation"):
            copies = imputer.sample_multiple_imputations(X_missing[:5], 3)
        np.testing.assert_allclose(copies[:, 0, mask[0]], np.broadcast_to(means[mask[0]], (3, mask[0].sum())),
                                   rtol=1e-12)
        assert np.isfinite(copies).all()


def test_max_epochs_without_early_stop_warns(data):
    _, X_missing, _, _ = data
    params = {**TINY, "early_stopping": True, "n_iter_no_change": 50}
    with pytest.warns(ConvergenceWarning, match="max_epochs"):
        IVCNFImputer(**params).fit(X_missing)


# ---------------------------------------------------------------- property test
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_rows=st.integers(4, 30), n_cols=st.integers(1, 5), rate=st.floats(0.0, 0.6),
       scale=st.sampled_from([1e-3, 1.0, 1e6]), seed=st.integers(0, 2**16))
def test_observed_entries_unchanged_and_outputs_finite(n_rows, n_cols, rate, scale, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_rows, n_cols)) * scale + rng.standard_normal(n_cols) * scale
    mask = rng.random(X.shape) < rate
    X_missing = np.where(mask, np.nan, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        imputer = IVCNFImputer(**{**TINY, "max_epochs": 1}, keep_empty_features=True)
        out = imputer.fit_transform(X_missing)
    assert out.shape == X.shape and np.isfinite(out).all()
    np.testing.assert_array_equal(out[~mask], X[~mask])


# ---------------------------------------------------------------- options and devices
def test_per_row_refinement_changes_the_draws_not_the_observed(fitted, data):
    X, X_missing, mask, _ = data
    refined = pickle.loads(pickle.dumps(fitted)).set_params(refinement_steps=5)  # same fit, refined draws
    plain, better = fitted.transform(X_missing[:20]), refined.transform(X_missing[:20])
    np.testing.assert_array_equal(better[~mask[:20]], X[:20][~mask[:20]])
    assert np.isfinite(better).all() and not np.array_equal(plain, better)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(data):
    with pytest.raises(ValueError, match="CUDA is not available"):
        IVCNFImputer(device="cuda", **TINY).fit(data[1])


def test_an_imputer_saved_for_cuda_loads_on_the_cpu(tmp_path, fitted, data):
    _, X_missing, _, _ = data
    expected = fitted.transform(X_missing)
    moved = pickle.loads(pickle.dumps(fitted))
    moved.device = "cuda:0"  # as if fitted on a GPU machine
    revived = pickle.loads(pickle.dumps(moved))
    assert next(revived.flow_.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    np.testing.assert_allclose(revived.transform(X_missing), expected, rtol=1e-5)
    moved.save(tmp_path / "gpu.pt")
    np.testing.assert_allclose(IVCNFImputer.load(tmp_path / "gpu.pt").transform(X_missing), expected, rtol=1e-5)


def test_work_is_batched_so_memory_is_bounded(fitted, data, monkeypatch):
    _, X_missing, _, _ = data
    import skivcnf.imputer as module

    seen, real = [], module.sample_conditional

    def recording(flow, y, *args, **kwargs):
        seen.append(len(y))
        return real(flow, y, *args, **kwargs)

    monkeypatch.setattr(module, "sample_conditional", recording)
    imputer = pickle.loads(pickle.dumps(fitted)).set_params(batch_size=16)
    many = np.tile(X_missing, (5, 1))
    imputer.transform(many)
    imputer.sample_multiple_imputations(many, 3)
    imputer.score_samples(many)
    assert max(seen) <= 16 and sum(seen) == 3 * len(many)
