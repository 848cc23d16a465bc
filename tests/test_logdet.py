import pytest
import torch

from skivcnf.flows import ResidualBlock, stochastic_block_logdet

from .helpers import aligned, saturate


def autograd_logdet(block, z):
    jacs = torch.stack([torch.autograd.functional.jacobian(block, row) for row in z])
    return torch.linalg.slogdet(jacs).logabsdet


@pytest.fixture
def block(generator):
    # c = 0.6 keeps the roulette estimator's variance finite (Lip^2 < 1 - geom_p = 0.5).
    return aligned(ResidualBlock(4, (16, 16), 0.6, generator=generator).double(), generator)


def test_exact_logdet_matches_autograd_jacobian(generator):
    block = saturate(ResidualBlock(5, (32, 32), 0.9, generator=generator).double(), generator)
    z = torch.randn(20, 5, generator=generator, dtype=torch.float64)
    out, logdet = block.forward_and_logdet(z)
    torch.testing.assert_close(out, block(z), atol=1e-14, rtol=0)
    torch.testing.assert_close(logdet, autograd_logdet(block, z), atol=1e-8, rtol=0)
    assert logdet.abs().max().item() > 1e-3  # the test can tell the log-det from 0


@pytest.mark.parametrize("activation", ["lipswish", "elu"])
def test_closed_form_logdet_gradients_match_autograd(generator, activation):
    # The closed-form Jacobian is differentiated by first-order autograd; its gradients with
    # respect to the input and every weight (the last bias has none) must equal those of the
    # autograd Jacobian's slogdet.
    block = saturate(ResidualBlock(4, (8, 8), 0.9, activation=activation, generator=generator).double(), generator)
    z = torch.randn(6, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    params = [z, *block.parameters()]
    closed = torch.autograd.grad(block.forward_and_logdet(z)[1].sum(), params, materialize_grads=True)

    def reference_logdet():
        jac = torch.func.vmap(torch.func.jacrev(block))(z)
        return torch.linalg.slogdet(jac).logabsdet.sum()

    reference = torch.autograd.grad(reference_logdet(), params, materialize_grads=True)
    for a, b in zip(closed, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    assert closed[0].abs().max() > 1e-3


def test_flow_jvps_match_the_jacobian_and_the_logdet(generator):
    from skivcnf.flows import ResidualFlow

    flow = saturate(ResidualFlow(5, n_blocks=3, hidden_features=(16,), generator=generator).double(), generator)
    with torch.no_grad():
        for layer in flow.layers:  # a non-trivial ActNorm too
            if hasattr(layer, "log_scale"):
                layer.log_scale.normal_(generator=generator).mul_(0.3)
    y = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    tangents = torch.randn(7, 3, 5, generator=generator, dtype=torch.float64)
    reference = torch.stack([torch.autograd.functional.jacobian(lambda r: flow(r[None])[0], row) for row in y])
    for with_logdet in (False, True):
        x, products, logdet = flow.forward_and_jvps(y, tangents, logdet=with_logdet)
        torch.testing.assert_close(x, flow(y), atol=1e-13, rtol=0)
        torch.testing.assert_close(products, tangents @ reference.transpose(-1, -2), atol=1e-10, rtol=0)
    torch.testing.assert_close(logdet, torch.linalg.slogdet(reference).logabsdet, atol=1e-10, rtol=0)


def _mean_and_se(samples):
    return samples.mean(0), samples.std(0) / samples.shape[0] ** 0.5


def test_stochastic_logdet_is_unbiased(block, generator):
    z = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    _, exact = block.forward_and_logdet(z)
    draws = torch.stack(
        [stochastic_block_logdet(block, z, generator)[1].detach() for _ in range(4000)]
    )
    mean, se = _mean_and_se(draws)
    assert bool(((mean - exact.detach()).abs() < 3 * se).all()), (mean, exact, se)
    assert bool((se < 0.05 * exact.detach().abs().max()).all())  # enough draws to be a real test


def test_stochastic_logdet_gradient_is_unbiased(block, generator):
    z = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    params = [p for p in block.parameters() if p.requires_grad]
    direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]

    def projected_gradients(logdet):
        grads = torch.autograd.grad(logdet.sum(), [z, *params], allow_unused=True)
        along = sum((g * d).sum() for g, d in zip(grads[1:], direction, strict=True) if g is not None)
        return torch.cat([grads[0].flatten(), along.reshape(1)])

    exact = projected_gradients(block.forward_and_logdet(z)[1])
    draws = torch.stack(
        [projected_gradients(stochastic_block_logdet(block, z, generator)[1]) for _ in range(3000)]
    )
    mean, se = _mean_and_se(draws)
    assert bool(((mean - exact).abs() < 3 * se + 1e-12).all()), (mean - exact) / se


def test_stochastic_logdet_without_grad_returns_detached(block, generator):
    z = torch.randn(2, 4, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        out, logdet = stochastic_block_logdet(block, z, generator)
    assert not out.requires_grad and not logdet.requires_grad
    torch.testing.assert_close(out, block(z).detach())


@pytest.mark.parametrize("kwargs", [{"geom_p": 0.0}, {"geom_p": 1.0}, {"n_exact_terms": 0}])
def test_stochastic_logdet_rejects_bad_settings(block, kwargs):
    with pytest.raises(ValueError):
        stochastic_block_logdet(block, torch.zeros(1, 4, dtype=torch.float64), **kwargs)
