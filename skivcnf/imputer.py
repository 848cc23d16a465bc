"""IVCNFImputer: its parameters and the imputation algorithm; the plumbing shared by flow
imputers is in :class:`skivcnf._base.BaseFlowImputer`, the work on the flow in :mod:`skivcnf.conditional`.
"""

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from ._base import BaseFlowImputer
from ._columns import grid_steps
from ._distributed import is_rank_zero
from ._drawing import MIN_TRAINING_ROWS, ROWS_PER_EPOCH, DrawingMixin, iter_draws, point_imputations
from ._images import build_image_modules, check_image_shape, image_layout, pixel_step
from ._sklearn_compat import Interval, StrOptions, fit_context
from ._utils import caller_stacklevel, one_warning_per_kind
from .conditional import (
    EXACT_VALUE_LOGDETS,
    InferenceNetwork,
    fit_inference_network,
    row_keys,
)
from .flows import EXACT_LOGDET_MAX_FEATURES, ResidualFlow

__all__ = ["IVCNFImputer"]

#: Early stopping holds rows out only when at least this many are held out and ``MIN_TRAINING_ROWS``
#: remain to train on (else the whole table trains).
MIN_VALIDATION_ROWS = 2
#: At most this many rows are held out, and an epoch is at most ``ROWS_PER_EPOCH`` rows drawn afresh:
#: early-stopping checks, and the work between them, stop growing with the table (docs/benchmarks.md).
MAX_VALIDATION_ROWS = 1024
MIN_TRAINING_STEPS = 200  # early stopping waits this many optimiser steps (docs/benchmarks.md, "Uncertainty")
#: Early stopping watches a moving average of the held-out bound, this weight on the newest
#: epoch: on the accuracy grid, 0.952 of the best peer's RMSE against 0.972 unsmoothed, at 1.07x
#: the time (docs/benchmarks.md, "Speed").
VALIDATION_SMOOTHING = 0.3


class IVCNFImputer(DrawingMixin, BaseFlowImputer):
    """Impute missing values by conditional sampling from an invertible residual flow (IVCNF).

    ``fit`` trains a residual flow and an amortised Gaussian posterior jointly on the
    incomplete rows by the IVCNF bound (no complete row is needed; rows with nothing
    missing contribute their exact likelihood). ``transform`` draws ``n_draws``
    completions of each row (latent draws from the posterior, the equality constraint
    solved for the missing entries) and returns their importance-weighted mean, shrunk toward
    the posterior's plain mean where its Monte Carlo noise dominates; observed entries are
    returned unchanged, bit for bit.

    Parameters
    ----------
    n_blocks : int, default=4
        Residual blocks of the flow.
    hidden_layer_sizes : tuple of int, default=(64, 64)
        Hidden widths of each block's network.
    lipschitz_coeff : float, default=0.9
        Bound ``c < 1`` on each block's Lipschitz constant (invertibility margin).
    linear_layer : bool, default=True
        Start the flow with an invertible linear map in LU form
        (:class:`~skivcnf.flows.InvertibleLinear`, Glow's), which learns the linear dependence
        between columns in fewer steps than the residual blocks. The convolutional flow
        (``image_shape``) has none.
    n_reflections : int, default=0
        Householder reflections of the amortised posterior (0: diagonal).
    n_draws : int, default=64
        Completions per row behind each point imputation and each :meth:`score_samples`
        (Monte Carlo variance ``~ 1 / n_draws``, cost ``~ n_draws``).
    n_train_draws : int, default=2
        Draws per row and step when training on the bound.
    importance_weighting : bool, default=True
        Weight the draws by their exact importance weights (consistent conditional mean);
        ``False`` takes their plain mean. Exact weights exist up to
        ``EXACT_LOGDET_MAX_FEATURES`` (100) modelled columns; wider tables get the plain mean.
    refinement_steps : int, default=0
        Adam steps fitting each row's Gaussian posterior on the ELBO, from the amortised
        one, before drawing (the paper's post-training completion, 4.2.2); each costs about
        a training step per batch (8 draws). 0: the amortised posterior.
    objective : {"elbo", "iwae"}, default="iwae"
        Training bound: the ELBO or the importance-weighted bound (which needs the values
        of the log-weights, so ``logdet="exact"`` or ``"hutchinson"``).
    solver : {"auto", "newton", "newton_krylov", "fixed_point"}, default="auto"
        Solver of the equality constraint (see :func:`skivcnf.conditional.solve_constraint`).
    logdet : {"exact", "hutchinson", "clade", "nlade"}, default="exact"
        Log-determinant estimator of the bound. "exact": values and gradients from the full
        Jacobians. "hutchinson": the same exact values, unbiased gradients from a Rademacher
        probe (faster per step on wide tables, noisier). "clade"/"nlade": the paper's
        stochastic estimators (values too), for tables too wide for an exact determinant.
    max_epochs : int, default=100
        Passes over the training rows (early stopping usually ends training sooner); past
        ``ROWS_PER_EPOCH`` (4,096) training rows, an epoch is a fresh random 4,096 of them.
    batch_size : int, default=64
        Rows per training step, and per batch at ``transform`` (1,024 at least on a GPU;
        memory grows with ``batch_size * n_draws * d^2``, never with the number of rows).
    learning_rate : float, default=2e-3
        Adam's step size for the flow and the inference network.
    validation_fraction : float, default=0.1
        Rows held out for early stopping (at most ``MAX_VALIDATION_ROWS``, 1,024), if on.
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the rows (at least ``MIN_VALIDATION_ROWS``,
        leaving ``MIN_TRAINING_ROWS``; else off) and stop when the median of their bounds,
        averaged over epochs (``VALIDATION_SMOOTHING``, weight 0.3 on the newest), has not
        improved for ``n_iter_no_change`` epochs, keeping the best weights. A
        ``ConvergenceWarning`` says when ``max_epochs`` came first (see the user guide).
    n_iter_no_change : int, default=8
        Epochs without improvement of the held-out bound before stopping (never before
        ``MIN_TRAINING_STEPS`` = 200 optimiser steps: a small table's epochs are short).
    image_shape : tuple of int or None, default=None
        ``(height, width)`` or ``(channels, height, width)`` when rows are flattened images
        (C-order): the flow is then convolutional (:func:`~skivcnf.flows.image_flow`: a
        squeeze, ``n_blocks`` convolutional residual blocks with certified Lipschitz bounds,
        ``n_dense_blocks`` fully connected ones of ``hidden_layer_sizes``) and the posterior
        the paper's convolutional network; every pixel is modelled on one scale, with
        uniform dequantisation of the intensities' grid (user guide, "Images"). None: the
        MLP flow for tables.
    conv_channels : tuple of int, default=(32, 32)
        Hidden channels of each convolutional block (with ``image_shape``).
    n_dense_blocks : int, default=1
        Fully connected residual blocks after the convolutional ones (with ``image_shape``).
    grid_dequantisation : bool, default=True
        Float columns whose observed values lie on a regular grid (counts or intensities stored
        as floats, measurements rounded to a precision; :func:`~skivcnf._columns.grid_steps`)
        are trained with uniform noise of the grid's step on their observed entries, as integer
        columns are: the flow then fits a bounded density, not spikes that a linear map can
        sharpen without end (user guide, "Columns on a grid"). Imputations stay floats. False:
        such columns are modelled as continuous values.
    missing_values : float, int, str or None, default=np.nan
        Placeholder of a missing entry (NaN, None and ``pd.NA`` are always missing too).
    categorical_features : "auto", array-like of str or int, bool mask or None, default="auto"
        ``"auto"``: DataFrame columns of dtype category, object, string and bool; or names,
        indices, a mask (an array's values are then codes). Imputed by the most probable
        category; integer columns by integers (user guide, "Mixed-type tables").
    handle_unknown : {"error", "missing"}, default="error"
        A category not seen at ``fit`` raises a ValueError, or is imputed as if missing.
    add_indicator : bool, default=False
        Append :class:`~sklearn.impute.MissingIndicator` columns.
    keep_empty_features : bool, default=False
        Keep columns that are entirely missing at ``fit`` (filled with 0), as
        :class:`~sklearn.impute.SimpleImputer` does; otherwise they are dropped.
    device : str, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
        Progress bars over epochs when positive.

    Attributes
    ----------
    flow_, posterior_ : ResidualFlow, InferenceNetwork or None
        The flow on the standardised modelled columns and the amortised posterior.
    history_ : TrainingHistory or None
        Losses (minus the bound per row) per epoch, held-out losses, steps, timings.
    modelled_features_ : ndarray of bool (n_flow_features,)
        Features the flow models: neither empty nor constant at ``fit``. The features are the
        columns, but for a categorical column with ``K > 2`` categories: ``K`` one-hot ones.
    empty_features_ : ndarray of bool (n_flow_features,)
        Features entirely missing at ``fit``.
    constant_values_ : ndarray (n_flow_features,)
        Value of each constant feature (0 elsewhere), used to fill it.
    center_, scale_ : ndarray (n_modelled,)
        Observed mean and standard deviation of each modelled feature: the flow sees
        ``(X - center_) / scale_``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
    indicator_ : MissingIndicator or None
    feature_kinds_ : ndarray of str (n_features,)
        ``"numeric"``, ``"integer"`` or ``"categorical"``.
    categories_ : list of (ndarray or None)
        Each categorical column's categories seen at ``fit`` (None elsewhere).
    pixel_step_ : float or None
        With ``image_shape``: the grid step of the observed intensities, the width of the
        dequantisation noise (0 when they lie on no grid; None for tables).
    grid_steps_ : ndarray (n_flow_features,)
        The grid step of each float feature, the width of its dequantisation noise (0 for
        continuous features, and everywhere with ``grid_dequantisation=False`` or ``image_shape``).

    Examples
    --------
    >>> import numpy as np
    >>> from skivcnf import IVCNFImputer
    >>> X = np.array([[1.0, 2.0], [np.nan, 3.0], [7.0, 6.0], [4.0, np.nan], [2.0, 2.5]])
    >>> imputer = IVCNFImputer(max_epochs=2, random_state=0).fit(X)
    >>> out = imputer.transform(X)
    >>> bool(np.isfinite(out).all()), out[0].tolist()
    (True, [1.0, 2.0])
    """

    _parameter_constraints: dict = {
        **BaseFlowImputer._parameter_constraints,
        "n_blocks": [Interval(Integral, 1, None, closed="left")],
        "hidden_layer_sizes": [tuple, list],
        "lipschitz_coeff": [Interval(Real, 0, 1, closed="neither")],
        "linear_layer": ["boolean"],
        "n_reflections": [Interval(Integral, 0, None, closed="left")],
        "n_draws": [Interval(Integral, 1, None, closed="left")],
        "n_train_draws": [Interval(Integral, 1, None, closed="left")],
        "importance_weighting": ["boolean"],
        "refinement_steps": [Interval(Integral, 0, None, closed="left")],
        "objective": [StrOptions({"elbo", "iwae"})],
        "solver": [StrOptions({"auto", "newton", "newton_krylov", "fixed_point"})],
        "logdet": [StrOptions({"exact", "hutchinson", "clade", "nlade"})],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "early_stopping": ["boolean"],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "image_shape": [tuple, list, None],
        "conv_channels": [tuple, list],
        "n_dense_blocks": [Interval(Integral, 0, None, closed="left")],
        "grid_dequantisation": ["boolean"],
    }

    def __init__(self, *, n_blocks=4, hidden_layer_sizes=(64, 64), lipschitz_coeff=0.9, linear_layer=True,
                 n_reflections=0,
                 n_draws=64, n_train_draws=2, importance_weighting=True, refinement_steps=0,
                 objective="iwae", solver="auto",
                 logdet="exact", max_epochs=100, batch_size=64, learning_rate=2e-3, validation_fraction=0.1,
                 early_stopping=True, n_iter_no_change=8, image_shape=None, conv_channels=(32, 32), n_dense_blocks=1,
                 grid_dequantisation=True, missing_values=np.nan, categorical_features="auto",
                 handle_unknown="error", add_indicator=False, keep_empty_features=False, device="auto",
                 random_state=None, verbose=0):
        self.n_blocks = n_blocks
        self.hidden_layer_sizes = hidden_layer_sizes
        self.lipschitz_coeff = lipschitz_coeff
        self.linear_layer = linear_layer
        self.n_reflections = n_reflections
        self.n_draws = n_draws
        self.n_train_draws = n_train_draws
        self.importance_weighting = importance_weighting
        self.refinement_steps = refinement_steps
        self.objective = objective
        self.solver = solver
        self.logdet = logdet
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.n_iter_no_change = n_iter_no_change
        self.image_shape = image_shape
        self.conv_channels = conv_channels
        self.n_dense_blocks = n_dense_blocks
        self.grid_dequantisation = grid_dequantisation
        self.missing_values = missing_values
        self.categorical_features = categorical_features
        self.handle_unknown = handle_unknown
        self.add_indicator = add_indicator
        self.keep_empty_features = keep_empty_features
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fitting
    def _check_settings(self, layout):
        """Settings that cannot work together, or with this table, fail before anything is fitted."""
        if self.objective == "iwae" and self.logdet not in EXACT_VALUE_LOGDETS:
            raise ValueError(f"objective='iwae' needs the log-weights' values, which logdet={self.logdet!r} does "
                             "not give: use logdet='exact' or 'hutchinson', or objective='elbo' with logdet='clade' "
                             "or 'nlade'.")
        if self.logdet in EXACT_VALUE_LOGDETS and layout.n_modelled > EXACT_LOGDET_MAX_FEATURES:
            raise ValueError(f"logdet={self.logdet!r} supports up to {EXACT_LOGDET_MAX_FEATURES} modelled features, "
                             f"got {layout.n_modelled} (a categorical column with K > 2 categories counts K); use "
                             "logdet='clade' (or 'nlade') with objective='elbo'.")

    #: The fitted torch modules, saved and pickled by name (see :mod:`skivcnf._persistence`).
    _MODULES = ("flow_", "posterior_")
    # Imputers saved before a parameter existed behave as without it: no linear map, no grid dequantisation.
    _EARLIER_PARAMETERS = {"linear_layer": False, "grid_dequantisation": False}

    def _rebuild_modules(self, features):
        """Freshly built modules by name, for loading their saved weights."""
        return dict(zip(IVCNFImputer._MODULES, self._build_modules(features), strict=True))

    def _build_modules(self, features, generator=None):
        """The flow and the amortised posterior for ``features`` modelled columns (fit, load, unpickling)."""
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        if self.image_shape is not None:
            return build_image_modules(self, check_image_shape(self.image_shape, features), generator)
        flow = ResidualFlow(features, n_blocks=self.n_blocks, hidden_features=tuple(self.hidden_layer_sizes),
                            lipschitz_coeff=self.lipschitz_coeff, linear=self.linear_layer, generator=generator)
        return flow, InferenceNetwork(features, n_reflections=self.n_reflections, generator=generator)

    def _column_layout(self, X, mask):
        self.pixel_step_ = None
        self.grid_steps_ = np.zeros(X.shape[1])
        if self.image_shape is None:
            if self.grid_dequantisation:
                self.grid_steps_ = grid_steps(X, mask)
            return super()._column_layout(X, mask)
        check_image_shape(self.image_shape, X.shape[1])
        layout = image_layout(X, mask)
        self.pixel_step_ = pixel_step(X, mask)
        return layout

    def _cell_widths(self, grids=True):
        if self.pixel_step_ is not None:
            return np.full(int(self.modelled_features_.sum()), self.pixel_step_)
        # Integer and categorical features keep their unit cells; float ones take their grid's step.
        cells = self._encoder.cell_widths()
        return (np.where(cells > 0, cells, self.grid_steps_) if grids else cells)[self.modelled_features_]

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the flow and the amortised posterior on the incomplete rows of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Missing entries are ``missing_values`` (and NaN).
        y : None
            Ignored.

        Returns
        -------
        self : IVCNFImputer
        """
        return self._fit_flow(X)

    def _fit_flow(self, X, task=None):
        """Fit the layout, then train the flow and the posterior on the bound (plus ``task(d, generator,
        device)``'s supervised loss, a :class:`~skivcnf.conditional.ClassificationTask`, where given)."""
        X, table, mask = self._validate_input(X, reset=True)
        layout = self._fit_layout(X, mask, table, check_layout=self._check_settings)
        self.flow_, self.posterior_, self.history_ = None, None, None
        d = layout.n_modelled
        if d == 0:
            return self
        z = torch.as_tensor(layout.standardise(X), dtype=torch.float32)
        hidden = torch.isnan(z)
        self.flow_, self.posterior_ = self._build_modules(d, self._streams.generator("initial_weights"))
        self.flow_.initialize(torch.where(hidden, 0.0, z))
        self.flow_.to(self._device), self.posterior_.to(self._device)
        z, hidden = z.to(self._device), hidden.to(self._device)
        if task is not None:
            task = task(d, self._streams.generator("initial_head"), self._device)
        n_held_out = min(int(self.validation_fraction * len(z)), MAX_VALIDATION_ROWS)  # as fit_inference_network
        holds_out = (self.early_stopping and n_held_out >= MIN_VALIDATION_ROWS
                     and len(z) - n_held_out >= MIN_TRAINING_ROWS)
        self.history_ = fit_inference_network(
            self.flow_, z, hidden, self.posterior_, max_epochs=self.max_epochs, batch_size=self.batch_size,
            lr=self.learning_rate, n_samples=self.n_train_draws, logdet=self.logdet, solver=self.solver,
            objective=self.objective, train_flow=True, monitor="bound", patience=self.n_iter_no_change,
            validation_fraction=self.validation_fraction if holds_out else 0.0, rows_per_epoch=ROWS_PER_EPOCH,
            max_validation_rows=MAX_VALIDATION_ROWS, min_steps=MIN_TRAINING_STEPS,
            # Measured for imputation; the classifier's held-out loss (with its cross-entropy) is not yet.
            smoothing=VALIDATION_SMOOTHING if task is None else None,
            dequantisation=self._dequantisation_cells(self._device),
            generator=self._streams.generator("fit", self._device), task=task, verbose=bool(self.verbose))
        if holds_out and not self.history_.stopped_early and is_rank_zero():  # one warning, not one per process
            warnings.warn(f"Training stopped at max_epochs={self.max_epochs} while the held-out bound was still "
                          f"improving (best epoch {self.history_.best_epoch + 1}); raise max_epochs for a better fit.",
                          ConvergenceWarning, stacklevel=caller_stacklevel())
        return self

    # ------------------------------------------------------------------ conditional draws
    def _row_keys(self, stream, X):
        """Each row's random key: ``stream``'s seed and the row as the flow sees it (float32, its mask),
        so that keys, like outputs, follow a change of units."""
        standardised = self._layout().standardise(X).astype(np.float32)
        return row_keys(self._streams.seed(stream), standardised, np.isnan(standardised))

    @one_warning_per_kind
    def transform(self, X):
        """Impute every missing entry of ``X`` by the importance-weighted mean of its conditional
        draws, shrunk toward the posterior's plain mean by the share of their gap that the weighted
        mean's Monte Carlo variance explains (:func:`~skivcnf.conditional.shrunk_mean`); observed
        entries are returned unchanged.

        Each row draws ``n_draws``, from its own random stream (so its imputation does not
        depend on the rows it comes with); draws beyond the trained range get no weight, the
        weights are Pareto-smoothed, and a row draws up to 4 times as many where they stay
        uneven or its Monte Carlo error exceeds 0.05 column sd (see the troubleshooting guide).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_imputed : ndarray of shape (n_samples, n_features_out)
        """
        X, table, mask = self._validate_input(X, reset=False)
        values = None
        if self._has_hidden_modelled(mask):
            batches = iter_draws(self, X, self.n_draws, self._row_keys("transform", X),
                                 "their missing entries are the training means")
            values = np.concatenate([point_imputations(self, result, self.n_draws).cpu().double().numpy()
                                     for result, _ in batches])
        return self._completed(table, mask, values, X)
