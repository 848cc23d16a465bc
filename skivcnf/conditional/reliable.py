"""Draws whose estimates can be trusted: smoothed and bounded weights, more draws where needed.

:func:`sample_conditional`'s self-normalised weights give consistent estimates, but on one
row and a finite number of draws they can be dominated by one draw, possibly far outside
the data (a blow-up). :func:`reliable_draws` guards each row:

1. draws whose hidden entries leave ``bounds`` (the box the flow was trained in, widened)
   get no weight: the flow's density there is an extrapolation;
2. the log-weights are Pareto-smoothed, and their tail shape ``k_hat`` measured
   (:mod:`.smoothing`);
3. rows whose ``k_hat`` exceeds 0.7, or whose point estimate's Monte Carlo standard error
   exceeds ``mc_tolerance``, draw again, twice as many each round, up to ``max_rounds``; with
   ``adapt``, from a Gaussian matched to the weighted draws so far, every draw then weighted
   against the mixture of the row's proposals (adaptive multiple importance sampling);
4. rows still above 0.7 are flagged (``unreliable``) and keep their smoothed weights.
   Falling back to equal weights on the posterior's draws (the plain posterior mean) was
   measured and not kept: it was less accurate (docs/benchmarks.md, "Uncertainty"); the point
   estimate's shrinkage below is its graded form, per entry;
5. rows whose solved draws all left ``bounds`` get those draws clipped into the bounds, with
   equal weights (``clipped``): measured better than the training means on outlying rows.

A point estimate from such draws (:func:`shrunk_mean`) moves each entry's weighted mean toward
the plain mean of the posterior's first-round draws by the share of their squared difference
that the weighted mean's Monte Carlo variance accounts for: where the weights are too uneven
for their mean to be precise (many hidden entries), the posterior's mean, biased but far less
noisy, takes over; elsewhere the weighted mean stays (docs/benchmarks.md, "Uncertainty").
"""

import math
from typing import NamedTuple

import torch

from .posteriors import GaussianParameters, log_density, marginal_variance
from .sampling import ConditionalDraws, sample_conditional
from .smoothing import PARETO_K_THRESHOLD, pareto_smoothed_log_weights

__all__ = ["ReliableDraws", "monte_carlo_error", "reliable_draws", "shrunk_mean"]


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
        Rows with an estimate: at least one solved draw, within ``bounds`` or clipped into
        them; the others (no solved draw) have none (their ``weights`` are uniform only so
        that they stay a distribution).
    clipped : BoolTensor (batch,)
        Rows whose solved draws all left ``bounds``: their hidden entries are clipped into
        the bounds and weighted equally (the posterior's draws, at the nearest values the flow
        was trained on).
    first_weights : Tensor (n_samples, batch)
        Equal weights on the first round's usable draws (the posterior's own draws), 0 elsewhere;
        all 0 for a row with none, and for every row when the draws are unweighted.
    """

    draws: ConditionalDraws
    weights: torch.Tensor
    k_hat: torch.Tensor
    mc_error: torch.Tensor
    unreliable: torch.Tensor
    n_draws: torch.Tensor
    usable: torch.Tensor
    clipped: torch.Tensor
    first_weights: torch.Tensor


def _unit_terms(samples, weights, paired):
    """Each independent unit's (draw's, or antithetic pair's) term ``sum_k w_k (x_k - mean)`` of a
    self-normalised weighted mean's error, and the mean: (units, batch, d) and (batch, d)."""
    w = weights.unsqueeze(-1)
    used = w > 0
    mean = torch.where(used, w * samples, 0.0).sum(dim=0)
    terms = torch.where(used, w * (samples - mean), 0.0)
    if paired:
        terms = terms.reshape(-1, 2, *terms.shape[1:]).sum(dim=1)
    return terms, mean


def monte_carlo_error(samples, weights, hidden, paired=False):
    """Largest delta-method standard error of a row's self-normalised weighted mean over its hidden entries.

    Parameters
    ----------
    samples : Tensor (n_samples, batch, d)
    weights : Tensor (n_samples, batch)
        Normalised over draws.
    hidden : BoolTensor (batch, d)
    paired : bool, default=False
        Draws ``2k`` and ``2k + 1`` are an antithetic pair: the pairs, not the draws, are
        the independent units (``n_samples`` even).

    Returns
    -------
    Tensor (batch,)
        ``max_j sqrt(sum_u (sum_{k in u} w_k (x_kj - mean_j))^2)`` over units ``u`` (draws, or
        pairs); 0 for a row with nothing hidden.
    """
    terms, _ = _unit_terms(samples, weights, paired)
    return torch.where(hidden, terms.pow(2).sum(dim=0), 0.0).amax(dim=-1).sqrt()


def shrunk_mean(samples, weights, first_weights, paired=False):
    """Point completion per row: each hidden entry's weighted mean, shrunk toward the plain mean of
    the posterior's draws by the share of their squared difference its Monte Carlo variance explains.

    With ``m_w`` the self-normalised weighted mean (consistent, Monte Carlo variance ``v``, the
    delta-method estimate of :func:`monte_carlo_error`) and ``m_q`` the plain mean of the
    posterior's draws (biased by ``b``, nearly noiseless), ``m_w + a (m_q - m_w)`` has the least
    squared error at ``a = v / (v + b^2)``; ``(m_q - m_w)^2`` estimates ``v + b^2``, so
    ``a = min(1, v / (m_q - m_w)^2)`` (the positive-part plug-in). ``a`` vanishes as the draws grow:
    the estimate stays consistent for the flow's conditional mean.

    Parameters
    ----------
    samples : Tensor (n_samples, batch, d)
    weights : Tensor (n_samples, batch)
        Normalised importance weights over draws.
    first_weights : Tensor (n_samples, batch)
        Normalised equal weights on the posterior's own draws, 0 elsewhere (all 0 for a row
        without any: it keeps its weighted mean).
    paired : bool, default=False
        Draws ``2k`` and ``2k + 1`` are an antithetic pair (see :func:`monte_carlo_error`).

    Returns
    -------
    Tensor (batch, d)
        Entries on which every draw agrees (observed entries above all) exactly as in the draws.
    """
    terms, weighted = _unit_terms(samples, weights, paired)
    variance = terms.pow(2).sum(dim=0)
    f = first_weights.unsqueeze(-1)
    plain = torch.where(f > 0, f * samples, 0.0).sum(dim=0)
    gap = (plain - weighted).pow(2)
    share = torch.where(gap > 0, (variance / torch.where(gap > 0, gap, 1.0)).clamp(max=1.0), 0.0)
    share = torch.where((first_weights.sum(dim=0) > 0).unsqueeze(-1), share, 0.0)
    first = samples[0]
    return torch.where((samples == first).all(dim=0), first, weighted + share * (plain - weighted))


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


def _weigh(draws, hidden, bounds, weighted, n_draws, paired):
    """Normalised weights (smoothed), ``k_hat``, rows above the threshold and the Monte Carlo error."""
    usable = _usable(draws, hidden, bounds)
    equal = usable.to(draws.samples.dtype)
    equal = torch.where(usable.any(dim=0), equal / equal.sum(dim=0).clamp_min(1), 1.0 / usable.shape[0])
    if not weighted:
        nan = torch.full_like(equal[0], float("nan"))
        return equal, nan, torch.zeros_like(usable[0]), monte_carlo_error(draws.samples, equal, hidden, paired)
    log_weight = torch.where(usable, draws.log_weight, float("-inf"))
    smoothed, k_hat = _smooth(log_weight, n_draws)
    has_weight = torch.isfinite(smoothed).any(dim=0)
    weights = torch.where(has_weight, torch.softmax(torch.where(has_weight, smoothed, 0.0), dim=0), equal)
    uneven = k_hat > PARETO_K_THRESHOLD  # nan (too few draws to tell) is not flagged
    return weights, k_hat, uneven, monte_carlo_error(draws.samples, weights, hidden, paired)


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


def _rows_of(params, rows):
    """The posterior parameters of ``rows`` (indices) only."""
    return type(params)(*(None if p is None else p[rows] for p in params))


#: With ``adapt``, a matched Gaussian's variance is shrunk toward the row's first proposal's as if
#: that one had this many effective draws: a variance from a few effective draws is noisy, and a
#: proposal narrower than the target makes heavy-tailed weights.
ADAPT_SHRINKAGE = 4.0


def _matched_proposal(latent, weights, hidden, params):
    """The diagonal Gaussian with each row's weighted mean and (shrunk) variance of its draws' latent
    hidden entries: the next round's proposal (``latent`` and ``weights`` of the rows drawing again)."""
    w = weights.unsqueeze(-1)
    used = w > 0
    mean = torch.where(used, w * latent, 0.0).sum(dim=0)
    var = torch.where(used, w * (latent - mean).pow(2), 0.0).sum(dim=0)
    ess = (1.0 / weights.pow(2).sum(dim=0)).unsqueeze(-1)
    var = (ess * var + ADAPT_SHRINKAGE * marginal_variance(params, hidden)) / (ess + ADAPT_SHRINKAGE)
    return GaussianParameters(torch.where(hidden, mean, 0.0),
                              torch.where(hidden, 0.5 * torch.log(var.clamp_min(torch.finfo(var.dtype).tiny)), 0.0))


class _Proposals:
    """Each round's proposals of a batch (full-batch parameters, the rows that drew from them and how
    many draws each), and every draw's latent hidden entries and log-weight against its own proposal:
    what the mixture (balance-heuristic) weights of adaptive multiple importance sampling need."""

    def __init__(self, flow, draws, hidden, params):
        self.flow, self.hidden = flow, hidden
        self.rounds = [(params, torch.ones_like(hidden[:, 0]), draws.samples.shape[0])]
        self.latent = self._latent(draws.samples)
        self.log_base = self._base(draws.log_weight, params, hidden, self.latent)

    def _latent(self, samples):
        with self.flow.cached_weights():
            return self.flow(samples.reshape(-1, samples.shape[-1])).reshape(samples.shape)

    @staticmethod
    def _base(log_weight, params, hidden, latent):
        """``log p(y) - log|det G^HH|`` of each draw: its log-weight with its proposal's density added back."""
        base = log_weight + log_density(params, hidden, latent)
        return torch.where(torch.isfinite(log_weight), base, float("-inf"))

    def next_proposal(self, weights, rows):
        """The matched Gaussian of ``rows`` (indices), from the weights of the draws so far."""
        first = _rows_of(self.rounds[0][0], rows)
        return _matched_proposal(self.latent[:, rows], weights[:, rows], self.hidden[rows], first)

    def add(self, merged, more, slots, rows, sub_params):
        """Record round ``more`` (drawn by ``rows`` from ``sub_params``, placed at ``slots`` of ``merged``)."""
        extra = merged.samples.shape[0] - self.latent.shape[0]
        if extra > 0:  # the padding's latents repeat the first draw's (never weighted)
            self.latent = torch.cat([self.latent, self.latent[:1].expand(extra, -1, -1)])
            self.log_base = torch.cat([self.log_base, self.log_base.new_full((extra, self.log_base.shape[1]),
                                                                             float("-inf"))])
        latent = self._latent(more.samples)
        self.latent[slots, rows] = latent
        self.log_base[slots, rows] = self._base(more.log_weight, sub_params, self.hidden[rows], latent)
        full = GaussianParameters(self.rounds[0][0].mean.clone(), self.rounds[0][0].log_scale.clone())
        full.mean[rows], full.log_scale[rows] = sub_params.mean, sub_params.log_scale
        active = torch.zeros_like(self.rounds[0][1])
        active[rows] = True
        self.rounds.append((full, active, more.samples.shape[0]))

    def log_weight(self, log_weight, n_draws):
        """Every draw's log-weight against the mixture of its row's proposals, each weighted by its draws."""
        terms = []
        for params, active, count in self.rounds:
            log_q = log_density(params, self.hidden, self.latent)
            terms.append(torch.where(active, log_q + math.log(count), float("-inf")))
        log_mixture = torch.logsumexp(torch.stack(terms), dim=0) - torch.log(n_draws.to(self.latent.dtype))
        mixed = torch.where(torch.isfinite(self.log_base), self.log_base - log_mixture, float("-inf"))
        # Rows with one proposal keep their weights as drawn: the latents recomputed here agree with
        # the solver's targets only to its tolerance, and a row's result must not depend on whether
        # a batch-mate adapted.
        return torch.where(torch.stack([a for _, a, _ in self.rounds[1:]]).any(dim=0), mixed, log_weight)


@torch.no_grad()
def reliable_draws(flow, y, hidden, params, n_samples, noise, *, weighted=True, solver="auto", options=None,
                   bounds=None, mc_tolerance=0.05, max_rounds=2, antithetic=False, quasi=False, adapt=False):
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
    antithetic : bool, default=False
        Draw in antithetic pairs (``n_samples`` even; see :func:`~.sampling.sample_conditional`),
        and measure the Monte Carlo error over pairs.
    quasi : bool, default=False
        Randomised quasi-Monte Carlo draws (:func:`~.noise.sobol_uniform`): each round continues
        the row's own shifted Sobol sequence, so that after every round a row's draws are the
        first points of one sequence. The Monte Carlo error is still estimated as for independent
        draws (pairs with ``antithetic``), which overstates it for quasi-random draws: the rule
        to draw again stays conservative.
    adapt : bool, default=False
        Adaptive multiple importance sampling (weighted draws only): a row that draws again draws
        from the diagonal Gaussian with the weighted mean and variance of its draws so far (the
        variance shrunk toward the first proposal's by ``ADAPT_SHRINKAGE`` effective draws), and
        each of its draws is weighted against the mixture of its proposals, each in proportion
        to its draws (the balance heuristic: Veach and Guibas 1995; Cornuet et al. 2012). Where
        the first proposal is off (uneven weights), the next rounds' weights are even.

    Returns
    -------
    ReliableDraws
    """
    calls = noise.calls
    weights_option = "auto" if weighted else False
    per_point = 2 if antithetic else 1  # draws per point of the noise's sequence
    draws = sample_conditional(flow, y, hidden, params, n_samples, noise, solver, options, weights=weights_option,
                               antithetic=antithetic, quasi_start=0 if quasi else None)
    weighted = weighted and draws.log_weight is not None
    n_draws = torch.full((y.shape[0],), n_samples, dtype=torch.long, device=y.device)
    weights, k_hat, uneven, error = _weigh(draws, hidden, bounds, weighted, n_draws, antithetic)
    proposals = None
    for round_ in range(1, max_rounds + 1):
        again = uneven | (error > mc_tolerance)
        if not bool(again.any()):
            break
        rows = again.nonzero().squeeze(-1)
        sub_noise = noise.rows(again.cpu().numpy())
        # Quasi-random rounds reuse the first call's shift and continue its sequence (every row drawing
        # again has drawn in each earlier round); independent rounds take fresh numbers.
        sub_noise.calls = calls if quasi else calls + round_
        quasi_start = n_samples * 2 ** (round_ - 1) // per_point if quasi else None
        if adapt and weighted:
            proposals = proposals or _Proposals(flow, draws, hidden, params)
            sub_params = proposals.next_proposal(weights, rows)
        else:
            sub_params = _rows_of(params, rows)
        more = sample_conditional(flow, y[rows], hidden[rows], sub_params, n_samples * 2 ** (round_ - 1), sub_noise,
                                  solver, options, weights=weights_option, antithetic=antithetic,
                                  quasi_start=quasi_start)
        merged = _pad(draws, draws.samples.shape[0] + more.samples.shape[0])
        # The new draws go after the row's earlier ones (the padding of rows that did not draw again).
        start = n_draws[rows]
        slots = start.unsqueeze(0) + torch.arange(more.samples.shape[0], device=y.device).unsqueeze(1)
        for old, new in zip(merged, more, strict=True):
            if old is not None:  # _pad made new tensors: fill them in place
                old[slots, rows] = new
        draws = merged
        n_draws[rows] += more.samples.shape[0]
        if proposals is not None:
            proposals.add(merged, more, slots, rows, sub_params)
            draws = draws._replace(log_weight=proposals.log_weight(draws.log_weight, n_draws))
        weights, k_hat, uneven, error = _weigh(draws, hidden, bounds, weighted, n_draws, antithetic)
    noise.calls = calls + 1 + max_rounds
    usable = draws.converged.any(dim=0)  # an estimate: in bounds, or clipped into them
    clipped = usable & ~_usable(draws, hidden, bounds).any(dim=0)
    if bool(clipped.any()):
        draws, weights = _clip_into_bounds(draws, hidden, bounds, weights, clipped)
        error = monte_carlo_error(draws.samples, weights, hidden, antithetic)
    # Unweighted draws have no weighted mean to shrink: no first-round weights.
    in_first_round = torch.arange(draws.samples.shape[0], device=y.device) < n_samples
    first = (_usable(draws, hidden, bounds) & in_first_round[:, None] & weighted).to(weights.dtype)
    first = first / first.sum(dim=0).clamp_min(1)
    return ReliableDraws(draws._replace(log_weight=torch.log(weights)), weights, k_hat, error, uneven, n_draws,
                         usable, clipped, first)


def _clip_into_bounds(draws, hidden, bounds, weights, rows):
    """For ``rows`` (every solved draw out of bounds): hidden entries clipped into the bounds, equal
    weights on the solved draws. The nearest values the flow was trained on, rather than no estimate."""
    lower, upper = bounds
    inside = torch.where(hidden, torch.clamp(draws.samples, lower, upper), draws.samples)
    solved = draws.converged.to(weights.dtype)
    weights = torch.where(rows, solved / solved.sum(dim=0).clamp_min(1), weights)
    return draws._replace(samples=torch.where(rows.unsqueeze(-1), inside, draws.samples)), weights
