"""The IVCNF lower bound on ``log p(y^O)`` and its gradient estimators (paper Eq. 3, 6, 7).

For a draw ``x^H ~ q`` and the completed row ``y`` that solves the constraint,

    ``log w = log p0(x) + log|det G(y)| - log q(x^H) - log|det G^HH(y)|``
    ``      = log p(y) - log q(x^H) - log|det G^HH(y)|``,

the log-density ratio of ``p(y)`` and the draw's density ``q(x^H) |det G^HH|`` in
data space. ``E_q[log w]`` is the ELBO; it is tight when ``q`` is the latent conditional.
``log w`` is also the self-normalised importance weight of the draw.

Four ways to differentiate it (``logdet=``):

- ``"exact"``: both log-determinants exact (per-row Jacobians), for tabular widths.
- ``"hutchinson"``: the exact values (from Jacobians formed without a graph) and Hutchinson's
  estimate of both gradients, ``u^T dG v`` with ``u = G^{-T} v`` solved exactly: two
  Jacobian-vector products carry a graph instead of ``d``. Cheaper per step on wide tables.
- ``"clade"`` (Eq. 6): ``log|det G|`` by the Residual Flows roulette estimator and
  ``log|det G^HH|`` by Hutchinson's estimator of its gradient,
  ``tr((G^HH)^{-1} dG^HH) ~ u^T dG^HH v`` with ``u = (G^HH)^{-T} v`` (GMRES).
- ``"nlade"`` (Eq. 7): the gradient of ``-log|det J^OO|`` as
  ``tr((J^OO)^{-1} (J dG J)^OO) ~ c^T dG a`` with ``a = J v``, ``c = J^T (J^OO)^{-T} v``
  (``v`` a probe on the observed entries); ``(J^OO)^{-T}`` comes from the Schur identity
  of Eq. 5, ``(J^OO)^{-1} = G^OO - G^OH (G^HH)^{-1} G^HO``, so only ``G`` products and
  one ``G^HH`` solve are needed, and ``J`` products use the per-block Neumann series.

The stochastic variants return a surrogate whose *gradient* is unbiased; its value leaves
out the log-determinant terms that are only estimated through their gradient
(``log|det G^HH|`` for CLADE, ``log|det J^OO|`` for NLADE).
"""

from typing import NamedTuple

import torch
from torch.func import jvp

from .hidden_block import compact_hidden_block, log_prob_and_hidden_jacobian, solve_compact, solve_hidden_block
from .implicit import HiddenBlockAtSolution, attach_implicit_gradients
from .noise import standard_normal
from .posteriors import rsample
from .solver_options import SolverOptions
from .solvers import solve_constraint
from .warm_starts import draw_guesses

__all__ = [
    "EXACT_VALUE_LOGDETS",
    "LOGDET_METHODS",
    "OBJECTIVES",
    "BoundTerms",
    "bound_integrand",
    "bound_terms",
    "importance_weighted_bound",
    "masked_bound",
]

LOGDET_METHODS = ("exact", "hutchinson", "clade", "nlade")
#: The methods whose log-weights are exact values (the importance-weighted bound needs them).
EXACT_VALUE_LOGDETS = ("exact", "hutchinson")
#: The bounds :func:`masked_bound` computes: the ELBO and the importance-weighted bound.
OBJECTIVES = ("elbo", "iwae")


class BoundTerms(NamedTuple):
    """Per-draw terms of the bound (:func:`bound_terms`).

    Attributes
    ----------
    log_weight : Tensor (n_samples, batch)
        ``log w`` per draw (a gradient surrogate for ``"clade"``/``"nlade"``);
        differentiable.
    samples : Tensor (n_samples, batch, d)
        Completed rows (detached).
    converged : BoolTensor (n_samples, batch)
        Whether the draw's constraint was solved to tolerance.
    n_iter : LongTensor (n_samples, batch)
        Solver iterations per draw.
    completed : Tensor (n_samples, batch, d) or None
        The completed rows with their implicit gradients (to the draws, the observed
        entries and the flow): what a loss on the completions, such as a classifier's on
        their latent codes, differentiates (see :mod:`~.supervised`).

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, False, True]])
    >>> from skivcnf.conditional import bound_terms, prior_parameters
    >>> params = prior_parameters(2, 3, dtype=torch.float64)
    >>> terms = bound_terms(flow, y, hidden, params, n_samples=4, generator=torch.Generator().manual_seed(1))
    >>> terms.log_weight.shape, terms.samples.shape
    (torch.Size([4, 2]), torch.Size([4, 2, 3]))
    >>> bool(terms.converged.all()), terms.log_weight.mean(0).shape  # the Monte Carlo ELBO per row
    (True, torch.Size([2]))
    """

    log_weight: torch.Tensor
    samples: torch.Tensor
    converged: torch.Tensor
    n_iter: torch.Tensor
    completed: torch.Tensor | None = None


def _hutchinson_probe(shape, mask, generator, dtype, device):
    probe = standard_normal(shape, generator, dtype, device)
    return torch.where(mask, probe, 0.0)


def _solve_transposed_by_gmres(flow, y, hidden, rhs, rtol, options):
    """``(G^HH)^{-T} rhs`` by GMRES with the backward Krylov settings of ``options``."""
    return solve_hidden_block(flow, y, hidden, rhs, transpose=True, method="gmres", rtol=rtol,
                              restart=options.backward_krylov_restart,
                              max_restarts=options.backward_krylov_max_restarts)


def _clade_hidden_surrogate(flow, y, hidden, generator, rtol, options):
    """Zero-valued term whose gradient estimates that of ``log|det G^HH(y)|``."""
    probe = _hutchinson_probe(y.shape, hidden, generator, y.dtype, y.device)
    u = _solve_transposed_by_gmres(flow, y.detach(), hidden, probe, rtol, options)
    g_probe = jvp(flow, (y,), (probe,))[1]
    surrogate = (u * torch.where(hidden, g_probe, 0.0)).sum(dim=-1)
    return surrogate - surrogate.detach()


def _nlade_observed_surrogate(flow, y, hidden, generator, rtol, options):
    """Zero-valued term whose gradient estimates that of ``-log|det J^OO(y)|``."""
    observed = ~hidden
    probe = _hutchinson_probe(y.shape, observed, generator, y.dtype, y.device)
    y0 = y.detach()
    with torch.no_grad():
        forward = flow.linearize(y0)
        t = forward.vjp(probe)  # G^T v: (G^OO)^T v on O, (G^OH)^T v on H
        mu = _solve_transposed_by_gmres(flow, y0, hidden, torch.where(hidden, t, 0.0), rtol, options)
        correction = forward.vjp(torch.where(hidden, mu, 0.0))
        w = torch.where(observed, t - correction, 0.0)  # (J^OO)^{-T} v, by Eq. 5
        inverse = flow.linearize_inverse(y0)
        a = inverse.jvp(probe)  # J P_O v
        c = inverse.vjp(w)  # J^T P_O w
    surrogate = (c * jvp(flow, (y,), (a,))[1]).sum(dim=-1)
    return surrogate - surrogate.detach()


def bound_integrand(flow, y, hidden, x_hidden, log_q, logdet="exact", solver="auto", options=None,
                    warm_start=None, generator=None, rtol=1e-8):
    """``log w`` for given latent draws, with gradients to ``x_hidden``, ``y^O`` and the flow.

    Parameters
    ----------
    flow : ResidualFlow
    y : Tensor (batch, d)
        Rows; hidden entries are ignored (or used as the solver's warm start if
        ``warm_start`` is None).
    hidden : BoolTensor (batch, d)
    x_hidden : Tensor (batch, d)
        Latent draws on hidden entries (e.g. from :func:`~.posteriors.rsample`).
    log_q : Tensor (batch,)
        ``log q(x^H)`` of the draws.
    logdet : {"exact", "hutchinson", "clade", "nlade"}
    solver : str or sequence of str
        Passed to :func:`~.solvers.solve_constraint`.
    options : SolverOptions, optional
        Passed to :func:`~.solvers.solve_constraint`; its backward Krylov settings also
        steer the solves with ``(G^HH)^T`` of the implicit gradients and the stochastic
        estimators.
    warm_start : Tensor (batch, d), optional
        Initial guess for the hidden entries.
    generator : torch.Generator, optional
        Probe vectors and roulette draws of the stochastic estimators.
    rtol : float
        Relative tolerance of the GMRES solves of the stochastic estimators.

    Returns
    -------
    log_weight : Tensor (batch,)
    solution : ConstraintSolution

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, False, True]])
    >>> from skivcnf.conditional import bound_integrand, prior_parameters, rsample
    >>> params = prior_parameters(2, 3, dtype=torch.float64)
    >>> x_hidden, log_q = rsample(params, hidden, 1, generator=torch.Generator().manual_seed(1))
    >>> x_hidden = x_hidden[0].requires_grad_(True)
    >>> log_w, solution = bound_integrand(flow, y, hidden, x_hidden, log_q[0])
    >>> log_w.shape, bool(solution.converged.all())
    (torch.Size([2]), True)
    >>> log_w.sum().backward()  # gradients reach the draws through the constraint
    >>> x_hidden.grad.shape
    torch.Size([2, 3])
    """
    log_weight, solution, _ = _integrand_and_completion(flow, y, hidden, x_hidden, log_q, logdet, solver, options,
                                                        warm_start, generator, rtol)
    return log_weight, solution


def _exact_values_hutchinson_gradients(flow, y, hidden, log_q, generator, at_solution):
    """``log w`` with exact values and unbiased stochastic gradients of both log-determinants.

    The Jacobian ``G`` is formed without a graph for the values (and the inverses); the
    gradients ``tr(G^{-1} dG)`` and ``tr((G^HH)^{-1} dG^HH)`` are Hutchinson's estimates
    ``u^T dG v`` with ``u = G^{-T} v`` solved exactly: one Jacobian-vector product with a graph
    per probe, where the exact gradient differentiates all ``d`` of them.
    """
    with torch.no_grad():
        _, columns, _ = flow.forward_and_jacobian(y)
        # One LU of G^T gives both log|det G| and the solve for u (columns = G^T: u = G^{-T} v).
        lu, pivots = torch.linalg.lu_factor(columns)
        logdet_g = lu.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
        block, order, valid = compact_hidden_block(columns, hidden)
        logdet_hh = torch.linalg.slogdet(block).logabsdet
        probe = torch.sign(standard_normal(y.shape, generator, y.dtype, y.device))  # Rademacher
        probe_h = torch.where(hidden, probe, 0.0)
        u = torch.linalg.lu_solve(lu, pivots, probe.unsqueeze(-1)).squeeze(-1)
        u_h = solve_compact(block, order, valid, probe_h, transpose=True)
    at_solution.keep(block, order, valid)
    x, products, _ = flow.forward_and_jvps(y, torch.stack([probe, probe_h], dim=1))
    surrogate = (u * products[:, 0]).sum(dim=-1) - (u_h * torch.where(hidden, products[:, 1], 0.0)).sum(dim=-1)
    return flow.base_log_prob(x) + logdet_g - log_q - logdet_hh + surrogate - surrogate.detach()


def _integrand_and_completion(flow, y, hidden, x_hidden, log_q, logdet, solver, options, warm_start, generator, rtol):
    """:func:`bound_integrand` and the completed rows with their implicit gradients."""
    if logdet not in LOGDET_METHODS:
        raise ValueError(f"logdet must be one of {LOGDET_METHODS}, got {logdet!r}.")
    options = options if options is not None else SolverOptions()
    guess = torch.where(hidden, warm_start, y) if warm_start is not None else y
    solution = solve_constraint(flow, guess.detach(), hidden, x_hidden.detach(), solver, options)
    at_solution = HiddenBlockAtSolution()
    y_full = attach_implicit_gradients(flow, solution.solution, y, hidden, x_hidden, options=options,
                                       block_at_solution=at_solution)
    if logdet == "exact":
        log_p, block, order, valid = log_prob_and_hidden_jacobian(flow, y_full, hidden)
        at_solution.keep(block, order, valid)
        return log_p - log_q - torch.linalg.slogdet(block).logabsdet, solution, y_full
    if logdet == "hutchinson":
        log_w = _exact_values_hutchinson_gradients(flow, y_full, hidden, log_q, generator, at_solution)
        return log_w, solution, y_full
    if logdet == "clade":
        x, logdet_g = flow.forward_and_logdet(y_full, generator, method="stochastic")
        value = flow.base_log_prob(x) + logdet_g - log_q
        return value - _clade_hidden_surrogate(flow, y_full, hidden, generator, rtol, options), solution, y_full
    x = flow(y_full)
    value = flow.base_log_prob(x) - log_q
    return value + _nlade_observed_surrogate(flow, y_full, hidden, generator, rtol, options), solution, y_full


def bound_terms(flow, y, hidden, params, n_samples=8, logdet="exact", solver="auto", options=None,
                warm_start=None, generator=None, stick_the_landing=False):
    """Draw ``n_samples`` from ``q`` per row and return the per-draw terms of the bound.

    ``BoundTerms.log_weight.mean(0)`` is the Monte Carlo ELBO of each row;
    :func:`importance_weighted_bound` gives the tighter importance-weighted bound, and
    :func:`masked_bound` either of them over each row's converged draws only.

    Parameters
    ----------
    flow : ResidualFlow
    y : Tensor (batch, d)
    hidden : BoolTensor (batch, d)
    params : GaussianParameters
        The posterior for each row (differentiable).
    n_samples : int, default=8
    logdet, solver, options, generator
        See :func:`bound_integrand`.
    warm_start : Tensor (n_samples, batch, d), optional
        Previous completions, one per draw, as initial guesses.
    stick_the_landing : bool, default=False
        See :func:`~.posteriors.rsample`.

    Returns
    -------
    BoundTerms

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, False, True]])
    >>> from skivcnf.conditional import GaussianParameters, bound_terms, importance_weighted_bound
    >>> mean = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    >>> params = GaussianParameters(mean, torch.zeros(2, 3, dtype=torch.float64))
    >>> terms = bound_terms(flow, y, hidden, params, n_samples=4, generator=torch.Generator().manual_seed(1))
    >>> bound = terms.log_weight.mean(0)
    >>> bool((bound <= importance_weighted_bound(terms.log_weight)).all())  # Jensen
    True
    >>> (-bound.sum()).backward()
    >>> bool((mean.grad[~hidden] == 0).all()), bool((mean.grad[hidden] != 0).all())
    (True, True)
    """
    batch, d = y.shape
    x_hidden, log_q = rsample(params, hidden, n_samples, generator, stick_the_landing)
    # One row per draw: the draws of every row, stacked.
    hidden_per_draw = hidden.expand(n_samples, batch, d).reshape(-1, d)
    y_per_draw = y.expand(n_samples, batch, d).reshape(-1, d)
    # Each spectral norm (an SVD) is computed once per call, with its graph, not per use.
    with flow.cached_weights():
        warm = draw_guesses(flow, y.detach(), hidden, x_hidden.detach(), solver, options, warm_start)
        log_w, solved, completed = _integrand_and_completion(
            flow, y_per_draw, hidden_per_draw, x_hidden.reshape(-1, d), log_q.reshape(-1), logdet, solver, options,
            warm, generator, 1e-8)
    shape = (n_samples, batch)
    return BoundTerms(log_w.reshape(shape), solved.solution.reshape(n_samples, batch, d),
                      solved.converged.reshape(shape), solved.n_iter.reshape(shape),
                      completed.reshape(n_samples, batch, d))


def importance_weighted_bound(log_weight):
    """``log (1/n) sum_k w_k`` per row (the IWAE bound), ``Tensor (batch,)``.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import importance_weighted_bound
    >>> log_weight = torch.log(torch.tensor([[1.0, 2.0], [3.0, 2.0]], dtype=torch.float64))
    >>> [round(v, 4) for v in importance_weighted_bound(log_weight).tolist()]  # log 2 for both rows
    [0.6931, 0.6931]
    """
    n = log_weight.shape[0]
    return torch.logsumexp(log_weight, dim=0) - torch.log(torch.tensor(float(n), dtype=log_weight.dtype))


def masked_bound(terms, objective="elbo"):
    """The bound per row over each row's converged draws, and the number of draws left out.

    Training and scoring both use it, so an unsolved draw (its constraint not solved to
    tolerance) counts the same way everywhere: it is left out of its row's bound.

    Parameters
    ----------
    terms : BoundTerms
        From :func:`bound_terms`; only ``log_weight`` and ``converged`` are read.
    objective : {"elbo", "iwae"}, default="elbo"
        ``"elbo"`` averages the log-weights of the converged draws; ``"iwae"`` takes the
        log of their mean weight (the importance-weighted bound, as MIWAE does for VAEs),
        tighter with more draws.

    Returns
    -------
    per_row : Tensor (batch,)
        The bound of each row; 0 for a row with no converged draw.
    n_unsolved : int
        Draws left out.

    Raises
    ------
    ValueError
        If ``objective`` is not one of :data:`OBJECTIVES`.

    Examples
    --------
    >>> import math
    >>> import torch
    >>> from skivcnf.conditional import BoundTerms, masked_bound
    >>> log_weight = torch.log(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64))
    >>> converged = torch.tensor([[True, True], [True, False]])
    >>> terms = BoundTerms(log_weight, None, converged, None)
    >>> per_row, n_unsolved = masked_bound(terms, "iwae")  # row 1 keeps only its first draw
    >>> [round(v, 4) for v in per_row.tolist()], round(math.log(2), 4), n_unsolved
    ([0.6931, 0.6931], 0.6931, 1)
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    converged = terms.converged
    n_unsolved = int((~converged).sum())
    if objective == "iwae":
        log_w = torch.where(converged, terms.log_weight, float("-inf"))
        n_converged = converged.sum(0)
        per_row = torch.logsumexp(log_w, dim=0) - torch.log(n_converged.clamp_min(1).to(log_w.dtype))
        return torch.where(n_converged > 0, per_row, 0.0), n_unsolved
    weight = converged.to(terms.log_weight.dtype)
    per_row = (torch.where(converged, terms.log_weight, 0.0) * weight).sum(0) / weight.sum(0).clamp_min(1)
    return per_row, n_unsolved

