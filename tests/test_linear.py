import pytest
import torch

from skivcnf.flows import ActNorm, InvertibleLinear, ResidualFlow, fit_flow


def test_starts_as_the_identity_and_is_invertible_for_any_parameters(generator):
    layer = InvertibleLinear(4).double()
    z = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(layer(z), z, atol=0, rtol=0)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_(std=0.05, generator=generator)  # step_scale 10: entries of about 0.5
    lower, upper = layer.factors()
    assert torch.equal(torch.diagonal(lower), torch.ones(4, dtype=torch.float64))
    assert (torch.diagonal(upper) > 0).all() and torch.equal(torch.tril(upper, -1), torch.zeros(4, 4).double())
    torch.testing.assert_close(layer.logdet(), torch.linalg.slogdet(layer.matrix()).logabsdet)
    torch.testing.assert_close(layer.inverse(layer(z)).solution, z, atol=1e-12, rtol=0)
    products = layer.linearize_inverse(z)
    v = torch.randn(3, 6, 4, generator=generator, dtype=torch.float64)  # a stack of tangents
    inverse = torch.linalg.inv(layer.matrix().detach())
    torch.testing.assert_close(products.jvp(v), v @ inverse.T)
    torch.testing.assert_close(products.vjp(v), v @ inverse)


def test_step_scale_must_be_positive():
    with pytest.raises(ValueError, match="step_scale"):
        InvertibleLinear(3, step_scale=0)


def test_learns_a_strong_correlation_that_the_blocks_alone_have_not_yet():
    # AR(1) Gaussian, neighbours correlated 0.9; 10 epochs of 8 steps. The blocks alone had 0.71
    # there (each moves a row by at most 0.9 of its size); the linear map learns the dependence directly.
    cov = torch.tensor([[1.0, 0.9, 0.81], [0.9, 1.0, 0.9], [0.81, 0.9, 1.0]], dtype=torch.float64)
    data = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) @ \
        torch.linalg.cholesky(cov).T
    fitted = {}
    for linear in (False, True):
        flow = ResidualFlow(3, n_blocks=2, hidden_features=(16,), linear=linear,
                            generator=torch.Generator().manual_seed(1)).double()
        fit_flow(flow, data, max_epochs=10, batch_size=64, lr=2e-3, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            sample = flow.sample(20_000, torch.Generator().manual_seed(3))
            fitted[linear] = torch.corrcoef(sample.T)[0, 1].item(), -flow.log_prob(data).mean().item()
    assert abs(fitted[True][0] - 0.9) < 0.03  # 20,000 draws: the sampling error is about 0.002
    assert fitted[True][1] < fitted[False][1] - 0.1  # nats per row


def test_actnorm_initialisation_standardises_and_inverts(generator):
    layer = ActNorm(4).double()
    z = 5 + 3 * torch.randn(500, 4, generator=generator, dtype=torch.float64)
    layer.initialize(z)
    out = layer(z)
    torch.testing.assert_close(out.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(4, dtype=torch.float64))
    inverse = layer.inverse(out)
    torch.testing.assert_close(inverse.solution, z)
    assert inverse.converged.all() and inverse.n_iter == 0 and inverse.residual.abs().max() == 0
    jac = torch.autograd.functional.jacobian(lambda t: layer(t[None])[0], z[0])
    _, logdet = layer.forward_and_logdet(z[:3], method="stochastic")  # exact either way
    torch.testing.assert_close(logdet.detach(), torch.linalg.slogdet(jac).logabsdet.expand(3), atol=1e-12, rtol=0)


def test_actnorm_inverse_jacobian_products(generator):
    layer = ActNorm(3).double()
    with torch.no_grad():
        layer.log_scale.normal_(generator=generator)
    z, v = torch.randn(2, 4, 3, generator=generator, dtype=torch.float64)
    products = layer.linearize_inverse(z, n_terms=1, tol=None)
    scale = torch.exp(-layer.log_scale.detach())
    torch.testing.assert_close(products.jvp(v), v * scale, atol=0, rtol=0)
    torch.testing.assert_close(products.vjp(v), v * scale, atol=0, rtol=0)
