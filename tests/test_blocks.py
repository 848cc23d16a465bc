import torch

from skivcnf.flows import ActNorm, ResidualBlock

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
    result = block.inverse(block(z), tol=1e-13, max_iter=2)
    assert result.n_iter == 2
    assert not bool(result.converged.any())
    assert bool((result.residual > 1e-13).all())


def test_block_inverse_flags_non_finite_rows(generator):
    block = ResidualBlock(3, (8,), 0.9, generator=generator).double()
    x = torch.zeros(3, 3, dtype=torch.float64)
    x[1, 2] = float("nan")
    result = block.inverse(x, tol=1e-12, max_iter=100)
    assert result.converged.tolist() == [True, False, True]


def test_actnorm_initialisation_standardises_and_inverts(generator):
    layer = ActNorm(4).double()
    z = 5 + 3 * torch.randn(500, 4, generator=generator, dtype=torch.float64)
    layer.initialize(z)
    out = layer(z)
    torch.testing.assert_close(out.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(layer.inverse(out), z)
    jac = torch.autograd.functional.jacobian(lambda t: layer(t[None])[0], z[0])
    assert abs(layer.logdet().item() - torch.linalg.slogdet(jac).logabsdet.item()) < 1e-12
