"""IVCNFImputer's estimator contract: fit/transform, the columns it keeps, its outputs, its errors.

A tiny flow trained for two epochs: these tests are about the contract, not about accuracy.
The values of the imputations are checked against the closed-form law of a Gaussian flow in
``test_imputer_oracle.py``, persistence in ``test_persistence.py``, scikit-learn's estimator
checks in ``test_sklearn_checks.py``.
"""

import pickle
import sys
import warnings
from copy import deepcopy

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import Pipeline

from skivcnf import ImputationDraws, IVCNFImputer
from skivcnf import conditional as conditional_module
from skivcnf.conditional import fitting as fitting_module
from skivcnf.exceptions import ConstraintWarning
from skivcnf.imputer import VALIDATION_SMOOTHING

from .helpers import TINY_IMPUTER as TINY
from .helpers import diabetes_with_holes

#: float32 holds 24 bits: a float64 value rounded to it moves by at most this, relatively.
FLOAT32_ROUNDING = 2.0**-24


@pytest.fixture(scope="module")
def data():
    return diabetes_with_holes()


@pytest.fixture(scope="module")
def fitted(data):
    return IVCNFImputer(**TINY).fit(data[1])


def patch_everywhere(monkeypatch, name, wrap):
    """Replace ``skivcnf.conditional.<name>`` by ``wrap(real)`` in every skivcnf module bound to it.

    The estimator's modules import the function by name; patching each binding keeps these
    tests independent of which module calls it.
    """
    real = getattr(conditional_module, name)
    replacement = wrap(real)
    modules = [module for key, module in list(sys.modules.items())
               if key.startswith("skivcnf") and getattr(module, name, None) is real]
    assert modules, f"no skivcnf module binds {name}"
    for module in modules:
        monkeypatch.setattr(module, name, replacement)


# ---------------------------------------------------------------- outputs
def test_observed_entries_unchanged_and_every_missing_entry_filled(data, fitted):
    X, X_missing, mask, _ = data
    out = fitted.transform(X_missing)
    assert out.shape == X.shape and out.dtype == np.float64
    np.testing.assert_array_equal(out[~mask], X[~mask])  # bit for bit
    assert not np.isnan(out).any()


def test_same_random_state_gives_identical_outputs(data, fitted):
    _, X_missing, _, _ = data
    twin = IVCNFImputer(**TINY).fit(X_missing)
    # Each method draws from its own named stream, reseeded per call: repeated calls and a
    # refit with the same random_state agree bit for bit.
    np.testing.assert_array_equal(fitted.transform(X_missing), fitted.transform(X_missing))
    np.testing.assert_array_equal(twin.transform(X_missing), fitted.transform(X_missing))
    np.testing.assert_array_equal(twin.sample_multiple_imputations(X_missing, 2),
                                  fitted.sample_multiple_imputations(X_missing, 2))
    np.testing.assert_array_equal(twin.score_samples(X_missing), fitted.score_samples(X_missing))
    for mine, theirs in zip(twin.conditional_draws(X_missing), fitted.conditional_draws(X_missing), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_outputs_follow_a_change_of_units(data, fitted):
    # The flow sees (X - center_) / scale_, so refitting on a X + b with the same seed gives
    # the same standardised table: transform follows the change of units and the density
    # picks up the Jacobian -sum log a over each row's observed columns. The standardised
    # inputs agree to float64 rounding (~1e-15), far below float32's resolution, so the
    # flows see the same float32 numbers: allow one float32 rounding per column sd.
    X, X_missing, mask, _ = data
    a = np.array([1e3, 1e-2, 7.0, 1.0, 0.5, 2.0, 3.0, 1e5, 1.0, 1e-4])
    b = np.array([1.0, -5.0, 0.0, 1e3, 2.0, 0.0, 0.0, -1e4, 3.0, 0.5])
    moved = IVCNFImputer(**TINY).fit(a * X_missing + b)
    np.testing.assert_allclose(moved.center_, a * fitted.center_ + b, rtol=1e-12)
    np.testing.assert_allclose(moved.scale_, a * fitted.scale_, rtol=1e-12)
    sd = a * np.nanstd(X_missing, axis=0)
    error = (moved.transform(a * X_missing + b) - (a * fitted.transform(X_missing) + b)) / sd
    assert np.abs(error).max() < FLOAT32_ROUNDING
    # The bounds themselves are then equal; only the float64 change of scale differs (~1e-14).
    expected = fitted.score_samples(X_missing) - (~mask) @ np.log(a)
    np.testing.assert_allclose(moved.score_samples(a * X_missing + b), expected, rtol=0, atol=1e-9)


def test_huge_values_round_trip_exactly(data, fitted):
    # X + 1e12 lies on float64's grid at 1e12 (spacing 1.2e-4, 3e-4 column sd): the flow
    # sees the standardised table perturbed by up to that much. The rows' random keys hash
    # the values the flow sees, so perturbed rows draw other numbers: their imputations differ
    # by Monte Carlo error (a fraction of a column sd with 64 draws; TINY's 4 reach 1.2 on a 2-epoch
    # flow), where a loss of precision (float32 at 1e12: spacing 65,536) would move them by 1e6 column sds.
    X, X_missing, mask, _ = data
    big = X_missing + 1e12
    out = IVCNFImputer(**TINY).fit(big).set_params(n_draws=64).transform(big)
    np.testing.assert_array_equal(out[~mask], big[~mask])
    sd = np.nanstd(X_missing, axis=0) * np.ones_like(X_missing)
    reference = deepcopy(fitted).set_params(n_draws=64).transform(X_missing)
    error = (out - (reference + 1e12))[mask] / sd[mask]
    assert np.abs(error).max() < 1.0


def test_multiple_imputations_shape_and_observed_entries(data, fitted):
    X, X_missing, mask, _ = data
    copies = fitted.sample_multiple_imputations(X_missing, 4)
    assert copies.shape == (4, *X.shape)
    for copy in copies:
        np.testing.assert_array_equal(copy[~mask], X[~mask])
        assert not np.isnan(copy).any()


def test_proper_multiple_imputations_with_refined_posteriors(data, fitted):
    # The bootstrap copies draw under no_grad; each row's refinement still needs its own graph.
    X, X_missing, mask, _ = data
    refined = clone(fitted).set_params(refinement_steps=2).fit(X_missing)
    copies = refined.sample_multiple_imputations(X_missing, 2, proper=True)
    for copy in copies:
        np.testing.assert_array_equal(copy[~mask], X[~mask])
        assert np.isfinite(copy).all()
    assert not np.array_equal(copies[0][mask], copies[1][mask])  # two re-estimated models, two draws


def test_score_is_the_mean_of_score_samples(data, fitted):
    _, X_missing, _, _ = data
    scores = fitted.score_samples(X_missing)
    assert scores.shape == (len(X_missing),)
    assert fitted.score(X_missing) == pytest.approx(scores.mean(), rel=1e-12)


@pytest.mark.parametrize("importance_weighting", [True, False])
def test_conditional_draws_record(data, fitted, importance_weighting):
    X, X_missing, mask, _ = data
    imputer = pickle.loads(pickle.dumps(fitted)).set_params(importance_weighting=importance_weighting)
    draws = imputer.conditional_draws(X_missing)
    assert isinstance(draws, ImputationDraws)
    n_draws, n = TINY["n_draws"], len(X)
    assert draws.values.shape == (n_draws, n, X.shape[1]) and draws.weights.shape == (n_draws, n)
    assert draws.ess.shape == (n,) and draws.converged.shape == (n_draws, n) and draws.converged.all()
    for values in draws.values:
        np.testing.assert_array_equal(values[~mask], X[~mask])
    if importance_weighting:  # float32 softmax: each weight within a relative 2^-24, so the sum too
        np.testing.assert_allclose(draws.weights.sum(axis=0), 1.0, rtol=0, atol=(n_draws + 1) * FLOAT32_ROUNDING)
        np.testing.assert_allclose(draws.ess, 1 / (draws.weights**2).sum(axis=0), rtol=1e-5)
    else:  # equal weights on the converged draws
        np.testing.assert_array_equal(draws.weights, 1 / n_draws)
        np.testing.assert_array_equal(draws.ess, n_draws)
    assert imputer.conditional_draws(X_missing[:3], n_draws=7).values.shape == (7, 3, X.shape[1])


def test_single_row_at_transform(fitted, data):
    X, X_missing, mask, _ = data
    out = fitted.transform(X_missing[[0]])
    assert out.shape == (1, X.shape[1])
    np.testing.assert_array_equal(out[~mask[[0]]], X[[0]][~mask[[0]]])


# ---------------------------------------------------------------- columns
def test_empty_and_constant_columns(data):
    _, X_missing, _, _ = data
    n = len(X_missing)
    X = np.column_stack([X_missing[:, :3], np.full(n, np.nan), np.full(n, 2.5)])
    X[::7, 4] = np.nan
    dropped = IVCNFImputer(**TINY).fit(X)
    np.testing.assert_array_equal(dropped.empty_features_, [False, False, False, True, False])
    np.testing.assert_array_equal(dropped.modelled_features_, [True, True, True, False, False])
    np.testing.assert_array_equal(dropped.constant_values_, [0, 0, 0, 0, 2.5])
    assert dropped.center_.shape == dropped.scale_.shape == (3,)
    out = dropped.transform(X)
    assert out.shape == (n, 4)
    np.testing.assert_array_equal(out[:, 3], 2.5)
    assert list(dropped.get_feature_names_out()) == ["x0", "x1", "x2", "x4"]
    kept = IVCNFImputer(keep_empty_features=True, **TINY).fit(X)
    out = kept.transform(X)
    assert out.shape == (n, 5)
    np.testing.assert_array_equal(out[:, 3], 0.0)
    np.testing.assert_array_equal(out[:, 4], 2.5)
    assert list(kept.get_feature_names_out()) == ["x0", "x1", "x2", "x3", "x4"]


def test_a_table_without_modelled_columns():
    # Every column constant or empty: no flow; transform fills constants, the density of the
    # observed entries is 0 (a point mass's log-density is not counted).
    n = 6
    X = np.column_stack([np.full(n, 1.5), np.full(n, np.nan)])
    X[::2, 0] = np.nan
    imputer = IVCNFImputer(keep_empty_features=True, **TINY).fit(X)
    assert imputer.flow_ is None and imputer.posterior_ is None
    np.testing.assert_array_equal(imputer.transform(X), np.column_stack([np.full(n, 1.5), np.zeros(n)]))
    np.testing.assert_array_equal(imputer.score_samples(X), np.zeros(n))
    np.testing.assert_array_equal(imputer.sample_multiple_imputations(X, 2)[1], imputer.transform(X))


def test_missing_indicator_columns(data):
    _, X_missing, mask, _ = data
    X = X_missing.copy()
    X[:, 2] = np.where(np.isnan(X[:, 2]), 0.0, X[:, 2])  # a column with nothing missing gets no indicator
    imputer = IVCNFImputer(add_indicator=True, **TINY).fit(X)
    out = imputer.transform(X)
    flagged = [j for j in range(X.shape[1]) if j != 2]
    np.testing.assert_array_equal(out[:, X.shape[1]:], np.isnan(X[:, flagged]))
    assert list(imputer.get_feature_names_out()[X.shape[1]:]) == [f"missingindicator_x{j}" for j in flagged]
    copies = imputer.sample_multiple_imputations(X, 2)
    np.testing.assert_array_equal(copies[1][:, X.shape[1]:], np.isnan(X[:, flagged]))


def test_feature_names_and_pandas_output(data):
    X, X_missing, mask, _ = data
    columns = [f"c{i}" for i in range(X.shape[1])]
    frame = pd.DataFrame(X_missing, columns=columns, index=np.arange(100, 100 + len(X)))
    imputer = IVCNFImputer(add_indicator=True, **TINY).set_output(transform="pandas").fit(frame)
    assert list(imputer.feature_names_in_) == columns and imputer.n_features_in_ == X.shape[1]
    out = imputer.transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == list(imputer.get_feature_names_out())
    assert list(out.columns[: X.shape[1]]) == columns and out.columns[-1] == "missingindicator_c9"
    assert (out.index == frame.index).all()
    np.testing.assert_array_equal(out.to_numpy()[:, : X.shape[1]][~mask], X[~mask])
    copies = imputer.sample_multiple_imputations(frame, 3)
    assert isinstance(copies, pd.DataFrame) and copies.shape == (3 * len(X), out.shape[1])
    assert copies.index.names[0] == "imputation"
    first = copies.xs(0, level="imputation")
    assert (first.index == frame.index).all() and list(first.columns) == list(out.columns)
    # The frame holds the same numbers as the array output.
    plain = clone(imputer).set_output(transform="default").fit(frame)
    np.testing.assert_array_equal(out.to_numpy(), plain.transform(frame))


def test_integer_input_with_a_sentinel(data):
    X, X_missing, mask, _ = data
    ints = np.round(X * 10).astype(np.int64)
    ints[mask] = -999
    out = IVCNFImputer(missing_values=-999, **TINY).fit_transform(ints)
    # The sentinel is only a spelling of a missing entry: the same integers with pandas' NA give the same output.
    as_na = pd.DataFrame(ints).astype("Int64").mask(mask)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, IVCNFImputer(**TINY).fit_transform(as_na))
    # Integer columns are discrete numbers: imputed by integers, observed entries unchanged.
    np.testing.assert_array_equal(out, np.round(out))
    np.testing.assert_array_equal(out[~mask], ints[~mask])


def test_nan_is_missing_whatever_the_placeholder(data):
    X, X_missing, mask, _ = data
    mixed = X_missing.copy()
    mixed[0, 0] = -1.0
    mask = mask.copy()
    mask[0, 0] = True
    out = IVCNFImputer(missing_values=-1.0, **TINY).fit_transform(mixed)
    np.testing.assert_array_equal(out, IVCNFImputer(**TINY).fit_transform(np.where(mask, np.nan, X)))


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("bad, error, match", [
    (np.array([[1.0, np.inf], [2.0, 3.0], [4.0, 5.0]]), ValueError, "infinity"),
    (np.array([["a", "b"], ["c", "d"]], dtype=object), ValueError, "could not convert|string"),
    (sp.csr_matrix(np.eye(3)), TypeError, "[Ss]parse"),
    (np.empty((0, 3)), ValueError, "0 sample"),
    (np.array([[1.0, 2.0]]), ValueError, "1 sample"),
])
def test_bad_input_raises_a_clear_error(bad, error, match):
    with pytest.raises(error, match=match):
        IVCNFImputer(**TINY).fit(bad)


def test_label_column_is_refused_when_categories_are_off(data):
    _, X_missing, _, _ = data
    frame = pd.DataFrame(X_missing[:, :3], columns=["a", "b", "c"]).assign(kind="x")
    with pytest.raises(ValueError, match="Column 'kind' holds labels"):
        IVCNFImputer(categorical_features=None, **TINY).fit(frame)


def test_wrong_number_of_features_at_transform(fitted, data):
    _, X_missing, _, _ = data
    for method in (fitted.transform, fitted.score_samples, fitted.conditional_draws):
        with pytest.raises(ValueError, match="10 features"):
            method(X_missing[:, :-1])


def test_mismatched_feature_names_warn(data):
    _, X_missing, _, _ = data
    frame = pd.DataFrame(X_missing, columns=[f"c{i}" for i in range(X_missing.shape[1])])
    imputer = IVCNFImputer(**TINY).fit(frame)
    with pytest.warns(UserWarning, match="feature names"):
        imputer.transform(X_missing)
    with pytest.raises(ValueError, match="feature names"):
        imputer.transform(frame.rename(columns={"c0": "other"}))


@pytest.mark.parametrize("params, match", [
    ({"lipschitz_coeff": 1.5}, "lipschitz_coeff"),
    ({"n_draws": 0}, "n_draws"),
    ({"objective": "kl"}, "objective"),
    ({"device": "tpu"}, "device"),
    ({"logdet": "clade"}, "objective='iwae'.*logdet='clade'|logdet='clade'.*objective='iwae'"),
])
def test_bad_parameters_raise_naming_them(params, match):
    with pytest.raises(ValueError, match=match):
        IVCNFImputer(**{**TINY, **params}).fit(np.array([[1.0, 2.0], [3.0, np.nan], [5.0, 4.0]]))


def test_bad_counts_at_imputation_name_the_parameter(fitted, data):
    _, X_missing, _, _ = data
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="n_imputations"):
            fitted.sample_multiple_imputations(X_missing, bad)
        with pytest.raises(ValueError, match="n_draws"):
            fitted.conditional_draws(X_missing, n_draws=bad)


def test_exact_logdet_refuses_very_wide_tables():
    X = np.random.default_rng(0).standard_normal((30, 101))
    imputer = IVCNFImputer(**TINY)
    with pytest.raises(ValueError, match="logdet='clade'"):
        imputer.fit(X)
    # The failed fit leaves nothing that looks fitted (no silent NaN output from transform).
    with pytest.raises(NotFittedError):
        imputer.transform(X)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(data):
    with pytest.raises(ValueError, match="CUDA is not available"):
        IVCNFImputer(device="cuda", **TINY).fit(data[1])


@pytest.mark.parametrize("method", ["transform", "score_samples", "sample_multiple_imputations",
                                    "conditional_draws", "get_feature_names_out", "save"])
def test_unfitted_imputer_refuses_to_work(method, tmp_path):
    args = {"get_feature_names_out": (), "save": (tmp_path / "x.pt",)}.get(method, (np.ones((2, 2)),))
    with pytest.raises(NotFittedError):
        getattr(IVCNFImputer(), method)(*args)


# ---------------------------------------------------------------- training
def test_tiny_validation_split_turns_early_stopping_off_quietly(data):
    _, X_missing, _, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        imputer = IVCNFImputer(**{**TINY, "early_stopping": True}, validation_fraction=0.01).fit(X_missing)
    assert imputer.history_.validation_loss == [] and not imputer.history_.stopped_early
    assert len(imputer.history_.train_loss) == TINY["max_epochs"]


def test_early_stopping_watches_the_smoothed_held_out_bound(data, monkeypatch):
    seen = []
    real = fitting_module.EarlyStopping

    def spy(*args, **kwargs):
        seen.append(kwargs.get("ema_weight"))
        return real(*args, **kwargs)

    monkeypatch.setattr(fitting_module, "EarlyStopping", spy)
    IVCNFImputer(**{**TINY, "early_stopping": True}).fit(data[1])
    assert seen == [VALIDATION_SMOOTHING]


def test_max_epochs_without_early_stop_warns(data):
    _, X_missing, _, _ = data
    params = {**TINY, "early_stopping": True, "n_iter_no_change": 50}
    with pytest.warns(ConvergenceWarning, match="max_epochs"):
        imputer = IVCNFImputer(**params).fit(X_missing)
    # 8 of 80 rows held out, one held-out loss per epoch.
    assert len(imputer.history_.validation_loss) == TINY["max_epochs"] and not imputer.history_.stopped_early


# ---------------------------------------------------------------- unsolved draws and batching
def test_unsolved_rows_fall_back_to_the_training_means_with_a_warning(fitted, data, monkeypatch):
    _, X_missing, mask, _ = data

    def failing_row_0(real):
        def sample_conditional(*args, **kwargs):
            draws = real(*args, **kwargs)
            converged = draws.converged.clone()
            converged[:, 0] = False
            log_weight = draws.log_weight  # None where weights are off (importance_weighting=False)
            if log_weight is not None:
                log_weight = log_weight.clone()
                log_weight[:, 0] = -np.inf
            return draws._replace(converged=converged, log_weight=log_weight)
        return sample_conditional

    patch_everywhere(monkeypatch, "sample_conditional", failing_row_0)
    means = np.zeros(X_missing.shape[1])
    means[fitted.modelled_features_] = fitted.center_
    with pytest.warns(ConstraintWarning, match="no draw") as caught:
        out = fitted.transform(X_missing[:5])
    # One warning, at this line (not inside skivcnf, scikit-learn's set_output wrapper or torch).
    assert [w.filename for w in caught if w.category is ConstraintWarning] == [__file__]
    # Row 0's missing entries take the training means; its observed entries are untouched.
    np.testing.assert_allclose(out[0, mask[0]], means[mask[0]], rtol=1e-12)
    np.testing.assert_array_equal(out[0, ~mask[0]], X_missing[0, ~mask[0]])
    for weighted in (True, False):
        imputer = pickle.loads(pickle.dumps(fitted)).set_params(importance_weighting=weighted)
        with pytest.warns(ConstraintWarning, match="every imputation"):
            copies = imputer.sample_multiple_imputations(X_missing[:5], 3, proper=False)
        np.testing.assert_allclose(copies[:, 0, mask[0]], np.broadcast_to(means[mask[0]], (3, mask[0].sum())),
                                   rtol=1e-12)
        with pytest.warns(ConstraintWarning, match="no draw"):
            draws = imputer.conditional_draws(X_missing[:5])
        assert not draws.converged[:, 0].any() and draws.ess[0] == 0
        np.testing.assert_allclose(draws.values[:, 0][:, mask[0]],
                                   np.broadcast_to(means[mask[0]], (TINY["n_draws"], mask[0].sum())), rtol=1e-12)
    # Scoring leaves unsolved draws out, as training does: row 0 has none left, so no estimate.
    with pytest.warns(ConstraintWarning, match="NaN"):
        scores = fitted.score_samples(X_missing[:5])
    assert np.isnan(scores[0]) and np.isfinite(scores[1:]).all()


def test_work_is_batched_so_memory_is_bounded(fitted, data, monkeypatch):
    _, X_missing, _, _ = data
    seen = []

    def recording(real):
        def sample_conditional(flow, y, *args, **kwargs):
            seen.append(len(y))
            return real(flow, y, *args, **kwargs)
        return sample_conditional

    patch_everywhere(monkeypatch, "sample_conditional", recording)
    imputer = pickle.loads(pickle.dumps(fitted)).set_params(batch_size=16)
    many = np.tile(X_missing, (5, 1))
    imputer.transform(many)
    imputer.sample_multiple_imputations(many, 3, proper=False)
    imputer.score_samples(many)
    imputer.conditional_draws(many)
    # Extra draws for some rows come in calls of those rows only: never more than a batch.
    assert max(seen) == 16 and sum(seen) >= 4 * len(many)


# ---------------------------------------------------------------- scikit-learn machinery
def test_clone_and_params_round_trip():
    imputer = IVCNFImputer(**TINY)
    twin = clone(imputer)
    assert twin.get_params() == imputer.get_params()
    twin.set_params(n_draws=7, lipschitz_coeff=0.5)
    assert (twin.n_draws, twin.lipschitz_coeff) == (7, 0.5)
    assert imputer.get_params()["n_draws"] == TINY["n_draws"]


def test_pipeline_and_cross_val_score(data):
    _, X_missing, _, y = data
    pipe = Pipeline([("impute", IVCNFImputer(**TINY)), ("ridge", Ridge())])
    scores = cross_val_score(pipe, X_missing, y, cv=2)
    # The imputer must carry signal to the regressor: R^2 above 0, better than the mean.
    assert scores.shape == (2,) and scores.mean() > 0


def test_grid_search_picks_by_held_out_likelihood(data):
    _, X_missing, _, _ = data
    grid = [0.5, 0.9]
    search = GridSearchCV(IVCNFImputer(**TINY), {"lipschitz_coeff": grid}, cv=2).fit(X_missing)
    # Each candidate's score is the mean held-out score() over the (unshuffled) folds.
    folds = list(KFold(2).split(X_missing))
    expected = [np.mean([IVCNFImputer(**TINY, lipschitz_coeff=c).fit(X_missing[train]).score(X_missing[test])
                         for train, test in folds]) for c in grid]
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], expected, rtol=1e-12)
    assert search.best_params_["lipschitz_coeff"] == grid[int(np.argmax(expected))]
    best = IVCNFImputer(**TINY, lipschitz_coeff=search.best_params_["lipschitz_coeff"]).fit(X_missing)
    np.testing.assert_array_equal(search.transform(X_missing), best.transform(X_missing))


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


def test_float_columns_on_a_grid_are_dequantised_by_their_step_in_training(monkeypatch):
    import skivcnf.imputer as imputer_module

    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, 120).astype(float)  # a count stored as floats: many exact zeros
    X = np.column_stack([counts, 0.5 * counts + rng.normal(size=120), rng.integers(0, 5, 120) / 4.0])
    X_missing = X.copy()
    X_missing[rng.random(X.shape) < 0.2] = np.nan
    seen = {}
    real = imputer_module.fit_inference_network

    def spy(*args, **kwargs):
        seen["cells"] = kwargs["dequantisation"]
        return real(*args, **kwargs)

    monkeypatch.setattr(imputer_module, "fit_inference_network", spy)
    imputer = IVCNFImputer(**TINY).fit(X_missing)
    np.testing.assert_allclose(imputer.grid_steps_, [1.0, 0.0, 0.25])
    # The noise is one step wide on the flow's (standardised) scale; the continuous column gets none.
    np.testing.assert_allclose(seen["cells"].cpu().numpy(), [1.0 / imputer.scale_[0], 0.0, 0.25 / imputer.scale_[2]],
                               rtol=1e-6)
    # The box that draws must land in stays the observed range (plus its margin): the imputations are floats.
    np.testing.assert_array_equal(imputer.observed_range_[:, 0], [np.nanmin(X_missing[:, 0]),
                                                                  np.nanmax(X_missing[:, 0])])
    out = imputer.transform(X_missing)
    hidden = np.isnan(X_missing[:, 0])
    assert not np.allclose(out[hidden, 0], np.round(out[hidden, 0]))  # imputations stay floats, off the grid
    off = IVCNFImputer(**TINY, grid_dequantisation=False).fit(X_missing)
    assert not off.grid_steps_.any() and seen["cells"] is None
