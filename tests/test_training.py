import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons
from sklearn.preprocessing import StandardScaler

from skivcnf.exceptions import NumericalWarning
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
    assert history.n_skipped_steps == 0


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
    assert restored == pytest.approx(history.validation_loss[history.best_epoch], rel=1e-9)


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
    generator = torch.Generator().manual_seed(2)
    flow = ResidualFlow(2, n_blocks=2, hidden_features=(8,), generator=generator)
    history = fit_flow(flow, train[:200], max_epochs=2, generator=generator)
    assert all(p.dtype == torch.float32 for p in flow.parameters())
    assert all(math.isfinite(v) for v in history.train_loss)


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
    assert history.n_skipped_steps > 0
    assert all(bool(torch.isfinite(p).all()) for p in flow.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"lr": 0}, "lr"), ({"batch_size": 0}, "batch_size"),
     ({"validation_fraction": 1.0}, "validation_fraction"), ({"max_epochs": -1}, "max_epochs")],
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
