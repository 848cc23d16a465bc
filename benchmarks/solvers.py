"""Constraint solvers and posteriors of the IVCNF sampler, on trained flows.

Part 1, solvers: rows per second, iterations and convergence rate of every solver (and
of the fixed point under the paper's decaying schedule) at d = 10 (correlated Gaussian),
30 (breast cancer) and 64 (digits, dequantised), 30% MCAR, prior latent draws, float64.

Part 2, the J^HH preconditioner of Newton-Krylov: GMRES products and seconds for one
solve with ``G^HH`` at 30% and 70% MCAR.

Part 3, imputation: RMSE on the masked entries of a 10-D correlated Gaussian (30% MCAR)
against its exact conditional mean (the Bayes limit), for the mean of prior draws, their
importance-weighted mean, an amortised inference network, and per-row fitted posteriors.

Run from the repository root::

    python -m benchmarks.solvers            # about 10 minutes on 2 cores
    python -m benchmarks.solvers --quick    # a smoke run
"""

import argparse
import platform
import sys
import time

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.preprocessing import StandardScaler

from skivcnf.conditional import SOLVERS, SolverOptions, gmres, solve_constraint
from skivcnf.conditional.fitting import fit_inference_network, fit_posterior
from skivcnf.conditional.linalg import masked_operator
from skivcnf.conditional.posteriors import GaussianPosterior, InferenceNetwork
from skivcnf.conditional.sampling import conditional_mean, sample_conditional
from skivcnf.flows import ResidualFlow, fit_flow

from .flow_fit import correlated_gaussian

DTYPE = torch.float64


def solver_datasets(quick):
    rng = np.random.default_rng(0)
    digits = load_digits().data + rng.uniform(size=load_digits().data.shape)
    sets = {
        "Gaussian d=10": correlated_gaussian(1000 if quick else 2000),
        "breast cancer d=30": load_breast_cancer().data,
        "digits d=64": digits,
    }
    return {name: StandardScaler().fit_transform(x) for name, x in sets.items()}


def trained_flow(data, epochs, seed=0):
    gen = torch.Generator().manual_seed(seed)
    flow = ResidualFlow(data.shape[1], generator=gen).to(DTYPE)
    fit_flow(flow, data, max_epochs=epochs, batch_size=128, lr=2e-3, patience=10, generator=gen)
    return flow


def solver_cases():
    yield "newton", "newton", SolverOptions()
    yield "newton_krylov (no preconditioner)", "newton_krylov", SolverOptions(preconditioner=None)
    yield "newton_krylov (J^HH preconditioner)", "newton_krylov", SolverOptions()
    yield "fixed point, alpha=beta=0.5", "fixed_point", SolverOptions()
    yield "fixed point, alpha=beta=1", "fixed_point", SolverOptions(alpha=1.0, beta=1.0)
    yield "fixed point, paper (0.5, decay 0.95)", "fixed_point", SolverOptions(decay=0.95)


def run_solvers(args, flows):
    print("\n## Solvers (30% MCAR, prior latent draws, float64, tol 4e-10)\n")
    print("| data | solver | rows | rows/s | mean iter | max iter | converged |")
    print("|---|---|---|---|---|---|---|")
    for name, (data, flow) in flows.items():
        gen = torch.Generator().manual_seed(1)
        n = min(args.rows, len(data))
        y = torch.as_tensor(data[:n], dtype=DTYPE)
        hidden = torch.rand(y.shape, generator=gen) < 0.3
        x_target = torch.randn(y.shape, generator=gen, dtype=DTYPE)
        for label, solver, options in solver_cases():
            if args.quick and solver == "fixed_point" and "paper" not in label:
                continue
            start = time.perf_counter()
            result = solve_constraint(flow, y, hidden, x_target, solver=solver, options=options, warn=False)
            seconds = time.perf_counter() - start
            its = result.n_iter[hidden.any(1)].float()
            print(f"| {name} | {label} | {n} | {n / seconds:.0f} | {its.mean():.1f} | {int(its.max())} "
                  f"| {result.converged.float().mean():.1%} |", flush=True)


def run_preconditioner(args, flows):
    print("\n## The J^HH preconditioner: one linear solve with G^HH by GMRES (rtol 1e-8), 100 rows\n")
    print("| data | MCAR rate | Neumann terms per block | G products | seconds |")
    print("|---|---|---|---|---|")
    for name, (data, flow) in flows.items():
        gen = torch.Generator().manual_seed(3)
        y = torch.as_tensor(data[:100], dtype=DTYPE)
        for rate in (0.3, 0.7):
            hidden = torch.rand(y.shape, generator=gen) < rate
            rhs = torch.where(hidden, torch.randn(y.shape, generator=gen, dtype=DTYPE), 0.0)
            with flow.cached_weights():
                for terms in (0, 1, 2):
                    start = time.perf_counter()
                    operator = masked_operator(flow.linearize(y).jvp, hidden)
                    pre = None
                    if terms:
                        pre = masked_operator(flow.linearize_inverse(y, n_terms=terms, tol=None).jvp, hidden)
                    result = gmres(operator, rhs, preconditioner=pre, rtol=1e-8, restart=30, max_restarts=10)
                    seconds = time.perf_counter() - start
                    label = "none" if not terms else str(terms)
                    print(f"| {name} | {rate:.0%} | {label} | {result.n_iter} | {seconds:.3f} |", flush=True)


def run_imputation(args):
    print("\n## Imputation RMSE on a correlated Gaussian (10-D AR(1), rho 0.8, 30% MCAR)\n")
    d, rho = 10, 0.8
    idx = np.arange(d)
    cov = rho ** np.abs(idx[:, None] - idx[None, :])
    train = correlated_gaussian(1000 if args.quick else 2000, d, rho, seed=0)
    test = correlated_gaussian(100 if args.quick else 300, d, rho, seed=1)
    flow = trained_flow(train, 3 if args.quick else args.epochs)
    gen = torch.Generator().manual_seed(2)
    y = torch.as_tensor(test, dtype=DTYPE)
    hidden = torch.rand(y.shape, generator=gen) < 0.3
    hidden[hidden.all(1), 0] = False
    oracle = y.clone()
    for i in range(len(y)):
        h = hidden[i].numpy()
        if h.any():
            gain = cov[np.ix_(h, ~h)] @ np.linalg.inv(cov[np.ix_(~h, ~h)])
            oracle[i, h] = torch.as_tensor(gain @ test[i, ~h])

    def rmse(imputed):
        return float(((imputed - y)[hidden]).pow(2).mean().sqrt())

    k = args.draws
    rows = [("exact conditional mean (oracle)", rmse(oracle), 0.0, float("nan"))]
    start = time.perf_counter()
    prior = sample_conditional(flow, y, hidden, n_samples=k, generator=gen)
    seconds = time.perf_counter() - start
    plain, _ = conditional_mean(prior, weighted=False)
    weighted, ess = conditional_mean(prior)
    rows.append((f"prior, mean of {k} draws", rmse(plain), seconds, float("nan")))
    rows.append((f"prior, importance-weighted mean of {k} draws", rmse(weighted), seconds, float(ess.mean())))

    start = time.perf_counter()
    net = InferenceNetwork(d, hidden_features=(64, 64), generator=gen).to(DTYPE)
    y_train = torch.as_tensor(train, dtype=DTYPE)
    hidden_train = torch.rand(y_train.shape, generator=gen) < 0.3
    fit_inference_network(flow, y_train, hidden_train, net, max_epochs=2 if args.quick else 10, batch_size=256,
                          lr=3e-3, n_samples=4, generator=gen)
    with torch.no_grad():
        amortised = sample_conditional(flow, y, hidden, net(y, hidden), n_samples=k, generator=gen)
    seconds = time.perf_counter() - start
    plain, _ = conditional_mean(amortised, weighted=False)
    weighted, ess = conditional_mean(amortised)
    rows.append((f"amortised network, mean of {k} draws", rmse(plain), seconds, float("nan")))
    rows.append((f"amortised network, importance-weighted mean of {k}", rmse(weighted), seconds, float(ess.mean())))

    for n_reflections in (0, 4):
        start = time.perf_counter()
        posterior = GaussianPosterior(len(y), d, n_reflections=n_reflections, generator=gen).to(DTYPE)
        fit_posterior(flow, y, hidden, posterior, max_steps=20 if args.quick else 300, generator=gen)
        fitted = sample_conditional(flow, y, hidden, posterior(), n_samples=k, generator=gen)
        seconds = time.perf_counter() - start
        plain, _ = conditional_mean(fitted, weighted=False)
        weighted, ess = conditional_mean(fitted)
        kind = "diagonal" if not n_reflections else f"Householder ({n_reflections})"
        rows.append((f"per-row fitted {kind}, mean of {k} draws", rmse(plain), seconds, float("nan")))
        rows.append((f"per-row fitted {kind}, importance-weighted", rmse(weighted), seconds, float(ess.mean())))

    best = rows[0][1]
    print(f"| imputation ({len(y)} rows, {int(hidden.sum())} masked entries) | RMSE | / oracle | seconds "
          f"| mean ESS of {k} |")
    print("|---|---|---|---|---|")
    for label, value, seconds, ess in rows:
        print(f"| {label} | {value:.4f} | {value / best:.3f} | {seconds:.1f} | "
              f"{'-' if np.isnan(ess) else f'{ess:.1f}'} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=60, help="flow training epochs (early stopping on)")
    parser.add_argument("--rows", type=int, default=200, help="rows solved per case")
    parser.add_argument("--draws", type=int, default=64, help="draws per row for imputations")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--part", choices=["all", "solvers", "imputation"], default="all")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.draws = 20, 8
    torch.set_num_threads(args.threads)
    print("# python -m benchmarks.solvers " + " ".join(argv))
    print(f"# {platform.machine()}, {args.threads} torch threads, torch {torch.__version__}; solvers {SOLVERS}")
    if args.part in ("all", "solvers"):
        flows = {name: (data, trained_flow(data, 3 if args.quick else args.epochs))
                 for name, data in solver_datasets(args.quick).items()}
        run_solvers(args, flows)
        run_preconditioner(args, flows)
    if args.part in ("all", "imputation"):
        run_imputation(args)


if __name__ == "__main__":
    main()
