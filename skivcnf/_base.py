"""Plumbing shared by the imputers over a flow, written once: validation, the missing mask,
the column layout, the missing indicator, output containers, feature names and persistence.

An estimator built on :class:`BaseFlowImputer` holds only its algorithm: it fits
``flow_``/``posterior_`` on the standardised modelled columns and produces their values;
the base class turns those into completed tables.
"""

import sys
import warnings
from numbers import Integral
from typing import NamedTuple

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.impute import MissingIndicator
from sklearn.utils.validation import FLOAT_DTYPES, check_array, check_is_fitted, validate_data

from . import _persistence
from ._columns import ColumnLayout, missing_mask
from ._distributed import from_rank_zero
from ._encoding import CATEGORICAL, TableEncoder, is_dataframe
from ._sklearn_compat import (
    MissingValues,
    StrOptions,
    check_feature_names_in,
    output_container,
    wrap_in_output_container,
)
from ._utils import RandomStreams, caller_stacklevel, resolve_device
from .conditional.smoothing import PARETO_K_THRESHOLD
from .exceptions import ConstraintWarning, UnreliableWeightsWarning

__all__ = ["RANGE_MARGIN", "BaseFlowImputer", "ImputationDraws", "warn_unreliable", "warn_unsolved"]

#: A draw whose hidden entry lies more than this many standard deviations of its column beyond
#: the column's observed range at ``fit`` gets no weight (the flow never saw data there).
RANGE_MARGIN = 3.0


class ImputationDraws(NamedTuple):
    """Conditional draws of a block of rows (:meth:`IVCNFImputer.conditional_draws`).

    Attributes
    ----------
    values : ndarray (n_draws, n_samples, n_features_out)
        Completed copies on the input's scale (without indicator columns); observed entries
        are the input's in every copy. A row none of whose draws was solved has its missing
        entries at the training means.
    weights : ndarray (n_draws, n_samples)
        Self-normalised importance weights (sum to 1 over draws), raw: neither bounded nor
        Pareto-smoothed as :meth:`IVCNFImputer.transform` weighs them (see
        :func:`skivcnf.conditional.reliable_draws`). Equal weights on the solved draws where
        exact weights are off or unavailable.
    ess : ndarray (n_samples,)
        Effective sample size of each row's weights (``1 / sum w^2``).
    converged : ndarray of bool (n_draws, n_samples)
        Whether each draw's equality constraint was solved to tolerance.
    n_iter : ndarray of int (n_draws, n_samples)
        Solver iterations per draw (summed over the fallback chain).
    method : ndarray of int (n_draws, n_samples)
        Index into :data:`skivcnf.conditional.SOLVERS` of the solver that finished the draw.
    """

    values: np.ndarray
    weights: np.ndarray
    ess: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray
    method: np.ndarray


def warn_unreliable(n_fallback, n_rows, unit="rows", n_clipped=0):
    """One UnreliableWeightsWarning, at the user's line, for the rows whose weights stayed uneven
    and those whose draws were all out of range (clipped)."""
    parts = []
    if n_fallback:
        parts.append(f"{n_fallback} of {n_rows} {unit} kept uneven importance weights (Pareto k-hat above "
                     f"{PARETO_K_THRESHOLD}) after extra draws: their imputations carry more Monte Carlo error")
    if n_clipped:
        parts.append(f"{n_clipped} of {n_rows} {unit} had every draw beyond the range the flow was trained on "
                     "(observed range +- 3 sd): their draws were clipped into it, with equal weights")
    if parts:
        warnings.warn("; ".join(parts) + " (raise n_draws; see the troubleshooting guide).", UnreliableWeightsWarning,
                      stacklevel=caller_stacklevel())


def warn_unsolved(n_unsolved, n_rows, consequence, unit="rows"):
    """One ConstraintWarning, at the user's line, for the rows with no usable draw (none solved)."""
    if n_unsolved:
        warnings.warn(f"{n_unsolved} of {n_rows} {unit} had no draw whose constraint was solved; {consequence}.",
                      ConstraintWarning, stacklevel=caller_stacklevel())


class Table(NamedTuple):
    """A validated input table, column by column (see :meth:`BaseFlowImputer._validate_input`).

    Attributes
    ----------
    codes : ndarray (n_samples, n_features)
        Every column as floats, a category as its code; NaN where missing.
    mask : ndarray of bool (n_samples, n_features)
        The missing entries.
    data : DataFrame or ndarray
        The input (as floats for array input), whose observed entries the output keeps.
    encoder : TableEncoder
        The column kinds and categories.
    """

    codes: np.ndarray
    mask: np.ndarray
    data: object
    encoder: object


def refuse_dask(X, fit):
    """A Dask collection is not pulled into memory behind the user's back: name what to do instead."""
    dask = sys.modules.get("dask")  # not imported: X cannot be one of its collections
    if dask is None or not dask.is_dask_collection(X):
        return
    if fit:
        raise TypeError("X is a Dask collection: fit trains on a table in memory; pass X.compute() or a sample of its "
                        "rows (to train on more rows in several processes, see 'Scaling out': torchrun).")
    raise TypeError("X is a Dask collection: use skivcnf.dask.transform(imputer, X) or "
                    "skivcnf.dask.sample_multiple_imputations(imputer, X, n, proper=False), which impute it partition "
                    "by partition and return a Dask collection; or pass X.compute().")


class BaseFlowImputer(TransformerMixin, BaseEstimator):
    """Base class of the flow imputers (not for direct use).

    Subclasses define ``_build_modules(n_modelled, generator=None) -> (flow, posterior)``
    and the parameters ``missing_values``, ``add_indicator``, ``keep_empty_features``,
    ``device`` and ``random_state``.
    """

    _parameter_constraints: dict = {
        "missing_values": [MissingValues()],
        "categorical_features": [StrOptions({"auto"}), "array-like", None],
        "handle_unknown": [StrOptions({"error", "missing"})],
        "add_indicator": ["boolean"],
        "keep_empty_features": ["boolean"],
        "device": [str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def _validate_input(self, X, reset):
        """The flow's features of ``X`` (float, NaN at every missing entry), the table they come
        from (a :class:`Table`), and their missing mask.

        Without categorical columns the features are the columns (``validate_data`` as floats);
        with some, each column is read by the fitted :class:`~skivcnf._encoding.TableEncoder`
        (categories as codes, then one-hot blocks).
        """
        if not reset:
            check_is_fitted(self, "modelled_features_")
        refuse_dask(X, reset)
        encoder = TableEncoder.fit(X, self.categorical_features, self.missing_values) \
            if reset else self._encoder
        raw = X
        if encoder is None or CATEGORICAL not in encoder.kinds:  # None: unreadable, validate_data raises
            # NaN always means missing (whatever missing_values is); infinities are refused.
            X = validate_data(self, X, reset=reset, dtype=FLOAT_DTYPES, copy=True, ensure_all_finite="allow-nan",
                              ensure_min_samples=2 if reset else 1)
            mask = missing_mask(X, self.missing_values)
            codes, data = X.copy(), X
            codes[mask] = np.nan
        else:
            validate_data(self, X, reset=reset, skip_check_array=True)
            data = X if is_dataframe(X) else check_array(X, dtype=FLOAT_DTYPES, ensure_all_finite="allow-nan")
            codes = encoder.codes(data, self.missing_values, self.handle_unknown)
            check_array(codes, ensure_all_finite="allow-nan", ensure_min_samples=2 if reset else 1)
            mask = np.isnan(codes)
            numeric = np.array([kind != CATEGORICAL for kind in encoder.kinds])
            mask[:, numeric] = missing_mask(codes[:, numeric], self.missing_values)
            codes[mask] = np.nan
        features = encoder.expand(codes)
        # A DataFrame's own columns are kept, for its dtypes in a pandas output.
        data = raw if is_dataframe(raw) else data
        return features, Table(codes, mask, data, encoder), np.isnan(features)

    def _fit_layout(self, X, mask, table, check_layout=None):
        """Fit the indicator and the column layout, choose the device, root the random streams.

        Everything is checked (``check_layout(layout)`` raises for a layout the subclass cannot
        model) before any fitted attribute is set, so a failed ``fit`` leaves no imputer that
        looks fitted. ``X`` and ``mask`` are the flow's features, ``table`` their columns.
        """
        layout = self._column_layout(X, mask)
        device = resolve_device(self.device)
        if check_layout is not None:
            check_layout(layout)
        encoder = table.encoder
        self._encoder = encoder
        self.feature_kinds_ = np.array(encoder.kinds, dtype=object)
        self.categories_ = list(encoder.categories)
        self.indicator_ = MissingIndicator(missing_values=np.nan, error_on_new=False).fit(table.codes) \
            if self.add_indicator else None
        self.empty_features_, self.constant_values_ = layout.empty, layout.constant_values
        self.modelled_features_, self.center_, self.scale_ = layout.modelled, layout.center, layout.scale
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no modelled column: an empty range
            modelled = X[:, layout.modelled]
            low = np.nanmin(modelled, axis=0, initial=np.inf, where=~np.isnan(modelled))
            high = np.nanmax(modelled, axis=0, initial=-np.inf, where=~np.isnan(modelled))
        # A discrete feature was trained on its cells: the range reaches the outer cells' edges. A float
        # column on a grid keeps its observed range, which bounds its (float) imputations as before.
        half_cell = 0.5 * self._cell_widths(grids=False)
        self.observed_range_ = np.vstack([low - half_cell, high + half_cell])
        self._device = device
        # Data-parallel ranks (torchrun) share every random stream, random_state=None included.
        seed = RandomStreams.from_random_state(self.random_state).root_seed
        self._streams = RandomStreams(int(from_rank_zero(lambda: float(seed))))  # an int32: exact in float64
        return layout

    def _column_layout(self, X, mask):
        """Which features the flow models and their scaling (:class:`~skivcnf._columns.ColumnLayout`)."""
        return ColumnLayout.fit(X, mask)

    def _empty_columns(self):
        """Columns entirely missing at ``fit`` (``empty_features_`` is per feature of the flow)."""
        return np.array([self.empty_features_[s].all() for s in self._encoder.feature_slices()], dtype=bool)

    def _dequantisation_cells(self, device):
        """The cells of the modelled features on the flow's scale (a tensor), or None where all are floats."""
        cells = self._cell_widths() / self.scale_
        return torch.as_tensor(cells, dtype=torch.float32, device=device) if cells.any() else None

    def _cell_widths(self, grids=True):
        """Dequantisation cell of each modelled feature, on the input's scale (0 for floats; ``grids``:
        whether float columns on a grid count, for estimators that dequantise them)."""
        return self._encoder.cell_widths()[self.modelled_features_]

    def _has_hidden_modelled(self, mask):
        """Whether the flow has entries to fill in rows with missing ``mask``."""
        return self.flow_ is not None and bool(mask[:, self.modelled_features_].any())

    def _draw_bounds(self):
        """The box, on the flow's scale, outside which a draw gets no weight: the observed range
        of each modelled column widened by ``RANGE_MARGIN`` of its standard deviations."""
        lower, upper = (self.observed_range_ - self.center_) / self.scale_
        return lower - RANGE_MARGIN, upper + RANGE_MARGIN

    def _layout(self):
        return ColumnLayout(self.empty_features_, self.constant_values_, self.modelled_features_, self.center_,
                            self.scale_)

    def _column_codes(self, table, mask, standardised_values, X):
        """Every column's codes with the missing entries filled, from the flow's features.

        ``standardised_values`` (n_samples, n_modelled) are the flow's values of the modelled
        features on its own scale, or None when the flow fills nothing; ``X`` and ``mask`` are
        the features (NaN where missing) and their mask.
        """
        layout = self._layout()
        values = None if standardised_values is None else layout.unstandardise(standardised_values)
        features = layout.complete(X, mask, values, keep_empty=True)
        collapsed = table.encoder.collapse(features)
        return np.where(table.mask, collapsed, table.codes)

    def _columns_out(self, table, mask, standardised_values, X, frame=False):
        """The completed columns (no indicator): observed entries of the input unchanged."""
        codes = self._column_codes(table, mask, standardised_values, X)
        keep = np.ones(table.codes.shape[1], dtype=bool) if self.keep_empty_features else ~self._empty_columns()
        return table.encoder.restore(codes, table.mask, table.data, keep, frame=frame)

    def _completed(self, table, mask, standardised_values, X):
        """The output table: the input with its missing entries filled, then the indicator columns.

        A DataFrame with the input's dtypes under ``set_output(transform="pandas")`` for a
        DataFrame input; otherwise an array (``set_output`` wraps it).
        """
        frame = output_container(self) == "pandas" and is_dataframe(table.data)
        out = self._columns_out(table, mask, standardised_values, X, frame=frame)
        if self.indicator_ is None:
            pass
        elif frame:
            import pandas as pd

            indicator = pd.DataFrame(self.indicator_.transform(table.codes).astype(float), index=out.index)
            out = pd.concat([out, indicator], axis=1)
        else:
            out = np.hstack([out, self.indicator_.transform(table.codes)])
        if frame:
            out.columns = self.get_feature_names_out()
        elif isinstance(table.data, np.ndarray) and table.data.dtype == np.float32 and out.dtype != object:
            out = out.astype(np.float32)
        return out

    def _stack_in_output_container(self, outputs, X_in):
        """Stack completed copies in the container that ``transform`` returns (``set_output``)."""
        container = output_container(self)
        if container == "default":
            return np.stack(outputs)
        frames = [wrap_in_output_container(out, X_in, self) for out in outputs]
        if container == "pandas":
            import pandas as pd

            return pd.concat(frames, keys=range(len(frames)), names=["imputation", *frames[0].index.names])
        import polars as pl

        return pl.concat([frame.insert_column(0, pl.Series("imputation", [k] * len(frame)))
                          for k, frame in enumerate(frames)])

    @staticmethod
    def _check_count(name, value):
        if not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")

    def score(self, X, y=None):
        """Mean of :meth:`score_samples`: the average log-likelihood of the observed entries.

        Higher is better, so that :class:`~sklearn.model_selection.GridSearchCV` can pick an
        imputer's settings by held-out likelihood, as it does for density estimators.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        score : float
        """
        return float(np.mean(self.score_samples(X)))

    def get_feature_names_out(self, input_features=None):
        """Output feature names (empty features dropped unless kept, indicators appended).

        Parameters
        ----------
        input_features : array-like of str, optional

        Returns
        -------
        ndarray of str
        """
        check_is_fitted(self, "modelled_features_")
        names = check_feature_names_in(self, input_features)
        out = names if self.keep_empty_features else names[~self._empty_columns()]
        if self.indicator_ is not None:
            out = np.concatenate([out, self.indicator_.get_feature_names_out(names)])
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.non_deterministic = False
        return tags

    def save(self, path):
        """Write the fitted imputer to ``path`` as weights, arrays and settings; no pickle.

        The file holds only tensors, numbers and strings, so :meth:`load` reads it with
        ``torch.load(weights_only=True)``, which runs no code from the file, unlike
        unpickling. The ``set_output`` configuration is saved too. Under ``torch.distributed``
        (training with ``torchrun``) every rank calls it and rank 0 alone writes the file.

        Parameters
        ----------
        path : str or os.PathLike
        """
        check_is_fitted(self, "modelled_features_")
        _persistence.save_imputer(self, path)

    @classmethod
    def load(cls, path, device=None):
        """Read an imputer written by :meth:`save` (safe: no code in the file is run).

        The imputer goes to ``device``, or by default to its saved ``device`` setting (the
        CPU, with a warning, where that device is not available here).

        Parameters
        ----------
        path : str or os.PathLike
        device : str, optional
            ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``: load onto this device, and
            set it as the imputer's ``device`` (a GPU that is not available raises).

        Returns
        -------
        imputer
            Fitted; its transforms equal the saved imputer's.
        """
        return _persistence.load_imputer(cls, path, device)

    def __getstate__(self):
        return _persistence.pickled_state(super().__getstate__())

    #: Parameters added after models were saved, with the value those models were fitted with.
    _EARLIER_PARAMETERS: dict = {}

    def __setstate__(self, state):
        state = {**self._EARLIER_PARAMETERS, **state}
        super().__setstate__(state)  # scikit-learn's check of the version that pickled it
        _persistence.restore_pickled_state(self)
