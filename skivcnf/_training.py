"""What every training loop shares: one history, one guarded step, one early-stopping rule, one fit loop.

:func:`skivcnf.flows.fit_flow`, :func:`skivcnf.conditional.fit_posterior` and
:func:`skivcnf.conditional.fit_inference_network` each own only their epoch (how batches
and their losses are formed) and their held-out loss; the loop over epochs
(:func:`fit_loop`), what happens around a step (:func:`guarded_step`) and the stopping
rule (:class:`EarlyStopping`) live here once.
Losses are "lower is better" throughout: the bound fits record minus the bound.

Under data-parallel training (:mod:`skivcnf._distributed`) a step's gradients are summed over
the ranks and its skip decision is shared, and only rank 0 shows progress and warns.

A leaf module: it imports torch, tqdm, :mod:`skivcnf.exceptions` and :mod:`skivcnf._distributed`,
nothing of the flows or of the conditional sampler.
"""

import copy
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ._distributed import is_rank_zero
from .exceptions import ConstraintWarning, NumericalWarning

__all__ = ["EarlyStopping", "TrainingHistory", "fit_loop", "guarded_step", "sharing_failure", "warn_training_issues"]


@dataclass
class TrainingHistory:
    """What happened during a fit; every loss is per row and lower is better.

    Attributes
    ----------
    train_loss : list of float
        Mean training loss per row of each epoch (of each step for
        :func:`~skivcnf.conditional.fit_posterior`, whose rows are all in one batch):
        the mean negative log-likelihood for :func:`~skivcnf.flows.fit_flow`, minus the mean
        bound for the bound fits.
    validation_loss : list of float
        Held-out loss after each epoch (empty without a validation split): the mean negative
        log-likelihood for ``fit_flow``; for ``fit_inference_network`` minus the median
        held-out bound, or the held-out imputation RMSE (see its ``monitor``).
    epoch_seconds : list of float
        Wall time of each epoch (step for ``fit_posterior``), validation included.
    best_epoch : int
        Epoch (step) whose weights were kept: the best validated one when early stopping
        restores the best weights, else the last. -1 when no epoch was kept.
    stopped_early : bool
        Whether the stopping rule fired before the epoch (step) cap.
    n_steps : int
        Optimisation steps attempted, skipped ones included.
    n_skipped_steps : int
        Steps skipped because the loss or a gradient was not finite.
    n_unsolved_draws : int
        Draws whose equality constraint was not solved (left out of the bound; bound fits only).
    seconds : float
        Wall time of the whole fit.

    Examples
    --------
    >>> from skivcnf._training import TrainingHistory
    >>> history = TrainingHistory(train_loss=[1.5, 1.25], validation_loss=[1.75, 1.5])
    >>> history.best_epoch, history.stopped_early, history.n_skipped_steps
    (-1, False, 0)
    >>> [-loss for loss in history.train_loss]  # a bound fit's bound per row
    [-1.5, -1.25]
    """

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    n_steps: int = 0
    n_skipped_steps: int = 0
    n_unsolved_draws: int = 0
    seconds: float = 0.0


@contextmanager
def sharing_failure(reducer, parameters):
    """With a ``reducer`` (data-parallel training), an error raised inside makes the step's
    collective raise on the other ranks too (:meth:`~._distributed.GradientReducer.share_failure`),
    instead of leaving them waiting; this rank re-raises its own error."""
    try:
        yield
    except Exception:
        if reducer is not None:
            reducer.share_failure(parameters)
        raise


def guarded_step(optimizer, loss, history, max_grad_norm=None, reducer=None):
    """Take one optimisation step on ``loss`` unless the loss or a gradient is not finite.

    Zeroes the gradients, back-propagates, optionally clips the gradients' total norm and
    steps. A non-finite loss is not back-propagated; a non-finite gradient leaves no
    gradient behind. Either way the weights are untouched and the step is counted in
    ``history.n_skipped_steps``; every call is counted in ``history.n_steps``.

    With a ``reducer`` (data-parallel training) the gradients are summed over the ranks
    before they are checked and clipped, and a non-finite loss on any rank skips the step
    on every rank, so that the ranks' weights never diverge.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Its parameters are the ones checked and clipped.
    loss : Tensor ()
        Scalar loss with a graph to the optimizer's parameters.
    history : TrainingHistory
        Updated in place.
    max_grad_norm : float or None, default=None
        Clip the gradients' total norm to this value; None does not clip.
    reducer : skivcnf._distributed.GradientReducer, optional
        Sums the gradients over the ranks (every rank calls this with its share of the loss).

    Returns
    -------
    bool
        Whether the step was taken.

    Examples
    --------
    >>> import torch
    >>> from skivcnf._training import TrainingHistory, guarded_step
    >>> weight = torch.nn.Parameter(torch.tensor([1.0]))
    >>> optimizer = torch.optim.SGD([weight], lr=0.5)
    >>> history = TrainingHistory()
    >>> guarded_step(optimizer, (weight ** 2).sum(), history)  # gradient 2: 1 - 0.5 * 2
    True
    >>> weight.item()
    0.0
    >>> guarded_step(optimizer, weight.sum() * float("nan"), history), weight.item()
    (False, 0.0)
    >>> history.n_steps, history.n_skipped_steps
    (2, 1)
    """
    history.n_steps += 1
    optimizer.zero_grad(set_to_none=True)
    finite = bool(torch.isfinite(loss))
    if not finite and reducer is None:
        history.n_skipped_steps += 1
        return False
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    # A rank's share without a graph (no trainable weight reached) contributes no gradient.
    if finite and (reducer is None or loss.requires_grad):
        with sharing_failure(reducer, parameters):
            loss.backward()
    if reducer is not None and not reducer.reduce(parameters, finite):
        optimizer.zero_grad(set_to_none=True)
        history.n_skipped_steps += 1
        return False
    if not all(bool(torch.isfinite(p.grad).all()) for p in parameters if p.grad is not None):
        optimizer.zero_grad(set_to_none=True)
        history.n_skipped_steps += 1
        return False
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    return True


class EarlyStopping:
    """Stop when a loss has not improved by ``min_delta`` for ``patience`` epochs; keep the best state.

    Call :meth:`update` once per epoch with the monitored loss (lower is better). An epoch
    improves when its loss is below the best so far minus ``min_delta``; the modules'
    states are then copied, and :meth:`restore_best` loads the last copy back.

    Parameters
    ----------
    patience : int
        Epochs without improvement before :meth:`update` says stop (at least 1).
    min_delta : float, default=0.0
        Smallest decrease of the monitored loss that counts as an improvement.
    ema_weight : float or None, default=None
        If given, monitor an exponential moving average of the losses instead of each
        loss: ``average = (1 - ema_weight) * average + ema_weight * loss``, started at the
        first loss. For noisy per-step losses.
    modules : sequence of torch.nn.Module, default=()
        Modules whose ``state_dict`` is kept at each improvement; empty keeps nothing (the
        last weights stay).
    min_updates : int, default=1
        :meth:`update` never says stop before this many updates (a warm-up whose noisy
        losses must not end the run).

    Attributes
    ----------
    best_loss : float
        Best monitored loss so far (``inf`` before the first improvement).
    best_epoch : int
        0-based index of the update with the best monitored loss (-1 before any).
    monitored : float or None
        The last monitored loss (the moving average with ``ema_weight``).
    n_stale : int
        Updates since the last improvement.

    Examples
    --------
    >>> import torch
    >>> from skivcnf._training import EarlyStopping
    >>> layer = torch.nn.Linear(1, 1)
    >>> stopper = EarlyStopping(patience=2, min_delta=0.1, modules=[layer])
    >>> with torch.no_grad():
    ...     _ = layer.bias.fill_(1.0)
    >>> stopper.update(3.0), stopper.update(2.0)  # both improve; the second state is kept
    (False, False)
    >>> with torch.no_grad():
    ...     _ = layer.bias.fill_(5.0)
    >>> stopper.update(1.95), stopper.update(2.5)  # 1.95 is not 0.1 below 2.0: two stale epochs
    (False, True)
    >>> stopper.restore_best()
    >>> stopper.best_epoch, stopper.best_loss, layer.bias.item()
    (1, 2.0, 1.0)
    """

    def __init__(self, patience, min_delta=0.0, *, ema_weight=None, modules=(), min_updates=1):
        if not patience >= 1:
            raise ValueError(f"patience must be at least 1, got {patience!r}.")
        if ema_weight is not None and not 0 < ema_weight <= 1:
            raise ValueError(f"ema_weight must lie in (0, 1], got {ema_weight!r}.")
        self.patience, self.min_delta, self.ema_weight = patience, min_delta, ema_weight
        self.min_updates = int(min_updates)
        self.modules = tuple(modules)
        self.best_loss, self.best_epoch, self.monitored, self.n_stale = math.inf, -1, None, 0
        self._n_updates = 0
        self._best_states = None

    def update(self, loss):
        """Record one epoch's loss; return whether to stop.

        Parameters
        ----------
        loss : float
            NaN never improves.

        Returns
        -------
        bool
            True once ``patience`` updates in a row have not improved (and at least
            ``min_updates`` were made).
        """
        if self.ema_weight is not None and self.monitored is not None:
            loss = (1 - self.ema_weight) * self.monitored + self.ema_weight * loss
        self.monitored = loss
        self._n_updates += 1
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self.n_stale = loss, self._n_updates - 1, 0
            if self.modules:
                self._best_states = [copy.deepcopy(module.state_dict()) for module in self.modules]
            return False
        self.n_stale += 1
        return self.n_stale >= self.patience and self._n_updates >= self.min_updates

    def restore_best(self):
        """Load the kept states into the modules (nothing happens if none was kept)."""
        if self._best_states is not None:
            for module, state in zip(self.modules, self._best_states, strict=True):
                module.load_state_dict(state)


def warn_training_issues(history, stacklevel=3):
    """Warn once per fit about skipped steps and unsolved draws recorded in ``history``.

    Parameters
    ----------
    history : TrainingHistory
    stacklevel : int, default=3
        Passed to :func:`warnings.warn`; the default points at the caller of the fitting
        function that calls this.

    Examples
    --------
    >>> import warnings
    >>> from skivcnf._training import TrainingHistory, warn_training_issues
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_training_issues(TrainingHistory(n_skipped_steps=2, n_unsolved_draws=5))
    >>> [w.category.__name__ for w in caught]
    ['NumericalWarning', 'ConstraintWarning']
    """
    if history.n_skipped_steps:
        warnings.warn(f"{history.n_skipped_steps} training steps had a non-finite loss or gradient and were "
                      "skipped; consider a smaller learning rate or standardised inputs.",
                      NumericalWarning, stacklevel=stacklevel)
    if history.n_unsolved_draws:
        warnings.warn(f"{history.n_unsolved_draws} draws' equality constraints were not solved while fitting; "
                      "they were left out of the bound (see TrainingHistory.n_unsolved_draws).",
                      ConstraintWarning, stacklevel=stacklevel)


def fit_loop(history, train_epoch, max_epochs, *, validation_loss=None, stopper=None, started=None,
             description="fit", unit="epoch", verbose=False):
    """Run epochs until ``max_epochs`` or ``stopper`` says stop, recording them in ``history``.

    Each epoch appends ``train_epoch()`` to ``history.train_loss``, then (if given)
    ``validation_loss()`` to ``history.validation_loss``, and its wall time; ``stopper``
    monitors the validation loss when there is one, else the training loss. A
    :class:`~skivcnf.exceptions.ConstraintWarning` raised during the epochs is silenced
    (the history counts unsolved draws). At the end the best state is restored (if
    ``stopper`` keeps one), ``best_epoch``, ``stopped_early`` and ``seconds`` are set, and
    skipped steps and unsolved draws are warned about once. Under ``torch.distributed``
    only rank 0 shows the progress bar and warns (the other ranks' warnings during the
    epochs are dropped).

    Parameters
    ----------
    history : TrainingHistory
        Updated in place (``train_epoch`` usually updates its step counts).
    train_epoch : callable () -> float
        One epoch of training (one step for a full-batch fit); returns its loss.
    max_epochs : int
    validation_loss : callable () -> float, optional
        The held-out loss after an epoch.
    stopper : EarlyStopping, optional
        None trains for ``max_epochs`` epochs.
    started : float, optional
        :func:`time.perf_counter` at the start of the fit (for ``history.seconds``); now if None.
    description, unit : str
        Labels of the progress bar.
    verbose : bool, default=False
        Show a tqdm progress bar with the losses.

    Returns
    -------
    TrainingHistory
        ``history``.

    Examples
    --------
    >>> from skivcnf._training import EarlyStopping, TrainingHistory, fit_loop
    >>> losses = iter([3.0, 2.0, 2.5, 2.25, 1.0])
    >>> history = fit_loop(TrainingHistory(), lambda: next(losses), max_epochs=5, stopper=EarlyStopping(2))
    >>> history.train_loss, history.stopped_early, history.best_epoch  # no state kept: the last epoch's
    ([3.0, 2.0, 2.5, 2.25], True, 3)
    """
    started = time.perf_counter() if started is None else started
    monitored = history.validation_loss if validation_loss is not None else history.train_loss
    # Unsolved constraints are counted in the history and reported once, after the loop.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstraintWarning)
        speaks = is_rank_zero()
        if not speaks:
            warnings.simplefilter("ignore")  # rank 0 computes the same and warns for all
        epochs = tqdm(range(max_epochs), disable=not (verbose and speaks), desc=description, unit=unit)
        for _ in epochs:
            epoch_start = time.perf_counter()
            history.train_loss.append(train_epoch())
            if validation_loss is not None:
                history.validation_loss.append(validation_loss())
            history.epoch_seconds.append(time.perf_counter() - epoch_start)
            if verbose:
                epochs.set_postfix(train=f"{history.train_loss[-1]:.4f}",
                                   validation=f"{history.validation_loss[-1]:.4f}" if validation_loss else "-")
            if stopper is not None and stopper.update(monitored[-1]):
                history.stopped_early = True
                break
    if stopper is not None and stopper.modules:
        stopper.restore_best()
        history.best_epoch = stopper.best_epoch
    else:
        history.best_epoch = len(history.train_loss) - 1
    history.seconds = time.perf_counter() - started
    if speaks:
        warn_training_issues(history, stacklevel=4)
    return history
