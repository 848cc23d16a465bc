"""The suite's sections on the package's parts, on flows trained here: no imputer, no peers.

- ``flow_fit``: the residual flow fitted to complete rows by maximum likelihood, its held-out
  log-likelihood against a full-covariance Gaussian fitted to the same rows (breast cancer, and
  the AR(1) Gaussian, where the Gaussian is the true model and the flow should match it);
- ``logdet``: one training step with the exact and the stochastic log-determinant, d = 10 to
  100 (the evidence for ``skivcnf.flows.EXACT_LOGDET_MAX_FEATURES``);
- ``solvers``: rows per second, iterations and convergence of every constraint solver on a
  trained flow, and GMRES products of one linear solve with ``G^HH`` with and without the
  ``J^HH`` preconditioner (AR(1) Gaussian, breast cancer, dequantised digits);
- ``posteriors``: imputation RMSE on the AR(1) Gaussian against its exact conditional mean for
  prior draws, an amortised inference network and per-row fitted posteriors.

Each task is a plain function of its key returning one record, like those of ``sections``.
"""

import time
from typing import NamedTuple

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from skivcnf.conditional import (
    GaussianPosterior,
    InferenceNetwork,
    SolverOptions,
    conditional_mean,
    fit_inference_network,
    fit_posterior,
    gmres,
    sample_conditional,
    solve_constraint,
)
from skivcnf.conditional.linalg import masked_operator
from skivcnf.flows import ResidualFlow, fit_flow

from . import data, masks
from .measure import rmse, timed


class FlowSettings(NamedTuple):
    """Architecture and training of the flows these sections fit."""

    n_blocks: int = 6
    width: int = 64
    batch_size: int = 128
    lr: float = 2e-3
    patience: int = 30
    max_epochs: int = 300


FLOW_FIT = FlowSettings()
QUICK_FLOW = FlowSettings(n_blocks=2, width=16, max_epochs=3)
# the solver and posterior sections fit the flows they solve on with a shorter patience
SOLVER_FLOW = FlowSettings(patience=10, max_epochs=60)
DTYPES = ("float32", "float64")
FLOW_FIT_TABLES = ("breast_cancer", "gaussian")
GAUSSIAN_ROWS, QUICK_GAUSSIAN_ROWS = 2000, 300

LOGDET_FEATURES, QUICK_LOGDET_FEATURES = (10, 30, 64, 100), (8, 16)
LOGDET_BATCH = 128
LOGDET_STEPS, QUICK_LOGDET_STEPS = 5, 2

SOLVER_TABLES = ("gaussian", "breast_cancer", "digits")
SOLVER_DTYPE = torch.float64
SOLVER_ROWS, QUICK_SOLVER_ROWS = 200, 20
SOLVER_MISSING_RATE = 0.3
PRECONDITIONER_ROWS = 100
PRECONDITIONER_RATES = (0.3, 0.7)
PRECONDITIONER_TERMS = (0, 1, 2)  # Neumann terms per block; 0 = no preconditioner
GMRES_RTOL, GMRES_RESTART, GMRES_MAX_RESTARTS = 1e-8, 30, 10


class SolverCase(NamedTuple):
    """One row of the solver table: a solver of ``skivcnf.conditional.SOLVERS`` with its options."""

    label: str
    solver: str
    options: SolverOptions


def solver_cases():
    return [
        SolverCase("newton", "newton", SolverOptions()),
        SolverCase("newton_krylov (no preconditioner)", "newton_krylov", SolverOptions(preconditioner=None)),
        SolverCase("newton_krylov (J^HH preconditioner)", "newton_krylov", SolverOptions()),
        SolverCase("fixed point, alpha=beta=0.5", "fixed_point", SolverOptions()),
        SolverCase("fixed point, alpha=beta=1", "fixed_point", SolverOptions(alpha=1.0, beta=1.0)),
        SolverCase("fixed point, paper (0.5, decay 0.95)", "fixed_point", SolverOptions(decay=0.95)),
    ]


POSTERIOR_METHODS = ("prior", "amortised", "diagonal", "householder")
HOUSEHOLDER_REFLECTIONS = 4
POSTERIOR_TEST_ROWS, QUICK_POSTERIOR_TEST_ROWS = 300, 50
POSTERIOR_MISSING_RATE = 0.3
POSTERIOR_DRAWS, QUICK_POSTERIOR_DRAWS = 64, 8
POSTERIOR_STEPS, QUICK_POSTERIOR_STEPS = 300, 10
NETWORK_EPOCHS, QUICK_NETWORK_EPOCHS = 10, 2
NETWORK_WIDTH = 64


def component_table(name, quick=False):
    """A complete table for these sections: ``"gaussian"`` (10-column AR(1)), ``"breast_cancer"``
    or ``"digits"`` (dequantised); returns ``(X, label)``."""
    if name == "gaussian":
        X = data.correlated_gaussian(QUICK_GAUSSIAN_ROWS if quick else GAUSSIAN_ROWS).X
        return X, f"AR(1) Gaussian ({len(X)} x {X.shape[1]})"
    if name == "digits":
        X = data.dequantised_digits().X
        return X, f"digits, dequantised ({len(X)} x {X.shape[1]})"
    X = data.load(name).X
    return X, f"{name.replace('_', ' ')} ({len(X)} x {X.shape[1]})"


def _untrained_flow(features, settings, generator):
    return ResidualFlow(features, n_blocks=settings.n_blocks, hidden_features=(settings.width,) * 2,
                        generator=generator)


def _fit_flow(flow, rows, settings, generator):
    return fit_flow(flow, rows, max_epochs=settings.max_epochs, batch_size=settings.batch_size, lr=settings.lr,
                    patience=settings.patience, generator=generator)


def trained_flow(X, quick=False, seed=0):
    """A float64 flow fitted to the rows ``X`` for the solver and posterior sections, and its epochs trained."""
    settings = QUICK_FLOW if quick else SOLVER_FLOW
    generator = torch.Generator().manual_seed(seed)
    flow = _untrained_flow(X.shape[1], settings, generator).to(SOLVER_DTYPE)
    history = _fit_flow(flow, X, settings, generator)
    return flow, len(history.train_loss)


# ---------------------------------------------------------------------------------------------- flow_fit


def gaussian_log_likelihood(train, test):
    """Mean held-out log-likelihood per row of the maximum-likelihood Gaussian of ``train``."""
    law = data.GaussianLaw(train.mean(0), np.cov(train.T, bias=True))
    return float(law.log_marginal(test, np.ones(train.shape[1], dtype=bool)).mean())


def flow_fit(table, dtype, quick=False, seed=0):
    """Fit a flow to 80% of ``table``'s rows in ``dtype``; held-out log-likelihood of it and of a Gaussian."""
    settings = QUICK_FLOW if quick else FLOW_FIT
    X, label = component_table(table, quick)
    train, test = train_test_split(X, test_size=0.2, random_state=seed)
    scaler = StandardScaler().fit(train)
    train, test = scaler.transform(train), scaler.transform(test)
    generator = torch.Generator().manual_seed(seed)
    torch_dtype = getattr(torch, dtype)
    flow = _untrained_flow(X.shape[1], settings, generator).to(torch_dtype)
    history, seconds, memory, kinds = timed(_fit_flow, flow, train, settings, generator)
    with torch.no_grad():
        flow_ll = float(flow.log_prob(torch.as_tensor(test, dtype=torch_dtype)).mean())
    return {"status": "ok", "table": table, "label": label, "dtype": dtype, "settings": settings._asdict(),
            "epochs": len(history.train_loss), "seconds_per_epoch": float(np.mean(history.epoch_seconds)),
            "fit_seconds": seconds, "peak_mib": memory, "warnings": kinds, "flow_log_likelihood": flow_ll,
            "gaussian_log_likelihood": gaussian_log_likelihood(train, test)}


# ---------------------------------------------------------------------------------------------- logdet


def logdet_timing(features, quick=False):
    """Seconds per training step (``log_prob`` and backward, float32) with each log-det estimator."""
    settings = QUICK_FLOW if quick else FLOW_FIT
    generator = torch.Generator().manual_seed(0)
    flow = _untrained_flow(features, settings, generator)
    y = torch.randn(LOGDET_BATCH, features, generator=generator)
    n_steps = QUICK_LOGDET_STEPS if quick else LOGDET_STEPS
    seconds = {}
    for method in ("exact", "stochastic"):
        flow.log_prob(y, generator, method=method).mean().backward()  # warm-up
        start = time.perf_counter()
        for _ in range(n_steps):
            flow.zero_grad()
            flow.log_prob(y, generator, method=method).mean().backward()
        seconds[method] = (time.perf_counter() - start) / n_steps
    return {"status": "ok", "features": features, "batch": LOGDET_BATCH, "settings": settings._asdict(),
            "exact_seconds_per_step": seconds["exact"], "stochastic_seconds_per_step": seconds["stochastic"]}


# ---------------------------------------------------------------------------------------------- solvers


def solvers(table, quick=False):
    """Every solver case, then the preconditioner's effect on GMRES, on one flow fitted to ``table``."""
    X, label = component_table(table, quick)
    X = StandardScaler().fit_transform(X)
    flow, epochs = trained_flow(X, quick)
    rng = np.random.default_rng(1)
    generator = torch.Generator().manual_seed(1)
    n = min(QUICK_SOLVER_ROWS if quick else SOLVER_ROWS, len(X))
    y = torch.as_tensor(X[:n], dtype=SOLVER_DTYPE)
    hidden = torch.as_tensor(masks.mcar(X[:n], SOLVER_MISSING_RATE, rng))
    x_target = torch.randn(y.shape, generator=generator, dtype=SOLVER_DTYPE)  # prior latent draws
    solver_rows = []
    for case in solver_cases():
        start = time.perf_counter()
        result = solve_constraint(flow, y, hidden, x_target, solver=case.solver, options=case.options, warn=False)
        seconds = time.perf_counter() - start
        iterations = result.n_iter[hidden.any(1)].float()
        solver_rows.append({"solver": case.label, "rows_per_second": n / seconds,
                            "mean_iterations": float(iterations.mean()), "max_iterations": int(iterations.max()),
                            "converged": float(result.converged.float().mean())})
    y = torch.as_tensor(X[:PRECONDITIONER_ROWS], dtype=SOLVER_DTYPE)
    preconditioner_rows = []
    for rate in PRECONDITIONER_RATES:
        hidden = torch.as_tensor(masks.mcar(X[:PRECONDITIONER_ROWS], rate, rng))
        rhs = torch.where(hidden, torch.randn(y.shape, generator=generator, dtype=SOLVER_DTYPE), 0.0)
        with flow.cached_weights():
            for terms in PRECONDITIONER_TERMS:
                start = time.perf_counter()
                operator = masked_operator(flow.linearize(y).jvp, hidden)
                preconditioner = None
                if terms:
                    preconditioner = masked_operator(flow.linearize_inverse(y, n_terms=terms, tol=None).jvp, hidden)
                result = gmres(operator, rhs, preconditioner=preconditioner, rtol=GMRES_RTOL, restart=GMRES_RESTART,
                               max_restarts=GMRES_MAX_RESTARTS)
                preconditioner_rows.append({"missing_rate": rate, "neumann_terms": terms, "products": result.n_iter,
                                            "seconds": time.perf_counter() - start})
    return {"status": "ok", "table": table, "label": label, "rows": n, "flow_epochs": epochs,
            "missing_rate": SOLVER_MISSING_RATE, "preconditioner_rows": len(y), "solvers": solver_rows,
            "preconditioner": preconditioner_rows}


# ---------------------------------------------------------------------------------------------- posteriors


def posteriors(method, quick=False):
    """Imputation RMSE of the AR(1) Gaussian's masked entries with one kind of posterior, and its oracle's.

    ``method``: ``"prior"`` (draws from the prior posterior), ``"amortised"`` (an inference
    network trained on the masked training rows), ``"diagonal"`` or ``"householder"`` (per-row
    Gaussian posteriors fitted on the test rows). Every task fits the same flow (same seed).
    """
    if method not in POSTERIOR_METHODS:
        raise ValueError(f"unknown posterior method {method!r}; choose from {POSTERIOR_METHODS}")
    train = data.correlated_gaussian(QUICK_GAUSSIAN_ROWS if quick else GAUSSIAN_ROWS, seed=0)
    test = data.correlated_gaussian(QUICK_POSTERIOR_TEST_ROWS if quick else POSTERIOR_TEST_ROWS, seed=1)
    flow, epochs = trained_flow(train.X, quick)
    mask = masks.mcar(test.X, POSTERIOR_MISSING_RATE, np.random.default_rng(2))
    oracle = test.law.oracle_mean(np.where(mask, np.nan, test.X))
    y, hidden = torch.as_tensor(test.X, dtype=SOLVER_DTYPE), torch.as_tensor(mask)
    generator = torch.Generator().manual_seed(3)
    n_draws = QUICK_POSTERIOR_DRAWS if quick else POSTERIOR_DRAWS
    features = test.X.shape[1]
    start = time.perf_counter()
    params = None
    if method == "amortised":
        network = InferenceNetwork(features, hidden_features=(NETWORK_WIDTH,) * 2, generator=generator)
        network = network.to(SOLVER_DTYPE)
        train_hidden = torch.as_tensor(masks.mcar(train.X, POSTERIOR_MISSING_RATE, np.random.default_rng(4)))
        fit_inference_network(flow, torch.as_tensor(train.X, dtype=SOLVER_DTYPE), train_hidden, network,
                              max_epochs=QUICK_NETWORK_EPOCHS if quick else NETWORK_EPOCHS, batch_size=256, lr=3e-3,
                              n_samples=4, generator=generator)
        with torch.no_grad():
            params = network(y, hidden)
    elif method in ("diagonal", "householder"):
        reflections = HOUSEHOLDER_REFLECTIONS if method == "householder" else 0
        posterior = GaussianPosterior(len(y), features, n_reflections=reflections, generator=generator)
        posterior = posterior.to(SOLVER_DTYPE)
        fit_posterior(flow, y, hidden, posterior, max_steps=QUICK_POSTERIOR_STEPS if quick else POSTERIOR_STEPS,
                      generator=generator)
        with torch.no_grad():
            params = posterior()
    with torch.no_grad():
        draws = sample_conditional(flow, y, hidden, params, n_samples=n_draws, generator=generator)
    seconds = time.perf_counter() - start
    plain, _ = conditional_mean(draws, weighted=False)
    weighted, ess = conditional_mean(draws)
    return {"status": "ok", "method": method, "train_rows": len(train.X), "rows": len(y),
            "missing_rate": POSTERIOR_MISSING_RATE, "masked_entries": int(mask.sum()),
            "flow_epochs": epochs, "draws": n_draws, "seconds": seconds, "oracle_rmse": rmse(test.X, oracle, mask),
            "mean_rmse": rmse(test.X, plain.numpy(), mask), "weighted_rmse": rmse(test.X, weighted.numpy(), mask),
            "mean_ess": float(ess.mean()),
            "n_reflections": HOUSEHOLDER_REFLECTIONS if method == "householder" else 0}
