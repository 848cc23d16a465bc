import pytest
import torch

from skivcnf.flows import LipschitzLinear, LipSwish, ResidualBlock, SpectralNormBound
from skivcnf.flows.lipschitz import activation_and_derivative, make_activation

from .helpers import saturate


def test_spectral_norm_bound_rescales_only_above_the_bound(generator):
    param = SpectralNormBound(0.7)
    big = torch.randn(6, 4, generator=generator, dtype=torch.float64) * 5
    small = big / torch.linalg.matrix_norm(big, 2) * 0.3
    assert torch.linalg.matrix_norm(param(big), 2).item() == pytest.approx(0.7, abs=1e-12)
    torch.testing.assert_close(param(small), small)


def test_spectral_norm_bound_rejects_non_positive():
    with pytest.raises(ValueError, match="bound"):
        SpectralNormBound(0.0)


def test_lipschitz_linear_holds_bound_after_raw_weight_change(generator):
    layer = LipschitzLinear(5, 7, bound=0.8, generator=generator).double()
    saturate(layer, generator)
    assert layer.spectral_norm() <= 0.8 + 1e-12


@pytest.mark.parametrize("raw_beta", [-3.0, 0.0, 0.5413, 3.0])
def test_lipswish_is_one_lipschitz(raw_beta):
    act = LipSwish().double()
    with torch.no_grad():
        act.raw_beta.fill_(raw_beta)
    beta = torch.nn.functional.softplus(torch.tensor(raw_beta)).item()
    x = torch.linspace(-20 / beta, 20 / beta, 200001, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(act(x).sum(), x)
    assert slope.abs().max().item() <= 1.0
    # The 1.1 divisor is tight: the peak slope is within 0.1% of 1.
    assert slope.abs().max().item() >= 0.999


@pytest.mark.parametrize("name", ["lipswish", "elu"])
def test_activation_and_derivative_are_the_modules_output_and_its_autograd_slope(name, generator):
    act = make_activation(name).double()
    x = 4 * torch.randn(500, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    out, slope = activation_and_derivative(act, x)
    assert torch.equal(out, act(x))  # the same operations: the closed-form Jacobians see the module's values
    (expected,) = torch.autograd.grad(act(x).sum(), x)
    torch.testing.assert_close(slope, expected, rtol=1e-12, atol=1e-14)
    # The slope is differentiable (the training bound's gradient goes through it).
    (second,) = torch.autograd.grad(slope.sum(), x)
    assert torch.isfinite(second).all() and second.abs().max() > 0


def test_make_activation_rejects_unknown():
    with pytest.raises(ValueError, match="activation"):
        make_activation("relu6")


@pytest.mark.parametrize("activation", ["lipswish", "elu"])
def test_residual_branch_is_a_contraction(generator, activation):
    block = saturate(ResidualBlock(4, (16, 16), 0.9, activation, generator=generator).double(), generator)
    assert block.lipschitz_bound() <= 0.9 + 1e-12
    a = torch.randn(2000, 4, generator=generator, dtype=torch.float64)
    b = a + 0.1 * torch.randn(2000, 4, generator=generator, dtype=torch.float64)
    ratio = (block.residual(a) - block.residual(b)).norm(dim=1) / (a - b).norm(dim=1)
    assert ratio.max().item() <= 0.9
    # Saturated weights make the branch strong enough for the test to mean something.
    assert ratio.max().item() >= 0.1


def test_residual_block_rejects_bad_coefficient():
    with pytest.raises(ValueError, match="lipschitz_coeff"):
        ResidualBlock(3, lipschitz_coeff=1.0)
