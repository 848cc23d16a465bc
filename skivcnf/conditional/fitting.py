"""Fitting posteriors on the bound: per row (paper 4.2.2) and amortised (paper 4.2.1)."""

import copy
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..exceptions import ConstraintWarning, NumericalWarning
from .bound import elbo
from .sampling import conditional_mean, sample_conditional

__all__ = ["OBJECTIVES", "PosteriorFitHistory", "fit_posterior", "fit_inference_network", "masked_elbo_loss"]


@dataclass
class PosteriorFitHistory:
    """What happened while fitting a posterior.

    Attributes
    ----------
    elbo : list of float
        Mean bound per row at each step (or epoch), over the converged draws.
    validation : list of float
        The held-out criterion after each epoch (amortised fitting with a validation
        split): the median bound of the held-out rows, or minus their imputation RMSE
        (see ``monitor`` of :func:`fit_inference_network`).
    best_epoch : int
        Epoch whose weights were kept (amortised fitting with a validation split; without
        one, the last weights are kept and this is the epoch of the best training bound).
    n_steps : int
    converged : bool
        Whether the stopping rule (convergence or early stopping) fired before the cap.
    n_unsolved_draws : int
        Draws whose constraint did not converge (left out of the loss).
    n_skipped_steps : int
        Steps skipped for a non-finite loss or gradient.
    seconds : float

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, False, True]])
    >>> from skivcnf.conditional import GaussianPosterior, fit_posterior
    >>> posterior = GaussianPosterior(2, 3).double()
    >>> history = fit_posterior(flow, y, hidden, posterior, n_samples=2, max_steps=3,
    ...                         generator=torch.Generator().manual_seed(1))
    >>> history.n_steps, len(history.elbo), history.converged, history.n_unsolved_draws
    (3, 3, False, 0)
    """

    elbo: list = field(default_factory=list)
    validation: list = field(default_factory=list)
    best_epoch: int = -1
    n_steps: int = 0
    converged: bool = False
    n_unsolved_draws: int = 0
    n_skipped_steps: int = 0
    seconds: float = 0.0


OBJECTIVES = ("elbo", "iwae")


def masked_elbo_loss(estimate, objective="elbo"):
    """Negative bound summed over rows, over each row's converged draws only.

    ``objective="elbo"`` averages the log-weights; ``"iwae"`` takes the log of the mean
    weight (the importance-weighted bound, as MIWAE does for VAEs), tighter with more
    draws. Returns the loss and the number of draws left out.
    """
    per_row, unsolved = _row_bounds(estimate, objective)
    return -per_row.sum(), unsolved


def _row_bounds(estimate, objective):
    """Bound per row over its converged draws (0 for a row with none) and the unsolved count."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    ok = estimate.converged
    unsolved = int((~ok).sum())
    if objective == "iwae":
        log_w = torch.where(ok, estimate.log_weight, float("-inf"))
        count = ok.sum(0)
        per_row = torch.logsumexp(log_w, dim=0) - torch.log(count.clamp_min(1).to(log_w.dtype))
        return torch.where(count > 0, per_row, 0.0), unsolved
    weight = ok.to(estimate.log_weight.dtype)
    return (torch.where(ok, estimate.log_weight, 0.0) * weight).sum(0) / weight.sum(0).clamp_min(1), unsolved


def _check_objective(objective, logdet, stick_the_landing=False):
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    if objective == "iwae" and logdet != "exact":
        raise ValueError("objective='iwae' needs the log-weights' values: use logdet='exact' "
                         f"(got {logdet!r}, whose values are gradient surrogates).")
    if objective == "iwae" and stick_the_landing:
        raise ValueError("stick_the_landing biases the importance-weighted bound's gradient; "
                         "use it with objective='elbo'.")


@contextmanager
def _flow_frozen(flow, frozen=True):
    """Turn off the flow's weight gradients for the block (when ``frozen``), then restore them."""
    saved = [p.requires_grad for p in flow.parameters()]
    if frozen:
        flow.requires_grad_(False)
    try:
        yield
    finally:
        for p, requires in zip(flow.parameters(), saved, strict=True):
            p.requires_grad_(requires)


def _step(optimizer, loss, parameters, history, max_grad_norm=None):
    optimizer.zero_grad(set_to_none=True)
    if not bool(torch.isfinite(loss)):
        history.n_skipped_steps += 1
        return False
    loss.backward()
    grads = [p.grad for p in parameters if p.grad is not None]
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        history.n_skipped_steps += 1
        optimizer.zero_grad(set_to_none=True)
        return False
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    return True


def _warn_skipped(history):
    if history.n_skipped_steps:
        warnings.warn(f"{history.n_skipped_steps} steps had a non-finite bound or gradient and were skipped.",
                      NumericalWarning, stacklevel=3)
    if history.n_unsolved_draws:
        warnings.warn(f"{history.n_unsolved_draws} draws' equality constraints were not solved while fitting; "
                      "they were left out of the bound (see PosteriorFitHistory.n_unsolved_draws).",
                      ConstraintWarning, stacklevel=3)


@contextmanager
def _one_constraint_report():
    """Silence the per-step ConstraintWarning; the fit reports the total once at the end."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstraintWarning)
        yield


def _held_out_bound(flow, y, hidden, network, n_samples, logdet, solver, options, objective, batch_size,
                    seed):
    """Median bound of the held-out rows (no graph).

    The median, because one outlying row can dominate a mean and stop training early
    (measured on breast cancer: a held-out outlier stopped it at epoch 15, RMSE 0.415
    against 0.349 trained on). The same ``seed`` every epoch (common random numbers), so
    that epochs differ by the weights and not by the draws.
    """
    generator = torch.Generator(device=y.device).manual_seed(seed)
    rows = []
    with torch.no_grad():
        for start in range(0, y.shape[0], batch_size):
            y_b, h_b = y[start:start + batch_size], hidden[start:start + batch_size]
            estimate = elbo(flow, y_b, h_b, network(y_b, h_b), n_samples, logdet, solver, options, None, generator)
            rows.append(_row_bounds(estimate, objective)[0])
    return float(torch.cat(rows).median())


def _held_out_imputation(flow, y, hidden, probe, network, solver, options, batch_size, seed, n_samples=16):
    """Minus the RMSE of importance-weighted completions of the ``probe`` entries (no graph)."""
    generator = torch.Generator(device=y.device).manual_seed(seed)
    squared, count = 0.0, int(probe.sum())
    if count == 0:
        return 0.0
    with torch.no_grad():
        for start in range(0, y.shape[0], batch_size):
            part = slice(start, start + batch_size)
            y_b, h_b, p_b = y[part], hidden[part] | probe[part], probe[part]
            draws = sample_conditional(flow, y_b, h_b, network(y_b, h_b), n_samples, generator, solver, options,
                                       weights=True)
            point, _ = conditional_mean(draws)
            squared += float(torch.where(p_b, point - y_b, 0.0).pow(2).sum())
    return -math.sqrt(squared / count)


def fit_posterior(flow, y, hidden, posterior, *, n_samples=8, max_steps=500, lr=1e-2, logdet="exact",
                  solver="auto", options=None, tol=1e-3, patience=50, objective="elbo",
                  stick_the_landing=True, generator=None, verbose=False):
    """Fit per-row posteriors by Adam on the bound, all rows at once (the flow is fixed).

    The paper's settings (4.2.2) are the defaults: learning rate 1e-2, 8 draws per step,
    at most 500 steps. Each draw's solver starts from the same draw's previous solution.
    Training stops early when an exponential moving average of the mean bound has not
    improved by ``tol`` nats for ``patience`` steps.

    Parameters
    ----------
    flow : ResidualFlow
    y : Tensor (batch, d)
    hidden : BoolTensor (batch, d)
    posterior : GaussianPosterior
        Fitted in place (its ``n_rows`` must be ``batch``).
    n_samples, max_steps, lr : int, int, float
    logdet : {"exact", "clade", "nlade"}
    solver, options
        Passed to the constraint solver.
    tol, patience : float, int
        Stopping rule.
    objective : {"elbo", "iwae"}, default="elbo"
        The bound maximised (see :func:`masked_elbo_loss`).
    stick_the_landing : bool, default=True
        Path-only gradient of ``log q`` (:func:`~.posteriors.rsample`); measured to
        reach the exact posterior of a Gaussian oracle where the full gradient jitters.
    generator : torch.Generator, optional
    verbose : bool
        tqdm progress with the bound.

    Returns
    -------
    PosteriorFitHistory

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, False, True]])
    >>> from skivcnf.conditional import GaussianPosterior, fit_posterior
    >>> posterior = GaussianPosterior(2, 3).double()
    >>> history = fit_posterior(flow, y, hidden, posterior, n_samples=2, max_steps=3,
    ...                         generator=torch.Generator().manual_seed(1))
    >>> history.n_steps, posterior().mean.shape
    (3, torch.Size([2, 3]))
    >>> bool((posterior.mean[~hidden] == 0).all()), bool((posterior.mean[hidden] != 0).all())  # hidden entries moved
    (True, True)
    """
    stick_the_landing = stick_the_landing and objective == "elbo"
    _check_objective(objective, logdet, stick_the_landing)
    start = time.perf_counter()
    history = PosteriorFitHistory()
    params = [p for p in posterior.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    warm, ema, best, stale = None, None, -math.inf, 0
    with _flow_frozen(flow), _one_constraint_report():
        steps = tqdm(range(max_steps), disable=not verbose, desc="fit posterior", unit="step")
        for _ in steps:
            estimate = elbo(flow, y, hidden, posterior(y, hidden), n_samples, logdet, solver, options,
                            warm, generator, stick_the_landing)
            warm = estimate.samples
            loss, unsolved = masked_elbo_loss(estimate, objective)
            history.n_unsolved_draws += unsolved
            _step(optimizer, loss, params, history)
            history.n_steps += 1
            value = -float(loss.detach()) / y.shape[0]
            history.elbo.append(value)
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            if verbose:
                steps.set_postfix(elbo=f"{ema:.4f}")
            if ema > best + tol:
                best, stale = ema, 0
            else:
                stale += 1
                if stale >= patience:
                    history.converged = True
                    break
    history.seconds = time.perf_counter() - start
    _warn_skipped(history)
    return history


def fit_inference_network(flow, y, hidden, network, *, max_epochs=50, batch_size=256, lr=1e-3,
                          n_samples=8, logdet="exact", solver="auto", options=None, objective="elbo",
                          train_flow=False, validation_fraction=0.0, monitor="bound", patience=10,
                          min_delta=1e-4, max_grad_norm=10.0, generator=None, verbose=False):
    """Train an amortised posterior on the bound over minibatches of incomplete rows.

    With ``train_flow=True`` the flow's weights are trained jointly on the same bound
    (the paper's learning from incomplete data, 4.2.1); rows with nothing hidden then
    contribute their exact log-likelihood.

    Parameters
    ----------
    flow : ResidualFlow
    y : Tensor (n, d)
        Rows (hidden entries may be NaN).
    hidden : BoolTensor (n, d)
    network : InferenceNetwork
    max_epochs, batch_size, lr, n_samples : int, int, float, int
    logdet, solver, options
        See :func:`~.bound.elbo`.
    objective : {"elbo", "iwae"}, default="elbo"
        The bound maximised (see :func:`masked_elbo_loss`).
    train_flow : bool, default=False
    validation_fraction : float, default=0.0
        Rows held out to monitor ``monitor``; training stops when it has not improved by
        ``min_delta`` for ``patience`` epochs, and the best weights (network and, if
        trained, flow) are restored.
    monitor : {"bound", "imputation"}, default="bound"
        What the held-out rows measure: ``"bound"``, the median of their bounds (robust
        to an outlying row); ``"imputation"``, minus the RMSE of importance-weighted
        completions of 20% of their observed entries, hidden for the purpose (what an
        imputer is for; noisier than the bound on small tables).
    patience : int, default=10
    min_delta : float, default=1e-4
    max_grad_norm : float or None, default=10.0
    generator : torch.Generator, optional
    verbose : bool

    Returns
    -------
    PosteriorFitHistory
        ``elbo`` holds the mean bound per row of each epoch.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, False, True]])
    >>> from skivcnf.conditional import InferenceNetwork, fit_inference_network
    >>> gen = torch.Generator().manual_seed(1)
    >>> network = InferenceNetwork(3, hidden_features=(8,), generator=gen).double()
    >>> history = fit_inference_network(flow, y, hidden, network, max_epochs=2, batch_size=2, n_samples=2,
    ...                                 generator=gen)
    >>> history.n_steps, len(history.elbo), history.n_unsolved_draws
    (2, 2, 0)
    >>> network(y, hidden).mean.shape
    torch.Size([2, 3])
    """
    _check_objective(objective, logdet)
    start = time.perf_counter()
    history = PosteriorFitHistory()
    y = torch.where(hidden, 0.0, y)
    params = list(network.parameters()) + (list(flow.parameters()) if train_flow else [])
    optimizer = torch.optim.Adam(params, lr=lr)
    order = torch.randperm(y.shape[0], generator=generator, device=y.device)
    n_val = int(validation_fraction * y.shape[0])
    val_rows, train_rows = order[:n_val], order[n_val:]
    n = len(train_rows)
    if monitor not in ("bound", "imputation"):
        raise ValueError(f"monitor must be 'bound' or 'imputation', got {monitor!r}.")
    val_seed = int(torch.randint(2**62, (1,), generator=generator, device=y.device))
    if n_val and monitor == "imputation":
        probe = ~hidden[val_rows] & (torch.rand(n_val, y.shape[1], generator=generator, device=y.device) < 0.2)
    best, best_state, stale = -math.inf, None, 0
    with _flow_frozen(flow, frozen=not train_flow), _one_constraint_report():
        epochs = tqdm(range(max_epochs), disable=not verbose, desc="fit inference network", unit="epoch")
        for epoch in epochs:
            perm = train_rows[torch.randperm(n, generator=generator, device=y.device)]
            total = 0.0
            for batch_start in range(0, n, batch_size):
                rows = perm[batch_start:batch_start + batch_size]
                y_b, h_b = y[rows], hidden[rows]
                estimate = elbo(flow, y_b, h_b, network(y_b, h_b), n_samples, logdet, solver, options,
                                None, generator)
                loss, unsolved = masked_elbo_loss(estimate, objective)
                history.n_unsolved_draws += unsolved
                if _step(optimizer, loss / len(rows), params, history, max_grad_norm):
                    total += -float(loss.detach())
            history.n_steps += 1
            history.elbo.append(total / max(n, 1))
            monitored = history.elbo[-1]
            if n_val and monitor == "imputation":
                monitored = _held_out_imputation(flow, y[val_rows], hidden[val_rows], probe, network, solver,
                                                 options, batch_size, val_seed)
            elif n_val:
                monitored = _held_out_bound(flow, y[val_rows], hidden[val_rows], network, n_samples, logdet,
                                            solver, options, objective, batch_size, val_seed)
            if n_val:
                history.validation.append(monitored)
            if verbose:
                epochs.set_postfix(elbo=f"{history.elbo[-1]:.4f}", val=f"{monitored:.4f}" if n_val else "-")
            if monitored > best + min_delta:
                best, stale, history.best_epoch = monitored, 0, epoch
                if n_val:
                    best_state = (copy.deepcopy(network.state_dict()), copy.deepcopy(flow.state_dict()))
            elif n_val:
                stale += 1
                if stale >= patience:
                    history.converged = True
                    break
        if best_state is not None:
            network.load_state_dict(best_state[0])
            flow.load_state_dict(best_state[1])
    history.seconds = time.perf_counter() - start
    _warn_skipped(history)
    return history
