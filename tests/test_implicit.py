import pytest
import torch

from skivcnf.conditional import SolverOptions, hidden_jacobian, solve_constraint, solve_hidden_block
from skivcnf.conditional.implicit import HiddenBlockAtSolution, attach_implicit_gradients

from .helpers import make_flow

HIDDEN = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
OPTIONS = SolverOptions(tol=1e-13)


@pytest.fixture
def setting(generator):
    flow = make_flow(4, generator, n_blocks=2, hidden_features=(8,))
    y = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    x_target = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    return flow, y, x_target


def solve_with_gradients(flow, y, x_target, method):
    solution = solve_constraint(flow, y.detach(), HIDDEN, x_target.detach(), options=OPTIONS).solution
    return attach_implicit_gradients(flow, solution, y, HIDDEN, x_target, method=method)


@pytest.mark.parametrize("method", ["exact", "gmres"])
def test_gradcheck_with_respect_to_observed_and_latent(setting, method):
    flow, y, x_target = setting
    inputs = (y.clone().requires_grad_(), x_target.clone().requires_grad_())
    # Finite differences re-solve to 1e-13, so 1e-6 absolute is ample and still tight. GMRES stops at
    # rtol 1e-10, and threaded reductions may order sums differently between calls, so two backward
    # passes agree to that tolerance, not bit for bit (CI saw them differ on a 2-core machine).
    nondet_tol = 1e-8 if method == "gmres" else 0.0
    assert torch.autograd.gradcheck(
        lambda a, b: solve_with_gradients(flow, a, b, method), inputs, atol=1e-6, nondet_tol=nondet_tol
    )


def test_weight_gradient_matches_finite_differences(setting):
    flow, y, x_target = setting
    bias = flow.blocks[0].net[0].bias

    def loss():
        return solve_with_gradients(flow, y, x_target, "exact").pow(2).sum()

    (analytic,) = torch.autograd.grad(loss(), bias)
    step, numeric = 1e-6, torch.zeros_like(bias)
    with torch.no_grad():
        for i in range(bias.numel()):
            bias[i] += step
            plus = loss().item()
            bias[i] -= 2 * step
            minus = loss().item()
            bias[i] += step
            numeric[i] = (plus - minus) / (2 * step)
    torch.testing.assert_close(analytic, numeric, atol=1e-6, rtol=1e-6)


def test_values_are_the_solution_and_observed_entries(setting):
    flow, y, x_target = setting
    out = solve_with_gradients(flow, y.requires_grad_(), x_target, "exact")
    assert torch.equal(out.detach()[~HIDDEN], y.detach()[~HIDDEN])
    assert (flow(out.detach()) - x_target).abs()[HIDDEN].max().item() < 1e-12


@pytest.mark.parametrize("method", ["exact", "gmres"])
def test_backward_solves_with_the_transposed_block(setting, generator, method):
    flow, y, x_target = setting
    solution = solve_constraint(flow, y, HIDDEN, x_target, options=OPTIONS).solution
    x = x_target.clone().requires_grad_()
    # One GMRES cycle of one Krylov vector: a rough solve, so the settings visibly reach the backward.
    rough = SolverOptions(backward_krylov_restart=1, backward_krylov_max_restarts=1)
    out = attach_implicit_gradients(flow, solution, y, HIDDEN, x, method=method, options=rough)
    weight = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    (out * weight).sum().backward()
    # dy^H/dx^H = (G^HH)^{-1}, so the gradient is (G^HH)^{-T} w^H: the same solve, run directly.
    expected = solve_hidden_block(flow, solution, HIDDEN, weight, transpose=True, method=method,
                                  restart=1, max_restarts=1)
    torch.testing.assert_close(x.grad, expected, atol=1e-14, rtol=0)


def test_unknown_method_raises(setting):
    flow, y, x_target = setting
    with pytest.raises(ValueError, match="method"):
        attach_implicit_gradients(flow, y, y, HIDDEN, x_target, method="lu")


def test_backward_reuses_the_block_kept_at_the_solution(setting):
    """The exact bound hands its G^HH to the backward pass: the same gradients as forming it again."""
    flow, y, x_target = setting
    hidden = HIDDEN
    solution = solve_constraint(flow, y, hidden, x_target.detach(), options=OPTIONS).solution
    grads = []
    for keep in (False, True):
        x = x_target.detach().clone().requires_grad_(True)
        at_solution = HiddenBlockAtSolution()
        y_full = attach_implicit_gradients(flow, solution, y, hidden, x, block_at_solution=at_solution)
        if keep:
            block, order, valid = hidden_jacobian(flow, solution, hidden)
            at_solution.keep(block, order, valid)
        (y_full ** 2).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-12, rtol=0)
