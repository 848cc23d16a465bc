"""Rubin's rules: one analysis repeated on ``m`` multiply-imputed copies, pooled into one result.

Each completed copy of a table (for instance one of
:meth:`~skivcnf.IVCNFImputer.sample_multiple_imputations`) is analysed as if it were complete
data, giving an estimate and its variance; :func:`pool_estimates` combines the ``m`` results
into a pooled estimate whose interval accounts for the missing values; :func:`pool_fits` does
the same for fitted model results such as statsmodels' (anything with ``params`` and
``cov_params()``). NumPy and SciPy only: statsmodels and pandas are never imported here.
"""

from typing import NamedTuple

import numpy as np
from scipy import stats

__all__ = ["PooledEstimate", "pool_estimates", "pool_fits"]


class PooledEstimate(NamedTuple):
    """The pooled result of ``m`` analyses of multiply-imputed copies (see :func:`pool_estimates`
    and :func:`pool_fits`).

    Fields are NumPy floats for scalar estimates and arrays for vector estimates: ``within``,
    ``between`` and ``total`` have the shape of one input variance ((p,) for variances, (p, p)
    for covariance matrices); every other array field has the shape of one estimate, its
    entries computed from the diagonal of the variances.

    Attributes
    ----------
    estimate : float or ndarray (p,)
        ``Q_bar``, the mean of the ``m`` estimates.
    std_error : float or ndarray (p,)
        ``sqrt(T)``, the pooled standard error.
    low, high : float or ndarray (p,)
        The central ``level`` interval ``Q_bar -/+ t_{dof, (1 + level) / 2} sqrt(T)``.
    dof : float or ndarray (p,)
        Degrees of freedom of the Student-t reference distribution: Barnard and Rubin's (1999)
        when ``dof_complete`` was given, Rubin's (1987) otherwise; ``inf`` where ``between`` is 0
        and no ``dof_complete`` was given (the normal distribution).
    within : float or ndarray (p,) or (p, p)
        ``W``, the mean of the ``m`` variances (or covariance matrices).
    between : float or ndarray (p,) or (p, p)
        ``B``, the sample variance (or covariance matrix) of the ``m`` estimates, divisor ``m - 1``.
    total : float or ndarray (p,) or (p, p)
        ``T = W + (1 + 1/m) B``.
    relative_increase : float or ndarray (p,)
        ``r = (1 + 1/m) B / W``, the relative increase in variance due to the missing values.
    missing_variance_share : float or ndarray (p,)
        ``lambda = (1 + 1/m) B / T``, the share of the total variance due to the missing values.
    missing_information : float or ndarray (p,)
        The fraction of missing information ``gamma = (r + 2 / (dof + 3)) / (r + 1)`` (Rubin 1987,
        with the ``dof`` of this record); close to ``lambda`` when ``dof`` is large.
    level : float
        Coverage of the interval ``[low, high]``.
    n_imputations : int
        ``m``, the number of pooled analyses.
    """

    estimate: np.ndarray
    std_error: np.ndarray
    low: np.ndarray
    high: np.ndarray
    dof: np.ndarray
    within: np.ndarray
    between: np.ndarray
    total: np.ndarray
    relative_increase: np.ndarray
    missing_variance_share: np.ndarray
    missing_information: np.ndarray
    level: float
    n_imputations: int


def _check_inputs(estimates, variances, dof_complete, level):
    """Raise ``ValueError`` on shapes, counts or values Rubin's rules are not defined for."""
    if estimates.ndim not in (1, 2):
        raise ValueError(f"estimates must have shape (m,) or (m, p); got {estimates.shape}")
    m = len(estimates)
    if m < 2:
        raise ValueError(f"Rubin's rules need at least 2 imputations; got {m}")
    covariance_shape = (*estimates.shape, estimates.shape[-1]) if estimates.ndim == 2 else None
    if variances.shape not in (estimates.shape, covariance_shape):
        allowed = " or ".join(str(s) for s in (estimates.shape, covariance_shape) if s is not None)
        raise ValueError(f"variances must have shape {allowed} for estimates of shape {estimates.shape}; "
                         f"got {variances.shape}")
    diagonal = np.diagonal(variances, axis1=1, axis2=2) if variances.shape == covariance_shape else variances
    if not np.all(diagonal >= 0):
        raise ValueError("variances must be non-negative (and finite)")
    if not np.all(np.isfinite(estimates)):
        raise ValueError("estimates must be finite")
    if dof_complete is not None and not dof_complete > 0:
        raise ValueError(f"dof_complete must be positive or None; got {dof_complete}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")


def pool_estimates(estimates, variances, dof_complete=None, level=0.9):
    """Pool ``m`` estimates from multiply-imputed copies by Rubin's rules.

    Parameters
    ----------
    estimates : array-like (m,) or (m, p)
        The estimate of each copy (a scalar, or a vector of ``p`` quantities such as
        regression coefficients).
    variances : array-like (m,), (m, p) or (m, p, p)
        The variance of each estimate computed as if its copy were complete data (a squared
        standard error): the same shape as ``estimates``, or for vector estimates one
        covariance matrix per copy.
    dof_complete : float or None, default=None
        Degrees of freedom of the complete-data analysis (``n - k`` for a least-squares fit of
        ``k`` coefficients on ``n`` rows). Given, the interval uses Barnard and Rubin's (1999)
        small-sample degrees of freedom, which never exceed it; ``None`` (or ``inf``, their
        limit) uses Rubin's (1987), which suit large samples.
    level : float, default=0.9
        Coverage of the returned interval, in (0, 1).

    Returns
    -------
    PooledEstimate
        The pooled estimate, its standard error, interval and degrees of freedom, and the
        variance components (see :class:`PooledEstimate`).

    Raises
    ------
    ValueError
        With fewer than 2 copies, shapes that do not match, negative variances, a
        non-positive ``dof_complete`` or a ``level`` outside (0, 1).

    Notes
    -----
    With ``Q_bar`` the mean estimate, ``W`` the mean variance, ``B`` the variance of the estimates
    across copies and ``T = W + (1 + 1/m) B``, the share of variance due to the missing values
    is ``lambda = (1 + 1/m) B / T`` and ``(Q_bar - Q) / sqrt(T)`` is approximately Student-t with

    - Rubin (1987): ``dof = (m - 1) / lambda^2``;
    - Barnard and Rubin (1999): ``dof = 1 / (1 / dof_rubin + 1 / dof_observed)``, with
      ``dof_observed = (dof_complete + 1) / (dof_complete + 3) * dof_complete * (1 - lambda)``.

    Vector estimates are pooled component by component (the degrees of freedom and interval
    of each quantity come from the diagonals of ``W`` and ``B``); ``within``, ``between`` and
    ``total`` keep the full matrices when covariance matrices are given. Where ``B`` is 0
    Rubin's degrees of freedom are infinite (the interval is the normal one) and Barnard and
    Rubin's equal ``dof_observed``. The method is described in :doc:`/multiple_imputation`.

    References
    ----------
    Rubin, D. B. (1987). *Multiple Imputation for Nonresponse in Surveys*. Wiley.
    Barnard, J. and Rubin, D. B. (1999). Small-sample degrees of freedom with multiple
    imputation. *Biometrika*, 86(4), 948-955.

    Examples
    --------
    Three copies gave the estimates 1.0, 1.2 and 1.4, each with variance 0.1: ``W = 0.1``,
    ``B = 0.04``, ``T = 0.1 + (4/3) 0.04 = 23/150``, ``lambda = 8/23`` and Rubin's
    ``dof = 2 / lambda^2 = 529/32``:

    >>> from skivcnf.pooling import pool_estimates
    >>> pooled = pool_estimates([1.0, 1.2, 1.4], [0.1, 0.1, 0.1])
    >>> print(f"{pooled.estimate:.3f} {pooled.total:.5f} {pooled.dof:.5f} {pooled.missing_variance_share:.4f}")
    1.200 0.15333 16.53125 0.3478
    >>> print(f"[{pooled.low:.3f}, {pooled.high:.3f}]")
    [0.518, 1.882]

    With a complete-data analysis of 20 degrees of freedom, Barnard and Rubin's are fewer:

    >>> print(f"{pool_estimates([1.0, 1.2, 1.4], [0.1, 0.1, 0.1], dof_complete=20).dof:.3f}")
    6.922
    """
    estimates = np.asarray(estimates, dtype=float)
    variances = np.asarray(variances, dtype=float)
    _check_inputs(estimates, variances, dof_complete, level)
    m = len(estimates)
    inflation = 1 + 1 / m  # (1 + 1/m): B estimated from m copies adds B/m to the estimate's variance
    estimate = estimates.mean(axis=0)
    within = variances.mean(axis=0)
    per_component_between = estimates.var(axis=0, ddof=1)
    if variances.ndim == 3:
        deviations = estimates - estimate
        between = deviations.T @ deviations / (m - 1)
        per_component_within = np.diagonal(within).copy()
    else:
        between = per_component_between
        per_component_within = within
    total = within + inflation * between
    per_component_total = per_component_within + inflation * per_component_between
    with np.errstate(divide="ignore", invalid="ignore"):  # B = 0 gives infinite dof, on purpose
        share = inflation * per_component_between / per_component_total
        relative_increase = inflation * per_component_between / per_component_within
        dof = (m - 1) / share**2
        if dof_complete is not None and np.isfinite(dof_complete):
            observed_dof = (dof_complete + 1) / (dof_complete + 3) * dof_complete * (1 - share)
            dof = 1 / (1 / dof + 1 / observed_dof)
        missing_information = (relative_increase + 2 / (dof + 3)) / (relative_increase + 1)
    std_error = np.sqrt(per_component_total)
    half_width = stats.t.ppf((1 + level) / 2, dof) * std_error
    fields = dict(estimate=estimate, std_error=std_error, low=estimate - half_width, high=estimate + half_width,
                  dof=dof, within=within, between=between, total=total, relative_increase=relative_increase,
                  missing_variance_share=share, missing_information=missing_information)
    # 0-d arrays become NumPy floats, so that a scalar estimate gives scalars
    return PooledEstimate(**{k: np.asarray(v)[()] for k, v in fields.items()}, level=float(level), n_imputations=m)


def _names(values):
    """The labels of a pandas Series or DataFrame axis (``values.index``), or None for an array."""
    index = getattr(values, "index", None)
    return None if index is None or callable(index) else tuple(index)  # list.index is a method, not labels


def _fit_arrays(k, fit):
    """``(params, cov_params(), parameter names or None)`` of the ``k``-th fit, checked for shape."""
    if not hasattr(fit, "params") or not callable(getattr(fit, "cov_params", None)):
        raise TypeError(f"fits[{k}] must be a fitted model result with a 'params' attribute and a 'cov_params()' "
                        f"method (as statsmodels' results have); got {type(fit).__name__}")
    params, covariance = fit.params, fit.cov_params()
    names = _names(params)
    estimate = np.asarray(params, dtype=float)
    if estimate.ndim != 1:
        raise ValueError(f"pool_fits pools 1-D params; fits[{k}].params has shape {estimate.shape} "
                         "(pool such fits with pool_estimates)")
    if names is not None and _names(covariance) not in (None, names):
        raise ValueError(f"fits[{k}].cov_params() is labelled {list(_names(covariance))}, its params "
                         f"{list(names)}: they must be in the same order")
    return estimate, np.asarray(covariance, dtype=float), names


def pool_fits(fits, level=0.95):
    """Pool fitted model results, one per multiply-imputed copy, by Rubin's rules.

    A shortcut for :func:`pool_estimates` on fitted results such as statsmodels' (``OLS``,
    ``Logit``, ``GLM``..., array or formula API): it reads each result's ``params`` and
    ``cov_params()`` (full covariance pooling) and, where every result has one, its
    ``df_resid`` as the complete-data degrees of freedom (Barnard and Rubin's small-sample
    degrees of freedom; statsmodels gives ``n - k`` for least squares, ``Logit`` and ``GLM``).
    Results are read by duck typing; statsmodels itself is not needed.

    Parameters
    ----------
    fits : sequence of fitted results, length m >= 2
        Each with ``params`` (array or pandas Series of ``p`` coefficients), a method
        ``cov_params()`` returning their ``(p, p)`` covariance (array or DataFrame), and
        optionally ``df_resid``. Series-labelled results must all have the same labels,
        in the same order.
    level : float, default=0.95
        Coverage of the returned intervals, in (0, 1) (0.95 as in statsmodels' summaries).

    Returns
    -------
    PooledEstimate
        As :func:`pool_estimates` returns for estimates of shape ``(m, p)`` and covariances
        ``(m, p, p)``. ``pooled.estimate[j]`` (and every per-coefficient field) is the
        coefficient labelled ``fits[0].params.index[j]`` when params are Series, in the
        results' own order otherwise; ``pd.Series(pooled.estimate, index=fits[0].params.index)``
        labels it again.

    Raises
    ------
    TypeError
        If a result lacks ``params`` or a ``cov_params()`` method.
    ValueError
        With fewer than 2 results, params that are not 1-D, results whose parameter labels
        differ (the message names the first that differs), or any error of
        :func:`pool_estimates` (shapes, variances, ``level``).

    Notes
    -----
    ``dof_complete`` is the smallest ``df_resid`` of the results (they are equal when every
    copy has the same rows), and ``None`` (Rubin's large-sample degrees of freedom) when a
    result has none. For models whose own intervals are normal-based (``Logit``, ``GLM``) the
    pooled interval is Student-t with Barnard and Rubin's degrees of freedom, which tend to the
    normal one as ``df_resid`` grows.

    Examples
    --------
    Three completed copies of a 5-row table whose last ``y`` was imputed as 5, 6 and 7: with
    ``x = 0, ..., 4`` the least-squares slope of each copy is ``y_5 / 5`` (1.0, 1.2, 1.4), so the
    pooled slope is 1.2 and its between-copy variance 0.04:

    >>> import numpy as np
    >>> import statsmodels.api as sm
    >>> from skivcnf.pooling import pool_fits
    >>> x = sm.add_constant(np.array([0.0, 1.0, 2.0, 3.0, 4.0]))
    >>> fits = [sm.OLS([1.0, 3.0, 2.0, 5.0, last], x).fit() for last in (5.0, 6.0, 7.0)]
    >>> pooled = pool_fits(fits)
    >>> print(f"slope {pooled.estimate[1]:.2f}, B {pooled.between[1, 1]:.3f}, df_resid {fits[0].df_resid:.0f}")
    slope 1.20, B 0.040, df_resid 3
    >>> print(f"dof {pooled.dof[1]:.2f}, 95% interval [{pooled.low[1]:.2f}, {pooled.high[1]:.2f}]")
    dof 1.22, 95% interval [-2.11, 4.51]

    Barnard and Rubin's degrees of freedom never exceed ``df_resid`` (3 here): with 5 rows the
    interval is wide.
    """
    fits = list(fits)
    if len(fits) < 2:
        raise ValueError(f"Rubin's rules need at least 2 fitted results; got {len(fits)}")
    arrays = [_fit_arrays(k, fit) for k, fit in enumerate(fits)]
    names = arrays[0][2]
    for k, (_, _, other) in enumerate(arrays[1:], start=1):
        if other != names:
            raise ValueError(f"fits[{k}].params is labelled {None if other is None else list(other)}, fits[0].params "
                             f"{None if names is None else list(names)}: every fit must have the same coefficients")
    dofs = [getattr(fit, "df_resid", None) for fit in fits]
    dof_complete = None if any(dof is None for dof in dofs) else float(min(dofs))
    return pool_estimates(np.stack([a[0] for a in arrays]), np.stack([a[1] for a in arrays]),
                          dof_complete=dof_complete, level=level)
