"""Batched linear algebra on hidden blocks: the masking trick and a restarted GMRES.

Rows of a batch hide different entries. The hidden block ``A^HH`` of a matrix ``A`` has
the same determinant and solves as ``M = diag(h) A diag(h) + diag(1 - h)`` (``h`` the
hidden indicator), so one batched GMRES on products with ``M`` (:func:`masked_operator`)
serves every mask, with observed entries of the right-hand side and the solution held at
zero. (Formed blocks are stored compactly instead: :mod:`.hidden_block`.)
"""

from typing import NamedTuple

import torch

__all__ = ["masked_operator", "gmres", "GMRESResult"]


def masked_operator(matvec, hidden):
    """The operator ``v -> h * A(h * v) + (1 - h) * v`` for a batched ``matvec``.

    Products with ``M = diag(h) A diag(h) + diag(1 - h)``, per row.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional.linalg import masked_operator
    >>> matrix = torch.tensor([[[2.0, 3.0], [4.0, 5.0]]])
    >>> operator = masked_operator(lambda v: (matrix @ v.unsqueeze(-1)).squeeze(-1), torch.tensor([[True, False]]))
    >>> operator(torch.tensor([[1.0, 1.0]])).tolist()  # M = [[2, 0], [0, 1]]
    [[2.0, 1.0]]
    """

    def apply(v):
        return torch.where(hidden, matvec(torch.where(hidden, v, 0.0)), v)

    return apply


class GMRESResult(NamedTuple):
    """Result of :func:`gmres`.

    Attributes
    ----------
    solution : Tensor (batch, n)
    converged : BoolTensor (batch,)
        ``||b - A x|| <= rtol * ||b|| + atol`` for the row.
    n_iter : int
        Matrix-vector products with ``A`` (the batch shares them).
    residual : Tensor (batch,)
        Final ``||b - A x||_2``, recomputed.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import gmres
    >>> matrix = torch.tensor([[[4.0, 1.0], [1.0, 3.0]]], dtype=torch.float64)
    >>> b = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    >>> result = gmres(lambda v: (matrix @ v.unsqueeze(-1)).squeeze(-1), b, rtol=1e-12)
    >>> result.converged.tolist(), result.solution.shape, bool(result.residual.max() < 1e-10)
    ([True], torch.Size([1, 2]), True)
    """

    solution: torch.Tensor
    converged: torch.Tensor
    n_iter: int
    residual: torch.Tensor


def _breakdown_tolerance(dtype):
    return torch.finfo(dtype).eps * 10


def gmres(matvec, b, *, preconditioner=None, x0=None, rtol=1e-8, atol=0.0, restart=20,
          max_restarts=20):
    """Solve ``A_i x_i = b_i`` for every row ``i`` by restarted, right-preconditioned GMRES.

    Every row has its own Krylov space; the rows share the matrix-vector products, so
    the cost is that of the slowest row. Rows whose Krylov space is exhausted early
    (a "happy breakdown") keep their exact solution.

    Parameters
    ----------
    matvec : callable
        ``Tensor (batch, n) -> Tensor (batch, n)``, row ``i`` multiplied by ``A_i``.
    b : Tensor (batch, n)
    preconditioner : callable, optional
        ``v -> M^{-1} v``, an approximate inverse (right preconditioning: the residual
        that is minimised is the true one).
    x0 : Tensor (batch, n), optional
        Initial guess (warm start); zeros by default.
    rtol, atol : float
        Per-row stopping rule ``||b - A x|| <= rtol * ||b|| + atol``.
    restart : int
        Krylov vectors per cycle.
    max_restarts : int
        Cycles at most.

    Returns
    -------
    GMRESResult

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import gmres
    >>> matrix = torch.tensor([[[4.0, 1.0], [1.0, 3.0]], [[2.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    >>> b = torch.tensor([[1.0, 2.0], [2.0, 3.0]], dtype=torch.float64)
    >>> result = gmres(lambda v: (matrix @ v.unsqueeze(-1)).squeeze(-1), b, rtol=1e-12)
    >>> bool(result.converged.all()), torch.allclose(result.solution, torch.linalg.solve(matrix, b))
    (True, True)
    """
    precondition = preconditioner if preconditioner is not None else (lambda v: v)
    batch, n = b.shape
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    target = rtol * b.norm(dim=1) + atol
    tiny = _breakdown_tolerance(b.dtype)
    n_matvec = 0
    r = b - matvec(x) if x0 is not None else b.clone()
    n_matvec += x0 is not None
    beta = r.norm(dim=1)
    for _ in range(max_restarts):
        if bool((beta <= target).all()):
            break
        m = restart
        basis = b.new_zeros(batch, m + 1, n)
        # The Hessenberg matrix is reduced to upper triangular ``tri`` by Givens rotations as it
        # grows (Saad, Iterative Methods, 6.5.3): the least-squares residual is ``|rhs[k + 1]|``
        # at every step, and the coefficients come from one triangular solve (no lstsq, which
        # CUDA offers only for full-rank systems).
        tri = b.new_zeros(batch, m, m)
        cos, sin = b.new_zeros(batch, m), b.new_zeros(batch, m)
        basis[:, 0] = r / beta.clamp_min(tiny).unsqueeze(1)
        rhs = b.new_zeros(batch, m + 1)
        rhs[:, 0] = beta
        done = beta <= target
        dead = torch.zeros_like(done)  # rows whose Krylov space is exhausted
        for k in range(m):
            w = matvec(precondition(basis[:, k]))
            n_matvec += 1
            column = b.new_zeros(batch, k + 2)
            # Modified Gram-Schmidt, twice for stability in float32.
            for _ in range(2):
                coeff = torch.einsum("bjn,bn->bj", basis[:, : k + 1], w)
                w = w - torch.einsum("bj,bjn->bn", coeff, basis[:, : k + 1])
                column[:, : k + 1] += coeff
            norm = w.norm(dim=1)
            broke = ~dead & (norm <= tiny * column[:, : k + 1].norm(dim=1).clamp_min(1.0))
            # A row that broke down earlier has a zero basis vector here: a unit pivot of its
            # own keeps the triangle invertible with coefficient 0.
            column[:, k + 1] = torch.where(dead, torch.ones_like(norm), norm)
            basis[:, k + 1] = torch.where((dead | broke).unsqueeze(1), 0.0,
                                          w / norm.clamp_min(tiny).unsqueeze(1))
            dead = dead | broke
            for j in range(k):
                upper = cos[:, j] * column[:, j] + sin[:, j] * column[:, j + 1]
                column[:, j + 1] = cos[:, j] * column[:, j + 1] - sin[:, j] * column[:, j]
                column[:, j] = upper
            radius = torch.hypot(column[:, k], column[:, k + 1])
            safe = radius > tiny
            cos[:, k] = torch.where(safe, column[:, k] / radius.clamp_min(tiny), 1.0)
            sin[:, k] = torch.where(safe, column[:, k + 1] / radius.clamp_min(tiny), 0.0)
            tri[:, : k + 1, k] = column[:, : k + 1]
            # A vanishing column (A singular on the Krylov space): a unit pivot; the outer
            # loop's true residual keeps the convergence flag honest.
            tri[:, k, k] = torch.where(safe, radius, 1.0)
            rhs[:, k + 1] = -sin[:, k] * rhs[:, k]
            rhs[:, k] = cos[:, k] * rhs[:, k]
            k_used = k + 1
            done = done | dead | (rhs[:, k + 1].abs() <= target)
            if bool(done.all()):
                break
        coef = torch.linalg.solve_triangular(tri[:, :k_used, :k_used], rhs[:, :k_used].unsqueeze(-1), upper=True)
        update = torch.einsum("bj,bjn->bn", coef.squeeze(-1), basis[:, :k_used])
        x = x + precondition(update)
        r = b - matvec(x)
        n_matvec += 1
        beta = r.norm(dim=1)
    return GMRESResult(x, beta <= target, n_matvec, beta)
