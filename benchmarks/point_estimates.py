"""Point imputations from the same draws: the weighted mean, the posterior's plain mean, the shrunk mean.

The measurements behind docs/benchmarks.md, "Point imputations shrunk toward the posterior's
mean", one thread. Run from the repository root::

    python -m benchmarks.point_estimates tables                 # the grid's cells, RMSE of each estimator
    python -m benchmarks.point_estimates digits --rate 0.9      # the suite's digits protocol: accuracy too
    python -m benchmarks.point_estimates digits_peers --rate 0.9   # the same for the mean and MICE
    python -m benchmarks.point_estimates report                 # the tables of the docs

Each fit is the default imputer's; its point imputations are then computed three ways from one
set of :func:`skivcnf._drawing.iter_draws` draws (``transform``'s keys, draws and extra rounds):
the self-normalised importance-weighted mean (the default before), the plain mean of the
posterior's own first-round draws, and :func:`skivcnf.conditional.shrunk_mean` (the default
now). ``tables`` appends a record per (table, mechanism, mask seed) of :data:`CELLS` to
``point_tables.jsonl``; ``digits`` fits on the incomplete training split of the suite's
protocol (:func:`benchmarks.sections.digits_protocol`: its mask, model seed and classifier), then
scores the classifier trained on each estimator's training imputations on its test imputations,
and repeats the weighted mean from another random stream, whose difference from the first gives
each entry's Monte Carlo error; one record per rate in ``point_digits.jsonl``. A rerun skips
stored records. ``digits_peers``: the mean's and MICE's imputations (the suite's peers) under the
same protocol, scored the same two ways (``point_digits_peers.jsonl``).
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from skivcnf import IVCNFImputer
from skivcnf._drawing import iter_draws, point_imputations, snap_categories
from skivcnf._utils import RandomStreams
from skivcnf.conditional import conditional_mean

from . import data, masks, sections
from .measure import rmse
from .uncertainty import _append, _records

OUT = Path(__file__).parent / "results" / "uncertainty"
#: (table, mechanism, mask seeds) of ``tables``.
CELLS = [("breast_cancer", "MCAR 20%", 3), ("mixture", "MCAR 20%", 3), ("nonlinear", "MCAR 20%", 2),
         ("breast_cancer", "MCAR 50%", 1), ("wine", "MCAR 20%", 1), ("wine", "MCAR 50%", 1),
         ("diabetes", "MAR 30%", 1), ("diabetes", "MCAR 50%", 1), ("gaussian", "MAR 30%", 1),
         ("mixture", "MNAR 30%", 1), ("nonlinear", "MAR 30%", 1)]
ESTIMATORS = ("weighted", "plain", "shrunk")


def estimates(imputer, X):
    """``X`` completed by each of :data:`ESTIMATORS`, from one set of ``transform``'s draws."""
    X, table, mask = imputer._validate_input(X, reset=False)
    parts = {name: [] for name in ESTIMATORS}
    for result, _ in iter_draws(imputer, X, imputer.n_draws, imputer._row_keys("transform", X), "the means"):
        draws = snap_categories(imputer, result.draws)
        parts["weighted"].append(conditional_mean(draws)[0])
        plain = draws._replace(log_weight=torch.log(result.first_weights))
        parts["plain"].append(conditional_mean(plain)[0])
        parts["shrunk"].append(point_imputations(imputer, result, imputer.n_draws))  # transform's own
    return {name: imputer._completed(table, mask, torch.cat(p).cpu().double().numpy(), X)
            for name, p in parts.items()}


def tables(path=OUT / "point_tables.jsonl"):
    """A record per cell of :data:`CELLS` and mask seed: seconds of the fit, RMSE of each estimator."""
    done = {(line["table"], line["mechanism"], line["seed"]) for line in _records(path)}
    for table, mechanism, seeds in CELLS:
        ds = data.load(table)
        for seed in range(seeds):
            if (table, mechanism, seed) in done:
                continue
            mask = masks.make_mask(mechanism, ds.X, seed)
            X_missing = np.where(mask, np.nan, ds.X)
            start = time.perf_counter()
            imputer = IVCNFImputer(random_state=seed).fit(X_missing)
            line = {"table": table, "mechanism": mechanism, "seed": seed,
                    "fit_seconds": round(time.perf_counter() - start, 1)}
            line.update({name: rmse(ds.X, out, mask) for name, out in estimates(imputer, X_missing).items()})
            _append(path, line)


def digits(rate, path=OUT / "point_digits.jsonl"):
    """The suite's digits protocol at ``rate``: each estimator's classifier accuracy and test RMSE."""
    if any(line["rate"] == rate for line in _records(path)):
        return
    X_train, X_test, y_train, y_test = sections.digits_split()
    m_train, m_test = sections.digits_masks(X_train, X_test, rate)
    train, test = np.where(m_train, np.nan, X_train), np.where(m_test, np.nan, X_test)
    imputer = sections._build_imputer("IVCNFImputer", 0, False)
    start = time.perf_counter()
    imputer.fit(train)
    line = {"rate": rate, "fit_seconds": round(time.perf_counter() - start, 1),
            "epochs": len(imputer.history_.train_loss)}
    start = time.perf_counter()
    fitted_on = estimates(imputer, train)
    scored_on = estimates(imputer, test)
    line["estimate_seconds"] = round(time.perf_counter() - start, 1)

    def score(train_out, test_out):
        accuracy = LogisticRegression(max_iter=2000).fit(train_out, y_train).score(test_out, y_test)
        return {"accuracy": float(accuracy), "rmse": rmse(X_test, test_out, m_test)}

    line.update({name: score(fitted_on[name], scored_on[name]) for name in ESTIMATORS})
    # The weighted mean again from independent streams: the gap between the two is its Monte Carlo error.
    imputer._streams = RandomStreams(imputer._streams.root_seed + 1)
    again = estimates(imputer, train), estimates(imputer, test)
    line["weighted, another stream"] = score(again[0]["weighted"], again[1]["weighted"])
    line["weighted, mean of the two streams"] = score((again[0]["weighted"] + fitted_on["weighted"]) / 2,
                                                      (again[1]["weighted"] + scored_on["weighted"]) / 2)
    gap = (again[1]["weighted"] - scored_on["weighted"])[m_test]
    line["weighted monte carlo sd"] = float(np.sqrt(np.mean(gap ** 2) / 2))
    line["imputed sd"] = float(np.std(scored_on["weighted"][m_test]))
    complete = LogisticRegression(max_iter=2000).fit(X_train, y_train)
    line["complete-data classifier"] = {name: float(complete.score(scored_on[name], y_test)) for name in ESTIMATORS}
    _append(path, line)


def digits_peers(rate, path=OUT / "point_digits_peers.jsonl"):
    """The suite's mean and MICE peers under :func:`digits`' protocol: accuracy, test RMSE, and the
    accuracy of a classifier fitted on complete digits."""
    X_train, X_test, y_train, y_test = sections.digits_split()
    m_train, m_test = sections.digits_masks(X_train, X_test, rate)
    train, test = np.where(m_train, np.nan, X_train), np.where(m_test, np.nan, X_test)
    complete = LogisticRegression(max_iter=2000).fit(X_train, y_train)
    done = {(line["rate"], line["imputer"]) for line in _records(path)}
    for name in ("mean", "MICE"):
        if (rate, name) in done:
            continue
        model = sections._build_imputer(name, 0, False)
        train_out = model.fit_transform(train)
        test_out = model.transform(test)
        accuracy = LogisticRegression(max_iter=2000).fit(train_out, y_train).score(test_out, y_test)
        _append(path, {"rate": rate, "imputer": name, "accuracy": float(accuracy),
                       "rmse": rmse(X_test, test_out, m_test),
                       "complete-data classifier": float(complete.score(test_out, y_test))})


def report(tables_path=OUT / "point_tables.jsonl", digits_path=OUT / "point_digits.jsonl",
           peers_path=OUT / "point_digits_peers.jsonl"):
    """The docs' tables: RMSE per cell (means over mask seeds) and the digits rates."""
    lines = _records(tables_path)
    rows = ["| table | missingness | weighted (before) | plain | shrunk (default) | shrunk / weighted | seeds |",
            "|---|---|---|---|---|---|---|"]
    ratios = []
    for table, mechanism, _ in CELLS:
        cell = [line for line in lines if line["table"] == table and line["mechanism"] == mechanism]
        if cell:
            mean = {name: np.mean([line[name] for line in cell]) for name in ESTIMATORS}
            ratios.append(mean["shrunk"] / mean["weighted"])
            rows.append(f"| {table} | {mechanism} | " + " | ".join(f"{mean[n]:.4f}" for n in ESTIMATORS)
                        + f" | {ratios[-1]:.4f} | {len(cell)} |")
    if ratios:
        rows.append(f"\nshrunk / weighted over {len(ratios)} cells: geometric mean "
                    f"{np.exp(np.mean(np.log(ratios))):.4f}, range {min(ratios):.4f}-{max(ratios):.4f}.")
    for line in _records(digits_path):
        rows += ["", f"Digits, {line['rate']:.0%} missing ({line['epochs']} epochs, fit {line['fit_seconds']:.0f} s):",
                 "", "| point imputation | classifier accuracy | test RMSE | complete-data classifier |",
                 "|---|---|---|---|"]
        for name in [*ESTIMATORS, "weighted, another stream", "weighted, mean of the two streams"]:
            complete = line["complete-data classifier"].get(name)
            rows.append(f"| {name} | {line[name]['accuracy']:.3f} | {line[name]['rmse']:.4f} | "
                        + (f"{complete:.3f} |" if complete is not None else "- |"))
        for peer in _records(peers_path):
            if peer["rate"] == line["rate"]:
                rows.append(f"| {peer['imputer']} (peer) | {peer['accuracy']:.3f} | {peer['rmse']:.4f} | "
                            f"{peer['complete-data classifier']:.3f} |")
        rows.append(f"\nMonte Carlo sd of a weighted test entry {line['weighted monte carlo sd']:.4f} "
                    f"(the imputed entries' sd {line['imputed sd']:.4f}).")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["tables", "digits", "digits_peers", "report"])
    parser.add_argument("--rate", type=float, default=0.9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    if args.what == "tables":
        tables()
    elif args.what == "digits":
        digits(args.rate)
    elif args.what == "digits_peers":
        digits_peers(args.rate)
    print(report())


if __name__ == "__main__":
    main()
