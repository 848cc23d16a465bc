"""IVCNFImputer's conditional draws over batches of rows, its proper multiple imputation, and
:class:`DrawingMixin`, its public methods that draw besides ``transform``.

:func:`iter_draws` is the one batch loop of every method that draws; :func:`bootstrap_copies`
re-estimates the model on bootstrap resamples of the rows, so that multiple imputations
carry the uncertainty of the model's parameters as well as that of the missing values.
"""

import copy
import math

import numpy as np
import torch

from ._base import ImputationDraws, warn_unreliable, warn_unsolved
from ._utils import one_warning_per_kind
from .conditional import (
    SOBOL_MAX_DIMENSION,
    GaussianPosterior,
    RowNoise,
    conditional_mean,
    draw_weights,
    fit_inference_network,
    fit_posterior,
    importance_resample,
    masked_bound,
    reliable_draws,
    sample_conditional,
    shrunk_mean,
)
from .conditional.noise import distinct_keys
from .flows import EXACT_LOGDET_MAX_FEATURES

__all__ = ["ADAPTIVE", "ANTITHETIC", "BOOTSTRAP_EPOCHS", "GPU_DRAW_ROWS", "MAX_ROUNDS", "MC_TOLERANCE",
           "MIN_TRAINING_ROWS", "PROPOSALS_PER_IMPUTATION", "QUASI_RANDOM", "REFINEMENT_DRAWS", "RESAMPLING",
           "RESAMPLINGS", "SHRINK_TO_POSTERIOR", "DrawingMixin", "bootstrap_copies", "draw_copies", "draw_record",
           "iter_draws", "point_imputations", "resample_rows", "snap_categories"]

#: Draws per step of per-row refinement at ``transform`` (the paper's setting, 4.2.2).
REFINEMENT_DRAWS = 8
#: A row draws again (``n_draws``, then twice as many) while its point imputation's Monte Carlo
#: standard error exceeds this many column standard deviations, or its Pareto k-hat exceeds 0.7.
MC_TOLERANCE = 0.05
MAX_ROUNDS = 2
#: Point estimates draw in antithetic pairs where ``n_draws`` is even (docs/benchmarks.md, "Uncertainty").
ANTITHETIC = True
#: A point imputation shrinks each entry's weighted mean toward the plain mean of the posterior's draws
#: by the share of their gap that its Monte Carlo variance explains (:func:`~skivcnf.conditional.shrunk_mean`;
#: docs/benchmarks.md, "Uncertainty"); else the weighted mean.
SHRINK_TO_POSTERIOR = True
#: Point estimates draw randomised quasi-Monte Carlo noise (each row's shifted Sobol sequence;
#: docs/benchmarks.md, "Uncertainty"); copies, resampled by weight, keep independent proposals.
QUASI_RANDOM = True
#: A point estimate's extra rounds draw from a Gaussian matched to the row's weighted draws so far,
#: weighted against the mixture of its proposals (docs/benchmarks.md, "Uncertainty").
ADAPTIVE = True
#: Rows drawn together on a GPU at least: a row's draws do not depend on its batch, and 64 rows leave
#: a GPU idle between kernel launches (H200, digits 50% MCAR: 196 rows/s at 64 rows, 1,295 at 1,024;
#: docs/scaling.md, "GPU"). The CPU keeps ``batch_size``.
GPU_DRAW_ROWS = 1024
#: Rows per epoch of that training at most (as ``fit``'s, in :mod:`skivcnf.imputer`).
ROWS_PER_EPOCH = 4096
#: Training needs this many rows at least: ``fit`` holds rows out for early stopping only if this
#: many remain, and ``proper=True`` copies re-estimate the model on resamples of this many at least.
MIN_TRAINING_ROWS = 18
#: ``proper=False`` copies resample each row's from at least this many proposals per copy (and at
#: least ``n_draws``), so that copies rarely repeat a proposal.
PROPOSALS_PER_IMPUTATION = 4
#: Epochs of training from the fitted model on each bootstrap resample (proper multiple imputation;
#: docs/benchmarks.md, "Uncertainty").
BOOTSTRAP_EPOCHS = 5
#: How each proper copy resamples the rows it trains on (docs/benchmarks.md, "Uncertainty"):
#: ``"bootstrap"``, ``n`` rows with replacement; ``"half"``, ``n // 2`` distinct rows for twice the
#: epochs (half-sampling: for a smooth estimate the same variance as the bootstrap's, and no
#: duplicated row); ``"none"``, the rows themselves (what training on alone moves).
RESAMPLING = "bootstrap"
RESAMPLINGS = ("bootstrap", "half", "none")


def iter_draws(imputer, X, n_draws, keys, unsolved_consequence, reliable=True, modules=None, tally=None,
               mc_tolerance=MC_TOLERANCE):
    """Conditional draws of each batch of rows of ``X`` (NaN = missing), on the flow's scale,
    with the batch's :class:`~skivcnf.conditional.RowNoise` (for any further draws).

    Memory ``~ batch_size * n_draws`` (``GPU_DRAW_ROWS`` rows at least on a GPU). Row ``i``
    draws from its own random stream, keyed by ``keys[i]``, so its draws do not depend on its batch-mates. ``reliable``:
    :func:`~skivcnf.conditional.reliable_draws` (weights smoothed and bounded, more draws where
    needed; yields ``ReliableDraws``); else the raw ``ConditionalDraws``. ``modules``: the
    ``(flow, posterior)`` to draw from (the fitted ones by default). A row with no solved draw
    gets the training means (0 here) as every draw, one whose solved draws all left the bounds
    gets them clipped into the bounds; such rows, and those whose weights stayed uneven, are
    counted in one warning per kind at the end, or added to ``tally`` (a dict) when given.
    ``mc_tolerance``: see :func:`~skivcnf.conditional.reliable_draws` (``inf`` where no point
    estimate is taken: resampled copies need reliable weights, not a precise mean). Where a point
    estimate is taken, the draws are randomised quasi-Monte Carlo (``QUASI_RANDOM``), in antithetic
    pairs where ``n_draws`` is even, and a row's extra rounds adapt their proposal to its weighted
    draws (``ADAPTIVE``): a lower Monte Carlo error of the weighted mean; copies stay independent
    draws of the posterior.
    """
    flow, network = modules if modules is not None else (imputer.flow_, imputer.posterior_)
    device = imputer._device
    standardised, n_unsolved, n_uneven, n_clipped = imputer._layout().standardise(X), 0, 0, 0
    bounds = [torch.as_tensor(b, dtype=torch.float32, device=device) for b in imputer._draw_bounds()]
    antithetic = ANTITHETIC and math.isfinite(mc_tolerance) and n_draws % 2 == 0
    quasi = QUASI_RANDOM and math.isfinite(mc_tolerance) and standardised.shape[1] <= SOBOL_MAX_DIMENSION
    adapt = ADAPTIVE and math.isfinite(mc_tolerance)
    rows = imputer.batch_size if device.type == "cpu" else max(imputer.batch_size, GPU_DRAW_ROWS)
    for start in range(0, len(X), rows):
        noise = RowNoise(keys[start:start + rows])
        z = torch.as_tensor(standardised[start:start + rows], dtype=torch.float32, device=device)
        hidden = torch.isnan(z)
        with torch.no_grad():
            params = network(torch.where(hidden, 0.0, z), hidden)
        # The weights are fixed here: computed once for the batch's many flow calls, without their graph.
        with flow.cached_weights(differentiable=False):
            if imputer.refinement_steps:
                # A fixed number of steps (patience = steps): a batch-wide stopping rule would couple the rows.
                posterior = GaussianPosterior(len(z), z.shape[1], n_reflections=imputer.n_reflections, init=params)
                fit_posterior(flow, torch.where(hidden, 0.0, z), hidden, posterior, n_samples=REFINEMENT_DRAWS,
                              max_steps=imputer.refinement_steps, patience=imputer.refinement_steps,
                              solver=imputer.solver, generator=noise)
                with torch.no_grad():
                    params = posterior()
            if not reliable:
                draws = sample_conditional(flow, z, hidden, params, n_samples=n_draws, generator=noise,
                                           solver=imputer.solver)
            else:
                result = reliable_draws(flow, z, hidden, params, n_draws, noise,
                                        weighted=imputer.importance_weighting, solver=imputer.solver, bounds=bounds,
                                        mc_tolerance=mc_tolerance, max_rounds=MAX_ROUNDS, antithetic=antithetic,
                                        quasi=quasi, adapt=adapt)
        if not reliable:
            unsolved = ~draws.converged.any(dim=0)
            n_unsolved += int(unsolved.sum())
            yield draws._replace(samples=torch.where(unsolved.unsqueeze(-1), 0.0, draws.samples)), noise
            continue
        unsolved = ~result.usable  # no solved draw: no estimate
        n_unsolved, n_uneven = n_unsolved + int(unsolved.sum()), n_uneven + int(result.unreliable.sum())
        n_clipped += int(result.clipped.sum())
        samples = torch.where(unsolved.unsqueeze(-1), 0.0, result.draws.samples)
        yield result._replace(draws=result.draws._replace(samples=samples)), noise
    if tally is None:
        warn_unsolved(n_unsolved, len(X), unsolved_consequence)
        warn_unreliable(n_uneven, len(X), n_clipped=n_clipped)
    else:
        for key, count in (("unsolved", n_unsolved), ("uneven", n_uneven), ("clipped", n_clipped)):
            tally[key] = tally.get(key, 0) + count


def draw_record(imputer, X, table, mask, n_draws, keys):
    """The :class:`~skivcnf.ImputationDraws` of the rows of ``X`` (features, their ``table`` and
    ``mask`` from ``_validate_input``): raw first-round draws, completed as the output's columns."""
    n = len(X)
    if not imputer._has_hidden_modelled(mask):  # every draw is the row itself, solved without an iteration
        copy = imputer._columns_out(table, mask, None, X)
        return ImputationDraws(np.repeat(copy[None], n_draws, axis=0), np.full((n_draws, n), 1.0 / n_draws),
                               np.full(n, float(n_draws)), np.ones((n_draws, n), dtype=bool),
                               *np.zeros((2, n_draws, n), dtype=np.int64))
    batches = []
    for draws, _ in iter_draws(imputer, X, n_draws, keys, "their missing entries are the training means",
                               reliable=False):
        weights, ess = draw_weights(draws, weighted=imputer.importance_weighting and draws.log_weight is not None)
        batches.append((draws.samples, weights, ess, draws.converged, draws.n_iter, draws.method))
    samples, weights, ess, converged, n_iter, method = (torch.cat(parts, dim=-2 if parts[0].dim() == 3 else -1)
                                                         .cpu().numpy() for parts in zip(*batches, strict=True))
    values = np.stack([imputer._columns_out(table, mask, sample.astype(np.float64), X) for sample in samples])
    return ImputationDraws(values, weights.astype(np.float64), ess.astype(np.float64), converged, n_iter, method)


def point_imputations(imputer, result, n_draws):
    """Each row's point imputation (the flow's scale) from the :class:`~skivcnf.conditional.ReliableDraws`
    of :func:`iter_draws` (``n_draws`` a row, then point-estimate settings): a categorical block's is
    its categories' probabilities."""
    draws = snap_categories(imputer, result.draws)
    if not SHRINK_TO_POSTERIOR:
        return conditional_mean(draws)[0]
    # iter_draws draws antithetic pairs for point estimates exactly when n_draws is even
    return shrunk_mean(draws.samples, result.weights, result.first_weights, paired=ANTITHETIC and n_draws % 2 == 0)


def snap_categories(imputer, draws):
    """``draws`` with each categorical column's features put on the category they decode to
    (a one-hot block on its argmax, a 0/1 code rounded), so that their weighted mean is the
    categories' probabilities; other features are unchanged. On the flow's scale."""
    encoder = imputer._encoder
    if not encoder.category_blocks():
        return draws
    center = torch.as_tensor(imputer.center_, dtype=draws.samples.dtype, device=draws.samples.device)
    scale = torch.as_tensor(imputer.scale_, dtype=draws.samples.dtype, device=draws.samples.device)
    position = np.cumsum(imputer.modelled_features_) - 1  # feature -> its index among the modelled ones
    values = draws.samples * scale + center
    for block, n_categories in encoder.category_blocks():
        if not imputer.modelled_features_[block].all():
            continue  # a constant (single-category) column is not drawn
        columns = torch.as_tensor(position[block], device=values.device)
        part = values[..., columns]
        if len(columns) > 1:
            snapped = torch.nn.functional.one_hot(part.argmax(dim=-1), len(columns)).to(part.dtype)
        else:
            snapped = part.round().clamp(0, n_categories - 1)
        values[..., columns] = snapped
    return draws._replace(samples=(values - center) / scale)


def draw_copies(imputer, X, mask, n_imputations, proper, keys, min_rows):
    """``n_imputations`` copies of the missing features of ``X`` (its ``mask``), on the flow's scale
    (None each where nothing modelled is missing), row ``i`` drawing from ``keys[i]``: from bootstrap
    re-estimated models (``proper``, :func:`bootstrap_copies`), else resampled by importance weight
    from draws of the fitted model."""
    if not imputer._has_hidden_modelled(mask):
        return [None] * n_imputations
    if proper:
        return bootstrap_copies(imputer, X, n_imputations, keys, min_rows)
    n_proposals = max(imputer.n_draws, PROPOSALS_PER_IMPUTATION * n_imputations)
    batches = iter_draws(imputer, X, n_proposals, keys, "their missing entries are the training means in every "
                         "imputation", mc_tolerance=float("inf"))
    return np.concatenate([importance_resample(result.draws, n_imputations, noise).cpu().double().numpy()
                           for result, noise in batches], axis=1)


def resample_rows(rng, n_rows, resampling=None):
    """The rows (indices) one proper copy trains on, and for how many epochs, by ``resampling``
    (:data:`RESAMPLING` by default; see :data:`RESAMPLINGS`).

    Examples
    --------
    >>> import numpy as np
    >>> from skivcnf._drawing import resample_rows
    >>> rows, epochs = resample_rows(np.random.default_rng(0), 10, "half")
    >>> len(rows), len(set(rows.tolist())), epochs
    (5, 5, 10)
    """
    resampling = RESAMPLING if resampling is None else resampling
    if resampling == "bootstrap":
        return rng.integers(0, n_rows, n_rows), BOOTSTRAP_EPOCHS
    if resampling == "half":
        return rng.choice(n_rows, n_rows // 2, replace=False), 2 * BOOTSTRAP_EPOCHS
    if resampling == "none":
        return np.arange(n_rows), BOOTSTRAP_EPOCHS
    raise ValueError(f"RESAMPLING must be one of {RESAMPLINGS}, got {resampling!r}.")


def bootstrap_copies(imputer, X, n_imputations, keys, min_rows):
    """``n_imputations`` draws of the missing entries of ``X``, each from the fitted model trained on
    for ``BOOTSTRAP_EPOCHS`` epochs on its own bootstrap resample of the rows of ``X`` (or as
    :data:`RESAMPLING` says: :func:`resample_rows`).

    ``X`` needs ``min_rows`` rows at least. Returns an ndarray (n_imputations, n_samples,
    n_modelled) on the flow's scale. Warnings
    about rows without a usable draw, or with uneven weights, are summed over the copies.
    """
    if len(X) < min_rows:
        raise ValueError(f"proper=True re-estimates the model on bootstrap resamples of X's rows: X has {len(X)} "
                         f"rows, fewer than {min_rows}; pass proper=False.")
    streams = imputer._streams
    rng = np.random.default_rng(streams.seed("bootstrap"))
    z = torch.as_tensor(imputer._layout().standardise(X), dtype=torch.float32, device=imputer._device)
    hidden = torch.isnan(z)
    copies, tally = [], {}
    for k in range(n_imputations):
        flow, network = copy.deepcopy(imputer.flow_), copy.deepcopy(imputer.posterior_)
        rows, epochs = resample_rows(rng, len(z))
        rows = torch.as_tensor(rows, device=imputer._device)
        generator = torch.Generator(device=imputer._device).manual_seed(int(rng.integers(2 ** 63)))
        fit_inference_network(flow, z[rows], hidden[rows], network, max_epochs=epochs,
                              batch_size=imputer.batch_size, lr=imputer.learning_rate, n_samples=imputer.n_train_draws,
                              logdet=imputer.logdet, solver=imputer.solver, objective=imputer.objective,
                              train_flow=True, rows_per_epoch=ROWS_PER_EPOCH,
                              dequantisation=imputer._dequantisation_cells(imputer._device), generator=generator,
                              # The copies are drawn in this process: it does not wait for other ranks.
                              distributed=False)
        with torch.no_grad():
            copy_keys = keys ^ np.uint64(k)  # each copy its own stream (keys are hashes: any bijection will do)
            batches = iter_draws(imputer, X, imputer.n_draws, copy_keys, "", modules=(flow, network), tally=tally,
                                 mc_tolerance=float("inf"))
            copies.append(np.concatenate([importance_resample(result.draws, 1, noise)[0].cpu().double().numpy()
                                          for result, noise in batches]))
    warn_unsolved(tally.get("unsolved", 0), len(X) * n_imputations,
                  "their missing entries are the training means in those copies", unit="rows x copies")
    warn_unreliable(tally.get("uneven", 0), len(X) * n_imputations, unit="rows x copies",
                    n_clipped=tally.get("clipped", 0))
    return np.stack(copies)


class DrawingMixin:
    """The public methods that draw from a fitted flow imputer besides ``transform``: multiple
    imputation and the diagnostics (conditional draws, scores); the host provides the fitted
    flow, its settings and ``_row_keys``."""

    @one_warning_per_kind
    def sample_multiple_imputations(self, X, n_imputations=5, *, proper=True):
        """Draw ``n_imputations`` completed copies of ``X`` for multiple imputation.

        With ``proper=True`` (Rubin's "proper" imputations), copy ``k`` is drawn from the
        fitted model trained on for ``BOOTSTRAP_EPOCHS`` (5) more epochs on its own bootstrap
        resample of the rows of ``X``: the copies then carry the uncertainty of the model's
        parameters, which Rubin's rules need for intervals that cover (docs/benchmarks.md,
        "Uncertainty"); it costs ``5 * n_imputations`` epochs on ``X``. With ``proper=False``
        each row's copies are resampled by importance weight from ``max(n_draws,
        PROPOSALS_PER_IMPUTATION * n_imputations)`` (4 per copy) draws of the fitted model alone: fast, and
        a row's copies do not depend on the other rows of ``X``, but intervals are too narrow
        where the model's estimation error matters (small tables).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            With ``proper=True``, at least ``MIN_TRAINING_ROWS`` (18) rows.
        n_imputations : int, default=5
        proper : bool, default=True

        Returns
        -------
        imputations : ndarray of shape (n_imputations, n_samples, n_features_out) or DataFrame
            Observed entries are unchanged in every copy. Under
            ``set_output(transform="pandas")`` the copies are stacked in one DataFrame of
            ``n_imputations * n_samples`` rows indexed by ``("imputation", <X's index>)``;
            iterate with ``frame.groupby(level="imputation")``.
        """
        self._check_count("n_imputations", n_imputations)
        X_checked, table, mask = self._validate_input(X, reset=False)
        copies = draw_copies(self, X_checked, mask, n_imputations, proper, self._copy_keys(X_checked),
                             min_rows=MIN_TRAINING_ROWS)
        return self._stack_in_output_container([self._completed(table, mask, copy, X_checked) for copy in copies], X)

    def _copy_keys(self, X):
        """Each row's key for its copies: equal rows get independent copies (the k-th occurrence its own key)."""
        return distinct_keys(self._row_keys("multiple_imputations", X))

    @one_warning_per_kind
    def conditional_draws(self, X, n_draws=None):
        """Conditional draws of the rows of ``X``, with their raw weights and convergence.

        The first-round draws that :meth:`transform` weighs (before the guards of
        :func:`~skivcnf.conditional.reliable_draws`: bounds, smoothing, extra draws), for
        diagnostics (effective sample sizes, spread of the draws, unsolved draws).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        n_draws : int, optional
            Draws per row; ``n_draws`` of the estimator by default.

        Returns
        -------
        ImputationDraws
        """
        n_draws = self.n_draws if n_draws is None else n_draws
        self._check_count("n_draws", n_draws)
        X, table, mask = self._validate_input(X, reset=False)
        return draw_record(self, X, table, mask, n_draws, self._row_keys("conditional_draws", X))

    @one_warning_per_kind
    def score_samples(self, X):
        """Estimated log-likelihood of each row's observed entries, on the input's scale.

        The importance-weighted bound over ``n_draws`` draws (a lower bound on ``log p(x^O)``
        in expectation; constant and empty features add nothing; a discrete entry is scored at
        its cell's centre: a midpoint value, not a bound). Unsolved draws are left out as in
        training; a row with none solved scores NaN, with a ``ConstraintWarning``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        X, _, mask = self._validate_input(X, reset=False)
        if self.flow_ is None:
            return np.zeros(len(X))
        if int(self.modelled_features_.sum()) > EXACT_LOGDET_MAX_FEATURES:
            raise ValueError(f"score_samples needs exact importance weights, available up to "
                             f"{EXACT_LOGDET_MAX_FEATURES} modelled columns.")
        batches = iter_draws(self, X, self.n_draws, self._row_keys("score_samples", X), "their scores are NaN",
                             reliable=False)
        scores = np.concatenate([torch.where(draws.converged.any(dim=0), masked_bound(draws, "iwae")[0], float("nan"))
                                 .cpu().double().numpy() for draws, _ in batches])
        # Change of variables from the standardised scale back to the input's.
        return scores - self._layout().observed_log_scale(mask)
