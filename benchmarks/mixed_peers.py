"""The imputers of the ``mixed`` section: each takes a DataFrame with category, nullable
integer (``Int64``) and float columns, missing entries NA, and returns it completed with the
same dtypes (integers imputed as integers, categories among the column's categories).

Every peer is a :class:`MixedPeer` in ``MIXED_PEERS``, built by ``make(name, seed)`` and used
by ``fit_transform(frame)``. As in :mod:`benchmarks.peers`, hyperimpute and miceforest come from
the ``bench`` extra, and a peer that cannot be imported or built is reported with the reason,
never silently skipped. What each does with the column kinds:

- "most frequent / mean": scikit-learn's ``SimpleImputer(strategy="most_frequent")`` on the
  categories, ``SimpleImputer()`` (the mean) on the numbers, rounded for integer columns.
- "MICE (linear/logistic)": chained equations (:class:`ChainedEquations`) with the numeric
  grid's MICE regressor (Bayesian ridge, at most 25 rounds) for numbers and a multinomial
  logistic regression (standardised predictors) for categories: the point imputations of
  ``mice``'s "norm"/"polyreg" methods. (scikit-learn's ``IterativeImputer`` on one-hot
  indicators is no such analogue: each indicator is predicted from the others of its block,
  whose sum is 1, so the imputations stay at the category shares and the largest is always
  the most frequent category: measured, its PFC equals the most frequent category's.)
- "MissForest-like": chained extremely randomised trees as the numeric grid's anchor (50 trees,
  at most 10 rounds), with a classifier for each categorical column and a regressor for each
  numeric one (categories one-hot as predictors), and MissForest's stopping rule (Stekhoven and
  Bühlmann 2012: stop when the change of both kinds grows, keep the previous round).
- "miceforest": LightGBM chained equations as in the numeric grid (5 rounds, one data set),
  categories as pandas categories (LightGBM's multiclass models); as shipped it draws each value
  (mean matching among 5 candidates for numbers, a class drawn by its probability): the
  "(most probable)" peer sets ``mean_match_candidates=0`` (the most probable class, the
  regression's prediction). As shipped it fails on most fair masks: its mean matching of a
  categorical column takes the log-odds of LightGBM's class probabilities, infinite where one
  is 1, which scipy's KDTree refuses ("data must be finite"; miceforest's own message for this
  case, which suggests raising ``min_data_in_leaf``, is never raised). Without mean matching
  there is no log-odds.
- hyperimpute's "hyperimpute" and "missforest" plugins take numbers: categories go in as their
  codes and come out rounded to the nearest code. As shipped they call a column categorical
  when it has fewer than 5 distinct values (NaN counted), so a 4- or 6-category column is
  regressed; the "(adapted)" peers are told which columns are categorical (the columns of
  category dtype, as the others read them) and let scikit-learn 1.8+'s ``LogisticRegression``
  accept ``multi_class`` (:func:`benchmarks.peers._accept_multi_class`). As shipped,
  "hyperimpute" raises TypeError on every table with a column of fewer than 5 distinct values
  (it builds ``LogisticRegression(multi_class=...)``); adapted, it raises XGBoostError ("value
  0 for Parameter num_class") on 2 of the 3 MNAR masks of the simulated table (cause not
  traced).
- "IVCNFImputer": ``categorical_features="auto"``, pandas output; "IVCNFImputer (all-numeric)"
  gets the categories as float codes (``categorical_features=None``) and its imputed codes
  are rounded to the nearest category: the baseline of the numeric-RMSE target.
- "oracle" (the simulated table only): the posterior mode of each hidden category and the
  posterior mean of each hidden number under the true law, ignoring the missingness mechanism.
"""

import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import BayesianRidge, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .mixed_data import codes, from_codes
from .peers import _accept_multi_class, _quiet


def _categorical(frame):
    """Boolean mask of the category-dtype columns of ``frame``."""
    return np.array([isinstance(t, pd.CategoricalDtype) for t in frame.dtypes])


class MostFrequentMean:
    """Most frequent category for categorical columns, the column mean (rounded for integers) for numeric ones."""

    def fit_transform(self, frame):
        X = codes(frame)
        categorical = _categorical(frame)
        out = X.copy()
        if categorical.any():
            out[:, categorical] = SimpleImputer(strategy="most_frequent", keep_empty_features=True).fit_transform(
                X[:, categorical])
        if (~categorical).any():
            out[:, ~categorical] = SimpleImputer(keep_empty_features=True).fit_transform(X[:, ~categorical])
        return from_codes(out, frame)


class _OneHot:
    """Categories as 0/1 indicators (all missing where the category is), numbers as they are."""

    def __init__(self, frame):
        self.categorical = _categorical(frame)
        self.sizes = [len(frame[c].cat.categories) if k else 1 for c, k in zip(frame.columns, self.categorical,
                                                                                strict=True)]
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])

    def expand(self, X):
        blocks = []
        for j, (size, is_categorical) in enumerate(zip(self.sizes, self.categorical, strict=True)):
            if not is_categorical:
                blocks.append(X[:, [j]])
                continue
            block = (X[:, [j]] == np.arange(size)).astype(float)
            block[np.isnan(X[:, j])] = np.nan
            blocks.append(block)
        return np.hstack(blocks)


class ChainedEquations:
    """Chained equations over mixed columns, a classifier per categorical column and a regressor per numeric one.

    Start from the most frequent category and the mean (rounded for integers); then, each round,
    for each column with missing entries (fewest first), fit ``classifier()`` (categorical) or
    ``regressor()`` (numeric) on the rows where it is observed, predictors the other columns
    (categories one-hot), and predict its missing entries. Stop after ``max_iter`` rounds, or
    when the change of the numeric entries (squared, relative) and of the categorical ones
    (share changed) have both grown, returning the previous round (MissForest's rule, Stekhoven
    and Bühlmann 2012). Integers are rounded at the end.
    """

    def __init__(self, regressor, classifier, max_iter):
        self.regressor, self.classifier, self.max_iter = regressor, classifier, max_iter

    def fit_transform(self, frame):
        X = codes(frame)
        missing = np.isnan(X)
        categorical = _categorical(frame)
        one_hot = _OneHot(frame)
        filled = codes(MostFrequentMean().fit_transform(frame))
        order = [j for j in np.argsort(missing.sum(0), kind="stable") if missing[:, j].any() and (~missing[:, j]).any()]
        previous, last_change = filled, (np.inf, np.inf)
        self.n_iter_ = 0
        for _ in range(self.max_iter):
            current = previous.copy()
            for j in order:
                Z = one_hot.expand(current)
                keep = np.ones(Z.shape[1], bool)
                keep[one_hot.starts[j]:one_hot.starts[j] + one_hot.sizes[j]] = False
                Z = Z[:, keep]
                seen, hidden = ~missing[:, j], missing[:, j]
                if categorical[j]:
                    labels = X[seen, j].astype(int)
                    if len(np.unique(labels)) < 2:  # one category observed: nothing to learn
                        current[hidden, j] = labels[0]
                        continue
                    model = self.classifier().fit(Z[seen], labels)
                else:
                    model = self.regressor().fit(Z[seen], X[seen, j])
                current[hidden, j] = model.predict(Z[hidden])
            self.n_iter_ += 1
            change = self._change(previous, current, missing, categorical)
            if all(new > old for new, old in zip(change, last_change, strict=True) if np.isfinite(new)):
                self.n_iter_ -= 1
                break  # both kinds changed more than in the round before: keep the previous round
            previous, last_change = current, change
        return from_codes(np.where(missing, previous, X), frame)

    @staticmethod
    def _change(previous, current, missing, categorical):
        """MissForest's differences: numeric (squared, relative to the new values) and categorical (share changed)."""
        numeric = missing & ~categorical
        cat = missing & categorical
        num_change = (np.sum((current[numeric] - previous[numeric]) ** 2) / max(np.sum(current[numeric] ** 2), 1e-300)
                      if numeric.any() else np.nan)
        cat_change = np.mean(current[cat] != previous[cat]) if cat.any() else np.nan
        return num_change, cat_change


def missforest_like(seed, n_estimators=50, max_iter=10):
    """Extremely randomised trees (as the numeric grid's anchor: 50 trees, at most 10 rounds), classifiers too."""
    return ChainedEquations(lambda: ExtraTreesRegressor(n_estimators=n_estimators, random_state=seed, n_jobs=1),
                            lambda: ExtraTreesClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=1),
                            max_iter)


def mice_linear(seed, max_iter=25):
    """Bayesian ridge (IterativeImputer's default) for numbers, multinomial logistic regression for categories."""
    return ChainedEquations(BayesianRidge, lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                            max_iter)


class MiceForest:
    """miceforest's LightGBM chained equations on the frame (categories as pandas categories)."""

    def __init__(self, seed, iterations=5, most_probable=False):
        import miceforest  # noqa: F401  (fail at construction when absent)

        self.seed, self.iterations, self.most_probable = seed, iterations, most_probable

    def fit_transform(self, frame):
        import miceforest

        # miceforest wants plain column names and no nullable integers: integers go in as floats
        names = [f"x{j}" for j in range(frame.shape[1])]
        data = pd.DataFrame({name: (frame[c] if isinstance(frame[c].dtype, pd.CategoricalDtype)
                                    else frame[c].astype("Float64").astype(float))
                             for name, c in zip(names, frame.columns, strict=True)})
        params = {"mean_match_candidates": 0} if self.most_probable else {}
        with _quiet():
            kernel = miceforest.ImputationKernel(data, num_datasets=1, random_state=self.seed, **params)
            kernel.mice(self.iterations)
            done = kernel.complete_data(0)
        done.columns = frame.columns
        return from_codes(codes(done), frame)


class HyperImputeMixed:
    """A hyperimpute plugin on the frame's codes; ``told``: the category-dtype columns are its categorical ones."""

    def __init__(self, plugin, seed, told=False):
        import logging

        from hyperimpute.plugins.imputers import Imputers

        if told:
            _accept_multi_class()
        logging.getLogger("hyperimpute").setLevel(logging.ERROR)
        self.plugin, self.told = Imputers().get(plugin, random_state=seed), told

    def _engine(self):
        """The plugin's iterative engine (``IterativeErrorCorrection``), whose ``_is_categorical`` decides."""
        model = getattr(self.plugin, "model", None) or self.plugin._model.model
        return model

    def fit_transform(self, frame):
        X = codes(frame)
        categorical = _categorical(frame)
        if self.told:
            chosen = {str(j) for j in np.flatnonzero(categorical)}
            self._engine()._is_categorical = lambda X, col: str(col) in chosen
        with _quiet():
            out = np.asarray(self.plugin.fit_transform(pd.DataFrame(X)), dtype=float)
        # the observed entries from the input, as given (the check of observed entries does not see this peer's)
        return from_codes(np.where(np.isnan(X), out, X), frame)


class IVCNFMixed:
    """IVCNFImputer on the frame, pandas out; ``all_numeric``: categories as float codes, rounded back.

    Fit and transform are timed apart (``fit_seconds_``, ``transform_seconds_``)."""

    def __init__(self, seed, all_numeric=False, **params):
        from skivcnf import IVCNFImputer

        kind = None if all_numeric else "auto"
        self.model = IVCNFImputer(categorical_features=kind, random_state=seed, **params).set_output(
            transform="pandas")
        self.all_numeric = all_numeric

    def set_params(self, **params):
        self.model.set_params(**params)
        return self

    def fit_transform(self, frame):
        given = frame
        if self.all_numeric:
            categorical = _categorical(frame)
            given = frame.copy()
            for name in frame.columns[categorical]:
                given[name] = codes(frame[[name]])[:, 0]
        start = time.perf_counter()
        self.model.fit(given)
        self.fit_seconds_ = time.perf_counter() - start
        start = time.perf_counter()
        out = self.model.transform(given)
        self.transform_seconds_ = time.perf_counter() - start
        if self.all_numeric:
            out = from_codes(codes(out), frame)  # the codes rounded to the nearest category
        return out


class Oracle:
    """The posterior modes and means under the true law (tables with one)."""

    def __init__(self, table, seed):
        self.table, self.seed = table, seed

    def fit_transform(self, frame):
        return from_codes(self.table.law.oracle(codes(frame), rng=np.random.default_rng(self.seed)), frame)


class MixedPeer(NamedTuple):
    """An imputer of the mixed section: its label, ``build(seed) -> imputer`` and where it comes from."""

    name: str
    build: Callable[[int], object]
    package: str


OURS, ALL_NUMERIC, BASELINE, ORACLE = "IVCNFImputer", "IVCNFImputer (all-numeric)", "most frequent / mean", "oracle"

MIXED_PEERS = {peer.name: peer for peer in [
    MixedPeer(OURS, lambda seed: IVCNFMixed(seed), "skivcnf"),
    MixedPeer(ALL_NUMERIC, lambda seed: IVCNFMixed(seed, all_numeric=True), "skivcnf"),
    MixedPeer(BASELINE, lambda seed: MostFrequentMean(), "sklearn"),
    MixedPeer("MICE (linear/logistic)", mice_linear, "sklearn"),
    MixedPeer("MissForest-like", missforest_like, "sklearn"),
    MixedPeer("miceforest", lambda seed: MiceForest(seed), "miceforest"),
    MixedPeer("miceforest (most probable)", lambda seed: MiceForest(seed, most_probable=True), "miceforest"),
    MixedPeer("hyperimpute", lambda seed: HyperImputeMixed("hyperimpute", seed), "hyperimpute"),
    MixedPeer("hyperimpute (adapted)", lambda seed: HyperImputeMixed("hyperimpute", seed, told=True),
              "hyperimpute"),
    MixedPeer("missforest (hyperimpute)", lambda seed: HyperImputeMixed("missforest", seed), "hyperimpute"),
    MixedPeer("missforest (hyperimpute, adapted)", lambda seed: HyperImputeMixed("missforest", seed, told=True),
              "hyperimpute"),
]}
"""Label -> :class:`MixedPeer` (the oracle is built by the section, from the table's law)."""

IVCNF_NAMES = (OURS, ALL_NUMERIC)


def make(name, seed):
    """A fresh imputer; raises (ImportError, TypeError, ...) when the peer cannot be built."""
    return MIXED_PEERS[name].build(seed)
