"""Fit the residual flow to complete rows; report seconds per epoch and held-out log-likelihood.

Compares the flow with a full-covariance Gaussian fitted to the same training rows, on
scikit-learn's breast cancer table (569 x 30, every row complete) and on a 10-D
correlated Gaussian (where the Gaussian is the true model and the flow should match it).

It also times one training step with the exact and the stochastic log-determinant for
d = 10 to 100, the evidence for ``EXACT_LOGDET_MAX_FEATURES``.

Run from the repository root::

    python -m benchmarks.flow_fit            # both data sets, float32 and float64, and the timing
    python -m benchmarks.flow_fit --quick    # a smoke run in seconds
"""

import argparse
import platform
import sys
import time

import numpy as np
import torch
from scipy.stats import multivariate_normal
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from skivcnf.flows import ResidualFlow, fit_flow


def correlated_gaussian(n_samples, n_features=10, rho=0.8, seed=0):
    """Rows from ``N(0, S)`` with ``S_ij = rho ** |i - j|`` (an AR(1) covariance)."""
    idx = np.arange(n_features)
    cov = rho ** np.abs(idx[:, None] - idx[None, :])
    return np.random.default_rng(seed).multivariate_normal(np.zeros(n_features), cov, n_samples)


def datasets(quick):
    cancer = load_breast_cancer().data
    gauss = correlated_gaussian(500 if quick else 2000)
    return {"breast cancer (569 x 30)": cancer, f"AR(1) Gaussian ({len(gauss)} x 10)": gauss}


def gaussian_log_likelihood(train, test):
    """Mean held-out log-likelihood per row of the maximum-likelihood Gaussian."""
    model = multivariate_normal(train.mean(0), np.cov(train.T, bias=True), allow_singular=False)
    return float(model.logpdf(test).mean())


def run_case(data, dtype, args, seed):
    train, test = train_test_split(data, test_size=0.2, random_state=seed)
    scaler = StandardScaler().fit(train)
    train, test = scaler.transform(train), scaler.transform(test)
    generator = torch.Generator().manual_seed(seed)
    flow = ResidualFlow(data.shape[1], n_blocks=args.blocks, hidden_features=(args.width,) * 2,
                        generator=generator).to(dtype)
    start = time.perf_counter()
    history = fit_flow(flow, train, max_epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       patience=args.patience, generator=generator)
    fit_seconds = time.perf_counter() - start
    with torch.no_grad():
        flow_ll = float(flow.log_prob(torch.as_tensor(test, dtype=dtype)).mean())
    return {
        "epochs": len(history.train_loss),
        "s/epoch": float(np.mean(history.epoch_seconds)),
        "fit s": fit_seconds,
        "flow": flow_ll,
        "gaussian": gaussian_log_likelihood(train, test),
    }


def logdet_timing(args):
    """Seconds per training step (log_prob + backward) with each log-det estimator."""
    print("\n## Log-determinant cost: one training step (log_prob + backward), batch 128, float32\n")
    print("| d | exact (s/step) | stochastic (s/step) | exact / stochastic |")
    print("|---|---|---|---|")
    # Past 100 features a batched float32 slogdet hit "oneMKL ERROR ... SLASWP" here (torch 2.13 CPU).
    for d in (8, 16) if args.quick else (10, 30, 64, 100):
        gen = torch.Generator().manual_seed(0)
        flow = ResidualFlow(d, n_blocks=args.blocks, hidden_features=(args.width,) * 2, generator=gen)
        y = torch.randn(128, d, generator=gen)
        seconds = {}
        for method in ("exact", "stochastic"):
            flow.log_prob(y, gen, method=method).mean().backward()  # warm-up
            start, n = time.perf_counter(), 2 if args.quick else 5
            for _ in range(n):
                flow.zero_grad()
                flow.log_prob(y, gen, method=method).mean().backward()
            seconds[method] = (time.perf_counter() - start) / n
        print(f"| {d} | {seconds['exact']:.3f} | {seconds['stochastic']:.3f} "
              f"| {seconds['exact'] / seconds['stochastic']:.1f} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few epochs, small data: a smoke run")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--patience", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--part", choices=["all", "fit", "logdet"], default="all")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.blocks, args.width = 3, 2, 16
    torch.set_num_threads(args.threads)
    print("# python -m benchmarks.flow_fit " + " ".join(argv))
    print(f"# {platform.processor() or platform.machine()}, {args.threads} torch threads, "
          f"torch {torch.__version__}; flow: {args.blocks} blocks of width {args.width}, "
          f"lr {args.lr}, batch {args.batch_size}, early stopping patience {args.patience}")
    if args.part in ("all", "fit"):
        print("| data | dtype | epochs | s/epoch | fit s | held-out log-lik/row: flow | Gaussian |")
        print("|---|---|---|---|---|---|---|")
        for name, data in datasets(args.quick).items():
            for dtype in (torch.float32, torch.float64):
                r = run_case(data, dtype, args, args.seed)
                print(f"| {name} | {str(dtype).removeprefix('torch.')} | {r['epochs']} | {r['s/epoch']:.3f} "
                      f"| {r['fit s']:.1f} | {r['flow']:.3f} | {r['gaussian']:.3f} |", flush=True)
    if args.part in ("all", "logdet"):
        logdet_timing(args)


if __name__ == "__main__":
    main()
