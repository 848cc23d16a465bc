"""IVCNFImputer inside a scikit-learn Pipeline: cross-validation and a small grid search.

scikit-learn's breast cancer table (569 rows x 30 features, bundled with scikit-learn, no
download) loses 20% of its entries completely at random. A classifier is trained on the
incomplete table through

    Pipeline([("impute", IVCNFImputer(...)), ("scale", StandardScaler()),
              ("clf", LogisticRegression(max_iter=1000))])

so that the imputer is fitted on the training folds only, like any other step. The script

* scores the pipeline with ``cross_val_score`` (3 stratified folds), next to the same
  pipeline with a ``SimpleImputer`` (column means) as the reference;
* runs a small ``GridSearchCV`` over one imputer parameter, ``impute__n_blocks`` in [1, 4],
  on the same folds (``refit=False``, to keep the number of fits small);
* prints the scores and saves a bar chart of the mean CV accuracy per setting (error bars:
  standard deviation over the folds) to ``<out>/pipeline_grid_search.png``.

To fit the time budget the imputer is small and short-trained: ``hidden_layer_sizes=(32, 32)``,
``max_epochs=15``, ``n_draws=16``, ``early_stopping=False`` (so every fit trains exactly
15 epochs, without a held-out split). That is 9 imputer fits in all (3 for
``cross_val_score``, 6 for the grid search), each followed by imputing its training and its
test fold. Takes about 30 seconds on 2 idle CPU cores (up to 3 minutes when other torch jobs
share the cores). Everything is seeded (``random_state``), so the numbers reproduce on the
same machine and library version.

    python examples/pipeline_grid_search.py [--out examples/output]
"""

import argparse
import time
from pathlib import Path

import matplotlib
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skivcnf import IVCNFImputer

matplotlib.use("Agg")  # write files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

MISSING_RATE = 0.2
IMPUTER_SETTINGS = dict(hidden_layer_sizes=(32, 32), max_epochs=15, n_draws=16, early_stopping=False,
                        random_state=0)


def make_pipeline(imputer):
    return Pipeline([("impute", imputer), ("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/output"), help="folder for the figure")
    return parser.parse_args()


def main():
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    X, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(0)
    X_missing = np.where(rng.random(X.shape) < MISSING_RATE, np.nan, X)
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)  # the same folds for every score below
    print(f"breast cancer: {X.shape[0]} rows x {X.shape[1]} columns, "
          f"{np.isnan(X_missing).mean():.1%} of entries missing (MCAR); 3-fold stratified CV")

    results = {}  # label -> accuracy per fold

    start = time.perf_counter()
    scores = cross_val_score(make_pipeline(SimpleImputer()), X_missing, y, cv=cv)
    results["SimpleImputer\n(mean)"] = scores
    print(f"SimpleImputer pipeline    accuracy per fold {np.round(scores, 3)}, mean {scores.mean():.3f}   "
          f"({time.perf_counter() - start:.1f} s)")

    # cross_val_score: the IVCNF pipeline with 2 residual blocks.
    start = time.perf_counter()
    scores = cross_val_score(make_pipeline(IVCNFImputer(n_blocks=2, **IMPUTER_SETTINGS)), X_missing, y, cv=cv)
    results["IVCNF\nn_blocks=2\n(cross_val_score)"] = scores
    print(f"IVCNF pipeline (2 blocks) accuracy per fold {np.round(scores, 3)}, mean {scores.mean():.3f}   "
          f"({time.perf_counter() - start:.1f} s)")

    # GridSearchCV over one imputer parameter, on the same folds. refit=False skips the final
    # refit on all rows: best_params_ and cv_results_ are still there (best_estimator_ is not).
    start = time.perf_counter()
    search = GridSearchCV(make_pipeline(IVCNFImputer(**IMPUTER_SETTINGS)), {"impute__n_blocks": [1, 4]}, cv=cv,
                          refit=False)
    search.fit(X_missing, y)
    print(f"GridSearchCV over impute__n_blocks in [1, 4] ({time.perf_counter() - start:.1f} s):")
    for i, params in enumerate(search.cv_results_["params"]):
        fold_scores = np.array([search.cv_results_[f"split{k}_test_score"][i] for k in range(cv.n_splits)])
        results[f"IVCNF\nn_blocks={params['impute__n_blocks']}\n(grid search)"] = fold_scores
        print(f"  {params}: mean accuracy {search.cv_results_['mean_test_score'][i]:.3f} "
              f"+- {search.cv_results_['std_test_score'][i]:.3f}  (rank {search.cv_results_['rank_test_score'][i]}, "
              f"fit {search.cv_results_['mean_fit_time'][i]:.1f} s/fold)")
    print(f"  best: {search.best_params_} with mean accuracy {search.best_score_:.3f}")

    # Figure: mean CV accuracy per setting, error bars = standard deviation over the folds.
    order = ["SimpleImputer\n(mean)", "IVCNF\nn_blocks=1\n(grid search)", "IVCNF\nn_blocks=2\n(cross_val_score)",
             "IVCNF\nn_blocks=4\n(grid search)"]
    means = np.array([results[k].mean() for k in order])
    stds = np.array([results[k].std() for k in order])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = ["0.6"] + ["tab:blue"] * (len(order) - 1)
    ax.bar(range(len(order)), means, yerr=stds, capsize=6, color=colors)
    for i, k in enumerate(order):
        ax.scatter(np.full(len(results[k]), i), results[k], color="k", s=12, zorder=3,
                   label="fold accuracy" if i == 0 else None)
    ax.set_xticks(range(len(order)), order)
    low = min(r.min() for r in results.values())
    ax.set_ylim(max(0.0, low - 0.03), 1.0)
    ax.set_ylabel("3-fold CV accuracy")
    ax.set_title(f"Logistic regression on breast cancer, {MISSING_RATE:.0%} MCAR\n"
                 "imputer -> StandardScaler -> LogisticRegression")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = args.out / "pipeline_grid_search.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"figure written: {path}")


if __name__ == "__main__":
    main()
