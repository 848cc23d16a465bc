"""IVCNFImputer on mixed-type tables: categorical, boolean and integer columns, pandas dtypes kept."""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone

from skivcnf import IVCNFImputer
from skivcnf._drawing import snap_categories
from skivcnf.conditional import ConditionalDraws, conditional_mean

from .helpers import TINY_IMPUTER as TINY

TIERS = ["low", "mid", "high"]
#: Trained long enough that the categories follow the numbers they are drawn from.
LEARNED = dict(max_epochs=40, n_draws=16, hidden_layer_sizes=(32,), n_blocks=2, random_state=0)


def mixed_table(n=240, seed=0):
    """A frame whose categories are functions of its numbers (so a fitted flow can predict them)."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=n)
    x1 = 0.8 * x0 + 0.6 * rng.normal(size=n)
    tier = np.array(TIERS, dtype=object)[np.digitize(x0, np.quantile(x0, [1 / 3, 2 / 3]))]
    return pd.DataFrame({
        "x0": x0,
        "x1": x1,
        "tier": pd.Categorical(tier, categories=[*TIERS, "unused"]),
        "sign": np.where(x1 > 0, "pos", "neg").astype(object),
        "flag": pd.array(x0 + x1 > 0, dtype="boolean"),
        "count": pd.array(rng.poisson(np.exp(0.5 + 0.5 * x0)), dtype="Int64"),
    })


def with_holes(frame, rate=0.2, seed=1, keep=("x0",)):
    """``frame`` with entries missing completely at random (None/NA/NaN as each dtype spells it)."""
    rng = np.random.default_rng(seed)
    mask = rng.random(frame.shape) < rate
    for name in keep:
        mask[:, frame.columns.get_loc(name)] = False
    return frame.mask(mask), mask


@pytest.fixture(scope="module")
def table():
    truth = mixed_table()
    missing, mask = with_holes(truth)
    return truth, missing, mask


@pytest.fixture(scope="module")
def learned(table):
    _, missing, _ = table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return IVCNFImputer(**LEARNED).set_output(transform="pandas").fit(missing)


def test_kinds_and_categories_seen_at_fit(learned):
    assert learned.feature_kinds_.tolist() == ["numeric", "numeric", "categorical", "categorical", "categorical",
                                               "integer"]
    assert learned.categories_[2].tolist() == TIERS  # the dtype's order, without the unused category
    assert learned.categories_[3].tolist() == ["neg", "pos"] and learned.categories_[4].tolist() == [False, True]
    # 3 categories are one-hot; 2 categories, one 0/1 feature.
    assert learned.modelled_features_.shape == (8,)


def test_dtypes_kept_observed_unchanged_and_categories_predicted(table, learned):
    truth, missing, mask = table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = learned.transform(missing)
    pd.testing.assert_series_equal(out.dtypes, missing.dtypes)
    assert (out.index == missing.index).all() and not out.isna().any().any()
    for j, name in enumerate(missing.columns):
        pd.testing.assert_series_equal(out[name][~mask[:, j]], missing[name][~mask[:, j]])
    # The categories are functions of x0 and x1 (always or mostly observed): far better than the most
    # frequent category's error (about 2/3 for the tiers, 1/2 for the signs).
    for name, bound in (("tier", 0.3), ("sign", 0.3)):
        j = missing.columns.get_loc(name)
        pfc = np.mean(out[name][mask[:, j]].astype(str).to_numpy() != truth[name][mask[:, j]].astype(str).to_numpy())
        assert pfc < bound, (name, pfc)
    assert set(out["tier"].astype(str)) <= set(TIERS)
    imputed_counts = out["count"][mask[:, 5]].to_numpy(dtype=float)
    np.testing.assert_array_equal(imputed_counts, np.round(imputed_counts))


def test_a_frame_whose_category_dtype_lacks_the_imputed_category(table, learned):
    """A transform frame with fewer categories in its dtype (one row, unused ones removed) gets
    the imputed category added to the dtype, never a NaN."""
    _, missing, mask = table
    rows = missing[mask[:, 2]].head(3)
    rows = rows.assign(tier=pd.Categorical([None] * 3, categories=["unused"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = learned.transform(rows)
    assert not out["tier"].isna().any() and set(out["tier"].astype(str)) <= set(TIERS)


def test_copies_draw_categories_seen_at_fit(table, learned):
    _, missing, mask = table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copies = learned.sample_multiple_imputations(missing, 3, proper=False)
    assert copies.shape == (3 * len(missing), missing.shape[1])
    pd.testing.assert_series_equal(copies.dtypes, missing.dtypes)
    assert set(copies["tier"].astype(str)) <= set(TIERS)
    # Copies differ where the category is uncertain: the law is drawn from, not its mode.
    tiers = np.stack([copy["tier"].astype(str).to_numpy() for _, copy in copies.groupby(level="imputation")])
    assert (tiers[:, mask[:, 2]] != tiers[0, mask[:, 2]]).any()


def test_array_output_of_a_frame_holds_labels(table, learned):
    _, missing, mask = table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = clone(learned).set_params(max_epochs=1).set_output(transform="default").fit(missing)
        out = plain.transform(missing)
    assert out.dtype == object and out.shape == missing.shape
    assert set(out[:, 2]) <= set(TIERS) and set(out[:, 3]) <= {"neg", "pos"}
    np.testing.assert_array_equal(out[~mask[:, 0], 0].astype(float), missing["x0"].to_numpy()[~mask[:, 0]])


def test_point_imputation_is_the_most_probable_category():
    """The weighted mean of one-hot draws is each category's probability; the most probable wins,
    even where the mean of the raw coordinates would pick another."""
    imputer = IVCNFImputer(**TINY).fit(pd.DataFrame({"c": list("abcabc"), "x": np.arange(6.0)}))
    # Features on the flow's scale: 3 one-hot coordinates of c, then x. Draw values below are on
    # the input's scale, converted with the fitted centre and scale.
    draws_on_input = torch.tensor([[[1.5, 0.0, 0.0, 0.0]], [[0.4, 0.5, 0.0, 0.0]], [[0.4, 0.5, 0.1, 0.0]]],
                                  dtype=torch.float64)
    center, scale = (torch.as_tensor(a) for a in (imputer.center_, imputer.scale_))
    samples = (draws_on_input - center) / scale
    log_weight = torch.log(torch.tensor([[0.4], [0.3], [0.3]], dtype=torch.float64))
    draws = ConditionalDraws(samples, log_weight, torch.ones(3, 1, dtype=torch.bool),
                             torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1, dtype=torch.long))
    probabilities = conditional_mean(snap_categories(imputer, draws))[0][0, :3] * scale[:3] + center[:3]
    np.testing.assert_allclose(probabilities.numpy(), [0.4, 0.6, 0.0], atol=1e-12)
    raw_mean = conditional_mean(draws)[0][0, :3] * scale[:3] + center[:3]
    assert int(raw_mean.argmax()) == 0  # 0.84 against 0.30: not what the draws say


def test_numpy_codes_named_categorical(table):
    truth, missing, mask = table
    codes = missing[["x0", "x1"]].to_numpy()
    tier_codes = truth["tier"].cat.codes.to_numpy().astype(float) * 10  # codes need not be 0..K-1
    X = np.column_stack([codes, np.where(mask[:, 2], np.nan, tier_codes)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = IVCNFImputer(categorical_features=[2], **TINY).fit_transform(X)
    assert out.dtype == np.float64
    assert set(np.unique(out[:, 2])) <= {0.0, 10.0, 20.0}
    np.testing.assert_array_equal(out[~mask[:, 2], 2], X[~mask[:, 2], 2])


def test_unknown_category_raises_or_is_imputed(table):
    _, missing, _ = table
    new = missing.head(5).assign(sign=["neg", "sideways", None, "pos", "pos"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strict = IVCNFImputer(**TINY).fit(missing)
        with pytest.raises(ValueError, match="Column 'sign' has the category 'sideways', not seen at fit"):
            strict.transform(new)
        out = strict.set_params(handle_unknown="missing").transform(new)  # read at transform: no refit
    assert set(out[:, 3]) <= {"neg", "pos"} and out[0, 3] == "neg"


def test_a_single_category_and_an_empty_label_column(table):
    _, missing, _ = table
    frame = missing.assign(only=pd.Categorical(["one"] * len(missing)).astype(object),
                           void=pd.Series([None] * len(missing), dtype=object))
    frame.loc[:4, "only"] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dropped = IVCNFImputer(**TINY).set_output(transform="pandas").fit(frame)
        out = dropped.transform(frame)
        kept = IVCNFImputer(keep_empty_features=True, **TINY).set_output(transform="pandas").fit_transform(frame)
    assert "void" not in out.columns and (out["only"] == "one").all()
    assert list(dropped.get_feature_names_out()) == [*missing.columns, "only"]
    assert (kept["void"] == 0.0).all()


def test_indicator_names_and_persistence(table, tmp_path):
    _, missing, mask = table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imputer = IVCNFImputer(add_indicator=True, **TINY).set_output(transform="pandas").fit(missing)
        out = imputer.transform(missing)
        assert list(out.columns) == list(imputer.get_feature_names_out())
        assert list(out.columns[6:]) == [f"missingindicator_{c}" for c in missing.columns[1:]]
        np.testing.assert_array_equal(out.iloc[:, 6:].to_numpy(), mask[:, 1:])
        proper = imputer.sample_multiple_imputations(missing, 2)  # bootstrap re-estimation, dequantised too
        pd.testing.assert_series_equal(proper.dtypes.iloc[:6], missing.dtypes)
        assert set(proper["tier"].astype(str)) <= set(TIERS) and not proper.isna().any().any()
        imputer.save(tmp_path / "mixed.pt")
        for copy in (pickle.loads(pickle.dumps(imputer)), IVCNFImputer.load(tmp_path / "mixed.pt")):
            pd.testing.assert_frame_equal(copy.transform(missing), out)
            assert [None if c is None else c.tolist() for c in copy.categories_] == \
                [None if c is None else c.tolist() for c in imputer.categories_]


def test_discrete_columns_get_a_probability_not_a_spike():
    """Dequantisation: the flow's density integrated over a binary value's cell is its probability,
    so a row with only that value observed scores about log P(value) (a density would spike)."""
    rng = np.random.default_rng(0)
    n = 400
    b = rng.random(n) < 0.3
    frame = pd.DataFrame({"b": b, "x": rng.normal(size=n) + b})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imputer = IVCNFImputer(max_epochs=30, n_draws=16, hidden_layer_sizes=(32,), n_blocks=2,
                               random_state=0).fit(frame)
        scores = imputer.score_samples(pd.DataFrame({"b": [True, False], "x": [np.nan, np.nan]}))
    # The midpoint of a unit cell and a trained bound: within 0.3 nats of the log frequencies.
    np.testing.assert_allclose(scores, np.log([b.mean(), 1 - b.mean()]), atol=0.3)


def test_copies_pool_with_a_categorical_predictor(table, learned):
    """The workflow of the multiple-imputation page with a category: dummies are the same in every
    copy (the dtype keeps every category), so Rubin's rules pool them by label."""
    smf = pytest.importorskip("statsmodels.formula.api")
    from skivcnf.pooling import pool_fits

    _, missing, _ = table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copies = learned.sample_multiple_imputations(missing, 4, proper=False)
    fits = [smf.ols("x1 ~ x0 + C(sign)", data=copy.astype({"x1": float, "x0": float})).fit()
            for _, copy in copies.groupby(level="imputation")]
    pooled = pool_fits(fits)
    assert list(fits[0].params.index) == ["Intercept", "C(sign)[T.pos]", "x0"]
    # Rubin's pooled estimate is the mean of the copies' estimates.
    np.testing.assert_allclose(pooled.estimate, np.mean([f.params.to_numpy() for f in fits], axis=0), rtol=1e-12)
    assert pooled.estimate[1] > 0  # x1 > 0 is what "pos" means


def test_conditional_draws_and_scores_of_a_mixed_table(table, learned):
    _, missing, mask = table
    rows = missing.head(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        draws = learned.conditional_draws(rows, n_draws=4)
        scores = learned.score_samples(rows)
    assert draws.values.shape == (4, 6, 6) and draws.values.dtype == object
    assert set(draws.values[:, :, 2].ravel()) <= set(TIERS)
    observed = ~mask[:6, 3]
    assert (draws.values[:, observed, 3] == rows["sign"].to_numpy()[observed]).all()
    assert np.isfinite(scores).all()
