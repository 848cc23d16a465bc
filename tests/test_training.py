import copy
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons
from sklearn.preprocessing import StandardScaler

from skivcnf._training import EarlyStopping, TrainingHistory, fit_loop, guarded_step, warn_training_issues
from skivcnf.exceptions import ConstraintWarning, NumericalWarning
from skivcnf.flows import ResidualFlow, fit_flow

LIPSCHITZ = 0.9


@pytest.fixture(scope="module")
def moons():
    data, _ = make_moons(1500, noise=0.08, random_state=0)
    data = StandardScaler().fit_transform(data)
    return data[:1000], data[1000:]


@pytest.fixture(scope="module")
def trained_moons(moons):
    train, _ = moons
    generator = torch.Generator().manual_seed(0)
    flow = ResidualFlow(2, n_blocks=6, hidden_features=(32, 32), lipschitz_coeff=LIPSCHITZ,
                        generator=generator).double()
    history = fit_flow(flow, train, max_epochs=60, batch_size=128, lr=5e-3, generator=generator)
    return flow, history


def gaussian_log_likelihood(train, test):
    mean, cov = train.mean(0), np.cov(train.T)
    gaussian = torch.distributions.MultivariateNormal(torch.tensor(mean), torch.tensor(cov))
    return gaussian.log_prob(torch.tensor(test)).mean().item()


# ----------------------------------------------------------------- the shared pieces


def one_weight(value=1.0):
    weight = torch.nn.Parameter(torch.tensor([value], dtype=torch.float64))
    return weight, torch.optim.SGD([weight], lr=0.5)


def test_guarded_step_takes_a_finite_step():
    weight, optimizer = one_weight()
    history = TrainingHistory()
    assert guarded_step(optimizer, (weight ** 2).sum(), history)
    # SGD: 1 - 0.5 * d(w^2)/dw = 1 - 0.5 * 2 = 0, exact in binary floating point.
    assert weight.item() == 0.0
    assert (history.n_steps, history.n_skipped_steps) == (1, 0)


def test_guarded_step_skips_and_counts_a_nan_loss():
    weight, optimizer = one_weight()
    history = TrainingHistory()
    assert not guarded_step(optimizer, weight.sum() * float("nan"), history)
    assert weight.item() == 1.0 and weight.grad is None
    assert (history.n_steps, history.n_skipped_steps) == (1, 1)


def test_guarded_step_skips_and_counts_a_nan_gradient():
    weight, optimizer = one_weight()
    history = TrainingHistory()
    # sqrt(w - 1) at w = 1: the loss is 0 (finite), its gradient 1 / (2 sqrt(0)) is infinite.
    loss = torch.sqrt(weight - 1.0).sum()
    assert loss.item() == 0.0
    assert not guarded_step(optimizer, loss, history)
    assert weight.item() == 1.0 and weight.grad is None  # no non-finite gradient is left behind
    assert guarded_step(optimizer, (weight ** 2).sum(), history)  # and the next step is a normal one
    assert weight.item() == 0.0
    assert (history.n_steps, history.n_skipped_steps) == (2, 1)


def test_guarded_step_clips_the_gradient_norm():
    weight, optimizer = one_weight()
    # Gradient 2 * 10 * w = 20, clipped to norm 1: the step is lr * 1 = 0.5. clip_grad_norm_
    # divides by (norm + 1e-6), so the step is short by 0.5 * 1e-6 / 20 relative: 1e-7 covers it.
    guarded_step(optimizer, (10 * weight ** 2).sum(), TrainingHistory(), max_grad_norm=1.0)
    assert weight.item() == pytest.approx(0.5, abs=1e-7)


def test_early_stopping_stops_after_patience_stale_epochs_and_restores_the_best():
    layer = torch.nn.Linear(2, 1).double()
    stopper = EarlyStopping(patience=3, min_delta=0.1, modules=[layer])
    losses = [5.0, 4.0, 3.0, 2.95, 3.5, 2.91, 1.0]  # best at epoch 2; 2.95 and 2.91 are within min_delta
    stops = []
    for epoch, loss in enumerate(losses):
        with torch.no_grad():
            layer.bias.fill_(float(epoch))  # the bias records the epoch whose state is current
        stops.append(stopper.update(loss))
        if stops[-1]:
            break
    assert stops == [False, False, False, False, False, True]  # stopped after 3 stale epochs (3, 4, 5)
    assert (stopper.best_epoch, stopper.best_loss, stopper.n_stale) == (2, 3.0, 3)
    assert layer.bias.item() == 5.0
    stopper.restore_best()
    assert layer.bias.item() == 2.0


def test_early_stopping_nan_never_improves_and_nothing_is_restored_without_an_improvement():
    layer = torch.nn.Linear(1, 1)
    stopper = EarlyStopping(patience=2, modules=[layer])
    before = copy.deepcopy(layer.state_dict())
    assert [stopper.update(math.nan), stopper.update(math.nan)] == [False, True]
    assert stopper.best_epoch == -1
    with torch.no_grad():
        layer.weight.add_(1.0)
    stopper.restore_best()  # no state was kept: the current weights stay
    assert torch.equal(layer.weight, before["weight"] + 1.0)


def test_early_stopping_monitors_a_moving_average():
    stopper = EarlyStopping(patience=1, min_delta=0.0, ema_weight=0.5)
    # Averages: 4, (4 + 2) / 2 = 3, (3 + 3) / 2 = 3 (not below 3: stale, stop). All exact in binary.
    assert [stopper.update(4.0), stopper.update(2.0), stopper.update(3.0)] == [False, False, True]
    assert (stopper.monitored, stopper.best_loss, stopper.best_epoch) == (3.0, 3.0, 1)


def test_early_stopping_waits_for_min_updates():
    stopper = EarlyStopping(patience=1, min_updates=4)
    # Stale from the second update on, but no stop before the fourth.
    assert [stopper.update(1.0), stopper.update(2.0), stopper.update(2.0), stopper.update(2.0)] == [
        False, False, False, True]
    assert stopper.n_stale == 3


@pytest.mark.parametrize(("kwargs", "match"), [({"patience": 0}, "patience"),
                                               ({"patience": 1, "ema_weight": 0.0}, "ema_weight")])
def test_early_stopping_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)


def test_training_issues_are_warned_once_each():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_training_issues(TrainingHistory())
        warn_training_issues(TrainingHistory(n_skipped_steps=2, n_unsolved_draws=5))
    assert [w.category for w in caught] == [NumericalWarning, ConstraintWarning]
    assert str(caught[0].message).startswith("2 training steps") and str(caught[1].message).startswith("5 draws")


def test_fit_loop_reports_unsolved_draws_once_at_the_caller():
    history = TrainingHistory()

    def epoch_with_unsolved_draws():
        history.n_unsolved_draws += 2
        warnings.warn("one step's draws were not solved", ConstraintWarning, stacklevel=1)
        return 1.0

    def fit():  # stands for fit_flow / fit_posterior / fit_inference_network
        return fit_loop(history, epoch_with_unsolved_draws, max_epochs=3)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit()
    assert [(w.category, w.filename) for w in caught] == [(ConstraintWarning, __file__)]
    assert str(caught[0].message).startswith("6 draws")
    assert (history.train_loss, history.best_epoch, history.stopped_early) == ([1.0] * 3, 2, False)


# ----------------------------------------------------------------- fit_flow


def test_flow_beats_gaussian_on_two_moons(moons, trained_moons):
    train, test = moons
    flow, _ = trained_moons
    with torch.no_grad():
        flow_ll = flow.log_prob(torch.tensor(test)).mean().item()
    # Two moons is far from Gaussian (held-out -2.72 nats for the Gaussian fit); a flow
    # that learned the shape gains well over 0.3 nats per point.
    assert flow_ll > gaussian_log_likelihood(train, test) + 0.3


def test_spectral_bounds_hold_after_training(trained_moons):
    flow, _ = trained_moons
    bounds = flow.lipschitz_bounds()
    assert max(bounds) <= LIPSCHITZ + 1e-6
    assert max(bounds) > 0.5  # training used the room it had: the bound is active


def test_trained_flow_inverts_to_1e_8(moons, trained_moons):
    _, test = moons
    flow, _ = trained_moons
    y = torch.tensor(test)
    far = 3 * torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.cat([y, far])
    result = flow.invert(flow(y).detach())
    assert bool(result.converged.all())
    assert (result.solution - y).abs().max().item() < 1e-8


def test_learned_density_integrates_to_one(trained_moons):
    flow, _ = trained_moons
    edge, n = 7.0, 401
    grid = torch.linspace(-edge, edge, n, dtype=torch.float64)
    points = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        density = torch.cat([flow.log_prob(chunk).exp() for chunk in points.split(20000)])
    cell = (2 * edge / (n - 1)) ** 2
    assert density.sum().item() * cell == pytest.approx(1.0, abs=0.01)


def test_history_records_epochs_and_best(trained_moons):
    _, history = trained_moons
    n_epochs = len(history.train_loss)
    assert len(history.validation_loss) == len(history.epoch_seconds) == n_epochs
    assert history.validation_loss[history.best_epoch] == min(history.validation_loss)
    assert history.train_loss[-1] < history.train_loss[0]
    # 900 training rows in batches of 128: 8 steps an epoch, none skipped.
    assert (history.n_steps, history.n_skipped_steps, history.n_unsolved_draws) == (8 * n_epochs, 0, 0)
    assert history.seconds >= sum(history.epoch_seconds)


def test_early_stopping_restores_best_weights(moons):
    train, _ = moons
    flow = ResidualFlow(2, n_blocks=2, hidden_features=(8,), generator=torch.Generator().manual_seed(1))
    flow = flow.double()
    # lr so large that validation loss soon stops improving
    history = fit_flow(flow, train[:300], max_epochs=200, lr=0.3, patience=3,
                       generator=torch.Generator().manual_seed(1))
    assert history.stopped_early
    assert len(history.train_loss) < 200
    assert len(history.validation_loss) - 1 - history.best_epoch == 3
    # The restored weights give the best validation loss, not the last one. The split is
    # the generator's first permutation (validation rows first).
    rows = torch.randperm(300, generator=torch.Generator().manual_seed(1))[:30]
    with torch.no_grad():
        restored = -flow.log_prob(torch.tensor(train[:300])[rows]).mean().item()
    # One batch against a sum over one batch: the two means differ only by rounding.
    assert restored == pytest.approx(history.validation_loss[history.best_epoch], rel=1e-9)


def test_without_validation_the_last_epoch_is_kept(moons):
    train, _ = moons
    flow = ResidualFlow(2, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(1)).double()
    history = fit_flow(flow, train[:100], max_epochs=3, validation_fraction=0.0,
                       generator=torch.Generator().manual_seed(1))
    assert (len(history.train_loss), history.validation_loss, history.best_epoch, history.stopped_early) == (
        3, [], 2, False)


def test_fit_is_reproducible(moons):
    train, _ = moons
    runs = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(5)
        flow = ResidualFlow(2, n_blocks=2, hidden_features=(8,), generator=generator).double()
        runs.append(fit_flow(flow, train[:200], max_epochs=3, generator=generator).train_loss)
    assert runs[0] == runs[1]


def test_float32_flow_trains_in_float32_from_float64_data(moons):
    train, _ = moons
    flow = ResidualFlow(2, n_blocks=2, hidden_features=(8,), generator=torch.Generator().manual_seed(2))
    twin = copy.deepcopy(flow).double()
    history = fit_flow(flow, train[:200], max_epochs=2, generator=torch.Generator().manual_seed(7))
    twin_history = fit_flow(twin, train[:200], max_epochs=2, generator=torch.Generator().manual_seed(7))
    assert all(p.dtype == torch.float32 for p in flow.parameters())
    # Same weights, split and shuffles as the float64 twin: the losses agree to float32
    # rounding (measured ~5e-8 relative; 1e-5 leaves room for a few hundred roundings).
    assert history.train_loss == pytest.approx(twin_history.train_loss, rel=1e-5)
    assert history.validation_loss == pytest.approx(twin_history.validation_loss, rel=1e-5)


def test_non_finite_steps_are_skipped_and_reported(moons, monkeypatch):
    train, _ = moons
    generator = torch.Generator().manual_seed(4)
    flow = ResidualFlow(2, n_blocks=1, hidden_features=(8,), generator=generator).double()
    real_log_prob, calls = flow.log_prob, []

    def sometimes_nan(y, gen=None):
        calls.append(1)
        out = real_log_prob(y, gen)
        return out * float("nan") if len(calls) % 3 == 0 else out

    monkeypatch.setattr(flow, "log_prob", sometimes_nan)
    with pytest.warns(NumericalWarning, match="skipped"):
        history = fit_flow(flow, train[:256], max_epochs=2, batch_size=32, validation_fraction=0,
                           generator=generator)
    # 2 epochs x 8 batches = 16 steps, one log_prob call each; every third (3, 6, ..., 15) is NaN.
    assert (len(calls), history.n_steps, history.n_skipped_steps) == (16, 16, 5)
    assert all(bool(torch.isfinite(p).all()) for p in flow.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"lr": 0}, "lr"), ({"batch_size": 0}, "batch_size"),
     ({"validation_fraction": 1.0}, "validation_fraction"), ({"max_epochs": -1}, "max_epochs"),
     ({"patience": 0}, "patience")],
)
def test_bad_arguments_raise(kwargs, match):
    flow = ResidualFlow(2, n_blocks=1)
    with pytest.raises(ValueError, match=match):
        fit_flow(flow, np.zeros((10, 2)), **kwargs)


def test_incomplete_rows_are_rejected():
    flow = ResidualFlow(2, n_blocks=1)
    data = np.zeros((10, 2))
    data[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"), warnings.catch_warnings():
        fit_flow(flow, data)
