"""Draws whose estimates can be trusted: smoothed and bounded weights, more draws where needed.

:func:`sample_conditional`'s self-normalised weights give consistent estimates, but on one
row and a finite number of draws they can be dominated by one draw, possibly far outside
the data (a blow-up). :func:`reliable_draws` guards each row:

1. draws whose hidden entries leave ``bounds`` (the box the flow was trained in, widened)
   get no weight: the flow's density there is an extrapolation;
2. the log-weights are Pareto-smoothed, and their tail shape ``k_hat`` measured
   (:mod:`.smoothing`);
3. rows whose ``k_hat`` exceeds 0.7, or whose point estimate's Monte Carlo standard error
   exceeds ``mc_tolerance``, draw again, twice as many each round, up to ``max_rounds``;
4. rows still above 0.7 are flagged (``unreliable``) and keep their smoothed weights.
   Falling back to equal weights on the posterior's draws (the plain posterior mean) was
   measured and not kept: it was less accurate (docs/benchmarks.md, "Uncertainty").
"""

from typing import NamedTuple

import torch

from .sampling import ConditionalDraws, sample_conditional
from .smoothing import PARETO_K_THRESHOLD, pareto_smoothed_log_weights

__all__ = ["ReliableDraws", "monte_carlo_error", "reliable_draws"]


class ReliableDraws(NamedTuple):
    """Draws of a batch of rows and how far their weighted estimates can be trusted.

    Attributes
    ----------
    draws : ConditionalDraws
        ``log_weight`` holds the weights used (log of :attr:`weights`); rows drew different
        numbers of draws: the missing ones are padded as unsolved copies of the first, with no weight.
    weights : Tensor (n_samples, batch)
        Normalised weights of the draws (sum to 1 over draws; 0 for padding, unsolved and
        out-of-bounds draws; uniform where a row has no usable draw).
    k_hat : Tensor (batch,)
        Pareto shape of the final raw weights (``nan`` where unweighted).
    mc_error : Tensor (batch,)
        Largest Monte Carlo standard error of the row's weighted mean over its hidden
        entries (the flow's scale).
    unreliable : BoolTensor (batch,)
        Rows whose ``k_hat`` stayed above 0.7 after the extra draws.
    n_draws : LongTensor (batch,)
        Draws made for each row.
    usable : BoolTensor (batch,)
        Rows with at least one solved draw within ``bounds``; the others have no estimate
        (their ``weights`` are uniform only so that they stay a distribution).
    """

    draws: ConditionalDraws
    weights: torch.Tensor
    k_hat: torch.Tensor
    mc_error: torch.Tensor
    unreliable: torch.Tensor
    n_draws: torch.Tensor
    usable: torch.Tensor


def monte_carlo_error(samples, weights, hidden):
    """Largest delta-method standard error of a row's self-normalised weighted mean over its hidden entries.

    Parameters
    ----------
    samples : Tensor (n_samples, batch, d)
    weights : Tensor (n_samples, batch)
        Normalised over draws.
    hidden : BoolTensor (batch, d)

    Returns
    -------
    Tensor (batch,)
        ``max_j sqrt(sum_k w_k^2 (x_kj - mean_j)^2)``; 0 for a row with nothing hidden.
    """
    w = weights.unsqueeze(-1)
    used = w > 0
    mean = torch.where(used, w * samples, 0.0).sum(dim=0)
    spread = torch.where(used, w.pow(2) * (samples - mean).pow(2), 0.0).sum(dim=0)
    return torch.where(hidden, spread, 0.0).amax(dim=-1).sqrt()


def _usable(draws, hidden, bounds):
    """Solved draws whose hidden entries stay within ``bounds``."""
    usable = draws.converged
    if bounds is not None:
        lower, upper = bounds
        inside = (draws.samples >= lower) & (draws.samples <= upper) | ~hidden
        usable = usable & inside.all(dim=-1)
    return usable


def _smooth(log_weight, n_draws):
    """Pareto smoothing of each row over its own ``n_draws`` draws (the padding after them left out), so
    that the tail fitted for a row does not depend on how many draws its batch-mates made."""
    smoothed = torch.full_like(log_weight, float("-inf"))
    k_hat = torch.full_like(log_weight[0], float("nan"))
    for count in torch.unique(n_draws).tolist():
        rows = (n_draws == count).nonzero().squeeze(-1)
        smoothed[:count, rows], k_hat[rows] = pareto_smoothed_log_weights(log_weight[:count, rows])
    return smoothed, k_hat


def _weigh(draws, hidden, bounds, weighted, n_draws):
    """Normalised weights (smoothed), ``k_hat``, rows above the threshold and the Monte Carlo error."""
    usable = _usable(draws, hidden, bounds)
    equal = usable.to(draws.samples.dtype)
    equal = torch.where(usable.any(dim=0), equal / equal.sum(dim=0).clamp_min(1), 1.0 / usable.shape[0])
    if not weighted:
        nan = torch.full_like(equal[0], float("nan"))
        return equal, nan, torch.zeros_like(usable[0]), monte_carlo_error(draws.samples, equal, hidden)
    log_weight = torch.where(usable, draws.log_weight, float("-inf"))
    smoothed, k_hat = _smooth(log_weight, n_draws)
    has_weight = torch.isfinite(smoothed).any(dim=0)
    weights = torch.where(has_weight, torch.softmax(torch.where(has_weight, smoothed, 0.0), dim=0), equal)
    uneven = k_hat > PARETO_K_THRESHOLD  # nan (too few draws to tell) is not flagged
    return weights, k_hat, uneven, monte_carlo_error(draws.samples, weights, hidden)


def _pad(draws, n):
    """``draws`` with unsolved, weightless draws appended up to ``n`` per row."""
    extra = n - draws.samples.shape[0]
    if extra <= 0:
        return draws
    batch = draws.samples.shape[1]

    def pad(t, value):
        return torch.cat([t, t.new_full((extra, batch, *t.shape[2:]), value)])

    # Padding repeats the first draw's values (never weighted): observed entries stay equal in every draw.
    samples = torch.cat([draws.samples, draws.samples[:1].expand(extra, -1, -1)])
    return ConditionalDraws(samples, None if draws.log_weight is None else
                            pad(draws.log_weight, float("-inf")), pad(draws.converged, False), pad(draws.n_iter, 0),
                            pad(draws.method, 0))


def reliable_draws(flow, y, hidden, params, n_samples, noise, *, weighted=True, solver="auto", options=None,
                   bounds=None, mc_tolerance=0.05, max_rounds=2):
    """Draw ``n_samples`` completions per row, and more where the row's estimate is unreliable.

    Parameters
    ----------
    flow : ResidualFlow
    y : Tensor (batch, d)
    hidden : BoolTensor (batch, d)
    params : GaussianParameters
        The posterior of each row.
    n_samples : int
        First-round draws per row; round ``r`` adds ``n_samples * 2**(r - 1)`` to the rows that need them.
    noise : RowNoise
        Each row's own random numbers; the counter advances by ``1 + max_rounds`` whatever the
        rows needed, so that later calls stay independent of the batch.
    weighted : bool, default=True
        Importance weights (exact, Pareto-smoothed); else equal weights on the usable draws.
    solver, options
        See :func:`~.solvers.solve_constraint`.
    bounds : tuple of Tensor (d,), optional
        ``(lower, upper)``: draws with a hidden entry outside get no weight.
    mc_tolerance : float, default=0.05
        Monte Carlo standard error (the flow's scale) above which a row draws again.
    max_rounds : int, default=2

    Returns
    -------
    ReliableDraws
    """
    calls = noise.calls
    weights_option = "auto" if weighted else False
    draws = sample_conditional(flow, y, hidden, params, n_samples, noise, solver, options, weights=weights_option)
    weighted = weighted and draws.log_weight is not None
    n_draws = torch.full((y.shape[0],), n_samples, dtype=torch.long, device=y.device)
    weights, k_hat, uneven, error = _weigh(draws, hidden, bounds, weighted, n_draws)
    for round_ in range(1, max_rounds + 1):
        again = uneven | (error > mc_tolerance)
        if not bool(again.any()):
            break
        rows = again.nonzero().squeeze(-1)
        sub_noise = noise.rows(again.cpu().numpy())
        sub_noise.calls = calls + round_
        sub_params = type(params)(*(None if p is None else p[rows] for p in params))
        more = sample_conditional(flow, y[rows], hidden[rows], sub_params, n_samples * 2 ** (round_ - 1), sub_noise,
                                  solver, options, weights=weights_option)
        merged = _pad(draws, draws.samples.shape[0] + more.samples.shape[0])
        # The new draws go after the row's earlier ones (the padding of rows that did not draw again).
        start = n_draws[rows]
        slots = start.unsqueeze(0) + torch.arange(more.samples.shape[0], device=y.device).unsqueeze(1)
        for old, new in zip(merged, more, strict=True):
            if old is not None:  # _pad made new tensors: fill them in place
                old[slots, rows] = new
        draws = merged
        n_draws[rows] += more.samples.shape[0]
        weights, k_hat, uneven, error = _weigh(draws, hidden, bounds, weighted, n_draws)
    noise.calls = calls + 1 + max_rounds
    usable = _usable(draws, hidden, bounds).any(dim=0)
    return ReliableDraws(draws._replace(log_weight=torch.log(weights)), weights, k_hat, error, uneven, n_draws, usable)
