"""Column bookkeeping of the imputer: the missing mask, which columns the flow models, their
scaling, and completing a table from the flow's values.

A column entirely missing at ``fit`` is *empty* (dropped, or filled with 0 under
``keep_empty_features``); one whose observed entries are all equal is *constant* (filled with
that value); every other column is *modelled*: standardised by its observed mean and
standard deviation and handed to the flow.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.preprocessing import StandardScaler

__all__ = ["GRID_MAX_DIVISIONS", "GRID_TOLERANCE", "ColumnLayout", "grid_step", "grid_steps", "missing_mask"]

#: A column lies on a grid when every gap between its distinct observed values is a whole
#: number of the smallest gap, to this fraction of it (room for decimal rounding and float error).
GRID_TOLERANCE = 1e-3
#: The grid's step may be the smallest gap divided by up to this many (gaps of 2 and 3: step 1).
GRID_MAX_DIVISIONS = 8


def missing_mask(X, missing_values):
    """Boolean mask of the missing entries: ``missing_values``, and NaN whatever it is.

    Examples
    --------
    >>> import numpy as np
    >>> from skivcnf._columns import missing_mask
    >>> missing_mask(np.array([[1.0, -1.0, np.nan]]), -1).tolist()
    [[False, True, True]]
    """
    if missing_values is None or isinstance(missing_values, float) and math.isnan(missing_values):
        return np.isnan(X)
    return (X == missing_values) | np.isnan(X)


def grid_steps(X, mask):
    """The step of the regular grid each column's observed values lie on (counts, rounded
    measurements, intensities), or 0 for a column whose values lie on none.

    The step is the largest ``s`` among the smallest gap between distinct observed values
    divided by 1 to ``GRID_MAX_DIVISIONS`` such that every gap is a whole number of ``s`` (to
    ``GRID_TOLERANCE`` of ``s``): values 0, 2 and 5 lie on a grid of step 1. A column with fewer
    than two distinct values has no step.

    Examples
    --------
    >>> import numpy as np
    >>> from skivcnf._columns import grid_steps
    >>> X = np.array([[0.0, 1.5, 0.25, 3.0], [16.0, 2.0, 0.5, 3.0], [4.0, 3.5, 0.8137, 3.0], [6.0, 1.5, 0.3, 3.0]])
    >>> grid_steps(X, np.zeros(X.shape, dtype=bool)).tolist()
    [2.0, 0.5, 0.0, 0.0]
    """
    return np.array([grid_step(X[~mask[:, j], j]) for j in range(X.shape[1])], dtype=float)


def grid_step(values):
    """The step of the regular grid ``values`` lie on (see :func:`grid_steps`), 0 if none.

    Examples
    --------
    >>> import numpy as np
    >>> from skivcnf._columns import grid_step
    >>> grid_step(np.array([0.0, 2.0, 5.0, 2.0])), grid_step(np.array([0.0, 1.0, 1.5, 2.3137]))
    (1.0, 0.0)
    """
    gaps = np.diff(np.unique(values))
    if len(gaps) == 0:
        return 0.0
    for divisions in range(1, GRID_MAX_DIVISIONS + 1):
        multiples = gaps / (gaps.min() / divisions)
        if np.all(np.abs(multiples - np.round(multiples)) <= GRID_TOLERANCE):
            return float(gaps.min() / divisions)
    return 0.0


@dataclass(frozen=True)
class ColumnLayout:
    """Which columns the flow models and how they are scaled.

    Attributes
    ----------
    empty : ndarray of bool (n_features,)
        Entirely missing at ``fit``.
    constant_values : ndarray (n_features,)
        The value of each constant column (0 elsewhere).
    modelled : ndarray of bool (n_features,)
        Neither empty nor constant: the flow's columns.
    center, scale : ndarray (n_modelled,)
        Observed mean and standard deviation of each modelled column.

    Examples
    --------
    >>> import numpy as np
    >>> from skivcnf._columns import ColumnLayout, missing_mask
    >>> X = np.array([[1.0, 5.0, np.nan], [3.0, 5.0, np.nan], [np.nan, 5.0, np.nan]])
    >>> layout = ColumnLayout.fit(X, missing_mask(X, np.nan))
    >>> layout.modelled.tolist(), layout.empty.tolist(), layout.constant_values.tolist()
    ([True, False, False], [False, False, True], [0.0, 5.0, 0.0])
    >>> layout.standardise(X).ravel().tolist()[:2], layout.center.tolist(), layout.scale.tolist()
    ([-1.0, 1.0], [2.0], [1.0])
    >>> layout.complete(X, missing_mask(X, np.nan), np.zeros((3, 1)), keep_empty=False).tolist()
    [[1.0, 5.0], [3.0, 5.0], [0.0, 5.0]]
    """

    empty: np.ndarray
    constant_values: np.ndarray
    modelled: np.ndarray
    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X, mask):
        """The layout of ``X`` (float, NaN where ``mask``)."""
        empty = mask.all(axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are the empty ones
            spread = np.nanstd(X, axis=0)
            mean = np.nanmean(X, axis=0)
        constant = ~empty & (spread == 0)
        modelled = ~(empty | constant)
        center, scale = np.zeros(0), np.ones(0)
        if modelled.any():
            # StandardScaler for its careful mean and variance; only the two arrays are kept.
            scaler = StandardScaler().fit(X[:, modelled])
            center, scale = scaler.mean_, scaler.scale_
        return cls(empty, np.where(constant, mean, 0.0), modelled, center, scale)

    @property
    def n_modelled(self):
        return int(self.modelled.sum())

    def standardise(self, X):
        """The modelled columns of ``X``, centred and scaled (NaN stays NaN)."""
        return (X[:, self.modelled] - self.center) / self.scale

    def unstandardise(self, values):
        """Values of the modelled columns back on the input's scale."""
        return values * self.scale + self.center

    def observed_log_scale(self, mask):
        """``sum log scale`` over each row's observed modelled entries: the change of variables of a density."""
        return ~mask[:, self.modelled] @ np.log(self.scale)

    def complete(self, X, mask, modelled_values, keep_empty):
        """Fill the missing entries of ``X``; observed entries are left untouched.

        Parameters
        ----------
        X : ndarray (n_samples, n_features)
        mask : ndarray of bool (n_samples, n_features)
        modelled_values : ndarray (n_samples, n_modelled) or None
            Values of the modelled columns on the input's scale; only their entries under
            ``mask`` are used.
        keep_empty : bool
            Keep empty columns (filled with 0) rather than drop them.

        Returns
        -------
        ndarray (n_samples, n_features_out)
        """
        out = X.copy()
        if modelled_values is not None:
            block = out[:, self.modelled]
            hidden = mask[:, self.modelled]
            block[hidden] = modelled_values[hidden]
            out[:, self.modelled] = block
        constant = ~self.modelled & ~self.empty
        out[:, constant] = np.where(mask[:, constant], self.constant_values[constant], out[:, constant])
        if keep_empty:
            out[:, self.empty] = np.where(mask[:, self.empty], 0.0, out[:, self.empty])
            return out
        return out[:, ~self.empty]
