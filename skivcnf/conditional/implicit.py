"""Implicit-function-theorem gradients through the constraint solution (paper 3.3).

At a solution, ``F(y^H; x^H, y^O, theta) = g^H([y^O, y^H]) - x^H = 0``, so

    ``d y^H = -(G^HH)^{-1} (dF/dx^H dx^H + dF/dy^O dy^O + dF/dtheta dtheta)``.

The solver runs without a graph; then one evaluation of ``r = F`` at the solution, with a
graph to ``x^H``, ``y^O`` and the weights but with ``y^H`` detached, is passed through
:class:`_ImplicitCorrection`, whose value is zero and whose backward multiplies by
``-(G^HH)^{-T}``. Autograd does the rest. The solver's iterations never enter the graph
(as in deep-equilibrium models).
"""

from functools import partial

import torch

from ..flows import EXACT_LOGDET_MAX_FEATURES
from .hidden_block import HIDDEN_SOLVE_METHODS, solve_compact, solve_hidden_block
from .solver_options import SolverOptions

__all__ = ["HiddenBlockAtSolution", "attach_implicit_gradients"]


class _ImplicitCorrection(torch.autograd.Function):
    """Zero in value; backward maps ``w`` to ``-(G^HH)^{-T} w``."""

    @staticmethod
    def forward(ctx, residual, y, hidden, solve_transposed):
        ctx.save_for_backward(y, hidden)
        ctx.solve_transposed = solve_transposed
        return torch.zeros_like(residual)

    @staticmethod
    def backward(ctx, grad):
        y, hidden = ctx.saved_tensors
        mu = ctx.solve_transposed(y, hidden, torch.where(hidden, grad, 0.0))
        return -mu, None, None, None


class HiddenBlockAtSolution:
    """The compact ``G^HH`` at the solution, for the implicit backward pass to reuse.

    The exact bound forms this block at the solution anyway (for ``log|det G^HH|``);
    handing it over with :meth:`keep` (detached) spares the backward pass forming it again.
    If none was kept, the backward pass forms its own.
    """

    def __init__(self):
        self.block = None

    def keep(self, block, order, valid):
        """Keep ``(block, order, valid)`` of :func:`~.hidden_block.hidden_jacobian` at the solution."""
        self.block, self.order, self.valid = block.detach(), order, valid

    def solve_transposed(self, fallback, y, hidden, rhs):
        """``(G^HH)^{-T} rhs`` with the kept block, or by ``fallback(y, hidden, rhs)`` if none was kept."""
        if self.block is None:
            return fallback(y, hidden, rhs)
        return solve_compact(self.block, self.order, self.valid, rhs, transpose=True)


def attach_implicit_gradients(flow, solution, y, hidden, x_target, method="auto", rtol=1e-10, options=None,
                              block_at_solution=None):
    """Rows equal to ``solution`` whose gradients follow the implicit function theorem.

    Parameters
    ----------
    flow : ResidualFlow
    solution : Tensor (batch, d)
        A solved constraint (e.g. ``solve_constraint(...).solution``), no graph needed.
    y : Tensor (batch, d)
        Observed entries (may require grad); hidden entries are ignored.
    hidden : BoolTensor (batch, d)
    x_target : Tensor (batch, d)
        Latent values on hidden entries (may require grad).
    method : {"auto", "exact", "gmres"}
        How the backward pass solves with ``G^HH``: the exact compact block, or GMRES on
        vector-Jacobian products; ``"auto"`` picks exact up to ``EXACT_LOGDET_MAX_FEATURES``.
    rtol : float
        Relative tolerance of the backward GMRES.
    options : SolverOptions, optional
        Its ``backward_krylov_restart`` and ``backward_krylov_max_restarts`` steer the
        backward GMRES.
    block_at_solution : HiddenBlockAtSolution, optional
        Filled by the caller before the backward pass with the block it formed at the
        solution (exact method only); the backward pass then solves with it.

    Returns
    -------
    Tensor (batch, d)
        Equal to ``solution`` on hidden entries and to ``y`` on observed ones; gradients
        reach ``y^O``, ``x^H`` and the flow's weights.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, False, True]])
    >>> from skivcnf.conditional import attach_implicit_gradients, hidden_jacobian, solve_constraint
    >>> x_target = torch.tensor([[0.0, 0.3, 0.0], [0.0, 0.0, -0.2]], dtype=torch.float64, requires_grad=True)
    >>> solution = solve_constraint(flow, y, hidden, x_target.detach()).solution
    >>> y_full = attach_implicit_gradients(flow, solution, y, hidden, x_target)
    >>> torch.equal(y_full.detach(), solution)
    True
    >>> y_full[hidden].sum().backward()  # one hidden entry per row: dy^H/dx^H = 1 / G^HH
    >>> block = hidden_jacobian(flow, solution, hidden)[0]
    >>> torch.allclose(x_target.grad[hidden], 1 / block[:, 0, 0])
    True
    """
    if method == "auto":
        method = "exact" if y.shape[1] <= EXACT_LOGDET_MAX_FEATURES else "gmres"
    if method not in HIDDEN_SOLVE_METHODS:
        raise ValueError(f"method must be 'auto' or one of {HIDDEN_SOLVE_METHODS}, got {method!r}.")
    options = options if options is not None else SolverOptions()
    solve_transposed = partial(solve_hidden_block, flow, transpose=True, method=method, rtol=rtol,
                               restart=options.backward_krylov_restart,
                               max_restarts=options.backward_krylov_max_restarts)
    if block_at_solution is not None and method == "exact":
        solve_transposed = partial(block_at_solution.solve_transposed, solve_transposed)
    base = torch.where(hidden, solution.detach(), y)
    residual = torch.where(hidden, flow(base) - x_target, 0.0)
    return base + _ImplicitCorrection.apply(residual, solution.detach(), hidden, solve_transposed)
