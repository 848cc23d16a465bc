"""Measuring one imputer on one table: errors, wall seconds, peak memory, and sanity checks."""

import os
import threading
import time
import warnings

import numpy as np
from scipy import stats
from sklearn.impute import SimpleImputer

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_bytes():
    """Resident memory of this process in bytes (Linux ``/proc``; ``nan`` elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE_BYTES
    except OSError:
        return float("nan")


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every ``interval`` seconds.

    Counts what torch and numpy allocate in C (which ``tracemalloc`` does not see).
    """

    def __init__(self, interval=0.005):
        self.interval = interval

    def __enter__(self):
        self.start = self.peak = _resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _resident_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _resident_bytes())
        self.megabytes = (self.peak - self.start) / 2**20


def timed(call, *args):
    """``call(*args)`` with its wall seconds, peak extra memory (MiB) and the warning classes it raised."""
    with warnings.catch_warnings(record=True) as caught, PeakMemory() as memory:
        warnings.simplefilter("always")
        start = time.perf_counter()
        out = call(*args)
        seconds = time.perf_counter() - start
    kinds = sorted({w.category.__name__ for w in caught})
    return out, seconds, memory.megabytes, kinds


def rmse(X, X_imputed, mask):
    return float(np.sqrt(np.mean((X_imputed[mask] - X[mask]) ** 2)))


def mae(X, X_imputed, mask):
    return float(np.mean(np.abs(X_imputed[mask] - X[mask])))


def beyond_range(X_missing, X_imputed, mask):
    """Largest distance of an imputed entry beyond its column's observed range, in the column's
    observed standard deviations (0 when every imputation lies within the range)."""
    low, high, sd = np.nanmin(X_missing, axis=0), np.nanmax(X_missing, axis=0), np.nanstd(X_missing, axis=0)
    distance = np.maximum(np.maximum(low - X_imputed, X_imputed - high), 0.0) / np.where(sd > 0, sd, 1.0)
    return float(distance[mask].max()) if mask.any() else 0.0


def check_output(X_missing, out, mask, is_mean=False):
    """Problems with an imputer's output, as short strings (empty when it is sound).

    A peer whose output equals column-mean imputation has fallen back silently (hyperimpute
    under pandas 3 does): its figure would be the mean's, so it is reported as failed.
    """
    problems = []
    if out.shape != X_missing.shape:
        return [f"output shape {out.shape} != input {X_missing.shape}"]
    if not np.isfinite(out).all():
        problems.append("non-finite output")
    changed = ~np.isclose(out[~mask], X_missing[~mask], rtol=1e-7, atol=1e-9)
    if changed.any():
        problems.append(f"changed {changed.mean():.1%} of observed entries")
    mean_fill = SimpleImputer(keep_empty_features=True).fit_transform(X_missing)
    if not is_mean and np.allclose(out[mask], mean_fill[mask], atol=1e-6):
        problems.append("equals mean imputation (silent fallback)")
    return problems


def interval_coverage(X, draws, mask, level=0.9):
    """Share of masked true values inside the central ``level`` interval of the draws, and mean width.

    ``draws`` : (n_draws, n_rows, n_features). The interval is the empirical quantile range.
    """
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    inside = (X >= lo) & (X <= hi)
    return float(inside[mask].mean()), float((hi - lo)[mask].mean())


def exact_sampler_coverage(n_draws, level=0.9, trials=200_000):
    """Expected coverage of :func:`interval_coverage`'s interval when the draws come from the true law.

    With finitely many draws the empirical quantile range is narrower than the true interval:
    the truth is one more exchangeable draw, so this depends on ``n_draws`` only (Monte Carlo
    on uniforms, standard error below 0.001).
    """
    u = np.random.default_rng(0).random((trials, n_draws + 1))
    lo, hi = np.quantile(u[:, :-1], [(1 - level) / 2, (1 + level) / 2], axis=1)
    return float(np.mean((u[:, -1] >= lo) & (u[:, -1] <= hi)))


def ols(X, y):
    """Least-squares coefficients (intercept first) and their standard errors."""
    design = np.column_stack([np.ones(len(X)), X])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    dof = len(y) - design.shape[1]
    cov = resid @ resid / dof * np.linalg.inv(design.T @ design)
    return coef, np.sqrt(np.diag(cov)), dof


def single_interval(estimate, se, dof, level=0.9):
    """The estimate and its ``level`` t interval from one complete-data analysis."""
    half = stats.t.ppf((1 + level) / 2, dof) * se
    return estimate, estimate - half, estimate + half


# ---------------------------------------------------------------------------------------------- mixed-type tables


def pfc(truth, imputed, mask, categorical):
    """Proportion of falsely classified entries: the share of the masked entries of the ``categorical``
    columns (names) of the frame ``truth`` that ``imputed`` gets wrong (NaN when none is masked)."""
    wrong, total = 0, 0
    for name in categorical:
        j = truth.columns.get_loc(name)
        hidden = mask[:, j]
        wrong += int((imputed[name].to_numpy()[hidden] != truth[name].to_numpy()[hidden]).sum())
        total += int(hidden.sum())
    return wrong / total if total else float("nan")


def pfc_by_column(truth, imputed, mask, categorical):
    """:func:`pfc` of each categorical column alone."""
    return {name: pfc(truth, imputed, mask, [name]) for name in categorical}


def numeric_rmse(truth, imputed, mask, numeric):
    """RMSE over the masked entries of the ``numeric`` columns (names), each column in its standard
    deviations over the complete table (as :func:`rmse` on the standardised real tables)."""
    errors = []
    for name in numeric:
        j = truth.columns.get_loc(name)
        values = truth[name].to_numpy(dtype=float)
        sd = values.std()
        guess = imputed[name].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        errors.append((guess[mask[:, j]] - values[mask[:, j]]) / (sd if sd > 0 else 1.0))
    errors = np.concatenate(errors) if errors else np.array([])
    return float(np.sqrt(np.mean(errors ** 2))) if errors.size else float("nan")


def check_frame(frame_missing, out, mask, baseline=None):
    """Problems with an imputer's completed frame, as short strings (empty when it is sound).

    The output must have the input's columns and dtypes (a category column its categories),
    no missing entry, and the observed entries unchanged. ``baseline`` (the most frequent / mean
    imputation's frame), when given: an output equal to it on every masked entry is a silent
    fallback, reported as failed (as :func:`check_output` does for the mean).
    """
    import pandas as pd

    if not isinstance(out, pd.DataFrame):
        return [f"output is a {type(out).__name__}, not a DataFrame"]
    if out.shape != frame_missing.shape or list(out.columns) != list(frame_missing.columns):
        return [f"output shape {out.shape} or columns differ from the input's {frame_missing.shape}"]
    problems = []
    changed_dtype = [str(c) for c in frame_missing.columns if out[c].dtype != frame_missing[c].dtype]
    if changed_dtype:
        problems.append(f"dtype changed: {', '.join(changed_dtype)}")
    if out.isna().to_numpy().any():
        problems.append(f"{int(out.isna().to_numpy().sum())} entries left missing")
    changed = 0
    for j, name in enumerate(frame_missing.columns):
        seen = ~mask[:, j]
        given, got = frame_missing[name][seen], out[name][seen]
        if isinstance(frame_missing[name].dtype, pd.CategoricalDtype):
            changed += int((given.astype(object).to_numpy() != got.astype(object).to_numpy()).sum())
        else:
            a = given.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
            b = got.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
            changed += int((~np.isclose(b, a, rtol=1e-7, atol=1e-9)).sum())
    if changed:
        problems.append(f"changed {changed / (~mask).sum():.1%} of observed entries")
    if baseline is not None and mask.any():
        same = True
        for j, name in enumerate(frame_missing.columns):
            hidden = mask[:, j]
            if not hidden.any():
                continue
            if isinstance(frame_missing[name].dtype, pd.CategoricalDtype):
                same &= bool(np.all(out[name].astype(object).to_numpy()[hidden]
                                    == baseline[name].astype(object).to_numpy()[hidden]))
            else:
                a = out[name].astype("Float64").to_numpy(dtype=float, na_value=np.nan)[hidden]
                b = baseline[name].astype("Float64").to_numpy(dtype=float, na_value=np.nan)[hidden]
                same &= bool(np.allclose(a, b, atol=1e-6))
        if same:
            problems.append("equals most frequent / mean imputation (silent fallback)")
    return problems
