"""Rubin's rules (skivcnf.pooling) against values computed by hand."""

import numpy as np
import pytest
from scipy import stats

from skivcnf.pooling import PooledEstimate, pool_estimates, pool_fits

# Three copies: estimates 1.0, 1.2, 1.4 with variances 0.09, 0.10, 0.11. By hand:
#   Q_bar = (1.0 + 1.2 + 1.4) / 3                       = 1.2
#   W     = (0.09 + 0.10 + 0.11) / 3                    = 0.1
#   B     = ((-0.2)^2 + 0^2 + 0.2^2) / (3 - 1)          = 0.04
#   T     = W + (1 + 1/3) B = 0.1 + 0.16/3              = 23/150
#   r     = (1 + 1/3) B / W = (4/75) / (1/10)           = 8/15
#   lambda = (1 + 1/3) B / T = (4/75) / (23/150)        = 8/23
#   Rubin (1987):  dof = (m - 1) / lambda^2 = 2 * 529/64 = 529/32 = 16.53125
#   gamma = (r + 2 / (dof + 3)) / (r + 1) = (8/15 + 64/625) / (23/15) = 1192/2875
#   Barnard-Rubin (1999), dof_complete = 20:
#     dof_observed = (21/23) * 20 * (1 - 8/23) = (21/23) * 20 * (15/23) = 6300/529
#     dof = 1 / (32/529 + 529/6300) = 529 * 6300 / (32 * 6300 + 529^2) = 3332700/481441
ESTIMATES = [1.0, 1.2, 1.4]
VARIANCES = [0.09, 0.10, 0.11]
TOTAL = 23 / 150
RUBIN_DOF = 529 / 32
BARNARD_RUBIN_DOF_20 = 3332700 / 481441


def test_three_copies_by_hand():
    pooled = pool_estimates(ESTIMATES, VARIANCES)
    assert isinstance(pooled, PooledEstimate)
    assert pooled.n_imputations == 3 and pooled.level == 0.9
    assert pooled.estimate == pytest.approx(1.2, rel=1e-14)
    assert pooled.within == pytest.approx(0.1, rel=1e-14)
    assert pooled.between == pytest.approx(0.04, rel=1e-12)
    assert pooled.total == pytest.approx(TOTAL, rel=1e-12)
    assert pooled.std_error == pytest.approx(np.sqrt(TOTAL), rel=1e-12)
    assert pooled.relative_increase == pytest.approx(8 / 15, rel=1e-12)
    assert pooled.missing_variance_share == pytest.approx(8 / 23, rel=1e-12)
    assert pooled.dof == pytest.approx(RUBIN_DOF, rel=1e-12)
    # the 90% interval: 1.2 -/+ t_{0.95, 529/32} sqrt(23/150), t_{0.95, 16.53} = 1.743...
    half = stats.t.ppf(0.95, RUBIN_DOF) * np.sqrt(TOTAL)
    assert 1.74 < stats.t.ppf(0.95, RUBIN_DOF) < 1.75
    assert (pooled.low, pooled.high) == pytest.approx((1.2 - half, 1.2 + half), rel=1e-12)


def test_scalar_estimates_give_scalar_fields():
    pooled = pool_estimates(ESTIMATES, VARIANCES)
    for name in PooledEstimate._fields:
        assert np.ndim(getattr(pooled, name)) == 0, name
    assert isinstance(pooled.estimate, float)


def test_rubin_1987_dof_is_m_minus_1_over_lambda_squared():
    # m = 4 copies, B = var([0, 1, 2, 3], ddof=1) = 5/3, W = 1: T = 1 + (5/4)(5/3) = 37/12,
    # lambda = (25/12) / (37/12) = 25/37, dof = 3 * (37/25)^2 = 4107/625
    pooled = pool_estimates([0.0, 1.0, 2.0, 3.0], [1.0] * 4)
    assert pooled.missing_variance_share == pytest.approx(25 / 37, rel=1e-12)
    assert pooled.dof == pytest.approx(4107 / 625, rel=1e-12)
    # the same dof in Rubin's (1987) form: (m - 1) (1 + W / ((1 + 1/m) B))^2
    assert pooled.dof == pytest.approx(3 * (1 + 1 / (5 / 4 * 5 / 3)) ** 2, rel=1e-12)


def test_barnard_rubin_dof_by_hand_and_below_both_bounds():
    pooled = pool_estimates(ESTIMATES, VARIANCES, dof_complete=20)
    assert pooled.dof == pytest.approx(BARNARD_RUBIN_DOF_20, rel=1e-12)
    assert pooled.dof < 20 and pooled.dof < RUBIN_DOF
    # only the degrees of freedom (and what depends on them) change, not the variances
    rubin = pool_estimates(ESTIMATES, VARIANCES)
    assert pooled.total == rubin.total and pooled.estimate == rubin.estimate
    half = stats.t.ppf(0.95, BARNARD_RUBIN_DOF_20) * np.sqrt(TOTAL)
    assert pooled.high - pooled.estimate == pytest.approx(half, rel=1e-12)
    assert pooled.high - pooled.low > rubin.high - rubin.low


def test_barnard_rubin_dof_tends_to_rubin_as_the_complete_dof_grows():
    dofs = [pool_estimates(ESTIMATES, VARIANCES, dof_complete=n).dof for n in (10, 100, 1e4, 1e8)]
    assert np.all(np.diff(dofs) > 0)
    # dof_observed ~ dof_complete (1 - lambda), so 1/dof - 1/dof_rubin ~ 1 / (1e8 * 15/23)
    assert dofs[-1] == pytest.approx(RUBIN_DOF, rel=1e-6)
    assert abs(dofs[-1] - RUBIN_DOF) > 0  # not yet equal
    assert pool_estimates(ESTIMATES, VARIANCES, dof_complete=np.inf).dof == pytest.approx(RUBIN_DOF, rel=1e-14)


def test_fraction_of_missing_information():
    pooled = pool_estimates(ESTIMATES, VARIANCES)
    assert pooled.missing_information == pytest.approx(1192 / 2875, rel=1e-12)
    # with Barnard and Rubin's dof: (8/15 + 2 / (dof + 3)) / (23/15)
    small = pool_estimates(ESTIMATES, VARIANCES, dof_complete=20)
    expected = (8 / 15 + 2 / (BARNARD_RUBIN_DOF_20 + 3)) / (23 / 15)
    assert small.missing_information == pytest.approx(expected, rel=1e-12)
    assert pooled.missing_variance_share < pooled.missing_information < small.missing_information


def test_no_between_variance_gives_the_complete_data_interval():
    pooled = pool_estimates([1.0] * 5, [0.04] * 5)
    assert pooled.between == 0 and pooled.dof == np.inf
    assert pooled.missing_variance_share == 0 and pooled.missing_information == 0
    assert pooled.high - 1.0 == pytest.approx(stats.norm.ppf(0.95) * 0.2, rel=1e-9)
    # Barnard and Rubin: dof_observed = (n + 1) / (n + 3) n when lambda = 0
    small = pool_estimates([1.0] * 5, [0.04] * 5, dof_complete=30)
    assert small.dof == pytest.approx(31 / 33 * 30, rel=1e-12)
    assert small.high - 1.0 == pytest.approx(stats.t.ppf(0.95, 31 / 33 * 30) * 0.2, rel=1e-12)


def test_level_sets_the_quantile():
    pooled = pool_estimates(ESTIMATES, VARIANCES, level=0.95)
    assert pooled.high - pooled.estimate == pytest.approx(stats.t.ppf(0.975, RUBIN_DOF) * np.sqrt(TOTAL), rel=1e-12)


def test_vector_estimates_pool_each_component():
    estimates = np.array([[1.0, 0.0], [1.2, 1.0], [1.4, 2.0], [1.2, 3.0]])
    variances = np.array([[0.09, 1.0], [0.10, 1.0], [0.11, 1.0], [0.10, 1.0]])
    pooled = pool_estimates(estimates, variances, dof_complete=50)
    assert pooled.estimate.shape == pooled.dof.shape == pooled.within.shape == (2,)
    for j in range(2):
        column = pool_estimates(estimates[:, j], variances[:, j], dof_complete=50)
        for name in ("estimate", "std_error", "low", "high", "dof", "within", "between", "total",
                     "relative_increase", "missing_variance_share", "missing_information"):
            assert getattr(pooled, name)[j] == pytest.approx(getattr(column, name), rel=1e-14), name


def test_covariance_matrices_keep_the_matrices():
    estimates = np.array([[1.0, 0.0], [1.2, 1.0], [1.4, 2.0]])
    covariances = np.array([[[0.09, 0.01], [0.01, 1.0]], [[0.10, 0.02], [0.02, 1.0]], [[0.11, 0.03], [0.03, 1.0]]])
    pooled = pool_estimates(estimates, covariances)
    # B's off-diagonal: ((-0.2)(-1) + 0 + (0.2)(1)) / 2 = 0.2; W's: (0.01 + 0.02 + 0.03) / 3 = 0.02
    np.testing.assert_allclose(pooled.between, [[0.04, 0.2], [0.2, 1.0]], rtol=1e-12)
    np.testing.assert_allclose(pooled.within, [[0.1, 0.02], [0.02, 1.0]], rtol=1e-12)
    np.testing.assert_allclose(pooled.total, pooled.within + 4 / 3 * pooled.between, rtol=1e-14)
    diagonal = pool_estimates(estimates, np.diagonal(covariances, axis1=1, axis2=2))
    for name in ("estimate", "std_error", "low", "high", "dof", "missing_information"):
        np.testing.assert_allclose(getattr(pooled, name), getattr(diagonal, name), rtol=1e-14, err_msg=name)
    np.testing.assert_allclose(pooled.dof, [RUBIN_DOF, 2 / (4 / 3 / (1 + 4 / 3)) ** 2], rtol=1e-12)


@pytest.mark.parametrize(("estimates", "variances", "kwargs", "message"), [
    ([1.0], [0.1], {}, "at least 2"),
    ([1.0, 2.0], [0.1, 0.1, 0.1], {}, "shape"),
    ([[1.0, 2.0]] * 3, [[[0.1]]] * 3, {}, "shape"),
    (np.zeros((3, 2, 2)), np.zeros((3, 2, 2)), {}, r"\(m,\) or \(m, p\)"),
    ([1.0, 2.0], [0.1, -0.1], {}, "non-negative"),
    ([1.0, np.nan], [0.1, 0.1], {}, "finite"),
    ([1.0, 2.0], [0.1, 0.1], {"dof_complete": 0}, "dof_complete"),
    ([1.0, 2.0], [0.1, 0.1], {"level": 1.0}, "level"),
])
def test_invalid_inputs_raise(estimates, variances, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pool_estimates(estimates, variances, **kwargs)


# pool_fits: the covariance example above, as three fitted results with df_resid = 20. The first
# coefficient is the three-copy example (estimates 1.0, 1.2, 1.4, variances 0.09, 0.10, 0.11).
FIT_PARAMS = [[1.0, 0.0], [1.2, 1.0], [1.4, 2.0]]
FIT_COVARIANCES = [[[0.09, 0.01], [0.01, 1.0]], [[0.10, 0.02], [0.02, 1.0]], [[0.11, 0.03], [0.03, 1.0]]]


class FakeFit:
    """The duck-typed face of a statsmodels result: params, cov_params() and (optionally) df_resid."""

    def __init__(self, params, covariance, df_resid=None):
        self.params, self._covariance = params, covariance
        if df_resid is not None:
            self.df_resid = df_resid

    def cov_params(self):
        return self._covariance


def fake_fits(df_resid=(20, 20, 20)):
    return [FakeFit(np.array(p), np.array(c), dof) for p, c, dof in zip(FIT_PARAMS, FIT_COVARIANCES, df_resid,
                                                                        strict=True)]


def assert_same_pooling(pooled, expected):
    assert (pooled.level, pooled.n_imputations) == (expected.level, expected.n_imputations)
    for name in PooledEstimate._fields[:-2]:
        np.testing.assert_allclose(getattr(pooled, name), getattr(expected, name), rtol=1e-12, err_msg=name)


def test_pool_fits_by_hand():
    pooled = pool_fits(fake_fits())
    assert pooled.level == 0.95 and pooled.n_imputations == 3
    np.testing.assert_allclose(pooled.estimate, [1.2, 1.0], rtol=1e-14)
    # full covariance pooling: B's off-diagonal ((-0.2)(-1) + 0 + (0.2)(1)) / 2 = 0.2, W's 0.02
    np.testing.assert_allclose(pooled.between, [[0.04, 0.2], [0.2, 1.0]], rtol=1e-12)
    np.testing.assert_allclose(pooled.within, [[0.1, 0.02], [0.02, 1.0]], rtol=1e-12)
    assert pooled.total[0, 0] == pytest.approx(TOTAL, rel=1e-12)
    # df_resid = 20 is dof_complete: Barnard and Rubin's dof of the three-copy example
    assert pooled.dof[0] == pytest.approx(BARNARD_RUBIN_DOF_20, rel=1e-12)
    half = stats.t.ppf(0.975, BARNARD_RUBIN_DOF_20) * np.sqrt(TOTAL)
    assert (pooled.low[0], pooled.high[0]) == pytest.approx((1.2 - half, 1.2 + half), rel=1e-12)


def test_pool_fits_equals_pool_estimates():
    assert_same_pooling(pool_fits(fake_fits(), level=0.8),
                        pool_estimates(FIT_PARAMS, FIT_COVARIANCES, dof_complete=20, level=0.8))


def test_pool_fits_dof_complete_is_the_smallest_df_resid_or_none():
    assert_same_pooling(pool_fits(fake_fits((30, 20, 25))),
                        pool_estimates(FIT_PARAMS, FIT_COVARIANCES, dof_complete=20, level=0.95))
    rubin = pool_fits(fake_fits((20, None, 20)))  # one result without df_resid: Rubin's (1987) dof
    assert rubin.dof[0] == pytest.approx(RUBIN_DOF, rel=1e-12)


def test_pool_fits_reads_pandas_labels():
    pd = pytest.importorskip("pandas")
    names = ["Intercept", "x"]
    labelled = [FakeFit(pd.Series(p, index=names), pd.DataFrame(c, index=names, columns=names), 20)
                for p, c in zip(FIT_PARAMS, FIT_COVARIANCES, strict=True)]
    assert_same_pooling(pool_fits(labelled), pool_fits(fake_fits()))
    swapped = FakeFit(pd.Series(FIT_PARAMS[1][::-1], index=names[::-1]), np.array(FIT_COVARIANCES[1]), 20)
    with pytest.raises(ValueError, match=r"fits\[1\]\.params is labelled \['x', 'Intercept'\]"):
        pool_fits([labelled[0], swapped, labelled[2]])
    with pytest.raises(ValueError, match=r"fits\[2\]\.params is labelled None"):
        pool_fits([*labelled[:2], fake_fits()[2]])
    mislabelled = FakeFit(labelled[0].params, pd.DataFrame(FIT_COVARIANCES[0], index=["a", "b"], columns=["a", "b"]))
    with pytest.raises(ValueError, match=r"fits\[0\]\.cov_params\(\) is labelled \['a', 'b'\]"):
        pool_fits([mislabelled, *labelled[1:]])


class ParamsOnly:
    params = np.zeros(2)


class CovarianceAttribute(ParamsOnly):
    cov_params = np.eye(2)  # an array, not a method


@pytest.mark.parametrize("bad", [ParamsOnly(), CovarianceAttribute(), np.zeros(2)])
def test_pool_fits_needs_params_and_cov_params(bad):
    with pytest.raises(TypeError, match=r"fits\[1\] must be a fitted model result with a 'params' attribute and "
                                        r"a 'cov_params\(\)' method"):
        pool_fits([fake_fits()[0], bad])


@pytest.mark.parametrize(("fits", "message"), [
    ([], "at least 2 fitted results; got 0"),
    (fake_fits()[:1], "at least 2 fitted results; got 1"),
    ([FakeFit(np.zeros((2, 2)), np.eye(4))] * 2, r"1-D params; fits\[0\]\.params has shape \(2, 2\)"),
    ([FakeFit(np.zeros(2), np.eye(3))] * 2, "variances must have shape"),
])
def test_pool_fits_invalid_inputs_raise(fits, message):
    with pytest.raises(ValueError, match=message):
        pool_fits(fits)


# Three hand-made completed copies of a 12-row table whose x1 is missing in rows 2 and 7: the
# copies differ only there, as the copies of sample_multiple_imputations do.
X1_OBSERVED = np.array([0.5, -1.2, np.nan, 0.8, -0.3, 1.9, -0.7, np.nan, 0.1, 1.1, -1.6, 0.4])
X2 = np.array([1.0, 0.2, -0.5, 1.4, -1.1, 0.3, 0.9, -0.8, -0.2, 0.6, -1.3, 0.0])
Y = np.array([1.7, -1.9, 0.4, 2.6, -1.2, 3.1, -0.2, -0.6, 0.3, 2.4, -3.0, 0.9])
Y_BINARY = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0])
IMPUTED_X1 = [(0.2, -0.4), (0.6, -0.1), (-0.1, -0.9)]


def completed_copies():
    copies = []
    for value_2, value_7 in IMPUTED_X1:
        x1 = X1_OBSERVED.copy()
        x1[[2, 7]] = value_2, value_7
        copies.append(np.column_stack([np.ones(12), x1, X2]))
    return copies


@pytest.mark.parametrize("model", ["OLS", "Logit"])
def test_pool_fits_on_statsmodels_results_equals_pool_estimates_by_hand(model):
    sm = pytest.importorskip("statsmodels.api")
    outcome = Y if model == "OLS" else Y_BINARY
    fits = [getattr(sm, model)(outcome, design).fit(**({} if model == "OLS" else {"disp": 0}))
            for design in completed_copies()]
    assert len({fit.params[1] for fit in fits}) == 3  # the copies' slopes differ, so B > 0
    assert [fit.df_resid for fit in fits] == [9.0] * 3  # n - k for OLS and Logit alike
    expected = pool_estimates([fit.params for fit in fits], [fit.cov_params() for fit in fits], dof_complete=9.0,
                              level=0.95)
    assert_same_pooling(pool_fits(fits), expected)
    assert np.all(expected.between.diagonal() > 0) and np.all(expected.dof < 9)


def test_pool_fits_on_statsmodels_formula_results_keeps_the_formula_order():
    pd = pytest.importorskip("pandas")
    smf = pytest.importorskip("statsmodels.formula.api")
    sm = pytest.importorskip("statsmodels.api")
    frames = [pd.DataFrame({"x1": design[:, 1], "x2": design[:, 2], "y": Y}) for design in completed_copies()]
    fits = [smf.ols("y ~ x2 + x1", data=frame).fit() for frame in frames]
    assert list(fits[0].params.index) == ["Intercept", "x2", "x1"]
    by_position = pool_fits([sm.OLS(Y, design).fit() for design in completed_copies()])
    order = [0, 2, 1]  # the arrays' columns are (const, x1, x2)
    pooled = pool_fits(fits)
    for name in ("estimate", "std_error", "low", "high", "dof", "missing_information"):
        np.testing.assert_allclose(getattr(pooled, name), getattr(by_position, name)[order], rtol=1e-9, err_msg=name)
