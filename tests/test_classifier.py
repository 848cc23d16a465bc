"""IVCNFClassifier: the scikit-learn classifier contract, joint training, prediction from weighted draws."""

import json
import pickle

import numpy as np
import pytest
import torch
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from skivcnf import IVCNFClassifier, IVCNFImputer
from skivcnf.conditional import BoundTerms, ClassificationTask, ClassifierHead
from skivcnf.flows import ResidualFlow

from .helpers import TINY_IMPUTER

#: Small, but trained enough for scikit-learn's accuracy check (0.83 on its blobs).
SMALL = {**TINY_IMPUTER, "hidden_layer_sizes": (16,), "max_epochs": 30, "head_hidden_layer_sizes": (16,)}


@parametrize_with_checks([IVCNFClassifier(**SMALL)])
def test_sklearn_contract(estimator, check):
    check(estimator)


def blobs(n=120, d=4, rate=0.3, seed=0):
    """Two Gaussian classes 4 sd apart along every axis, with entries missing completely at random."""
    rng = np.random.default_rng(seed)
    y = np.repeat(["neg", "pos"], n // 2)
    X = rng.normal(size=(n, d)) + np.where(y == "pos", 2.0, -2.0)[:, None]
    return np.where(rng.random(X.shape) < rate, np.nan, X), y


@pytest.fixture(scope="module")
def fitted():
    X, y = blobs()
    return IVCNFClassifier(**SMALL).fit(X, y), X, y


def test_learns_from_incomplete_rows(fitted):
    # Bayes accuracy of these classes is above 0.99 even with a third of the entries missing:
    # a classifier that did not learn scores about 0.5.
    clf, _, _ = fitted
    X_test, y_test = blobs(seed=1)
    assert clf.score(X_test, y_test) > 0.9


def test_probabilities_and_labels(fitted):
    clf, X, _ = fitted
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2) and clf.classes_.tolist() == ["neg", "pos"]
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert (clf.predict(X) == clf.classes_[proba.argmax(axis=1)]).all()
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), proba, rtol=1e-12)


def test_a_row_is_predicted_as_in_any_batch(fitted):
    clf, X, _ = fitted
    np.testing.assert_allclose(clf.predict_proba(X[5:6]), clf.predict_proba(X)[5:6], atol=1e-6)


def test_a_complete_row_has_one_completion(fitted):
    # Nothing to draw: every draw is the row itself, so the probabilities are the head's on the
    # standardised row (the default head reads the completed rows, not their latent codes).
    clf, _, _ = fitted
    row = np.array([[2.0, 1.5, 2.5, 2.0]])
    z = torch.as_tensor(clf._layout().standardise(row), dtype=torch.float32)
    clf.head_.eval()
    with torch.no_grad():
        expected = torch.softmax(clf.head_(z), dim=-1).double().numpy()
    np.testing.assert_allclose(clf.predict_proba(row), expected, atol=1e-6)


def test_it_is_also_an_imputer(fitted):
    clf, X, _ = fitted
    out = clf.transform(X)
    observed = ~np.isnan(X)
    assert np.isfinite(out).all() and np.array_equal(out[observed], X[observed])


def test_pipeline_and_cross_validation():
    X, y = blobs()
    scores = cross_val_score(make_pipeline(StandardScaler(), IVCNFClassifier(**SMALL)), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.85


def test_save_load_and_pickle(fitted, tmp_path):
    clf, X, _ = fitted
    clf.save(tmp_path / "clf.pt")
    loaded = IVCNFClassifier.load(tmp_path / "clf.pt")
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert loaded.classes_.tolist() == ["neg", "pos"]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X), clf.predict_proba(X))
    with pytest.raises(ValueError, match="IVCNFClassifier.load"):
        IVCNFImputer.load(tmp_path / "clf.pt")


def test_the_flow_has_no_linear_map_by_default_and_one_saved_with_it_keeps_it(fitted, tmp_path):
    # The imputer's flow starts with the linear map; the classifier's does not (it cost accuracy
    # on digits), and a classifier fitted with the map is saved and loaded with it.
    from skivcnf.flows import InvertibleLinear

    clf, X, y = fitted
    assert not any(isinstance(layer, InvertibleLinear) for layer in clf.flow_.layers)
    with_map = IVCNFClassifier(**SMALL, linear_layer=True).fit(X, y)
    assert isinstance(with_map.flow_.layers[0], InvertibleLinear)
    with_map.save(tmp_path / "clf.pt")
    loaded = IVCNFClassifier.load(tmp_path / "clf.pt")
    assert loaded.linear_layer is True and isinstance(loaded.flow_.layers[0], InvertibleLinear)
    np.testing.assert_array_equal(loaded.predict_proba(X), with_map.predict_proba(X))


def test_same_seed_same_model():
    X, y = blobs(n=60)
    first = IVCNFClassifier(**SMALL).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(IVCNFClassifier(**SMALL).fit(X, y).predict_proba(X), first)


@pytest.mark.parametrize(("y", "error", "match"), [
    (np.zeros(40), ValueError, "at least 2 classes"),
    (np.r_[np.zeros(20), np.ones(19), np.nan], ValueError, "NaN"),
    (np.r_[np.zeros(20), np.ones(19)], ValueError, "inconsistent numbers of samples"),
    (np.linspace(0, 1, 40), ValueError, "Unknown label type"),
])
def test_bad_labels_raise(y, error, match):
    X, _ = blobs(n=40)
    with pytest.raises(error, match=match):
        IVCNFClassifier(**SMALL).fit(X, y)
    assert not hasattr(IVCNFClassifier(**SMALL), "classes_")


def test_no_modelled_column_predicts_the_class_frequencies():
    X = np.ones((10, 2))
    clf = IVCNFClassifier(**SMALL).fit(X, [0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    assert clf.head_ is None
    np.testing.assert_allclose(clf.predict_proba(X[:2]), [[0.3, 0.7], [0.3, 0.7]])


def test_task_loss_is_the_weighted_cross_entropy_and_reaches_every_module():
    generator = torch.Generator().manual_seed(0)
    flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=generator).double()
    head = ClassifierHead(3, 2, generator=generator).double()
    completed = torch.randn(4, 2, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    log_weight = torch.randn(4, 2, generator=generator, dtype=torch.float64)
    converged = torch.tensor([[True, True], [True, False], [True, True], [False, True]])
    terms = BoundTerms(log_weight, completed.detach(), converged, None, completed)
    labels = torch.tensor([1, 0, 1])
    head.eval()  # in training mode the batch-norm's statistics would couple the draws
    loss = ClassificationTask(head, labels, weight=2.0).row_loss(flow, terms, torch.tensor([0, 2]))
    # By hand: softmax weights over each row's converged draws, cross-entropy of its label (1 for both rows).
    logits = head(flow(completed.reshape(-1, 3))).reshape(4, 2, 2)
    ce = -torch.log_softmax(logits, dim=-1)[..., 1]
    w = torch.softmax(torch.where(converged, log_weight, -torch.inf), dim=0)
    torch.testing.assert_close(loss, 2.0 * (w * torch.where(converged, ce, 0.0)).sum(0))
    loss.sum().backward()
    assert completed.grad.abs().sum() > 0 and (completed.grad[~converged] == 0).all()
    assert all(p.grad is not None for p in flow.parameters() if p.requires_grad)


def test_the_papers_head_on_the_latent_code_learns_and_reads_the_code(tmp_path):
    X, y = blobs()
    clf = IVCNFClassifier(**SMALL, head_input="latent").fit(X, y)
    X_test, y_test = blobs(seed=1)
    assert clf.score(X_test, y_test) > 0.9  # as the default head's test above
    row = np.array([[2.0, 1.5, 2.5, 2.0]])
    z = torch.as_tensor(clf._layout().standardise(row), dtype=torch.float32)
    clf.head_.eval()
    with torch.no_grad():
        expected = torch.softmax(clf.head_(clf.flow_(z)), dim=-1).double().numpy()  # through the flow
    np.testing.assert_allclose(clf.predict_proba(row), expected, atol=1e-6)
    # A classifier saved or pickled before head_input existed read the latent code, and still does.
    clf.save(tmp_path / "clf.pt")
    payload = torch.load(tmp_path / "clf.pt", weights_only=True)
    params = json.loads(payload["params"])
    del params["head_input"]
    torch.save({**payload, "params": json.dumps(params)}, tmp_path / "earlier.pt")
    np.testing.assert_array_equal(IVCNFClassifier.load(tmp_path / "earlier.pt").predict_proba(X), clf.predict_proba(X))
    state = clf.__getstate__()
    del state["head_input"]
    unpickled = IVCNFClassifier.__new__(IVCNFClassifier)
    unpickled.__setstate__(state)
    assert unpickled.head_input == "latent"
    np.testing.assert_array_equal(unpickled.predict_proba(X), clf.predict_proba(X))


def test_task_loss_on_the_completed_rows_reaches_the_rows_not_the_flow():
    generator = torch.Generator().manual_seed(0)
    flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=generator).double()
    head = ClassifierHead(3, 2, generator=generator).double().eval()
    completed = torch.randn(4, 2, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    terms = BoundTerms(torch.zeros(4, 2, dtype=torch.float64), completed.detach(), torch.ones(4, 2, dtype=torch.bool),
                       None, completed)
    loss = ClassificationTask(head, torch.tensor([1, 0]), head_input="data").row_loss(flow, terms, torch.tensor([0, 1]))
    log_p = torch.log_softmax(head(completed.reshape(-1, 3)).reshape(4, 2, 2), dim=-1)
    ce = -torch.stack([log_p[:, 0, 1], log_p[:, 1, 0]], dim=1)  # draw x row, labels 1 and 0
    torch.testing.assert_close(loss, ce.mean(0))  # equal weights: equal log-weights
    loss.sum().backward()
    assert completed.grad.abs().sum() > 0 and all(p.grad is None for p in flow.parameters())
    with pytest.raises(ValueError, match="head_input"):
        ClassificationTask(head, torch.tensor([1, 0]), head_input="code")


def test_head_penalty_is_the_logistic_regressions_spread_over_the_rows():
    generator = torch.Generator().manual_seed(0)
    flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=generator).double()
    head = ClassifierHead(3, 2, hidden_features=(5,), generator=generator).double().eval()
    completed = torch.randn(4, 2, 3, generator=generator, dtype=torch.float64)
    terms = BoundTerms(torch.zeros(4, 2, dtype=torch.float64), completed, torch.ones(4, 2, dtype=torch.bool),
                       None, completed)
    labels, rows = torch.tensor([1, 0, 1, 1, 0]), torch.tensor([0, 1])
    plain = ClassificationTask(head, labels, weight=2.0, head_input="data").row_loss(flow, terms, rows)
    penalised = ClassificationTask(head, labels, weight=2.0, head_input="data", alpha=3.0).row_loss(flow, terms, rows)
    # alpha / 2 ||W||^2 over the 5 rows of the table: the two linear layers' weights, not biases nor batch-norm.
    squares = sum(layer.weight.square().sum() for layer in head.net if isinstance(layer, torch.nn.Linear))
    torch.testing.assert_close(penalised - plain, torch.full((2,), 2.0 * 3.0 / (2 * 5) * squares.item(),
                                                                   dtype=torch.float64))
    with pytest.raises(ValueError, match="alpha"):
        ClassificationTask(head, labels, alpha=-1.0)
    with pytest.raises(ValueError, match="head_alpha"):
        IVCNFClassifier(head_alpha=-1.0).fit(np.ones((4, 2)), [0, 1, 0, 1])


def test_predictive_loss_is_the_log_loss_of_the_weighted_prediction():
    generator = torch.Generator().manual_seed(0)
    flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=generator).double()
    head = ClassifierHead(3, 2, generator=generator).double().eval()
    completed = torch.randn(4, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    log_weight = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    # Row 2 has no solved draw: no term, and no NaN in the gradient of the others.
    converged = torch.tensor([[True, True, False], [True, False, False], [True, True, False], [False, True, False]])
    terms = BoundTerms(log_weight, completed.detach(), converged, None, completed)
    labels, rows = torch.tensor([1, 0, 1]), torch.tensor([0, 1, 2])
    task = ClassificationTask(head, labels, weight=2.0, head_input="data", loss="predictive")
    loss = task.row_loss(flow, terms, rows)
    # By hand: -log of sum_k w_k softmax(head(y_k))[label], the weights softmax-normalised over solved draws.
    proba = torch.softmax(head(completed.reshape(-1, 3)).reshape(4, 3, 2), dim=-1)
    picked = torch.stack([proba[:, r, labels[r]] for r in range(3)], dim=1)
    w = torch.softmax(torch.where(converged, log_weight, -torch.inf), dim=0)
    expected = -torch.log((w[:, :2] * picked[:, :2]).sum(0))
    torch.testing.assert_close(loss[:2], 2.0 * expected)
    assert loss[2] == 0.0
    # Jensen: never above the weighted mean of the draws' cross-entropies.
    mean_ce = ClassificationTask(head, labels, weight=2.0, head_input="data").row_loss(flow, terms, rows)
    assert (loss[:2] <= mean_ce[:2]).all() and (loss[:2] < mean_ce[:2] - 1e-6).any()
    loss.sum().backward()
    assert torch.isfinite(completed.grad).all() and (completed.grad[~converged] == 0).all()
    assert completed.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="loss"):
        ClassificationTask(head, labels, loss="mixture")


def test_predictive_loss_learns_and_earlier_classifiers_keep_the_expected_one(tmp_path):
    X, y = blobs()
    clf = IVCNFClassifier(**SMALL, classification_loss="predictive").fit(X, y)
    X_test, y_test = blobs(seed=1)
    assert clf.score(X_test, y_test) > 0.9  # as the default's test above
    clf.save(tmp_path / "clf.pt")
    payload = torch.load(tmp_path / "clf.pt", weights_only=True)
    params = json.loads(payload["params"])
    assert params["classification_loss"] == "predictive"
    del params["classification_loss"]
    torch.save({**payload, "params": json.dumps(params)}, tmp_path / "earlier.pt")
    assert IVCNFClassifier.load(tmp_path / "earlier.pt").classification_loss == "expected"
    with pytest.raises(ValueError, match="classification_loss"):
        IVCNFClassifier(classification_loss="mixture").fit(np.ones((4, 2)), [0, 1, 0, 1])
