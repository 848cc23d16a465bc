"""The affine layers of residual flows: ActNorm (per feature) and ``z -> W z + b`` with ``W`` in LU form (Glow).

A residual block moves a row by at most ``Lip(h) < 1`` times its own size, so a flow of
blocks learns a strong linear dependence between columns (a correlation of 0.8) only
after many steps, and one stopped early keeps the columns too independent
(docs/benchmarks.md, "Uncertainty"). A dense linear map learns it directly. ``W = L U``
with ``L`` unit lower triangular and ``U`` upper triangular with a positive diagonal
``exp(s)`` (Kingma & Dhariwal, 2018, "Glow", 3.2, without the permutation): invertible for
any parameters, ``log|det W| = sum(s)``, inverted by two triangular solves.
"""

import torch
from torch import nn

from .blocks import BlockInverse, FlowLayer
from .linearize import DiagonalProducts, MatrixProducts

__all__ = ["ActNorm", "InvertibleLinear", "STEP_SCALE"]

#: Default ``step_scale`` of :class:`InvertibleLinear` (docs/benchmarks.md, "Uncertainty": on the
#: AR(1) Gaussian, 1 left the flow's correlations near those of the blocks alone).
STEP_SCALE = 10.0


class InvertibleLinear(FlowLayer):
    """``z -> W z + b`` with ``W = L U``; the identity at initialisation.

    Parameters
    ----------
    features : int
        Dimension ``d``.
    step_scale : float, optional
        The factors are stored divided by ``step_scale`` (default :data:`STEP_SCALE`, 10):
        Adam's steps do not depend on a parameter's scale, so ``W`` then moves
        ``step_scale`` times faster than a residual block's weights at the same learning rate.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import InvertibleLinear
    >>> layer = InvertibleLinear(3).double()
    >>> with torch.no_grad():
    ...     _ = layer.lower.normal_(generator=torch.Generator().manual_seed(0))
    >>> z = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    >>> bool(torch.allclose(layer.inverse(layer(z)).solution, z))
    True
    >>> _, logdet = layer.forward_and_logdet(z)
    >>> bool(torch.allclose(logdet, torch.linalg.slogdet(layer.matrix())[1].expand(4)))
    True
    """

    def __init__(self, features, step_scale=None):
        super().__init__()
        step_scale = STEP_SCALE if step_scale is None else step_scale
        if not step_scale > 0:
            raise ValueError(f"step_scale must be positive, got {step_scale!r}.")
        self.step_scale = float(step_scale)
        self.lower = nn.Parameter(torch.zeros(features, features))
        self.upper = nn.Parameter(torch.zeros(features, features))
        self.log_diagonal = nn.Parameter(torch.zeros(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def factors(self):
        """``L`` (unit lower triangular) and ``U`` (upper triangular, diagonal ``exp(s)``), ``W = L U``."""
        k = self.step_scale
        lower = torch.tril(k * self.lower, -1) + torch.eye(self.lower.shape[0], dtype=self.lower.dtype,
                                                           device=self.lower.device)
        upper = torch.triu(k * self.upper, 1) + torch.diag(torch.exp(k * self.log_diagonal))
        return lower, upper

    def matrix(self):
        """``W``, ``Tensor (d, d)``."""
        lower, upper = self.factors()
        return lower @ upper

    def logdet(self):
        """``log|det W|`` (a 0-d tensor)."""
        return self.step_scale * self.log_diagonal.sum()

    def forward(self, z):
        return z @ self.matrix().T + self.bias

    @torch.no_grad()
    def inverse(self, x, tol=None, max_iter=None):
        """``z = U^{-1} L^{-1} (x - b)`` by two triangular solves (``tol`` and ``max_iter`` unused)."""
        lower, upper = self.factors()
        shifted = torch.linalg.solve_triangular(lower, (x - self.bias).T, upper=False, unitriangular=True)
        solution = torch.linalg.solve_triangular(upper, shifted, upper=True).T
        converged = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        return BlockInverse(solution, converged, 0, x.new_zeros(x.shape[0]))

    def forward_and_tangents(self, z, tangents):
        """Output and ``W t`` for stacked tangents ``(batch, k, d)``."""
        matrix = self.matrix()
        return z @ matrix.T + self.bias, tangents @ matrix.T

    def forward_tangents_and_logdet(self, z, tangents):
        """Output, ``W t`` and ``log|det W|`` repeated for every row."""
        out, products = self.forward_and_tangents(z, tangents)
        return out, products, self.logdet().expand(z.shape[0])

    def linearize_inverse(self, z, n_terms=None, tol=None):
        """Products with ``W^{-1}``, exact (``n_terms`` and ``tol`` unused)."""
        with torch.no_grad():
            return MatrixProducts(torch.linalg.inv(self.matrix()))


class ActNorm(FlowLayer):
    """Per-feature affine map ``z -> (z + bias) * exp(log_scale)``.

    Initialised from data by :meth:`initialize` so that its output has zero mean and unit
    variance on the first batch (Glow). Its log-determinant is ``sum(log_scale)`` for
    every row; it is inverted in closed form.

    Parameters
    ----------
    features : int
        Dimension ``d``.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ActNorm
    >>> norm = ActNorm(2).double()
    >>> z = torch.tensor([[1.0, 10.0], [3.0, 30.0]], dtype=torch.float64)
    >>> norm.initialize(z)  # mean 0 and variance 1 per feature on this batch
    >>> standard = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    >>> torch.allclose(norm(z), standard), torch.allclose(norm.inverse(norm(z)).solution, z)
    (True, True)
    >>> _, logdet = norm.forward_and_logdet(z)
    >>> [round(v, 4) for v in logdet.tolist()]  # -log(1) - log(10) for every row
    [-2.3026, -2.3026]
    """

    def __init__(self, features):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))

    @torch.no_grad()
    def initialize(self, z, eps=1e-6):
        """Set ``bias`` and ``log_scale`` so that ``forward(z)`` is standardised per feature."""
        mean = z.mean(dim=0)
        std = z.std(dim=0, unbiased=False) if z.shape[0] > 1 else torch.ones_like(mean)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std.clamp_min(eps)))

    def forward(self, z):
        return (z + self.bias) * torch.exp(self.log_scale)

    @torch.no_grad()
    def inverse(self, x, tol=None, max_iter=None):
        """``z = x * exp(-log_scale) - bias`` in closed form (``tol`` and ``max_iter`` unused).

        Returns a :class:`BlockInverse` with every row converged after 0 iterations.
        """
        solution = x * torch.exp(-self.log_scale) - self.bias
        converged = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        return BlockInverse(solution, converged, 0, x.new_zeros(x.shape[0]))

    def forward_and_tangents(self, z, tangents):
        """Output and ``exp(log_scale) * t`` for stacked tangents ``(batch, k, d)``."""
        return self(z), tangents * torch.exp(self.log_scale)

    def forward_tangents_and_logdet(self, z, tangents):
        """Output, scaled tangents and ``sum(log_scale)`` repeated for every row."""
        out, products = self.forward_and_tangents(z, tangents)
        return out, products, self.log_scale.sum().expand(z.shape[0])

    def linearize_inverse(self, z, n_terms=None, tol=None):
        """Products with the inverse Jacobian ``diag(exp(-log_scale))``, exact (``n_terms`` and ``tol`` unused)."""
        return DiagonalProducts(torch.exp(-self.log_scale))
