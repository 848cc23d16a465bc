"""Maximum-likelihood training of a flow on complete rows."""

import copy
import math
import time
import warnings
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..exceptions import NumericalWarning

__all__ = ["TrainingHistory", "fit_flow"]


@dataclass
class TrainingHistory:
    """What happened during :func:`fit_flow`; losses are mean negative log-likelihoods per row.

    Attributes
    ----------
    train_loss : list of float
        Mean training loss of each epoch (over the steps taken).
    validation_loss : list of float
        Validation loss after each epoch (empty without a validation split).
    epoch_seconds : list of float
        Wall time of each epoch, validation included.
    best_epoch : int
        Epoch (0-based) whose weights were kept.
    stopped_early : bool
        Whether training stopped before ``max_epochs`` for lack of improvement.
    n_skipped_steps : int
        Steps skipped because the loss or a gradient was not finite.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow, fit_flow
    >>> flow = ResidualFlow(2, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.randn(30, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> history = fit_flow(flow, y, max_epochs=2, validation_fraction=0.0,
    ...                    generator=torch.Generator().manual_seed(2))
    >>> len(history.train_loss), history.validation_loss, history.best_epoch
    (2, [], 1)
    >>> history.stopped_early, history.n_skipped_steps
    (False, 0)
    """

    train_loss: list = field(default_factory=list)
    validation_loss: list = field(default_factory=list)
    epoch_seconds: list = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    n_skipped_steps: int = 0


def _check_positive(name, value, allow_zero=False):
    if not (value > 0 or (allow_zero and value == 0)):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value!r}.")


def _mean_nll(flow, y, batch_size, generator):
    total = 0.0
    with torch.no_grad():
        for start in range(0, y.shape[0], batch_size):
            total += float(-flow.log_prob(y[start:start + batch_size], generator).sum())
    return total / y.shape[0]


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
        In ``[0, 1)``; 0 trains on every row for ``max_epochs`` epochs.
    patience : int, default=20
        Epochs without improvement before stopping.
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
    >>> flow.log_prob(y).shape
    torch.Size([40])
    """
    _check_positive("max_epochs", max_epochs)
    _check_positive("batch_size", batch_size)
    _check_positive("lr", lr)
    _check_positive("patience", patience)
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction!r}.")
    ref = next(flow.parameters())
    y = torch.as_tensor(y, dtype=ref.dtype, device=ref.device)
    if y.ndim != 2 or y.shape[1] != flow.features:
        raise ValueError(f"y must have shape (n, {flow.features}), got {tuple(y.shape)}.")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or infinite values; fit_flow needs complete, finite rows.")
    if generator is None:
        generator = torch.Generator(device=ref.device).manual_seed(0)

    n = y.shape[0]
    order = torch.randperm(n, generator=generator, device=ref.device)
    n_val = int(math.floor(validation_fraction * n))
    if validation_fraction > 0 and (n_val < 1 or n - n_val < 1):
        raise ValueError(f"validation_fraction={validation_fraction} leaves an empty split of {n} rows.")
    y_val, y_train = y[order[:n_val]], y[order[n_val:]]
    if initialize:
        flow.initialize(y_train)

    optimizer = torch.optim.Adam(flow.parameters(), lr=lr, weight_decay=weight_decay)
    history = TrainingHistory()
    best_loss, best_state, stale = math.inf, None, 0
    epochs = tqdm(range(max_epochs), disable=not verbose, desc="fit flow", unit="epoch")
    for epoch in epochs:
        start = time.perf_counter()
        flow.train()
        perm = torch.randperm(y_train.shape[0], generator=generator, device=ref.device)
        losses = []
        for batch_start in range(0, y_train.shape[0], batch_size):
            batch = y_train[perm[batch_start:batch_start + batch_size]]
            loss = -flow.log_prob(batch, generator).mean()
            optimizer.zero_grad(set_to_none=True)
            if not bool(torch.isfinite(loss)):
                history.n_skipped_steps += 1
                continue
            loss.backward()
            grads = [p.grad for p in flow.parameters() if p.grad is not None]
            if not all(bool(torch.isfinite(g).all()) for g in grads):
                history.n_skipped_steps += 1
                continue
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(flow.parameters(), max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
        flow.eval()
        history.train_loss.append(sum(losses) / len(losses) if losses else math.nan)
        monitored = history.train_loss[-1]
        if n_val:
            monitored = _mean_nll(flow, y_val, batch_size, generator)
            history.validation_loss.append(monitored)
        history.epoch_seconds.append(time.perf_counter() - start)
        if verbose:
            epochs.set_postfix(train=f"{history.train_loss[-1]:.4f}",
                               val=f"{monitored:.4f}" if n_val else "-")
        if monitored < best_loss - min_delta:
            best_loss, stale, history.best_epoch = monitored, 0, epoch
            best_state = copy.deepcopy(flow.state_dict())
        elif n_val:
            stale += 1
            if stale >= patience:
                history.stopped_early = True
                break
    if n_val and best_state is not None:
        flow.load_state_dict(best_state)
    elif not n_val:
        history.best_epoch = len(history.train_loss) - 1
    if history.n_skipped_steps:
        warnings.warn(
            f"{history.n_skipped_steps} training steps had a non-finite loss or gradient and "
            "were skipped; consider a smaller learning rate or standardised inputs.",
            NumericalWarning,
            stacklevel=2,
        )
    return history
