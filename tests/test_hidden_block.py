import pytest
import torch

from skivcnf.conditional import hidden_jacobian, log_prob_and_hidden_jacobian, solve_hidden_block

from .helpers import make_flow

HIDDEN = torch.tensor([[1, 0, 1, 0, 1], [0, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)


@pytest.fixture
def setting(generator):
    flow = make_flow(5, generator, n_blocks=2, hidden_features=(16,))
    y = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    return flow, y, flow.jacobian(y).detach()


@pytest.mark.parametrize("differentiable", [False, True])
def test_hidden_jacobian_is_each_rows_hidden_block(setting, differentiable):
    flow, y, jac = setting
    y = y.clone().requires_grad_(differentiable)
    with torch.set_grad_enabled(differentiable):
        block, order, valid = hidden_jacobian(flow, y, HIDDEN)
    assert block.requires_grad == differentiable
    assert block.shape == (4, 5, 5) and valid.sum(1).tolist() == [3, 1, 5, 0]
    for row in range(4):
        h, k = HIDDEN[row], int(HIDDEN[row].sum())
        assert sorted(order[row, :k].tolist()) == h.nonzero().squeeze(1).tolist()
        # The same closed-form products as flow.jacobian, gathered: equal to rounding.
        dense = jac[row][order[row, :k]][:, order[row, :k]]
        torch.testing.assert_close(block[row, :k, :k].detach(), dense, atol=1e-14, rtol=0)
        torch.testing.assert_close(block[row, k:, k:].detach(), torch.eye(5 - k, dtype=torch.float64))
        assert block[row, :k, k:].abs().sum() == 0 and block[row, k:, :k].abs().sum() == 0


def test_log_prob_and_hidden_jacobian_agree_with_their_parts(setting):
    flow, y, _ = setting
    log_p, block, _, _ = log_prob_and_hidden_jacobian(flow, y, HIDDEN)
    # One pass computes both; the log-det is summed the same way as in log_prob.
    torch.testing.assert_close(log_p, flow.log_prob(y), atol=1e-12, rtol=0)
    torch.testing.assert_close(block, hidden_jacobian(flow, y, HIDDEN)[0], atol=1e-14, rtol=0)


def test_nothing_hidden_gives_empty_blocks(setting):
    flow, y, _ = setting
    block, order, valid = hidden_jacobian(flow, y, torch.zeros(4, 5, dtype=torch.bool))
    assert block.shape == (4, 0, 0) and order.shape == (4, 0) and valid.shape == (4, 0)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("method", ["exact", "gmres"])
def test_solves_with_the_block_and_its_transpose(setting, generator, transpose, method):
    flow, y, jac = setting
    rhs = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    solution = solve_hidden_block(flow, y, HIDDEN, rhs, transpose=transpose, method=method, rtol=1e-13)
    for row in range(4):
        h = HIDDEN[row]
        dense = jac[row][h][:, h]
        dense = dense.T if transpose else dense
        expected = torch.linalg.solve(dense, rhs[row, h]) if h.any() else rhs[row, h]
        # cond(G^HH) <= ((1 + c) / (1 - c))^2 = 361 for two blocks at c = 0.9 (ActNorm at identity),
        # so GMRES's rtol 1e-13 bounds the error by ~4e-11 on these O(1) right-hand sides.
        torch.testing.assert_close(solution[row, h], expected, atol=1e-10, rtol=0)
        assert solution[row, ~h].tolist() == [0.0] * int((~h).sum())


def test_gmres_settings_reach_the_solve(setting, generator):
    flow, y, jac = setting
    rhs = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    one_step = solve_hidden_block(flow, y, HIDDEN, rhs, transpose=True, method="gmres", restart=1, max_restarts=1)
    for row in range(3):
        h = HIDDEN[row]
        b = rhs[row, h]
        product = jac[row][h][:, h].T @ b
        # One Krylov vector: the multiple of b that minimises ||b - A (t b)||.
        expected = (product @ b) / (product @ product) * b
        torch.testing.assert_close(one_step[row, h], expected, atol=1e-12, rtol=0)


def test_preconditioned_gmres_with_the_exact_inverse_takes_one_step(setting, generator):
    flow, y, jac = setting
    hidden = torch.ones(4, 5, dtype=torch.bool)  # fully hidden rows: J^HH is then exactly (G^HH)^{-1}
    rhs = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    inverse = flow.linearize_inverse(y)
    solution = solve_hidden_block(flow, y, hidden, rhs, method="gmres", rtol=1e-12, restart=1, max_restarts=1,
                                  preconditioner=inverse.jvp)
    # The Neumann series are summed to eps ** 0.75 (~2e-12) per block; times cond(G) <= 361.
    torch.testing.assert_close(solution, torch.linalg.solve(jac, rhs), atol=1e-9, rtol=0)


def test_unknown_method_raises(setting):
    flow, y, _ = setting
    with pytest.raises(ValueError, match="method"):
        solve_hidden_block(flow, y, HIDDEN, y, method="lu")
