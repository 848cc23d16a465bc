"""Initial guesses for the constraint solves of several draws per row.

Every draw of a row starts from the same guess, so the first Newton step of all of them needs
the same hidden block ``G^HH``. :func:`chord_start` forms it once per row and runs chord
iterations from it (from :data:`CHORD_MIN_DRAWS` draws a row, where that pays);
:func:`draw_guesses` picks a solve's guesses: earlier solutions, the chord start or the guess
itself. The solvers themselves are in :mod:`.solvers`.
"""

import torch

from ..flows import EXACT_LOGDET_MAX_FEATURES
from .hidden_block import from_compact, hidden_jacobian, to_compact
from .solver_options import SolverOptions
from .solvers import resolve_chain

__all__ = ["CHORD_MIN_DRAWS", "CHORD_CENTRE_MIN_DRAWS", "chord_start", "draw_guesses"]


#: A draw's chord iterations go on only while each shrinks its largest residual at least by
#: this factor (slower than that, Newton is the better use of the time).
_CHORD_MIN_CONTRACTION = 0.8
#: Below this many draws per row :func:`draw_guesses` skips the chord start and Newton starts from the guess:
#: the row's shared block then serves too few draws to pay for the chord iterations (training's
#: 2 draws a row; docs/benchmarks.md, "Speed").
CHORD_MIN_DRAWS = 16
#: From this many draws per row, the chord start first moves each row to the solution of its
#: draws' mean and shares the hidden block there (docs/benchmarks.md, "Speed"). Below
#: ``CHORD_MIN_DRAWS`` there is no chord start at all, so the centre takes effect from
#: ``max(CHORD_CENTRE_MIN_DRAWS, CHORD_MIN_DRAWS)`` draws.
CHORD_CENTRE_MIN_DRAWS = 8


@torch.no_grad()
def chord_start(flow, y, hidden, x_target, options=None):
    """Warm starts for several draws per row: chord iterations with the row's shared hidden block.

    Every draw of a row starts from the same guess ``y``, so the first Newton step of all
    of them needs the same ``G^HH(y)``: it is formed and LU-factorised once per row, and
    each draw then iterates ``y^H <- y^H - G^HH(y)^{-1} F(y^H)`` (the chord method: one
    forward pass per iteration, linear convergence): a draw takes a step that lowers its
    residual norm and goes on while each step shrinks its largest residual by a factor 0.8
    at least. Newton then finishes the draws left above tolerance (0 iterations for those
    already solved). Iterations stop when every draw is solved or stalled, or after
    ``options.chord_max_iter``.

    With :data:`CHORD_CENTRE_MIN_DRAWS` draws per row or more, the row is first moved by the
    same iterations to the completion of its draws' mean latent, and the shared block is
    formed again there: the draws of a posterior lie around that point, where the block is
    closer to each draw's own than at the initial guess, so the chord converges in fewer
    iterations (a second block per row is cheap beside many draws).

    Parameters
    ----------
    flow : ResidualFlow
    y : Tensor (batch, d)
        The rows with the shared initial guess on hidden entries (finite).
    hidden : BoolTensor (batch, d)
    x_target : Tensor (n_samples, batch, d)
        Latent draws on hidden entries.
    options : SolverOptions, optional

    Returns
    -------
    Tensor (n_samples, batch, d)
        Guesses; observed entries are ``y``'s.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, True, True]])
    >>> x_target = 0.3 * torch.randn(16, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> from skivcnf.conditional import chord_start
    >>> start = chord_start(flow, y, hidden, x_target)
    >>> residual = torch.where(hidden, flow(start.reshape(-1, 3)).reshape(16, 2, 3) - x_target, 0.0)
    >>> bool(residual.abs().max() < 1e-6), torch.equal(start[:, ~hidden], y[~hidden].expand(16, -1))
    (True, True)
    """
    options = options if options is not None else SolverOptions()
    if x_target.shape[0] >= CHORD_CENTRE_MIN_DRAWS:
        y = _chord(flow, y, hidden, x_target.mean(dim=0, keepdim=True), options)[0]
    return _chord(flow, y, hidden, x_target, options)


def _chord(flow, y, hidden, x_target, options):
    """The chord iterations of :func:`chord_start` from the shared guess ``y``."""
    n_samples, batch, d = x_target.shape
    start = y.expand(n_samples, batch, d).reshape(-1, d).clone()
    if options.chord_max_iter == 0 or batch == 0:
        return start.reshape(n_samples, batch, d)
    tol = options.tolerance(y.dtype)
    with flow.cached_weights():
        block, order, valid = hidden_jacobian(flow, y, hidden)
        if order.shape[1] == 0:
            return start.reshape(n_samples, batch, d)
        lu, pivots, info = torch.linalg.lu_factor_ex(block)
        # Draws are stacked draw-major: flat draw j belongs to row j % batch.
        row_of = torch.arange(batch, device=y.device).repeat(n_samples)
        hidden_flat, target = hidden[row_of], x_target.reshape(-1, d)
        residual = torch.where(hidden_flat, flow(y)[row_of] - target, 0.0)
        largest = residual.abs().amax(dim=-1)
        usable = (info == 0) & torch.isfinite(lu).flatten(1).all(dim=1)  # a singular block gives no chord
        moving = usable[row_of] & (largest > tol)
        for _ in range(options.chord_max_iter):
            draws = moving.nonzero().squeeze(1)
            if draws.numel() == 0:
                break
            rows, h = row_of[draws], hidden_flat[draws]
            step = torch.linalg.lu_solve(lu[rows], pivots[rows],
                                         to_compact(residual[draws], order[rows], valid[rows]).unsqueeze(-1))
            candidate = start[draws] - from_compact(step.squeeze(-1), order[rows], valid[rows], d)
            candidate_residual = torch.where(h, flow(candidate) - target[draws], 0.0)
            candidate_largest = candidate_residual.abs().amax(dim=-1)
            # A draw keeps a step that shrinks its residual norm (NaN compares False) and goes
            # on while it contracts fast enough to beat a Newton step on time.
            better = candidate_residual.norm(dim=-1) < residual[draws].norm(dim=-1)
            kept = draws[better]
            start[kept], residual[kept] = candidate[better], candidate_residual[better]
            moving[draws] = better & (candidate_largest > tol) & (
                candidate_largest <= _CHORD_MIN_CONTRACTION * largest[draws])
            largest[kept] = candidate_largest[better]
    return start.reshape(n_samples, batch, d)


def draw_guesses(flow, y, hidden, x_target, solver="auto", options=None, warm_start=None):
    """Initial guesses of the draws of each row, flattened to ``(n_samples * batch, d)``.

    ``warm_start`` (earlier solutions, ``(n_samples, batch, d)``) when given; otherwise
    :func:`chord_start` when the chain starts with Newton on the exact block (tabular
    widths) and there are :data:`CHORD_MIN_DRAWS` draws a row or more, else ``y`` itself:
    measured on trained flows, the shared block pays for its chord iterations only from about
    16 draws a row (a training step draws 2; docs/benchmarks.md, "Speed").
    """
    n_samples, batch, d = x_target.shape
    options = options if options is not None else SolverOptions()
    y = torch.where(hidden & ~torch.isfinite(y), 0.0, y)
    if warm_start is not None:
        guess = torch.where(hidden, warm_start, y)
    elif resolve_chain(solver, d)[0] == "newton" and d <= EXACT_LOGDET_MAX_FEATURES and n_samples >= CHORD_MIN_DRAWS:
        guess = chord_start(flow, y, hidden, x_target, options)
    else:
        guess = y.expand(n_samples, batch, d)
    return guess.reshape(-1, d)
