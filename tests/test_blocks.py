import pytest
import torch

from skivcnf.flows import ResidualBlock, stochastic_block_logdet

from .helpers import saturate


def test_block_inverse_recovers_input(generator):
    block = saturate(ResidualBlock(6, (32, 32), 0.9, generator=generator).double(), generator)
    z = 3 * torch.randn(100, 6, generator=generator, dtype=torch.float64)
    result = block.inverse(block(z), tol=1e-13, max_iter=2000)
    assert bool(result.converged.all())
    # Contraction of rate c: error <= c * step / (1 - c) = 9 * 1e-13.
    assert (result.solution - z).abs().max().item() < 1e-11


def test_block_inverse_flags_rows_out_of_iterations(generator):
    block = saturate(ResidualBlock(6, (32, 32), 0.9, generator=generator).double(), generator)
    z = torch.randn(10, 6, generator=generator, dtype=torch.float64)
    x = block(z).detach()
    result = block.inverse(x, tol=1e-13, max_iter=2)
    assert result.n_iter == 2
    assert not bool(result.converged.any())
    # The record holds the last iterate and the max-norm of the last step of z <- x - h(z); the
    # same operations on the same rows, so equal up to rounding.
    with torch.no_grad():
        first = x - block.residual(x)
        second = x - block.residual(first)
        third = x - block.residual(second)
    torch.testing.assert_close(result.solution, third, atol=1e-15, rtol=0)
    torch.testing.assert_close(result.residual, (third - second).abs().amax(dim=1), atol=1e-15, rtol=0)


def test_block_inverse_flags_non_finite_rows(generator):
    block = ResidualBlock(3, (8,), 0.9, generator=generator).double()
    x = torch.zeros(3, 3, dtype=torch.float64)
    x[1, 2] = float("nan")
    result = block.inverse(x, tol=1e-12, max_iter=100)
    assert result.converged.tolist() == [True, False, True]


def test_residual_block_serves_both_log_determinants(generator):
    block = ResidualBlock(3, (8,), 0.5, generator=generator).double()
    z = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    state = generator.get_state()
    _, stochastic = block.forward_and_logdet(z, "stochastic", generator, n_exact_terms=3, geom_p=0.4)
    generator.set_state(state)
    torch.testing.assert_close(stochastic, stochastic_block_logdet(block, z, generator, 3, 0.4)[1], atol=0, rtol=0)
    out, exact = block.forward_and_logdet(z)
    jac = block.forward_and_jacobian(z)[1]
    torch.testing.assert_close(exact, torch.linalg.slogdet(jac).logabsdet, atol=0, rtol=0)
    with pytest.raises(ValueError, match="method"):
        block.forward_and_logdet(z, "hutchinson")
    block.initialize(z)  # nothing to initialise: the weights are unchanged
    torch.testing.assert_close(block(z), out, atol=0, rtol=0)
