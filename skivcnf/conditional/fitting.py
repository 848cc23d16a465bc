"""Fitting posteriors on the bound: per row (paper 4.2.2) and amortised (paper 4.2.1).

Both fits minimise minus the bound per row (:func:`~.bound.masked_bound`, which leaves out
the draws whose constraint was not solved) and record a
:class:`~skivcnf.flows.TrainingHistory`.
"""

import functools
import math
import time
from contextlib import contextmanager

import torch

from .._distributed import (
    GradientReducer,
    all_sum,
    broadcast_modules,
    check_same_data,
    from_rank_zero,
    is_distributed,
    shard_slice,
    shared_generator,
    world_size,
)
from .._training import EarlyStopping, TrainingHistory, fit_loop, guarded_step, sharing_failure
from .bound import EXACT_VALUE_LOGDETS, OBJECTIVES, bound_terms, masked_bound
from .held_out import held_out_bound_loss, held_out_imputation_rmse
from .noise import ShardNoise, uniform
from .solvers import resolve_chain

__all__ = ["fit_inference_network", "fit_posterior"]

#: What the held-out rows of :func:`fit_inference_network` measure.
MONITORS = ("bound", "imputation")
#: Weight of the newest step in the moving average of the loss that stops :func:`fit_posterior`.
POSTERIOR_LOSS_EMA_WEIGHT = 0.1
#: Share of the held-out rows' observed entries hidden to measure imputation (``monitor="imputation"``).
IMPUTATION_PROBE_FRACTION = 0.2
#: Exclusive upper end of the held-out seed drawn from the generator.
_SEED_RANGE = 2**62

#: Whether ``solver="auto"`` keeps the fixed-point fallback in training (see :func:`~.solvers.resolve_chain`).
FIXED_POINT_IN_TRAINING = False


def _check_objective(objective, logdet, stick_the_landing=None):
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    if objective == "iwae" and logdet not in EXACT_VALUE_LOGDETS:
        raise ValueError("objective='iwae' needs the log-weights' values: use logdet='exact' or 'hutchinson' "
                         f"(got {logdet!r}, whose values are gradient surrogates).")
    if objective == "iwae" and stick_the_landing:
        raise ValueError("stick_the_landing=True biases the importance-weighted bound's gradient: it cannot be "
                         "used with objective='iwae' (use objective='elbo', or stick_the_landing=None).")


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


# Training needs a graph whatever the caller's context (draws are often taken under no_grad).
@torch.enable_grad()
def fit_posterior(flow, y, hidden, posterior, *, n_samples=8, max_steps=500, lr=1e-2, logdet="exact",
                  solver="auto", options=None, tol=1e-3, patience=50, objective="elbo",
                  stick_the_landing=None, generator=None, verbose=False):
    """Fit per-row posteriors by Adam on the bound, all rows at once (the flow is fixed).

    The paper's settings (4.2.2) are the defaults: learning rate 1e-2, 8 draws per step,
    at most 500 steps. Each draw's solver starts from the same draw's previous solution.
    Training stops early when an exponential moving average of the loss (minus the mean
    bound) has not decreased by ``tol`` nats for ``patience`` steps; the last weights are kept.

    Parameters
    ----------
    flow : ResidualFlow
    y : Tensor (batch, d)
    hidden : BoolTensor (batch, d)
    posterior : GaussianPosterior
        Fitted in place (its ``n_rows`` must be ``batch``).
    n_samples, max_steps, lr : int, int, float
    logdet : {"exact", "hutchinson", "clade", "nlade"}
    solver, options
        Passed to the constraint solver.
    tol, patience : float, int
        Stopping rule.
    objective : {"elbo", "iwae"}, default="elbo"
        The bound maximised (see :func:`~.bound.masked_bound`).
    stick_the_landing : bool or None, default=None
        Path-only gradient of ``log q`` (:func:`~.posteriors.rsample`); measured to
        reach the exact posterior of a Gaussian oracle where the full gradient jitters.
        None uses it for ``objective="elbo"`` and not for ``"iwae"``, whose gradient it
        would bias; True with ``objective="iwae"`` raises a ValueError.
    generator : torch.Generator, optional
    verbose : bool
        tqdm progress with the averaged loss.

    Returns
    -------
    TrainingHistory
        One ``train_loss`` entry (minus the mean bound per row) per step; ``validation_loss`` is empty.

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
    >>> history.n_steps, len(history.train_loss), history.best_epoch, history.stopped_early
    (3, 3, 2, False)
    >>> history.n_unsolved_draws, posterior().mean.shape
    (0, torch.Size([2, 3]))
    >>> bool((posterior.mean[~hidden] == 0).all()), bool((posterior.mean[hidden] != 0).all())  # hidden entries moved
    (True, True)
    """
    _check_objective(objective, logdet, stick_the_landing)
    if stick_the_landing is None:
        stick_the_landing = objective == "elbo"
    start = time.perf_counter()
    history = TrainingHistory()
    optimizer = torch.optim.Adam([p for p in posterior.parameters() if p.requires_grad], lr=lr)
    warm_start = None

    def fit_step():
        nonlocal warm_start
        terms = bound_terms(flow, y, hidden, posterior(y, hidden), n_samples, logdet, solver, options, warm_start,
                            generator, stick_the_landing)
        warm_start = terms.samples
        row_bounds, n_unsolved = masked_bound(terms, objective)
        history.n_unsolved_draws += n_unsolved
        loss = -row_bounds.sum()
        guarded_step(optimizer, loss, history)
        return float(loss.detach()) / y.shape[0]

    with _flow_frozen(flow):
        return fit_loop(history, fit_step, max_steps,
                        stopper=EarlyStopping(patience, tol, ema_weight=POSTERIOR_LOSS_EMA_WEIGHT),
                        started=start, description="fit posterior", unit="step", verbose=verbose)


def _batch_share(batch, generator, reducer):
    """The rows this process computes of a global ``batch``, their draws, and how many ranks compute them.

    One process (no ``reducer``) computes every row. Data-parallel ranks each compute a
    contiguous share, drawing from a :class:`~.noise.ShardNoise`; a batch with fewer rows
    than ranks (an epoch's last) is computed whole by every rank, each contributing
    ``1 / world_size()`` of its gradient, so that no rank's share is empty.
    """
    if reducer is None:
        return batch, generator, 1
    if len(batch) < world_size():
        return batch, generator, world_size()
    rows = shard_slice(len(batch))
    return batch[rows], ShardNoise(generator, len(batch), rows), 1


def _fit_epoch(flow, y, hidden, rows, network, optimizer, history, batch_size, n_samples, logdet, solver, options,
               objective, max_grad_norm, generator, rows_per_epoch=None, dequantisation=None, reducer=None, task=None):
    """One pass over shuffled minibatches of ``rows`` (a fresh random ``rows_per_epoch`` of them
    if fewer): minus the bound per row summed over the steps taken, / rows used. ``dequantisation``:
    see :func:`fit_inference_network`. With a ``reducer`` (data-parallel training), each rank
    computes its share of every batch and the loss and unsolved draws are summed over the ranks. A ``task``'s
    loss of each row is added to minus its bound."""
    rows = rows[torch.randperm(len(rows), generator=generator, device=y.device)][:rows_per_epoch]
    total_loss, n_unsolved_epoch = 0.0, 0
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    for batch_start in range(0, len(rows), batch_size):
        batch = rows[batch_start:batch_start + batch_size]
        with sharing_failure(reducer, parameters):
            local, noise, copies = _batch_share(batch, generator, reducer)
            y_b, h_b = y[local], hidden[local]
            if dequantisation is not None:
                cells = uniform(y_b.shape, noise, y.dtype, y.device, rows_axis=0)
                y_b = torch.where(h_b, y_b, y_b + (cells - 0.5) * dequantisation)
            terms = bound_terms(flow, y_b, h_b, network(y_b, h_b), n_samples, logdet, solver, options, None, noise)
            row_bounds, n_unsolved = masked_bound(terms, objective)
            n_unsolved_epoch += n_unsolved / copies  # a batch every rank computes whole is counted once
            row_losses = -row_bounds if task is None else task.row_loss(flow, terms, local) - row_bounds
            # Divided by the global batch's rows: the ranks' gradients then sum to the global batch's.
            loss = row_losses.sum() / copies
        if guarded_step(optimizer, loss / len(batch), history, max_grad_norm, reducer):
            total_loss += float(loss.detach())
    if reducer is not None:
        total_loss, n_unsolved_epoch = all_sum([total_loss, n_unsolved_epoch])
    history.n_unsolved_draws += round(n_unsolved_epoch)
    return total_loss / max(len(rows), 1)


@torch.enable_grad()
def fit_inference_network(flow, y, hidden, network, *, max_epochs=50, batch_size=256, lr=1e-3,
                          n_samples=8, logdet="exact", solver="auto", options=None, objective="elbo",
                          train_flow=False, validation_fraction=0.0, monitor="bound", patience=10,
                          min_delta=1e-4, max_grad_norm=10.0, rows_per_epoch=None, max_validation_rows=None,
                          min_steps=0, smoothing=None, dequantisation=None, generator=None, distributed=True, task=None,
                          verbose=False):
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
        See :func:`~.bound.bound_terms`. ``solver="auto"`` trains with the Newton variant
        alone (``resolve_chain(..., fallback=False)``): a draw it leaves unsolved is left out
        of that step's bound (counted in ``history.n_unsolved_draws``).
    objective : {"elbo", "iwae"}, default="elbo"
        The bound maximised (see :func:`~.bound.masked_bound`).
    train_flow : bool, default=False
    validation_fraction : float, default=0.0
        Rows held out to monitor ``monitor``; training stops when its loss has not
        decreased by ``min_delta`` for ``patience`` epochs, and the best weights (network
        and flow) are restored. 0 trains for ``max_epochs`` epochs and keeps the last
        weights; a positive fraction that holds out no row raises a ValueError.
    monitor : {"bound", "imputation"}, default="bound"
        The held-out loss: ``"bound"``, minus the median of the held-out rows' bounds
        (robust to an outlying row); ``"imputation"``, the RMSE of importance-weighted
        completions of 20% of their observed entries, hidden for the purpose (what an
        imputer is for; noisier than the bound on small tables; needs held-out rows).
    patience : int, default=10
        Used with held-out rows only.
    min_delta : float, default=1e-4
        Used with held-out rows only.
    max_grad_norm : float or None, default=10.0
    rows_per_epoch : int, optional
        An epoch trains on at most this many training rows, drawn afresh each epoch, so
        that the work between two held-out checks does not grow with the table (None: all).
    max_validation_rows : int, optional
        Hold out at most this many rows (``validation_fraction`` of them if fewer), so
        that the held-out check does not grow with the table either.
    min_steps : int, default=0
        With held-out rows, never stop before the epochs that make this many optimiser
        steps: a small table's epoch is a few steps, and its first epochs' held-out loss
        too noisy to stop on.
    smoothing : float in (0, 1] or None, default=None
        With held-out rows, early stopping watches an exponential moving average of the
        held-out loss with this weight on the newest epoch (None: each epoch's loss). A
        noisy held-out loss then ends training less often on a chance peak.
    dequantisation : Tensor (d,), optional
        Width of each feature's cell (0 for continuous ones): every training step adds
        uniform noise on ``[-w/2, w/2)`` to the observed entries, so that the flow learns a
        density whose integral over a cell is a discrete value's probability (uniform
        dequantisation). Held-out rows get one such draw of the noise, kept for every epoch.
    generator : torch.Generator, optional
    distributed : bool, default=True
        When a ``torch.distributed`` process group of more than one process is initialised,
        train data-parallel: every rank must call this with the same arguments (the same
        rows, ``generator`` seeded alike); each global minibatch is split into contiguous
        shares, one per rank, whose gradients are summed over the ranks before every rank
        takes the same step (see :mod:`skivcnf._distributed`). The weights then stay identical
        on every rank and equal one process's, trained on the same global batches, up to the
        order of float summation. Rank 0 alone computes the held-out loss and shows progress.
        False trains on every row in this process, whatever the process group.
    task : ClassificationTask, optional
        A supervised loss on each row's completions (:mod:`~.supervised`), added to minus
        the bound of every training row and of every held-out row (whose median is then
        monitored); its head is trained, kept at the best epoch and restored with the
        network and the flow.
    verbose : bool

    Returns
    -------
    TrainingHistory
        ``train_loss`` holds minus the mean bound per training row of each epoch
        (over the steps taken), ``validation_loss`` the held-out loss.

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
    >>> history.n_steps, len(history.train_loss), history.validation_loss, history.best_epoch
    (2, 2, [], 1)
    >>> history.n_unsolved_draws, network(y, hidden).mean.shape
    (0, torch.Size([2, 3]))
    """
    _check_objective(objective, logdet)
    if monitor not in MONITORS:
        raise ValueError(f"monitor must be one of {MONITORS}, got {monitor!r}.")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction!r}.")
    n_validation = int(validation_fraction * y.shape[0])
    if max_validation_rows is not None:
        n_validation = min(n_validation, max_validation_rows)
    if validation_fraction > 0 and n_validation < 1:
        raise ValueError(f"validation_fraction={validation_fraction} holds out no row of {y.shape[0]}.")
    if monitor == "imputation" and not n_validation:
        raise ValueError("monitor='imputation' measures held-out rows: it needs validation_fraction > 0.")
    start = time.perf_counter()
    history = TrainingHistory()
    # A training step loses little with one draw unsolved, and the fixed point's fallback cost seconds a draw.
    solver = resolve_chain(solver, y.shape[1], fallback=FIXED_POINT_IN_TRAINING)
    y = torch.where(hidden, 0.0, y)
    reducer = None
    if distributed and is_distributed():
        check_same_data(y, hidden)  # first: a rank with other data fails before any other collective
        broadcast_modules([flow, network])
        generator = shared_generator(generator, y.device)
        reducer = GradientReducer()
    params = list(network.parameters()) + (list(flow.parameters()) if train_flow else []) + (
        task.parameters() if task is not None else [])
    optimizer = torch.optim.Adam(params, lr=lr)
    order = torch.randperm(y.shape[0], generator=generator, device=y.device)
    validation_rows, train_rows = order[:n_validation], order[n_validation:]
    steps_per_epoch = max(math.ceil(min(len(train_rows), rows_per_epoch or len(train_rows)) / batch_size), 1)
    held_out_seed = int(torch.randint(_SEED_RANGE, (1,), generator=generator, device=y.device))
    y_validation, hidden_validation = y[validation_rows], hidden[validation_rows]
    if dequantisation is not None and n_validation:
        # Held-out rows are scored on the training objective, dequantised too (at the cells' centres the
        # bound stops improving early: measured on fair), with one draw of the noise for every epoch.
        cells = torch.Generator(device=y.device).manual_seed(held_out_seed + 1)
        noise = torch.rand(y_validation.shape, generator=cells, device=y.device, dtype=y.dtype) - 0.5
        y_validation = torch.where(hidden_validation, y_validation, y_validation + noise * dequantisation)
    if n_validation and monitor == "imputation":
        probe = ~hidden_validation & (torch.rand(n_validation, y.shape[1], generator=generator, device=y.device)
                                      < IMPUTATION_PROBE_FRACTION)
    if not n_validation:
        validation_loss = None
    elif monitor == "imputation":
        def validation_loss():
            return held_out_imputation_rmse(flow, y_validation, hidden_validation, probe, network, solver, options,
                                             batch_size, held_out_seed)
    else:
        def validation_loss():
            return held_out_bound_loss(flow, y_validation, hidden_validation, network, n_samples, logdet, solver,
                                        options, objective, batch_size, held_out_seed, task, validation_rows)
    if n_validation and reducer is not None:
        # Every rank must take the same early-stopping decision: rank 0's held-out loss decides for all.
        validation_loss = functools.partial(from_rank_zero, validation_loss)
    with _flow_frozen(flow, frozen=not train_flow):
        return fit_loop(
            history,
            lambda: _fit_epoch(flow, y, hidden, train_rows, network, optimizer, history, batch_size, n_samples,
                               logdet, solver, options, objective, max_grad_norm, generator, rows_per_epoch,
                               dequantisation, reducer, task),
            max_epochs,
            validation_loss=validation_loss,
            # The flow's state is kept even when it is not trained: restoring both is what was validated.
            stopper=EarlyStopping(patience, min_delta, ema_weight=smoothing,
                                  modules=[network, flow] + ([task.head] if task else []),
                                  min_updates=math.ceil(min_steps / steps_per_epoch)) if n_validation else None,
            started=start, description="fit inference network", verbose=verbose,
        )
