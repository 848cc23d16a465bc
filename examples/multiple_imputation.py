"""Multiple imputation with IVCNFImputer and Rubin's rules, for a linear regression.

scikit-learn's diabetes data (442 rows, 10 predictors, a continuous outcome; bundled, no
download): 30% of the predictors' entries are removed completely at random, the outcome
``y`` stays complete. The question is the ordinary least squares fit of ``y`` on the ten
predictors (with an intercept), and above all its 90% confidence intervals.

* Complete data: OLS on the table before anything was removed (the reference).
* Single imputation: OLS on ``imputer.transform`` of the table, treated as if it were
  complete data (classical standard errors ``sigma^2 (X^T X)^-1``, t with n - k dof).
* Multiple imputation: m = 20 completed copies from
  ``imputer.sample_multiple_imputations(table, 20)`` (an array of shape (m, n, p)), OLS on
  each, pooled by Rubin's rules with ``skivcnf.pooling.pool_estimates``: Q-bar (mean of
  the estimates), W (mean of the squared standard errors), B (variance of the estimates
  across copies), T = W + (1 + 1/m) B, intervals Q-bar +- t_{nu, 0.95} sqrt(T) with
  Rubin's (1987) degrees of freedom nu = (m - 1) (1 + W / ((1 + 1/m) B))^2 (no
  ``dof_complete`` given; passing the regression's n - k would give Barnard and Rubin's
  small-sample dof, which with n = 442 hardly differ).

As docs/multiple_imputation.rst advises, the outcome is part of the imputed table (its last
column) so that the imputations of the predictors depend on it; it is never missing, so
every copy keeps it unchanged. A table of estimates, standard errors and intervals is
printed, and a figure of the per-coefficient estimates with their 90% intervals is saved to
``<out>/multiple_imputation.png``.

The imputer is trained for at most 40 epochs (early stopping on, so it may stop sooner)
with ``n_draws=80`` (the pool that the 20 copies are resampled from is ``max(n_draws, 4 m)``
draws per row). Takes about 10 seconds on 2 idle CPU cores (a minute or two when other torch
jobs share the cores); seeded, so it reproduces.

    python examples/multiple_imputation.py [--out examples/output]
"""

import argparse
import time
import warnings
from pathlib import Path

import matplotlib
import numpy as np
from scipy import stats
from sklearn.datasets import load_diabetes
from sklearn.exceptions import ConvergenceWarning

from skivcnf import IVCNFImputer
from skivcnf.pooling import pool_estimates

matplotlib.use("Agg")  # write files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

MISSING_RATE = 0.3
N_IMPUTATIONS = 20
LEVEL = 0.90


def ols(X, y):
    """OLS with an intercept: coefficients (intercept first), classical standard errors, residual dof."""
    A = np.column_stack([np.ones(len(X)), X])
    beta, *_ = np.linalg.lstsq(A, y, rcond=None)
    dof = len(y) - A.shape[1]
    sigma2 = np.sum((y - A @ beta) ** 2) / dof
    return beta, np.sqrt(sigma2 * np.diag(np.linalg.inv(A.T @ A))), dof


def t_interval(estimate, std_error, dof, level=LEVEL):
    half = stats.t.ppf(0.5 + level / 2, dof) * std_error
    return estimate - half, estimate + half


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/output"), help="folder for the figure")
    return parser.parse_args()


def main():
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    data = load_diabetes()
    X_full, y = data.data, data.target
    names = ["intercept", *data.feature_names]
    rng = np.random.default_rng(0)
    X_missing = np.where(rng.random(X_full.shape) < MISSING_RATE, np.nan, X_full)
    table = np.column_stack([X_missing, y])  # impute with the outcome in the model
    n, p = X_full.shape
    print(f"diabetes: {n} rows x {p} predictors, {np.isnan(X_missing).mean():.1%} of predictor entries missing "
          f"(MCAR), y complete; {np.isnan(X_missing).any(axis=1).mean():.0%} of rows have a gap")

    imputer = IVCNFImputer(hidden_layer_sizes=(32, 32), max_epochs=40, n_draws=4 * N_IMPUTATIONS, random_state=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported below from history_ instead
        imputer.fit(table)
    history = imputer.history_
    stopping = "fired" if history.stopped_early else "did not fire (max_epochs)"
    print(f"imputer fitted in {time.perf_counter() - start:.1f} s: {len(history.train_loss)} epochs, best epoch "
          f"{history.best_epoch + 1}, early stopping {stopping}")

    # (a) complete data, the reference.
    beta_full, se_full, dof_full = ols(X_full, y)
    low_full, high_full = t_interval(beta_full, se_full, dof_full)

    # (b) one imputation (importance-weighted conditional means) treated as complete data.
    start = time.perf_counter()
    single = imputer.transform(table)
    assert np.array_equal(single[:, -1], y)  # the complete outcome comes back unchanged
    beta_single, se_single, dof_single = ols(single[:, :-1], y)
    low_single, high_single = t_interval(beta_single, se_single, dof_single)
    print(f"single imputation (transform): {time.perf_counter() - start:.1f} s")

    # (c) m imputations, pooled by Rubin's rules.
    start = time.perf_counter()
    copies = imputer.sample_multiple_imputations(table, N_IMPUTATIONS)  # (m, n, p + 1)
    print(f"{N_IMPUTATIONS} imputations (sample_multiple_imputations), array of shape {copies.shape}: "
          f"{time.perf_counter() - start:.1f} s")
    fits = [ols(c[:, :-1], c[:, -1]) for c in copies]
    # variances are the squared standard errors; no dof_complete: Rubin's (1987) degrees of freedom
    pooled = pool_estimates([f[0] for f in fits], [f[1] ** 2 for f in fits], level=LEVEL)

    scale = X_full.std(axis=0)
    mask = np.isnan(X_missing)
    rmse = np.sqrt(np.mean(((single[:, :-1] - X_full) / scale)[mask] ** 2))
    spread = copies[:, :, :-1].std(axis=0, ddof=1)[mask] / np.broadcast_to(scale, mask.shape)[mask]
    print(f"RMSE of the single imputation on the removed entries (standardised): {rmse:.3f}; root mean "
          f"variance of the {N_IMPUTATIONS} copies per removed entry (standardised): {np.sqrt(np.mean(spread**2)):.3f} "
          "(equal in expectation if the imputations are calibrated)")
    # With m exchangeable draws and the truth, the truth lies between their min and max with probability (m-1)/(m+1).
    inside = (copies[:, :, :-1].min(axis=0) <= X_full) & (X_full <= copies[:, :, :-1].max(axis=0))
    print(f"true value of a removed entry within the range of its {N_IMPUTATIONS} imputations: "
          f"{inside[mask].mean():.1%} of entries ({(N_IMPUTATIONS - 1) / (N_IMPUTATIONS + 1):.1%} if the "
          "imputations were calibrated)")

    print(f"\n{LEVEL:.0%} intervals; 'width / complete' is the interval width relative to the complete-data one")
    header = (f"{'coefficient':<11} | {'complete data':>22} | {'single imputation':>22} {'width':>5} | "
              f"{'Rubin-pooled (m=' + str(N_IMPUTATIONS) + ')':>22} {'width':>5} {'FMI':>5} {'dof':>6}")
    print(header)
    print(f"{'':<11} | {'estimate (se)':>22} | {'estimate (se)':>22} {'ratio':>5} | "
          f"{'estimate (se)':>22} {'ratio':>5} {'':>5} {'':>6}")
    print("-" * len(header))
    ratio_single = (high_single - low_single) / (high_full - low_full)
    ratio_pooled = (pooled.high - pooled.low) / (high_full - low_full)
    for j, name in enumerate(names):
        print(f"{name:<11} | {beta_full[j]:>13.1f} ({se_full[j]:6.1f}) | "
              f"{beta_single[j]:>13.1f} ({se_single[j]:6.1f}) {ratio_single[j]:5.2f} | "
              f"{pooled.estimate[j]:>13.1f} ({pooled.std_error[j]:6.1f}) {ratio_pooled[j]:5.2f} "
              f"{pooled.missing_information[j]:5.2f} {pooled.dof[j]:6.0f}")
    covers_single = (low_single <= beta_full) & (beta_full <= high_single)
    covers_pooled = (pooled.low <= beta_full) & (beta_full <= pooled.high)
    print(f"\nintervals containing the complete-data estimate: single imputation {covers_single.sum()}/{len(names)}, "
          f"Rubin-pooled {covers_pooled.sum()}/{len(names)}")
    print("(one masking of one sample: an illustration, not a coverage study; see docs/multiple_imputation.rst)")
    print(f"mean standard error relative to complete data: single imputation {np.mean(se_single / se_full):.2f}, "
          f"Rubin-pooled {np.mean(pooled.std_error / se_full):.2f}")

    # Figure: estimates with 90% intervals, one row per coefficient, three methods side by side.
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    rows = np.arange(len(names))[::-1]
    methods = [
        ("complete data (reference)", beta_full, low_full, high_full, "k"),
        ("single imputation, as if complete", beta_single, low_single, high_single, "tab:orange"),
        (f"Rubin-pooled, m = {N_IMPUTATIONS}", pooled.estimate, pooled.low, pooled.high, "tab:blue"),
    ]
    for k, (label, estimate, low, high, color) in enumerate(methods):
        offset = 0.22 * (1 - k)
        ax.errorbar(estimate, rows + offset, xerr=[estimate - low, high - estimate], fmt="o", ms=4, capsize=3,
                    color=color, label=label)
    ax.axvline(0, color="0.7", lw=0.8, zorder=0)
    ax.set_yticks(rows, names)
    ax.set_xlabel(f"coefficient, with {LEVEL:.0%} confidence interval")
    ax.set_title(f"OLS on diabetes with {MISSING_RATE:.0%} of predictor entries MCAR")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = args.out / "multiple_imputation.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"figure written: {path}")


if __name__ == "__main__":
    main()
