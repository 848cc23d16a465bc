import warnings

import numpy as np
import pytest
import torch

import skivcnf.conditional.fitting as fitting
from skivcnf.conditional import SolverOptions
from skivcnf.conditional.bound import bound_terms, masked_bound
from skivcnf.conditional.fitting import fit_inference_network, fit_posterior
from skivcnf.conditional.posteriors import GaussianPosterior, InferenceNetwork, prior_parameters
from skivcnf.conditional.sampling import sample_conditional
from skivcnf.exceptions import ConstraintWarning, NumericalWarning

from .helpers import make_flow


def correlated_rows(generator, n=256):
    flow = make_flow(4, generator, n_blocks=2, hidden_features=())
    y = flow.sample(n, generator=generator)
    hidden = torch.rand(n, 4, generator=generator) < 0.4
    hidden[hidden.all(1), 0] = False
    return flow, y, hidden


def mean_bound(flow, y, hidden, params, generator):
    draws = sample_conditional(flow, y, hidden, params, n_samples=32, generator=generator)
    return draws.log_weight.mean().item()


def test_inference_network_learns_a_better_posterior_than_the_prior(generator):
    flow, y, hidden = correlated_rows(generator)
    net = InferenceNetwork(4, hidden_features=(32, 32), generator=generator).double()
    history = fit_inference_network(flow, torch.where(hidden, float("nan"), y), hidden, net, max_epochs=15,
                                    batch_size=64, lr=3e-3, n_samples=4, generator=generator)
    assert len(history.train_loss) == 15 and history.train_loss[-1] < history.train_loss[0]
    # 256 rows in batches of 64: 4 steps an epoch; no validation split, so the last epoch is kept.
    assert (history.n_steps, history.best_epoch, history.validation_loss) == (60, 14, [])
    with torch.no_grad():
        amortised = mean_bound(flow, y, hidden, net(y, hidden), generator)
    prior = mean_bound(flow, y, hidden, prior_parameters(len(y), 4, torch.float64), generator)
    assert amortised > prior + 0.05
    # The fixed flow got no gradient and its parameters train again afterwards.
    assert all(p.grad is None and p.requires_grad for p in flow.parameters())


def test_joint_training_moves_the_flow_by_one_adam_step(generator):
    flow, y, hidden = correlated_rows(generator, n=128)
    before = [p.detach().clone() for p in flow.parameters()]
    net = InferenceNetwork(4, hidden_features=(16,), generator=generator).double()
    lr = 1e-3
    history = fit_inference_network(flow, y, hidden, net, max_epochs=1, batch_size=128, lr=lr, n_samples=2,
                                    train_flow=True, generator=generator)
    assert history.n_steps == 1
    # Adam's first step moves each entry by lr * g / (|g| + 1e-8): at most lr, and lr up to
    # 1e-8 / |g| for the entries with the largest gradient (|g| well above 1e-3 here).
    moves = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(flow.parameters(), before, strict=True)])
    assert moves.max().item() == pytest.approx(lr, rel=1e-5)
    assert moves.max().item() <= lr
    net_only = [p.detach().clone() for p in flow.parameters()]
    fit_inference_network(flow, y, hidden, net, max_epochs=1, batch_size=64, n_samples=2, generator=generator)
    assert all(torch.equal(a, b) for a, b in zip(net_only, flow.parameters(), strict=True))


def test_fit_posterior_improves_the_bound_and_restores_flow_gradients(generator):
    flow, y, hidden = correlated_rows(generator, n=16)
    posterior = GaussianPosterior(16, 4).double()
    history = fit_posterior(flow, y, hidden, posterior, max_steps=100, generator=generator)
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.n_steps == len(history.train_loss) == len(history.epoch_seconds)
    assert history.best_epoch == history.n_steps - 1  # fit_posterior keeps the last weights
    assert all(p.requires_grad for p in flow.parameters())


def test_fitting_trains_under_a_callers_no_grad(generator):
    flow, y, hidden = correlated_rows(generator, n=16)
    posterior = GaussianPosterior(16, 4).double()
    before = posterior.mean.detach().clone()
    with torch.no_grad():
        fit_posterior(flow, y, hidden, posterior, max_steps=3, generator=generator)
    assert not torch.equal(posterior.mean.detach()[hidden], before[hidden])


def test_non_finite_bound_steps_are_skipped(generator, monkeypatch):
    flow, y, hidden = correlated_rows(generator, n=8)
    real, calls = fitting.bound_terms, []

    def broken(*args, **kwargs):
        calls.append(1)
        terms = real(*args, **kwargs)
        if len(calls) % 2:
            return terms._replace(log_weight=terms.log_weight * float("nan"))
        return terms

    monkeypatch.setattr(fitting, "bound_terms", broken)
    posterior = GaussianPosterior(8, 4).double()
    with pytest.warns(NumericalWarning, match="skipped"):
        history = fit_posterior(flow, y, hidden, posterior, max_steps=6, generator=generator)
    # Calls 1, 3 and 5 (steps 0, 2, 4) are NaN: skipped, recorded as NaN losses.
    assert (history.n_steps, history.n_skipped_steps) == (6, 3)
    assert [v != v for v in history.train_loss] == [True, False] * 3
    assert bool(torch.isfinite(posterior.mean).all())


def test_masked_bound_iwae_is_at_least_the_elbo_and_leaves_out_unsolved_draws(generator):
    flow, y, hidden = correlated_rows(generator, n=32)
    with torch.no_grad():
        terms = bound_terms(flow, y, hidden, prior_parameters(32, 4, torch.float64), n_samples=16,
                            generator=generator)
    elbo, _ = masked_bound(terms, "elbo")
    iwae, _ = masked_bound(terms, "iwae")
    # Jensen, row by row; a row with nothing hidden has equal weights, where the two coincide up to
    # logsumexp's rounding (a few ulp at |log w| ~ 10).
    assert bool((iwae >= elbo - 1e-12).all())
    terms = terms._replace(converged=terms.converged.clone())
    terms.converged[0, 0] = False
    elbo, n_unsolved = masked_bound(terms, "elbo")
    assert n_unsolved == 1
    # Row 0's bound is the mean over its 15 other draws (sum then divide, as masked_bound does).
    assert elbo[0].item() == pytest.approx(terms.log_weight[1:, 0].mean().item(), rel=1e-14)


def test_iwae_trains_an_inference_network(generator):
    flow, y, hidden = correlated_rows(generator, n=128)
    net = InferenceNetwork(4, hidden_features=(16,), generator=generator).double()
    history = fit_inference_network(flow, y, hidden, net, max_epochs=4, batch_size=64, lr=3e-3, n_samples=4,
                                    objective="iwae", generator=generator)
    assert history.train_loss[-1] < history.train_loss[0]


@pytest.mark.parametrize(("kwargs", "match"), [({"objective": "kl"}, "objective"),
                                               ({"objective": "iwae", "logdet": "clade"}, "exact"),
                                               ({"monitor": "loss"}, "monitor"),
                                               ({"validation_fraction": 1.0}, r"\[0, 1\)"),
                                               ({"validation_fraction": 0.1}, "holds out no row"),
                                               ({"monitor": "imputation"}, "validation_fraction > 0")])
def test_bad_inference_network_arguments_raise(generator, kwargs, match):
    flow, y, hidden = correlated_rows(generator, n=8)
    with pytest.raises(ValueError, match=match):
        fit_inference_network(flow, y, hidden, InferenceNetwork(4).double(), **kwargs)


def test_stick_the_landing_with_iwae_raises_naming_both(generator):
    flow, y, hidden = correlated_rows(generator, n=8)
    with pytest.raises(ValueError, match=r"stick_the_landing=True.*objective='iwae'"):
        fit_posterior(flow, y, hidden, GaussianPosterior(8, 4).double(), objective="iwae", stick_the_landing=True)


@pytest.mark.parametrize(("objective", "meaning"), [("elbo", True), ("iwae", False)])
def test_stick_the_landing_default_is_on_for_the_elbo_only(objective, meaning):
    flow, y, hidden = correlated_rows(torch.Generator().manual_seed(0), n=8)
    fitted = []
    for stick_the_landing in (None, meaning):
        posterior = GaussianPosterior(8, 4).double()
        fit_posterior(flow, y, hidden, posterior, max_steps=3, objective=objective,
                      stick_the_landing=stick_the_landing, generator=torch.Generator().manual_seed(1))
        fitted.append(posterior.state_dict())
    assert all(torch.equal(fitted[0][k], fitted[1][k]) for k in fitted[0])


def fit_with_held_out_rows(generator, **kwargs):
    """128 rows, a quarter held out, lr=0.05 (overshoots within a few epochs), patience 2."""
    flow, y, hidden = correlated_rows(generator, n=128)
    net = InferenceNetwork(4, hidden_features=(16,), generator=generator).double()
    return fit_inference_network(flow, y, hidden, net, max_epochs=40, batch_size=32, lr=0.05, n_samples=2,
                                 train_flow=True, validation_fraction=0.25, patience=2, generator=generator, **kwargs)


def test_validation_split_early_stops_and_restores_the_best(generator):
    history = fit_with_held_out_rows(generator)
    assert len(history.validation_loss) == len(history.train_loss) == len(history.epoch_seconds)
    assert history.validation_loss[history.best_epoch] == min(history.validation_loss)
    # lr=0.05 overshoots within a few epochs (measured: stops at epoch 5 of 40).
    assert history.stopped_early and len(history.train_loss) < 40
    assert len(history.validation_loss) - 1 - history.best_epoch == 2


def test_min_steps_hold_off_early_stopping(generator):
    # The run above stops at epoch 5; 96 training rows in batches of 32 are 3 steps an epoch, so
    # 30 steps hold it to 10 epochs at least.
    history = fit_with_held_out_rows(generator, min_steps=30)
    assert history.stopped_early and len(history.train_loss) >= 10 and history.n_steps >= 30
    assert history.validation_loss[history.best_epoch] == min(history.validation_loss)


def test_smoothing_stops_on_the_moving_average_of_the_held_out_loss(generator):
    history = fit_with_held_out_rows(generator, smoothing=0.3)
    average = [history.validation_loss[0]]
    for loss in history.validation_loss[1:]:
        average.append(0.7 * average[-1] + 0.3 * loss)
    # The best epoch is the smoothed loss's minimum (kept weights), and the stop came two stale
    # epochs of the average after it; the raw losses are what the history records.
    assert history.stopped_early and history.best_epoch == int(np.argmin(average))
    assert len(average) - 1 - history.best_epoch == 2


def test_unsolved_draws_are_left_out_and_reported_once(generator):
    flow, y, hidden = correlated_rows(generator, n=128)
    net = InferenceNetwork(4, hidden_features=(8,), generator=generator).double()
    # One Newton step at a tolerance below rounding: most draws with a hidden entry stay unsolved
    # (the flow is affine, so a few land exactly).
    options = SolverOptions(tol=1e-30, max_iter=1, fixed_point_max_iter=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fit_inference_network(flow, y, hidden, net, max_epochs=2, batch_size=32, n_samples=2,
                                        solver="newton", options=options, generator=generator)
    constraint = [w for w in caught if issubclass(w.category, ConstraintWarning)]
    assert len(constraint) == 1 and "not solved" in str(constraint[0].message)
    possible = 2 * 2 * int(hidden.any(1).sum())  # epochs x draws x rows with a hidden entry
    assert possible / 2 < history.n_unsolved_draws <= possible


def test_imputation_monitor_records_held_out_rmse(generator):
    flow, y, hidden = correlated_rows(generator, n=128)
    net = InferenceNetwork(4, hidden_features=(8,), generator=generator).double()
    history = fit_inference_network(flow, y, hidden, net, max_epochs=3, batch_size=32, n_samples=2,
                                    validation_fraction=0.25, monitor="imputation", generator=generator)
    # An RMSE of completions of unit-scale columns: positive, and below the ~1 of guessing 0.
    assert len(history.validation_loss) == 3 and all(0.0 < v < 1.0 for v in history.validation_loss)


def test_epochs_and_the_held_out_rows_are_capped(generator):
    flow, y, hidden = correlated_rows(generator, n=40)
    network = InferenceNetwork(4, hidden_features=(8,), generator=generator).double()
    history = fit_inference_network(flow, y, hidden, network, max_epochs=3, batch_size=4, n_samples=2,
                                    validation_fraction=0.5, patience=10, rows_per_epoch=8, max_validation_rows=5,
                                    generator=generator)
    # 20 held out would leave 20 to train on; capped at 5 held out, an epoch is 8 of the 35: 2 steps.
    assert history.n_steps == 3 * 2 and len(history.validation_loss) == 3


@pytest.mark.parametrize("fallback", [False, True])
def test_training_leaves_out_the_fixed_point_fallback_of_auto(generator, monkeypatch, fallback):
    from skivcnf.conditional import solvers

    flow, y, hidden = correlated_rows(generator, n=64)
    net = InferenceNetwork(4, hidden_features=(8,), generator=generator).double()
    calls = []

    def fixed_point(flow, y, hidden, x_target, options):
        calls.append(len(y))
        return y, flow(y), torch.full((len(y),), float("inf"), dtype=y.dtype), torch.zeros(len(y), dtype=torch.long)

    monkeypatch.setitem(solvers._SOLVER_FUNCTIONS, "fixed_point", fixed_point)
    monkeypatch.setattr(fitting, "FIXED_POINT_IN_TRAINING", fallback)
    # Newton in one step at a tolerance below rounding: draws are left for the fallback, if any.
    options = SolverOptions(tol=1e-30, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstraintWarning)
        history = fit_inference_network(flow, y, hidden, net, max_epochs=1, batch_size=32, n_samples=2,
                                        solver="auto", options=options, generator=generator)
    assert history.n_unsolved_draws > 0
    assert bool(calls) == fallback
    # Outside training "auto" keeps the fallback.
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstraintWarning)
        solvers.solve_constraint(flow, y, hidden, torch.zeros_like(y), options=options)
    assert calls
