import pytest
import torch

from skivcnf.conditional import gmres, masked_block
from skivcnf.conditional.linalg import masked_operator


@pytest.fixture
def system(generator):
    a = torch.eye(8, dtype=torch.float64) + 0.2 * torch.randn(6, 8, 8, generator=generator, dtype=torch.float64)
    b = torch.randn(6, 8, generator=generator, dtype=torch.float64)
    hidden = torch.rand(6, 8, generator=generator) < 0.5
    hidden[0] = False  # a row with nothing hidden
    return a, b, hidden


def matvec(a):
    return lambda v: torch.einsum("bij,bj->bi", a, v)


def test_masked_block_has_the_hidden_blocks_determinant_and_solve(system):
    a, b, hidden = system
    m = masked_block(a, hidden)
    for row in range(1, 6):
        h = hidden[row]
        block = a[row][h][:, h]
        assert torch.linalg.slogdet(m[row]).logabsdet.item() == pytest.approx(
            torch.linalg.slogdet(block).logabsdet.item(), abs=1e-12)
        rhs = torch.where(h, b[row], 0.0)
        sol = torch.linalg.solve(m[row], rhs)
        torch.testing.assert_close(sol[h], torch.linalg.solve(block, b[row][h]))
        assert bool((sol[~h] == 0).all())


def test_gmres_solves_full_and_masked_systems(system):
    a, b, hidden = system
    result = gmres(matvec(a), b, rtol=1e-12, restart=8)
    assert bool(result.converged.all())
    torch.testing.assert_close(result.solution, torch.linalg.solve(a, b), atol=1e-10, rtol=0)
    rhs = torch.where(hidden, b, 0.0)
    masked = gmres(masked_operator(matvec(a), hidden), rhs, rtol=1e-12, restart=8)
    assert bool(masked.converged.all())
    torch.testing.assert_close(masked.solution, torch.linalg.solve(masked_block(a, hidden), rhs),
                               atol=1e-10, rtol=0)


def test_gmres_restarts_and_warm_start(system):
    a, b, _ = system
    exact = torch.linalg.solve(a, b)
    restarted = gmres(matvec(a), b, rtol=1e-11, restart=3, max_restarts=100)
    assert bool(restarted.converged.all())
    torch.testing.assert_close(restarted.solution, exact, atol=1e-9, rtol=0)
    warm = gmres(matvec(a), b, x0=exact, rtol=1e-11, restart=3)
    assert warm.n_iter == 1  # the residual of the warm start is already under tolerance


def test_gmres_exact_preconditioner_converges_in_one_step(system):
    a, b, _ = system
    inverse = torch.linalg.inv(a)
    result = gmres(matvec(a), b, preconditioner=matvec(inverse), rtol=1e-12, restart=8)
    assert bool(result.converged.all())
    assert result.n_iter <= 2  # one Krylov vector, plus the final residual check


def test_gmres_reports_unconverged_rows(system):
    a, b, _ = system
    result = gmres(matvec(a), b, rtol=1e-14, restart=2, max_restarts=1)
    assert not bool(result.converged.all())
    assert bool((result.residual > 1e-14 * b.norm(dim=1))[~result.converged].all())
