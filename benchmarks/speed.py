"""The measurements behind the speed defaults of docs/benchmarks.md ("Speed"), one thread.

Run from the repository root::

    python -m benchmarks.speed chord                 # the chord start of the constraint solves
    python -m benchmarks.speed chord-centre          # the chord start from the draws' centre, or not
    python -m benchmarks.speed chord-draws           # the chord start or Newton alone, by draws per row
    python -m benchmarks.speed fit-time '{}' --table digits --rate 0.5 --epochs 30   # one fit's seconds
    python -m benchmarks.speed extra-rounds          # rows drawing 1, 2 and 4 times n_draws at transform
    python -m benchmarks.speed compile               # torch.compile of the flow's Jacobian against eager
    python -m benchmarks.speed draws                 # draws per row at transform: time and RMSE
    python -m benchmarks.speed training '{"learning_rate": 5e-3}'   # a training setting, 3 mask seeds
    python -m benchmarks.speed compare d5936da       # the accuracy grid's IVCNF rows: that commit's and now
    python -m benchmarks.speed threads               # 20 epochs and transform on 1 and 2 torch threads
    python -m benchmarks.speed grid '{"hidden_layer_sizes": [64]}' --label one_layer --workers 2
    python -m benchmarks.speed grid-report defaults one_layer   # per case: RMSE and seconds, each against the first
    python -m benchmarks.speed grid-report suite@d5936da defaults   # "suite": the suite's IVCNF records (at a commit)
    python -m benchmarks.speed transform-levers      # transform: batch rows, extra-draw policy, draws, weights
    python -m benchmarks.speed logdet                # digits: logdet exact vs hutchinson; float32 log|det G|
    python -m benchmarks.speed peak                  # torch.mm GFLOP/s on the tangents' shapes; flops per draw
    python -m benchmarks.speed step-scale --table nonlinear --mechanism "MNAR 30%"   # the linear map's step_scale
    python -m benchmarks.speed fallback              # digits at 90%: the fixed point's fallback, where it runs
    python -m benchmarks.speed transform-grid '{"skivcnf._drawing.ADAPTIVE": false}' '{}' --label adaptive --seeds 1
    python -m benchmarks.speed transform-time --fit /tmp/fit.skivcnf   # one fit's transform, timed (any commit)

``chord``: on flows trained by ``IVCNFImputer`` (breast cancer 20 epochs; digits 3 epochs at
50% and 90% MCAR), 64 draws of the first 256 rows solved with ``chord_max_iter`` 0 (Newton
from the initial guess, the former behaviour), 16 and 32: seconds, Newton iterations per
draw after the start, and the share of draws solved. ``draws``: one default fit per mask seed
(0, 1, 2; 20% MCAR), then ``transform`` with 8, 16, 32 and 64 draws per row. ``training``: fit and
transform with the given settings on the three mask seeds. ``grid``: ``fit_transform`` with the
given settings on every case of the suite's accuracy grid (6 tables x 4 mechanisms x 3 mask seeds,
one thread per task), to ``results/speed/grid_<label>.jsonl``; ``grid-report`` compares labels.
``step-scale``: one case of the grid (3 mask seeds) with the flow's linear map at ``step_scale`` 1, 3
and 10 (the default), and without the map. ``fallback``: see :func:`fallback`. ``transform-grid``:
every case of the grid fitted once by default, then transformed under each setting of module
constants given (a paired comparison; see :func:`transform_grid`). ``transform-time``: see
:func:`transform_time`.
"""

import argparse
import ast
import copy
import json
import subprocess
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from skivcnf import IVCNFImputer
from skivcnf.conditional import SolverOptions, sample_conditional

from . import data, masks
from .measure import rmse


def _masked(table, seed=0, rate=None):
    ds = data.digits() if table == "digits" else data.load(table)
    mask = masks.mcar(ds.X, rate, np.random.default_rng(seed)) if rate else masks.make_mask("MCAR 20%", ds.X, seed)
    return ds.X, mask, np.where(mask, np.nan, ds.X)


def chord(table="breast_cancer", rate=None, epochs=20, rows=256, n_draws=64):
    """Solve time and Newton iterations of ``n_draws`` draws of ``rows`` rows, with and without the chord start."""
    _, _, X_missing = _masked(table, rate=rate)
    imputer = IVCNFImputer(random_state=0, max_epochs=epochs, early_stopping=False).fit(X_missing)
    z = torch.as_tensor(imputer._layout().standardise(X_missing[:rows]), dtype=torch.float32)
    hidden = torch.isnan(z)
    params = imputer.posterior_(torch.where(hidden, 0.0, z), hidden)
    lines = []
    for chord_max_iter in (0, 16, 32):
        start = time.perf_counter()
        draws = sample_conditional(imputer.flow_, z, hidden, params, n_samples=n_draws,
                                   generator=torch.Generator().manual_seed(0),
                                   options=SolverOptions(chord_max_iter=chord_max_iter), weights=False)
        lines.append({"table": table, "rate": rate, "chord_max_iter": chord_max_iter,
                      "seconds": round(time.perf_counter() - start, 2),
                      "newton_iterations": round(float(draws.n_iter.float().mean()), 2),
                      "solved": float(draws.converged.float().mean())})
    return lines


def chord_draws(table="breast_cancer", repeats=2, epochs=(20, None), batch=64, rate=None,
                draw_counts=(1, 2, 4, 8, 16, 64)):
    """The chord start against Newton from the initial guess, by draws per row: after a fit of
    20 epochs and one trained to early stopping (default settings, mask seed 0), seconds to
    solve 1-64 draws of every row in batches of ``batch`` rows (training's), no weights, the
    fastest of ``repeats``; and the Newton iterations per draw after the start."""
    from unittest import mock

    from skivcnf.conditional import warm_starts

    _, _, X_missing = _masked(table, rate=rate)
    lines = []
    for max_epochs in epochs:
        settings = dict(max_epochs=max_epochs, early_stopping=False) if max_epochs else {}
        imputer = IVCNFImputer(random_state=0, **settings).fit(X_missing)
        z = torch.as_tensor(imputer._layout().standardise(X_missing), dtype=torch.float32)
        hidden = torch.isnan(z)
        with torch.no_grad():
            params = imputer.posterior_(torch.where(hidden, 0.0, z), hidden)
        for n_draws in draw_counts:
            line = {"table": table, "rate": rate, "epochs": len(imputer.history_.train_loss), "n_draws": n_draws}
            for name, threshold in {"chord": 1, "newton": 10**9}.items():
                best, iterations = float("inf"), []
                for _ in range(repeats):
                    start, iterations = time.perf_counter(), []
                    with mock.patch.object(warm_starts, "CHORD_MIN_DRAWS", threshold):
                        for rows in torch.arange(len(z)).split(batch):
                            batch_params = type(params)(*(None if p is None else p[rows] for p in params))
                            draws = sample_conditional(imputer.flow_, z[rows], hidden[rows], batch_params,
                                                       n_samples=n_draws, generator=torch.Generator().manual_seed(0),
                                                       weights=False, antithetic=n_draws > 1)
                            iterations.append(draws.n_iter.float().mean())
                    best = min(best, time.perf_counter() - start)
                line[f"seconds {name}"] = round(best, 3)
                line[f"newton iterations {name}"] = round(float(torch.stack(iterations).mean()), 2)
            lines.append(line)
    return lines


def fit_time(settings, table="breast_cancer", rate=None, epochs=30):
    """Seconds of one fit of ``epochs`` epochs without early stopping (mask seed 0) and its last
    training loss. Keys ``"skivcnf.module.NAME"`` of ``settings`` set module constants (as in ``training``)."""
    _, _, X_missing = _masked(table, rate=rate)
    imputer = IVCNFImputer(random_state=0, max_epochs=epochs, early_stopping=False, **_estimator_settings(settings))
    start = time.perf_counter()
    imputer.fit(X_missing)
    return [{"table": table, "rate": rate, "settings": settings, "epochs": epochs,
             "fit_seconds": round(time.perf_counter() - start, 1),
             "final_train_loss": round(float(imputer.history_.train_loss[-1]), 4)}]


def extra_rounds(cases=((1_000, 10), (10_000, 10)), rows=2_000):
    """How many rows draw ``n_draws``, twice and four times as many at ``transform`` (the reliable
    draws' extra rounds): a default fit of the suite's scaling table (AR(1) Gaussian, 20% MCAR),
    then the first ``rows`` rows transformed."""
    from unittest import mock

    from skivcnf import _drawing

    real, counts, lines = _drawing.reliable_draws, [], []

    def counting(*args, **kwargs):
        result = real(*args, **kwargs)
        counts.append(result.n_draws.cpu())
        return result

    for n, d in cases:
        X = data.correlated_gaussian(n, d, seed=n + d).X
        X_missing = np.where(masks.mcar(X, 0.2, np.random.default_rng(0)), np.nan, X)
        imputer = IVCNFImputer(random_state=0).fit(X_missing)
        counts.clear()
        with mock.patch.object(_drawing, "reliable_draws", counting):
            imputer.transform(X_missing[:rows])
        values, numbers = torch.cat(counts).unique(return_counts=True)
        lines.append({"rows": n, "columns": d, "epochs": len(imputer.history_.train_loss),
                      "rows_per_draw_count": dict(zip(values.tolist(), numbers.tolist(), strict=True))})
    return lines


def chord_centre(table="breast_cancer", repeats=2):
    """The chord start from the completion of each row's mean draw against from the initial guess:
    after one default fit (mask seed 0), seconds to solve 4-64 draws of every row (no weights),
    then whole ``transform`` calls, alternated ``repeats`` times (the fastest is kept), with the
    RMSE and the largest change of an imputed entry (column standard deviations). As measured
    before ``CHORD_MIN_DRAWS``: the chord start at every draw count."""
    from unittest import mock

    from skivcnf.conditional import warm_starts

    with mock.patch.object(warm_starts, "CHORD_MIN_DRAWS", 1):
        return _chord_centre(table, repeats)


def _chord_centre(table, repeats):
    from unittest import mock

    from skivcnf.conditional import warm_starts

    X, mask, X_missing = _masked(table)
    imputer = IVCNFImputer(random_state=0).fit(X_missing)
    z = torch.as_tensor(imputer._layout().standardise(X_missing), dtype=torch.float32)
    hidden = torch.isnan(z)
    params = imputer.posterior_(torch.where(hidden, 0.0, z), hidden)
    settings = {"centred": warm_starts.CHORD_CENTRE_MIN_DRAWS, "from the guess": 10**9}
    lines = []
    for n_draws in (4, 8, 16, 32, 64):
        seconds = defaultdict(list)
        for _ in range(repeats):
            for name, threshold in settings.items():
                with mock.patch.object(warm_starts, "CHORD_CENTRE_MIN_DRAWS", min(threshold, n_draws)
                                       if name == "centred" else threshold):
                    start = time.perf_counter()
                    sample_conditional(imputer.flow_, z, hidden, params, n_samples=n_draws,
                                       generator=torch.Generator().manual_seed(0), weights=False, antithetic=True)
                    seconds[name].append(time.perf_counter() - start)
        lines.append({"table": table, "n_draws": n_draws, **{f"solve_seconds {k}": round(min(v), 2)
                                                               for k, v in seconds.items()}})
    outputs, seconds = {}, defaultdict(list)
    for _ in range(repeats):
        for name, threshold in settings.items():
            with mock.patch.object(warm_starts, "CHORD_CENTRE_MIN_DRAWS", threshold):
                start = time.perf_counter()
                outputs[name] = imputer.transform(X_missing)
                seconds[name].append(time.perf_counter() - start)
    scale = np.nanstd(X_missing, axis=0)
    change = np.abs(outputs["centred"] - outputs["from the guess"])[mask] / np.broadcast_to(scale, X.shape)[mask]
    lines.append({"table": table, "transform": {k: round(min(v), 2) for k, v in seconds.items()},
                  "rmse": {k: round(rmse(X, v, mask), 4) for k, v in outputs.items()},
                  "largest change (column sd)": float(f"{change.max():.2g}")})
    return lines


def compiled(rows=128, features=30, repeats=30):
    """``torch.compile`` of the flow's Jacobian (the heart of a training step and of the weights at
    ``transform``) against eager mode: milliseconds a call for ``rows`` rows of the default flow at
    ``features`` columns, without a graph and with the backward pass of a log-likelihood, and the
    seconds each compilation took (inductor's C++ on the CPU), from an empty cache as a user's first call."""
    import os
    import tempfile

    from skivcnf.flows import ResidualFlow


    flow = ResidualFlow(features, n_blocks=4, hidden_features=(64, 64), generator=torch.Generator().manual_seed(0))
    y = torch.randn(rows, features, generator=torch.Generator().manual_seed(1))

    def milliseconds(call, jacobian):
        for _ in range(3):
            call(jacobian)
        start = time.perf_counter()
        for _ in range(repeats):
            call(jacobian)
        return round((time.perf_counter() - start) / repeats * 1e3, 2)

    def step(jacobian):
        x, _, logdet = jacobian(y)
        (-(flow.base_log_prob(x) + logdet).mean()).backward()

    def no_graph(jacobian):
        with torch.no_grad():
            jacobian(y)

    lines = []
    for mode, call in (("without a graph", no_graph), ("with the backward pass", step)):
        line = {"rows": rows, "features": features, "mode": mode,
                "eager_ms": milliseconds(call, flow.forward_and_jacobian)}
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")  # each graph from cold
        compiled_jacobian = torch.compile(flow.forward_and_jacobian)
        start = time.perf_counter()
        call(compiled_jacobian)
        line["compile_seconds"] = round(time.perf_counter() - start, 1)
        line["compiled_ms"] = milliseconds(call, compiled_jacobian)
        lines.append(line)
        torch._dynamo.reset()
    return lines


#: Draws per row compared by ``draws`` (the adaptive draws of docs/benchmarks.md were
#: measured with the prototype of commit 7dc1ac5, whose ``draws`` also ran ``draw_tolerance``).
DRAW_SETTINGS = [8, 16, 32, 64]


def draws(table="breast_cancer", settings=DRAW_SETTINGS):
    """Transform seconds and RMSE with each draw setting, after one default fit per mask seed."""
    results = {setting: [] for setting in settings}
    for seed in (0, 1, 2):
        X, mask, X_missing = _masked(table, seed)
        imputer = IVCNFImputer(random_state=seed).fit(X_missing)
        for n_draws in settings:
            imputer.set_params(n_draws=n_draws)
            start = time.perf_counter()
            out = imputer.transform(X_missing)
            results[n_draws].append((time.perf_counter() - start, rmse(X, out, mask)))
    return [{"table": table, "n_draws": n, "transform_seconds": round(float(np.mean([s for s, _ in v])), 2),
             "rmse": [round(r, 4) for _, r in v], "mean_rmse": round(float(np.mean([r for _, r in v])), 4)}
            for n, v in results.items()]


def _estimator_settings(settings):
    """Set the module constants among ``settings`` (keys ``"skivcnf.module.NAME"``) and return the rest."""
    import importlib

    for key, value in settings.items():
        if key.startswith("skivcnf."):
            module, _, name = key.rpartition(".")
            setattr(importlib.import_module(module), name, value)
    return {k: v for k, v in settings.items() if not k.startswith("skivcnf.")}


def training(settings, table="breast_cancer"):
    """Fit and transform seconds, epochs and RMSE of ``IVCNFImputer(**settings)`` on 3 mask seeds.

    Keys ``"skivcnf.module.NAME"`` of ``settings`` set module constants instead (as in ``grid``).
    """
    rows, estimator_settings = [], _estimator_settings(settings)
    for seed in (0, 1, 2):
        X, mask, X_missing = _masked(table, seed)
        imputer = IVCNFImputer(random_state=seed, **estimator_settings)
        start = time.perf_counter()
        imputer.fit(X_missing)
        fitted = time.perf_counter()
        out = imputer.transform(X_missing)
        rows.append((fitted - start, time.perf_counter() - fitted, len(imputer.history_.train_loss),
                     rmse(X, out, mask)))
    rows = np.array(rows)
    return [{"table": table, "settings": settings, "fit_seconds": round(float(rows[:, 0].mean()), 1),
             "transform_seconds": round(float(rows[:, 1].mean()), 1), "epochs": rows[:, 2].astype(int).tolist(),
             "rmse": rows[:, 3].round(4).tolist(), "mean_rmse": round(float(rows[:, 3].mean()), 4)}]


def threads(counts=(1, 2)):
    """Fit (20 epochs) and transform seconds on breast cancer with each number of torch threads."""
    X, mask, X_missing = _masked("breast_cancer")
    lines = []
    for count in counts:
        torch.set_num_threads(count)
        imputer = IVCNFImputer(random_state=0, max_epochs=20, early_stopping=False)
        start = time.perf_counter()
        imputer.fit(X_missing)
        fitted = time.perf_counter()
        imputer.transform(X_missing)
        lines.append({"threads": count, "fit_seconds": round(fitted - start, 1),
                      "transform_seconds": round(time.perf_counter() - fitted, 1)})
    return lines


def transform_levers(table="breast_cancer"):
    """Transform seconds and RMSE of one default fit (mask seed 0) against the rows per batch,
    the extra-draw policy of the reliable weights, the draw count and importance weighting."""
    from unittest import mock

    from skivcnf import _drawing

    X, mask, X_missing = _masked(table)
    imputer = IVCNFImputer(random_state=0).fit(X_missing)
    real, counts = _drawing.reliable_draws, []

    def policy(tolerance, rounds):
        def draws(*args, **kwargs):
            result = real(*args, **{**kwargs, "mc_tolerance": tolerance, "max_rounds": rounds})
            counts.append(result.n_draws.cpu())
            return result
        return mock.patch.object(_drawing, "reliable_draws", draws)

    def timed(lever, value, context):
        counts.clear()
        with context:
            start = time.perf_counter()
            out = imputer.transform(X_missing)
        n_draws = torch.cat(counts).unique(return_counts=True) if counts else (torch.zeros(0), torch.zeros(0))
        return {"table": table, "lever": lever, "value": value,
                "transform_seconds": round(time.perf_counter() - start, 2), "rmse": round(rmse(X, out, mask), 4),
                "rows_per_draw_count": dict(zip(n_draws[0].tolist(), n_draws[1].tolist(), strict=True))}

    lines = []
    for rows in (8, 16, 32, 64, 128):
        imputer.set_params(batch_size=rows)
        lines.append(timed("batch_size", rows, policy(_drawing.MC_TOLERANCE, _drawing.MAX_ROUNDS)))
    imputer.set_params(batch_size=64)
    for tolerance, rounds in ((0.05, 2), (0.1, 2), (float("inf"), 2), (0.05, 0)):
        lines.append(timed("mc_tolerance, max_rounds", [tolerance, rounds], policy(tolerance, rounds)))
    for n_draws in (16, 64):
        imputer.set_params(n_draws=n_draws, importance_weighting=False)
        lines.append(timed("n_draws without importance weights", n_draws, policy(0.05, 2)))
    return lines


def transform_time(path, rows=1000, repeats=3):
    """Seconds of ``transform`` on the first ``rows`` rows of the scaling section's 10,000 x 10 table
    (20% MCAR), best of ``repeats``, with a digest of the output.

    The default fit is saved to ``path`` on the first run and loaded by the next, so that two
    commits (or settings) transform with the same flow: a paired timing, and the digest says
    whether their imputations are bit-identical.
    """
    import hashlib

    n, d = 10_000, 10
    X = data.correlated_gaussian(n, d, seed=n + d).X
    X_missing = np.where(masks.mcar(X, 0.2, np.random.default_rng(0)), np.nan, X)
    path = Path(path)
    if path.exists():
        imputer = IVCNFImputer.load(path)
    else:
        imputer = IVCNFImputer(random_state=0).fit(X_missing)
        imputer.save(path)
    X_missing = X_missing[:rows]
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = imputer.transform(X_missing)
        seconds.append(round(time.perf_counter() - start, 3))
    digest = hashlib.sha1(np.ascontiguousarray(out).tobytes()).hexdigest()[:12]
    return [{"rows": rows, "best_seconds": min(seconds), "seconds": seconds,
             "rows_per_second": round(rows / min(seconds)), "output_sha1": digest}]


def logdet_methods(epochs=20, rows=200):
    """Digits at 50% MCAR: fixed epochs with ``logdet`` exact and hutchinson (seconds an epoch,
    best training loss, RMSE of ``rows`` rows), and the float32 error of ``log|det G|`` from the
    product Jacobian and from per-block determinants against float64, on the exact fit."""
    X, mask, X_missing = _masked("digits", rate=0.5)
    lines, fitted = [], {}
    for logdet in ("exact", "hutchinson"):
        imputer = IVCNFImputer(random_state=0, logdet=logdet, max_epochs=epochs, early_stopping=False)
        start = time.perf_counter()
        imputer.fit(X_missing)
        seconds = time.perf_counter() - start
        out = imputer.transform(X_missing[:rows])
        fitted[logdet] = imputer
        lines.append({"logdet": logdet, "epochs": epochs, "seconds_per_epoch": round(seconds / epochs, 2),
                      "best_train_loss": round(min(imputer.history_.train_loss), 3),
                      "rmse": round(rmse(X[:rows], out, mask[:rows]), 4)})
    flow = fitted["exact"].flow_
    y = torch.as_tensor(fitted["exact"]._layout().standardise(X), dtype=torch.float32)[:4096]
    with torch.no_grad():
        truth = copy.deepcopy(flow).double().forward_and_logdet(y.double(), method="exact")[1]
        product = flow.forward_and_logdet(y, method="exact")[1].double()
        z, per_block = y, torch.zeros(len(y))
        for layer in flow.layers:
            z, block_logdet = layer.forward_and_logdet(z, "exact")
            per_block = per_block + block_logdet
    for name, value in (("product", product), ("per block", per_block.double())):
        error = (value - truth).abs()
        lines.append({"float32 log|det G|": name, "rows": len(y), "mean_abs_error": float(error.mean()),
                      "max_abs_error": float(error.max())})
    return lines


def peak(rows=64 * 64, d=30, widths=(64, 64)):
    """Single-thread GFLOP/s of ``torch.mm`` on the shapes of ``d`` tangents through a residual
    block (``rows`` row-draws), and the flops of one draw's exact Jacobian through 4 blocks."""
    sizes = [d, *widths, d]
    lines = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        a, b = torch.randn(rows * d, fan_in), torch.randn(fan_in, fan_out)
        torch.mm(a, b)
        start, repeats = time.perf_counter(), 10
        for _ in range(repeats):
            torch.mm(a, b)
        seconds = (time.perf_counter() - start) / repeats
        gflops = 2 * rows * d * fan_in * fan_out / seconds / 1e9
        lines.append({"mm": [rows * d, fan_in, fan_out], "gflops_per_s": round(gflops, 1)})
    flops = 4 * 2 * d * sum(i * o for i, o in zip(sizes[:-1], sizes[1:], strict=True))
    lines.append({"d": d, "hidden_layer_sizes": list(widths), "blocks": 4, "mflop_per_draw": round(flops / 1e6, 2)})
    return lines


GRID = Path(__file__).parent / "results" / "speed"


def _grid_case(table, mechanism, seed):
    """A case of the accuracy grid in a worker (one thread, no warnings): the data, mask and masked table."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    ds = data.load(table)
    mask = masks.make_mask(mechanism, ds.X, seed)
    return ds, mask, np.where(mask, np.nan, ds.X)


def _grid_task(task):
    table, mechanism, seed, settings = task
    ds, mask, X_missing = _grid_case(table, mechanism, seed)
    imputer = IVCNFImputer(random_state=seed, **_estimator_settings(settings))
    start = time.perf_counter()
    out = imputer.fit_transform(X_missing)
    return {"table": table, "mechanism": mechanism, "seed": seed, "settings": settings,
            "seconds": round(time.perf_counter() - start, 2), "epochs": len(imputer.history_.train_loss),
            "rmse": rmse(ds.X, out, mask)}


def grid(settings, label, workers=1, tables=None):
    """IVCNF's ``fit_transform`` with ``settings`` on every case of the accuracy grid (of ``tables``, all by
    default), to ``grid_<label>.jsonl``.

    A key ``"skivcnf.module.NAME"`` of ``settings`` sets that module constant in each worker instead.
    """
    tasks = [(t, m, s, settings) for t in tables or data.TABLES for m in masks.MECHANISMS for s in range(3)]
    _pool_to_jsonl(_grid_task, tasks, GRID / f"grid_{label}.jsonl", workers)


def _pool_to_jsonl(function, tasks, path, workers):
    """``function`` on every task in ``workers`` spawned processes, each record a line of ``path`` as it ends."""
    import multiprocessing

    path.parent.mkdir(parents=True, exist_ok=True)
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_warm_up) as pool, open(path, "w") as out:
        for record in pool.imap_unordered(function, tasks):
            out.write(json.dumps(record) + "\n")
            out.flush()


def _transform_task(task):
    """One grid case: a default fit, then ``transform`` under each of ``variants`` (module constants)."""
    import importlib

    table, mechanism, seed, variants = task
    ds, mask, X_missing = _grid_case(table, mechanism, seed)
    start = time.perf_counter()
    imputer = IVCNFImputer(random_state=seed).fit(X_missing)
    record = {"table": table, "mechanism": mechanism, "seed": seed,
              "fit_seconds": round(time.perf_counter() - start, 2), "variants": []}
    defaults = imputer.get_params()
    for variant in variants:
        constants = [key for key in variant if key.startswith("skivcnf.")]
        saved = {key: getattr(importlib.import_module(key.rpartition(".")[0]), key.rpartition(".")[2])
                 for key in constants}
        imputer.set_params(**_estimator_settings(variant))  # transform-time parameters such as n_draws
        start = time.perf_counter()
        out = imputer.transform(X_missing)
        record["variants"].append({"settings": variant, "seconds": round(time.perf_counter() - start, 2),
                                   "rmse": rmse(ds.X, out, mask)})
        _estimator_settings(saved)
        imputer.set_params(**defaults)
    return record


def transform_grid(variants, label, workers=1, seeds=3):
    """Every case of the accuracy grid fitted once by default, then transformed under each of ``variants``
    (dicts of module constants, ``"skivcnf.module.NAME": value``, and of the imputer's transform-time
    parameters such as ``n_draws``; ``{}`` is the default): a paired
    comparison of transform settings, to ``transform_<label>.jsonl``. ``seeds``: mask seeds per case
    (the same fit serves every variant, so one seed already compares them)."""
    tasks = [(t, m, s, variants) for t in data.TABLES for m in masks.MECHANISMS for s in range(seeds)]
    _pool_to_jsonl(_transform_task, tasks, GRID / f"transform_{label}.jsonl", workers)
    return transform_grid_report(label)


def transform_grid_report(label):
    """Per case (mean over mask seeds): each variant's RMSE and transform seconds against the first's."""
    records = [json.loads(line) for line in (GRID / f"transform_{label}.jsonl").read_text().splitlines() if line]
    cases = defaultdict(list)
    for r in records:
        cases[(r["table"], r["mechanism"])].append(r)
    n_variants = len(records[0]["variants"])
    lines = ["| table | missingness | " + " | ".join(f"RMSE {i} | s {i}" for i in range(n_variants)) + " |",
             "|---|---|" + "---|---|" * n_variants]
    ratios = defaultdict(list)
    for (table, mechanism), rs in sorted(cases.items()):
        means = [(np.mean([r["variants"][i]["rmse"] for r in rs]), np.mean([r["variants"][i]["seconds"] for r in rs]))
                 for i in range(n_variants)]
        lines.append(f"| {table} | {mechanism} | " + " | ".join(f"{m:.4f} | {t:.1f}" for m, t in means) + " |")
        for i in range(1, n_variants):
            ratios[i].append((means[i][0] / means[0][0], means[i][1] / means[0][1]))
    lines.append("")
    for i, pairs in ratios.items():
        rm, sec = np.array(pairs).T
        lines.append(f"variant {i} ({records[0]['variants'][i]['settings']}) / variant 0 "
                     f"({records[0]['variants'][0]['settings']}) over {len(rm)} cases: RMSE geometric mean "
                     f"{np.exp(np.mean(np.log(rm))):.4f} (best {rm.min():.4f}, worst {rm.max():.4f}, "
                     f"{int((rm > 1.02).sum())} cases more than 2% worse); transform seconds geometric mean "
                     f"{np.exp(np.mean(np.log(sec))):.3f}.")
    return "\n".join(lines)


def step_scale(table, mechanism, scales=(1.0, 3.0, 10.0)):
    """One case of the accuracy grid, 3 mask seeds, with the linear map at each ``step_scale`` and without it."""
    from skivcnf.flows import linear

    default, lines = linear.STEP_SCALE, []
    for scale in (None, *scales):
        linear.STEP_SCALE = default if scale is None else scale
        settings = {"linear_layer": False} if scale is None else {}
        records = [_grid_task((table, mechanism, seed, settings)) for seed in range(3)]
        lines.append({"table": table, "mechanism": mechanism, "step_scale": scale, "settings": settings,
                      "rmse": [round(r["rmse"], 4) for r in records], "epochs": [r["epochs"] for r in records],
                      "mean_rmse": round(float(np.mean([r["rmse"] for r in records])), 4)})
    linear.STEP_SCALE = default
    return lines


def fallback(rate=0.9, seeds=(0, 1, 2), rows=100, max_epochs=30):
    """Digits at ``rate`` missing (the paper's protocol split): what the fixed point's fallback costs.

    ``IVCNFClassifier`` fits (``max_epochs``, as ``benchmarks.paper_digits``) with and without
    the fallback in training (``fitting.FIXED_POINT_IN_TRAINING``; without it on every model
    seed, with it on the first: it is the slow one), each scored on the test split; then one
    ``IVCNFImputer`` fit and ``transform`` of the first ``rows`` test rows with the fallback on
    every draw a Newton solve left, or only on the rows with no solved draw
    (``sampling.FALLBACK_FOR_UNSOLVED_ROWS_ONLY``). Each line counts the fixed point's calls,
    draws, seconds and solved draws.
    """
    from unittest import mock

    from skivcnf import IVCNFClassifier
    from skivcnf.conditional import fitting, sampling, solvers

    from . import paper_digits

    stats = {}
    plain = solvers._SOLVER_FUNCTIONS["fixed_point"]

    def counted(flow, y, hidden, x_target, options):
        start = time.perf_counter()
        out = plain(flow, y, hidden, x_target, options)
        stats["fixed_point_calls"] += 1
        stats["fixed_point_draws"] += len(y)
        stats["fixed_point_seconds"] += time.perf_counter() - start
        stats["fixed_point_solved"] += int((out[2] <= options.tolerance(y.dtype)).sum())
        return out

    def reset():
        stats.update(fixed_point_calls=0, fixed_point_draws=0, fixed_point_seconds=0.0, fixed_point_solved=0)
        return dict(stats)

    def rounded(counts):
        return {**counts, "fixed_point_seconds": round(counts["fixed_point_seconds"], 1)}

    _, X_test, Xm_train, Xm_test, _, mask_test, y_train, y_test = paper_digits.split(rate, 0)
    lines, defaults = [], (fitting.FIXED_POINT_IN_TRAINING, sampling.FALLBACK_FOR_UNSOLVED_ROWS_ONLY)
    with mock.patch.dict(solvers._SOLVER_FUNCTIONS, {"fixed_point": counted}):
        for in_training, seed in [(False, s) for s in seeds] + [(True, seeds[0])]:
            fitting.FIXED_POINT_IN_TRAINING, sampling.FALLBACK_FOR_UNSOLVED_ROWS_ONLY = in_training, False
            reset()
            start = time.perf_counter()
            # The classifier's default when this was measured had the flow's linear map.
            model = IVCNFClassifier(head_hidden_layer_sizes=(64,), linear_layer=True, random_state=seed,
                                    max_epochs=max_epochs)
            model.fit(Xm_train, y_train)
            fitted, fit_counts = time.perf_counter(), reset()
            accuracy = float(model.score(Xm_test, y_test))
            lines.append({"task": "IVCNFClassifier fit, then score on the test split", "rate": rate, "seed": seed,
                          "fixed_point_in_training": in_training, "fit_seconds": round(fitted - start, 1),
                          "score_seconds": round(time.perf_counter() - fitted, 1), "accuracy": round(accuracy, 4),
                          "fit": rounded(fit_counts), "score": rounded(dict(stats))})
            print(json.dumps(lines[-1]), flush=True)
        fitting.FIXED_POINT_IN_TRAINING = False
        imputer = IVCNFImputer(random_state=seeds[0], max_epochs=max_epochs).fit(Xm_train)
        for only_unsolved_rows in (True, False):
            sampling.FALLBACK_FOR_UNSOLVED_ROWS_ONLY = only_unsolved_rows
            reset()
            start = time.perf_counter()
            out = imputer.transform(Xm_test[:rows])
            lines.append({"task": f"IVCNFImputer transform of {rows} test rows", "rate": rate,
                          "fallback_for_unsolved_rows_only": only_unsolved_rows,
                          "seconds": round(time.perf_counter() - start, 1),
                          "rmse": round(paper_digits._rmse(X_test[:rows], out, mask_test[:rows]), 4),
                          **rounded(dict(stats))})
            print(json.dumps(lines[-1]), flush=True)
    fitting.FIXED_POINT_IN_TRAINING, sampling.FALLBACK_FOR_UNSOLVED_ROWS_ONLY = defaults
    return lines


def _warm_up():
    torch.set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its one-time import is not the imputer's


def _grid_run(label):
    """Mean (RMSE, seconds) per case: a ``grid`` label, ``suite`` (the suite's IVCNF records) or ``suite@REV``."""
    if label.startswith("suite"):
        revision = label.partition("@")[2]
        lines = (subprocess.run(["git", "show", f"{revision}:benchmarks/results/suite/accuracy.jsonl"],
                                capture_output=True, text=True, check=True).stdout.splitlines()
                 if revision else SUITE.read_text().splitlines())
        cases = _ivcnf_cases(lines)
    else:
        cases = defaultdict(list)
        for line in (GRID / f"grid_{label}.jsonl").read_text().splitlines():
            record = json.loads(line)
            cases[record["table"], record["mechanism"]].append(record)
    return {case: (np.mean([r["rmse"] for r in rs]), np.mean([r["seconds"] for r in rs])) for case, rs in cases.items()}


def _peers():
    """Per case of the suite: each peer's mean (RMSE, seconds) over the mask seeds it completed."""
    cases = defaultdict(lambda: defaultdict(list))
    for line in SUITE.read_text().splitlines():
        record = json.loads(line)
        if record["imputer"] != "IVCNFImputer" and record["status"] == "ok":
            cases[record["table"], record["mechanism"]][record["imputer"]].append(record)
    return {case: {peer: (np.mean([r["rmse"] for r in rs]), np.mean([r["seconds"] for r in rs]), len(rs))
                   for peer, rs in peers.items()} for case, peers in cases.items()}


def _geomean(values):
    return float(np.exp(np.mean(np.log(values))))


def grid_report(labels):
    """Markdown: mean RMSE and seconds per case for each label, each label against the first, and
    each against the suite's peers (time over MissForest-like's and MICE's, RMSE over the best peer's)."""
    runs = [_grid_run(label) for label in labels]
    common = sorted(set.intersection(*(set(run) for run in runs)))
    head = " | ".join(f"RMSE {label} | s {label}" for label in labels)
    lines = [f"| table | missingness | {head} |", "|---|---|" + "---|---|" * len(labels)]
    for case in common:
        cells = " | ".join(f"{run[case][0]:.4f} | {run[case][1]:.1f}" for run in runs)
        lines.append(f"| {case[0]} | {case[1]} | {cells} |")
    lines.append("")
    for label, run in zip(labels[1:], runs[1:], strict=True):
        rmse_ratio = [run[c][0] / runs[0][c][0] for c in common]
        lines.append(f"{label} / {labels[0]} over {len(common)} cases: RMSE geometric mean {_geomean(rmse_ratio):.3f} "
                     f"(best {min(rmse_ratio):.3f}, worst {max(rmse_ratio):.3f}, "
                     f"{sum(r > 1.02 for r in rmse_ratio)} cases more than 2% worse); seconds geometric mean "
                     f"{_geomean([run[c][1] / runs[0][c][1] for c in common]):.2f}.")
    peers = _peers()
    for label, run in zip(labels, runs, strict=True):
        cases = [c for c in common if c in peers]
        best = [min(r for r, _, n in peers[c].values() if n == 3) for c in cases]
        ratio = [run[c][0] / b for c, b in zip(cases, best, strict=True)]
        times = {peer: _geomean([run[c][1] / peers[c][peer][1] for c in cases]) for peer in ("MissForest-like", "MICE")}
        lines.append(f"{label} against the suite's peers over {len(cases)} cases: RMSE / best peer's geometric mean "
                     f"{_geomean(ratio):.3f} ({sum(r < 1 for r in ratio)} wins); seconds / MissForest-like's "
                     f"{times['MissForest-like']:.2f}, / MICE's {times['MICE']:.1f}.")
    return "\n".join(lines)


SUITE = Path(__file__).parent / "results" / "suite" / "accuracy.jsonl"


def _ivcnf_cases(lines):
    cases = defaultdict(list)
    for line in lines:
        record = json.loads(line) if line.strip() else {}
        if record.get("imputer") == "IVCNFImputer" and record.get("status") == "ok":
            cases[record["table"], record["mechanism"]].append(record)
    return cases


def compare(revision):
    """Markdown: IVCNF's mean RMSE and seconds per case of the accuracy grid, at ``revision`` and now."""
    before = _ivcnf_cases(subprocess.run(["git", "show", f"{revision}:benchmarks/results/suite/accuracy.jsonl"],
                                         capture_output=True, text=True, check=True).stdout.splitlines())
    after = _ivcnf_cases(SUITE.read_text().splitlines())
    lines = ["| table | missingness | RMSE before | RMSE now | now / before | s before | s now | now / before |",
             "|---|---|---|---|---|---|---|---|"]
    rmse_ratios, time_ratios = [], []
    for case in before:
        if case not in after:
            continue
        old, new = (np.mean([r["rmse"] for r in rs]) for rs in (before[case], after[case]))
        old_s, new_s = (np.mean([r["seconds"] for r in rs]) for rs in (before[case], after[case]))
        rmse_ratios.append(new / old)
        time_ratios.append(new_s / old_s)
        lines.append(f"| {case[0]} | {case[1]} | {old:.4f} | {new:.4f} | {new / old:.3f} | {old_s:.1f} | "
                     f"{new_s:.1f} | {new_s / old_s:.2f} |")
    if rmse_ratios:
        lines.append(f"\nGeometric means over {len(rmse_ratios)} cases: RMSE now / before "
                     f"{np.exp(np.mean(np.log(rmse_ratios))):.3f} (worst {max(rmse_ratios):.3f}); seconds now / "
                     f"before {np.exp(np.mean(np.log(time_ratios))):.2f}.")
    return "\n".join(lines)


def _settings(text):
    settings = ast.literal_eval(text)
    # JSON has no tuples: a list of layer sizes is the tuple the estimator takes.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["chord", "draws", "training", "compare", "threads", "grid", "grid-report",
                                         "transform-levers", "logdet", "peak", "chord-centre", "chord-draws",
                                         "fit-time", "extra-rounds", "compile", "step-scale", "fallback",
                                         "transform-grid", "transform-grid-report", "transform-time"])
    parser.add_argument("settings", nargs="*", default=["{}"],
                        help="training, grid: IVCNFImputer settings, a dict literal; compare: a git revision; "
                             "grid-report: labels; transform-grid: module-constant settings, JSON dicts")
    parser.add_argument("--table", default=None)
    parser.add_argument("--rate", type=float, default=None, help="fit-time: MCAR rate (20%% by default)")
    parser.add_argument("--epochs", type=int, default=30, help="fit-time: epochs")
    parser.add_argument("--mechanism", default="MNAR 30%", help="step-scale: the grid's mechanism")
    parser.add_argument("--label", default="defaults", help="grid: the output file's label")
    parser.add_argument("--tables", nargs="+", choices=data.TABLES, default=None,
                        help="grid: only these tables' cases (all by default)")
    parser.add_argument("--workers", type=int, default=1, help="grid: tasks side by side, one thread each")
    parser.add_argument("--seeds", type=int, default=3, help="transform-grid: mask seeds per case")
    parser.add_argument("--fit", type=Path, default=Path("transform_time.skivcnf"),
                        help="transform-time: the saved fit to load, or to write on the first run")
    args = parser.parse_args(argv)
    if args.what == "compare":
        print(compare(args.settings[0]))
        return
    if args.what == "grid-report":
        print(grid_report(args.settings))
        return
    if args.what == "grid":
        grid(_settings(args.settings[0]), args.label, args.workers, args.tables)
        return
    if args.what == "transform-grid":
        print(transform_grid([json.loads(text) for text in args.settings], args.label, args.workers, args.seeds))
        return
    if args.what == "transform-grid-report":
        print(transform_grid_report(args.label))
        return
    torch.set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its one-time import is not the imputer's
    warnings.simplefilter("ignore")
    if args.what == "chord":
        cases = [(args.table, None, 20)] if args.table else [("breast_cancer", None, 20), ("digits", 0.5, 3),
                                                              ("digits", 0.9, 3)]
        lines = [line for table, rate, epochs in cases for line in chord(table, rate, epochs)]
    elif args.what == "chord-centre":
        lines = [line for table in ([args.table] if args.table else ["breast_cancer", "nonlinear", "wine"])
                 for line in chord_centre(table)]
    elif args.what == "chord-draws":
        lines = [line for table in ([args.table] if args.table else ["breast_cancer", "nonlinear", "wine"])
                 for line in chord_draws(table)]
    elif args.what == "fit-time":
        lines = fit_time(_settings(args.settings[0]), args.table or "breast_cancer", args.rate, args.epochs)
    elif args.what == "extra-rounds":
        lines = extra_rounds()
    elif args.what == "compile":
        lines = compiled()
    elif args.what == "step-scale":
        lines = step_scale(args.table or "nonlinear", args.mechanism)
    elif args.what == "threads":
        lines = threads()
    elif args.what == "fallback":
        lines = fallback()
    elif args.what == "transform-levers":
        lines = transform_levers(args.table or "breast_cancer")
    elif args.what == "transform-time":
        lines = transform_time(args.fit)
    elif args.what == "logdet":
        lines = logdet_methods()
    elif args.what == "peak":
        lines = peak()
    elif args.what == "draws":
        lines = [line for table in ([args.table] if args.table else ["breast_cancer", "nonlinear"])
                 for line in draws(table)]
    else:
        lines = training(_settings(args.settings[0]), args.table or "breast_cancer")
    for line in lines:
        print(json.dumps(line))


if __name__ == "__main__":
    main()
