"""IVCNFClassifier: a classifier trained jointly with the flow on incomplete rows (paper 4.2.1).

The imputer's flow, posterior, validation, seeding, devices and persistence, with a head on
the completed rows (or, as in the paper, their latent codes) trained on the bound plus the cross-entropy
(:class:`~skivcnf.conditional.ClassificationTask`); prediction averages the head over each
row's importance-weighted conditional draws.
"""

from numbers import Real

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_consistent_length, check_is_fitted

from ._base import refuse_dask
from ._drawing import iter_draws
from ._sklearn_compat import Interval, StrOptions, check_y, fit_context
from ._utils import one_warning_per_kind
from .conditional import EXACT_VALUE_LOGDETS, ClassificationTask, ClassifierHead, draw_class_probabilities
from .conditional.supervised import CLASSIFICATION_LOSSES, HEAD_INPUTS
from .imputer import IVCNFImputer

__all__ = ["IVCNFClassifier"]


class IVCNFClassifier(ClassifierMixin, IVCNFImputer):
    """Classify rows with missing entries by a head on an IVCNF flow trained on the incomplete rows.

    ``fit`` trains the residual flow, the amortised posterior and a classifier head jointly,
    as the paper does (4.2.1: "trained on-the-fly on the incomplete dataset only"): each
    training row draws completions of its missing entries, and the loss is minus the IVCNF
    bound plus ``classification_weight`` times the cross-entropy of the head on the completed
    draws ``y`` (``head_input="data"``) or on their latent codes ``g(y)`` (``"latent"``, the
    paper's), importance-weighted over the draws. No complete row and no
    imputation step are needed. :meth:`predict_proba` averages the head's probabilities over
    ``n_draws`` importance-weighted conditional draws of each row, so a row's missing entries
    are integrated out rather than filled once.

    It is also the imputer its flow makes: :meth:`transform`,
    :meth:`sample_multiple_imputations`, :meth:`score_samples` and :meth:`conditional_draws`
    work as :class:`~skivcnf.IVCNFImputer`'s.

    Parameters
    ----------
    head_hidden_layer_sizes : tuple of int, default=(64,)
        Hidden widths of an MLP head, after a batch-norm; ``()`` is the paper's head, the
        batch-norm then a bias-free linear layer. On the latent code the MLP had the better
        log-loss in all 6 tabular cases of ``docs/benchmarks.md`` ("Classification") and
        the better accuracy in 5 (wine at 20% MCAR: 0.938 against 0.887).
    classification_weight : float, default=1.0
        Weight of the cross-entropy against minus the bound (the paper adds them).
    classification_loss : {"expected", "predictive"}, default="expected"
        The cross-entropy of a training row: ``"expected"`` averages it over the row's
        importance-weighted draws, ``sum_k w_k CE(head(y_k))``, so the head must be right on
        every draw; ``"predictive"`` is the log-loss of the row's prediction, ``-log sum_k w_k
        p(label | y_k)``, the quantity :meth:`predict_proba` returns.
    head_input : {"data", "latent"}, default="data"
        What the head reads of each completed draw ``y``: ``y`` itself on the flow's
        standardised scale, or its latent code ``g(y)`` (the paper's). On the completed rows
        the MLP head had the better log-loss in all 6 tabular cases of ``docs/benchmarks.md``
        ("Classification") and the better accuracy in 5 (breast cancer at 20% MCAR: 0.979
        against 0.956, log-loss 0.084 against 0.139).
    head_alpha : float, default=0.0
        L2 penalty on the head's weights: over the table it adds ``head_alpha / 2 * ||W||^2``
        to the summed cross-entropy, as ``1 / C`` does in scikit-learn's ``LogisticRegression``.
        In the 6 tabular cases of ``docs/benchmarks.md`` ("Classification") 0.1-10 moved
        the log-loss by less than the folds' spread; 0 keeps the paper's loss.
    linear_layer : bool, default=False
        As :class:`~skivcnf.IVCNFImputer`'s, whose default it is not: on digits (the paper's
        protocol, ``docs/benchmarks.md``) the map lowered the classifier's test accuracy at
        every rate from 50% to 90% missing pixels (0.581 against 0.624 at 80%) and raised its
        imputation RMSE by 5-7%; on the 6 tabular cases it moved the log-loss by less than the
        folds' spread. Classifiers saved with the map keep it. (Measured before
        ``grid_dequantisation``, which removed the map's cost for the imputer on digits.)
    **imputer_parameters
        Every other parameter of :class:`~skivcnf.IVCNFImputer` (``n_blocks``,
        ``hidden_layer_sizes``, ``n_draws``, ``max_epochs``, ``batch_size``, ``learning_rate``,
        ``early_stopping``, ``categorical_features``, ``device``, ``random_state``,
        ``verbose``...), with the same defaults and meaning; early stopping monitors the
        held-out median of minus the bound plus the cross-entropy.

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
    head_ : ClassifierHead or None
        None when no column is modelled (all constant or empty): the classes' frequencies are
        then predicted.
    class_prior_ : ndarray (n_classes,)
        The classes' frequencies at ``fit``.
    flow_, posterior_, history_, modelled_features_, n_features_in_, feature_names_in_
        As :class:`~skivcnf.IVCNFImputer`'s.

    Examples
    --------
    >>> import numpy as np
    >>> from skivcnf import IVCNFClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(-2, 1, (40, 3)), rng.normal(2, 1, (40, 3))])
    >>> y = np.repeat(["a", "b"], 40)
    >>> X[rng.random(X.shape) < 0.3] = np.nan
    >>> clf = IVCNFClassifier(n_blocks=1, hidden_layer_sizes=(16,), max_epochs=20, n_draws=8, early_stopping=False,
    ...                       random_state=0).fit(X, y)
    >>> clf.classes_.tolist(), clf.predict_proba(X).shape
    (['a', 'b'], (80, 2))
    >>> bool(clf.score(X, y) > 0.9)
    True
    """

    _parameter_constraints: dict = {
        **IVCNFImputer._parameter_constraints,
        "head_hidden_layer_sizes": [tuple, list],
        "classification_weight": [Interval(Real, 0, None, closed="left")],
        "head_input": [StrOptions(set(HEAD_INPUTS))],
        "head_alpha": [Interval(Real, 0, None, closed="left")],
        "classification_loss": [StrOptions(set(CLASSIFICATION_LOSSES))],
    }

    def __init__(self, *, head_hidden_layer_sizes=(64,), classification_weight=1.0, classification_loss="expected",
                 head_input="data", head_alpha=0.0,
                 n_blocks=4, hidden_layer_sizes=(64, 64), lipschitz_coeff=0.9, linear_layer=False, n_reflections=0,
                 n_draws=64, n_train_draws=2,
                 importance_weighting=True, refinement_steps=0, objective="iwae", solver="auto", logdet="exact",
                 max_epochs=100, batch_size=64, learning_rate=2e-3, validation_fraction=0.1, early_stopping=True,
                 n_iter_no_change=8, image_shape=None, conv_channels=(32, 32), n_dense_blocks=1,
                 grid_dequantisation=True, missing_values=np.nan, categorical_features="auto", handle_unknown="error",
                 add_indicator=False, keep_empty_features=False, device="auto", random_state=None, verbose=0):
        super().__init__(
            n_blocks=n_blocks, hidden_layer_sizes=hidden_layer_sizes, lipschitz_coeff=lipschitz_coeff,
            linear_layer=linear_layer,
            n_reflections=n_reflections, n_draws=n_draws, n_train_draws=n_train_draws,
            importance_weighting=importance_weighting, refinement_steps=refinement_steps, objective=objective,
            solver=solver, logdet=logdet, max_epochs=max_epochs, batch_size=batch_size, learning_rate=learning_rate,
            validation_fraction=validation_fraction, early_stopping=early_stopping,
            n_iter_no_change=n_iter_no_change, image_shape=image_shape, conv_channels=conv_channels,
            n_dense_blocks=n_dense_blocks, grid_dequantisation=grid_dequantisation, missing_values=missing_values,
            categorical_features=categorical_features, handle_unknown=handle_unknown, add_indicator=add_indicator,
            keep_empty_features=keep_empty_features, device=device, random_state=random_state, verbose=verbose)
        self.head_hidden_layer_sizes = head_hidden_layer_sizes
        self.classification_weight = classification_weight
        self.classification_loss = classification_loss
        self.head_input = head_input
        self.head_alpha = head_alpha

    _MODULES = (*IVCNFImputer._MODULES, "head_")
    # Classifiers saved before head_input existed read the latent code.
    _EARLIER_PARAMETERS = {**IVCNFImputer._EARLIER_PARAMETERS, "head_input": "latent", "head_alpha": 0.0,
                           "classification_loss": "expected"}

    def _rebuild_modules(self, features):
        return {**super()._rebuild_modules(features), "head_": self._build_head(features)}

    def _build_head(self, features, generator=None):
        """The classifier head for rows of ``features`` coordinates (fit, load, unpickling)."""
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        return ClassifierHead(features, len(self.classes_), tuple(self.head_hidden_layer_sizes), generator)

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Train the flow, the posterior and the head jointly on the incomplete rows of ``X`` and labels ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Missing entries are ``missing_values`` (and NaN).
        y : array-like of shape (n_samples,)
            Class labels (at least two classes).

        Returns
        -------
        self : IVCNFClassifier
        """
        refuse_dask(X, fit=True)
        y = check_y(y, self)
        check_classification_targets(y)
        check_consistent_length(X, y)
        classes, labels = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"IVCNFClassifier needs samples of at least 2 classes in the data; got "
                             f"{len(classes)} class(es) in {len(y)} samples: {classes.tolist()}.")
        self.classes_ = classes
        self.class_prior_ = np.bincount(labels) / len(labels)
        self.head_ = None

        def task(features, generator, device):
            self.head_ = self._build_head(features, generator).to(device)
            labels_on_device = torch.as_tensor(labels, dtype=torch.long, device=device)
            return ClassificationTask(self.head_, labels_on_device, self.classification_weight,
                                      weighted=self.logdet in EXACT_VALUE_LOGDETS and self.importance_weighting,
                                      head_input=self.head_input, alpha=self.head_alpha, loss=self.classification_loss)

        return self._fit_flow(X, task)

    @one_warning_per_kind
    def predict_proba(self, X):
        """Class probabilities: the head's, averaged over each row's importance-weighted conditional draws.

        A row draws ``n_draws`` completions of its missing entries from its own random
        stream (so its prediction does not depend on the rows it comes with); their weights
        are bounded and Pareto-smoothed as :meth:`transform`'s. A row with nothing missing
        is its own only completion.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``.
        """
        check_is_fitted(self, "classes_")
        X, _, _ = self._validate_input(X, reset=False)
        if self.head_ is None:
            return np.tile(self.class_prior_, (len(X), 1))
        batches = iter_draws(self, X, self.n_draws, self._row_keys("predict", X),
                             "they were classified at the training means", mc_tolerance=float("inf"))
        proba = np.concatenate([draw_class_probabilities(self.flow_, self.head_, result.draws.samples,
                                                         result.weights, self.head_input).cpu().double().numpy()
                                for result, _ in batches])
        return proba / proba.sum(axis=1, keepdims=True)  # float32 sums, exact in float64

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba` (``-inf`` for a probability of 0)."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """The most probable class of each row (:meth:`predict_proba`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,)
        """
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags
