"""The layer contract of a residual flow, and its residual blocks.

Every layer maps in the data -> latent direction (``g``) and is a :class:`FlowLayer`: it
knows its own inverse, Jacobian-vector products, log-determinant and inverse-Jacobian
products, so :class:`~skivcnf.flows.ResidualFlow` composes layers in one loop without
asking which kind each is (as zuko and nflows compose transforms).
"""

import math
from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import nn

from .linearize import NeumannInverse
from .lipschitz import LipschitzLinear, activation_and_derivative, make_activation
from .logdet import stochastic_block_logdet

__all__ = ["FlowLayer", "ResidualLayer", "ResidualBlock", "BlockInverse", "LOGDET_ESTIMATES"]

#: How a layer's log-determinant is computed: exactly, or by an unbiased estimate.
LOGDET_ESTIMATES = ("exact", "stochastic")


class BlockInverse(NamedTuple):
    """Result of inverting one layer (:meth:`FlowLayer.inverse`).

    Attributes
    ----------
    solution : Tensor (batch, d)
        The layer's input ``z`` with ``layer(z) = x``.
    converged : BoolTensor (batch,)
        Whether the row's last fixed-point step was at most ``tol`` (always true for a
        layer inverted in closed form).
    n_iter : int
        Fixed-point iterations run (the slowest row's; 0 in closed form).
    residual : Tensor (batch,)
        Max-norm of the last step (0 in closed form); for a residual block the residual
        ``|z + h(z) - x|`` is at most ``c`` times it.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualBlock
    >>> block = ResidualBlock(3, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> result = block.inverse(x, tol=1e-12, max_iter=200)
    >>> bool(result.converged.all()), result.solution.shape
    (True, torch.Size([4, 3]))
    >>> torch.allclose(block(result.solution), x, atol=1e-10)
    True
    """

    solution: torch.Tensor
    converged: torch.Tensor
    n_iter: int
    residual: torch.Tensor


class FlowLayer(nn.Module, ABC):
    """One invertible layer ``z -> g_l(z)`` of a residual flow, in the data -> latent direction.

    The contract :class:`~skivcnf.flows.ResidualFlow` relies on. A layer implements
    :meth:`forward`, :meth:`inverse`, :meth:`forward_and_tangents`,
    :meth:`forward_tangents_and_logdet` and :meth:`linearize_inverse`; it may override
    :meth:`initialize` (data-dependent set-up, nothing by default) and
    :meth:`forward_and_logdet` (exact by default; a layer with a cheaper unbiased
    estimate serves ``method="stochastic"`` with it).

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ActNorm, FlowLayer, ResidualBlock
    >>> layers = [ActNorm(2).double(), ResidualBlock(2, (8,), generator=torch.Generator().manual_seed(0)).double()]
    >>> all(isinstance(layer, FlowLayer) for layer in layers)
    True
    >>> z = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> for layer in layers:  # one loop composes them, whatever each layer is
    ...     z, logdet = layer.forward_and_logdet(z)
    >>> z.shape, logdet.shape
    (torch.Size([4, 2]), torch.Size([4]))
    """

    @abstractmethod
    def forward(self, z):
        """The layer's output, ``Tensor (batch, d)``."""

    @abstractmethod
    def inverse(self, x, tol, max_iter):
        """The input ``z`` with ``layer(z) = x`` and a convergence record, :class:`BlockInverse`.

        ``tol`` and ``max_iter`` steer a fixed-point inversion; a layer inverted in closed
        form ignores them. Computed without a graph.
        """

    @abstractmethod
    def forward_and_tangents(self, z, tangents):
        """Output and the Jacobian-vector products of stacked tangents ``(batch, k, d)``."""

    @abstractmethod
    def forward_tangents_and_logdet(self, z, tangents):
        """Output, Jacobian-vector products of ``tangents`` and the exact ``log|det|`` per row."""

    @abstractmethod
    def linearize_inverse(self, z, n_terms, tol):
        """Products with the inverse of the layer's Jacobian at ``z`` (an object with ``jvp`` and ``vjp``).

        ``n_terms`` and ``tol`` bound a Neumann series where the layer needs one (see
        :class:`~skivcnf.flows.linearize.NeumannInverse`).
        """

    def initialize(self, z):
        """Data-dependent initialisation from a batch ``z``; nothing by default."""

    def forward_and_logdet(self, z, method="exact", generator=None, n_exact_terms=2, geom_p=0.5):
        """Output and ``log|det|`` of the layer's Jacobian per row, ``Tensor (batch,)``.

        Parameters
        ----------
        z : Tensor (batch, d)
        method : {"exact", "stochastic"}, default="exact"
            The stochastic estimate is unbiased; a layer whose exact log-determinant is
            cheap returns it for both.
        generator, n_exact_terms, geom_p
            Settings of the stochastic estimator (see
            :func:`~skivcnf.flows.logdet.stochastic_block_logdet`).
        """
        if method not in LOGDET_ESTIMATES:
            raise ValueError(f"method must be one of {LOGDET_ESTIMATES}, got {method!r}.")
        out, _, logdet = self.forward_tangents_and_logdet(z, z.new_zeros(z.shape[0], 0, z.shape[1]))
        return out, logdet


class ResidualLayer(FlowLayer):
    """``z -> z + h(z)`` with ``Lip(h) <= lipschitz_coeff < 1``: what every residual block shares.

    A subclass builds ``self.net``, a sequence of Lipschitz linear maps (modules with
    ``spectral_norm()`` and ``jacobian_product(v)``, the map without its bias) and
    1-Lipschitz activations, and sets ``features`` (``d``) and ``branch_shape``, the shape
    ``net`` takes a row in (``(d,)`` for an MLP, ``(C, H, W)`` for convolutions). The
    fixed-point inverse, the closed-form tangents, both log-determinants and the Neumann
    inverse are then the same for every branch.
    """

    features: int
    branch_shape: tuple

    def residual(self, z):
        """The residual branch ``h(z)`` for ``z : Tensor (..., d)`` (one row or any stack of rows)."""
        return self.net(z.reshape(-1, *self.branch_shape)).reshape(z.shape)

    def forward(self, z):
        return z + self.residual(z)

    def residual_and_tangents(self, z, tangents):
        """``h(z)`` and the Jacobian-vector products ``(dh/dz) t`` of stacked tangents, in closed form.

        Each tangent goes through ``W_L D_{L-1} W_{L-1} ... D_1 W_1`` (``D_i`` the
        activations' derivatives) as one batched product per layer over all rows and
        tangents (a GEMM for an MLP, a convolution of ``batch * k`` images for a conv
        branch). Ordinary (first-order) autograd differentiates the result with respect to
        ``z``, the tangents and the weights, at a fraction of the cost of ``torch.func``
        transforms and their double backward.

        Parameters
        ----------
        z : Tensor (batch, d)
        tangents : Tensor (batch, k, d)

        Returns
        -------
        residual : Tensor (batch, d)
        products : Tensor (batch, k, d)
        """
        batch, k = tangents.shape[:2]
        out = z.reshape(batch, *self.branch_shape)
        t = tangents.reshape(batch, k, *self.branch_shape)
        for layer in self.net:
            if hasattr(layer, "jacobian_product"):
                out = layer(out)
                t = layer.jacobian_product(t)
            else:
                out, slope = activation_and_derivative(layer, out)
                t = slope.unsqueeze(1) * t
        return out.reshape(batch, self.features), t.reshape(batch, k, self.features)

    def forward_and_tangents(self, z, tangents):
        """Block output and the Jacobian-vector products ``(I + dh/dz) t`` of stacked tangents.

        See :meth:`residual_and_tangents`.

        Parameters
        ----------
        z : Tensor (batch, d)
        tangents : Tensor (batch, k, d)
            ``k`` tangent vectors per row.

        Returns
        -------
        out : Tensor (batch, d)
        products : Tensor (batch, k, d)
        """
        h, products = self.residual_and_tangents(z, tangents)
        return z + h, tangents + products

    def forward_and_jacobian(self, z):
        """Block output and its per-row Jacobian ``I + dh/dz``, ``Tensor (batch, d, d)``.

        See :meth:`forward_and_tangents` (here the tangents are the identity).
        """
        eye = torch.eye(self.features, dtype=z.dtype, device=z.device).expand(z.shape[0], -1, -1)
        out, products = self.forward_and_tangents(z, eye)
        return out, products.transpose(-1, -2)

    def forward_tangents_and_logdet(self, z, tangents):
        """Output, ``(I + dh/dz) t`` for stacked tangents and the exact ``log|det(I + dh/dz)|``.

        The per-row Jacobian is formed (:meth:`forward_and_jacobian`, ``d`` tangents per
        row) for its ``slogdet`` and the tangents are carried through it; meant for
        tabular widths (``d <= 100``).
        """
        out, jacobian = self.forward_and_jacobian(z)
        logdet = torch.linalg.slogdet(jacobian).logabsdet
        return out, tangents @ jacobian.transpose(-1, -2), logdet

    def forward_and_logdet(self, z, method="exact", generator=None, n_exact_terms=2, geom_p=0.5):
        """Output and ``log|det(I + dh/dz)|`` per row: exact, or the Residual Flows estimate.

        See :meth:`FlowLayer.forward_and_logdet`; ``"stochastic"`` is
        :func:`~skivcnf.flows.logdet.stochastic_block_logdet`.
        """
        if method == "stochastic":
            return stochastic_block_logdet(self, z, generator, n_exact_terms, geom_p)
        return super().forward_and_logdet(z, method)

    def linearize_inverse(self, z, n_terms, tol):
        """Products with ``(I + dh/dz)^{-1}`` at ``z`` by the Neumann series ``sum_j (-dh/dz)^j``."""
        return NeumannInverse(self.residual, z, n_terms, tol)

    def lipschitz_bound(self):
        """Exact upper bound on ``Lip(h)``: the product of the linear maps' certified operator norms."""
        return math.prod(layer.spectral_norm() for layer in self.net if hasattr(layer, "spectral_norm"))

    @torch.no_grad()
    def inverse(self, x, tol, max_iter):
        """Solve ``z + h(z) = x`` for ``z`` by the fixed point ``z <- x - h(z)``.

        The map is a contraction of rate ``Lip(h) <= c``, so the iteration converges for
        every row; rows stop updating once their step is at most ``tol``.

        Parameters
        ----------
        x : Tensor (batch, d)
        tol : float
            Max-norm step below which a row has converged.
        max_iter : int
            Iteration cap.

        Returns
        -------
        BlockInverse
        """
        z = x - self.residual(x)
        step = torch.full(x.shape[:1], float("inf"), dtype=x.dtype, device=x.device)
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        n_iter = 0
        while n_iter < max_iter and bool(active.any()):
            n_iter += 1
            idx = active.nonzero().squeeze(1)
            z_new = x[idx] - self.residual(z[idx])
            step_idx = (z_new - z[idx]).abs().amax(dim=1)
            z[idx] = z_new
            step[idx] = step_idx
            # A NaN step compares False: such a row stops and is reported unconverged.
            active[idx] = step_idx > tol
        return BlockInverse(z, step <= tol, n_iter, step)


class ResidualBlock(ResidualLayer):
    """``z -> z + h(z)`` with ``h`` an MLP whose Lipschitz constant is at most ``lipschitz_coeff``.

    Every linear layer of ``h`` has spectral norm at most ``lipschitz_coeff ** (1 / L)``
    (``L`` linear layers) and the activations are 1-Lipschitz, so
    ``Lip(h) <= lipschitz_coeff < 1`` and the block is a bi-Lipschitz bijection, inverted
    by the fixed point ``z <- x - h(z)`` (everything but the branch is :class:`ResidualLayer`'s).

    Parameters
    ----------
    features : int
        Dimension ``d`` of the input.
    hidden_features : tuple of int
        Widths of ``h``'s hidden layers. An empty tuple makes ``h`` affine (a Gaussian
        flow, used as an oracle in the tests).
    lipschitz_coeff : float
        Bound ``c`` on ``Lip(h)``, in ``(0, 1)``.
    activation : {"lipswish", "elu"}
        1-Lipschitz activation between linear layers.
    generator : torch.Generator, optional
        Source of randomness for the initial weights.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualBlock
    >>> block = ResidualBlock(2, hidden_features=(8,), lipschitz_coeff=0.5,
    ...                       generator=torch.Generator().manual_seed(0)).double()
    >>> block.lipschitz_bound() <= 0.5 + 1e-12
    True
    >>> z = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> out, jac = block.forward_and_jacobian(z)
    >>> out.shape, jac.shape
    (torch.Size([4, 2]), torch.Size([4, 2, 2]))
    >>> torch.allclose(out, block(z))
    True
    >>> _, logdet = block.forward_and_logdet(z)
    >>> torch.allclose(logdet, torch.linalg.slogdet(jac).logabsdet)
    True
    """

    def __init__(self, features, hidden_features=(64, 64), lipschitz_coeff=0.9,
                 activation="lipswish", generator=None):
        super().__init__()
        check_lipschitz_coeff(lipschitz_coeff)
        dims = [features, *hidden_features, features]
        n_linear = len(dims) - 1
        per_layer = lipschitz_coeff ** (1.0 / n_linear)
        layers = []
        for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(LipschitzLinear(n_in, n_out, per_layer, generator=generator))
            if i < n_linear - 1:
                layers.append(make_activation(activation))
        self.features = features
        self.branch_shape = (features,)
        self.lipschitz_coeff = lipschitz_coeff
        self.net = nn.Sequential(*layers)


def check_lipschitz_coeff(lipschitz_coeff):
    """Raise a ValueError unless ``0 < lipschitz_coeff < 1``."""
    if not 0 < lipschitz_coeff < 1:
        raise ValueError(f"lipschitz_coeff must lie in (0, 1), got {lipschitz_coeff!r}.")
