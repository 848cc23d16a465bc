"""Jacobian products at a fixed point, reusing one autograd graph.

``torch.func.jvp`` pays forward-mode overhead on every operation of every call (measured
15x a forward pass for a 6-block flow on 100 rows). Solvers multiply by the same
Jacobian many times, so instead the graph of ``u -> u^T dfn/dz`` is built once
("double-vjp"): its gradient with respect to ``u`` is ``dfn/dz v``. Each product then
costs one backward pass, and a stack of ``k`` tangents is one batched backward
(``is_grads_batched``).

:class:`FlowJacobians` gives :class:`~skivcnf.flows.ResidualFlow` its Jacobians and these
linearisations, composed from each layer's own.
"""

import torch

__all__ = ["Linearization", "NeumannInverse", "DiagonalProducts", "MatrixProducts", "PermutationProducts",
           "InverseLinearization", "FlowJacobians", "default_tolerance"]

#: :meth:`FlowJacobians.linearize_inverse` with at least this many Neumann terms and no
#: ``tol`` sums each series to ``eps ** 0.75`` (exact products) instead of truncating it.
_EXACT_NEUMANN_TERMS = 1000


def default_tolerance(dtype):
    """Default fixed-point tolerance: ``eps ** 0.75`` (about 2e-12 in float64, 6e-6 in float32)."""
    return torch.finfo(dtype).eps ** 0.75


def _batched(v, reference):
    return v.dim() == reference.dim() + 1


class Linearization:
    """Products with ``A = dfn/dz`` at ``z``, row by row; no graph reaches the caller.

    Parameters
    ----------
    fn : callable
        ``Tensor (batch, d) -> Tensor (batch, d)``, rows independent.
    z : Tensor (batch, d)

    Attributes
    ----------
    value : Tensor (batch, d)
        ``fn(z)``, detached.
    """

    def __init__(self, fn, z):
        with torch.enable_grad():
            self._z = z.detach().requires_grad_(True)
            self._out = fn(self._z)
            self._dual = torch.zeros_like(self._out, requires_grad=True)
            (self._pullback,) = torch.autograd.grad(self._out, self._z, self._dual, create_graph=True)
        self.value = self._out.detach()

    def jvp(self, v):
        """``A v`` for ``v : Tensor (batch, d)`` or a stack ``(k, batch, d)``."""
        with torch.enable_grad():
            (out,) = torch.autograd.grad(self._pullback, self._dual, v, retain_graph=True,
                                         is_grads_batched=_batched(v, self._z))
        return out

    def vjp(self, u):
        """``u^T A`` for ``u : Tensor (batch, d)`` or a stack ``(k, batch, d)``."""
        with torch.enable_grad():
            (out,) = torch.autograd.grad(self._out, self._z, u, retain_graph=True,
                                         is_grads_batched=_batched(u, self._z))
        return out


class NeumannInverse:
    """Products with ``(I + A)^{-1}``, ``A = dfn/dz`` at ``z``, by the Neumann series ``sum_j (-A)^j``.

    The series converges at rate ``||A||``; for a residual block's branch that is at most
    ``Lip(h) <= c < 1``.

    Parameters
    ----------
    fn : callable
        ``Tensor (batch, d) -> Tensor (batch, d)``, rows independent (a residual branch ``h``).
    z : Tensor (batch, d)
    n_terms : int
        Series terms at most.
    tol : float or None
        Stop when a term's max-norm is at most ``tol``; ``None`` always sums ``n_terms``
        terms (a fixed linear approximation, e.g. a preconditioner).
    """

    def __init__(self, fn, z, n_terms, tol):
        self._branch = Linearization(fn, z)
        self.n_terms, self.tol = n_terms, tol

    def _series(self, v, product):
        total, term = v, v
        for _ in range(self.n_terms):
            term = -product(term)
            total = total + term
            if self.tol is not None and float(term.abs().max()) <= self.tol:
                break
        return total

    def jvp(self, v):
        """``(I + A)^{-1} v``, ``v : Tensor (batch, d)``."""
        return self._series(v, self._branch.jvp)

    def vjp(self, u):
        """``u^T (I + A)^{-1}``, ``u : Tensor (batch, d)``."""
        return self._series(u, self._branch.vjp)


class DiagonalProducts:
    """Products with ``diag(scale)``, the same for every row (``jvp`` and ``vjp`` agree).

    Parameters
    ----------
    scale : Tensor (d,)
    """

    def __init__(self, scale):
        self.scale = scale

    def jvp(self, v):
        """``scale * v``."""
        return v * self.scale

    def vjp(self, u):
        """``u * scale``."""
        return u * self.scale


class MatrixProducts:
    """Products with a matrix ``A``, the same for every row: ``A v`` and ``u^T A``.

    Parameters
    ----------
    matrix : Tensor (d, d)

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows.linearize import MatrixProducts
    >>> products = MatrixProducts(torch.tensor([[1.0, 2.0], [0.0, 3.0]]))
    >>> v = torch.tensor([[1.0, 1.0]])
    >>> products.jvp(v).tolist(), products.vjp(v).tolist()
    ([[3.0, 3.0]], [[1.0, 5.0]])
    """

    def __init__(self, matrix):
        self.matrix = matrix

    def jvp(self, v):
        """``A v`` for ``v : Tensor (..., d)``."""
        return v @ self.matrix.T

    def vjp(self, u):
        """``u^T A`` for ``u : Tensor (..., d)``."""
        return u @ self.matrix


class PermutationProducts:
    """Products with the permutation matrix ``P``, ``(P v)_i = v_{index_i}``, the same for every row.

    Parameters
    ----------
    index : LongTensor (d,)
        A permutation of ``range(d)``.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows.linearize import PermutationProducts
    >>> products = PermutationProducts(torch.tensor([2, 0, 1]))
    >>> v = torch.tensor([10.0, 20.0, 30.0])
    >>> products.jvp(v).tolist(), products.vjp(products.jvp(v)).tolist()  # P^T P = I
    ([30.0, 10.0, 20.0], [10.0, 20.0, 30.0])
    """

    def __init__(self, index):
        self.index = index
        self.inverse_index = torch.argsort(index)

    def jvp(self, v):
        """``P v`` for ``v : Tensor (..., d)``."""
        return v[..., self.index]

    def vjp(self, u):
        """``u^T P`` (that is ``P^{-1} u``) for ``u : Tensor (..., d)``."""
        return u[..., self.inverse_index]


class InverseLinearization:
    """Products with ``J = G^{-1}`` of a residual flow at ``y``, one layer at a time.

    ``G = G_L ... G_1`` (one factor per layer), so ``J v = G_1^{-1} ... G_L^{-1} v``; each
    layer supplies products with its own inverse Jacobian
    (:meth:`~skivcnf.flows.blocks.FlowLayer.linearize_inverse`): a residual block's
    ``(I + dh)^{-1}`` is a Neumann series, which converges at rate ``Lip(h) <= c``. With a
    small ``n_terms`` and ``tol=None`` it is a fixed linear approximation of ``J`` (a
    preconditioner).

    Parameters
    ----------
    flow : ResidualFlow
    y : Tensor (batch, d)
    n_terms : int
        Neumann terms per block at most.
    tol : float or None
        Stop a block's series when a term's max-norm is below ``tol``.
    """

    def __init__(self, flow, y, n_terms, tol):
        self._factors = []
        z = y.detach()
        with torch.no_grad():
            for layer in flow.layers:
                self._factors.append(layer.linearize_inverse(z, n_terms, tol))
                z = layer(z)

    def jvp(self, v):
        """``J v``, ``v : Tensor (batch, d)``."""
        for factor in reversed(self._factors):
            v = factor.jvp(v)
        return v

    def vjp(self, u):
        """``u^T J``, ``u : Tensor (batch, d)``."""
        for factor in self._factors:
            u = factor.vjp(u)
        return u


class FlowJacobians:
    """A residual flow's Jacobians and their products, for :class:`~skivcnf.flows.ResidualFlow`.

    The host provides ``features``, ``layers`` (each a
    :class:`~skivcnf.flows.blocks.FlowLayer`) and ``as_input``; every method here composes the
    layers' own closed-form tangents or linearisations.
    """

    def jacobian(self, y):
        """Per-row Jacobian ``G(y) = dg/dy``, ``Tensor (batch, d, d)``; meant for small ``d``."""
        return self.forward_and_jacobian(y)[1].transpose(-1, -2)

    def forward_and_jacobian(self, y):
        """Latent ``x = g(y)``, the columns of ``G(y)`` and the exact ``log|det G(y)|``, per row.

        The identity's ``d`` columns are carried through every layer in closed form
        (:meth:`~skivcnf.flows.blocks.FlowLayer.forward_and_tangents`) and one ``slogdet``
        of the product is taken: cheaper than a ``slogdet`` per block, and as accurate in
        float32 (docs/benchmarks.md, "Speed"). Differentiable by ordinary autograd with
        respect to ``y`` and the weights; meant for tabular widths.

        Parameters
        ----------
        y : Tensor (batch, d)

        Returns
        -------
        x : Tensor (batch, d)
        columns : Tensor (batch, d, d)
            ``columns[b, j] = G(y_b) e_j``, i.e. ``G`` transposed.
        logdet : Tensor (batch,)
        """
        z = self.as_input(y)
        columns = torch.eye(self.features, dtype=z.dtype, device=z.device).expand(z.shape[0], -1, -1)
        for layer in self.layers:
            z, columns = layer.forward_and_tangents(z, columns)
        return z, columns, torch.linalg.slogdet(columns).logabsdet

    def forward_and_jvps(self, y, tangents, logdet=False):
        """Latent ``x = g(y)``, products ``G(y) t`` for stacked tangents, and optionally ``log|det G|``.

        Every layer is differentiated in closed form
        (:meth:`~skivcnf.flows.blocks.FlowLayer.forward_and_tangents`), so the result
        is differentiable by ordinary autograd with respect to ``y``, the tangents and
        the weights. With ``logdet=True`` the whole Jacobian is formed
        (:meth:`forward_and_jacobian`) and the tangents are multiplied by it.

        Parameters
        ----------
        y : Tensor (batch, d)
        tangents : Tensor (batch, k, d)
        logdet : bool, default=False

        Returns
        -------
        x : Tensor (batch, d)
        products : Tensor (batch, k, d)
            ``products[b, i] = G(y_b) tangents[b, i]``.
        logdet : Tensor (batch,) or None
        """
        if logdet:
            x, columns, total = self.forward_and_jacobian(y)
            return x, tangents @ columns, total
        z, t = self.as_input(y), tangents
        for layer in self.layers:
            z, t = layer.forward_and_tangents(z, t)
        return z, t, None

    def linearize(self, y):
        """Products with ``G(y)`` that reuse one graph (for solvers; no graph is returned).

        Returns a :class:`~skivcnf.flows.linearize.Linearization` whose ``value`` is
        ``g(y)`` and whose ``jvp``/``vjp`` take ``(batch, d)`` or stacked ``(k, batch, d)``.
        """
        return Linearization(self, self.as_input(y))

    def linearize_inverse(self, y, n_terms=_EXACT_NEUMANN_TERMS, tol=None):
        """Products with ``J(y) = G(y)^{-1}`` by a Neumann series in each block.

        ``tol=None`` with the default ``n_terms`` sums each series to ``eps ** 0.75`` of
        the dtype (exact products); a small ``n_terms`` with ``tol=None`` gives a fixed,
        cheap approximation. Returns an :class:`~skivcnf.flows.linearize.InverseLinearization`.
        """
        y = self.as_input(y)
        if tol is None and n_terms >= _EXACT_NEUMANN_TERMS:
            tol = default_tolerance(y.dtype)
        return InverseLinearization(self, y, n_terms, tol)
