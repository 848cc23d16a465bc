"""Classification with missing entries: IVCNFClassifier against the usual pipelines, one thread.

Run from the repository root::

    python -m benchmarks.classification                       # the whole grid (about an hour on 2 cores)
    python -m benchmarks.classification --methods "IVCNFClassifier (MLP head)" --data wine --folds 0 1
                                                              # some cells; the others are kept
    python -m benchmarks.classification --report-only         # the summary from the stored folds

Protocol: breast cancer and wine (``benchmarks.data``, standardised) under MCAR 20%, MCAR 50% and
MAR 30% (``benchmarks.masks``: one mask per data set and scenario, mask seed 0, drawn over the
whole table before the split), 5-fold stratified cross-validation (``StratifiedKFold(5,
shuffle=True, random_state=0)``, the same folds for every method), accuracy and log-loss on the
held-out fold. Anchors: ``HistGradientBoostingClassifier`` on the incomplete rows (its native
missing-value support), ``IterativeImputer`` then a logistic regression, ``IVCNFImputer`` then a
logistic regression (both after a ``StandardScaler``; ``LogisticRegression(max_iter=1000)``).
Contenders: ``IVCNFClassifier`` with the paper's head (a batch-norm and a linear layer) and with an
MLP head ``head_hidden_layer_sizes=(64,)``, both on the latent code (``head_input="latent"``), and
the MLP head on the completed rows (``head_input="data"``, the default), and that head with the
flow's linear map (``linear_layer=True``, the default before digits showed the map's cost);
measured and not kept, a linear head on the completed rows, the predictive loss (with the map,
as measured) and the MLP head with an L2 penalty (``head_alpha`` 0.1, 1, 10). ``random_state=0``
everywhere, one thread (torch and OpenMP).

Each fit appends (or replaces) one row of ``<out>/folds.csv`` (data, scenario, method, fold,
accuracy, log_loss, fit_seconds, predict_seconds; the file is rewritten after every fit, under a
lock, so a partial or concurrent run is kept), and the run's command, date and machine go to
``<out>/provenance.json``. ``<out>/summary.md`` then gives, per case and method, the mean and
standard error (sd / sqrt(folds)) over the folds, and for each IVCNFClassifier variant whether
its mean accuracy is within one standard error (the best anchor's) of the best anchor's mean
accuracy and its mean log-loss no worse than the best anchor's (the lowest anchor mean).
"""

import argparse
import contextlib
import csv
import datetime
import fcntl
import json
import os
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from skivcnf import IVCNFClassifier, IVCNFImputer

from . import data, masks

OUT = Path(__file__).parent / "results" / "classification"
DATA = ["breast_cancer", "wine"]
SCENARIOS = ["MCAR 20%", "MCAR 50%", "MAR 30%"]
MASK_SEED = 0
N_FOLDS = 5
SEED = 0
FIELDS = ["data", "scenario", "method", "fold", "accuracy", "log_loss", "fit_seconds", "predict_seconds"]
KEY = ("data", "scenario", "method", "fold")


def _logistic():
    return LogisticRegression(max_iter=1000)


ANCHORS = {
    "HistGradientBoosting": lambda: HistGradientBoostingClassifier(random_state=SEED),
    "IterativeImputer + LR": lambda: make_pipeline(IterativeImputer(random_state=SEED), StandardScaler(),
                                                   _logistic()),
    "IVCNFImputer + LR": lambda: make_pipeline(IVCNFImputer(random_state=SEED), StandardScaler(), _logistic()),
}
# Every contender pins linear_layer, so that its name keeps meaning what was measured whatever the
# classifier's default (it had the flow's linear map for a while; docs/benchmarks.md, "Classification").
CONTENDERS = {
    "IVCNFClassifier (linear head)": lambda: IVCNFClassifier(head_hidden_layer_sizes=(), head_input="latent",
                                                             linear_layer=False, random_state=SEED),
    "IVCNFClassifier (MLP head)": lambda: IVCNFClassifier(head_hidden_layer_sizes=(64,), head_input="latent",
                                                          linear_layer=False, random_state=SEED),
    "IVCNFClassifier (MLP head on data)": lambda: IVCNFClassifier(head_hidden_layer_sizes=(64,), head_input="data",
                                                                  linear_layer=False, random_state=SEED),
    # The default is the MLP head on data above; this one adds the flow's linear map.
    "IVCNFClassifier (MLP head on data, linear_layer=True)": lambda: IVCNFClassifier(linear_layer=True,
                                                                                     random_state=SEED),
    # Measured and not kept (docs/benchmarks.md, "Classification"): a linear head, the predictive loss, and an L2
    # penalty on the head.
    "IVCNFClassifier (linear head on data)": lambda: IVCNFClassifier(head_hidden_layer_sizes=(), head_input="data",
                                                                     linear_layer=False, random_state=SEED),
    "IVCNFClassifier (MLP head on data, classification_loss='predictive')":
        lambda: IVCNFClassifier(classification_loss="predictive", linear_layer=True, random_state=SEED),
    **{f"IVCNFClassifier (MLP head on data, head_alpha={alpha})":
       (lambda alpha=alpha: IVCNFClassifier(head_alpha=alpha, linear_layer=False, random_state=SEED))
       for alpha in (0.1, 1.0, 10.0)},
}
METHODS = {**ANCHORS, **CONTENDERS}


# ------------------------------------------------------------------------------------------------- storage


@contextlib.contextmanager
def _locked(out):
    """An exclusive lock on ``<out>/.lock`` (several runs may write the same folds.csv)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(out):
    path = Path(out) / "folds.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["fold"] = int(row["fold"])
        for field in FIELDS[4:]:
            row[field] = float(row[field])
    return rows


def _store(out, row):
    """Merge ``row`` into ``<out>/folds.csv`` (replacing a stored row with its key) and rewrite the file."""
    out = Path(out)
    with _locked(out):
        rows = {tuple(r[k] for k in KEY): r for r in _read(out)}
        rows[tuple(row[k] for k in KEY)] = row
        order = {name: i for i, name in enumerate(METHODS)}
        ordered = sorted(rows.values(), key=lambda r: (r["data"], r["scenario"], order.get(r["method"], 99),
                                                       r["method"], r["fold"]))
        tmp = out / "folds.csv.tmp"
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(ordered)
        tmp.replace(out / "folds.csv")


def _record_provenance(out, command):
    out = Path(out)
    with _locked(out):
        path = out / "provenance.json"
        runs = json.loads(path.read_text()) if path.exists() else []
        runs.append({"command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(" ", "seconds"),
                     "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
                                f"Python {platform.python_version()}, torch {torch.__version__}, one thread"})
        path.write_text(json.dumps(runs, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------- running


def _case(name, scenario):
    """The table's rows with the scenario's mask applied (NaN = missing), its labels and the folds."""
    table = data.load(name)
    X = table.X.copy()
    X[masks.make_mask(scenario, table.X, MASK_SEED)] = np.nan
    folds = list(StratifiedKFold(N_FOLDS, shuffle=True, random_state=SEED).split(X, table.y))
    return X, table.y, folds


def run_one(X, y, train, test, method):
    """Fit ``method`` on the training rows, score it on the test rows (accuracy, log-loss, seconds)."""
    model = METHODS[method]()
    start = time.perf_counter()
    model.fit(X[train], y[train])
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    proba = model.predict_proba(X[test])
    predict_seconds = time.perf_counter() - start
    classes = model.classes_
    return dict(accuracy=accuracy_score(y[test], classes[np.argmax(proba, axis=1)]),
                log_loss=log_loss(y[test], proba, labels=classes), fit_seconds=fit_seconds,
                predict_seconds=predict_seconds)


def run(out, data_names, scenarios, methods, folds, skip_done):
    for name in data_names:
        for scenario in scenarios:
            X, y, splits = _case(name, scenario)
            for method in methods:
                for fold in folds:
                    # read before every cell: another run may have stored it meanwhile
                    if skip_done and (name, scenario, method, fold) in {tuple(r[k] for k in KEY) for r in _read(out)}:
                        continue
                    train, test = splits[fold]
                    result = run_one(X, y, train, test, method)
                    row = dict(data=name, scenario=scenario, method=method, fold=fold, **result)
                    _store(out, row)
                    print(f"{name:14s} {scenario:9s} {method:30s} fold {fold}  accuracy {result['accuracy']:.3f}  "
                          f"log-loss {result['log_loss']:.3f}  fit {result['fit_seconds']:.1f} s  "
                          f"predict {result['predict_seconds']:.2f} s", flush=True)


# ------------------------------------------------------------------------------------------------- summary


def _stats(values):
    values = np.asarray(values, float)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return values.mean(), se


def _pm(mean, se):
    return f"{mean:.3f}" if np.isnan(se) else f"{mean:.3f} ± {se:.3f}"


def summarise(rows):
    """``[(data, scenario, method, n, (acc mean, se), (log-loss mean, se), fit s, predict s, verdict)]``."""
    cases = {}
    for r in rows:
        cases.setdefault((r["data"], r["scenario"]), {}).setdefault(r["method"], []).append(r)
    order = {name: i for i, name in enumerate(METHODS)}
    table = []
    for (name, scenario) in sorted(cases, key=lambda c: (DATA.index(c[0]) if c[0] in DATA else 99,
                                                         SCENARIOS.index(c[1]) if c[1] in SCENARIOS else 99, c)):
        by_method = cases[(name, scenario)]
        stats = {m: (len(rs), _stats([r["accuracy"] for r in rs]), _stats([r["log_loss"] for r in rs]),
                     np.mean([r["fit_seconds"] for r in rs]), np.mean([r["predict_seconds"] for r in rs]))
                 for m, rs in by_method.items()}
        anchors = [m for m in ANCHORS if m in stats and stats[m][0] == N_FOLDS]
        best = max(anchors, key=lambda m: stats[m][1][0]) if anchors else None
        best_loss = min(stats[m][2][0] for m in anchors) if anchors else None
        for method in sorted(by_method, key=lambda m: order.get(m, 99)):
            n, acc, loss, fit, predict = stats[method]
            verdict = ""
            if method in CONTENDERS:
                if best is None or n < N_FOLDS:
                    verdict = "n/a (folds missing)"
                else:
                    acc_ok = acc[0] >= stats[best][1][0] - stats[best][1][1]
                    loss_ok = loss[0] <= best_loss
                    verdict = ("yes" if acc_ok and loss_ok else
                               "no (" + ", ".join(w for w, ok in (("accuracy", acc_ok), ("log-loss", loss_ok))
                                                  if not ok) + ")")
                    if len(anchors) < len(ANCHORS):
                        verdict += f" [{len(anchors)} of {len(ANCHORS)} anchors]"
            elif method == best:
                verdict = "best anchor (accuracy)"
            table.append((name, scenario, method, n, acc, loss, fit, predict, verdict))
    return table


def _markdown(rows, out):
    header = ["data", "scenario", "method", "folds", "accuracy", "log-loss", "fit s", "predict s",
              "within 1 SE of the best anchor, log-loss no worse"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, scenario, method, n, acc, loss, fit, predict, verdict in summarise(rows):
        lines.append(f"| {name} | {scenario} | {method} | {n} | {_pm(*acc)} | {_pm(*loss)} | {fit:.1f} | "
                     f"{predict:.2f} | {verdict} |")
    heads = _heads_table(rows)
    path = Path(out) / "provenance.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    produced = "\n".join(f"- `{r['command']}` ({r['date']}; {r['machine']})" for r in runs) or "- not recorded"
    return ("# Classification with missing entries\n\n"
            f"Mean ± standard error (sd / sqrt(n)) over the folds of 5-fold stratified cross-validation; "
            f"seconds are means per fold, one thread. Produced by:\n\n{produced}\n\n"
            "Summary written by `python -m benchmarks.classification --report-only"
            + ("" if Path(out) == OUT else f" --out {out}") + "`.\n\n" + "\n".join(lines) + "\n" + heads)


def _heads_table(rows):
    """The two IVCNFClassifier heads side by side, per case (Markdown; empty unless both have a case)."""
    cells = {(r[0], r[1], r[2]): r for r in summarise(rows)}
    linear, mlp = list(CONTENDERS)[:2]
    cases = [c for c in dict.fromkeys((r[0], r[1]) for r in cells.values())
             if (*c, linear) in cells and (*c, mlp) in cells]
    if not cases:
        return ""
    header = ["data", "scenario", "accuracy: linear / MLP", "log-loss: linear / MLP", "fit s: linear / MLP",
              "verdict: linear / MLP"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case in cases:
        a, b = cells[(*case, linear)], cells[(*case, mlp)]
        lines.append(f"| {case[0]} | {case[1]} | {a[4][0]:.3f} / {b[4][0]:.3f} | {a[5][0]:.3f} / {b[5][0]:.3f} | "
                     f"{a[6]:.1f} / {b[6]:.1f} | {a[8]} / {b[8]} |")
    return "\n## The two heads of IVCNFClassifier\n\n" + "\n".join(lines) + "\n"


def _figure(rows, out):
    """``<out>/accuracy.png``: mean accuracy and log-loss (± 1 SE) per case and method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows)
    cases = list(dict.fromkeys((r[0], r[1]) for r in summary))
    methods = [m for m in METHODS if any(r[2] == m for r in summary)]
    if not cases:
        return ""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        cells = {(r[0], r[1]): r for r in summary if r[2] == method}
        for ax, index in zip(axes, (4, 5), strict=True):
            xs = [i + k * width for i, c in enumerate(cases) if c in cells]
            ms = [cells[c][index][0] for c in cases if c in cells]
            ses = [np.nan_to_num(cells[c][index][1]) for c in cases if c in cells]
            ax.bar(xs, ms, width, yerr=ses, label=method, capsize=2)
    for ax, title in zip(axes, ("accuracy", "log-loss"), strict=True):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
        ax.set_xticklabels([f"{d}\n{s}" for d, s in cases], fontsize=7)
        ax.set_title(title)
    axes[0].set_ylim(0.5, 1.0)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(out) / "accuracy.png", dpi=110)
    plt.close(fig)
    return "\n![accuracy and log-loss per case and method](accuracy.png)\n"


def write_summary(out):
    rows = _read(out)
    markdown = _markdown(rows, out)
    with contextlib.suppress(ImportError):
        markdown += _figure(rows, out)
    (Path(out) / "summary.md").write_text(markdown)
    return markdown


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help="results folder (default: %(default)s)")
    parser.add_argument("--data", nargs="+", choices=DATA, default=DATA)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=SCENARIOS)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--folds", nargs="+", type=int, choices=range(N_FOLDS), default=list(range(N_FOLDS)))
    parser.add_argument("--skip-done", action="store_true", help="skip the cells already in folds.csv")
    parser.add_argument("--report-only", action="store_true", help="write summary.md from folds.csv and stop")
    args = parser.parse_args()
    if not args.report_only:
        torch.set_num_threads(1)
        warnings.simplefilter("ignore")
        _record_provenance(args.out, "python -m benchmarks.classification " + shlex.join(sys.argv[1:]))
        with threadpool_limits(1):  # OpenMP / BLAS (HistGradientBoosting, IterativeImputer): one thread too
            run(args.out, args.data, args.scenarios, args.methods, args.folds, args.skip_done)
    args.out.mkdir(parents=True, exist_ok=True)
    print(write_summary(args.out))


if __name__ == "__main__":
    main()
