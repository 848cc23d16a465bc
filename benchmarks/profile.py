"""Where IVCNFImputer's time goes: fit and transform broken down by phase, one thread.

Run from the repository root::

    python -m benchmarks.profile                          # the three tables below, JSON to results/profile
    python -m benchmarks.profile --table breast_cancer    # one table
    python -m benchmarks.profile --label after            # name the output files
    python -m benchmarks.profile --report before after    # a Markdown table of stored profiles

``fit`` and ``transform`` each run under :mod:`cProfile`; a phase's seconds are the
cumulative time of the functions that implement it (inclusive, so a phase reached from
inside another is counted in the innermost one listed first; see ``PHASES``). What no phase
claims is "other" (Python around the steps, the optimiser, data movement). cProfile itself
adds overhead of a few percent on these calls (many small tensor operations), so the shares
matter more than the seconds; the wall time without the profiler is reported beside them.
"""

import argparse
import cProfile
import json
import pstats
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from skivcnf import IVCNFImputer
from skivcnf.conditional import fitting

from . import data, masks
from .measure import rmse

OUT = Path(__file__).parent / "results" / "profile"

#: (phase, [(module path suffix, function name), ...]): a phase's time is the cumulative time
#: of its functions (the implicit-gradient solve is taken out of the backward pass). The
#: held-out evaluation of early stopping is timed apart, as "validation".
PHASES = [
    ("constraint solve", [("conditional/solvers.py", "solve_constraint"),
                          ("conditional/warm_starts.py", "chord_start")]),
    ("implicit-gradient solve (backward)", [("conditional/implicit.py", "backward")]),
    ("Jacobian and log-determinants", [("conditional/hidden_block.py", "log_prob_and_hidden_jacobian")]),
    ("posterior network", [("conditional/posteriors.py", "forward")]),
    ("backward pass (autograd)", [("torch/autograd/__init__.py", "backward")]),
    ("optimiser step", [("torch/optim/optimizer.py", "wrapper")]),
]

#: The tables profiled: (name, rows, columns) with how much of each to run so that a profile
#: takes about a minute; the per-phase shares of an epoch do not depend on the epoch count.
TABLES = {
    "breast_cancer": dict(max_epochs=None, transform_rows=None),
    "digits": dict(max_epochs=3, transform_rows=300),
    "gaussian_10000x10": dict(max_epochs=3, transform_rows=2000),
}


def _table(name):
    if name == "gaussian_10000x10":
        ds = data.correlated_gaussian(10_000, 10, seed=10_010)
        return ds.X, masks.mcar(ds.X, 0.2, np.random.default_rng(0))
    ds = data.digits() if name == "digits" else data.load(name)
    return ds.X, masks.make_mask("MCAR 20%", ds.X, 0)


def _cumulative(stats, suffix, function):
    total = 0.0
    for (path, _, name), (_, _, _, cumulative, _) in stats.stats.items():
        if name == function and path.replace("\\", "/").endswith(suffix):
            total += cumulative
    return total


def _breakdown(profile, wall):
    """Seconds per phase from a profile: inclusive times, each phase net of the phases before it."""
    stats = pstats.Stats(profile)
    inclusive = {phase: sum(_cumulative(stats, *f) for f in functions) for phase, functions in PHASES}
    phases = dict(inclusive)
    phases["backward pass (autograd)"] -= inclusive["implicit-gradient solve (backward)"]
    profiled = stats.total_tt
    phases["other (Python, data movement)"] = profiled - sum(phases.values())
    scale = wall / profiled if profiled else 1.0
    return {phase: round(seconds * scale, 3) for phase, seconds in phases.items()}


class _ValidationApart:
    """Pause ``profile`` during the held-out evaluations of early stopping and time them apart."""

    def __init__(self, profile):
        self.profile, self.seconds = profile, 0.0

    def __enter__(self):
        self._original = fitting.held_out_bound_loss

        def timed_apart(*args, **kwargs):
            self.profile.disable()
            start = time.perf_counter()
            try:
                return self._original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.profile.enable()

        fitting.held_out_bound_loss = timed_apart
        return self

    def __exit__(self, *exc):
        fitting.held_out_bound_loss = self._original


def profile_table(name, **settings):
    """Profile ``fit`` and ``transform`` of the default imputer on ``name`` (20% MCAR, mask seed 0)."""
    X, mask = _table(name)
    X_missing = np.where(mask, np.nan, X)
    spec = TABLES[name]
    imputer = IVCNFImputer(random_state=0, **settings)
    if spec["max_epochs"] is not None:
        imputer.set_params(max_epochs=spec["max_epochs"], early_stopping=False)
    rows = slice(None) if spec["transform_rows"] is None else slice(spec["transform_rows"])
    record = {"table": name, "rows": X.shape[0], "columns": X.shape[1], "settings": settings, **spec}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for phase, call, args in [("fit", imputer.fit, (X_missing,)), ("transform", imputer.transform,
                                                                         (X_missing[rows],))]:
            profile = cProfile.Profile()
            with _ValidationApart(profile) as validation:
                start = time.perf_counter()
                profile.enable()
                out = call(*args)
                profile.disable()
                wall = time.perf_counter() - start
            phases = _breakdown(profile, wall - validation.seconds)
            if validation.seconds:
                phases["validation (held-out bound)"] = round(validation.seconds, 3)
            record[phase] = {"seconds": round(wall, 2), "phases": phases}
    record["fit"]["epochs"] = len(imputer.history_.train_loss)
    record["fit"]["steps"] = imputer.history_.n_steps
    record["transform"]["rows"] = len(out)
    record["transform"]["rmse"] = rmse(X[rows], out, mask[rows])
    return record


def report(labels):
    """Markdown: seconds per phase of fit and transform, one column per stored profile and table."""
    profiles = {label: json.loads((OUT / f"{label}.json").read_text()) for label in labels}
    columns = [(label, record) for label in labels for record in profiles[label]]
    header = [f"{record['table']} ({label})" for label, record in columns]
    lines = []
    for call in ("fit", "transform"):
        phases = list(dict.fromkeys(phase for _, record in columns for phase in record[call]["phases"]))
        lines += [f"| {call} | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
        for phase in phases:
            cells = []
            for _, record in columns:
                seconds, total = record[call]["phases"].get(phase, 0.0), record[call]["seconds"]
                cells.append(f"{seconds:.2f} s ({100 * seconds / total:.0f}%)" if seconds else "-")
            lines.append(f"| {phase} | " + " | ".join(cells) + " |")
        extra = [f"{r[call]['seconds']:.1f} s" + (f", {r[call]['epochs']} epochs" if call == "fit" else
                                                  f", {r[call]['rows']} rows, RMSE {r[call]['rmse']:.3f}")
                 for _, r in columns]
        lines += ["| **total** | " + " | ".join(extra) + " |", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", nargs="+", choices=list(TABLES), default=list(TABLES))
    parser.add_argument("--label", default="current", help="output file name stem")
    parser.add_argument("--report", nargs="+", metavar="LABEL", help="print a table of stored profiles and stop")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return
    torch.set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its one-time import is not the imputer's
    OUT.mkdir(parents=True, exist_ok=True)
    records = []
    for name in args.table:
        record = profile_table(name)
        records.append(record)
        print(json.dumps(record, indent=1))
    (OUT / f"{args.label}.json").write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
