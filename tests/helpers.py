"""Helpers shared by the tests (fixtures live in conftest.py)."""

import numpy as np
import torch
from sklearn.datasets import load_diabetes

from skivcnf.flows import LipschitzLinear, ResidualFlow

#: An imputer small enough for contract tests (one block of width 8, two epochs, four draws):
#: they are about plumbing, not accuracy.
TINY_IMPUTER = {"n_blocks": 1, "hidden_layer_sizes": (8,), "max_epochs": 2, "n_draws": 4, "n_train_draws": 2,
                "early_stopping": False, "random_state": 0}


def diabetes_with_holes(n_rows=80, rate=0.2, seed=0):
    """The first rows of scikit-learn's diabetes table (times 10), with entries missing at random.

    Returns ``X, X_missing, mask, y``: the complete table, the table with NaN where ``mask``,
    and the regression target.
    """
    data = load_diabetes()
    X = data.data[:n_rows] * 10
    mask = np.random.default_rng(seed).random(X.shape) < rate
    return X, np.where(mask, np.nan, X), mask, data.target[:n_rows]


def saturate(module, generator, scale=10.0):
    """Blow up every raw weight so the spectral bounds are active (``Lip(h)`` at ``c``).

    A freshly initialised block has a small ``h``; tests of inverses and log-determinants
    are only convincing when the residual branch is as strong as the bound allows.
    """
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, LipschitzLinear):
                raw = layer.parametrizations.weight.original
                raw.normal_(generator=generator).mul_(scale)
                layer.bias.normal_(generator=generator)
    return module


def make_flow(features, generator, saturated=True, **kwargs):
    flow = ResidualFlow(features, generator=generator, **kwargs).double()
    if saturated:
        saturate(flow, generator)
    return flow


def aligned(block, generator, noise=0.1):
    """Set a block's raw weights near stacked identities so that ``dh/dz`` is near ``c I``.

    Then ``log det(I + dh/dz)`` is about ``d log(1 + c)``, far from 0, which gives the
    stochastic estimators a target that the tests can resolve.
    """
    with torch.no_grad():
        for layer in block.modules():
            if isinstance(layer, LipschitzLinear):
                raw = layer.parametrizations.weight.original
                n_out, n_in = raw.shape
                eye = torch.eye(max(n_out, n_in), dtype=raw.dtype)
                raw.copy_(eye[:n_out, :n_in] + eye[:n_out, :n_in].roll(n_in, dims=0))
                raw.add_(noise * torch.randn(raw.shape, generator=generator, dtype=raw.dtype))
                layer.bias.zero_()
    return block


def affine_gaussian(flow):
    """Mean and covariance of the Gaussian that an affine flow (``hidden_features=()``) defines.

    Computed from the weights, independently of the flow's Jacobian code: ``g(y) = A y + b``
    so ``y ~ N(-A^{-1} b, (A^T A)^{-1})``.
    """
    from skivcnf.flows import ActNorm, InvertibleLinear

    d = flow.features
    eye = torch.eye(d, dtype=torch.float64)
    a = eye.clone()
    for layer in flow.layers:
        if isinstance(layer, ActNorm):
            a = torch.diag(layer.log_scale.exp()) @ a
        elif isinstance(layer, InvertibleLinear):
            lower, upper = layer.factors()  # W = L U, checked against the layer's own products in test_linear
            a = lower @ upper @ a
        else:
            (linear,) = layer.net
            a = (eye + linear.weight) @ a
    a = a.detach()
    b = flow(torch.zeros(1, d, dtype=torch.float64))[0].detach()
    return -torch.linalg.solve(a, b), torch.linalg.inv(a.T @ a)


def gaussian_conditional(mean, cov, y, hidden_row):
    """Mean and covariance of ``y^H | y^O`` and ``log p(y^O)`` for one row.

    A row with nothing observed gets the marginal law and ``log p(y^O) = 0`` (the density
    of no coordinates); one with nothing hidden gets empty moments and ``log p(y)``.
    """
    h, o = hidden_row, ~hidden_row
    gain = cov[h][:, o] @ torch.linalg.inv(cov[o][:, o])
    cond_mean = mean[h] + gain @ (y[o] - mean[o])
    cond_cov = cov[h][:, h] - gain @ cov[o][:, h]
    if not bool(o.any()):
        return cond_mean, cond_cov, 0.0
    marginal = torch.distributions.MultivariateNormal(mean[o], cov[o][:, o]).log_prob(y[o])
    return cond_mean, cond_cov, marginal.item()
