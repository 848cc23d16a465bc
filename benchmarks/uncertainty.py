"""The measurements behind docs/benchmarks.md, "Uncertainty", one thread.

Run from the repository root::

    python -m benchmarks.uncertainty diagnose --repeats 4     # why Rubin's intervals under-cover
    python -m benchmarks.uncertainty weights                  # plain vs Pareto-smoothed weights, extra draws
    python -m benchmarks.uncertainty invariance               # a row's imputation alone and in its table
    python -m benchmarks.uncertainty longer                   # the flow's correlation trained longer
    python -m benchmarks.uncertainty mc_error                 # point imputations' Monte Carlo error, measured
    python -m benchmarks.uncertainty schedule                 # how long fit trains: early-stopping rules
    python -m benchmarks.uncertainty linear                   # the flow's correlation with a linear map
    python -m benchmarks.uncertainty resampling --table mixture --first 0 --repeats 40   # proper copies' resampling
    python -m benchmarks.uncertainty reference --table gaussian --repeats 200   # what a correct model's MI gets
    python -m benchmarks.uncertainty attenuation --first 0 --repeats 20   # the slope's bias against training length
    python -m benchmarks.uncertainty decompose --first 0 --repeats 40     # the bias: the fitted law or its draws?
    python -m benchmarks.uncertainty attenuation --settings-of variational --first 0 --repeats 40   # the law's bias
    python -m benchmarks.uncertainty entry_coverage --table gaussian   # per-entry coverage with today's code
    python -m benchmarks.uncertainty entry_width --table gaussian      # why one model's intervals are narrow

``diagnose``: the Rubin's-rules case of the suite (500-row AR(1) Gaussian, 6 columns, MAR 30%,
repeat ``r`` seeded as the suite's): one default fit, then the flow's correlations (20,000
draws of the flow) against the data's, the effective sample size of the draws, the variance
of 20 copies of each missing entry against the exact conditional's, and the slope pooled
from 20 copies of one model (``proper=False``), of bootstrap re-estimated models
(``proper=True``) and of the exact conditional. ``weights``: one default fit on breast cancer
(20% MCAR, mask seed 0), then point imputations with the weights plain (64 draws), smoothed
(64 draws), smoothed with extra draws (the default), and with equal weights where Pareto's
k-hat stays above 0.7: RMSE, seconds, Monte Carlo error and k-hat. ``invariance``: breast
cancer's first 100 rows imputed alone and within the table, and the table in batches of 7.
``longer``: repeat 2 of ``diagnose`` fitted by default, with ``n_iter_no_change=30`` and for
300 epochs without early stopping: the flow's correlation of neighbouring columns and the RMSE.
``mc_error``: one default fit on breast cancer, then 5 (``--replicates``) transforms that differ
only by their random streams, with independent draws, antithetic pairs, quasi-random draws, both,
and both with adaptive extra rounds: each entry's Monte Carlo error measured as the spread of the
replicates (column sds), against the error each row's draws estimate; also with 32 first-round
draws, a third round of extra draws and per-row refinement of the posterior (``--settings``: some
of them only). ``schedule``: the early-stopping rule of ``fit`` (patience 8, 12, 20 epochs, with and
without 200 steps at least) on the grid's small tables (MAR 30%, 3 seeds) and Rubin repeats 2 and 3:
seconds, epochs, RMSE, the flow's correlation.
``linear``: Rubin repeats 0-3 fitted without the flow's linear map (``linear_layer=False``), with it
at ``step_scale`` 1 and at the default 10: epochs, RMSE against the oracle's, the flow's correlation.
``resampling``: Rubin's-rules case of the suite (``--table gaussian`` or ``mixture``, repeats
``--first`` to ``--first + --repeats - 1`` seeded as the suite's), one default fit per repeat, then
``--copies`` (20) copies from one model and proper copies under each of
:data:`skivcnf._drawing.RESAMPLINGS`: the pooled slope and its 90% interval, appended per repeat to
``resampling_<table>.jsonl`` (a rerun skips stored repeats), then the report: coverage, bias, and
each variant's shift from one model's estimate paired over repeats. ``reference``: the same
cases (repeats 0 to ``--repeats - 1``), imputed without a flow by the exact conditional law
(the true parameters: no estimation error) and by proper multiple imputation under a
multivariate normal model (Schafer's data augmentation, Jeffreys prior: the correct model on
the Gaussian table, with its parameters' uncertainty); coverage and bias of the pooled slope.
``attenuation``: Gaussian Rubin repeats ``--first`` to ``--first + --repeats - 1``, fitted with
each of :data:`ATTENUATION_SETTINGS`; 20 copies from one model each (``proper=False``: the
proper copies' estimate is one model's, paired over 200 repeats), the pooled slope, epochs and
seconds, appended per repeat; the report pairs every setting with the default and with the
normal model of ``reference`` where its records exist; each setting also records the slope of its
flow's own law (see ``decompose``). ``--settings-of variational`` fits :data:`VARIATIONAL_SETTINGS`
instead (``variational_gaussian.jsonl``). ``decompose``: the same repeats, one default
fit each; the slope of the fitted flow's own law (50,000 unconditional draws), and the pooled slope of
20 one-model copies resampled from 4 proposals a copy (the default) and from 32: each paired with the
complete data's slope and with the proper normal model's, so that the bias splits into the fitted
law's and the drawing's. ``entry_coverage``: the accuracy grid's coverage cells of ``--table``
(every mechanism, mask seeds 0-2) re-measured with today's code, as the suite's ``accuracy``
section measures them (:func:`benchmarks.sections.accuracy`: a default fit, 50 one-model copies,
20 proper copies, 1,000 draws of the exact conditional law), appended per case to
``entry_coverage_<table>.jsonl`` without touching the suite's records (whose timings are the
grid's); the report sets each cell against an exact sampler's expected coverage with as many draws.
``entry_width``: the MAR 30% cell of ``--table`` (mask seeds 0-2) fitted under each of
:data:`WIDTH_SETTINGS`; per fit, the coverage and mean width of 50 one-model copies resampled from 4
and from 16 proposals a copy, the point imputation's RMSE, and the flow's marginal standard
deviations against the data's (geometric mean of the ratios, 50,000 unconditional draws).
"""

import argparse
import contextlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import skivcnf._drawing as drawing
from skivcnf import IVCNFImputer
from skivcnf.conditional import conditional_mean, monte_carlo_error, pareto_smoothed_log_weights
from skivcnf.pooling import pool_estimates

from . import data, masks
from .measure import exact_sampler_coverage, interval_coverage, rmse
from .report import _standard_error
from .sections import accuracy, ols, rubin_case

OUT = Path(__file__).parent / "results" / "uncertainty"


def _records(path):
    """The JSON lines stored in ``path`` (none if it does not exist yet): a study resumes after them."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _pending_cases(path, table, repeats):
    """The Rubin cases of ``repeats`` not yet stored in ``path``: ``(repeat, X, X_missing, truth, law)``."""
    done = {line["repeat"] for line in _records(path)}
    for repeat in repeats:
        if repeat not in done:
            X, mask, truth, law = rubin_case(table, repeat)
            yield repeat, X, np.where(mask, np.nan, X), truth, law


def _normal_model_estimates(reference_path):
    """Each repeat's slope from proper normal-model copies, stored by ``reference``."""
    return {line["repeat"]: line["normal model (proper)"]["estimate"] for line in _records(reference_path)}


def _append(path, line):
    """Store one repeat's record (a rerun resumes after it) and print it."""
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line), flush=True)


def _slope(table):
    coef, se, dof = ols(table[:, 1:3], table[:, 0])
    return coef[1], se[1], dof


def _pooled(copies):
    fits = [_slope(c) for c in copies]
    pooled = pool_estimates([f[0] for f in fits], [f[1] ** 2 for f in fits], dof_complete=fits[0][2], level=0.9)
    return {"estimate": float(pooled.estimate), "low": float(pooled.low), "high": float(pooled.high),
            "between": float(pooled.between)}


def diagnose(repeat):
    ds = data.correlated_gaussian(500, 6, seed=10_000 + repeat)
    X = ds.X
    mask = masks.make_mask("MAR 30%", X, 10_000 + repeat)
    X_missing = np.where(mask, np.nan, X)
    imputer = IVCNFImputer(random_state=repeat).fit(X_missing)
    with torch.no_grad():
        flow_rows = imputer.flow_.sample(20_000, torch.Generator().manual_seed(0)).double().numpy()
    flow_corr, data_corr = np.corrcoef(flow_rows.T), np.corrcoef(X.T)
    draws = imputer.conditional_draws(X_missing)
    copies = imputer.sample_multiple_imputations(X_missing, 20, proper=False)
    oracle = ds.law.oracle_sample(X_missing, 20, np.random.default_rng(repeat))
    start = time.perf_counter()
    proper = imputer.sample_multiple_imputations(X_missing, 20)
    proper_seconds = time.perf_counter() - start
    rows = mask.any(axis=1)
    return {"repeat": repeat, "epochs": len(imputer.history_.train_loss), "best_epoch": imputer.history_.best_epoch,
            "flow_adjacent_correlation": float(np.mean(np.diag(flow_corr, 1))),
            "data_adjacent_correlation": float(np.mean(np.diag(data_corr, 1))),
            "ess_median": float(np.median(draws.ess[rows])), "n_draws": int(imputer.n_draws),
            "copy_variance_over_exact": float(np.median(copies.var(axis=0)[mask] / oracle.var(axis=0)[mask])),
            "complete_data_slope": float(_slope(X)[0]), "one_model": _pooled(copies), "proper": _pooled(proper),
            "exact": _pooled(oracle), "proper_seconds": round(proper_seconds, 1)}


def _breast_cancer_fit():
    """Breast cancer with 20% MCAR (mask seed 0), its mask, the incomplete table, column sds, a default fit."""
    ds = data.load("breast_cancer")
    mask = masks.make_mask("MCAR 20%", ds.X, 0)
    X_missing = np.where(mask, np.nan, ds.X)
    sd = np.nanstd(X_missing, axis=0)
    imputer = IVCNFImputer(random_state=0).fit(X_missing)
    return ds, mask, X_missing, sd, imputer


def weights():
    ds, mask, X_missing, sd, imputer = _breast_cancer_fit()
    lines = []
    start = time.perf_counter()
    raw = imputer.conditional_draws(X_missing)
    plain = np.einsum("kn,knp->np", raw.weights, raw.values)
    se = np.sqrt(np.einsum("kn,knp->np", raw.weights ** 2, (raw.values - plain) ** 2)) / sd
    _, k_hat = pareto_smoothed_log_weights(torch.log(torch.as_tensor(raw.weights)))
    rows = mask.any(axis=1)
    lines.append({"weights": "plain, 64 draws", "seconds": round(time.perf_counter() - start, 1),
                  "rmse": float(np.sqrt(np.mean(((plain - ds.X) / sd)[mask] ** 2))),
                  "entry_mc_error_p50_p90_p99": np.quantile(se[mask], [0.5, 0.9, 0.99]).round(3).tolist(),
                  "k_hat_p50_p90_p99": np.quantile(k_hat.numpy()[rows], [0.5, 0.9, 0.99]).round(2).tolist(),
                  "share_k_hat_above_0.7": float(np.mean(k_hat.numpy()[rows] > 0.7))})
    settings = [("smoothed, 64 draws", 0, False), ("smoothed, extra draws (default)", drawing.MAX_ROUNDS, False),
                ("smoothed, extra draws, equal weights where k-hat > 0.7", drawing.MAX_ROUNDS, True)]
    default_rounds = drawing.MAX_ROUNDS
    for name, rounds, equal_fallback in settings:
        drawing.MAX_ROUNDS = rounds
        start = time.perf_counter()
        features, table, validated_mask = imputer._validate_input(X_missing, reset=False)
        keys = imputer._row_keys("transform", features)
        results = list(drawing.iter_draws(imputer, features, imputer.n_draws, keys, "-"))
        points, errors, start_row = [], [], 0
        hidden_all = torch.as_tensor(np.isnan(imputer._layout().standardise(X_missing)))
        for result, _ in results:
            error = result.mc_error
            if equal_fallback:
                usable = result.weights > 0
                equal = usable / usable.sum(dim=0).clamp_min(1)
                weights_used = torch.where(result.unreliable, equal, result.weights)
                hidden = hidden_all[start_row:start_row + len(error)]
                error = monte_carlo_error(result.draws.samples, weights_used, hidden)
                result = result._replace(draws=result.draws._replace(log_weight=torch.log(weights_used)))
            start_row += len(error)
            points.append(conditional_mean(result.draws)[0].double().numpy())
            errors.append(error.numpy())
        seconds = time.perf_counter() - start
        out = imputer._completed(table, validated_mask, np.concatenate(points), features)
        error = np.concatenate(errors)
        lines.append({"weights": name, "seconds": round(seconds, 1),
                      "rmse": float(np.sqrt(np.mean(((out - ds.X) / sd)[mask] ** 2))),
                      "row_mc_error_p50_p90_p99": np.quantile(error[rows], [0.5, 0.9, 0.99]).round(3).tolist(),
                      "mean_draws": float(np.mean(np.concatenate([r.n_draws.numpy() for r, _ in results])[rows])),
                      "rows_above_0.7": int(sum(int(r.unreliable.sum()) for r, _ in results))})
    drawing.MAX_ROUNDS = default_rounds
    return lines


#: ``mc_error``'s settings: name -> (antithetic, quasi-random, adaptive rounds, rounds of extra draws,
#: refinement steps, first-round draws); ``None`` takes the package's default.
MC_SETTINGS = {
    "independent draws": (False, False, False, None, 0, 64),
    "antithetic pairs": (True, False, False, None, 0, 64),
    "quasi-random": (False, True, False, None, 0, 64),
    "quasi-random, antithetic pairs": (True, True, False, None, 0, 64),
    "quasi-random, antithetic pairs, n_draws=32": (True, True, False, None, 0, 32),
    "quasi-random, antithetic pairs, 3 rounds": (True, True, False, 3, 0, 64),
    "quasi-random, antithetic pairs, refinement_steps=10": (True, True, False, None, 10, 64),
    "quasi-random, antithetic pairs, adaptive rounds": (True, True, True, None, 0, 64),
    "quasi-random, antithetic pairs, adaptive rounds, n_draws=32": (True, True, True, None, 0, 32),
    "quasi-random, antithetic pairs, adaptive rounds, n_draws=32, 3 rounds": (True, True, True, 3, 0, 32),
}


def mc_error(replicates=5, names=None):
    """Each point imputation's Monte Carlo error measured, not estimated: the spread of ``replicates``
    transforms of one fit that differ only by their random streams (``names``: of ``MC_SETTINGS``)."""
    ds, mask, X_missing, sd, imputer = _breast_cancer_fit()
    features, table, validated_mask = imputer._validate_input(X_missing, reset=False)
    rows = mask.any(axis=1)
    lines = []
    defaults = drawing.ANTITHETIC, drawing.QUASI_RANDOM, drawing.ADAPTIVE, drawing.MAX_ROUNDS
    for name in names or MC_SETTINGS:
        antithetic, quasi, adaptive, rounds, refinement, first = MC_SETTINGS[name]
        rounds = defaults[3] if rounds is None else rounds
        drawing.ANTITHETIC, drawing.QUASI_RANDOM, drawing.ADAPTIVE, drawing.MAX_ROUNDS = (antithetic, quasi, adaptive,
                                                                                           rounds)
        imputer.set_params(refinement_steps=refinement, n_draws=first)
        outs, estimated, seconds, n_draws = [], [], 0.0, []
        for r in range(replicates):
            keys = imputer._row_keys("transform", features) ^ np.uint64(r)
            start = time.perf_counter()
            results = list(drawing.iter_draws(imputer, features, imputer.n_draws, keys, "-"))
            points = np.concatenate([conditional_mean(result.draws)[0].double().numpy() for result, _ in results])
            seconds += time.perf_counter() - start
            outs.append(imputer._completed(table, validated_mask, points, features))
            estimated.append(np.concatenate([result.mc_error.numpy() for result, _ in results]))
            n_draws.append(np.concatenate([result.n_draws.numpy() for result, _ in results]))
        outs = np.stack(outs)
        measured = (outs.std(axis=0, ddof=1) / sd)[mask]
        line = {"draws": name, "default": (antithetic, quasi, adaptive, rounds, refinement, first) ==
                (*defaults, 0, 64), "rounds": rounds, "n_draws": first, "replicates": replicates,
                "seconds_per_transform": round(seconds / replicates, 1),
                "rmse": float(np.mean([np.sqrt(np.mean(((o - ds.X) / sd)[mask] ** 2)) for o in outs])),
                "measured_entry_error_p50_p90_p99": np.quantile(measured, [0.5, 0.9, 0.99]).round(4).tolist(),
                "estimated_row_error_p50_p90_p99":
                    np.quantile(np.concatenate(estimated)[np.tile(rows, replicates)], [0.5, 0.9, 0.99])
                    .round(4).tolist(),
                "mean_draws": float(np.mean(np.concatenate(n_draws)[np.tile(rows, replicates)]))}
        if replicates >= 10:  # the spread of 5 replicates alone, as the first runs measured it
            line["measured_5_entry_error_p50_p90_p99"] = np.quantile(
                (outs[:5].std(axis=0, ddof=1) / sd)[mask], [0.5, 0.9, 0.99]).round(4).tolist()
        lines.append(line)
        print(json.dumps(line), flush=True)
    drawing.ANTITHETIC, drawing.QUASI_RANDOM, drawing.ADAPTIVE, drawing.MAX_ROUNDS = defaults
    imputer.set_params(refinement_steps=0, n_draws=64)
    return lines


SCHEDULES = {"patience 8 (before)": {"min_steps": 0}, "patience 8, 200 steps at least (default)": {},
             "patience 12": {"min_steps": 0, "n_iter_no_change": 12},
             "patience 12, 200 steps at least": {"n_iter_no_change": 12},
             "patience 20": {"min_steps": 0, "n_iter_no_change": 20}}


def schedule():
    """How long fit trains: the early-stopping rule on the grid's small tables (MAR 30%, 3 seeds) and
    two Rubin repeats, with the accuracy and the flow's correlation of neighbouring columns."""
    import skivcnf.imputer as imputer_module

    default_steps = imputer_module.MIN_TRAINING_STEPS
    cases = [("rubin", r) for r in (2, 3)] + [(t, s) for t in ("wine", "diabetes", "gaussian", "mixture")
                                                for s in range(3)]
    lines = []
    for name, settings in SCHEDULES.items():
        settings = dict(settings)
        imputer_module.MIN_TRAINING_STEPS = settings.pop("min_steps", default_steps)
        for table, seed in cases:
            if table == "rubin":
                ds, mask_seed = data.correlated_gaussian(500, 6, seed=10_000 + seed), 10_000 + seed
            else:
                ds, mask_seed = data.load(table), seed
            mask = masks.make_mask("MAR 30%", ds.X, mask_seed)
            X_missing = np.where(mask, np.nan, ds.X)
            start = time.perf_counter()
            imputer = IVCNFImputer(random_state=seed, **settings).fit(X_missing)
            out = imputer.transform(X_missing)
            line = {"schedule": name, "table": table, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
                    "epochs": len(imputer.history_.train_loss), "best_epoch": imputer.history_.best_epoch,
                    "rmse": float(np.sqrt(np.mean((out - ds.X)[mask] ** 2)))}
            if table in ("rubin", "gaussian"):
                with torch.no_grad():
                    flow_rows = imputer.flow_.sample(20_000, torch.Generator().manual_seed(0)).double().numpy()
                line["flow_adjacent_correlation"] = float(np.mean(np.diag(np.corrcoef(flow_rows.T), 1)))
                line["data_adjacent_correlation"] = float(np.mean(np.diag(np.corrcoef(ds.X.T), 1)))
            lines.append(line)
            print(json.dumps(line), flush=True)
    imputer_module.MIN_TRAINING_STEPS = default_steps
    return lines


def invariance():
    ds, mask, X_missing, sd, imputer = _breast_cancer_fit()
    full = imputer.transform(X_missing)
    alone = imputer.transform(X_missing[:100])
    batches = imputer.set_params(batch_size=7).transform(X_missing)
    return {"first_100_alone_max_sd": float(np.max(np.abs(alone - full[:100]) / sd)),
            "batches_of_7_max_sd": float(np.max(np.abs(batches - full) / sd))}


def longer(repeat=2):
    ds = data.correlated_gaussian(500, 6, seed=10_000 + repeat)
    mask = masks.make_mask("MAR 30%", ds.X, 10_000 + repeat)
    X_missing = np.where(mask, np.nan, ds.X)
    lines = []
    for settings in ({}, {"n_iter_no_change": 30, "max_epochs": 400}, {"early_stopping": False, "max_epochs": 300}):
        start = time.perf_counter()
        imputer = IVCNFImputer(random_state=repeat, **settings).fit(X_missing)
        out = imputer.transform(X_missing)
        with torch.no_grad():
            flow_rows = imputer.flow_.sample(20_000, torch.Generator().manual_seed(0)).double().numpy()
        lines.append({"settings": settings, "epochs": len(imputer.history_.train_loss),
                      "seconds": round(time.perf_counter() - start, 1),
                      "flow_adjacent_correlation": float(np.mean(np.diag(np.corrcoef(flow_rows.T), 1))),
                      "data_adjacent_correlation": float(np.mean(np.diag(np.corrcoef(ds.X.T), 1))),
                      "rmse": float(np.sqrt(np.mean((out - ds.X)[mask] ** 2))),
                      "oracle_rmse": float(np.sqrt(np.mean((ds.law.oracle_mean(X_missing) - ds.X)[mask] ** 2)))})
    return lines


def linear(repeats=4):
    import skivcnf.flows.linear as linear_module

    default_scale = linear_module.STEP_SCALE
    lines = []
    for name, settings, scale in (("no linear map", {"linear_layer": False}, default_scale),
                                  ("linear map, step_scale 1", {}, 1.0),
                                  ("linear map, step_scale 10 (default)", {}, default_scale)):
        linear_module.STEP_SCALE = scale
        for repeat in range(repeats):
            ds = data.correlated_gaussian(500, 6, seed=10_000 + repeat)
            mask = masks.make_mask("MAR 30%", ds.X, 10_000 + repeat)
            X_missing = np.where(mask, np.nan, ds.X)
            start = time.perf_counter()
            imputer = IVCNFImputer(random_state=repeat, **settings).fit(X_missing)
            out = imputer.transform(X_missing)
            with torch.no_grad():
                flow_rows = imputer.flow_.sample(20_000, torch.Generator().manual_seed(0)).double().numpy()
            line = {"setting": name, "repeat": repeat, "seconds": round(time.perf_counter() - start, 1),
                    "epochs": len(imputer.history_.train_loss),
                    "flow_adjacent_correlation": float(np.mean(np.diag(np.corrcoef(flow_rows.T), 1))),
                    "data_adjacent_correlation": float(np.mean(np.diag(np.corrcoef(ds.X.T), 1))),
                    "rmse": float(np.sqrt(np.mean((out - ds.X)[mask] ** 2))),
                    "oracle_rmse": float(np.sqrt(np.mean((ds.law.oracle_mean(X_missing) - ds.X)[mask] ** 2)))}
            lines.append(line)
            print(json.dumps(line), flush=True)
    linear_module.STEP_SCALE = default_scale
    return lines


def resampling(table, first, repeats, copies, path):
    """Append a record per repeat not yet in ``path``: pooled slopes of one model's and of each resampling's copies."""
    default = drawing.RESAMPLING
    for repeat, _, X_missing, truth, _ in _pending_cases(path, table, range(first, first + repeats)):
        imputer = IVCNFImputer(random_state=repeat).fit(X_missing)  # the suite's model (benchmarks.peers)
        line = {"table": table, "repeat": repeat, "truth": truth, "copies": copies,
                "one model": _pooled(imputer.sample_multiple_imputations(X_missing, copies, proper=False))}
        try:
            for name in drawing.RESAMPLINGS:
                drawing.RESAMPLING = name
                start = time.perf_counter()
                line[name] = _pooled(imputer.sample_multiple_imputations(X_missing, copies))
                line[name]["seconds"] = round(time.perf_counter() - start, 1)
        finally:
            drawing.RESAMPLING = default
        _append(path, line)
    return resampling_report(path)


def gaussian_data_augmentation(X_missing, m, rng, burn_in=200, thin=20):
    """``m`` proper imputations of ``X_missing`` under a multivariate normal model: Schafer's (1997)
    data augmentation, alternating draws of the missing entries given the parameters and of the
    parameters (mean, covariance) from their posterior given the completed table, under the
    Jeffreys prior; an imputation every ``thin`` iterations after ``burn_in``."""
    from scipy.stats import invwishart

    n = len(X_missing)
    hidden = np.isnan(X_missing)
    patterns, index = np.unique(hidden, axis=0, return_inverse=True)
    groups = [(np.flatnonzero(index.ravel() == k), h) for k, h in enumerate(patterns) if h.any()]
    completed = np.where(hidden, np.nanmean(X_missing, axis=0), X_missing)
    copies = []
    for iteration in range(burn_in + m * thin):
        mean = completed.mean(axis=0)
        centred = completed - mean
        cov = invwishart.rvs(df=n - 1, scale=centred.T @ centred, random_state=rng)
        mean = rng.multivariate_normal(mean, cov / n)
        law = data.GaussianLaw(mean, cov)
        for rows, h in groups:
            cond_mean, cond_cov = law.conditional(completed[rows], h)
            chol = np.linalg.cholesky(cond_cov)
            completed[np.ix_(rows, np.flatnonzero(h))] = cond_mean + rng.standard_normal(cond_mean.shape) @ chol.T
        if iteration >= burn_in and (iteration - burn_in + 1) % thin == 0:
            copies.append(completed.copy())
    return np.stack(copies)


def reference(table, repeats, copies, path):
    """Append a record per repeat not yet in ``path``: the slope pooled from the exact conditional's
    copies and from proper normal-model copies."""
    for repeat, _, X_missing, truth, law in _pending_cases(path, table, range(repeats)):
        rng = np.random.default_rng(repeat)
        _append(path, {"table": table, "repeat": repeat, "truth": truth, "copies": copies,
                       "exact conditional": _pooled(law.oracle_sample(X_missing, copies, rng)),
                       "normal model (proper)": _pooled(gaussian_data_augmentation(X_missing, copies, rng))})
    lines = _records(path)
    return _coverage_table(lines, ("exact conditional", "normal model (proper)"))


#: Training settings of ``attenuation``: does the flow's slope lose its attenuation when trained longer?
ATTENUATION_SETTINGS = {"default": {}, "patience 24": {"n_iter_no_change": 24},
                        "300 epochs": {"early_stopping": False, "max_epochs": 300}}
#: Settings of ``attenuation --settings-of variational``: is the fitted law's attenuation the variational
#: bound's (a tighter bound with more training draws, a posterior with correlations) or the Lipschitz bound's?
VARIATIONAL_SETTINGS = {"default": {}, "8 training draws": {"n_train_draws": 8},
                        "3 reflections": {"n_reflections": 3}, "Lipschitz 0.97": {"lipschitz_coeff": 0.97}}
SETTINGS = {"attenuation": ATTENUATION_SETTINGS, "variational": VARIATIONAL_SETTINGS}


def attenuation(first, repeats, copies, path, settings=None):
    """Append a record per repeat not yet in ``path``: under each training setting (``ATTENUATION_SETTINGS``
    by default), the one-model pooled slope and the slope of the fitted flow's own law."""
    settings = ATTENUATION_SETTINGS if settings is None else settings
    for repeat, _, X_missing, truth, _ in _pending_cases(path, "gaussian", range(first, first + repeats)):
        line = {"table": "gaussian", "repeat": repeat, "truth": truth, "copies": copies}
        for name, kwargs in settings.items():
            start = time.perf_counter()
            imputer = IVCNFImputer(random_state=repeat, **kwargs).fit(X_missing)
            line[name] = _pooled(imputer.sample_multiple_imputations(X_missing, copies, proper=False))
            line[name].update(seconds=round(time.perf_counter() - start, 1), epochs=len(imputer.history_.train_loss),
                              law=_model_slope(imputer, FLOW_ROWS, repeat))
        _append(path, line)
    return attenuation_report(path, settings)


def attenuation_report(path, settings=None, reference_path=None):
    """Coverage and bias per training setting; each setting's paired shift from the default and from the
    proper normal model's estimate (``reference_gaussian.jsonl`` beside ``path``), and that of its flow's
    own law where stored."""
    lines = _records(path)
    names = tuple(ATTENUATION_SETTINGS if settings is None else settings)
    text = _coverage_table(lines, names, one="default")
    reference_path = reference_path or path.with_name("reference_gaussian.jsonl")
    if reference_path.exists():
        normal = _normal_model_estimates(reference_path)
        paired = [line for line in lines if line["repeat"] in normal]
        for name in names:
            shift = np.array([line[name]["estimate"] - normal[line["repeat"]] for line in paired])
            text += (f"\n{name} minus the proper normal model, paired over {len(shift)} repeats: "
                     f"{shift.mean():+.4f} ± {_standard_error(shift):.4f}")
            with_law = [line for line in paired if "law" in line[name]]
            if with_law:
                law = np.array([line[name]["law"] - normal[line["repeat"]] for line in with_law])
                text += (f"; its flow's law: {law.mean():+.4f} ± {_standard_error(law):.4f} "
                         f"over {len(law)}")
    return text


#: Proposals per copy that ``decompose`` sets against the default's ``PROPOSALS_PER_IMPUTATION``.
MANY_PROPOSALS = 32
#: Rows the fitted flow draws in ``decompose``, for its own (population) slope.
FLOW_ROWS = 50_000


def _flow_law(imputer, rows, seed):
    """``rows`` unconditional draws of the fitted flow, on the data's scale."""
    with torch.no_grad():
        y = imputer.flow_.sample(rows, generator=torch.Generator().manual_seed(seed))
    return imputer._layout().unstandardise(y.double().cpu().numpy())


def _model_slope(imputer, rows, seed):
    """The least-squares slope of the fitted flow's own law (:func:`_flow_law`)."""
    return float(_slope(_flow_law(imputer, rows, seed))[0])


@contextlib.contextmanager
def _proposals_per_copy(proposals):
    """``proper=False`` copies resample from ``proposals`` a copy inside the block (the module constant)."""
    default, drawing.PROPOSALS_PER_IMPUTATION = drawing.PROPOSALS_PER_IMPUTATION, proposals
    try:
        yield
    finally:
        drawing.PROPOSALS_PER_IMPUTATION = default


def decompose(first, repeats, copies, path):
    """Append a record per repeat not yet in ``path``: where the one-model slope's bias arises, the
    fitted law or the drawing from it."""
    for repeat, X, X_missing, truth, _ in _pending_cases(path, "gaussian", range(first, first + repeats)):
        start = time.perf_counter()
        imputer = IVCNFImputer(random_state=repeat).fit(X_missing)
        line = {"table": "gaussian", "repeat": repeat, "truth": truth, "copies": copies,
                "fit seconds": round(time.perf_counter() - start, 1),
                "complete data": float(_slope(X)[0]), "flow's law": _model_slope(imputer, FLOW_ROWS, repeat)}
        for proposals in (drawing.PROPOSALS_PER_IMPUTATION, MANY_PROPOSALS):
            name = f"{proposals} proposals a copy"
            with _proposals_per_copy(proposals):
                start = time.perf_counter()
                line[name] = _pooled(imputer.sample_multiple_imputations(X_missing, copies, proper=False))
                line[name]["seconds"] = round(time.perf_counter() - start, 1)
        _append(path, line)
    return decompose_report(path)


def decompose_report(path, reference_path=None):
    """The slope of the flow's law and of its copies, each paired with the complete data's and the
    proper normal model's (``reference_gaussian.jsonl`` beside ``path``)."""
    lines = _records(path)
    reference_path = reference_path or path.with_name("reference_gaussian.jsonl")
    normal = _normal_model_estimates(reference_path)
    names = [name for name in lines[0] if name.endswith("proposals a copy")]
    text = _coverage_table(lines, names, one=names[0])
    rows = ["", f"paired over {len(lines)} repeats (slope minus another estimate of the same sample)",
            "| estimate | minus the truth | minus the complete data's | minus the proper normal model's |",
            "|---|---|---|---|"]
    paired = [i for i, line in enumerate(lines) if line["repeat"] in normal]
    for name in ["flow's law", *names]:
        estimate = np.array([line[name] if name == "flow's law" else line[name]["estimate"] for line in lines])
        shifts = [estimate - [line["truth"] for line in lines], estimate - [line["complete data"] for line in lines]]
        shifts.append(estimate[paired] - [normal[lines[i]["repeat"]] for i in paired])
        rows.append(f"| {name} | " + " | ".join(f"{s.mean():+.4f} ± {_standard_error(s):.4f}" for s in shifts) + " |")
    return text + "\n".join(rows)


def _coverage_table(lines, names, one="one model"):
    """Coverage, width and bias of the pooled slope per method; the paired shift from ``one``'s where stored."""
    truth = np.array([line["truth"] for line in lines])
    rows = [f"{len(lines)} repeats of {lines[0]['table']}, {lines[0]['copies']} copies each",
            f"| copies | coverage | mean width | bias | shift from {one}'s (paired) | seconds |",
            "|---|---|---|---|---|---|"]
    for name in names:
        estimate = np.array([line[name]["estimate"] for line in lines])
        low, high = (np.array([line[name][k] for line in lines]) for k in ("low", "high"))
        covered = np.mean((low <= truth) & (truth <= high))
        error = estimate - truth
        se = np.sqrt(covered * (1 - covered) / len(lines))
        if one in lines[0]:
            shift = estimate - np.array([line[one]["estimate"] for line in lines])
            shifted = f"{shift.mean():+.4f} ± {_standard_error(shift):.4f}"
        else:
            shifted = "-"
        seconds = [line[name]["seconds"] for line in lines if "seconds" in line[name]]
        timed = f"{np.mean(seconds):.1f}" if seconds else "-"
        rows.append(f"| {name} | {covered:.3f} ± {se:.3f} | {np.mean(high - low):.3f} | "
                    f"{error.mean():+.4f} ± {_standard_error(error):.4f} | {shifted} | {timed} |")
    return "\n".join(rows)


def resampling_report(path):
    """Coverage, bias and the paired shift from one model's estimate, per variant, over the stored repeats."""
    lines = _records(path)
    return _coverage_table(lines, ("one model", *drawing.RESAMPLINGS))


def entry_coverage(table, path):
    """Append a record per case of ``table`` (mechanism, mask seed) not yet in ``path``: the suite's
    accuracy record of IVCNFImputer with its per-entry coverage; then :func:`entry_coverage_report`."""
    done = {(line["mechanism"], line["seed"]) for line in _records(path)}
    for mechanism in masks.MECHANISMS:
        for seed in range(3):
            if (mechanism, seed) not in done:
                _append(path, accuracy(table, mechanism, seed, "IVCNFImputer"))
    return entry_coverage_report(path)


def entry_coverage_report(path):
    """Per mechanism: mean coverage of one model's and of the proper copies' intervals, each against an
    exact sampler's expected coverage with as many draws, and the oracle's (1,000 draws)."""
    lines = [line for line in _records(path) if line.get("status") == "ok"]
    rows = [f"| {lines[0]['table']} | one model, {lines[0]['n_imputations']} copies | proper, {lines[0]['n_proper']} "
            "copies | oracle, 1,000 draws | seeds |", "|---|---|---|---|---|"]
    exact_one, exact_proper = (exact_sampler_coverage(lines[0][k]) for k in ("n_imputations", "n_proper"))
    for mechanism in masks.MECHANISMS:
        cell = [line for line in lines if line["mechanism"] == mechanism]
        if cell:
            one, proper, oracle = (np.mean([line[k] for line in cell])
                                   for k in ("coverage", "proper_coverage", "oracle_coverage"))
            rows.append(f"| {mechanism} | {one:.3f} ({one - exact_one:+.3f}) | "
                        f"{proper:.3f} ({proper - exact_proper:+.3f}) | {oracle:.3f} | {len(cell)} |")
    return (f"Per-entry 90% coverage (in brackets: minus an exact sampler's expected coverage with as many draws, "
            f"{exact_one:.3f} and {exact_proper:.3f})\n" + "\n".join(rows))


#: Fits of ``entry_width``: does a tighter bound, an earlier or later stop, less capacity, the linear map
#: or longer training change one model's interval widths?
WIDTH_SETTINGS = {"default": {}, "8 training draws": {"n_train_draws": 8}, "patience 4": {"n_iter_no_change": 4},
                  "patience 16": {"n_iter_no_change": 16}, "hidden (32, 32)": {"hidden_layer_sizes": (32, 32)},
                  "2 blocks": {"n_blocks": 2}, "no linear map": {"linear_layer": False},
                  "150 epochs": {"early_stopping": False, "max_epochs": 150}}


def entry_width(table, path):
    """Append a record per fit of ``table``'s MAR 30% cell (:data:`WIDTH_SETTINGS` x mask seeds 0-2) not yet
    in ``path``: one model's per-entry coverage and width from 4 and 16 proposals a copy, and the flow's
    marginal spread; then the means per setting."""
    ds = data.load(table)
    done = {(line["setting"], line["seed"]) for line in _records(path)}
    for seed in range(3):
        mask = masks.make_mask("MAR 30%", ds.X, seed)
        X_missing = np.where(mask, np.nan, ds.X)
        for name, kwargs in WIDTH_SETTINGS.items():
            if (name, seed) in done:
                continue
            start = time.perf_counter()
            imputer = IVCNFImputer(random_state=seed, **kwargs).fit(X_missing)
            line = {"table": table, "setting": name, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
                    "epochs": len(imputer.history_.train_loss),
                    "rmse": rmse(ds.X, imputer.transform(X_missing), mask)}
            for proposals in (4, 16):
                with _proposals_per_copy(proposals):
                    copies = imputer.sample_multiple_imputations(X_missing, 50, proper=False)
                line[f"{proposals} proposals"] = dict(zip(("coverage", "width"),
                                                          interval_coverage(ds.X, copies, mask), strict=True))
            spread = _flow_law(imputer, FLOW_ROWS, seed).std(axis=0) / ds.X.std(axis=0)
            line["sd ratio"] = float(np.exp(np.mean(np.log(spread))))
            _append(path, line)
    return entry_width_report(path)


def entry_width_report(path):
    """Means over the stored fits per setting."""
    lines = _records(path)
    rows = ["| fit | epochs | fit seconds | coverage, 4 proposals | width | coverage, 16 proposals | width | RMSE | "
            "flow's sd / data's | fits |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in WIDTH_SETTINGS:
        fits = [line for line in lines if line["setting"] == name]
        if fits:
            mean = {k: np.mean([line[k] for line in fits]) for k in ("epochs", "seconds", "rmse", "sd ratio")}
            cells = [np.mean([line[f"{p} proposals"][k] for line in fits])
                     for p in (4, 16) for k in ("coverage", "width")]
            rows.append(f"| {name} | {mean['epochs']:.0f} | {mean['seconds']:.1f} | "
                        + " | ".join(f"{c:.3f}" for c in cells)
                        + f" | {mean['rmse']:.4f} | {mean['sd ratio']:.3f} | {len(fits)} |")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["diagnose", "weights", "invariance", "longer", "mc_error", "schedule",
                                         "linear", "resampling", "reference", "attenuation", "decompose",
                                         "entry_coverage", "entry_width"])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--first", type=int, default=0, help="resampling, attenuation, decompose: the first repeat")
    parser.add_argument("--table", choices=["gaussian", "mixture"], default="mixture",
                        help="resampling, reference, entry_coverage, entry_width: the table")
    parser.add_argument("--copies", type=int, default=20, help="resampling, reference: copies per method")
    parser.add_argument("--settings-of", choices=list(SETTINGS), default="attenuation",
                        help="attenuation: ATTENUATION_SETTINGS, or VARIATIONAL_SETTINGS (variational_gaussian.jsonl)")
    parser.add_argument("--replicates", type=int, default=5, help="mc_error: transforms per setting")
    parser.add_argument("--settings", nargs="+", choices=list(MC_SETTINGS), default=None,
                        help="mc_error: these settings only (their records replace the stored ones of the same name)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{args.what}.jsonl"
    if args.what == "resampling":
        print(resampling(args.table, args.first, args.repeats, args.copies, OUT / f"resampling_{args.table}.jsonl"))
        return
    if args.what == "attenuation":
        print(attenuation(args.first, args.repeats, args.copies, OUT / f"{args.settings_of}_gaussian.jsonl",
                          SETTINGS[args.settings_of]))
        return
    if args.what == "decompose":
        print(decompose(args.first, args.repeats, args.copies, OUT / "decompose_gaussian.jsonl"))
        return
    if args.what == "entry_width":
        print(entry_width(args.table, OUT / f"entry_width_{args.table}.jsonl"))
        return
    if args.what == "entry_coverage":
        print(entry_coverage(args.table, OUT / f"entry_coverage_{args.table}.jsonl"))
        return
    if args.what == "reference":
        print(reference(args.table, args.repeats, args.copies, OUT / f"reference_{args.table}.jsonl"))
        return
    if args.what == "diagnose":
        lines = [diagnose(r) for r in range(args.repeats)]
    elif args.what == "weights":
        lines = weights()
    elif args.what == "schedule":
        lines = schedule()
    elif args.what == "mc_error":
        lines = mc_error(args.replicates, args.settings)
        if args.settings and path.exists():  # keep the other settings' records
            kept = _records(path)
            lines = [line for line in kept if line["draws"] not in args.settings] + lines
    elif args.what == "longer":
        lines = longer()
    elif args.what == "linear":
        lines = linear(args.repeats)
    else:
        lines = [invariance()]
    with path.open("w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
            print(json.dumps(line))


if __name__ == "__main__":
    main()
