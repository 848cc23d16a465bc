"""Variational posteriors ``q(x^H)`` on the hidden part of the latent space (paper 3.5, app. C).

Every posterior produces :class:`GaussianParameters` for a batch of rows: a mean, a
log-scale and optionally Householder vectors, all of full width ``d``; only the hidden
coordinates of a row are used. A draw is ``x = mu + H_n ... H_1 (sigma * eps)`` with
``eps`` standard normal on the hidden coordinates and each ``H_i = I - 2 v v^T / |v|^2``
built from ``v`` restricted to the hidden coordinates, so the reflections act inside the
hidden subspace and leave the observed coordinates alone (Householder flow, Tomczak and
Welling). Reflections preserve volume: ``log q(x) = sum_H [log N(eps) - log sigma]``.

- :class:`GaussianPosterior`: one set of parameters per row (diagonal if
  ``n_reflections=0``), fitted row by row.
- :class:`InferenceNetwork`: amortised; an MLP maps the filled-in row and its mask to
  the parameters, for any mask.
- :func:`prior_parameters`: ``q = p0`` (the paper's "first iteration").
"""

import math
from typing import NamedTuple

import torch
from scipy.special import ndtri
from torch import nn

from .hidden_block import from_compact, hidden_layout
from .noise import sobol_uniform, standard_normal

__all__ = [
    "GaussianParameters",
    "GaussianPosterior",
    "InferenceNetwork",
    "log_density",
    "marginal_variance",
    "prior_parameters",
    "rsample",
]

_LOG_2PI = math.log(2 * math.pi)


class GaussianParameters(NamedTuple):
    """Parameters of a Gaussian posterior for a batch of rows.

    Attributes
    ----------
    mean : Tensor (batch, d)
    log_scale : Tensor (batch, d)
    reflections : Tensor (batch, n, d) or None
        Householder vectors (``None`` or ``n = 0``: diagonal covariance).

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import GaussianParameters, rsample
    >>> params = GaussianParameters(torch.ones(2, 3), torch.full((2, 3), -1.0))
    >>> params.mean.shape, params.reflections is None
    (torch.Size([2, 3]), True)
    >>> x, log_q = rsample(params, torch.ones(2, 3, dtype=torch.bool), 5, generator=torch.Generator().manual_seed(0))
    >>> x.shape, log_q.shape
    (torch.Size([5, 2, 3]), torch.Size([5, 2]))
    """

    mean: torch.Tensor
    log_scale: torch.Tensor
    reflections: torch.Tensor | None = None


def prior_parameters(batch, features, dtype=torch.float32, device=None):
    """``q = N(0, I)``, the base distribution itself.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import prior_parameters
    >>> params = prior_parameters(2, 3, dtype=torch.float64)
    >>> params.mean.shape, params.reflections
    (torch.Size([2, 3]), None)
    >>> bool((params.mean == 0).all() and (params.log_scale == 0).all())
    True
    """
    zeros = torch.zeros(batch, features, dtype=dtype, device=device)
    return GaussianParameters(zeros, zeros.clone(), None)


def _reflect(z, v, hidden):
    """Apply ``H = I - 2 v v^T / |v|^2`` with ``v`` restricted to the hidden entries."""
    v = torch.where(hidden, v, 0.0)
    norm2 = v.pow(2).sum(dim=-1, keepdim=True)
    coeff = 2 * (z * v).sum(dim=-1, keepdim=True) / norm2.clamp_min(torch.finfo(z.dtype).tiny)
    # A row whose v vanishes on its hidden entries gets no reflection rather than a NaN.
    return torch.where(norm2 > 0, z - coeff * v, z)


def log_density(params, hidden, x):
    """``log q(x^H)`` per row, for ``x : Tensor (..., batch, d)`` (hidden entries used).

    Householder reflections are their own inverses, so ``eps`` is recovered by applying
    them in reverse order and unscaling.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import log_density, prior_parameters
    >>> params = prior_parameters(1, 2, dtype=torch.float64)
    >>> hidden = torch.tensor([[True, False]])
    >>> x = torch.tensor([[0.0, 5.0]], dtype=torch.float64)  # the observed entry is ignored
    >>> [round(v, 4) for v in log_density(params, hidden, x).tolist()]  # log N(0; 0, 1)
    [-0.9189]
    """
    mean, log_scale, reflections = params
    z = torch.where(hidden, x - mean, 0.0)
    if reflections is not None:
        for i in reversed(range(reflections.shape[1])):
            z = _reflect(z, reflections[:, i], hidden)
    return _standard_log_density(z * torch.exp(-log_scale), log_scale, hidden)


def marginal_variance(params, hidden):
    """The variances of each row's hidden entries under its posterior: the diagonal of ``R diag(sigma^2) R^T``.

    Returns
    -------
    Tensor (batch, d)
        Zero on observed entries.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import GaussianParameters, marginal_variance
    >>> params = GaussianParameters(torch.zeros(1, 2), torch.log(torch.tensor([[2.0, 3.0]])))
    >>> marginal_variance(params, torch.tensor([[True, False]])).tolist()
    [[4.0, 0.0]]
    """
    mean, log_scale, reflections = params
    basis = torch.eye(mean.shape[-1], dtype=mean.dtype, device=mean.device).unsqueeze(1)  # (d, 1, d)
    z = torch.where(hidden, torch.exp(log_scale) * basis, 0.0)  # the columns of R diag(sigma), one per unit vector
    if reflections is not None:
        for i in range(reflections.shape[1]):
            z = _reflect(z, reflections[:, i], hidden)
    return z.pow(2).sum(dim=0)


def _standard_log_density(eps, log_scale, hidden):
    """``sum_H [log N(eps) - log sigma]``: the density of ``mu + R (sigma * eps)``, R orthogonal."""
    h = hidden.to(eps.dtype)
    return (h * (-0.5 * eps.pow(2) - 0.5 * _LOG_2PI - log_scale)).sum(dim=-1)


def rsample(params, hidden, n_samples, generator=None, stick_the_landing=False, antithetic=False, quasi_start=None):
    """Reparameterised draws of ``x^H`` and their log-densities.

    Parameters
    ----------
    params : GaussianParameters
    hidden : BoolTensor (batch, d)
    n_samples : int
    generator : torch.Generator or RowNoise, optional
    stick_the_landing : bool, default=False
        Evaluate ``log q`` with the parameters detached (only the path through ``x``
        carries gradient; Roeder et al. 2017). Same value and the same expected ELBO
        gradient, but the gradient vanishes draw by draw when ``q`` is the exact
        posterior, so fitting converges to it instead of jittering around it.
    antithetic : bool, default=False
        Draws in antithetic pairs: draw ``2k + 1`` mirrors draw ``2k`` about the mean
        (``n_samples`` must be even). Each draw still follows ``q``; a pair's mean cancels
        the part of an estimate that is linear in the noise.
    quasi_start : int, optional
        Randomised quasi-Monte Carlo noise: each row's hidden coordinates, in column order,
        take the normal quantiles of the Sobol points ``quasi_start, quasi_start + 1, ...``
        digitally shifted by the row's own bits (:func:`~.noise.sobol_uniform`; with
        ``antithetic``, ``n_samples / 2`` points and their mirrors). Each draw still follows
        ``q``; a row's draws cover it more evenly than independent ones, so weighted means
        have a smaller Monte Carlo error. Independent draws when None.

    Returns
    -------
    x : Tensor (n_samples, batch, d)
        Zero on observed entries; differentiable with respect to the parameters.
    log_q : Tensor (n_samples, batch)
        ``log q(x^H)`` over each row's hidden entries.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import GaussianPosterior, log_density, rsample
    >>> posterior = GaussianPosterior(2, 3, n_reflections=1, generator=torch.Generator().manual_seed(0)).double()
    >>> hidden = torch.tensor([[False, True, True], [True, False, False]])
    >>> params = posterior()
    >>> x, log_q = rsample(params, hidden, 5, generator=torch.Generator().manual_seed(1))
    >>> x.shape, log_q.shape
    (torch.Size([5, 2, 3]), torch.Size([5, 2]))
    >>> bool((x[:, ~hidden] == 0).all()), torch.allclose(log_q, log_density(params, hidden, x))
    (True, True)
    """
    mean, log_scale, reflections = params
    if antithetic and n_samples % 2:
        raise ValueError(f"antithetic draws come in pairs: n_samples must be even, got {n_samples}.")
    n_noise = n_samples // 2 if antithetic else n_samples
    if quasi_start is None:
        eps = standard_normal((n_noise, *mean.shape), generator, mean.dtype, mean.device)
    else:
        eps = _quasi_normal(n_noise, hidden, generator, quasi_start, mean.dtype)
    if antithetic:
        eps = torch.stack([eps, -eps], dim=1).reshape(n_samples, *mean.shape)
    eps = torch.where(hidden, eps, 0.0)
    z = torch.exp(log_scale) * eps
    if reflections is not None:
        for i in range(reflections.shape[1]):
            z = _reflect(z, reflections[:, i], hidden)
    x = torch.where(hidden, mean + z, 0.0)
    if stick_the_landing:
        detached = GaussianParameters(*(None if p is None else p.detach() for p in params))
        return x, log_density(detached, hidden, x)
    return x, _standard_log_density(eps, log_scale, hidden)


def _quasi_normal(n_points, hidden, generator, start, dtype):
    """Standard normals ``(n_points, batch, d)`` from each row's shifted Sobol points, on its hidden
    columns in order (zero elsewhere)."""
    order, valid = hidden_layout(hidden)
    u = sobol_uniform(n_points, hidden.sum(dim=1).cpu(), generator, start)[..., :order.shape[1]]
    compact = torch.as_tensor(ndtri(u), dtype=dtype, device=hidden.device)
    return from_compact(compact, order, valid, hidden.shape[1])


class GaussianPosterior(nn.Module):
    """Per-row Gaussian posteriors, diagonal or with a Householder-flow covariance.

    Parameters
    ----------
    n_rows, features : int
    n_reflections : int, default=0
        Householder reflections (0: diagonal Gaussian; the paper used 50 for images).
    init : GaussianParameters, optional
        Starting point (e.g. an inference network's output, whose reflections are used
        when their number matches); the prior by default.
    generator : torch.Generator, optional
        Initial Householder vectors (random, so that they are not degenerate).

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import GaussianPosterior
    >>> posterior = GaussianPosterior(2, 3, n_reflections=1, generator=torch.Generator().manual_seed(0))
    >>> params = posterior()  # one set of parameters per row
    >>> params.mean.shape, params.reflections.shape
    (torch.Size([2, 3]), torch.Size([2, 1, 3]))
    >>> sum(p.numel() for p in posterior.parameters())
    18
    """

    def __init__(self, n_rows, features, n_reflections=0, init=None, generator=None):
        super().__init__()
        if n_reflections < 0:
            raise ValueError(f"n_reflections must be non-negative, got {n_reflections!r}.")
        init = init if init is not None else prior_parameters(n_rows, features)
        self.mean = nn.Parameter(init.mean.detach().clone())
        self.log_scale = nn.Parameter(init.log_scale.detach().clone())
        if n_reflections and init.reflections is not None and init.reflections.shape[1] == n_reflections:
            self.reflections = nn.Parameter(init.reflections.detach().clone())
        elif n_reflections:
            v = torch.randn(n_rows, n_reflections, features, generator=generator)
            self.reflections = nn.Parameter(v.to(self.mean.dtype).to(self.mean.device))
        else:
            self.register_parameter("reflections", None)

    def forward(self, y=None, hidden=None):
        """The parameters (inputs are ignored: each row has its own)."""
        return GaussianParameters(self.mean, self.log_scale, self.reflections)


class InferenceNetwork(nn.Module):
    """Amortised posterior: an MLP from ``[filled row, mask]`` to Gaussian parameters.

    Hidden entries of the input row are replaced by ``fill_values`` (the paper's
    appendix C uses the training medians; the default, zeros, is the training mean of
    standardised columns), so the network sees any mask.

    Parameters
    ----------
    features : int
    hidden_features : tuple of int, default=(128, 128)
    n_reflections : int, default=0
        Householder vectors produced per row.
    fill_values : Tensor (features,), optional
        Values put in hidden entries; zeros (the mean of standardised data) by default.
    generator : torch.Generator, optional
        Source of the initial weights.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import InferenceNetwork
    >>> network = InferenceNetwork(3, hidden_features=(8,), generator=torch.Generator().manual_seed(0))
    >>> y = torch.tensor([[0.5, float("nan"), -1.0]])
    >>> params = network(y, torch.isnan(y))  # hidden entries are filled, NaN is fine
    >>> params.mean.shape, bool(torch.isfinite(params.mean).all())
    (torch.Size([1, 3]), True)
    >>> bool(params.mean.abs().max() < 0.1) and bool(params.log_scale.abs().max() < 0.1)  # starts near the prior
    True
    """

    def __init__(self, features, hidden_features=(128, 128), n_reflections=0, fill_values=None,
                 generator=None):
        super().__init__()
        self.features = features
        self.n_reflections = n_reflections
        dims = [2 * features, *hidden_features]
        layers = []
        for n_in, n_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(n_in, n_out, device="meta"), nn.ELU()]
        out = nn.Linear(dims[-1], features * (2 + n_reflections), device="meta")
        self.net = nn.Sequential(*layers, out).to_empty(device="cpu")
        self.register_buffer(
            "fill_values", torch.zeros(features) if fill_values is None else torch.as_tensor(fill_values).float()
        )
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator=None):
        """Initialise like ``torch.nn.Linear`` from ``generator``; the output starts at the prior."""
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
        last = self.net[-1]
        last.weight[: 2 * self.features].mul_(0.01)
        last.bias[: 2 * self.features].zero_()

    def forward(self, y, hidden):
        """Parameters for rows ``y : Tensor (batch, d)`` with mask ``hidden``."""
        filled = torch.where(hidden, self.fill_values.to(y.dtype), y)
        out = self.net(torch.cat([filled, hidden.to(y.dtype)], dim=-1))
        d = self.features
        mean, log_scale = out[:, :d], out[:, d: 2 * d]
        reflections = out[:, 2 * d:].reshape(-1, self.n_reflections, d) if self.n_reflections else None
        return GaussianParameters(mean, log_scale, reflections)
