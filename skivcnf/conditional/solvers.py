"""Solvers for the IVCNF equality constraint ``g^H([y^O, y^H]) = x^H`` (paper 3.2).

Given the observed entries ``y^O`` of each row and a latent draw ``x^H`` on its hidden
entries, find ``y^H``. Three solvers, batched over rows with different masks:

- ``"newton"``: Newton on ``F(y^H) = g^H(y) - x^H`` with the exact hidden block
  ``G^HH`` of the Jacobian in compact form (:mod:`.hidden_block`). For tabular widths.
- ``"newton_krylov"``: the same Newton iteration, matrix-free: each step solves with
  ``G^HH`` by a batched restarted GMRES on Jacobian-vector products (inexact Newton,
  forcing term ``min(max_forcing_term, ||F||)``). Optionally right-preconditioned by ``J^HH``
  (``J = G^{-1}``, truncated Neumann series per block): the mirror image of the paper's
  ``G^OO`` preconditioner for ``J^OO``, exact when the Schur correction of Eq. 5 vanishes.
- ``"fixed_point"``: the paper's Algorithm 2, alternating damped updates
  ``y^H <- f^H(x^O, x^H)`` and ``x^O <- g^O(y^O, y^H)``, each ``f`` an inversion of the
  flow (a fixed point per block), with mixing rates ``alpha``, ``beta`` and their decay.

Both Newton variants take a backtracking (Armijo) step on the residual norm. Every call
returns a :class:`~.solver_options.ConstraintSolution` whose rows say whether they
converged, in how many iterations, with what residual and by which solver;
``solve_constraint`` runs a fallback chain and warns about rows that no solver brought
under tolerance. The settings are the fields of :class:`~.solver_options.SolverOptions`.
"""

import warnings
from functools import partial

import torch

from ..exceptions import ConstraintWarning
from ..flows import EXACT_LOGDET_MAX_FEATURES
from .hidden_block import solve_hidden_block
from .solver_options import SOLVERS, ConstraintSolution, SolverOptions

__all__ = ["solve_constraint", "resolve_chain"]

# ---------------------------------------------------------------------- Newton


def _constraint_residual(flow, y, hidden, x_target):
    x = flow(y)
    return x, torch.where(hidden, x - x_target, 0.0)


def _newton_step_exact(flow, y, hidden, residual, options):
    """The Newton step ``(G^HH)^{-1} F`` with the compact hidden block."""
    return solve_hidden_block(flow, y, hidden, residual)


def _newton_step_krylov(flow, y, hidden, residual, options):
    """The inexact Newton step: GMRES to the forcing term, right-preconditioned by ``J^HH`` if asked."""
    preconditioner = None
    if options.preconditioner == "inverse_jacobian":
        preconditioner = flow.linearize_inverse(y, n_terms=options.preconditioner_terms, tol=None).jvp
    forcing = residual.norm(dim=1).clamp(max=options.max_forcing_term)
    return solve_hidden_block(flow, y, hidden, residual, method="gmres", rtol=forcing,
                              restart=options.krylov_restart, max_restarts=options.krylov_max_restarts,
                              preconditioner=preconditioner)


def _newton(flow, y, hidden, x_target, options, newton_step):
    tol = options.tolerance(y.dtype)
    y = y.clone()
    x, residual = _constraint_residual(flow, y, hidden, x_target)
    max_residual = residual.abs().amax(dim=1)
    n_iter = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
    active = max_residual > tol
    for _ in range(options.max_iter):
        if not bool(active.any()):
            break
        rows = active.nonzero().squeeze(1)
        y_rows, hidden_rows, residual_rows, target_rows = y[rows], hidden[rows], residual[rows], x_target[rows]
        step = newton_step(flow, y_rows, hidden_rows, residual_rows, options)
        norm_before = residual_rows.norm(dim=1)
        step_length = torch.ones_like(norm_before)
        searching = torch.ones_like(norm_before, dtype=torch.bool)
        next_y, next_x, next_residual = y_rows.clone(), x[rows].clone(), residual_rows.clone()
        for halvings in range(options.max_backtracks + 1):
            trying = searching.nonzero().squeeze(1)
            candidate = y_rows[trying] - step_length[trying].unsqueeze(1) * step[trying]
            candidate_x, candidate_residual = _constraint_residual(flow, candidate, hidden_rows[trying],
                                                                   target_rows[trying])
            # Armijo on ||F||: accept a sufficient decrease, or the last halving anyway.
            sufficient = (1 - options.armijo_constant * step_length[trying]) * norm_before[trying]
            accepted = candidate_residual.norm(dim=1) <= sufficient
            if halvings == options.max_backtracks:
                accepted = torch.ones_like(accepted)
            done = trying[accepted]
            next_y[done], next_x[done], next_residual[done] = (
                candidate[accepted], candidate_x[accepted], candidate_residual[accepted])
            searching[done] = False
            step_length[trying[~accepted]] *= options.backtrack_factor
            if not bool(searching.any()):
                break
        y[rows], x[rows], residual[rows] = next_y, next_x, next_residual
        n_iter[rows] += 1
        max_residual[rows] = next_residual.abs().amax(dim=1)
        # Non-finite rows compare False and stop here, unconverged.
        active[rows] = max_residual[rows] > tol
    return y, x, max_residual, n_iter


# ---------------------------------------------------------------------- Algorithm 2
def _fixed_point(flow, y, hidden, x_target, options):
    tol = options.tolerance(y.dtype)
    y_obs = y

    def invert_flow(latent):  # y = g^{-1}(latent), the inner fixed point of every block
        return flow.invert(latent, max_iter=options.inverse_max_iter).solution

    x_tilde = torch.where(hidden, x_target, 0.0)  # chi^O = 0
    y_tilde = torch.where(hidden, invert_flow(x_tilde), y_obs)
    x = flow(y_tilde)
    max_residual = torch.where(hidden, x - x_target, 0.0).abs().amax(dim=1)
    initial_residual = max_residual.clone()
    x_tilde = torch.where(hidden, x_target, x)
    n_iter = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
    active = max_residual > tol
    alpha, beta = options.alpha, options.beta
    for _ in range(options.fixed_point_max_iter):
        if not bool(active.any()):
            break
        rows = active.nonzero().squeeze(1)
        hidden_rows = hidden[rows]
        y_inverted = invert_flow(torch.where(hidden_rows, x_target[rows], x_tilde[rows]))
        y_new = torch.where(hidden_rows, alpha * y_inverted + (1 - alpha) * y_tilde[rows], y_obs[rows])
        x_new = flow(y_new)
        residual_new = torch.where(hidden_rows, x_new - x_target[rows], 0.0).abs().amax(dim=1)
        y_tilde[rows], x[rows], max_residual[rows] = y_new, x_new, residual_new
        x_tilde[rows] = torch.where(hidden_rows, x_target[rows], beta * x_new + (1 - beta) * x_tilde[rows])
        n_iter[rows] += 1
        diverged = ~(residual_new <= options.divergence_factor * initial_residual[rows].clamp_min(tol))
        active[rows] = (residual_new > tol) & ~diverged
        alpha, beta = alpha * options.decay, beta * options.decay
    return y_tilde, x, max_residual, n_iter


#: Each solver as ``(flow, y, hidden, x_target, options) -> (solution, latent, max residual, n_iter)``.
_SOLVER_FUNCTIONS = {
    "newton": partial(_newton, newton_step=_newton_step_exact),
    "newton_krylov": partial(_newton, newton_step=_newton_step_krylov),
    "fixed_point": _fixed_point,
}


def resolve_chain(solver, features, fallback=True):
    """Solver chain for ``solver``: a name, a sequence of names, or ``"auto"``.

    ``"auto"`` is ``("newton", "fixed_point")`` up to ``EXACT_LOGDET_MAX_FEATURES``
    features and ``("newton_krylov", "fixed_point")`` above: Newton converged for every
    row in 2-5 iterations in the measurements (the first measurements at d = 10-30 in docs/method.rst, and
    ``python -m benchmarks.run --section solvers``), and the fixed point, globally
    convergent when ``L_a L_b < 1``, catches what it misses. With ``fallback=False``,
    ``"auto"`` is the Newton variant alone (what training uses: a draw Newton leaves
    unsolved drops out of one step's bound, where the fixed point spent 1-140 s on it;
    docs/benchmarks.md, "Speed"); a chain given by name is kept as given.

    Examples
    --------
    >>> from skivcnf.conditional import resolve_chain
    >>> resolve_chain("auto", 10)
    ('newton', 'fixed_point')
    >>> resolve_chain("auto", 500)
    ('newton_krylov', 'fixed_point')
    >>> resolve_chain(["newton", "fixed_point"], 10)
    ('newton', 'fixed_point')
    >>> resolve_chain("auto", 10, fallback=False)
    ('newton',)
    """
    if solver == "auto":
        first = "newton" if features <= EXACT_LOGDET_MAX_FEATURES else "newton_krylov"
        return (first, "fixed_point") if fallback else (first,)
    chain = (solver,) if isinstance(solver, str) else tuple(solver)
    unknown = [name for name in chain if name not in SOLVERS]
    if unknown or not chain:
        raise ValueError(f"solver must be 'auto', one of {SOLVERS} or a sequence of them, got {solver!r}.")
    return chain


@torch.no_grad()
def solve_constraint(flow, y, hidden, x_target, solver="auto", options=None, warn=True, draws_per_row=None):
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
    draws_per_row : int, optional
        The batch is ``draws_per_row`` draws of each of ``batch / draws_per_row`` rows,
        draw-major (entry ``k * rows + r`` is draw ``k`` of row ``r``). The solvers after the
        first then only take the draws of rows none of whose draws is solved yet: a row
        needs one solved draw for an estimate, and its other draws are weighed without the
        unsolved ones. The fixed point's fallback took 1-140 s a draw on digits at 90% missing
        (docs/benchmarks.md, "Speed").

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
    y = flow.as_input(y)
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
    if draws_per_row is not None and batch % draws_per_row:
        raise ValueError(f"draws_per_row={draws_per_row} does not divide the batch of {batch} draws.")
    with flow.cached_weights():
        for position, name in enumerate(chain):
            if position and draws_per_row is not None:
                solved_rows = (residual <= tol).reshape(draws_per_row, -1).any(dim=0)
                todo = todo[~solved_rows[todo % solved_rows.numel()]]
            if todo.numel() == 0:
                break
            solved, solved_latent, solved_residual, solved_n_iter = _SOLVER_FUNCTIONS[name](
                flow, y0[todo], hidden[todo], x_target[todo], options)
            # The observed entries are restored bit for bit whatever the solver did.
            solution[todo] = torch.where(hidden[todo], solved, y0[todo])
            latent[todo], residual[todo] = solved_latent, solved_residual
            n_iter[todo] += solved_n_iter
            method[todo] = SOLVERS.index(name)
            todo = todo[~(solved_residual <= tol)]
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

