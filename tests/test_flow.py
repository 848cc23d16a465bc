import warnings

import pytest
import torch

from skivcnf.exceptions import InversionWarning
from skivcnf.flows import EXACT_LOGDET_MAX_FEATURES, ActNorm, FlowLayer, InvertibleLinear, ResidualBlock, ResidualFlow

from .helpers import affine_gaussian, make_flow

LOG_2PI = torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))


def _perturb_actnorms(flow, generator, bias=False):
    """Random ActNorm scales (and biases) and linear maps, so that no test passes by a layer being the identity."""
    with torch.no_grad():
        for layer in flow.layers:
            if isinstance(layer, ActNorm):
                layer.log_scale.normal_(generator=generator)
                if bias:
                    layer.bias.normal_(generator=generator)
            if isinstance(layer, InvertibleLinear):
                for parameter in (layer.lower, layer.upper, layer.log_diagonal, layer.bias):
                    parameter.normal_(std=0.05, generator=generator)  # step_scale 10: entries of about 0.5


def test_inverse_recovers_data_on_untrained_flow(generator):
    flow = make_flow(5, generator, n_blocks=4, hidden_features=(32, 32))
    flow.initialize(torch.randn(200, 5, generator=generator, dtype=torch.float64))
    y = 2 * torch.randn(300, 5, generator=generator, dtype=torch.float64)
    result = flow.invert(flow(y))
    assert bool(result.converged.all())
    assert result.residual.max().item() < 1e-10
    assert (result.solution - y).abs().max().item() < 1e-8


@pytest.mark.parametrize("linear", [False, True])
def test_log_prob_matches_autograd_jacobian(generator, linear):
    flow = make_flow(4, generator, n_blocks=3, hidden_features=(16,), linear=linear)
    _perturb_actnorms(flow, generator)
    flow.initialize(torch.randn(100, 4, generator=generator, dtype=torch.float64))
    y = torch.randn(10, 4, generator=generator, dtype=torch.float64)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda r: flow(r[None])[0], row) for row in y])
    expected = -0.5 * (flow(y).pow(2).sum(1) + 4 * LOG_2PI) + torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(flow.log_prob(y), expected, atol=1e-8, rtol=0)
    torch.testing.assert_close(flow.jacobian(y), jac, atol=1e-12, rtol=0)


@pytest.mark.parametrize("linear", [False, True])
def test_layers_share_one_contract(generator, linear):
    flow = make_flow(3, generator, n_blocks=2, hidden_features=(8,), linear=linear)
    assert isinstance(flow.layers[0], InvertibleLinear) == linear
    _perturb_actnorms(flow, generator, bias=True)
    y = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    tangents = torch.randn(5, 2, 3, generator=generator, dtype=torch.float64)
    z, logdet = y, torch.zeros(5, dtype=torch.float64)
    for layer in flow.layers:
        assert isinstance(layer, FlowLayer)
        out, products, layer_logdet = layer.forward_tangents_and_logdet(z, tangents)
        # Each layer's own Jacobian, by autograd, is the reference for its products and log-det.
        jac = torch.func.vmap(torch.func.jacrev(layer))(z).detach()
        torch.testing.assert_close(products, tangents @ jac.transpose(-1, -2), atol=1e-12, rtol=0)
        torch.testing.assert_close(layer_logdet, torch.linalg.slogdet(jac).logabsdet, atol=1e-12, rtol=0)
        inverse = layer.inverse(out, 1e-13, 500)
        torch.testing.assert_close(inverse.solution, z, atol=1e-11, rtol=0)
        assert inverse.converged.tolist() == [True] * 5
        z, logdet, tangents = out, logdet + layer_logdet, products
    torch.testing.assert_close(logdet, flow.forward_and_logdet(y)[1].detach(), atol=1e-12, rtol=0)


def test_as_input_converts_and_checks_the_shape(generator):
    flow = make_flow(3, generator, n_blocks=1)
    y = flow.as_input([[1, 2, 3]])
    assert y.dtype == torch.float64 and y.tolist() == [[1.0, 2.0, 3.0]]
    with pytest.raises(ValueError, match=r"\(batch, 3\)"):
        flow.as_input(torch.zeros(3))


def test_affine_flow_is_the_closed_form_gaussian(generator):
    flow = make_flow(3, generator, n_blocks=3, hidden_features=())
    _perturb_actnorms(flow, generator, bias=True)
    mean, cov = affine_gaussian(flow)
    gaussian = torch.distributions.MultivariateNormal(mean, cov)
    y = 3 * torch.randn(50, 3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(y), gaussian.log_prob(y), atol=1e-10, rtol=0)
    # Samples (fixed-point inverse) have the Gaussian's moments; 4 standard errors.
    samples = flow.sample(20000, generator=generator)
    cov = gaussian.covariance_matrix
    se_mean = (cov.diagonal() / 20000).sqrt()
    assert bool(((samples.mean(0) - gaussian.mean).abs() < 4 * se_mean).all())
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / 20000).sqrt()
    assert bool(((samples.T.cov() - cov).abs() < 4 * se_cov).all())


def test_stochastic_log_prob_agrees_with_exact_on_average(generator):
    flow = make_flow(3, generator, n_blocks=2, hidden_features=(8,), lipschitz_coeff=0.6)
    y = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    exact = flow.log_prob(y).detach()
    flow.logdet = "stochastic"
    with torch.no_grad():
        draws = torch.stack([flow.log_prob(y, generator) for _ in range(2000)])
    se = draws.std(0) / 2000**0.5
    assert bool(((draws.mean(0) - exact).abs() < 3 * se + 1e-12).all())


def test_auto_logdet_threshold():
    assert ResidualFlow(EXACT_LOGDET_MAX_FEATURES, n_blocks=1).use_exact_logdet()
    assert not ResidualFlow(EXACT_LOGDET_MAX_FEATURES + 1, n_blocks=1).use_exact_logdet()
    assert ResidualFlow(500, n_blocks=1, logdet="exact").use_exact_logdet()


def test_unconverged_inverse_warns_and_flags(generator):
    flow = make_flow(4, generator, n_blocks=2)
    x = flow(torch.randn(8, 4, generator=generator, dtype=torch.float64))
    result = flow.invert(x, max_iter=2)
    assert not bool(result.converged.any())
    with pytest.warns(InversionWarning, match="8 of 8 rows"):
        flow.inverse(x, max_iter=2)


def test_non_finite_latent_is_flagged(generator):
    flow = make_flow(3, generator, n_blocks=2)
    x = torch.zeros(2, 3, dtype=torch.float64)
    x[0, 0] = float("inf")
    assert flow.invert(x).converged.tolist() == [False, True]


def test_construction_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    flows = [ResidualFlow(3, n_blocks=2, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(torch.random.get_rng_state(), state)
    for p, q in zip(flows[0].parameters(), flows[1].parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"logdet": "hutch"}, "logdet"), ({"n_blocks": 0}, "positive"), ({"activation": "relu"}, "activation"),
     ({"lipschitz_coeff": 1.5}, "lipschitz_coeff")],
)
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResidualFlow(3, **kwargs)


def test_wrong_shape_raises():
    flow = ResidualFlow(3, n_blocks=1)
    with pytest.raises(ValueError, match=r"\(batch, 3\)"):
        flow.log_prob(torch.zeros(4, 2))


def test_float32_flow_runs_in_float32(generator):
    flow = ResidualFlow(3, n_blocks=2, generator=generator)
    y = torch.randn(5, 3, generator=generator)
    assert flow.log_prob(y).dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (flow.inverse(flow(y)) - y).abs().max().item() < 1e-4


def test_blocks_and_bounds_listed(generator):
    flow = make_flow(3, generator, n_blocks=3, lipschitz_coeff=0.7)
    assert len(flow.blocks) == 3 and all(isinstance(b, ResidualBlock) for b in flow.blocks)
    assert all(0.7 - 1e-9 < bound <= 0.7 + 1e-12 for bound in flow.lipschitz_bounds())


def test_linearization_products_match_the_jacobian(generator):
    flow = make_flow(4, generator, n_blocks=3, hidden_features=(8,))
    y, v = torch.randn(2, 6, 4, generator=generator, dtype=torch.float64)
    stack = torch.randn(5, 6, 4, generator=generator, dtype=torch.float64)
    jac = flow.jacobian(y).detach()
    lin = flow.linearize(y)
    torch.testing.assert_close(lin.value, flow(y).detach())
    torch.testing.assert_close(lin.jvp(v), torch.einsum("bij,bj->bi", jac, v))
    torch.testing.assert_close(lin.vjp(v), torch.einsum("bi,bij->bj", v, jac))
    torch.testing.assert_close(lin.jvp(stack), torch.einsum("bij,kbj->kbi", jac, stack))
    assert not lin.jvp(v).requires_grad


@pytest.mark.parametrize("linear", [False, True])
def test_inverse_linearization_is_the_inverse_jacobian(generator, linear):
    flow = make_flow(4, generator, n_blocks=3, hidden_features=(8,), linear=linear)
    _perturb_actnorms(flow, generator)
    y, v = torch.randn(2, 6, 4, generator=generator, dtype=torch.float64)
    inverse_jac = torch.linalg.inv(flow.jacobian(y).detach())
    exact = flow.linearize_inverse(y)
    torch.testing.assert_close(exact.jvp(v), torch.einsum("bij,bj->bi", inverse_jac, v), atol=1e-10, rtol=0)
    torch.testing.assert_close(exact.vjp(v), torch.einsum("bi,bij->bj", v, inverse_jac), atol=1e-10, rtol=0)
    # Truncated after one term per block, each residual block's inverse Jacobian is I - dh/dz.
    factors, z = [], y
    for layer in flow.layers:
        if isinstance(layer, ActNorm):
            factors.append(torch.diag(torch.exp(-layer.log_scale)).expand(6, 4, 4))
        elif isinstance(layer, InvertibleLinear):
            factors.append(torch.linalg.inv(layer.matrix().detach()).expand(6, 4, 4))
        else:
            eye = torch.eye(4, dtype=torch.float64)
            factors.append(2 * eye - layer.forward_and_jacobian(z)[1])
        z = layer(z)
    rough = v
    for factor in reversed(factors):
        rough = torch.einsum("bij,bj->bi", factor, rough)
    torch.testing.assert_close(flow.linearize_inverse(y, n_terms=1).jvp(v), rough.detach(), atol=1e-12, rtol=0)


def test_cached_weights_computed_once_and_held_per_thread(generator, monkeypatch):
    # A nested context does not walk the modules again; another thread sharing the model (as
    # skivcnf.dask's partitions do) keeps torch's cache open with its own context, so the first
    # thread's exit does not drop the weights from under it.
    import threading

    flow = ResidualFlow(3, n_blocks=2, hidden_features=(8,), generator=generator).double()
    norms = []
    real = torch.linalg.matrix_norm
    monkeypatch.setattr(torch.linalg, "matrix_norm", lambda *a, **k: norms.append(1) or real(*a, **k))
    y = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    expected = flow(y).detach()
    norms.clear()
    entered, leave, seen = threading.Event(), threading.Event(), {}

    def other_thread():
        with flow.cached_weights(differentiable=False):
            entered.set()
            leave.wait(10)
            seen["norms"], seen["out"] = len(norms), flow(y)

    with flow.cached_weights(differentiable=False):
        first = len(norms)
        with flow.cached_weights(differentiable=False):
            out = flow(y)
        assert len(norms) == first > 0  # nested: no spectral norm computed again
        thread = threading.Thread(target=other_thread)
        thread.start()
        assert entered.wait(10)
    leave.set()  # the main thread's context has exited; the other thread's cache must hold
    thread.join(10)
    assert seen["norms"] == first  # still cached after the main thread's exit: none recomputed
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(seen["out"], expected, rtol=0, atol=0)


def test_cached_weights_without_their_graph_are_reused_by_nested_caches(generator):
    flow = ResidualFlow(3, n_blocks=2, hidden_features=(8,), generator=generator).double()
    linear = flow.blocks[0].net[0]
    expected = linear.weight.detach().clone()
    with flow.cached_weights(differentiable=False):
        weight = linear.weight
        assert weight.grad_fn is None and torch.equal(weight, expected)
        with flow.cached_weights():  # as the solvers nest it: no recomputation, still no graph
            assert linear.weight is weight
        # Gradients with respect to the inputs still flow through the cached weights.
        y = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(flow(y).sum(), y)
        assert torch.isfinite(grad).all()
    with flow.cached_weights():
        assert linear.weight.grad_fn is not None  # the default keeps the graph, for training
