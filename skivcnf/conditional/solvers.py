"""Solvers for the IVCNF equality constraint ``g^H([y^O, y^H]) = x^H`` (paper 3.2).

Given the observed entries ``y^O`` of each row and a latent draw ``x^H`` on its hidden
entries, find ``y^H``. Three solvers, batched over rows with different masks:

- ``"newton"``: Newton on ``F(y^H) = g^H(y) - x^H`` with the exact hidden block
  ``G^HH`` of the Jacobian, built from Jacobian-vector products along the hidden
  columns only (padded to the batch's largest hidden count) and solved in compact form.
  For tabular widths.
- ``"newton_krylov"``: the same Newton iteration, matrix-free: each step solves with
  ``G^HH`` by a batched restarted GMRES on Jacobian-vector products (inexact Newton,
  forcing term ``min(0.1, ||F||)``). Optionally right-preconditioned by ``J^HH``
  (``J = G^{-1}``, truncated Neumann series per block): the mirror image of the paper's
  ``G^OO`` preconditioner for ``J^OO``, exact when the Schur correction of Eq. 5 vanishes.
- ``"fixed_point"``: the paper's Algorithm 2, alternating damped updates
  ``y^H <- f^H(x^O, x^H)`` and ``x^O <- g^O(y^O, y^H)``, each ``f`` an inversion of the
  flow (a fixed point per block), with mixing rates ``alpha``, ``beta`` and their decay.

Both Newton variants take a backtracking step on the residual norm. Every call returns a
:class:`ConstraintSolution` whose rows say whether they converged, in how many iterations,
with what residual and by which solver; ``solve_constraint`` runs a fallback chain and
warns about rows that no solver brought under tolerance.
"""

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..exceptions import ConstraintWarning
from ..flows import EXACT_LOGDET_MAX_FEATURES
from .linalg import gmres, masked_operator

__all__ = [
    "SOLVERS",
    "SolverOptions",
    "ConstraintSolution",
    "solve_constraint",
    "hidden_jacobian",
    "log_prob_and_hidden_jacobian",
    "default_constraint_tolerance",
    "resolve_chain",
]

#: Solver names, in the order of the codes stored in ``ConstraintSolution.method``.
SOLVERS = ("newton", "newton_krylov", "fixed_point")


def default_constraint_tolerance(dtype):
    """Default tolerance on ``max |g^H(y) - x^H|``: ``eps ** 0.6`` (4e-10 in float64, 7e-5 in float32).

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import default_constraint_tolerance
    >>> f"{default_constraint_tolerance(torch.float64):.1e}", f"{default_constraint_tolerance(torch.float32):.1e}"
    ('4.1e-10', '7.0e-05')
    """
    return torch.finfo(dtype).eps ** 0.6


@dataclass(frozen=True)
class SolverOptions:
    """Settings of the constraint solvers; every field has a measured or documented default.

    Parameters
    ----------
    tol : float, optional
        A row has converged when ``max |g^H(y) - x^H| <= tol``; ``None`` uses
        :func:`default_constraint_tolerance` of the dtype.
    max_iter : int, default=30
        Newton iterations at most (both Newton variants).
    max_backtracks : int, default=8
        Step halvings per Newton iteration before the step is taken anyway.
    krylov_restart : int, default=20
        Krylov vectors per GMRES cycle.
    krylov_max_restarts : int, default=10
        GMRES cycles per Newton step.
    preconditioner : {"inverse_jacobian", None}, default="inverse_jacobian"
        Right preconditioner of the Newton-Krylov solves: ``J^HH`` by a truncated
        Neumann series, or none. Measured on trained flows (``benchmarks/solvers.py``):
        at d = 64 it cuts GMRES products 1.8-2.6x and makes Newton-Krylov 1.6x faster;
        at d <= 30 it costs more than it saves. Newton-Krylov is the ``"auto"`` choice
        only above ``EXACT_LOGDET_MAX_FEATURES`` features, where it pays, hence on.
    preconditioner_terms : int, default=1
        Neumann terms per block in the preconditioner (1 was fastest in
        ``benchmarks/solvers.py``: more terms cut few GMRES iterations and cost more).
    alpha, beta : float, default=0.5
        Mixing rates of Algorithm 2, in ``(0, 1]``.
    decay : float, default=1.0
        Factor applied to ``alpha`` and ``beta`` after every iteration of Algorithm 2.
        The paper's schedule is 0.95; it makes the steps sum to about ``20 * alpha`` and
        stalls far from the tolerance, hence the default of no decay.
    fixed_point_max_iter : int, default=300
        Iterations of Algorithm 2 at most.
    divergence_factor : float, default=1e3
        Algorithm 2 gives up on a row whose residual grows past this multiple of its
        initial residual (the divergence guard).
    inverse_max_iter : int, default=1000
        Iteration cap of each block's fixed-point inversion inside Algorithm 2.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import SolverOptions, default_constraint_tolerance
    >>> options = SolverOptions(tol=1e-8, max_iter=50)
    >>> options.tolerance(torch.float64), options.max_iter
    (1e-08, 50)
    >>> SolverOptions().tolerance(torch.float32) == default_constraint_tolerance(torch.float32)
    True
    >>> SolverOptions(alpha=2.0)
    Traceback (most recent call last):
        ...
    ValueError: alpha must lie in (0, 1], got 2.0.
    """

    tol: float | None = None
    max_iter: int = 30
    max_backtracks: int = 8
    krylov_restart: int = 20
    krylov_max_restarts: int = 10
    preconditioner: str | None = "inverse_jacobian"
    preconditioner_terms: int = 1
    alpha: float = 0.5
    beta: float = 0.5
    decay: float = 1.0
    fixed_point_max_iter: int = 300
    divergence_factor: float = 1e3
    inverse_max_iter: int = 1000

    def __post_init__(self):
        if self.preconditioner not in ("inverse_jacobian", None):
            raise ValueError(f"preconditioner must be 'inverse_jacobian' or None, got {self.preconditioner!r}.")
        for name in ("alpha", "beta", "decay"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must lie in (0, 1], got {value!r}.")
        for name in ("max_iter", "krylov_restart", "krylov_max_restarts", "fixed_point_max_iter",
                     "inverse_max_iter"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}.")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol must be positive, got {self.tol!r}.")

    def tolerance(self, dtype):
        """The tolerance in force for ``dtype``."""
        return self.tol if self.tol is not None else default_constraint_tolerance(dtype)


class ConstraintSolution(NamedTuple):
    """Result of solving the equality constraint for a batch of rows.

    Attributes
    ----------
    solution : Tensor (batch, d)
        Completed rows; observed entries are the input's, bit for bit.
    latent : Tensor (batch, d)
        ``g(solution)``; equals ``x^H`` on hidden entries to tolerance.
    converged : BoolTensor (batch,)
    n_iter : LongTensor (batch,)
        Iterations of the solver that finished the row (summed over the chain).
    residual : Tensor (batch,)
        ``max |g^H(y) - x^H|`` at the solution (0 for rows with nothing hidden).
    method : LongTensor (batch,)
        Index into :data:`SOLVERS` of the solver that finished the row.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, False, True]])
    >>> from skivcnf.conditional import SOLVERS, solve_constraint
    >>> x_target = torch.tensor([[0.0, 0.3, 0.0], [0.0, 0.0, -0.2]], dtype=torch.float64)
    >>> solution = solve_constraint(flow, y, hidden, x_target)
    >>> solution.converged.tolist(), [SOLVERS[i] for i in solution.method.tolist()]
    ([True, True], ['newton', 'newton'])
    >>> torch.allclose(solution.latent[hidden], x_target[hidden]), bool((solution.residual < 1e-9).all())
    (True, True)
    """

    solution: torch.Tensor
    latent: torch.Tensor
    converged: torch.Tensor
    n_iter: torch.Tensor
    residual: torch.Tensor
    method: torch.Tensor


# ---------------------------------------------------------------------- Jacobian blocks
def _hidden_layout(hidden):
    """Hidden indices of each row, first, padded to the batch's largest hidden count."""
    k = int(hidden.sum(dim=1).max()) if hidden.numel() else 0
    order = torch.argsort((~hidden).to(torch.int8), dim=1, stable=True)[:, :k]
    valid = torch.gather(hidden, 1, order)
    return order, valid


def _hidden_tangents(order, valid, d, dtype):
    """One-hot tangents ``(batch, k, d)`` on each row's hidden columns (zero for padding)."""
    return torch.nn.functional.one_hot(order, d).to(dtype) * valid.unsqueeze(-1).to(dtype)


def _compact_block(products, order, valid):
    """``G^HH`` from the products ``G e_{order_i}`` (columns), padded with the identity."""
    batch, k = order.shape
    block = torch.gather(products, 2, order.unsqueeze(1).expand(batch, k, k)).transpose(-1, -2)
    pair = valid.unsqueeze(-1) & valid.unsqueeze(-2)
    eye = torch.eye(k, dtype=products.dtype, device=products.device).expand(batch, k, k)
    return torch.where(pair, block, eye)


def hidden_jacobian(flow, y, hidden):
    """Compact hidden block ``G^HH`` of ``G = dg/dy`` per row.

    ``k`` is the batch's largest hidden count; rows with fewer hidden entries are padded
    with identity rows and columns, which change neither determinants nor solves.

    Parameters
    ----------
    flow : ResidualFlow
    y : Tensor (batch, d)
    hidden : BoolTensor (batch, d)

    Returns
    -------
    block : Tensor (batch, k, k)
        ``block[b, i, j] = G_b[order[b, i], order[b, j]]`` where valid, identity elsewhere.
        Differentiable with respect to ``y`` and the flow's weights when grad mode is on
        and either requires grad.
    order : LongTensor (batch, k)
        Column index of each compact coordinate.
    valid : BoolTensor (batch, k)
        Which compact coordinates are real (not padding).

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, False, True]])
    >>> from skivcnf.conditional import hidden_jacobian
    >>> hidden2 = torch.tensor([[True, True, False], [False, False, True]])
    >>> block, order, valid = hidden_jacobian(flow, y, hidden2)
    >>> block.shape, order.tolist(), valid.tolist()
    (torch.Size([2, 2, 2]), [[0, 1], [2, 0]], [[True, True], [True, False]])
    >>> jac = flow.jacobian(y)
    >>> torch.allclose(block[0], jac[0, :2, :2]), bool(block[1, 0, 0] == jac[1, 2, 2])
    (True, True)
    >>> block[1, 1].tolist()  # padding: an identity row
    [0.0, 1.0]
    """
    order, valid = _hidden_layout(hidden)
    batch, d = y.shape
    k = order.shape[1]
    if k == 0:  # nothing hidden in the batch: empty blocks (determinant 1)
        return y.new_zeros(batch, 0, 0), order, valid
    # k closed-form JVPs, differentiable by first-order autograd.
    products = flow.forward_and_jvps(y, _hidden_tangents(order, valid, d, y.dtype))[1]
    return _compact_block(products, order, valid), order, valid


def log_prob_and_hidden_jacobian(flow, y, hidden):
    """``log p(y)`` (exact) and the compact ``G^HH`` per row from one closed-form pass.

    Everything the exact bound and the importance weights need, differentiable by
    first-order autograd. Returns ``log_prob : Tensor (batch,)`` and the ``block``,
    ``order``, ``valid`` of :func:`hidden_jacobian`.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, False, True]])
    >>> from skivcnf.conditional import hidden_jacobian, log_prob_and_hidden_jacobian
    >>> log_p, block, order, valid = log_prob_and_hidden_jacobian(flow, y, hidden)
    >>> log_p.shape, block.shape
    (torch.Size([2]), torch.Size([2, 1, 1]))
    >>> torch.allclose(log_p, flow.log_prob(y)), torch.allclose(block, hidden_jacobian(flow, y, hidden)[0])
    (True, True)
    """
    order, valid = _hidden_layout(hidden)
    tangents = _hidden_tangents(order, valid, y.shape[1], y.dtype)
    x, products, logdet = flow.forward_and_jvps(y, tangents, logdet=True)
    return flow.base_log_prob(x) + logdet, _compact_block(products, order, valid), order, valid


def _to_compact(v, order, valid):
    return torch.gather(v, 1, order) * valid.to(v.dtype)


def _from_compact(c, order, valid, d):
    out = c.new_zeros(c.shape[0], d)
    return out.scatter(1, order, c * valid.to(c.dtype))


# ---------------------------------------------------------------------- Newton
def _constraint_residual(flow, y, hidden, x_target):
    x = flow(y)
    return x, torch.where(hidden, x - x_target, 0.0)


def _newton_direction_exact(flow, y, hidden, residual, options):
    block, order, valid = hidden_jacobian(flow, y, hidden)
    step = torch.linalg.solve(block, _to_compact(residual, order, valid).unsqueeze(-1)).squeeze(-1)
    return _from_compact(step, order, valid, y.shape[1])


def _newton_direction_krylov(flow, y, hidden, residual, options):
    operator = masked_operator(flow.linearize(y).jvp, hidden)
    preconditioner = None
    if options.preconditioner == "inverse_jacobian":
        inverse = flow.linearize_inverse(y, n_terms=options.preconditioner_terms, tol=None)
        preconditioner = masked_operator(inverse.jvp, hidden)
    forcing = residual.norm(dim=1).clamp(max=0.1)
    result = gmres(operator, residual, preconditioner=preconditioner, rtol=forcing,
                   restart=options.krylov_restart, max_restarts=options.krylov_max_restarts)
    return torch.where(hidden, result.solution, 0.0)


def _newton(flow, y, hidden, x_target, options, direction):
    tol = options.tolerance(y.dtype)
    y = y.clone()
    x, residual = _constraint_residual(flow, y, hidden, x_target)
    res = residual.abs().amax(dim=1)
    n_iter = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
    active = res > tol
    for _ in range(options.max_iter):
        if not bool(active.any()):
            break
        idx = active.nonzero().squeeze(1)
        y_i, h_i, r_i, xt_i = y[idx], hidden[idx], residual[idx], x_target[idx]
        step = direction(flow, y_i, h_i, r_i, options)
        norm0 = r_i.norm(dim=1)
        t = torch.ones_like(norm0)
        pending = torch.ones_like(norm0, dtype=torch.bool)
        new_y, new_x, new_r = y_i.clone(), x[idx].clone(), r_i.clone()
        for attempt in range(options.max_backtracks + 1):
            p = pending.nonzero().squeeze(1)
            cand = y_i[p] - t[p].unsqueeze(1) * step[p]
            x_c, r_c = _constraint_residual(flow, cand, h_i[p], xt_i[p])
            # Armijo on ||F||: accept a sufficient decrease, or the last halving anyway.
            ok = r_c.norm(dim=1) <= (1 - 1e-4 * t[p]) * norm0[p]
            if attempt == options.max_backtracks:
                ok = torch.ones_like(ok)
            acc = p[ok]
            new_y[acc], new_x[acc], new_r[acc] = cand[ok], x_c[ok], r_c[ok]
            pending[acc] = False
            t[p[~ok]] *= 0.5
            if not bool(pending.any()):
                break
        y[idx], x[idx], residual[idx] = new_y, new_x, new_r
        n_iter[idx] += 1
        res[idx] = new_r.abs().amax(dim=1)
        # Non-finite rows compare False and stop here, unconverged.
        active[idx] = res[idx] > tol
    return y, x, res, n_iter


# ---------------------------------------------------------------------- Algorithm 2
def _fixed_point(flow, y, hidden, x_target, options):
    tol = options.tolerance(y.dtype)
    y_obs = y

    def f(latent):  # y = g^{-1}(latent), the inner fixed point of every block
        return flow.invert(latent, max_iter=options.inverse_max_iter).solution

    x_tilde = torch.where(hidden, x_target, 0.0)  # chi^O = 0
    y_tilde = torch.where(hidden, f(x_tilde), y_obs)
    x = flow(y_tilde)
    res = torch.where(hidden, x - x_target, 0.0).abs().amax(dim=1)
    initial = res.clone()
    x_tilde = torch.where(hidden, x_target, x)
    n_iter = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
    active = res > tol
    alpha, beta = options.alpha, options.beta
    for _ in range(options.fixed_point_max_iter):
        if not bool(active.any()):
            break
        idx = active.nonzero().squeeze(1)
        h_i = hidden[idx]
        y_h = f(torch.where(h_i, x_target[idx], x_tilde[idx]))
        y_new = torch.where(h_i, alpha * y_h + (1 - alpha) * y_tilde[idx], y_obs[idx])
        x_new = flow(y_new)
        r_new = torch.where(h_i, x_new - x_target[idx], 0.0).abs().amax(dim=1)
        y_tilde[idx], x[idx], res[idx] = y_new, x_new, r_new
        x_tilde[idx] = torch.where(h_i, x_target[idx], beta * x_new + (1 - beta) * x_tilde[idx])
        n_iter[idx] += 1
        diverged = ~(r_new <= options.divergence_factor * initial[idx].clamp_min(tol))
        active[idx] = (r_new > tol) & ~diverged
        alpha, beta = alpha * options.decay, beta * options.decay
    return y_tilde, x, res, n_iter


_DIRECTIONS = {"newton": _newton_direction_exact, "newton_krylov": _newton_direction_krylov}


def _run(name, flow, y, hidden, x_target, options):
    if name == "fixed_point":
        return _fixed_point(flow, y, hidden, x_target, options)
    return _newton(flow, y, hidden, x_target, options, _DIRECTIONS[name])


def resolve_chain(solver, features):
    """Solver chain for ``solver``: a name, a sequence of names, or ``"auto"``.

    ``"auto"`` is ``("newton", "fixed_point")`` up to ``EXACT_LOGDET_MAX_FEATURES``
    features and ``("newton_krylov", "fixed_point")`` above: Newton converged for every
    row in 2-5 iterations in the measurements (METHOD.md and ``benchmarks/solvers.py``),
    and the fixed point, globally convergent when ``L_a L_b < 1``, catches what it misses.

    Examples
    --------
    >>> from skivcnf.conditional import resolve_chain
    >>> resolve_chain("auto", 10)
    ('newton', 'fixed_point')
    >>> resolve_chain("auto", 500)
    ('newton_krylov', 'fixed_point')
    >>> resolve_chain(["newton", "fixed_point"], 10)
    ('newton', 'fixed_point')
    """
    if solver == "auto":
        first = "newton" if features <= EXACT_LOGDET_MAX_FEATURES else "newton_krylov"
        return (first, "fixed_point")
    chain = (solver,) if isinstance(solver, str) else tuple(solver)
    unknown = [name for name in chain if name not in SOLVERS]
    if unknown or not chain:
        raise ValueError(f"solver must be 'auto', one of {SOLVERS} or a sequence of them, got {solver!r}.")
    return chain


@torch.no_grad()
def solve_constraint(flow, y, hidden, x_target, solver="auto", options=None, warn=True):
    """Complete each row so that ``g^H([y^O, y^H]) = x^H``.

    Parameters
    ----------
    flow : ResidualFlow
    y : Tensor (batch, d)
        Observed entries; hidden entries are the initial guess (a warm start), with
        non-finite values replaced by 0.
    hidden : BoolTensor (batch, d)
        True where the entry is hidden.
    x_target : Tensor (batch, d)
        Latent values on hidden entries (other entries are ignored).
    solver : str or sequence of str, default="auto"
        A name from :data:`SOLVERS`, a fallback chain of them, or ``"auto"`` (see
        :func:`resolve_chain`). Rows a solver leaves unconverged go to the next one,
        restarted from the initial guess.
    options : SolverOptions, optional
    warn : bool, default=True
        Warn with :class:`~skivcnf.exceptions.ConstraintWarning` about rows that no
        solver brought under tolerance (they are flagged in ``converged`` either way).

    Returns
    -------
    ConstraintSolution
        Computed without a graph; see :func:`~skivcnf.conditional.implicit.attach_implicit_gradients`.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, False, True]])
    >>> from skivcnf.conditional import solve_constraint
    >>> x_target = torch.tensor([[0.0, 0.3, 0.0], [0.0, 0.0, -0.2]], dtype=torch.float64)
    >>> solution = solve_constraint(flow, y, hidden, x_target)
    >>> bool(solution.converged.all())
    True
    >>> torch.allclose(flow(solution.solution)[hidden], x_target[hidden])
    True
    >>> torch.equal(solution.solution[~hidden], y[~hidden])  # observed entries kept bit for bit
    True
    """
    options = options if options is not None else SolverOptions()
    y = flow._as_input(y)
    x_target = torch.as_tensor(x_target, dtype=y.dtype, device=y.device)
    hidden = torch.as_tensor(hidden, dtype=torch.bool, device=y.device)
    if hidden.shape != y.shape or x_target.shape != y.shape:
        raise ValueError(f"y, hidden and x_target must share a shape, got {tuple(y.shape)}, "
                         f"{tuple(hidden.shape)} and {tuple(x_target.shape)}.")
    if not bool(torch.isfinite(y[~hidden]).all()):
        raise ValueError("observed entries of y must be finite.")
    chain = resolve_chain(solver, y.shape[1])
    y0 = torch.where(hidden & torch.isfinite(y), y, torch.where(hidden, 0.0, y))
    x_target = torch.where(hidden, x_target, 0.0)
    batch = y.shape[0]
    solution, latent = y0.clone(), torch.zeros_like(y0)
    residual = torch.full((batch,), float("inf"), dtype=y.dtype, device=y.device)
    n_iter = torch.zeros(batch, dtype=torch.long, device=y.device)
    method = torch.full((batch,), SOLVERS.index(chain[0]), dtype=torch.long, device=y.device)
    tol = options.tolerance(y.dtype)
    todo = torch.arange(batch, device=y.device)
    with flow.cached_weights():
        for name in chain:
            if todo.numel() == 0:
                break
            sol, lat, res, its = _run(name, flow, y0[todo], hidden[todo], x_target[todo], options)
            # The observed entries are restored bit for bit whatever the solver did.
            solution[todo] = torch.where(hidden[todo], sol, y0[todo])
            latent[todo], residual[todo] = lat, res
            n_iter[todo] += its
            method[todo] = SOLVERS.index(name)
            todo = todo[~(res <= tol)]
    converged = residual <= tol
    if warn and not bool(converged.all()):
        bad = int((~converged).sum())
        warnings.warn(
            f"The equality constraint was not solved to tol={tol:.2g} for {bad} of {batch} rows "
            f"by {' -> '.join(chain)} (largest residual {float(residual[~converged].max()):.3g}); "
            "they are flagged in ConstraintSolution.converged.",
            ConstraintWarning,
            stacklevel=2,
        )
    return ConstraintSolution(solution, latent, converged, n_iter, residual, method)

