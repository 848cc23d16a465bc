import warnings

import pytest
import torch

from skivcnf.conditional import SOLVERS, SolverOptions, solve_constraint, solve_hidden_block, warm_starts
from skivcnf.conditional.solvers import resolve_chain
from skivcnf.conditional.warm_starts import chord_start
from skivcnf.exceptions import ConstraintWarning


@pytest.fixture
def problem(trained_flow):
    flow, data = trained_flow
    gen = torch.Generator().manual_seed(5)
    y = data[:120].clone()
    hidden = torch.rand(y.shape, generator=gen) < 0.4
    hidden[0] = False
    hidden[1] = True  # an entirely hidden row: the constraint is the inverse of the flow
    x_target = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    return flow, y, hidden, x_target


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_meets_the_tolerance_and_keeps_observed_values(problem, solver):
    flow, y, hidden, x_target = problem
    options = SolverOptions(tol=1e-10)
    result = solve_constraint(flow, y, hidden, x_target, solver=solver, options=options)
    assert bool(result.converged.all())
    assert torch.equal(result.solution[~hidden], y[~hidden])
    check = (flow(result.solution) - x_target).abs()[hidden]
    assert check.max().item() <= 1e-10
    assert result.residual.max().item() <= 1e-10
    assert bool((result.method == SOLVERS.index(solver)).all())
    assert result.n_iter[0].item() == 0  # nothing hidden, nothing to do


def test_solvers_agree(problem):
    flow, y, hidden, x_target = problem
    options = SolverOptions(tol=1e-11)
    solutions = [solve_constraint(flow, y, hidden, x_target, solver=s, options=options).solution for s in SOLVERS]
    preconditioned = SolverOptions(tol=1e-11, preconditioner="inverse_jacobian", preconditioner_terms=2)
    solutions.append(solve_constraint(flow, y, hidden, x_target, solver="newton_krylov",
                                      options=preconditioned).solution)
    for other in solutions[1:]:
        # G^{-1} is bounded by the flow's bi-Lipschitz constant: (1 / 0.1)^4 blocks, ActNorm aside.
        torch.testing.assert_close(other, solutions[0], atol=1e-7, rtol=0)


def test_fully_hidden_row_is_the_inverse(problem):
    flow, y, hidden, x_target = problem
    result = solve_constraint(flow, y[1:2], hidden[1:2], x_target[1:2])
    torch.testing.assert_close(result.solution, flow.inverse(x_target[1:2]), atol=1e-8, rtol=0)


def test_stalled_rows_warn_and_are_flagged(problem):
    flow, y, hidden, x_target = problem
    options = SolverOptions(max_iter=1, fixed_point_max_iter=1)
    with pytest.warns(ConstraintWarning, match="not solved"):
        result = solve_constraint(flow, y, hidden, x_target, options=options)
    assert bool((~result.converged).any())
    # The reported residual is that of the returned rows (recomputed here on the whole batch, so
    # equal to rounding), and a row converged exactly when it is within the tolerance.
    recomputed = torch.where(hidden, flow(result.solution) - x_target, 0.0).abs().amax(dim=1).detach()
    torch.testing.assert_close(result.residual, recomputed, atol=1e-13, rtol=1e-10)
    assert torch.equal(result.converged, result.residual <= options.tolerance(torch.float64))
    assert torch.equal(result.solution[~hidden], y[~hidden])


def test_non_finite_target_is_flagged_not_returned_as_solved(problem):
    flow, y, hidden, x_target = problem
    row = int(hidden.sum(1).argmax())
    x_bad = x_target.clone()
    x_bad[row, hidden[row]] = float("nan")
    with pytest.warns(ConstraintWarning, match="1 of 120"):
        result = solve_constraint(flow, y, hidden, x_bad)
    assert result.converged.tolist().count(False) == 1 and not bool(result.converged[row])


def test_paper_schedule_stalls_where_fixed_mixing_converges(problem):
    flow, y, hidden, x_target = problem
    paper = SolverOptions(tol=1e-10, decay=0.95)
    with pytest.warns(ConstraintWarning):
        stalled = solve_constraint(flow, y, hidden, x_target, solver="fixed_point", options=paper)
    fixed = solve_constraint(flow, y, hidden, x_target, solver="fixed_point", options=SolverOptions(tol=1e-10))
    assert stalled.converged.float().mean() < fixed.converged.float().mean() == 1.0


def test_fallback_chain_finishes_what_the_first_solver_leaves(problem):
    flow, y, hidden, x_target = problem
    options = SolverOptions(tol=1e-10, max_iter=2)
    result = solve_constraint(flow, y, hidden, x_target, solver=("newton", "fixed_point"), options=options)
    assert bool(result.converged.all())
    used = set(result.method[hidden.any(1)].tolist())
    assert used == {SOLVERS.index("newton"), SOLVERS.index("fixed_point")}


def test_fallback_takes_only_the_rows_with_no_solved_draw(problem):
    flow, y, hidden, x_target = problem
    # 4 draws of each of 30 rows, draw-major (as sample_conditional stacks them).
    y, hidden, x_target = y[:30].repeat(4, 1), hidden[:30].repeat(4, 1), x_target[:120]
    options = SolverOptions(tol=1e-10, max_iter=2)
    plain = solve_constraint(flow, y, hidden, x_target, solver=("newton", "fixed_point"), options=options)
    newton = solve_constraint(flow, y, hidden, x_target, solver="newton", options=options, warn=False)
    some_solved = newton.converged.reshape(4, 30).any(0)
    assert some_solved.any() and not newton.converged.all()  # draws to leave, and rows to finish
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstraintWarning)
        per_row = solve_constraint(flow, y, hidden, x_target, solver=("newton", "fixed_point"), options=options,
                                   draws_per_row=4)
    took_fallback = per_row.method.reshape(4, 30) == SOLVERS.index("fixed_point")
    # The fallback took every draw of the rows Newton left without any, and nothing else.
    assert torch.equal(took_fallback, ~newton.converged.reshape(4, 30) & ~some_solved)
    assert bool(per_row.converged.reshape(4, 30).any(0).all())  # every row has a solved draw
    assert torch.equal(per_row.solution[newton.converged], newton.solution[newton.converged])
    # The same solutions as the plain chain's (to the solver's tolerance: other batch-mates, other rounding).
    torch.testing.assert_close(per_row.solution[took_fallback.reshape(-1)], plain.solution[took_fallback.reshape(-1)],
                               atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match="draws_per_row"):
        solve_constraint(flow, y, hidden, x_target, draws_per_row=7)


def test_warm_start_at_the_solution_costs_no_iteration(problem):
    flow, y, hidden, x_target = problem
    first = solve_constraint(flow, y, hidden, x_target)
    again = solve_constraint(flow, first.solution, hidden, x_target)
    assert int(again.n_iter.max()) == 0


def test_auto_chain():
    assert resolve_chain("auto", 30) == ("newton", "fixed_point")
    assert resolve_chain("auto", 784) == ("newton_krylov", "fixed_point")
    with pytest.raises(ValueError, match="solver"):
        resolve_chain("broyden", 3)


@pytest.mark.parametrize(("field", "value"), [("alpha", 0.0), ("decay", 1.5), ("max_iter", 0),
                                              ("preconditioner", "ilu"), ("tol", -1.0)])
def test_bad_options_raise(field, value):
    with pytest.raises(ValueError, match=field):
        SolverOptions(**{field: value})


def test_unknown_option_raises():
    with pytest.raises(TypeError):
        SolverOptions(tolerance=1e-3)


def test_shape_mismatch_raises(problem):
    flow, y, hidden, x_target = problem
    with pytest.raises(ValueError, match="shape"):
        solve_constraint(flow, y, hidden[:5], x_target)


def _first_newton_step(flow, y, hidden, x_target):
    residual = torch.where(hidden, flow(y) - x_target, 0.0).detach()
    return solve_hidden_block(flow, y, hidden, residual)


def test_forcing_term_sets_the_krylov_accuracy(problem):
    flow, y, hidden, x_target = problem
    # With a forcing term of 1e-13 each GMRES solve is a Newton step to ~1e-13 relative, so one
    # Newton-Krylov iteration lands where one exact Newton iteration does, to ~1e-10 (cond(G) < 1e3).
    exact_newton = SolverOptions(max_iter=1)
    tight = SolverOptions(max_iter=1, max_forcing_term=1e-13, preconditioner=None, krylov_max_restarts=50)
    with pytest.warns(ConstraintWarning):
        newton = solve_constraint(flow, y, hidden, x_target, solver="newton", options=exact_newton)
    with pytest.warns(ConstraintWarning):
        krylov = solve_constraint(flow, y, hidden, x_target, solver="newton_krylov", options=tight)
    torch.testing.assert_close(krylov.solution, newton.solution, atol=1e-9, rtol=0)


def test_armijo_constant_sets_the_sufficient_decrease(problem):
    flow, y, hidden, x_target = problem
    y, hidden, x_target = y[2:40], hidden[2:40], x_target[2:40]
    options = SolverOptions(max_iter=1, max_backtracks=1, armijo_constant=1 - 1e-9)
    with pytest.warns(ConstraintWarning):
        result = solve_constraint(flow, y, hidden, x_target, solver="newton", options=options)
    # Accepting a step of length 1 would need ||F|| to drop a billionfold; none does, so every row
    # takes the last, halved step. The same step recomputed on the batch: equal to rounding.
    step = _first_newton_step(flow, y, hidden, x_target)
    torch.testing.assert_close(result.solution, y - 0.5 * step, atol=1e-12, rtol=0)
    # The halving factor is the options' too: a quarter step where it is 0.25.
    quarter = SolverOptions(max_iter=1, max_backtracks=1, armijo_constant=1 - 1e-9, backtrack_factor=0.25)
    with pytest.warns(ConstraintWarning):
        result = solve_constraint(flow, y, hidden, x_target, solver="newton", options=quarter)
    torch.testing.assert_close(result.solution, y - 0.25 * step, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("field", "value"), [("max_forcing_term", 1.0), ("armijo_constant", 0.0),
                                              ("backtrack_factor", 1.0), ("backward_krylov_restart", 0),
                                              ("backward_krylov_max_restarts", 0), ("chord_max_iter", -1)])
def test_bad_new_options_raise(field, value):
    with pytest.raises(ValueError, match=field):
        SolverOptions(**{field: value})


def test_chord_start_shares_one_block_per_row_and_newton_agrees(problem):
    flow, y, hidden, _ = problem
    hidden = hidden.clone()
    hidden[:, 0] = True  # every row has something hidden
    gen = torch.Generator().manual_seed(9)
    n = warm_starts.CHORD_MIN_DRAWS
    targets = torch.randn(n, *y.shape, generator=gen, dtype=torch.float64)
    start = chord_start(flow, torch.where(hidden, 0.0, y), hidden, targets)
    assert torch.equal(start[:, ~hidden], y[~hidden].expand(n, -1))  # observed entries untouched
    flat = lambda t: t.reshape(-1, y.shape[1])  # noqa: E731
    options = SolverOptions(tol=1e-11)
    cold = solve_constraint(flow, flat(torch.where(hidden, 0.0, y).expand(n, -1, -1)), flat(hidden.expand(n, -1, -1)),
                            flat(targets), options=options)
    warm = solve_constraint(flow, flat(start), flat(hidden.expand(n, -1, -1)), flat(targets), options=options)
    assert bool(cold.converged.all()) and bool(warm.converged.all())
    # The same unique solution (the constraint has one per draw); the chord start leaves
    # Newton much less to do.
    torch.testing.assert_close(warm.solution, cold.solution, atol=1e-9, rtol=0)
    assert warm.n_iter.float().mean() < cold.n_iter.float().mean() - 1  # measured: 3.5 against 4.9


def test_draw_guesses_skip_the_chord_start_below_its_draw_count(problem, monkeypatch):
    # With few draws a row the shared block does not pay for the chord iterations: the guess is
    # returned as it is, and the block is never formed.
    flow, y, hidden, x_target = problem
    monkeypatch.setattr(warm_starts, "hidden_jacobian", lambda *args: pytest.fail("the block was formed"))
    n = warm_starts.CHORD_MIN_DRAWS - 1
    guess = warm_starts.draw_guesses(flow, y, hidden, x_target.expand(n, -1, -1))
    expected = torch.where(hidden & ~torch.isfinite(y), 0.0, y).expand(n, -1, -1).reshape(-1, y.shape[1])
    assert torch.equal(guess, expected)


def test_chord_start_off_returns_the_guess(problem):
    flow, y, hidden, x_target = problem
    n = warm_starts.CHORD_MIN_DRAWS  # enough draws for the chord start, which chord_max_iter=0 turns off
    start = chord_start(flow, y, hidden, x_target.expand(n, -1, -1), SolverOptions(chord_max_iter=0))
    assert torch.equal(start, y.expand(n, -1, -1))


def test_chord_start_from_the_draws_centre_leaves_less_residual_in_as_many_steps(problem, monkeypatch):
    # Draws of a posterior lie around its mean: from the completion of the mean the shared block is
    # closer to each draw's own than at the initial guess, so a few chord steps leave less residual.
    flow, y, hidden, _ = problem
    hidden = hidden.clone()
    hidden[:, 0] = True
    gen = torch.Generator().manual_seed(11)
    centre = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    targets = centre + 0.3 * torch.randn(32, *y.shape, generator=gen, dtype=torch.float64)
    guess = torch.where(hidden, 0.0, y)

    @torch.no_grad()
    def largest_residuals(steps):
        start = chord_start(flow, guess, hidden, targets, SolverOptions(chord_max_iter=steps))
        assert torch.equal(start[:, ~hidden], y[~hidden].expand(32, -1))
        return torch.where(hidden, flow(start.reshape(-1, y.shape[1])).reshape(start.shape) - targets, 0.0
                           ).abs().amax(dim=-1)

    assert warm_starts.CHORD_CENTRE_MIN_DRAWS <= 32
    centred = largest_residuals(3)  # 3 steps to the centre (one draw a row), then 3 for every draw
    monkeypatch.setattr(warm_starts, "CHORD_CENTRE_MIN_DRAWS", 10**9)
    plain = largest_residuals(6)  # as many steps, every one for every draw
    # measured: median largest residual 0.020 against 0.48 (docs/benchmarks.md, "Speed")
    assert centred.median() < 0.2 * plain.median()
