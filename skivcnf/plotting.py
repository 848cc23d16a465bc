"""Figures of a fitted :class:`~skivcnf.IVCNFImputer`: imputed against observed values, and its training curve.

Matplotlib is an optional dependency (``pip install skivcnf[plot]``), imported only when a
function here is called. Each function returns the :class:`matplotlib.figure.Figure` it drew
on, and takes the axes to draw into when the figure is part of a larger one.
"""

from numbers import Integral

import numpy as np
from sklearn.utils.validation import check_is_fitted

__all__ = ["plot_imputed_distributions", "plot_training_history"]

#: Columns :func:`plot_imputed_distributions` draws when ``columns`` is None (the first ones with gaps).
DEFAULT_MAX_COLUMNS = 6
#: Panels per row of a figure :func:`plot_imputed_distributions` creates.
PANELS_PER_ROW = 3


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("skivcnf.plotting needs matplotlib: pip install skivcnf[plot]") from error
    return plt


def _column_index(imputer, column):
    """The input index of ``column`` (an index, or a name of ``imputer.feature_names_in_``)."""
    n_features = imputer.n_features_in_
    if isinstance(column, str):
        names = getattr(imputer, "feature_names_in_", None)
        if names is None:
            raise ValueError(f"columns: {column!r} is a name, but the imputer was fitted without feature names "
                             "(on an array, not a DataFrame); give column indices")
        matches = np.flatnonzero(names == column)
        if not len(matches):
            raise ValueError(f"columns: {column!r} is not a feature the imputer was fitted on (feature_names_in_)")
        return int(matches[0])
    if isinstance(column, Integral) and not isinstance(column, bool):
        if not 0 <= column < n_features:
            raise ValueError(f"columns: index {column} is out of range for the imputer's {n_features} features")
        return int(column)
    raise TypeError(f"columns must hold column indices (int) or feature names (str); got {type(column).__name__}")


def _chosen_columns(imputer, columns, mask):
    """Input indices of the columns to draw, each with missing entries in ``mask`` and imputed by ``imputer``."""
    imputed = ~imputer._empty_columns()
    if columns is None:
        chosen = np.flatnonzero(mask.any(axis=0) & imputed)[:DEFAULT_MAX_COLUMNS]
        if not len(chosen):
            raise ValueError("X has no missing entries in the columns the imputer fills: nothing to plot")
        return [int(j) for j in chosen]
    requested = [columns] if isinstance(columns, str | Integral) else list(columns)
    if not requested:
        raise ValueError("columns is empty: give at least one column, or None for the default")
    chosen = [_column_index(imputer, column) for column in requested]
    for column, j in zip(requested, chosen, strict=True):
        if not imputed[j]:
            raise ValueError(f"columns: {column!r} was entirely missing at fit, so the imputer does not impute it")
        if not mask[:, j].any():
            raise ValueError(f"columns: {column!r} has no missing entries in X, so nothing of it is imputed")
    return chosen


def _copies_as_array(copies, n_imputations, n_rows):
    """``sample_multiple_imputations``' output as an array (m, n, p), whatever ``set_output`` chose."""
    if isinstance(copies, np.ndarray):
        return copies
    if hasattr(copies, "index"):  # pandas: the m copies stacked, imputation by imputation
        values = copies.to_numpy(dtype=object)
    else:  # polars: stacked too, with a first column "imputation"
        values = copies.drop("imputation").to_numpy().astype(object)
    return values.reshape(n_imputations, n_rows, -1)


def _feature_name(imputer, j):
    names = getattr(imputer, "feature_names_in_", None)
    return f"column {j}" if names is None else str(names[j])


def plot_imputed_distributions(imputer, X, n_imputations=5, columns=None, bins=30, axes=None):
    """Histograms of each column's observed values against its imputed values.

    A categorical column gets bars of each category's share instead (observed, imputed).
    One panel per column: the observed entries of that column of ``X`` (grey bars) and the
    values imputed for its missing entries in ``n_imputations`` copies of
    :meth:`~skivcnf.IVCNFImputer.sample_multiple_imputations` (blue bars, pooled over the
    copies), both as densities on the same bins. When values are missing completely at
    random the two should look alike; under other mechanisms they may rightly differ.

    Parameters
    ----------
    imputer : IVCNFImputer
        Fitted.
    X : array-like (n_samples, n_features)
        The table to impute (usually the one the imputer was fitted on).
    n_imputations : int, default=5
        Completed copies drawn; each missing entry contributes ``n_imputations`` values.
    columns : int, str, sequence of them, or None, default=None
        Columns to draw, by index or, for an imputer fitted on a DataFrame, by name. Each must
        have missing entries in ``X`` and be imputed (not entirely missing at ``fit``). None
        draws the first 6 such columns.
    bins : int, str or sequence, default=30
        Bins of each panel, as :func:`numpy.histogram_bin_edges` reads them, computed from the
        observed and imputed values of that column together.
    axes : Axes or array of Axes, optional
        Axes to draw into, one per column (extra ones are left untouched). By default a new
        figure with 3 panels per row.

    Returns
    -------
    matplotlib.figure.Figure
        The figure of the axes drawn on. Panel ``k`` is titled with the column's name (or
        ``column j``) and its number of missing entries; its bar containers
        (``ax.containers``) are the observed histogram, then the imputed one.

    Raises
    ------
    ImportError
        Without matplotlib.
    sklearn.exceptions.NotFittedError
        If ``imputer`` is not fitted.
    ValueError
        For a column unknown to the imputer, entirely missing at ``fit`` or without missing
        entries in ``X`` (the message names it), fewer ``axes`` than columns, an ``X`` whose
        number of columns differs from the imputer's, or no missing entries at all.
    TypeError
        For a column that is neither an int nor a str.

    Examples
    --------
    >>> import numpy as np
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from skivcnf import IVCNFImputer
    >>> from skivcnf.plotting import plot_imputed_distributions
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 3))
    >>> X[rng.random(X.shape) < 0.2] = np.nan
    >>> imputer = IVCNFImputer(max_epochs=2, early_stopping=False, n_draws=4, n_blocks=1, hidden_layer_sizes=(8,),
    ...                        random_state=0).fit(X)
    >>> fig = plot_imputed_distributions(imputer, X, n_imputations=3, columns=[0, 2])
    >>> [ax.get_title() for ax in fig.axes]
    ['column 0 (14 missing)', 'column 2 (14 missing)']
    """
    plt = _pyplot()
    check_is_fitted(imputer, "modelled_features_")
    n_columns = np.shape(X)[1] if np.ndim(X) == 2 else None
    if n_columns != imputer.n_features_in_:
        raise ValueError(f"X has {n_columns} columns; the imputer was fitted on {imputer.n_features_in_}")
    _, table, _ = imputer._validate_input(X, reset=False)
    values, mask = table.codes, table.mask
    chosen = _chosen_columns(imputer, columns, mask)
    if axes is None:
        n_cols = min(PANELS_PER_ROW, len(chosen))
        n_rows = -(-len(chosen) // n_cols)
        fig, grid = plt.subplots(n_rows, n_cols, figsize=(3.8 * n_cols, 3.0 * n_rows), squeeze=False)
        for extra in grid.flat[len(chosen):]:
            fig.delaxes(extra)
        axes = grid.flat[:len(chosen)]
    else:
        axes = np.ravel(axes)
        if len(axes) < len(chosen):
            raise ValueError(f"axes has {len(axes)} axes for {len(chosen)} columns")
    copies = _copies_as_array(imputer.sample_multiple_imputations(X, n_imputations), n_imputations, len(values))
    kept = np.ones(imputer.n_features_in_, dtype=bool) if imputer.keep_empty_features else ~imputer._empty_columns()
    output_index = np.cumsum(kept) - 1  # input column -> column of the output (empty ones may be dropped)
    for k, (ax, j) in enumerate(zip(axes, chosen, strict=False)):
        observed = values[~mask[:, j], j]
        imputed = copies[:, mask[:, j], output_index[j]].ravel()
        ax.set_title(f"{_feature_name(imputer, j)} ({int(mask[:, j].sum())} missing)", fontsize=9)
        if imputer.categories_[j] is not None:
            _category_bars(ax, imputer.categories_[j], observed, imputed, n_imputations, legend=k == 0)
            continue
        imputed = imputed.astype(float)
        edges = np.histogram_bin_edges(np.concatenate([observed, imputed]), bins=bins)
        ax.hist(observed, bins=edges, density=True, color="0.6", alpha=0.7, label="observed")
        ax.hist(imputed, bins=edges, density=True, color="tab:blue", alpha=0.5,
                label=f"imputed ({n_imputations} copies)")
        if k == 0:
            ax.set_ylabel("density")
            ax.legend(fontsize=7)
    return axes[0].figure


def _category_bars(ax, categories, observed_codes, imputed_labels, n_imputations, legend):
    """Side-by-side bars of each category's share among the observed and the imputed entries."""
    import pandas as pd

    imputed_codes = pd.Index(categories).get_indexer(imputed_labels.astype(categories.dtype))
    positions = np.arange(len(categories))
    for codes, offset, color, label in ((observed_codes, -0.2, "0.6", "observed"),
                                         (imputed_codes, 0.2, "tab:blue", f"imputed ({n_imputations} copies)")):
        shares = np.bincount(codes.astype(np.intp), minlength=len(categories)) / max(len(codes), 1)
        ax.bar(positions + offset, shares, width=0.4, color=color, alpha=0.7, label=label)
    ax.set_xticks(positions, [str(c) for c in categories], fontsize=7)
    ax.set_ylabel("share")
    if legend:
        ax.legend(fontsize=7)


def _training_history(history):
    """The :class:`~skivcnf.flows.TrainingHistory` of ``history``, itself one or a fitted imputer."""
    if hasattr(history, "train_loss"):
        return history
    if hasattr(history, "get_params"):  # an estimator
        check_is_fitted(history)
        if getattr(history, "history_", None) is None:
            raise ValueError("the imputer's history_ is None: it modelled no column (each was constant or entirely "
                             "missing at fit), so nothing was trained")
        return history.history_
    raise TypeError(f"history must be a fitted IVCNFImputer or its history_ (a TrainingHistory); "
                    f"got {type(history).__name__}")


def plot_training_history(history, ax=None):
    """The training curve of a fit: losses per epoch and the epoch whose weights were kept.

    ``train_loss`` (minus the bound per training row, averaged over the epoch) is drawn on
    ``ax``'s y-axis, ``validation_loss`` (what early stopping monitors: minus the median bound
    of the held-out rows) on a second y-axis (``ax.twinx()``), because a mean and a median of
    the bound sit at different levels; a dashed vertical line marks ``best_epoch``. Epochs
    are numbered from 1 on the x-axis, so the line is at ``best_epoch + 1``
    (``best_epoch`` counts from 0). There is no held-out curve without a validation split,
    and no line when no epoch was kept (``best_epoch`` is -1).

    Parameters
    ----------
    history : IVCNFImputer or TrainingHistory
        A fitted imputer, or its ``history_``.
    ax : Axes, optional
        Axes to draw into; by default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The figure of ``ax``; ``ax.lines[0]`` is the training curve, ``ax.lines[1]`` the
        best-epoch line, and the held-out curve is the first line of the twin axes.

    Raises
    ------
    ImportError
        Without matplotlib.
    sklearn.exceptions.NotFittedError
        For an imputer that is not fitted.
    ValueError
        For a fitted imputer whose ``history_`` is None (no column was modelled).
    TypeError
        For anything else than an imputer or a training history.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from skivcnf.flows import TrainingHistory
    >>> from skivcnf.plotting import plot_training_history
    >>> history = TrainingHistory(train_loss=[3.0, 2.5, 2.25], validation_loss=[3.25, 2.75, 2.8], best_epoch=1)
    >>> fig = plot_training_history(history)
    >>> ax, held_out = fig.axes
    >>> ax.lines[0].get_ydata().tolist(), held_out.lines[0].get_ydata().tolist(), ax.lines[1].get_xdata()[0]
    ([3.0, 2.5, 2.25], [3.25, 2.75, 2.8], 2)
    """
    plt = _pyplot()
    history = _training_history(history)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.8))
    train, held_out = list(history.train_loss), list(history.validation_loss)
    ax.plot(np.arange(1, len(train) + 1), train, "o-", ms=3, color="tab:blue", label="training rows (train_loss)")
    if history.best_epoch >= 0:
        ax.axvline(history.best_epoch + 1, color="k", ls="--", lw=1, label=f"best epoch ({history.best_epoch + 1})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("minus the bound per row (mean)", color="tab:blue")
    handles, labels = ax.get_legend_handles_labels()
    if held_out:
        twin = ax.twinx()
        twin.plot(np.arange(1, len(held_out) + 1), held_out, "s-", ms=3, color="tab:orange",
                  label="held-out rows (validation_loss)")
        twin.set_ylabel("held-out: minus the median bound", color="tab:orange")
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize=8)
    return ax.figure
