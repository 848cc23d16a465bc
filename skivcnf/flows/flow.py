"""The residual flow: a stack of ActNorm and residual blocks with a standard normal base."""

import math
import threading
import warnings
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..exceptions import InversionWarning
from .blocks import FlowLayer, ResidualBlock, ResidualLayer
from .linear import ActNorm, InvertibleLinear
from .linearize import FlowJacobians, default_tolerance

__all__ = ["ResidualFlow", "FlowInverse", "EXACT_LOGDET_MAX_FEATURES"]

#: ``logdet="auto"`` computes exact log-determinants up to this many features. Measured
#: (``python -m benchmarks.run --section logdet``, 6 blocks of width 64, batch 128): a
#: training step with the exact log-det costs 2.1x / 3.4x / 6.0x / 9.2x the stochastic one
#: at d = 10 / 30 / 64 / 100. Up to 100 the exact path is kept for what it buys: no
#: variance in training, and exact importance weights for imputation, which the
#: stochastic estimator cannot give.
EXACT_LOGDET_MAX_FEATURES = 100

_LOG_2PI = math.log(2.0 * math.pi)
#: Per thread, the ``id`` of each flow inside a :meth:`ResidualFlow.cached_weights` (its
#: weights are in torch's parametrization cache until that thread's outermost context exits).
#: Per thread because threads share one model (``skivcnf.dask`` runs partitions in threads):
#: each keeps its own ``parametrize.cached()`` open, as before.
class _CachingFlows(threading.local):
    def __init__(self):
        self.ids = set()


_CACHING = _CachingFlows()


class FlowInverse(NamedTuple):
    """Result of :meth:`ResidualFlow.invert`.

    Attributes
    ----------
    solution : Tensor (batch, d)
        Data ``y`` with ``g(y) = x``.
    converged : BoolTensor (batch,)
        Whether every block's fixed point reached its tolerance for the row.
    n_iter : int
        Fixed-point iterations summed over blocks (the slowest row's).
    residual : Tensor (batch,)
        ``max |g(y) - x|`` per row, recomputed by a forward pass.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> result = flow.invert(x)
    >>> bool(result.converged.all()), result.solution.shape
    (True, torch.Size([4, 3]))
    >>> bool(result.residual.max() < 1e-10)
    True
    """

    solution: torch.Tensor
    converged: torch.Tensor
    n_iter: int
    residual: torch.Tensor


class ResidualFlow(FlowJacobians, nn.Module):
    """Invertible residual network (iResNet / Residual Flow) for vectors.

    The explicit direction is data -> latent: ``x = g(y)`` is a composition of residual
    blocks ``z -> z + h(z)`` (with optional ActNorm before each), so the log-likelihood
    of a complete row,

        ``log p(y) = log N(g(y); 0, I) + log|det dg/dy|``,

    takes one forward pass, and the IVCNF equality constraint ``g^H([y^O, y^H]) = x^H``
    is solved with the explicit map and its Jacobian. This direction is the cheap one for
    both: likelihood training needs no inversion, and in the first measurements (docs/method.rst: 6 blocks of
    width 128, d = 10-30) Newton on the explicit map solved every row in 2-4 iterations,
    where each inversion of the flow took 100-500 fixed-point steps per block. The price
    is that :meth:`sample` and :meth:`inverse` run a fixed point per block.

    The layers (:class:`~skivcnf.flows.blocks.FlowLayer`) each know their inverse,
    Jacobian-vector products and log-determinant, so every method below is one loop over
    them. The constructor stacks ActNorm and MLP blocks; :meth:`from_layers` composes any
    other layers (e.g. :func:`~skivcnf.flows.image_flow`'s convolutional blocks).

    Parameters
    ----------
    features : int
        Dimension ``d`` of a row.
    n_blocks : int, default=6
        Number of residual blocks.
    hidden_features : tuple of int, default=(64, 64)
        Hidden widths of each block's MLP ``h``; ``()`` makes ``h`` affine and the flow
        a Gaussian.
    lipschitz_coeff : float, default=0.9
        Bound ``c < 1`` on every ``Lip(h)``, enforced exactly.
    activation : {"lipswish", "elu"}, default="lipswish"
    actnorm : bool, default=True
        Put an ActNorm before each block (initialise it with :meth:`initialize`).
    linear : bool, default=False
        Start with an :class:`~skivcnf.flows.InvertibleLinear` map (the identity at
        initialisation), which learns linear dependence between columns faster than the
        blocks do.
    logdet : {"auto", "exact", "stochastic"}, default="auto"
        How :meth:`log_prob` gets ``log|det G|``: ``"auto"`` is exact up to
        ``EXACT_LOGDET_MAX_FEATURES`` features, stochastic above.
    n_exact_terms, geom_p : int, float
        Roulette settings of the stochastic estimator (see
        :func:`~skivcnf.flows.logdet.stochastic_block_logdet`).
    inverse_tol : float, optional
        Max-norm step at which a block's fixed-point inversion stops; ``None`` uses
        ``eps ** 0.75`` of the dtype.
    inverse_max_iter : int, default=1000
        Iteration cap of each block's fixed point.
    generator : torch.Generator, optional
        Source of the initial weights; the global RNG is not touched.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=2, generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.randn(5, 3, dtype=torch.float64)
    >>> torch.allclose(flow.inverse(flow(y)), y, atol=1e-10)
    True
    >>> flow.log_prob(y).shape
    torch.Size([5])
    """

    def __init__(self, features, n_blocks=6, hidden_features=(64, 64), lipschitz_coeff=0.9,
                 activation="lipswish", actnorm=True, linear=False, logdet="auto", n_exact_terms=2,
                 geom_p=0.5, inverse_tol=None, inverse_max_iter=1000, generator=None):
        super().__init__()
        if int(features) < 1 or int(n_blocks) < 1:
            raise ValueError(f"features and n_blocks must be positive, got {features}, {n_blocks}.")
        self._set_options(features, logdet, n_exact_terms, geom_p, inverse_tol, inverse_max_iter)
        layers = [InvertibleLinear(self.features)] if linear else []
        for _ in range(n_blocks):
            if actnorm:
                layers.append(ActNorm(self.features))
            layers.append(ResidualBlock(self.features, tuple(hidden_features), lipschitz_coeff,
                                        activation, generator=generator))
        self.layers = nn.ModuleList(layers)

    def _set_options(self, features, logdet, n_exact_terms, geom_p, inverse_tol, inverse_max_iter):
        if logdet not in ("auto", "exact", "stochastic"):
            raise ValueError(f"logdet must be 'auto', 'exact' or 'stochastic', got {logdet!r}.")
        self.features = int(features)
        self.logdet = logdet
        self.n_exact_terms = n_exact_terms
        self.geom_p = geom_p
        self.inverse_tol = inverse_tol
        self.inverse_max_iter = inverse_max_iter

    @classmethod
    def from_layers(cls, features, layers, *, logdet="auto", n_exact_terms=2, geom_p=0.5, inverse_tol=None,
                    inverse_max_iter=1000):
        """A flow composed of the given layers (e.g. convolutional blocks, :func:`~skivcnf.flows.image_flow`).

        Parameters
        ----------
        features : int
            Dimension ``d`` of a row; every layer maps ``(batch, d)`` to ``(batch, d)``.
        layers : sequence of FlowLayer
            In the data -> latent order.
        logdet, n_exact_terms, geom_p, inverse_tol, inverse_max_iter
            As in the constructor.

        Examples
        --------
        >>> import torch
        >>> from skivcnf.flows import ActNorm, ResidualBlock, ResidualFlow
        >>> gen = torch.Generator().manual_seed(0)
        >>> flow = ResidualFlow.from_layers(3, [ActNorm(3), ResidualBlock(3, (8,), generator=gen)]).double()
        >>> len(flow.blocks), flow.log_prob(torch.zeros(2, 3, dtype=torch.float64)).shape
        (1, torch.Size([2]))
        """
        layers = list(layers)
        if int(features) < 1 or not layers:
            raise ValueError(f"features must be positive and layers non-empty, got {features}, {len(layers)} layers.")
        bad = [type(layer).__name__ for layer in layers if not isinstance(layer, FlowLayer)]
        if bad:
            raise TypeError(f"every layer must be a FlowLayer, got {bad}.")
        # The constructor builds MLP blocks (drawing weights); bypass it rather than build and discard them.
        flow = cls.__new__(cls)
        nn.Module.__init__(flow)
        flow._set_options(features, logdet, n_exact_terms, geom_p, inverse_tol, inverse_max_iter)
        flow.layers = nn.ModuleList(layers)
        return flow

    # ------------------------------------------------------------------ helpers
    @property
    def blocks(self):
        """The residual blocks (MLP or convolutional), in the data -> latent order."""
        return [layer for layer in self.layers if isinstance(layer, ResidualLayer)]

    def _reference(self):
        return next(self.parameters())

    def as_input(self, y):
        """``y`` as a tensor of the flow's dtype and device; raises unless its shape is ``(batch, d)``.

        Examples
        --------
        >>> import torch
        >>> from skivcnf.flows import ResidualFlow
        >>> flow = ResidualFlow(3, n_blocks=1, generator=torch.Generator().manual_seed(0)).double()
        >>> flow.as_input([[1, 2, 3]]).dtype
        torch.float64
        >>> flow.as_input(torch.zeros(2, 4))
        Traceback (most recent call last):
            ...
        ValueError: expected a tensor of shape (batch, 3), got (2, 4).
        """
        ref = self._reference()
        y = torch.as_tensor(y, dtype=ref.dtype, device=ref.device)
        if y.ndim != 2 or y.shape[1] != self.features:
            raise ValueError(f"expected a tensor of shape (batch, {self.features}), got {tuple(y.shape)}.")
        return y

    def use_exact_logdet(self):
        """Whether :meth:`log_prob` uses the exact log-determinant."""
        return self.logdet == "exact" or (
            self.logdet == "auto" and self.features <= EXACT_LOGDET_MAX_FEATURES
        )

    @contextmanager
    def cached_weights(self, differentiable=True):
        """Compute every spectrally normalised weight once for the enclosed calls.

        For inference and solvers, which call the flow many times with fixed weights. A
        nested ``cached_weights`` reuses the outer one's weights. With
        ``differentiable=False`` they are computed without their graph: for code that never
        differentiates with respect to the weights (drawing completions; gradients with
        respect to the inputs still flow).
        """
        active = _CACHING.ids
        if id(self) in active:
            # Nested in this thread: the outer context's weights are cached already; walking
            # the modules again cost 1-2% of a breast cancer fit (paired runs).
            yield
            return
        with parametrize.cached():
            with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
                for module in self.modules():
                    if parametrize.is_parametrized(module, "weight"):
                        module.weight  # noqa: B018 - fills the cache outside any torch.func transform
            active.add(id(self))
            try:
                yield
            finally:
                active.discard(id(self))

    # ------------------------------------------------------------------ maps
    def forward(self, y):
        """Latent ``x = g(y)``. ``y : Tensor (batch, d)``."""
        z = y
        for layer in self.layers:
            z = layer(z)
        return z

    def forward_and_logdet(self, y, generator=None, method=None):
        """Latent ``x = g(y)`` and ``log|det dg/dy|`` per row.

        Parameters
        ----------
        y : Tensor (batch, d)
        generator : torch.Generator, optional
            Used only by the stochastic estimator.
        method : {None, "exact", "stochastic"}
            Overrides the flow's ``logdet`` setting for this call.

        Returns
        -------
        x : Tensor (batch, d)
        logdet : Tensor (batch,)
        """
        y = self.as_input(y)
        if method not in (None, "exact", "stochastic"):
            raise ValueError(f"method must be None, 'exact' or 'stochastic', got {method!r}.")
        if method is None:
            method = "exact" if self.use_exact_logdet() else "stochastic"
        if method == "exact":
            x, _, logdet = self.forward_and_jacobian(y)
            return x, logdet
        z = y
        logdet = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        for layer in self.layers:
            z, layer_logdet = layer.forward_and_logdet(z, method, generator, self.n_exact_terms, self.geom_p)
            logdet = logdet + layer_logdet
        return z, logdet

    def log_prob(self, y, generator=None, method=None):
        """``log p(y)`` per row, ``Tensor (batch,)`` (an unbiased estimate if stochastic).

        ``method`` overrides the flow's ``logdet`` setting (see :meth:`forward_and_logdet`).
        """
        x, logdet = self.forward_and_logdet(y, generator, method)
        return self.base_log_prob(x) + logdet

    @staticmethod
    def base_log_prob(x):
        """``log N(x; 0, I)`` over the last dimension."""
        return -0.5 * (x.pow(2).sum(dim=-1) + x.shape[-1] * _LOG_2PI)

    def invert(self, x, tol=None, max_iter=None):
        """Data ``y = f(x) = g^{-1}(x)`` with a convergence record; never warns.

        Parameters
        ----------
        x : Tensor (batch, d)
        tol : float, optional
            Defaults to ``inverse_tol``.
        max_iter : int, optional
            Defaults to ``inverse_max_iter``.

        Returns
        -------
        FlowInverse
        """
        x = self.as_input(x)
        tol = tol if tol is not None else (
            self.inverse_tol if self.inverse_tol is not None else default_tolerance(x.dtype)
        )
        max_iter = max_iter if max_iter is not None else self.inverse_max_iter
        with torch.no_grad(), self.cached_weights():
            z = x
            converged = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            n_iter = 0
            for layer in reversed(self.layers):
                result = layer.inverse(z, tol, max_iter)
                z, n_iter = result.solution, n_iter + result.n_iter
                converged &= result.converged
            residual = (self(z) - x).abs().amax(dim=1)
        converged &= torch.isfinite(residual)
        return FlowInverse(z, converged, n_iter, residual)

    def inverse(self, x, tol=None, max_iter=None):
        """Data ``y = g^{-1}(x)``; warns with :class:`InversionWarning` for unconverged rows.

        ``x : Tensor (batch, d)``; see :meth:`invert` for the record.
        """
        result = self.invert(x, tol, max_iter)
        n_bad = int((~result.converged).sum())
        if n_bad:
            warnings.warn(
                f"Fixed-point inversion did not converge for {n_bad} of {x.shape[0]} rows "
                f"(largest residual {float(result.residual.max()):.3g}); their values are "
                "the last iterate. Use invert() for per-row flags.",
                InversionWarning,
                stacklevel=2,
            )
        return result.solution

    def sample(self, n, generator=None):
        """Draw ``n`` rows: ``x ~ N(0, I)``, ``y = g^{-1}(x)``. Returns ``Tensor (n, d)``."""
        ref = self._reference()
        x = torch.randn(n, self.features, generator=generator, dtype=ref.dtype, device=ref.device)
        return self.inverse(x)

    # ------------------------------------------------------------------ set-up and checks
    @torch.no_grad()
    def initialize(self, y):
        """Data-dependent initialisation of every layer (ActNorm), in order, from a batch ``y``."""
        z = self.as_input(y)
        for layer in self.layers:
            layer.initialize(z)
            z = layer(z)
        return self

    def lipschitz_bounds(self):
        """Exact bound on ``Lip(h)`` of every block, ``list of float``."""
        return [block.lipschitz_bound() for block in self.blocks]
