"""Pareto-smoothed importance sampling (PSIS) of each row's log-weights, and its diagnostic k-hat.

Self-normalised importance sampling is unreliable when a few draws carry most of the weight:
then the weights' distribution has a heavy right tail, and its estimates have a huge (or
infinite) variance. PSIS (Vehtari, Simpson, Gelman, Yao and Gabry, 2024, "Pareto smoothed
importance sampling", JMLR 25) fits a generalised Pareto distribution to the largest
weights of each row, replaces them by the fitted distribution's expected order statistics
(never above the largest raw weight), and reports the fitted shape ``k_hat``: below 0.7
the smoothed estimates are reliable, above it they are not (more draws, or another
proposal, are needed). The fit is Zhang and Stephens' (2009) empirical Bayes estimator with
the weakly informative prior on the shape of Vehtari et al.; all rows at once.
"""

import math

import torch

__all__ = ["PARETO_K_THRESHOLD", "pareto_smoothed_log_weights"]

#: Above this ``k_hat``, a row's importance-sampling estimates are unreliable (Vehtari et al.).
PARETO_K_THRESHOLD = 0.7
#: A tail of fewer draws carries too little information to fit: ``k_hat`` is then ``inf``.
_MIN_TAIL = 5
#: Weight (in draws) and centre of the prior on the shape (Vehtari et al., appendix C).
_PRIOR_WEIGHT, _PRIOR_SHAPE = 10.0, 0.5


def _fit_generalized_pareto(x):
    """Shape ``k`` and scale ``sigma`` of a generalised Pareto fit to exceedances ``x`` (rows, n), sorted.

    Zhang and Stephens' (2009) estimator: the profile likelihood over a grid of ``b = -k / sigma``
    averaged with weights proportional to the likelihood.
    """
    n = x.shape[-1]
    grid = 30 + int(math.sqrt(n))
    j = torch.arange(1, grid + 1, dtype=x.dtype, device=x.device)
    first_quartile = x[:, int(n / 4 + 0.5) - 1].unsqueeze(-1)
    b = 1.0 / x[:, -1:] + (1.0 - torch.sqrt(grid / (j - 0.5))) / (3.0 * first_quartile)  # (rows, grid)
    k = torch.log1p(-b.unsqueeze(-1) * x.unsqueeze(1)).mean(dim=-1)
    profile = n * (torch.log(-b / k) - k - 1.0)
    weights = torch.softmax(profile, dim=-1)
    b_hat = (weights * b).sum(dim=-1, keepdim=True)
    k_hat = torch.log1p(-b_hat * x).mean(dim=-1)
    sigma = -k_hat / b_hat.squeeze(-1)
    k_hat = (n * k_hat + _PRIOR_WEIGHT * _PRIOR_SHAPE) / (n + _PRIOR_WEIGHT)
    return k_hat, sigma


def pareto_smoothed_log_weights(log_weight):
    """Pareto-smoothed log-weights of each row's draws and the shape diagnostic ``k_hat``.

    Parameters
    ----------
    log_weight : Tensor (n_samples, batch)
        Log importance weights; ``-inf`` marks a draw with no weight (an unsolved one).

    Returns
    -------
    smoothed : Tensor (n_samples, batch)
        The largest ``min(n_samples / 5, 3 sqrt(n_samples))`` log-weights of each row smoothed
        (shifted by a per-row constant, which self-normalisation ignores); the others, and
        every weight of a row whose ``k_hat`` is not finite, unchanged.
    k_hat : Tensor (batch,)
        The fitted tail shape: reliable below :data:`PARETO_K_THRESHOLD` (0.7). ``inf`` where
        fewer than 5 draws of the tail have weight (the weight sits on a handful of draws);
        ``nan`` for every row when ``n_samples`` is below 21 (a tail of under 5 draws: the
        weights are returned unsmoothed and undiagnosed).

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional.smoothing import pareto_smoothed_log_weights
    >>> gen = torch.Generator().manual_seed(0)
    >>> light = 0.1 * torch.randn(400, 1, generator=gen, dtype=torch.float64)      # near-equal weights
    >>> heavy = 3.0 * torch.randn(400, 1, generator=gen, dtype=torch.float64)      # a few draws dominate
    >>> _, k_hat = pareto_smoothed_log_weights(torch.cat([light, heavy], dim=1))
    >>> bool(k_hat[0] < 0.5), bool(k_hat[1] > 0.7)
    (True, True)
    """
    n_samples = log_weight.shape[0]
    tail = min(math.ceil(0.2 * n_samples), math.ceil(3 * math.sqrt(n_samples)))
    work = log_weight.T.double()  # (batch, n_samples), float64: exceedances are differences of exponentials
    top = work.max(dim=-1, keepdim=True).values
    shifted = work - torch.where(torch.isfinite(top), top, 0.0)
    ordered, order = torch.sort(shifted, dim=-1)
    if tail < _MIN_TAIL or n_samples <= tail:  # too few draws to fit a tail: not diagnosed
        return log_weight, torch.full((log_weight.shape[1],), float("nan"), dtype=log_weight.dtype,
                                      device=log_weight.device)
    cutoff = ordered[:, -tail - 1:-tail].exp()
    exceedances = ordered[:, -tail:].exp() - cutoff
    fits = torch.isfinite(ordered[:, -tail:]).all(dim=-1) & (exceedances[:, -1] > 0)
    safe = torch.where(fits.unsqueeze(-1), exceedances, torch.linspace(1, 2, tail, dtype=work.dtype,
                                                                         device=work.device))
    k_hat, sigma = _fit_generalized_pareto(safe.clamp_min(torch.finfo(work.dtype).tiny))
    fits &= torch.isfinite(k_hat) & torch.isfinite(sigma) & (sigma > 0)
    k_hat = torch.where(fits, k_hat, float("inf"))
    # Expected order statistics: the fitted quantiles at (i - 1/2) / tail, never above the largest weight.
    p = (torch.arange(tail, dtype=work.dtype, device=work.device) + 0.5) / tail
    shape = torch.where(fits, k_hat, 1.0).unsqueeze(-1)
    quantile = torch.where(shape.abs() > 1e-8, torch.expm1(-shape * torch.log1p(-p)) / shape, -torch.log1p(-p))
    smooth_tail = torch.log(cutoff + torch.where(fits, sigma, 1.0).unsqueeze(-1) * quantile).clamp_max(0.0)
    ordered = torch.cat([ordered[:, :-tail], torch.where(fits.unsqueeze(-1), smooth_tail, ordered[:, -tail:])], dim=-1)
    smoothed = torch.empty_like(ordered).scatter_(-1, order, ordered)
    return smoothed.T.to(log_weight.dtype), k_hat.to(log_weight.dtype)
