"""IVCNFImputer's draws: a row's imputation is its own, proper multiple imputation, bounds, warnings."""

import pickle
import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skivcnf import IVCNFImputer
from skivcnf import _drawing as drawing
from skivcnf._drawing import BOOTSTRAP_EPOCHS, resample_rows
from skivcnf.conditional import reliable as reliable_module
from skivcnf.exceptions import UnreliableWeightsWarning

from .helpers import TINY_IMPUTER as TINY
from .helpers import diabetes_with_holes

#: float32 holds 24 bits; a batch of another size may round a sum differently: a few roundings
#: of the flow's float32 arithmetic, on values of order one standard deviation.
FLOAT32_NOISE = 1e-5
#: 16 units in the last place of a float32, relative.
FLOAT32_SCORE_ULPS = 16 * 2.0 ** -23


@pytest.fixture(scope="module")
def data():
    return diabetes_with_holes()


@pytest.fixture(scope="module")
def fitted(data):
    return IVCNFImputer(**{**TINY, "n_draws": 24}).fit(data[1])


def test_a_rows_imputation_does_not_depend_on_its_batch_mates(data, fitted):
    _, X_missing, _, _ = data
    sd = np.nanstd(X_missing, axis=0)
    full = fitted.transform(X_missing)
    idx = np.random.default_rng(0).permutation(len(X_missing))[:30]
    np.testing.assert_allclose(fitted.transform(X_missing[idx]) / sd, full[idx] / sd, rtol=0, atol=FLOAT32_NOISE)
    np.testing.assert_allclose(fitted.transform(X_missing[idx[:1]]) / sd, full[idx[:1]] / sd, rtol=0,
                               atol=FLOAT32_NOISE)
    other_batches = pickle.loads(pickle.dumps(fitted)).set_params(batch_size=7)  # the same model, other batches
    np.testing.assert_allclose(other_batches.transform(X_missing) / sd, full / sd, rtol=0, atol=FLOAT32_NOISE)
    copies = fitted.sample_multiple_imputations(X_missing, 3, proper=False)
    np.testing.assert_allclose(fitted.sample_multiple_imputations(X_missing[idx], 3, proper=False) / sd,
                               copies[:, idx] / sd, rtol=0, atol=FLOAT32_NOISE)
    # Scores too, to float32's resolution: BLAS kernels chosen by the batch's shape round a row's
    # log-density differently by a few units in the last place (float32's epsilon is 1.2e-7).
    scores = fitted.score_samples(X_missing)
    np.testing.assert_allclose(fitted.score_samples(X_missing[idx]), scores[idx], rtol=FLOAT32_SCORE_ULPS, atol=0)
    np.testing.assert_allclose(fitted.score_samples(X_missing[idx[:1]]), scores[idx[:1]], rtol=FLOAT32_SCORE_ULPS,
                               atol=0)


def test_equal_rows_get_equal_imputations_but_independent_copies(data, fitted):
    _, X_missing, mask, _ = data
    row = int(np.flatnonzero(mask.any(axis=1))[0])
    twice = np.vstack([X_missing[row], X_missing[row], X_missing[:10]])
    out = fitted.transform(twice) / np.nanstd(X_missing, axis=0)
    np.testing.assert_allclose(out[0], out[1], rtol=0, atol=FLOAT32_NOISE)
    copies = fitted.sample_multiple_imputations(twice, 4, proper=False)
    assert not np.array_equal(copies[:, 0], copies[:, 1])


def test_proper_copies_come_from_re_estimated_models(data, fitted):
    _, X_missing, mask, _ = data
    proper = fitted.sample_multiple_imputations(X_missing, 3)
    again = fitted.sample_multiple_imputations(X_missing, 3)
    fixed = fitted.sample_multiple_imputations(X_missing, 3, proper=False)
    np.testing.assert_array_equal(proper, again)                         # seeded
    for copy in proper:
        np.testing.assert_array_equal(copy[~mask], X_missing[~mask])     # observed entries untouched
        assert np.isfinite(copy).all()
    assert not np.allclose(proper[:, mask], fixed[:, mask])
    # The fitted model is not changed by the re-estimation.
    np.testing.assert_array_equal(fitted.transform(X_missing), fitted.transform(X_missing))
    with pytest.raises(ValueError, match="fewer than 18.*proper=False"):
        fitted.sample_multiple_imputations(X_missing[:10], 2)


def test_resampling_schemes_of_proper_copies(data, fitted, monkeypatch):
    rows, epochs = resample_rows(np.random.default_rng(0), 50, "bootstrap")
    # The default draws what it drew before the setting existed: n indices with replacement, 5 epochs.
    np.testing.assert_array_equal(rows, np.random.default_rng(0).integers(0, 50, 50))
    assert epochs == BOOTSTRAP_EPOCHS
    rows, epochs = resample_rows(np.random.default_rng(0), 50, "half")
    assert len(np.unique(rows)) == len(rows) == 25 and epochs == 2 * BOOTSTRAP_EPOCHS
    np.testing.assert_array_equal(resample_rows(np.random.default_rng(0), 50, "none")[0], np.arange(50))
    _, X_missing, mask, _ = data
    bootstrap = fitted.sample_multiple_imputations(X_missing, 2)
    monkeypatch.setattr(drawing, "RESAMPLING", "half")
    half = fitted.sample_multiple_imputations(X_missing, 2)
    np.testing.assert_array_equal(half[:, ~mask], bootstrap[:, ~mask])
    assert np.isfinite(half).all() and not np.allclose(half[:, mask], bootstrap[:, mask])
    monkeypatch.setattr(drawing, "RESAMPLING", "jackknife")
    with pytest.raises(ValueError, match="RESAMPLING must be one of .*'jackknife'"):
        fitted.sample_multiple_imputations(X_missing, 2)


def test_imputations_stay_within_the_trained_range(data, fitted):
    # A draw more than RANGE_MARGIN (3) standard deviations beyond a column's observed range gets
    # no weight; a weighted mean of draws inside the box stays inside it.
    _, X_missing, mask, _ = data
    lower, upper = fitted.observed_range_
    margin = 3 * fitted.scale_
    for out in (fitted.transform(X_missing), *fitted.sample_multiple_imputations(X_missing, 2, proper=False)):
        values = out[:, fitted.modelled_features_]
        assert ((values >= lower - margin) & (values <= upper + margin)).all()


def test_rows_whose_draws_all_leave_the_range_get_them_clipped_into_it(data, fitted, monkeypatch):
    # With a margin of -1 sd the box is narrower than the observed range: outlying rows' draws all
    # leave it. They are clipped into it (not replaced by the training means), and counted.
    _, X_missing, mask, _ = data
    monkeypatch.setattr("skivcnf._base.RANGE_MARGIN", -1.0)
    with pytest.warns(UnreliableWeightsWarning, match="beyond the range the flow was trained on") as caught:
        out = fitted.transform(X_missing)
    message = str(next(w.message for w in caught if "beyond the range" in str(w.message)))
    assert int(re.search(r"(\d+) of \d+ rows had every draw beyond", message).group(1)) > 0
    lower, upper = fitted.observed_range_
    box_low, box_high = lower + fitted.scale_, upper - fitted.scale_
    values = out[:, fitted.modelled_features_]
    hidden = mask[:, fitted.modelled_features_]
    assert ((values >= box_low - 1e-6 * fitted.scale_) & (values <= box_high + 1e-6 * fitted.scale_) | ~hidden).all()
    np.testing.assert_array_equal(out[~mask], X_missing[~mask])


@pytest.mark.parametrize("call", ["transform", "proper", "fixed"])
def test_one_warning_per_kind_and_call_at_the_callers_line(data, fitted, monkeypatch, call):
    _, X_missing, _, _ = data
    monkeypatch.setattr(reliable_module, "PARETO_K_THRESHOLD", -np.inf)  # every diagnosed row is flagged
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if call == "transform":
            fitted.transform(X_missing)
        else:
            fitted.sample_multiple_imputations(X_missing, 2, proper=call == "proper")
    uneven = [w for w in caught if w.category is UnreliableWeightsWarning]
    assert len(uneven) == 1 and uneven[0].filename == __file__
    expected = f"of {len(X_missing) * 2} rows x copies" if call == "proper" else f"of {len(X_missing)} rows"
    assert expected in str(uneven[0].message)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_rows=st.integers(4, 40), n_cols=st.integers(1, 6), rate=st.floats(0.0, 0.95),
       scales=st.lists(st.sampled_from([1e-6, 1e-3, 1.0, 1e3, 1e8]), min_size=6, max_size=6),
       heavy=st.booleans(), seed=st.integers(0, 2**16))
def test_any_table_gets_finite_imputations_within_the_trained_range(n_rows, n_cols, rate, scales, heavy, seed):
    rng = np.random.default_rng(seed)
    noise = rng.standard_t(2, (n_rows, n_cols)) if heavy else rng.standard_normal((n_rows, n_cols))
    X = (noise + rng.standard_normal(n_cols) * 5) * np.array(scales[:n_cols])
    mask = rng.random(X.shape) < rate
    X_missing = np.where(mask, np.nan, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imputer = IVCNFImputer(**{**TINY, "max_epochs": 1}, keep_empty_features=True).fit(X_missing)
        outputs = [imputer.transform(X_missing), *imputer.sample_multiple_imputations(X_missing, 2, proper=False)]
    modelled = imputer.modelled_features_
    lower, upper = imputer.observed_range_
    for out in outputs:
        assert out.shape == X.shape and np.isfinite(out).all()
        np.testing.assert_array_equal(out[~mask], X[~mask])
        # No imputed value lies more than 3 column sds beyond the column's observed range
        # (up to float64 rounding of the change of scale).
        values = out[:, modelled]
        slack = 3 * imputer.scale_ * (1 + 1e-9) + 1e-9 * np.abs(imputer.observed_range_).max(axis=0)
        assert ((values >= lower - slack) & (values <= upper + slack)).all()
