"""Lipschitz-constrained building blocks: exact spectral normalisation and LipSwish.

A residual block ``z -> z + h(z)`` is invertible when ``Lip(h) < 1``. With 1-Lipschitz
activations, ``Lip(h)`` is bounded by the product of the spectral norms of ``h``'s linear
layers, so each layer's weight is rescaled to a spectral norm of at most ``c ** (1 / L)``
(``L`` layers), which makes the product at most ``c``.

The norm is computed exactly (``torch.linalg.matrix_norm(W, 2)``, one SVD per layer and
step) rather than by power iteration: at tabular widths it costs about the same, and one
power iteration per step was measured to overshoot the bound by 11%, which voids
invertibility.
"""

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["SpectralNormBound", "LipschitzLinear", "LipSwish", "make_activation"]


class SpectralNormBound(nn.Module):
    """Parametrisation ``W -> W * min(1, bound / ||W||_2)`` with the exact spectral norm.

    Weights already inside the bound are left unchanged (the soft normalisation of
    Residual Flows), so the constraint does not shrink every layer to the bound.

    Parameters
    ----------
    bound : float
        Largest spectral norm allowed, ``> 0``.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import SpectralNormBound
    >>> weight = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    >>> bounded = SpectralNormBound(1.0)(weight)  # rescaled to spectral norm 1
    >>> round(float(torch.linalg.matrix_norm(bounded, ord=2)), 6)
    1.0
    >>> torch.equal(SpectralNormBound(5.0)(weight), weight)  # already inside the bound
    True
    """

    def __init__(self, bound):
        super().__init__()
        if not bound > 0:
            raise ValueError(f"bound must be positive, got {bound!r}.")
        self.bound = float(bound)

    def forward(self, weight):
        sigma = torch.linalg.matrix_norm(weight, ord=2)
        return weight * (self.bound / torch.clamp(sigma, min=self.bound))


class LipschitzLinear(nn.Module):
    """A linear layer whose weight has spectral norm at most ``bound``.

    Parameters are created empty and initialised by :meth:`reset_parameters` with an
    explicit generator, so building a flow never touches torch's global random state.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the input and output.
    bound : float
        Spectral-norm bound of the weight.
    generator : torch.Generator, optional
        Source of randomness for the initial weights.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import LipschitzLinear
    >>> layer = LipschitzLinear(4, 3, bound=0.5, generator=torch.Generator().manual_seed(0))
    >>> layer(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    >>> layer.bound, layer.spectral_norm() <= 0.5 + 1e-6
    (0.5, True)
    """

    def __init__(self, in_features, out_features, bound, generator=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.reset_parameters(generator)
        parametrize.register_parametrization(self, "weight", SpectralNormBound(bound))

    @property
    def bound(self):
        """The spectral-norm bound enforced on the weight."""
        return self.parametrizations.weight[0].bound

    def reset_parameters(self, generator=None):
        """Initialise as ``torch.nn.Linear`` does, from ``generator``."""
        limit = 1.0 / math.sqrt(self.in_features)
        weight = self.weight if not parametrize.is_parametrized(self, "weight") else (
            self.parametrizations.weight.original
        )
        with torch.no_grad():
            weight.uniform_(-limit, limit, generator=generator)
            self.bias.uniform_(-limit, limit, generator=generator)

    def spectral_norm(self):
        """Exact spectral norm of the (normalised) weight, as a float."""
        with torch.no_grad():
            return float(torch.linalg.matrix_norm(self.weight, ord=2))

    def forward(self, z):
        return nn.functional.linear(z, self.weight, self.bias)

    def jacobian_product(self, v):
        """``W v`` without the bias (the layer's Jacobian) for ``v : Tensor (..., in_features)``."""
        return v @ self.weight.T

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bound={self.bound:.4g}"


class LipSwish(nn.Module):
    """``x * sigmoid(beta * x) / 1.1``, 1-Lipschitz for every ``beta > 0``.

    The derivative of ``x * sigmoid(beta * x)`` peaks at about 1.0998 whatever ``beta``,
    hence the division by 1.1 (Chen et al., Residual Flows). ``beta`` is learned through a
    softplus so that it stays positive.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import LipSwish
    >>> act = LipSwish().double()
    >>> x = torch.linspace(-6.0, 6.0, 121, dtype=torch.float64)
    >>> act(x).shape, bool(act.derivative(x).abs().max() <= 1.0)
    (torch.Size([121]), True)
    >>> round(float(act(torch.tensor(1.0, dtype=torch.float64)).detach()), 4)  # sigmoid(1) / 1.1
    0.6646
    """

    def __init__(self):
        super().__init__()
        # softplus(0.5413) = 1.0: start from the ordinary swish.
        self.raw_beta = nn.Parameter(torch.tensor(0.5413))

    def forward(self, x):
        beta = nn.functional.softplus(self.raw_beta)
        return x * torch.sigmoid(beta * x) / 1.1

    def derivative(self, x):
        """Elementwise ``d forward / dx`` (differentiable), for closed-form Jacobians."""
        return self.forward_and_derivative(x)[1]

    def forward_and_derivative(self, x):
        """``forward(x)`` and its elementwise derivative, sharing one sigmoid (differentiable)."""
        beta = nn.functional.softplus(self.raw_beta)
        s = torch.sigmoid(beta * x)
        return x * s / 1.1, (s + beta * x * s * (1 - s)) / 1.1


def activation_and_derivative(activation, x):
    """A 1-Lipschitz activation module's output at ``x`` and its elementwise derivative (differentiable)."""
    if isinstance(activation, LipSwish):
        return activation.forward_and_derivative(x)
    if isinstance(activation, nn.ELU):
        return activation(x), torch.where(x > 0, torch.ones_like(x), activation.alpha * torch.exp(x.clamp(max=0)))
    raise TypeError(f"no closed-form derivative for activation {type(activation).__name__}.")


def make_activation(name):
    """Return a fresh 1-Lipschitz activation module: ``"lipswish"`` or ``"elu"``."""
    if name == "lipswish":
        return LipSwish()
    if name == "elu":
        return nn.ELU()
    raise ValueError(f"activation must be 'lipswish' or 'elu', got {name!r}.")
