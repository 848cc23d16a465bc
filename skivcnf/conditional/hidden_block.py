"""The hidden block ``G^HH`` of the flow's Jacobian ``G = dg/dy``: its compact form and solves with it.

Rows of a batch hide different entries. Each row's hidden block is stored compactly as a
``(k, k)`` matrix, ``k`` the batch's largest hidden count: compact coordinate ``i`` of a
row is its ``order[i]``-th column, and rows with fewer hidden entries are padded with
identity rows and columns (``valid`` is false there), which change neither determinants
nor solves. One batched ``slogdet`` or ``solve`` then serves every mask.

Above tabular widths the block is never formed: :func:`solve_hidden_block` solves with it
(or its transpose) by GMRES on Jacobian-vector (vector-Jacobian) products, masked so that
observed entries of the right-hand side and of the solution stay at zero.
"""

import torch

from .linalg import gmres, masked_operator

__all__ = ["HIDDEN_SOLVE_METHODS", "compact_hidden_block", "from_compact", "hidden_jacobian", "hidden_layout",
           "log_prob_and_hidden_jacobian", "solve_compact", "solve_hidden_block", "to_compact"]

#: How :func:`solve_hidden_block` solves: with the compact block, or by GMRES on products.
HIDDEN_SOLVE_METHODS = ("exact", "gmres")


def hidden_layout(hidden):
    """Each row's hidden columns in order, padded to the batch's largest hidden count ``k``:
    ``order : LongTensor (batch, k)`` and ``valid : BoolTensor (batch, k)`` (false on padding)."""
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


def to_compact(v, order, valid):
    """The hidden entries of ``v : (..., batch, d)`` in compact order, ``(..., batch, k)``, zero for padding."""
    return torch.gather(v, -1, order.expand(*v.shape[:-1], order.shape[-1])) * valid.to(v.dtype)


def from_compact(compact, order, valid, d):
    """Compact vectors ``(..., batch, k)`` back to ``(..., batch, d)``, zero on observed entries."""
    out = compact.new_zeros(*compact.shape[:-1], d)
    return out.scatter(-1, order.expand(compact.shape), compact * valid.to(compact.dtype))


def solve_compact(block, order, valid, rhs, transpose=False):
    """``(G^HH)^{-1} rhs^H`` (or ``(G^HH)^{-T} rhs^H``) with a formed compact block, zero on observed entries.

    ``block``, ``order`` and ``valid`` as :func:`hidden_jacobian` returns them; ``rhs : (batch, d)``.
    """
    block = block.transpose(-1, -2) if transpose else block
    solution = torch.linalg.solve(block, to_compact(rhs, order, valid).unsqueeze(-1))
    return from_compact(solution.squeeze(-1), order, valid, rhs.shape[-1])


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
    >>> from skivcnf.conditional import hidden_jacobian
    >>> hidden = torch.tensor([[True, True, False], [False, False, True]])
    >>> block, order, valid = hidden_jacobian(flow, y, hidden)
    >>> block.shape, order.tolist(), valid.tolist()
    (torch.Size([2, 2, 2]), [[0, 1], [2, 0]], [[True, True], [True, False]])
    >>> jac = flow.jacobian(y)
    >>> torch.allclose(block[0], jac[0, :2, :2]), bool(block[1, 0, 0] == jac[1, 2, 2])
    (True, True)
    >>> block[1, 1].tolist()  # padding: an identity row
    [0.0, 1.0]
    """
    order, valid = hidden_layout(hidden)
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
    x, columns, logdet = flow.forward_and_jacobian(y)
    return (flow.base_log_prob(x) + logdet, *compact_hidden_block(columns, hidden))


def compact_hidden_block(columns, hidden):
    """The compact ``G^HH`` (``block``, ``order``, ``valid`` of :func:`hidden_jacobian`) from ``G``'s
    columns (``columns[b, j] = G e_j``, as :meth:`~skivcnf.flows.ResidualFlow.forward_and_jacobian` gives them)."""
    order, valid = hidden_layout(hidden)
    # The hidden columns G e_{order_i} (padding takes a real column; _compact_block replaces it).
    products = torch.gather(columns, 1, order.unsqueeze(-1).expand(-1, -1, columns.shape[-1]))
    return _compact_block(products, order, valid), order, valid


def solve_hidden_block(flow, y, hidden, rhs, *, transpose=False, method="exact", rtol=1e-10, restart=20,
                       max_restarts=20, preconditioner=None):
    """``(G^HH)^{-1} rhs^H`` (or ``(G^HH)^{-T} rhs^H``) per row, zero on observed entries.

    Computed without a graph, with the flow's weights cached.

    Parameters
    ----------
    flow : ResidualFlow
    y : Tensor (batch, d)
        Where ``G = dg/dy`` is taken.
    hidden : BoolTensor (batch, d)
    rhs : Tensor (batch, d)
        Right-hand sides; observed entries are ignored.
    transpose : bool, default=False
        Solve with the transposed block (implicit gradients, the stochastic bounds).
    method : {"exact", "gmres"}, default="exact"
        The compact block of :func:`hidden_jacobian` and a batched ``solve`` (tabular
        widths), or restarted GMRES on Jacobian-vector (vector-Jacobian) products.
    rtol : float or Tensor (batch,), default=1e-10
        Relative tolerance of GMRES, per row if a tensor.
    restart, max_restarts : int, default=20
        Krylov vectors per GMRES cycle and cycles at most.
    preconditioner : callable, optional
        ``v -> M^{-1} v`` on full ``(batch, d)`` vectors, approximating ``(G^HH)^{-1}``
        on the hidden entries (e.g. products with ``J = G^{-1}``); masked here. GMRES only.

    Returns
    -------
    Tensor (batch, d)

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[True, True, False], [False, False, True]])
    >>> from skivcnf.conditional import solve_hidden_block
    >>> rhs = torch.ones(2, 3, dtype=torch.float64)
    >>> exact = solve_hidden_block(flow, y, hidden, rhs, transpose=True)
    >>> exact[~hidden].tolist()  # observed entries held at zero
    [0.0, 0.0, 0.0]
    >>> jac = flow.jacobian(y)
    >>> torch.allclose(jac[0, :2, :2].T @ exact[0, :2], rhs[0, :2])  # (G^HH)^T u = rhs^H
    True
    >>> by_gmres = solve_hidden_block(flow, y, hidden, rhs, transpose=True, method="gmres", rtol=1e-12)
    >>> torch.allclose(by_gmres, exact)
    True
    """
    if method not in HIDDEN_SOLVE_METHODS:
        raise ValueError(f"method must be one of {HIDDEN_SOLVE_METHODS}, got {method!r}.")
    with torch.no_grad(), flow.cached_weights():
        if method == "exact":
            return solve_compact(*hidden_jacobian(flow, y, hidden), rhs, transpose)
        linearization = flow.linearize(y)
        operator = masked_operator(linearization.vjp if transpose else linearization.jvp, hidden)
        if preconditioner is not None:
            preconditioner = masked_operator(preconditioner, hidden)
        result = gmres(operator, torch.where(hidden, rhs, 0.0), preconditioner=preconditioner, rtol=rtol,
                       restart=restart, max_restarts=max_restarts)
        return torch.where(hidden, result.solution, 0.0)
