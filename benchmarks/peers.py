"""The imputers IVCNFImputer is measured against, behind one small interface.

Every peer is a :class:`Peer` record in ``PEERS``, built by ``make(name, seed)`` and used as
``fit(X_train)`` then ``transform(X)`` (``fit_transform`` on one table). scikit-learn's
imputers are always there; hyperimpute's plugins and miceforest are optional (the ``bench``
extra): a peer that cannot be imported or built is reported with the reason, never silently
skipped. Facts that shape these wrappers, measured with hyperimpute 0.1.17, miceforest 6.0.5
and scikit-learn 1.9 (see docs/benchmarks.md):

- hyperimpute under pandas 3 silently returns mean imputation: the harness compares every
  peer's output with ``SimpleImputer``'s and reports a peer that equals it as failed
  (the ``bench`` extra pins ``pandas<3``).
- hyperimpute's ``hyperimpute``, ``missforest``, ``gain`` and ``sinkhorn`` plugins impute
  in ``transform`` from the rows they are given (transductive): on a train/test protocol
  they see the test rows alone.
- hyperimpute's ``miwae`` defaults to a one-unit network; it is run as shipped and sized
  (``n_hidden=128, latent_size=16``), labelled.
- hyperimpute's classifier plugin passes ``LogisticRegression(multi_class=...)``, which
  scikit-learn 1.8 removed: the "(adapted)" peer drops the argument (see
  :func:`_accept_multi_class`).
- miceforest 6 breaks with lightgbm newer than 4.6 (the ``bench`` extra pins it).
"""

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer

from skivcnf import IVCNFImputer


def _accept_multi_class():
    """Let hyperimpute's classifier plugin build ``LogisticRegression(multi_class=...)``.

    scikit-learn 1.8 removed ``multi_class``; hyperimpute 0.1.17 still passes it (whenever a
    column looks categorical), which raises ``TypeError``. hyperimpute loads its plugins by
    executing their files, which import ``LogisticRegression`` from ``sklearn.linear_model``
    at that moment; so the name there is replaced by a constructor that drops the argument
    (scikit-learn's behaviour for it was "auto" anyway). Only used by the "(adapted)" peers,
    each in its own forked process.
    """
    import sklearn.linear_model as linear_model

    original = linear_model.LogisticRegression
    if getattr(original, "_drops_multi_class", False):
        return

    def logistic_regression(*args, multi_class=None, **kwargs):
        return original(*args, **kwargs)

    logistic_regression._drops_multi_class = True
    linear_model.LogisticRegression = logistic_regression


class _HyperImpute:
    """A hyperimpute plugin with numpy in and out (``adapted``: see :func:`_accept_multi_class`)."""

    def __init__(self, plugin, seed, adapted=False, **params):
        from hyperimpute.plugins.imputers import Imputers

        if adapted:
            _accept_multi_class()
        logging.getLogger("hyperimpute").setLevel(logging.ERROR)
        self.plugin = Imputers().get(plugin, random_state=seed, **params)

    def fit(self, X):
        import pandas as pd

        with _quiet():
            self.plugin.fit(pd.DataFrame(X))
        return self

    def transform(self, X):
        import pandas as pd

        with _quiet():
            return np.asarray(self.plugin.transform(pd.DataFrame(X)), dtype=float)

    def fit_transform(self, X):
        import pandas as pd

        with _quiet():
            return np.asarray(self.plugin.fit_transform(pd.DataFrame(X)), dtype=float)


class _MiceForest:
    """miceforest's LightGBM chained equations: one kernel, ``iterations`` rounds, one data set."""

    def __init__(self, seed, iterations=5):
        import miceforest  # noqa: F401  (fail at construction when absent)

        self.seed, self.iterations = seed, iterations

    @staticmethod
    def _frame(X):
        import pandas as pd

        return pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])

    def fit(self, X):
        import miceforest

        with _quiet():
            self.kernel = miceforest.ImputationKernel(self._frame(X), num_datasets=1, random_state=self.seed)
            self.kernel.mice(self.iterations)
        return self

    def transform(self, X):
        with _quiet():
            return np.asarray(self.kernel.impute_new_data(self._frame(X)).complete_data(0), dtype=float)

    def fit_transform(self, X):
        self.fit(X)
        with _quiet():
            return np.asarray(self.kernel.complete_data(0), dtype=float)


@contextlib.contextmanager
def _quiet():
    """Third-party peers print progress and warnings; the harness reports what matters itself."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


class Peer(NamedTuple):
    """An imputer the suite measures: how to build it and how to use it on a train/test protocol.

    Attributes
    ----------
    name : str
        The label in the tables.
    build : callable
        ``seed -> imputer``: a fresh, unfitted estimator with ``fit``, ``transform`` and ``fit_transform``.
    inductive : bool
        Whether ``transform`` imputes new rows from the fitted model. A transductive peer imputes
        from the rows it is given, so the train/test protocol fits it on the test rows alone.
    package : str
        Where the imputer comes from (``skivcnf``, ``sklearn``, ``hyperimpute``, ``miceforest``).
    """

    name: str
    build: Callable[[int], object]
    inductive: bool
    package: str


def _extra_trees_mice(seed):
    trees = ExtraTreesRegressor(n_estimators=50, random_state=seed, n_jobs=1)
    return IterativeImputer(trees, max_iter=10, random_state=seed)


PEERS = {peer.name: peer for peer in [
    Peer("IVCNFImputer", lambda seed: IVCNFImputer(random_state=seed), True, "skivcnf"),
    Peer("mean", lambda seed: SimpleImputer(), True, "sklearn"),
    Peer("KNN", lambda seed: KNNImputer(), True, "sklearn"),
    Peer("MICE", lambda seed: IterativeImputer(max_iter=25, random_state=seed), True, "sklearn"),
    Peer("MissForest-like", _extra_trees_mice, True, "sklearn"),
    Peer("hyperimpute", lambda seed: _HyperImpute("hyperimpute", seed), False, "hyperimpute"),
    # the same, with scikit-learn 1.9's LogisticRegression accepting multi_class (run where
    # hyperimpute as shipped raises TypeError: diabetes, digits)
    Peer("hyperimpute (adapted)", lambda seed: _HyperImpute("hyperimpute", seed, adapted=True), False, "hyperimpute"),
    Peer("missforest (hyperimpute)", lambda seed: _HyperImpute("missforest", seed), False, "hyperimpute"),
    Peer("GAIN", lambda seed: _HyperImpute("gain", seed), False, "hyperimpute"),
    Peer("Sinkhorn", lambda seed: _HyperImpute("sinkhorn", seed), False, "hyperimpute"),
    Peer("MIWAE (as shipped)", lambda seed: _HyperImpute("miwae", seed), True, "hyperimpute"),
    Peer("MIWAE (128 hidden, 16 latent)", lambda seed: _HyperImpute("miwae", seed, n_hidden=128, latent_size=16),
         True, "hyperimpute"),
    Peer("miceforest", lambda seed: _MiceForest(seed), True, "miceforest"),
]}
"""Label -> :class:`Peer`, in the order of the accuracy grid."""


def make(name, seed):
    """A fresh imputer; raises (ImportError, TypeError, ...) when the peer cannot be built."""
    return PEERS[name].build(seed)

