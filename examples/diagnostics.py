"""Diagnostics of a fitted IVCNFImputer: imputed vs observed values, training curve, solver statistics.

scikit-learn's breast cancer table (569 rows x 30 features, bundled with scikit-learn, no
download) loses 20% of its entries completely at random and an IVCNFImputer is fitted on it.
Three figures are saved to ``<out>/`` (their paths are printed):

1. ``diagnostics_distributions.png``, drawn by ``skivcnf.plotting.plot_imputed_distributions``:
   for 6 columns, histograms of the observed values (grey) against the values imputed for
   the missing entries in 5 copies of ``sample_multiple_imputations`` (blue; they should
   look like the observed values when the data are missing completely at random, as here).
   Added on top: the point imputations of ``transform`` (importance-weighted conditional
   means, which are less spread out than real values, by design; orange outline) and the
   true values of the removed entries, known in this experiment only (black outline).
2. ``diagnostics_training.png``, drawn by ``skivcnf.plotting.plot_training_history``: the
   training curve from ``imputer.history_``: the loss per row on the training rows
   (``train_loss``, minus the bound) and, on a second y-axis, the held-out loss that early
   stopping monitors (``validation_loss``; see the ``early_stopping`` parameter for what it
   measures) per epoch, and the epoch whose weights were kept (``best_epoch``).
3. ``diagnostics_solver.png`` (and a printed table): what the constraint solver did for the
   conditional draws behind ``transform``, drawn again with ``imputer.conditional_draws``:
   the share of converged draws, the Newton iterations per draw (``draws.n_iter``), which
   solver finished each draw (``draws.method``, an index into
   ``skivcnf.conditional.SOLVERS``), and the effective sample size (ESS) of each row's
   importance weights (``draws.ess``), against its number of missing entries.

The imputer is small (3 blocks of width (32, 32)), trained for at most 40 epochs (early
stopping on; it may stop sooner), and draws ``n_draws=32`` completions per row. Takes under a
minute on 2 idle CPU cores (about 3 minutes when other torch jobs share the cores); seeded,
so it reproduces.

    python examples/diagnostics.py [--out examples/output]
"""

import argparse
import time
import warnings
from pathlib import Path

import matplotlib
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning

from skivcnf import IVCNFImputer
from skivcnf.conditional import SOLVERS
from skivcnf.exceptions import ConstraintWarning
from skivcnf.plotting import plot_imputed_distributions, plot_training_history

matplotlib.use("Agg")  # write files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

MISSING_RATE = 0.2
N_DRAWS = 32
N_COPIES = 5  # copies of sample_multiple_imputations pooled in the histograms
COLUMNS = (0, 1, 4, 7, 20, 27)  # mean radius, mean texture, mean smoothness, mean concave points, worst ...


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/output"), help="folder for the figures")
    return parser.parse_args()


def solver_statistics(imputer, X_missing, n_draws):
    """What the solver did for each draw: ``imputer.conditional_draws`` and the hidden mask of the modelled columns."""
    draws = imputer.conditional_draws(X_missing, n_draws)
    hidden = np.isnan(X_missing)[:, imputer.modelled_features_]
    return {"n_iter": draws.n_iter, "method": draws.method, "converged": draws.converged, "ess": draws.ess,
            "hidden": hidden}


def plot_distributions(imputer, X, X_missing, point, names, path):
    """``plot_imputed_distributions``, with the point imputations and the true values on top."""
    fig = plot_imputed_distributions(imputer, X_missing, n_imputations=N_COPIES, columns=list(COLUMNS), bins=25)
    fig.set_size_inches(11, 6)
    removed = np.isnan(X_missing)
    for ax, j in zip(fig.axes, COLUMNS, strict=True):
        bars = list(ax.containers[0])  # the observed histogram: its bins are the panel's
        edges = [bar.get_x() for bar in bars] + [bars[-1].get_x() + bars[-1].get_width()]
        ax.hist(point[removed[:, j], j], bins=edges, density=True, histtype="step", lw=1.6, color="tab:orange",
                label="imputed: transform (cond. mean)")
        ax.hist(X[removed[:, j], j], bins=edges, density=True, histtype="step", lw=1.0, color="k", ls="--",
                label="true values of removed entries")
        ax.set_title(f"{names[j]} ({removed[:, j].sum()} imputed)", fontsize=9)
        ax.set_yticks([])
    fig.axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Observed vs imputed values, breast cancer with {MISSING_RATE:.0%} MCAR")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(imputer, path):
    fig = plot_training_history(imputer)
    fig.set_size_inches(8, 4)
    fig.axes[0].set_title("IVCNFImputer training curve (imputer.history_)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_solver(stats, path):
    hidden_rows = stats["hidden"].any(axis=1)
    n_iter, method = stats["n_iter"][:, hidden_rows], stats["method"][:, hidden_rows]
    ess, n_missing = stats["ess"][hidden_rows], stats["hidden"][hidden_rows].sum(axis=1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    bins = np.arange(n_iter.max() + 2) - 0.5
    for code, name in enumerate(SOLVERS):
        if (method == code).any():
            axes[0].hist(n_iter[method == code], bins=bins, alpha=0.7, label=f"finished by {name}")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("iterations per draw (draws.n_iter, summed over the solver chain)")
    axes[0].set_ylabel("draws")
    axes[0].legend(fontsize=8)
    axes[1].hist(ess, bins=np.linspace(0, N_DRAWS, 33), color="tab:green")
    axes[1].set_xlabel(f"effective sample size per row (of {N_DRAWS} draws)")
    axes[1].set_ylabel("rows")
    rng = np.random.default_rng(0)
    axes[2].scatter(n_missing + rng.uniform(-0.2, 0.2, len(n_missing)), ess, s=8, alpha=0.6, color="tab:green")
    axes[2].set_xlabel("missing entries in the row (jittered)")
    axes[2].set_ylabel("effective sample size")
    fig.suptitle("Constraint solver and importance weights of the draws behind transform")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    data = load_breast_cancer()
    X = data.data
    rng = np.random.default_rng(0)
    X_missing = np.where(rng.random(X.shape) < MISSING_RATE, np.nan, X)
    print(f"breast cancer: {X.shape[0]} rows x {X.shape[1]} columns, {np.isnan(X_missing).mean():.1%} of entries "
          "missing (MCAR)")

    # A small flow for a small table (docs/user_guide.rst: 2-3 blocks, (32, 32) for small tables).
    imputer = IVCNFImputer(n_blocks=3, hidden_layer_sizes=(32, 32), max_epochs=40, n_draws=N_DRAWS, random_state=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported below from history_ instead
        imputer.fit(X_missing)
    history = imputer.history_
    held_out = f"{history.validation_loss[history.best_epoch]:.3f}" if history.validation_loss else "n/a"
    print(f"fit: {time.perf_counter() - start:.1f} s, {len(history.train_loss)} epochs, "
          f"best epoch {history.best_epoch + 1}, "
          f"early stopping {'fired' if history.stopped_early else 'did not fire (max_epochs reached)'}; "
          f"held-out loss (history_.validation_loss) at best epoch {held_out}; "
          f"{history.n_unsolved_draws} unsolved training draws, {history.n_skipped_steps} skipped steps")

    start = time.perf_counter()
    point = imputer.transform(X_missing)
    draw = imputer.sample_multiple_imputations(X_missing, 1)[0]
    print(f"transform + one multiple imputation: {time.perf_counter() - start:.1f} s")
    mask = np.isnan(X_missing)
    scale = X.std(axis=0)
    for label, values in (("transform", point), ("one draw", draw)):
        rmse = np.sqrt(np.mean(((values - X) / scale)[mask] ** 2))
        sd_ratio = np.median([values[mask[:, j], j].std() / X_missing[~mask[:, j], j].std()
                              for j in range(X.shape[1])])
        print(f"  {label:<10} RMSE on removed entries (standardised) {rmse:.3f}; median over columns of "
              f"sd(imputed) / sd(observed) {sd_ratio:.2f}")

    paths = [args.out / "diagnostics_distributions.png", args.out / "diagnostics_training.png",
             args.out / "diagnostics_solver.png"]
    plot_distributions(imputer, X, X_missing, point, data.feature_names, paths[0])
    plot_training(imputer, paths[1])

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstraintWarning)  # unsolved draws are counted below
        stats = solver_statistics(imputer, X_missing, N_DRAWS)
    seconds = time.perf_counter() - start
    hidden_rows = stats["hidden"].any(axis=1)
    converged, n_iter = stats["converged"][:, hidden_rows], stats["n_iter"][:, hidden_rows]
    method, ess = stats["method"][:, hidden_rows], stats["ess"][hidden_rows]
    print(f"\nsolver statistics: {N_DRAWS} draws for each of the {hidden_rows.sum()} rows with missing entries "
          f"({converged.size} draws, {seconds:.1f} s, solver={imputer.solver!r})")
    print(f"  converged draws: {converged.mean():.2%}; rows with no converged draw: {(~converged.any(axis=0)).sum()}")
    counts = np.bincount(n_iter.ravel())
    print("  iterations per draw (n_iter, summed over the fallback chain): "
          + ", ".join(f"{k}: {c}" for k, c in enumerate(counts) if c)
          + f"   (mean {n_iter.mean():.2f}, max {n_iter.max()})")
    print("  solver that finished the draw (method): " + ", ".join(
        f"{name} {np.mean(method == code):.2%}" for code, name in enumerate(SOLVERS)))
    unsolved = ~converged
    if unsolved.any():
        print("  of the unsolved draws, last solver tried: " + ", ".join(
            f"{name} {np.sum(method[unsolved] == code)}" for code, name in enumerate(SOLVERS)))
    q = np.quantile(ess, [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
    print(f"  ESS per row (of {N_DRAWS}): min {q[0]:.1f}, 10% {q[1]:.1f}, 25% {q[2]:.1f}, median {q[3]:.1f}, "
          f"75% {q[4]:.1f}, max {q[5]:.1f}; mean {ess.mean():.1f}; rows with ESS < 5: {(ess < 5).sum()}")
    n_missing = stats["hidden"][hidden_rows].sum(axis=1)
    print("  mean ESS by missing entries per row: " + ", ".join(
        f"{k}: {ess[n_missing == k].mean():.1f} ({(n_missing == k).sum()} rows)"
        for k in np.unique(n_missing) if (n_missing == k).sum() >= 5))
    plot_solver(stats, paths[2])
    for path in paths:
        print(f"figure written: {path}")


if __name__ == "__main__":
    main()
