"""Conditional draws, their importance weights, and point estimates from them.

Each draw comes with its exact log-weight ``log p(y) - log q(x^H) - log|det G^HH|``
(:mod:`.bound`), so self-normalised importance sampling turns draws from any ``q`` into
consistent estimates of conditional expectations, beyond the paper: the prior ``q = p0``
is a biased posterior, its weighted mean is not.
"""

from typing import NamedTuple

import torch

from ..flows import EXACT_LOGDET_MAX_FEATURES
from .hidden_block import log_prob_and_hidden_jacobian
from .noise import uniform
from .posteriors import prior_parameters, rsample
from .solvers import solve_constraint
from .warm_starts import draw_guesses

__all__ = [
    "ConditionalDraws",
    "conditional_mean",
    "draw_weights",
    "importance_resample",
    "sample_conditional",
    "self_normalized_weights",
]

#: Whether :func:`sample_conditional` runs a chain's fallback solvers only on the rows with no solved draw.
FALLBACK_FOR_UNSOLVED_ROWS_ONLY = True


class ConditionalDraws(NamedTuple):
    """Draws from the variational conditional of each row.

    Attributes
    ----------
    samples : Tensor (n_samples, batch, d)
        Completed rows; observed entries equal the input's.
    log_weight : Tensor (n_samples, batch) or None
        Exact log importance weights; ``-inf`` for draws whose constraint did not
        converge (so they get no weight). ``None`` when not computed.
    converged : BoolTensor (n_samples, batch)
    n_iter : LongTensor (n_samples, batch)
    method : LongTensor (n_samples, batch)
        Index into :data:`~.solvers.SOLVERS`.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, False, True]])
    >>> from skivcnf.conditional import SOLVERS, sample_conditional
    >>> draws = sample_conditional(flow, y, hidden, n_samples=4, generator=torch.Generator().manual_seed(1))
    >>> draws.samples.shape, draws.log_weight.shape
    (torch.Size([4, 2, 3]), torch.Size([4, 2]))
    >>> bool(draws.converged.all()), SOLVERS[int(draws.method[0, 0])]
    (True, 'newton')
    """

    samples: torch.Tensor
    log_weight: torch.Tensor | None
    converged: torch.Tensor
    n_iter: torch.Tensor
    method: torch.Tensor


@torch.no_grad()
def sample_conditional(flow, y, hidden, params=None, n_samples=1, generator=None, solver="auto",
                       options=None, warm_start=None, weights="auto", antithetic=False, quasi_start=None):
    """Draw ``n_samples`` completions of each row from ``q(x^H)`` and the constraint.

    Parameters
    ----------
    flow : ResidualFlow
    y : Tensor (batch, d)
        Hidden entries are ignored (NaN is fine).
    hidden : BoolTensor (batch, d)
    params : GaussianParameters, optional
        The posterior; the prior ``N(0, I)`` by default.
    n_samples : int, default=1
    generator : torch.Generator, optional
    solver, options
        See :func:`~.solvers.solve_constraint`. A fallback solver of the chain (the fixed
        point of ``"auto"``) only takes rows none of whose draws the first one solved
        (``draws_per_row``); a row's other unsolved draws get no weight.
    warm_start : Tensor (n_samples, batch, d), optional
        Initial guesses (e.g. earlier draws).
    weights : {"auto", True, False}
        Compute exact log-weights; ``"auto"`` does so up to ``EXACT_LOGDET_MAX_FEATURES``.
    antithetic : bool, default=False
        Draw the posterior's noise in antithetic pairs (draws ``2k`` and ``2k + 1``; see
        :func:`~.posteriors.rsample`): a lower Monte Carlo error of weighted means.
    quasi_start : int, optional
        Randomised quasi-Monte Carlo noise from this point of each row's shifted Sobol sequence
        (see :func:`~.posteriors.rsample`); independent draws when None.

    Returns
    -------
    ConditionalDraws

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> from skivcnf.conditional import conditional_mean, sample_conditional
    >>> gen = torch.Generator().manual_seed(0)
    >>> flow = ResidualFlow(3, n_blocks=2, generator=gen).double()
    >>> y = torch.tensor([[0.5, float("nan"), -1.0]], dtype=torch.float64)
    >>> draws = sample_conditional(flow, y, torch.isnan(y), n_samples=16, generator=gen)
    >>> bool(draws.converged.all()), draws.samples.shape
    (True, torch.Size([16, 1, 3]))
    >>> point, ess = conditional_mean(draws)
    >>> point[0, 0].item(), 1 <= ess.item() <= 16
    (0.5, True)
    """
    y = flow.as_input(y)
    hidden = torch.as_tensor(hidden, dtype=torch.bool, device=y.device)
    y = torch.where(hidden, 0.0, y)
    batch, d = y.shape
    if params is None:
        params = prior_parameters(batch, d, y.dtype, y.device)
    x_hidden, log_q = rsample(params, hidden, n_samples, generator, antithetic=antithetic, quasi_start=quasi_start)
    rep_hidden = hidden.expand(n_samples, batch, d).reshape(-1, d)
    guess = draw_guesses(flow, y, hidden, x_hidden, solver, options, warm_start)
    sol = solve_constraint(flow, guess, rep_hidden, x_hidden.reshape(-1, d), solver, options,
                           draws_per_row=n_samples if FALLBACK_FOR_UNSOLVED_ROWS_ONLY else None)
    if weights == "auto":
        weights = d <= EXACT_LOGDET_MAX_FEATURES
    log_weight = None
    if weights:
        with flow.cached_weights():
            log_p, block, _, _ = log_prob_and_hidden_jacobian(flow, sol.solution, rep_hidden)
        log_w = log_p - log_q.reshape(-1) - torch.linalg.slogdet(block).logabsdet
        log_weight = torch.where(sol.converged, log_w, float("-inf")).reshape(n_samples, batch)
    shape = (n_samples, batch)
    return ConditionalDraws(sol.solution.reshape(n_samples, batch, d), log_weight,
                            sol.converged.reshape(shape), sol.n_iter.reshape(shape), sol.method.reshape(shape))


def self_normalized_weights(log_weight):
    """Normalised weights per row and their effective sample size.

    Parameters
    ----------
    log_weight : Tensor (n_samples, batch)

    Returns
    -------
    weights : Tensor (n_samples, batch)
        Sum to 1 over draws (uniform for a row whose draws all failed: see ``ess``).
    ess : Tensor (batch,)
        ``1 / sum w^2``, between 1 and ``n_samples``; 0 for a row with no valid draw.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import self_normalized_weights
    >>> log_weight = torch.tensor([[0.0, float("-inf")], [0.0, float("-inf")]])  # row 2: no valid draw
    >>> weights, ess = self_normalized_weights(log_weight)
    >>> weights.tolist(), ess.tolist()
    ([[0.5, 0.5], [0.5, 0.5]], [2.0, 0.0])
    """
    valid = torch.isfinite(log_weight).any(dim=0)
    safe = torch.where(valid, log_weight, torch.zeros_like(log_weight))
    weights = torch.softmax(safe, dim=0)
    ess = torch.where(valid, 1.0 / weights.pow(2).sum(dim=0), torch.zeros_like(weights[0]))
    return weights, ess


def draw_weights(draws, weighted=True):
    """Normalised weights of each row's draws, and their effective sample size.

    Parameters
    ----------
    draws : ConditionalDraws
    weighted : bool, default=True
        Self-normalised importance weights (needs ``draws.log_weight``); else equal
        weights on the converged draws (uniform where none converged).

    Returns
    -------
    weights : Tensor (n_samples, batch)
        Sum to 1 over draws.
    ess : Tensor (batch,)
        Effective sample size (the number of converged draws when unweighted).

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import ConditionalDraws, draw_weights
    >>> converged = torch.tensor([[True, False], [True, False], [False, False]])
    >>> draws = ConditionalDraws(torch.zeros(3, 2, 1), None, converged, None, None)
    >>> weights, ess = draw_weights(draws, weighted=False)
    >>> weights[:, 0].tolist(), ess.tolist()  # row 2 has no converged draw
    ([0.5, 0.5, 0.0], [2.0, 0.0])
    """
    if weighted:
        if draws.log_weight is None:
            raise ValueError("weighted=True needs draws with log_weight (sample with weights=True).")
        return self_normalized_weights(draws.log_weight)
    ok = draws.converged.to(draws.samples.dtype)
    count = ok.sum(dim=0)
    weights = torch.where(count > 0, ok / count.clamp_min(1), torch.full_like(ok, 1.0 / ok.shape[0]))
    return weights, count


def importance_resample(draws, n_resamples, generator=None, weighted=True):
    """Sampling-importance-resampling: ``n_resamples`` completions per row, picked by weight.

    The picks are drawn with replacement with probabilities :func:`draw_weights`, so they
    follow the flow's conditional as the number of draws grows, not the proposal ``q``.

    Parameters
    ----------
    draws : ConditionalDraws
    n_resamples : int
    generator : torch.Generator or RowNoise, optional
    weighted : bool, default=True
        See :func:`draw_weights`.

    Returns
    -------
    Tensor (n_resamples, batch, d)
        Rows with no converged draw get uniform picks among their (unsolved) draws: check
        ``draws.converged.any(0)``.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import ConditionalDraws, importance_resample
    >>> samples = torch.tensor([[[1.0]], [[2.0]]])  # two draws of one row
    >>> draws = ConditionalDraws(samples, torch.tensor([[0.0], [float("-inf")]]), torch.ones(2, 1, dtype=torch.bool),
    ...                          None, None)
    >>> importance_resample(draws, 4, generator=torch.Generator().manual_seed(0)).ravel().tolist()  # all weight on 1
    [1.0, 1.0, 1.0, 1.0]
    """
    if weighted:
        weights, _ = draw_weights(draws, weighted=True)
    else:  # multinomial normalises: the converged indicator is the equal-weight law
        weights = draws.converged.to(draws.samples.dtype)
    weights = torch.where(draws.converged.any(dim=0), weights, 1.0).double()
    # Inverse-CDF picks from one uniform each: with a RowNoise, a row's picks are its own.
    cumulative = torch.cumsum(weights.T, dim=1)
    u = uniform((n_resamples, weights.shape[1]), generator, torch.float64, weights.device)
    target = (u * cumulative[:, -1]).T.contiguous()
    picks = torch.searchsorted(cumulative, target, right=True).clamp_max(weights.shape[0] - 1)
    rows = torch.arange(draws.samples.shape[1], device=draws.samples.device)
    return draws.samples[picks.T, rows]


def conditional_mean(draws, weighted=True):
    """Point completion per row: the (importance-weighted) mean of the draws.

    Parameters
    ----------
    draws : ConditionalDraws
    weighted : bool, default=True
        Self-normalised importance weights (needs ``draws.log_weight``); else the plain
        mean of the converged draws.

    Returns
    -------
    mean : Tensor (batch, d)
        Observed entries (where all draws agree) are returned exactly.
    ess : Tensor (batch,)
        Effective sample size (the number of converged draws when unweighted).

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, False, True]])
    >>> from skivcnf.conditional import conditional_mean, sample_conditional
    >>> draws = sample_conditional(flow, y, hidden, n_samples=8, generator=torch.Generator().manual_seed(1))
    >>> point, ess = conditional_mean(draws)
    >>> point.shape, torch.equal(point[~hidden], y[~hidden]), bool(((1 <= ess) & (ess <= 8)).all())
    (torch.Size([2, 3]), True, True)
    >>> plain, count = conditional_mean(draws, weighted=False)  # unweighted mean of converged draws
    >>> count.tolist()
    [8.0, 8.0]
    """
    weights, ess = draw_weights(draws, weighted)
    weights = weights.unsqueeze(-1)
    # A draw with no weight adds exactly nothing, even where its (unsolved) values are not finite.
    mean = torch.where(weights > 0, weights * draws.samples, 0.0).sum(dim=0)
    # Where every draw agrees (observed entries above all) the weighted sum may round off
    # the last bit; return the common value exactly.
    first = draws.samples[0]
    return torch.where((draws.samples == first).all(dim=0), first, mean), ess
