"""Imputation of Dask arrays and DataFrames, partition by partition, with a fitted imputer.

A row's imputation needs only the fitted model and the row, so a table larger than one
process's memory is imputed by mapping the imputer over its partitions: the model is one
task of the graph (sent once to each worker that needs it), and each partition's result is
computed where it lies. The results equal the in-memory methods' to float tolerance whatever
the chunking or the number of workers, because every row draws from its own random stream,
keyed by the imputer's ``random_state`` and the row itself (:func:`skivcnf.conditional.noise.row_keys`).

Estimators of scikit-learn take arrays and DataFrames in memory, so these are functions of a
fitted imputer (as in dask-ml), not methods: ``IVCNFImputer.transform`` refuses a Dask
collection with a message that names them. Needs the ``dask`` extra
(``pip install "skivcnf[dask]"``).

Examples
--------
>>> import dask.array as da, numpy as np
>>> from skivcnf import IVCNFImputer
>>> import skivcnf.dask
>>> X = np.random.default_rng(0).normal(size=(60, 3))
>>> X[::4, 1] = np.nan
>>> imputer = IVCNFImputer(max_epochs=1, n_draws=8, random_state=0).fit(X)
>>> lazy = skivcnf.dask.transform(imputer, da.from_array(X, chunks=(25, 3)))
>>> bool(np.allclose(lazy.compute(), imputer.transform(X), atol=1e-5))
True
"""

import copy
import warnings

import numpy as np

from ._drawing import draw_copies
from ._utils import one_warning_per_kind
from .conditional.noise import distinct_keys

__all__ = ["sample_multiple_imputations", "transform"]

#: The column of the copy number in a Dask DataFrame of copies (Dask has no MultiIndex).
IMPUTATION_COLUMN = "imputation"


def transform(imputer, X):
    """Impute a Dask array or DataFrame lazily, as ``imputer.transform`` would in memory.

    Parameters
    ----------
    imputer : IVCNFImputer
        Fitted.
    X : dask.array.Array of shape (n_samples, n_features) or dask.dataframe.DataFrame
        Rows may be chunked in any way; the columns of an array are brought into one chunk.

    Returns
    -------
    dask.array.Array or dask.dataframe.DataFrame
        The same lazy type, with the same row chunks (a DataFrame keeps its index, its
        divisions and its columns' dtypes, as ``set_output(transform="pandas")`` does).
        Observed entries are unchanged.
    """
    model, X, frame = _prepare(imputer, X)
    example = _example_output(model, X, frame)
    handle = _delayed(model)
    empty = example.iloc[:0] if frame else example[:0]  # what a partition without rows gives
    if frame:
        return X.map_partitions(_transform_partition, handle, empty, meta=empty, enforce_metadata=False)
    return X.map_blocks(_transform_partition, handle, empty, dtype=example.dtype,
                        chunks=(X.chunks[0], (example.shape[1],)), meta=np.empty((0, 0), dtype=example.dtype))


def sample_multiple_imputations(imputer, X, n_imputations=5, *, proper=True):
    """Draw ``n_imputations`` completed copies of a Dask array or DataFrame, lazily.

    Each row's copies are resampled from draws of the fitted model, as
    ``imputer.sample_multiple_imputations(X, n_imputations, proper=False)`` does in memory
    (and equal to it to float tolerance). ``proper=True`` re-estimates the model on bootstrap
    resamples of all the rows of ``X``, which a computation partition by partition cannot
    do: it raises, and ``proper=False`` must be passed (see the "Scaling out" guide for what
    that costs in coverage, and how to get proper copies of a sample of rows).

    Equal rows get independent copies, as in memory, so this first computes each row's
    64-bit key (a pass over ``X``; 8 bytes a row are gathered where the graph is computed)
    to find the repeated rows across partitions.

    Parameters
    ----------
    imputer : IVCNFImputer
        Fitted.
    X : dask.array.Array of shape (n_samples, n_features) or dask.dataframe.DataFrame
    n_imputations : int, default=5
    proper : bool, default=True
        Must be False.

    Returns
    -------
    dask.array.Array or dask.dataframe.DataFrame
        For an array, shape ``(n_imputations, n_samples, n_features_out)``, chunked by rows
        as ``X``. For a DataFrame, ``n_imputations * n_samples`` rows indexed by ``X``'s
        index, with the copy number in a first column ``"imputation"`` (the in-memory long
        frame's index level; Dask has no MultiIndex); a partition holds every copy of its
        rows, copy by copy, and the divisions are unknown.
    """
    import dask
    import dask.array as da

    if proper:
        raise ValueError("proper=True re-estimates the model on bootstrap resamples of all of X's rows, which a "
                         "computation partition by partition cannot do: pass proper=False (each row's copies from "
                         "the fitted model), or call imputer.sample_multiple_imputations on X.compute() or a sample.")
    imputer._check_count("n_imputations", n_imputations)
    model, X, frame = _prepare(imputer, X)
    if frame and IMPUTATION_COLUMN in X.columns:
        raise ValueError(f"X has a column named {IMPUTATION_COLUMN!r}, the column that numbers the copies.")
    handle = _delayed(model)
    parts = list(X.to_delayed()) if frame else list(X.to_delayed().ravel())
    keys = dask.compute(*[dask.delayed(_partition_keys)(part, handle) for part in parts])
    final = np.split(distinct_keys(np.concatenate(keys)), np.cumsum([len(k) for k in keys])[:-1])
    # Only the repeats' keys change: a partition is sent the few (row, key) pairs that differ.
    fixes = [(np.flatnonzero(new != old), new[new != old]) for new, old in zip(final, keys, strict=True)]
    example = _example_output(model, X, frame)
    if frame:
        empty = example.iloc[:0]
        empty.insert(0, IMPUTATION_COLUMN, np.array([], dtype=np.int64))
    else:
        empty = np.empty((n_imputations, 0, example.shape[1]), dtype=example.dtype)
    copies = [dask.delayed(_copies_partition)(part, handle, n_imputations, fix, frame, empty) for part, fix in
              zip(parts, fixes, strict=True)]
    if frame:
        import dask.dataframe as dd

        return dd.from_delayed(copies, meta=empty, verify_meta=False)
    return da.concatenate([da.from_delayed(part, shape=(n_imputations, len(k), example.shape[1]), dtype=example.dtype)
                           for part, k in zip(copies, keys, strict=True)], axis=1)


def _prepare(imputer, X):
    """A copy of the fitted ``imputer`` whose output is ``X``'s kind (pandas for a DataFrame), ``X``
    with its columns in one chunk, and whether it is a DataFrame."""
    try:
        import dask
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
        raise ImportError('skivcnf.dask needs Dask: pip install "skivcnf[dask]".') from exc
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(imputer, "modelled_features_")
    if not dask.is_dask_collection(X):
        raise TypeError(f"X must be a Dask array or DataFrame, got {type(X).__name__}; for data in memory, call the "
                        "imputer's own method.")
    frame = not isinstance(X, da.Array)
    if frame and not hasattr(X, "map_partitions"):
        raise TypeError(f"X must be a Dask array or DataFrame, got {type(X).__name__}.")
    if not frame:
        if X.ndim != 2:
            raise ValueError(f"X must be a 2-D Dask array, got {X.ndim} dimensions.")
        X = X.rechunk({1: -1})
    model = copy.deepcopy(imputer)
    model.set_output(transform="pandas" if frame else "default")
    return model, X, frame


def _delayed(model):
    """The model as one task of the graph: pickled once, fetched once by each worker."""
    import dask

    return dask.delayed(model, pure=True)


def _example_output(model, X, frame):
    """The output of one row with every entry that can be missing missing, for the result's dtypes."""
    if frame:
        row = X._meta_nonempty.iloc[:1].copy()
        for j, column in enumerate(row.columns):
            dtype = row[column].dtype
            if not isinstance(dtype, np.dtype) or dtype.kind not in "iub":  # numpy ints and bools hold no NA
                row[column] = row[column].where(np.zeros(1, dtype=bool))
            elif model.categories_[j] is not None:  # a category seen at fit, not Dask's placeholder
                row[column] = np.asarray(model.categories_[j][:1]).astype(row[column].dtype)
    else:
        dtype = X.dtype
        row = np.full((1, X.shape[1]), np.nan if dtype.kind in "fcO" else 0, dtype=dtype)
        for j, categories in enumerate(model.categories_):
            if dtype.kind not in "fcO" and categories is not None:
                row[0, j] = categories[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.transform(row)


@one_warning_per_kind
def _transform_partition(part, model, empty):
    return empty if len(part) == 0 else model.transform(part)


def _partition_keys(part, model):
    if len(part) == 0:
        return np.empty(0, dtype=np.uint64)
    X, _, _ = model._validate_input(part, reset=False)
    return model._row_keys("multiple_imputations", X)


@one_warning_per_kind
def _copies_partition(part, model, n_imputations, fix, frame, empty):
    if len(part) == 0:
        return empty
    X, table, mask = model._validate_input(part, reset=False)
    keys = model._row_keys("multiple_imputations", X)
    keys[fix[0]] = fix[1]
    copies = draw_copies(model, X, mask, n_imputations, False, keys, min_rows=0)
    stacked = model._stack_in_output_container([model._completed(table, mask, c, X) for c in copies], part)
    if frame:
        return stacked.reset_index(level=IMPUTATION_COLUMN)
    return stacked
