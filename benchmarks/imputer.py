"""IVCNFImputer with its defaults against SimpleImputer and IterativeImputer: RMSE and seconds.

Cases (each imputer sees the same masks; RMSE on the masked entries, on the input's scale
for breast cancer and on the standardised scale the Gaussian is drawn on):

- scikit-learn's breast cancer table (569 x 30, standardised), 20% MCAR, ``fit_transform``;
- a 10-D AR(1) Gaussian (rho 0.8, 2000 rows), 30% MCAR, against the exact conditional mean
  (the Bayes limit);
- a 10,000 x 30 AR(1) Gaussian table, 20% MCAR, one seed, for the time (the MissForest-like
  peer is left out there: it takes many minutes).

Peers: SimpleImputer (mean), KNNImputer, IterativeImputer with BayesianRidge (MICE) and with
ExtraTrees (MissForest-like). Every imputer is single-threaded or capped at ``--threads``.

Run from the repository root::

    python -m benchmarks.imputer                 # every case, 3 seeds
    python -m benchmarks.imputer --quick         # a smoke run in seconds
    python -m benchmarks.imputer --set max_epochs=40 --set n_draws=128  # other settings
"""

import argparse
import ast
import platform
import sys
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
from sklearn.preprocessing import StandardScaler

from skivcnf import IVCNFImputer


def ar1_covariance(n_features, rho=0.8):
    idx = np.arange(n_features)
    return rho ** np.abs(idx[:, None] - idx[None, :])


def gaussian_table(n_samples, n_features, seed, rho=0.8):
    cov = ar1_covariance(n_features, rho)
    return np.random.default_rng(seed).multivariate_normal(np.zeros(n_features), cov, n_samples), cov


def mcar(X, rate, seed):
    """Mask each entry with probability ``rate``; a row never loses every entry."""
    rng = np.random.default_rng(seed + 1000)
    mask = rng.random(X.shape) < rate
    full = mask.all(axis=1)
    mask[full, rng.integers(0, X.shape[1], full.sum())] = False
    X_missing = X.copy()
    X_missing[mask] = np.nan
    return X_missing, mask


def gaussian_conditional_mean(X_missing, cov):
    """Exact ``E[x^H | x^O]`` of a zero-mean Gaussian, row by row (the oracle)."""
    out = np.where(np.isnan(X_missing), 0.0, X_missing)
    for i, row in enumerate(X_missing):
        h = np.isnan(row)
        if h.any() and (~h).any():
            out[i, h] = cov[np.ix_(h, ~h)] @ np.linalg.solve(cov[np.ix_(~h, ~h)], row[~h])
    return out


def rmse(X, X_imputed, mask):
    return float(np.sqrt(np.mean((X_imputed[mask] - X[mask]) ** 2)))


def peers(seed, forest=True):
    """scikit-learn's imputers; ``forest`` adds the MissForest-like one (slow on large tables)."""
    out = {
        "SimpleImputer (mean)": SimpleImputer(),
        "KNNImputer (5 neighbours)": KNNImputer(),
        "IterativeImputer (BayesianRidge)": IterativeImputer(max_iter=25, random_state=seed),
    }
    if forest:
        out["IterativeImputer (ExtraTrees, MissForest-like)"] = IterativeImputer(
            ExtraTreesRegressor(n_estimators=100, random_state=seed), max_iter=10, random_state=seed)
    return out


def timed(imputer, X_missing):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IterativeImputer's early-stopping ConvergenceWarning
        out = imputer.fit_transform(X_missing)
    return out, time.perf_counter() - start


def run_case(name, X, rate, seeds, settings, oracle_cov=None, forest=True):
    rows = {}
    for seed in seeds:
        X_missing, mask = mcar(X, rate, seed)
        imputers = {"IVCNFImputer": IVCNFImputer(random_state=seed, **settings), **peers(seed, forest)}
        for label, imputer in imputers.items():
            out, seconds = timed(imputer, X_missing)
            assert np.array_equal(out[~mask], X[~mask]), f"{label} changed an observed entry"
            rows.setdefault(label, []).append((rmse(X, out, mask), seconds))
        if oracle_cov is not None:
            rows.setdefault("exact conditional mean (oracle)", []).append(
                (rmse(X, gaussian_conditional_mean(X_missing, oracle_cov), mask), 0.0))
    print(f"\n## {name}, {rate:.0%} MCAR, seeds {list(seeds)}\n")
    print("| imputer | RMSE (mean ± sd over seeds) | RMSE / IterativeImputer | RMSE / oracle | fit+transform s |")
    print("|---|---|---|---|---|")
    ref = np.mean([r[0] for r in rows["IterativeImputer (BayesianRidge)"]])
    oracle = np.mean([r[0] for r in rows["exact conditional mean (oracle)"]]) if oracle_cov is not None else None
    for label, values in rows.items():
        errors, seconds = np.array([v[0] for v in values]), np.array([v[1] for v in values])
        ratio_oracle = f"{errors.mean() / oracle:.3f}" if oracle else "-"
        print(f"| {label} | {errors.mean():.4f} ± {errors.std():.4f} | {errors.mean() / ref:.3f} | {ratio_oracle} "
              f"| {seconds.mean():.1f} |", flush=True)
    return rows


def parse_settings(pairs):
    settings = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[key] = value
    return settings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, 2 epochs: a smoke run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                        help="an IVCNFImputer parameter other than its default (repeatable)")
    parser.add_argument("--case", action="append", choices=["cancer", "gaussian", "large"],
                        help="run only these cases (repeatable); default all")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    settings = parse_settings(args.set)
    cases = args.case or ["cancer", "gaussian", "large"]
    if args.quick:
        settings.setdefault("max_epochs", 2)
        args.seeds = 1
    torch.set_num_threads(args.threads)
    print("# python -m benchmarks.imputer " + " ".join(argv))
    print(f"# {platform.processor() or platform.machine()}, {args.threads} torch threads, torch {torch.__version__}; "
          f"IVCNFImputer settings other than defaults: {settings or 'none'}")
    seeds = range(args.seeds)
    if "cancer" in cases:
        cancer = StandardScaler().fit_transform(load_breast_cancer().data)
        run_case("breast cancer (569 x 30, standardised)", cancer[:150] if args.quick else cancer, 0.2, seeds,
                 settings, forest=not args.quick)
    if "gaussian" in cases:
        X, cov = gaussian_table(300 if args.quick else 2000, 10, seed=0)
        run_case("AR(1) Gaussian (rho 0.8, 10 columns)", X, 0.3, seeds, settings, oracle_cov=cov,
                 forest=not args.quick)
    if "large" in cases:
        X, _ = gaussian_table(1000 if args.quick else 10_000, 30, seed=1)
        X_missing, mask = mcar(X, 0.2, 0)
        print(f"\n## Timing: {X.shape[0]} x {X.shape[1]} AR(1) Gaussian, 20% MCAR, seed 0\n")
        print("| imputer | RMSE | fit+transform s |")
        print("|---|---|---|")
        for label, imputer in {"IVCNFImputer": IVCNFImputer(random_state=0, **settings),
                               **peers(0, forest=False)}.items():
            out, seconds = timed(imputer, X_missing)
            print(f"| {label} | {rmse(X, out, mask):.4f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
