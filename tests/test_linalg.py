import pytest
import torch

from skivcnf.conditional import gmres
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


def test_masked_operator_is_the_masked_matrix(system):
    a, b, hidden = system
    h = hidden.to(a.dtype)
    masked = h.unsqueeze(-1) * a * h.unsqueeze(-2) + torch.diag_embed(1.0 - h)
    # Products with the formed matrix: the same sums in another order, equal to rounding.
    torch.testing.assert_close(masked_operator(matvec(a), hidden)(b), matvec(masked)(b), atol=1e-14, rtol=0)


def test_gmres_solves_full_and_masked_systems(system):
    a, b, hidden = system
    result = gmres(matvec(a), b, rtol=1e-12, restart=8)
    assert bool(result.converged.all())
    torch.testing.assert_close(result.solution, torch.linalg.solve(a, b), atol=1e-10, rtol=0)
    rhs = torch.where(hidden, b, 0.0)
    masked = gmres(masked_operator(matvec(a), hidden), rhs, rtol=1e-12, restart=8)
    assert bool(masked.converged.all())
    for row in range(6):
        h = hidden[row]
        # ||A^-1|| is O(1) here (A = I + 0.2 noise), so rtol 1e-12 leaves errors far below 1e-10.
        torch.testing.assert_close(masked.solution[row, h], torch.linalg.solve(a[row][h][:, h], b[row, h]),
                                   atol=1e-10, rtol=0)
        assert masked.solution[row, ~h].tolist() == [0.0] * int((~h).sum())


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
    # Two Krylov vectors cannot solve a generic 8 x 8 system: every row is reported unconverged.
    assert result.converged.tolist() == [False] * 6
    assert result.n_iter == 3  # two Krylov vectors and the final residual
    torch.testing.assert_close(result.residual, (b - matvec(a)(result.solution)).norm(dim=1), atol=1e-14, rtol=0)


def test_gmres_rows_whose_krylov_space_ends_early(system):
    # Row 0: the identity (one Krylov vector); row 1: two distinct eigenvalues (two vectors);
    # the rest generic. Rows that break down keep their exact solution while the others go on.
    a, b, _ = system
    a = a.clone()
    a[0] = torch.eye(8, dtype=torch.float64)
    a[1] = torch.diag(torch.tensor([2.0, 3.0] * 4, dtype=torch.float64))
    result = gmres(matvec(a), b, rtol=1e-12, restart=8)
    assert bool(result.converged.all())
    torch.testing.assert_close(result.solution, torch.linalg.solve(a, b), atol=1e-10, rtol=0)
