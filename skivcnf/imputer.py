"""IVCNFImputer: a scikit-learn imputer that samples missing entries from a residual flow."""

import copy
import json
import math
import os
import warnings
from dataclasses import asdict
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import MissingIndicator
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, MissingValues, StrOptions
from sklearn.utils._set_output import _get_output_config, _wrap_data_with_container
from sklearn.utils.validation import FLOAT_DTYPES, _check_feature_names_in, check_is_fitted, validate_data

from .conditional import (
    GaussianPosterior,
    InferenceNetwork,
    PosteriorFitHistory,
    conditional_mean,
    fit_inference_network,
    fit_posterior,
    importance_weighted_bound,
    sample_conditional,
    self_normalized_weights,
)
from .exceptions import ConstraintWarning
from .flows import EXACT_LOGDET_MAX_FEATURES, ResidualFlow

_SAVE_FORMAT = "skivcnf.IVCNFImputer"
_SAVE_VERSION = 1

__all__ = ["IVCNFImputer"]


def _resolve_device(device):
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available.")
    return resolved


def _warn_unsolved(n_failed, n_rows, where):
    """One ConstraintWarning for rows none of whose draws was solved (they got the training means)."""
    if n_failed:
        warnings.warn(f"{n_failed} of {n_rows} rows had no draw whose constraint was solved; their missing "
                      f"entries were filled with the training means{where}.", ConstraintWarning, stacklevel=3)


def _missing_mask(X, missing_values):
    if isinstance(missing_values, float) and math.isnan(missing_values) or missing_values is None:
        return np.isnan(X)
    return (X == missing_values) | np.isnan(X)


class IVCNFImputer(TransformerMixin, BaseEstimator):
    """Impute missing values by conditional sampling from an invertible residual flow (IVCNF).

    ``fit`` trains a residual flow and an amortised Gaussian posterior jointly on the
    incomplete rows by the IVCNF bound (no complete row is needed; rows with nothing
    missing contribute their exact likelihood). ``transform`` draws ``n_draws``
    completions of each row (latent draws from the posterior, the equality constraint
    solved for the missing entries) and returns their importance-weighted mean; observed
    entries are returned unchanged, bit for bit.

    Parameters
    ----------
    n_blocks : int, default=4
        Residual blocks of the flow.
    hidden_layer_sizes : tuple of int, default=(64, 64)
        Hidden widths of each block's network.
    lipschitz_coeff : float, default=0.9
        Bound ``c < 1`` on each block's Lipschitz constant (invertibility margin).
    n_reflections : int, default=0
        Householder reflections of the amortised posterior (0: diagonal Gaussian).
    n_draws : int, default=64
        Completions per row behind each point imputation (and each row's
        :meth:`score_samples`); their Monte Carlo error shrinks like ``1 / n_draws``,
        at a proportional cost of ``transform``.
    n_train_draws : int, default=2
        Draws per row and step when training on the bound.
    importance_weighting : bool, default=True
        Weight the draws by their exact importance weights (consistent conditional mean);
        ``False`` takes their plain mean. Exact weights exist up to 100 modelled columns
        (``EXACT_LOGDET_MAX_FEATURES``); wider tables get the plain mean.
    refinement_steps : int, default=0
        Adam steps of per-row posterior refinement before drawing at ``transform`` (the
        paper's post-training completion, 4.2.2): each row's Gaussian posterior starts
        from the amortised one and is fitted on the ELBO with the flow fixed. Costs about
        ``refinement_steps`` training steps per batch; 0 uses the amortised posterior.
    objective : {"elbo", "iwae"}, default="iwae"
        Training bound: the ELBO or the importance-weighted bound.
    solver : {"auto", "newton", "newton_krylov", "fixed_point"}, default="auto"
        Solver of the equality constraint (see :func:`skivcnf.conditional.solve_constraint`).
    logdet : {"exact", "clade", "nlade"}, default="exact"
        Log-determinant estimator of the bound.
    max_epochs : int, default=100
        Passes over the training rows (early stopping usually ends training sooner).
    batch_size : int, default=64
        Rows per training step, and per batch at ``transform`` (memory grows with
        ``batch_size * n_draws * d^2``, never with the number of rows).
    learning_rate : float, default=2e-3
        Adam's step size for the flow and the inference network.
    validation_fraction : float, default=0.1
        Rows held out for early stopping (with at least 2 rows each side); ignored when
        ``early_stopping=False``.
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the rows (when that is at least 2 rows and 18
        remain) and stop when the median of their bounds has not improved for
        ``n_iter_no_change`` epochs, keeping the best weights (``history_.validation``).
        A ``ConvergenceWarning`` says when ``max_epochs`` ended training first. On small
        tables the held-out bound can peak before the imputations stop improving
        (breast cancer, one mask: RMSE 0.383 early-stopped, 0.349 after 60 epochs);
        ``early_stopping=False`` with a fixed ``max_epochs`` is then worth a try.
    n_iter_no_change : int, default=8
        Epochs without improvement of the held-out bound before stopping.
    missing_values : float, int or None, default=np.nan
        Placeholder of a missing entry (``np.nan`` is always treated as missing too).
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
    flow_ : ResidualFlow
    posterior_ : InferenceNetwork
    history_ : PosteriorFitHistory
    n_features_in_ : int
    feature_names_in_ : ndarray of str
    indicator_ : MissingIndicator or None

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
        "n_blocks": [Interval(Integral, 1, None, closed="left")],
        "hidden_layer_sizes": [tuple, list],
        "lipschitz_coeff": [Interval(Real, 0, 1, closed="neither")],
        "n_reflections": [Interval(Integral, 0, None, closed="left")],
        "n_draws": [Interval(Integral, 1, None, closed="left")],
        "n_train_draws": [Interval(Integral, 1, None, closed="left")],
        "importance_weighting": ["boolean"],
        "refinement_steps": [Interval(Integral, 0, None, closed="left")],
        "objective": [StrOptions({"elbo", "iwae"})],
        "solver": [StrOptions({"auto", "newton", "newton_krylov", "fixed_point"})],
        "logdet": [StrOptions({"exact", "clade", "nlade"})],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "early_stopping": ["boolean"],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "missing_values": [MissingValues()],
        "add_indicator": ["boolean"],
        "keep_empty_features": ["boolean"],
        "device": [str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(self, *, n_blocks=4, hidden_layer_sizes=(64, 64), lipschitz_coeff=0.9, n_reflections=0,
                 n_draws=64, n_train_draws=2, importance_weighting=True, refinement_steps=0,
                 objective="iwae", solver="auto",
                 logdet="exact", max_epochs=100, batch_size=64, learning_rate=2e-3, validation_fraction=0.1,
                 early_stopping=True, n_iter_no_change=8, missing_values=np.nan, add_indicator=False,
                 keep_empty_features=False, device="auto", random_state=None, verbose=0):
        self.n_blocks = n_blocks
        self.hidden_layer_sizes = hidden_layer_sizes
        self.lipschitz_coeff = lipschitz_coeff
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
        self.missing_values = missing_values
        self.add_indicator = add_indicator
        self.keep_empty_features = keep_empty_features
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ validation
    def _validate(self, X, reset):
        # NaN always means missing (whatever missing_values is); infinities are refused.
        return validate_data(self, X, reset=reset, dtype=FLOAT_DTYPES, copy=True, ensure_all_finite="allow-nan",
                             ensure_min_samples=2 if reset else 1)

    def _seed_from_random_state(self):
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
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
        X = self._validate(X, reset=True)
        mask = _missing_mask(X, self.missing_values)
        X[mask] = np.nan
        self.indicator_ = MissingIndicator(missing_values=np.nan, error_on_new=False).fit(X) \
            if self.add_indicator else None
        empty = mask.all(axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: handled below
            spread = np.nanstd(X, axis=0)
            center = np.nanmean(X, axis=0)
        constant = ~empty & (spread == 0)
        self.empty_features_ = empty
        self.constant_values_ = np.where(constant, center, 0.0)
        self.modelled_features_ = ~(empty | constant)
        self._device = _resolve_device(self.device)
        seed = self._seed_from_random_state()
        generator = torch.Generator(device=self._device).manual_seed(seed)
        cpu_generator = torch.Generator().manual_seed(seed)
        d = int(self.modelled_features_.sum())
        self.flow_, self.posterior_, self.history_ = None, None, None
        if d == 0:
            return self
        if self.logdet == "exact" and d > EXACT_LOGDET_MAX_FEATURES:
            raise ValueError(f"logdet='exact' supports up to {EXACT_LOGDET_MAX_FEATURES} modelled columns, got {d}; "
                             "use logdet='clade' (or 'nlade') with objective='elbo' for wider tables.")
        columns = X[:, self.modelled_features_]
        self.scaler_ = StandardScaler().fit(columns)
        z = torch.as_tensor(self.scaler_.transform(columns), dtype=torch.float32)
        hidden = torch.isnan(z)
        self.flow_ = ResidualFlow(d, n_blocks=self.n_blocks, hidden_features=tuple(self.hidden_layer_sizes),
                                  lipschitz_coeff=self.lipschitz_coeff, generator=cpu_generator)
        # (_build_flow rebuilds this architecture when unpickling.)
        self.posterior_ = InferenceNetwork(d, n_reflections=self.n_reflections, generator=cpu_generator)
        self.flow_.initialize(torch.where(hidden, 0.0, z))
        self.flow_.to(self._device)
        self.posterior_.to(self._device)
        z, hidden = z.to(self._device), hidden.to(self._device)
        n_val = int(self.validation_fraction * len(z))
        # Early stopping needs a held-out split of at least 2 rows and 18 rows to train on.
        val = self.validation_fraction if self.early_stopping and n_val >= 2 and len(z) - n_val >= 18 else 0.0
        self.history_ = fit_inference_network(
            self.flow_, z, hidden, self.posterior_, max_epochs=self.max_epochs, batch_size=self.batch_size,
            lr=self.learning_rate, n_samples=self.n_train_draws, logdet=self.logdet, solver=self.solver,
            objective=self.objective, train_flow=True, validation_fraction=val, monitor="bound",
            patience=self.n_iter_no_change, generator=generator, verbose=bool(self.verbose))
        self._seed = seed
        if val and not self.history_.converged:
            warnings.warn(
                f"Training stopped at max_epochs={self.max_epochs} while the held-out bound was still "
                f"improving (best epoch {self.history_.best_epoch + 1}); raise max_epochs for a better fit.",
                ConvergenceWarning, stacklevel=3)
        return self

    # ------------------------------------------------------------------ imputing
    def _draws(self, X, n_samples, generator):
        """Scaled rows, their mask and the conditional draws of the modelled columns."""
        columns = X[:, self.modelled_features_]
        z = torch.as_tensor(self.scaler_.transform(columns), dtype=torch.float32, device=self._device)
        hidden = torch.isnan(z)
        with torch.no_grad():
            params = self.posterior_(torch.where(hidden, 0.0, z), hidden)
        if self.refinement_steps:
            posterior = GaussianPosterior(len(z), z.shape[1], n_reflections=self.n_reflections, init=params)
            fit_posterior(self.flow_, torch.where(hidden, 0.0, z), hidden, posterior, n_samples=8,
                          max_steps=self.refinement_steps, solver=self.solver, generator=generator)
            with torch.no_grad():
                params = posterior()
        draws = sample_conditional(self.flow_, z, hidden, params, n_samples=n_samples, generator=generator,
                                   solver=self.solver)
        return z, hidden, draws

    def _complete(self, X, mask, modelled_values):
        """Fill the missing entries of ``X``; observed entries are left untouched."""
        out = X.copy()
        if modelled_values is not None:
            block = out[:, self.modelled_features_]
            m = mask[:, self.modelled_features_]
            block[m] = modelled_values[m]
            out[:, self.modelled_features_] = block
        const = ~self.modelled_features_ & ~self.empty_features_
        out[:, const] = np.where(mask[:, const], self.constant_values_[const], out[:, const])
        if self.keep_empty_features:
            out[:, self.empty_features_] = np.where(mask[:, self.empty_features_], 0.0,
                                                    out[:, self.empty_features_])
        else:
            out = out[:, ~self.empty_features_]
        return out

    def _prepare(self, X):
        check_is_fitted(self, "modelled_features_")
        X = self._validate(X, reset=False)
        mask = _missing_mask(X, self.missing_values)
        original = X.copy()
        X[mask] = np.nan
        return X, original, mask

    def transform(self, X):
        """Impute every missing entry of ``X``; observed entries are returned unchanged.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_imputed : ndarray of shape (n_samples, n_features_out)
        """
        X, original, mask = self._prepare(X)
        values = None
        if self.flow_ is not None and mask[:, self.modelled_features_].any():
            generator = torch.Generator(device=self._device).manual_seed(self._seed + 1)
            parts, n_failed = [], 0
            for start in range(0, len(X), self.batch_size):
                _, _, draws = self._draws(X[start:start + self.batch_size], self.n_draws, generator)
                point, _ = conditional_mean(draws, weighted=self._weighted(draws))
                # A row none of whose draws was solved gets the training mean (0 on this scale).
                failed = ~draws.converged.any(dim=0) | ~torch.isfinite(point).all(dim=1)
                n_failed += int(failed.sum())
                parts.append(torch.where(failed.unsqueeze(1), 0.0, point).cpu().double().numpy())
            _warn_unsolved(n_failed, len(X), "")
            values = self.scaler_.inverse_transform(np.concatenate(parts))
        out = self._complete(original, mask, values)
        return self._with_indicator(out, X)

    def _weighted(self, draws):
        """Importance weighting, where the draws carry exact weights (up to 100 modelled columns)."""
        return self.importance_weighting and draws.log_weight is not None

    def _with_indicator(self, out, X):
        if self.indicator_ is None:
            return out
        return np.hstack([out, self.indicator_.transform(X)])

    def sample_multiple_imputations(self, X, n_imputations=5):
        """Draw ``n_imputations`` completed copies of ``X`` from the fitted conditional.

        Each row's imputations are resampled by importance weight from ``max(n_draws,
        4 * n_imputations)`` posterior draws (sampling-importance-resampling), so they
        follow the flow's conditional rather than the variational posterior.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        n_imputations : int, default=5

        Returns
        -------
        imputations : ndarray of shape (n_imputations, n_samples, n_features_out) or DataFrame
            Observed entries are unchanged in every copy. Under
            ``set_output(transform="pandas")`` the copies are stacked in one DataFrame of
            ``n_imputations * n_samples`` rows indexed by ``("imputation", <X's index>)``;
            iterate with ``frame.groupby(level="imputation")``.
        """
        X_in = X
        if not isinstance(n_imputations, Integral) or n_imputations < 1:
            raise ValueError(f"n_imputations must be a positive integer, got {n_imputations!r}.")
        X, original, mask = self._prepare(X)
        n = len(X)
        d = int(self.modelled_features_.sum())
        values = np.zeros((n_imputations, n, d))
        if self.flow_ is not None and mask[:, self.modelled_features_].any():
            generator = torch.Generator(device=self._device).manual_seed(self._seed + 2)
            n_proposals = max(self.n_draws, 4 * n_imputations)
            n_failed = 0
            for start in range(0, n, self.batch_size):
                z, _, draws = self._draws(X[start:start + self.batch_size], n_proposals, generator)
                solved = draws.converged.any(dim=0)
                if self._weighted(draws):
                    weights, _ = self_normalized_weights(draws.log_weight)
                else:
                    weights = draws.converged.to(z.dtype)
                weights = torch.where(solved, weights, 1.0)  # rows with no solved draw: replaced below
                picks = torch.multinomial(weights.T, n_imputations, replacement=True, generator=generator)
                rows = torch.arange(len(z), device=z.device)
                chosen = draws.samples[picks.T, rows]  # (n_imputations, batch, d)
                chosen = torch.where(solved.unsqueeze(-1), chosen, 0.0)  # the training mean on this scale
                n_failed += int((~solved).sum())
                values[:, start:start + len(z)] = chosen.cpu().double().numpy()
            _warn_unsolved(n_failed, n, " in every imputation")
        outputs = []
        for k in range(n_imputations):
            modelled = self.scaler_.inverse_transform(values[k]) if self.flow_ is not None else None
            outputs.append(self._with_indicator(self._complete(original, mask, modelled), X))
        return self._stack_container(outputs, X_in)

    def _stack_container(self, outputs, X_in):
        """Stack completed copies in the container that ``transform`` returns (``set_output``)."""
        container = _get_output_config("transform", self)["dense"]
        if container == "default":
            return np.stack(outputs)
        frames = [_wrap_data_with_container("transform", out, X_in, self) for out in outputs]
        if container == "pandas":
            import pandas as pd

            return pd.concat(frames, keys=range(len(frames)), names=["imputation", *frames[0].index.names])
        import polars as pl

        return pl.concat([f.insert_column(0, pl.Series("imputation", [k] * len(f))) for k, f in enumerate(frames)])

    def score_samples(self, X):
        """Estimated log-likelihood of each row's observed entries, on the input's scale.

        The importance-weighted bound with ``n_draws`` draws: a lower bound on
        ``log p(x^O)`` in expectation, tight as ``n_draws`` grows. Constant and empty
        features contribute nothing.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        X, _, mask = self._prepare(X)
        if self.flow_ is None:
            return np.zeros(len(X))
        if int(self.modelled_features_.sum()) > EXACT_LOGDET_MAX_FEATURES:
            raise ValueError(f"score_samples needs exact importance weights, available up to "
                             f"{EXACT_LOGDET_MAX_FEATURES} modelled columns.")
        generator = torch.Generator(device=self._device).manual_seed(self._seed + 3)
        scores = []
        for start in range(0, len(X), self.batch_size):
            _, _, draws = self._draws(X[start:start + self.batch_size], self.n_draws, generator)
            scores.append(importance_weighted_bound(draws.log_weight).cpu().double().numpy())
        observed = ~mask[:, self.modelled_features_]
        # Change of variables from the standardised scale back to the input's.
        return np.concatenate(scores) - observed @ np.log(self.scaler_.scale_)

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
        """Output feature names (empty features dropped unless kept, indicators appended)."""
        check_is_fitted(self, "modelled_features_")
        names = _check_feature_names_in(self, input_features)
        out = names if self.keep_empty_features else names[~self.empty_features_]
        if self.indicator_ is not None:
            out = np.concatenate([out, self.indicator_.get_feature_names_out(names)])
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Write the fitted imputer to ``path`` as weights, arrays and settings; no pickle.

        The file holds only tensors, numbers and strings (``torch.save`` of plain data),
        so :meth:`load` reads it with ``torch.load(weights_only=True)``, which runs no
        code from the file, unlike unpickling.

        Parameters
        ----------
        path : str or os.PathLike
        """
        check_is_fitted(self, "modelled_features_")
        params = self.get_params()
        if not (params["random_state"] is None or isinstance(params["random_state"], Integral)):
            params["random_state"] = None  # a RandomState instance was only used to seed fit
        params["hidden_layer_sizes"] = list(params["hidden_layer_sizes"])
        fitted = {
            "n_features_in": int(self.n_features_in_),
            "feature_names_in": [str(n) for n in self.feature_names_in_] if hasattr(self, "feature_names_in_")
            else None,
            "seed": int(self._seed) if self.flow_ is not None else None,
            "indicator_features": self.indicator_.features_.tolist() if self.indicator_ is not None else None,
            "history": asdict(self.history_) if self.history_ is not None else None,
        }
        arrays = {"empty_features": self.empty_features_, "constant_values": self.constant_values_,
                  "modelled_features": self.modelled_features_}
        if self.flow_ is not None:
            arrays.update(scaler_mean=self.scaler_.mean_, scaler_scale=self.scaler_.scale_,
                          scaler_var=self.scaler_.var_,
                          scaler_n_samples_seen=np.broadcast_to(self.scaler_.n_samples_seen_,
                                                                self.scaler_.mean_.shape))
        payload = {
            "format": _SAVE_FORMAT,
            "version": _SAVE_VERSION,
            "params": json.dumps(params),
            "fitted": json.dumps(fitted),
            "arrays": {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()},
            "flow": {k: v.detach().cpu() for k, v in self.flow_.state_dict().items()} if self.flow_ is not None
            else None,
            "posterior": {k: v.detach().cpu() for k, v in self.posterior_.state_dict().items()}
            if self.posterior_ is not None else None,
        }
        torch.save(payload, os.fspath(path))

    @classmethod
    def load(cls, path):
        """Read an imputer written by :meth:`save` (safe: no code in the file is run).

        The imputer goes to its ``device`` setting, or to the CPU where that device is
        not available.

        Parameters
        ----------
        path : str or os.PathLike

        Returns
        -------
        IVCNFImputer
            Fitted; its transforms equal the saved imputer's.
        """
        payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != _SAVE_FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a file written by IVCNFImputer.save.")
        if payload["version"] > _SAVE_VERSION:
            raise ValueError(f"{os.fspath(path)!r} was written by a newer skivcnf (format version "
                             f"{payload['version']}); upgrade skivcnf to read it.")
        params = json.loads(payload["params"])
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
        if isinstance(params["missing_values"], float) and math.isnan(params["missing_values"]):
            params["missing_values"] = np.nan
        fitted = json.loads(payload["fitted"])
        arrays = {k: v.numpy() for k, v in payload["arrays"].items()}
        self = cls(**params)
        self.n_features_in_ = fitted["n_features_in"]
        if fitted["feature_names_in"] is not None:
            self.feature_names_in_ = np.asarray(fitted["feature_names_in"], dtype=object)
        self.empty_features_ = arrays["empty_features"].astype(bool)
        self.constant_values_ = arrays["constant_values"]
        self.modelled_features_ = arrays["modelled_features"].astype(bool)
        self.indicator_ = None
        if fitted["indicator_features"] is not None:
            self.indicator_ = self._rebuild_indicator(np.asarray(fitted["indicator_features"], dtype=int))
        self._device = self._available_device()
        self.flow_, self.posterior_, self.history_ = None, None, None
        if payload["flow"] is None:
            return self
        d = int(self.modelled_features_.sum())
        self.scaler_ = StandardScaler()
        self.scaler_.mean_, self.scaler_.scale_ = arrays["scaler_mean"], arrays["scaler_scale"]
        self.scaler_.var_, self.scaler_.n_samples_seen_ = arrays["scaler_var"], arrays["scaler_n_samples_seen"]
        self.scaler_.n_features_in_ = d
        self.flow_ = self._build_flow(d)
        self.flow_.load_state_dict(payload["flow"])
        self.posterior_ = InferenceNetwork(d, n_reflections=self.n_reflections)
        self.posterior_.load_state_dict(payload["posterior"])
        self.flow_.to(self._device)
        self.posterior_.to(self._device)
        self.history_ = PosteriorFitHistory(**fitted["history"]) if fitted["history"] else None
        self._seed = fitted["seed"]
        return self

    def _rebuild_indicator(self, features):
        """A fitted MissingIndicator flagging ``features`` (fitted, as in ``fit``, on an array)."""
        row = np.zeros((1, self.n_features_in_))
        row[0, features] = np.nan
        return MissingIndicator(missing_values=np.nan, error_on_new=False).fit(row)

    def _available_device(self):
        """The ``device`` setting, or the CPU where it names an absent GPU."""
        wanted = torch.device("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" \
            else torch.device(self.device)
        return wanted if wanted.type != "cuda" or torch.cuda.is_available() else torch.device("cpu")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.non_deterministic = False
        return tags

    def _build_flow(self, features):
        return ResidualFlow(features, n_blocks=self.n_blocks, hidden_features=tuple(self.hidden_layer_sizes),
                            lipschitz_coeff=self.lipschitz_coeff)

    def __getstate__(self):
        state = self.__dict__.copy()
        # Parametrised modules pickle only through their state_dict; tensors travel on the
        # CPU so that a fitted imputer unpickles on a machine without a GPU.
        if state.get("flow_") is not None:
            state["flow_"] = {k: v.detach().cpu() for k, v in self.flow_.state_dict().items()}
            state["posterior_"] = copy.deepcopy(self.posterior_).cpu()
        state.pop("_device", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "modelled_features_" not in state:
            return
        self._device = self._available_device()
        if isinstance(self.flow_, dict):
            flow = self._build_flow(int(self.modelled_features_.sum()))
            flow.load_state_dict(self.flow_)
            self.flow_ = flow.to(self._device)
            self.posterior_ = self.posterior_.to(self._device)
