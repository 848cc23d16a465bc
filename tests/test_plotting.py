"""skivcnf.plotting: what the figures show equals what the imputer returns (Agg backend, tiny fits)."""

import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from skivcnf import IVCNFImputer
from skivcnf.flows import TrainingHistory

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from skivcnf.plotting import plot_imputed_distributions, plot_training_history  # noqa: E402

TINY = dict(max_epochs=3, n_draws=8, hidden_layer_sizes=(16,), n_blocks=2, random_state=0)
NAMES = [f"x{j}" for j in range(7)]
M = 3  # imputations drawn by the tests that compare values


def fit_quietly(imputer, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 3 epochs: early stopping cannot fire
        return imputer.fit(X)


@pytest.fixture(scope="module")
def fitted():
    """A tiny imputer fitted on an 80 x 7 DataFrame whose column x1 is complete, that frame, and M copies of it."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(80, 7)) @ rng.normal(size=(7, 7))
    holes = rng.random(values.shape) < 0.2
    holes[:, 1] = False
    frame = pd.DataFrame(np.where(holes, np.nan, values), columns=NAMES)
    imputer = fit_quietly(IVCNFImputer(**TINY), frame)
    return imputer, frame, imputer.sample_multiple_imputations(frame, M)  # the same copies at every call (seeded)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def bar_heights_and_edges(container):
    bars = list(container)
    return (np.array([bar.get_height() for bar in bars]),
            np.array([bar.get_x() for bar in bars] + [bars[-1].get_x() + bars[-1].get_width()]))


def check_panel(ax, observed, imputed, bins, title):
    """The panel's bars are the density histograms of ``observed`` and ``imputed`` on their common bins."""
    edges = np.histogram_bin_edges(np.concatenate([observed, imputed]), bins=bins)
    (observed_heights, observed_edges), (imputed_heights, imputed_edges) = map(bar_heights_and_edges, ax.containers)
    np.testing.assert_allclose(observed_edges, edges, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(imputed_edges, edges, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(observed_heights, np.histogram(observed, bins=edges, density=True)[0], rtol=1e-12)
    np.testing.assert_allclose(imputed_heights, np.histogram(imputed, bins=edges, density=True)[0], rtol=1e-12)
    assert ax.get_title() == title


def test_histograms_are_the_observed_and_the_pooled_imputed_values(fitted):
    imputer, frame, copies = fitted
    X = frame.to_numpy()
    mask = np.isnan(X)
    fig = plot_imputed_distributions(imputer, frame, n_imputations=M, columns=[0, "x3"], bins=12)
    assert len(fig.axes) == 2
    for ax, j in zip(fig.axes, [0, 3], strict=True):
        imputed = copies[:, mask[:, j], j].ravel()
        assert imputed.size == M * mask[:, j].sum() and mask[:, j].sum() > 10
        check_panel(ax, X[~mask[:, j], j], imputed, 12, f"x{j} ({mask[:, j].sum()} missing)")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["observed", f"imputed ({M} copies)"]


def test_default_columns_are_the_first_six_with_missing_entries(fitted):
    imputer, frame, _ = fitted
    fig = plot_imputed_distributions(imputer, frame, n_imputations=1)
    assert [ax.get_title().split()[0] for ax in fig.axes] == ["x0", "x2", "x3", "x4", "x5", "x6"]  # x1 is complete
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 3)


def test_pandas_output_gives_the_same_figure(fitted):
    imputer, frame, _ = fitted
    # Proper copies re-train the flow: recomputed here, under this test's torch threads.
    copies = imputer.sample_multiple_imputations(frame, M)
    imputer.set_output(transform="pandas")
    try:
        fig = plot_imputed_distributions(imputer, frame, n_imputations=M, columns="x2")
    finally:
        imputer.set_output(transform="default")
    hidden = frame["x2"].isna().to_numpy()
    check_panel(fig.axes[0], frame["x2"].dropna().to_numpy(), copies[:, hidden, 2].ravel(), 30,
                f"x2 ({hidden.sum()} missing)")


def test_draws_into_given_axes(fitted):
    imputer, frame, _ = fitted
    fig, axes = plt.subplots(1, 3)
    assert plot_imputed_distributions(imputer, frame, n_imputations=1, columns=[4, 5], axes=axes) is fig
    assert [len(ax.containers) for ax in axes] == [2, 2, 0]
    with pytest.raises(ValueError, match="axes has 1 axes for 2 columns"):
        plot_imputed_distributions(imputer, frame, columns=[4, 5], axes=axes[0])


@pytest.mark.parametrize(("columns", "error", "message"), [
    ("nope", ValueError, "'nope' is not a feature"),
    (7, ValueError, "index 7 is out of range for the imputer's 7 features"),
    (["x0", "x1"], ValueError, "'x1' has no missing entries in X"),
    ([], ValueError, "columns is empty"),
    ([1.5], TypeError, "columns must hold column indices"),
])
def test_bad_columns_raise(fitted, columns, error, message):
    imputer, frame, _ = fitted
    with pytest.raises(error, match=message):
        plot_imputed_distributions(imputer, frame, columns=columns)


def test_bad_tables_and_unfitted_imputers_raise(fitted):
    imputer, frame, _ = fitted
    with pytest.raises(ValueError, match="X has 6 columns; the imputer was fitted on 7"):
        plot_imputed_distributions(imputer, frame.iloc[:, :6].to_numpy())
    with pytest.raises(ValueError, match="no missing entries"):
        plot_imputed_distributions(imputer, frame.fillna(0.0))
    with pytest.raises(NotFittedError):
        plot_imputed_distributions(IVCNFImputer(), frame)


def test_empty_columns_are_skipped_and_the_output_columns_shift():
    # Column 1 is entirely missing at fit, so it is dropped: input column 2 is output column 1.
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3))
    X[:, 1] = np.nan
    X[rng.random(40) < 0.3, 2] = np.nan
    X[rng.random(40) < 0.3, 0] = np.nan
    imputer = fit_quietly(IVCNFImputer(**{**TINY, "max_epochs": 1}), X)
    assert imputer.sample_multiple_imputations(X, 2).shape == (2, 40, 2)
    fig = plot_imputed_distributions(imputer, X, n_imputations=2)
    assert [ax.get_title() for ax in fig.axes] == [f"column 0 ({np.isnan(X[:, 0]).sum()} missing)",
                                                  f"column 2 ({np.isnan(X[:, 2]).sum()} missing)"]
    hidden = np.isnan(X[:, 2])
    check_panel(fig.axes[1], X[~hidden, 2], imputer.sample_multiple_imputations(X, 2)[:, hidden, 1].ravel(), 30,
                f"column 2 ({hidden.sum()} missing)")
    with pytest.raises(ValueError, match="1 was entirely missing at fit"):
        plot_imputed_distributions(imputer, X, columns=1)
    with pytest.raises(ValueError, match="'x0' is a name, but the imputer was fitted without feature names"):
        plot_imputed_distributions(imputer, X, columns="x0")


def test_training_curve_and_best_epoch(fitted):
    imputer, _, _ = fitted
    history = imputer.history_
    assert len(history.validation_loss) == len(history.train_loss) == 3 and history.best_epoch >= 0
    fig = plot_training_history(imputer)
    ax, held_out = fig.axes
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), history.train_loss)
    np.testing.assert_array_equal(held_out.lines[0].get_ydata(), history.validation_loss)
    assert list(ax.lines[1].get_xdata()) == [history.best_epoch + 1] * 2  # epochs numbered from 1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "training rows (train_loss)", f"best epoch ({history.best_epoch + 1})", "held-out rows (validation_loss)"]
    # the history itself, into given axes
    fig, ax = plt.subplots()
    assert plot_training_history(history, ax=ax) is fig
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), history.train_loss)


def test_training_curve_without_held_out_rows_or_kept_epoch():
    fig = plot_training_history(TrainingHistory(train_loss=[2.0, 1.5]))
    (ax,) = fig.axes  # no twin axes without validation_loss
    assert len(ax.lines) == 1  # and no best-epoch line for best_epoch = -1
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [2.0, 1.5])


def test_training_curve_errors():
    with pytest.raises(NotFittedError):
        plot_training_history(IVCNFImputer())
    constant = IVCNFImputer(**TINY).fit(np.array([[1.0, 2.0], [np.nan, 2.0], [1.0, np.nan]]))
    assert constant.history_ is None
    with pytest.raises(ValueError, match="history_ is None: it modelled no column"):
        plot_training_history(constant)
    with pytest.raises(TypeError, match="history must be a fitted IVCNFImputer or its history_"):
        plot_training_history([1.0, 2.0])


def test_missing_matplotlib_says_how_to_install(monkeypatch, fitted):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # import fails as if not installed
    for call in (lambda: plot_training_history(fitted[0]), lambda: plot_imputed_distributions(*fitted[:2])):
        with pytest.raises(ImportError, match=r"needs matplotlib: pip install skivcnf\[plot\]"):
            call()


def test_categorical_columns_get_bars_of_category_shares():
    rng = np.random.default_rng(0)
    x = rng.normal(size=90)
    frame = pd.DataFrame({"x": x, "kind": np.array(["a", "b", "c"], dtype=object)[np.digitize(x, [-0.4, 0.4])]})
    frame.loc[rng.random(90) < 0.25, "kind"] = None
    imputer = fit_quietly(IVCNFImputer(**TINY), frame)
    fig = plot_imputed_distributions(imputer, frame, n_imputations=M, columns=["kind"])
    observed, imputed = ([bar.get_height() for bar in container] for container in fig.axes[0].containers)
    seen = frame["kind"].dropna()
    np.testing.assert_allclose(observed, [np.mean(seen == c) for c in "abc"])
    copies = imputer.sample_multiple_imputations(frame, M)
    drawn = np.concatenate([copy[frame["kind"].isna().to_numpy(), 1] for copy in copies])
    np.testing.assert_allclose(imputed, [np.mean(drawn == c) for c in "abc"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c"]
