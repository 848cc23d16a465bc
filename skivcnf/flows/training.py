"""Maximum-likelihood training of a flow on complete rows."""

import math
import time

import torch

from .._training import EarlyStopping, TrainingHistory, fit_loop, guarded_step

__all__ = ["TrainingHistory", "fit_flow"]


def _check_positive(name, value, allow_zero=False):
    if not (value > 0 or (allow_zero and value == 0)):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value!r}.")


def _mean_nll(flow, y, batch_size, generator):
    total = 0.0
    with torch.no_grad():
        for start in range(0, y.shape[0], batch_size):
            total += float(-flow.log_prob(y[start:start + batch_size], generator).sum())
    return total / y.shape[0]


def _fit_epoch(flow, y, batch_size, optimizer, history, max_grad_norm, generator):
    """One pass over shuffled minibatches; the mean loss of the steps taken (NaN if none)."""
    flow.train()
    perm = torch.randperm(y.shape[0], generator=generator, device=y.device)
    losses = []
    for batch_start in range(0, y.shape[0], batch_size):
        loss = -flow.log_prob(y[perm[batch_start:batch_start + batch_size]], generator).mean()
        if guarded_step(optimizer, loss, history, max_grad_norm):
            losses.append(float(loss.detach()))
    flow.eval()
    return sum(losses) / len(losses) if losses else math.nan


def fit_flow(flow, y, *, max_epochs=200, batch_size=256, lr=1e-3, weight_decay=0.0,
             validation_fraction=0.1, patience=20, min_delta=1e-4, max_grad_norm=10.0,
             initialize=True, generator=None, verbose=False):
    """Fit ``flow`` to complete rows ``y`` by maximum likelihood (minibatch Adam).

    A random ``validation_fraction`` of the rows is held out; training stops when the
    validation loss has not improved by ``min_delta`` for ``patience`` epochs and the best
    weights are restored. Steps whose loss or gradient is not finite are skipped and
    reported with a :class:`~skivcnf.exceptions.NumericalWarning`.

    Parameters
    ----------
    flow : ResidualFlow
        Trained in place, on its own device and dtype (``y`` is moved to them).
    y : array-like or Tensor (n, d)
        Complete rows.
    max_epochs : int, default=200
    batch_size : int, default=256
    lr : float, default=1e-3
        Adam's learning rate.
    weight_decay : float, default=0.0
    validation_fraction : float, default=0.1
        In ``[0, 1)``; 0 trains on every row for ``max_epochs`` epochs and keeps the last weights.
    patience : int, default=20
        Epochs without improvement before stopping (with a validation split).
    min_delta : float, default=1e-4
        Smallest decrease of the validation loss (nats per row) that counts.
    max_grad_norm : float or None, default=10.0
        Gradient-norm clipping; ``None`` disables it.
    initialize : bool, default=True
        Run the flow's data-dependent ActNorm initialisation on the training rows first.
    generator : torch.Generator, optional
        Source of the split, the shuffles and any stochastic log-determinant.
    verbose : bool, default=False
        Show a tqdm progress bar with the losses.

    Returns
    -------
    TrainingHistory
        Losses are mean negative log-likelihoods per row.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow, fit_flow
    >>> flow = ResidualFlow(2, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.randn(40, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> history = fit_flow(flow, y, max_epochs=2, batch_size=16, validation_fraction=0.25,
    ...                    generator=torch.Generator().manual_seed(2))
    >>> len(history.train_loss), len(history.validation_loss), history.best_epoch in (0, 1)
    (2, 2, True)
    >>> history.n_steps, history.n_skipped_steps  # 30 training rows in batches of 16, twice
    (4, 0)
    >>> flow.log_prob(y).shape
    torch.Size([40])
    """
    _check_positive("max_epochs", max_epochs)
    _check_positive("batch_size", batch_size)
    _check_positive("lr", lr)
    _check_positive("patience", patience)
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction!r}.")
    reference = next(flow.parameters())
    y = torch.as_tensor(y, dtype=reference.dtype, device=reference.device)
    if y.ndim != 2 or y.shape[1] != flow.features:
        raise ValueError(f"y must have shape (n, {flow.features}), got {tuple(y.shape)}.")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or infinite values; fit_flow needs complete, finite rows.")
    if generator is None:
        generator = torch.Generator(device=reference.device).manual_seed(0)

    start = time.perf_counter()
    n = y.shape[0]
    order = torch.randperm(n, generator=generator, device=reference.device)
    n_validation = int(math.floor(validation_fraction * n))
    if validation_fraction > 0 and (n_validation < 1 or n - n_validation < 1):
        raise ValueError(f"validation_fraction={validation_fraction} leaves an empty split of {n} rows.")
    y_validation, y_train = y[order[:n_validation]], y[order[n_validation:]]
    if initialize:
        flow.initialize(y_train)

    optimizer = torch.optim.Adam(flow.parameters(), lr=lr, weight_decay=weight_decay)
    history = TrainingHistory()
    return fit_loop(
        history,
        lambda: _fit_epoch(flow, y_train, batch_size, optimizer, history, max_grad_norm, generator),
        max_epochs,
        validation_loss=(lambda: _mean_nll(flow, y_validation, batch_size, generator)) if n_validation else None,
        stopper=EarlyStopping(patience, min_delta, modules=[flow]) if n_validation else None,
        started=start, description="fit flow", verbose=verbose,
    )
