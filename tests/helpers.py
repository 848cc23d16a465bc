"""Helpers shared by the tests (fixtures live in conftest.py)."""

import torch

from skivcnf.flows import LipschitzLinear, ResidualFlow


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
