"""Column kinds of a table, and the flow's continuous features for them.

A column is *numeric* (a float), *integer* (a discrete number) or *categorical*. The flow
models continuous coordinates only, so discrete columns are dequantised (Uria et al. 2013;
Theis et al. 2016, "A note on the evaluation of generative models"): a discrete value is the
centre of a unit cell, training adds uniform noise on the cell, and the flow's density
integrated over the cell lower-bounds the probability of the value (in expectation, by Jensen),
so the bound stays a likelihood. A categorical column with ``K > 2`` categories becomes ``K``
one-hot coordinates, whose cells are disjoint, so the category is the argmax of the block
(uniform dequantisation of the one-hot vector: the argmax flows of Hoogeboom et al. 2021
with a fixed, not learned, dequantiser); one with 2 categories is one 0/1 coordinate.

:class:`TableEncoder` reads a table (NumPy or pandas) column by column: ``codes`` gives
every column as floats (a category as its index among the categories seen at ``fit``),
``expand`` the flow's features, ``collapse`` maps filled features back to codes and
``restore`` codes to values with each column's dtype.
"""

import numbers
from dataclasses import dataclass

import numpy as np

__all__ = ["CATEGORICAL", "INTEGER", "NUMERIC", "TableEncoder", "is_dataframe"]

NUMERIC, INTEGER, CATEGORICAL = "numeric", "integer", "categorical"
#: Categorical columns with at most this many categories are one 0/1 coordinate, not one-hot.
MAX_CODE_CATEGORIES = 2


def is_dataframe(X):
    """Whether ``X`` is a pandas DataFrame (without importing pandas when it is not loaded)."""
    return type(X).__module__.split(".")[0] == "pandas" and hasattr(X, "iloc") and hasattr(X, "dtypes")


def _is_missing(values, missing_values):
    """Missing entries of an object or numeric array: NaN/None/NA, and ``missing_values``."""
    import pandas as pd

    missing = np.asarray(pd.isna(values), dtype=bool)
    if not (missing_values is None or isinstance(missing_values, float) and np.isnan(missing_values)):
        present = ~missing  # pd.NA == x is NA, not a bool: compare the present entries only
        missing[present] = np.asarray(values[present] == missing_values, dtype=bool)
    return missing


def _type_class(value):
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, numbers.Number):
        return "number"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


def _pandas_kind(dtype):
    """The column kind that ``categorical_features="auto"`` gives a pandas dtype."""
    from pandas.api import types

    if isinstance(dtype, types.CategoricalDtype) or types.is_bool_dtype(dtype) or types.is_object_dtype(dtype) \
            or types.is_string_dtype(dtype):
        return CATEGORICAL
    if types.is_integer_dtype(dtype):
        return INTEGER
    if types.is_numeric_dtype(dtype):
        return NUMERIC
    raise TypeError(f"dtype {dtype} is not supported: convert the column to numbers, strings or category.")


def _resolve_categorical(categorical_features, n_features, feature_names):
    """Boolean mask of the columns named by ``categorical_features`` (None: none)."""
    mask = np.zeros(n_features, dtype=bool)
    if categorical_features is None:
        return mask
    selection = np.asarray(categorical_features)
    if selection.dtype == bool:
        if selection.shape != (n_features,):
            raise ValueError(f"categorical_features as a boolean mask needs {n_features} entries, got "
                             f"{selection.shape}.")
        return selection.copy()
    for item in selection.ravel():
        if isinstance(item, (str, np.str_)):
            if feature_names is None:
                raise ValueError(f"categorical_features names the column {str(item)!r}, but X has no column names; "
                                 "give column indices or a boolean mask.")
            where = np.flatnonzero(np.asarray(feature_names) == item)
            if not len(where):
                raise ValueError(f"categorical_features names the column {str(item)!r}, which is not in X.")
            mask[where[0]] = True
        elif isinstance(item, numbers.Integral) and -n_features <= int(item) < n_features:
            mask[int(item)] = True
        else:
            raise ValueError(f"categorical_features must hold column names or indices of X's {n_features} columns, "
                             f"got {item!r}.")
    return mask


@dataclass(frozen=True)
class TableEncoder:
    """Kinds, categories and dtypes of a table's columns, fitted on its observed entries.

    Attributes
    ----------
    kinds : tuple of str (n_features,)
        ``"numeric"``, ``"integer"`` or ``"categorical"``.
    categories : tuple of (ndarray or None) (n_features,)
        The categories of each categorical column seen at ``fit``, in order (the dtype's order
        for a pandas ``category`` column, sorted otherwise); None for other columns.
    """

    kinds: tuple
    categories: tuple

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, X, categorical_features, missing_values):
        """Read the kinds of the columns of ``X`` and the categories of its categorical ones.

        Parameters
        ----------
        X : DataFrame or array-like (n_samples, n_features)
        categorical_features : "auto", None, array-like of str or int, or bool mask
            ``"auto"``: pandas columns of dtype ``category``, ``object``, ``string`` and
            ``bool`` (none for arrays); otherwise the named columns, whose values are
            category labels (codes for arrays).
        missing_values : float, int, str or None
        """
        if is_dataframe(X):
            names, dtypes = [str(c) for c in X.columns], tuple(X.dtypes)
            auto = []
            for name, dtype in zip(names, dtypes, strict=True):
                try:
                    auto.append(_pandas_kind(dtype))
                except TypeError as exc:
                    raise TypeError(f"Column {name!r}: {exc}") from None
            if isinstance(categorical_features, str) and categorical_features == "auto":
                chosen = np.array([kind == CATEGORICAL for kind in auto])
            else:
                chosen = _resolve_categorical(categorical_features, len(names), names)
            kinds = []
            for name, kind, is_categorical in zip(names, auto, chosen, strict=True):
                if is_categorical:
                    kinds.append(CATEGORICAL)
                elif kind == CATEGORICAL:
                    raise ValueError(f"Column {name!r} holds labels (dtype {X.dtypes.iloc[names.index(name)]}); "
                                     "name it in categorical_features, or convert it to numbers.")
                else:
                    kinds.append(kind)
            columns = {j: X.iloc[:, j].to_numpy(dtype=object) for j in np.flatnonzero(chosen)}
        else:
            array = np.asarray(X) if not hasattr(X, "toarray") else None
            if array is None or array.ndim != 2:
                return None  # validate_data gives the error for sparse or badly shaped input
            dtypes, n = None, array.shape[1]
            auto = isinstance(categorical_features, str) and categorical_features == "auto"  # none for arrays
            chosen = _resolve_categorical(None if auto else categorical_features, n, None)
            base = INTEGER if array.dtype.kind in "iub" else NUMERIC
            kinds = [CATEGORICAL if c else base for c in chosen]
            for j in np.flatnonzero(chosen):
                try:
                    array[:, j].astype(float)
                except (TypeError, ValueError):
                    raise ValueError(f"categorical column {j} of an array holds labels: an array's categories must be "
                                     "numeric codes; pass a DataFrame to keep labels.") from None
            columns = {j: array[:, j] for j in np.flatnonzero(chosen)}
        categories = []
        for j, kind in enumerate(kinds):
            if kind != CATEGORICAL:
                categories.append(None)
                continue
            values = columns[j]
            observed = values[~_is_missing(values, missing_values)]
            categories.append(cls._categories(observed, dtypes[j] if dtypes is not None else None,
                                              names[j] if dtypes is not None else j))
        return cls(tuple(kinds), tuple(categories))

    @staticmethod
    def _categories(observed, dtype, name):
        """The categories of one column: those of its observed entries, in the dtype's or sorted order."""
        import pandas as pd

        observed = pd.unique(observed)  # types and order are read from the distinct values only
        classes = {_type_class(v) for v in observed}
        if len(classes) > 1:
            raise ValueError(f"Column {name!r} mixes values of types {', '.join(sorted(classes))}; convert it to one "
                             "type (for example with .astype(str)).")
        from pandas.api.types import CategoricalDtype

        if isinstance(dtype, CategoricalDtype):
            seen = set(observed.tolist())
            return np.array([c for c in dtype.categories if c in seen], dtype=object)
        unique = sorted(set(observed.tolist()))
        if classes == {"number"}:
            unique = np.asarray(unique, dtype=float)
            if not np.isfinite(unique).all():
                raise ValueError(f"Column {name!r} is categorical but has an infinite value.")
            return unique
        return np.array(unique, dtype=object)

    def to_dict(self):
        """Plain data (lists of str, numbers, bools) for :meth:`from_dict` (``save``)."""
        categories = []
        for j, c in enumerate(self.categories):
            if c is not None and not all(isinstance(v, (str, bool, numbers.Number)) for v in c.tolist()):
                raise TypeError(f"the categories of column {j} cannot be saved (only str, numbers and bools can); "
                                "pickle the imputer instead.")
            categories.append(None if c is None else {"labels": c.dtype == object, "values": c.tolist()})
        return {"kinds": list(self.kinds), "categories": categories}

    @classmethod
    def from_dict(cls, state):
        categories = tuple(None if c is None else np.array(c["values"], dtype=object if c["labels"] else float)
                           for c in state["categories"])
        return cls(tuple(state["kinds"]), categories)

    # ------------------------------------------------------------------ shapes
    @property
    def n_features(self):
        return len(self.kinds)

    @property
    def widths(self):
        """Number of flow features of each column: ``K`` for a categorical column with ``K > 2``, else 1."""
        return np.array([len(c) if k == CATEGORICAL and len(c) > MAX_CODE_CATEGORIES else 1
                         for k, c in zip(self.kinds, self.categories, strict=True)])

    @property
    def is_trivial(self):
        """Every column numeric: the features are the columns, unchanged."""
        return all(kind == NUMERIC for kind in self.kinds)

    @property
    def has_labels(self):
        """Some categorical column has labels other than numbers (so outputs are object arrays)."""
        return any(c is not None and c.dtype == object for c in self.categories)

    def feature_slices(self):
        """The slice of each column in the flow's features."""
        ends = np.cumsum(self.widths)
        return [slice(int(e - w), int(e)) for e, w in zip(ends, self.widths, strict=True)]

    def cell_widths(self):
        """Dequantisation cell of each feature, in the feature's units: 1 for discrete ones, 0 for floats."""
        return np.concatenate([np.full(w, 0.0 if k == NUMERIC else 1.0)
                               for k, w in zip(self.kinds, self.widths, strict=True)]) if self.kinds else np.zeros(0)

    def category_blocks(self):
        """The slice of the features of each categorical column (one-hot, or one code), with its
        number of categories (to snap draws onto categories)."""
        return [(s, len(c)) for s, k, c in zip(self.feature_slices(), self.kinds, self.categories, strict=True)
                if k == CATEGORICAL]

    # ------------------------------------------------------------------ reading a table
    def codes(self, X, missing_values, handle_unknown="error"):
        """Every column as floats: numbers as they are, a category as its index; NaN where missing.

        Raises a ValueError naming the column and the value for a category not seen at
        ``fit`` (or marks it missing under ``handle_unknown="missing"``). ``X`` is a
        DataFrame or a float ndarray (whose categorical columns hold codes).
        """
        frame = is_dataframe(X)
        n = X.shape[0]
        out = np.empty((n, self.n_features))
        for j, kind in enumerate(self.kinds):
            column = X.iloc[:, j] if frame else X[:, j]
            if kind != CATEGORICAL:
                if frame:
                    column = column.to_numpy(dtype=float, na_value=np.nan)
                out[:, j] = column
                continue
            values = column.to_numpy(dtype=object) if frame else column
            missing = _is_missing(values, missing_values)
            import pandas as pd

            coded = pd.Index(self.categories[j]).get_indexer(np.where(missing, None, values).astype(object))
            unknown = (coded < 0) & ~missing
            if unknown.any() and handle_unknown == "error":
                name = X.columns[j] if frame else j
                raise ValueError(f"Column {name!r} has the category {values[np.flatnonzero(unknown)[0]]!r}, not "
                                 "seen at fit; pass handle_unknown='missing' to impute such entries instead.")
            coded = np.where(coded < 0, np.nan, coded.astype(float))
            out[:, j] = coded
        return out

    def expand(self, codes):
        """The flow's features of ``codes`` (n, n_features): one-hot blocks for categorical columns
        with more than 2 categories (all NaN where the entry is missing), the rest unchanged."""
        if all(w == 1 for w in self.widths):
            return codes.copy()
        parts = []
        for j, width in enumerate(self.widths):
            column = codes[:, j:j + 1]
            if width == 1:
                parts.append(column)
                continue
            one_hot = (column == np.arange(width)).astype(float)
            parts.append(np.where(np.isnan(column), np.nan, one_hot))
        return np.hstack(parts)

    def collapse(self, features):
        """Codes of filled ``features`` (n, n_flow_features): a block's argmax, a 0/1 code or an
        integer rounded (to the nearest category: clipped to the codes that exist)."""
        out = np.empty((features.shape[0], self.n_features))
        for j, (s, kind) in enumerate(zip(self.feature_slices(), self.kinds, strict=True)):
            block = features[:, s]
            if kind == CATEGORICAL and block.shape[1] > 1:
                out[:, j] = np.argmax(block, axis=1)
            elif kind == CATEGORICAL:
                out[:, j] = np.clip(np.round(block[:, 0]), 0, max(len(self.categories[j]) - 1, 0))
            elif kind == INTEGER:
                out[:, j] = np.round(block[:, 0])
            else:
                out[:, j] = block[:, 0]
        return out

    def labels(self, j, codes):
        """Category labels of column ``j`` for integer ``codes`` (an object array)."""
        return self.categories[j][codes.astype(np.intp)]

    # ------------------------------------------------------------------ writing a table
    def restore(self, codes, mask, data, keep, frame=False):
        """The completed table: observed entries of ``data`` unchanged, missing ones from ``codes``.

        Parameters
        ----------
        codes : ndarray (n_samples, n_features)
            Every column's filled codes (see :meth:`collapse`); only entries under ``mask``
            are used.
        mask : ndarray of bool (n_samples, n_features)
        data : DataFrame or ndarray
            The input table (a float array of codes for array input).
        keep : ndarray of bool (n_features,)
            Columns in the output.
        frame : bool
            A DataFrame with each column's input dtype (``data`` must be one); else an array,
            of objects where some category is a label, floats otherwise.
        """
        columns = np.flatnonzero(keep)
        if frame:
            import pandas as pd

            parts = {}
            for j in columns:
                if self.kinds[j] == CATEGORICAL and not len(self.categories[j]):  # empty at fit, kept: 0.0
                    parts[j] = pd.Series(np.zeros(len(data)), index=data.index, name=data.columns[j])
                    continue
                series = data.iloc[:, j]
                if mask[:, j].any():
                    values = series.to_numpy(dtype=object, copy=True)
                    values[mask[:, j]] = self._values(j, codes[mask[:, j], j])
                    dtype = series.dtype
                    if isinstance(dtype, pd.CategoricalDtype):  # the transform frame's dtype may lack a category
                        extra = [c for c in self.categories[j] if c not in set(dtype.categories)]
                        dtype = pd.CategoricalDtype([*dtype.categories, *extra], ordered=dtype.ordered)
                    series = pd.Series(values, index=data.index, name=series.name).astype(dtype)
                parts[j] = series
            return pd.concat([parts[j] for j in columns], axis=1) if len(columns) else pd.DataFrame(index=data.index)
        labels = self.has_labels
        out = np.empty((codes.shape[0], len(columns)), dtype=object if labels else float)
        for k, j in enumerate(columns):
            if is_dataframe(data):
                source = data.iloc[:, j].to_numpy(dtype=object) if labels else \
                    data.iloc[:, j].to_numpy(dtype=float, na_value=np.nan)
            else:
                source = data[:, j]
            out[:, k] = np.where(mask[:, j], self._values(j, codes[:, j]), source)
        return out

    def _values(self, j, codes):
        """Column ``j``'s values for its ``codes``: labels of a categorical column, numbers otherwise."""
        if self.kinds[j] != CATEGORICAL:
            return codes
        if not len(self.categories[j]):
            return np.zeros(len(codes))
        return self.labels(j, np.nan_to_num(codes))
