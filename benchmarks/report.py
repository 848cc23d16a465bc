"""Markdown tables and PNG plots from the suite's stored records (``<out>/<section>.jsonl``)."""

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .measure import exact_sampler_coverage

OURS = "IVCNFImputer"
PROVENANCE = "provenance.json"


def _records(out, section):
    path = Path(out) / f"{section}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, out, name, caption):
    """Write ``fig`` to ``<out>/<name>`` and return the Markdown that shows it."""
    fig.tight_layout()
    fig.savefig(Path(out) / name, dpi=110)
    _pyplot().close(fig)
    return f"\n![{caption}]({name})\n"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _mean_sd(values, digits=3):
    values = np.asarray(values, float)
    mean = f"{values.mean():.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ± {values.std():.{digits}f}"


# ---------------------------------------------------------------------------------------------- accuracy


def _sound_cases(records):
    """``{(table, mechanism): {imputer: [records over seeds]}}`` of the tasks that ran soundly."""
    cases = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("status") == "ok":
            cases[(r["table"], r["mechanism"])][r["imputer"]].append(r)
    return cases


def _failures(records):
    """The table of the peers that failed or crashed, grouped by what happened ("" if none)."""
    bad = [r for r in records if r.get("status") != "ok"]
    if not bad:
        return ""
    grouped = defaultdict(list)
    for r in bad:
        grouped[(r["imputer"], r.get("error") or r["status"])].append(f"{r['table']} {r['mechanism']} s{r['seed']}")
    return "\n### Peers that failed or crashed\n\n" + _table(
        ["imputer", "what happened", "cases"],
        [[n, why.replace("|", "/"), f"{len(c)}: " + ", ".join(c[:4]) + (" ..." if len(c) > 4 else "")]
         for (n, why), c in grouped.items()])


def accuracy_summary(records):
    """Per case: our RMSE, the best peer's, the ratio, our rank; and each imputer's mean rank."""
    cases = _sound_cases(records)
    rows, ranks = [], defaultdict(list)
    for (table, mechanism), by in cases.items():
        means = {name: np.mean([r["rmse"] for r in rs]) for name, rs in by.items()}
        order = sorted(means, key=means.get)
        for i, name in enumerate(order):
            ranks[name].append(i + 1)
        peers = {n: v for n, v in means.items() if n != OURS}
        if OURS not in means or not peers:
            continue
        best = min(peers, key=peers.get)
        ours = by[OURS]
        oracle = np.mean([r["oracle_rmse"] for r in ours]) if "oracle_rmse" in ours[0] else None
        rows.append(dict(table=table, mechanism=mechanism, ours=means[OURS], best=best, best_rmse=peers[best],
                         ratio=means[OURS] / peers[best], rank=order.index(OURS) + 1, n=len(order),
                         oracle_ratio=None if oracle is None else means[OURS] / oracle,
                         best_oracle_ratio=None if oracle is None else peers[best] / oracle,
                         seconds=np.mean([r["seconds"] for r in ours]),
                         best_seconds=np.mean([r["seconds"] for r in by[best]])))
    return rows, ranks


def time_ratios(records, peers=("MissForest-like", "MICE")):
    """One line: IVCNF's fit + transform seconds over each peer's, geometric mean over the cases both ran."""
    cases = _sound_cases(records)
    parts = []
    for peer in peers:
        ratios = [np.mean([r["seconds"] for r in by[OURS]]) / np.mean([r["seconds"] for r in by[peer]])
                  for by in cases.values() if OURS in by and peer in by]
        if ratios:
            parts.append(f"{np.exp(np.log(ratios).mean()):.2f}x {peer}'s (range {min(ratios):.2f}-{max(ratios):.2f}, "
                         f"{len(ratios)} cases)")
    return ("IVCNF's time (fit + transform, geometric mean of the per-case ratios of mean seconds): "
            + "; ".join(parts) + ".\n") if parts else ""


def _beyond_range(records):
    """IVCNF's imputations that leave their column's observed range, against the oracle's."""
    ours = [r for r in records if r["imputer"] == OURS and r.get("status") == "ok" and "beyond_range_sd" in r]
    if not ours:
        return ""
    worst = max(ours, key=lambda r: r["beyond_range_sd"])
    # 3 sds is the bound the imputer clips to; 1e-6 allows for its float32 arithmetic.
    over = [r for r in ours if r["beyond_range_sd"] > 3 + 1e-6
            and r["beyond_range_sd"] > r.get("oracle_beyond_range_sd", 0)]
    return (f"Imputed entries beyond their column's observed range at fit (column sds): IVCNF's largest over the "
            f"{len(ours)} fits is {worst['beyond_range_sd']:.2f} ({worst['table']}, {worst['mechanism']}, seed "
            f"{worst['seed']}); fits with an entry more than 3 sds beyond (1e-6 allowed for float32), further than the "
            f"oracle's: {len(over)}.\n")


def accuracy_report(records, out):
    if not records:
        return ""
    rows, ranks = accuracy_summary(records)
    text = "### Summary: IVCNFImputer against the best peer of each case\n\n"
    text += ("RMSE on the masked entries (standard deviations of each column for the real and non-linear "
             "tables), mean over the mask seeds each imputer ran; rank among the imputers that ran soundly on the "
             "case (1 = lowest RMSE).\n\n")
    text += _table(
        ["table", "missingness", "IVCNF RMSE", "best peer", "its RMSE", "IVCNF / best", "IVCNF rank",
         "IVCNF / oracle", "best / oracle", "IVCNF s", "best peer s"],
        [[r["table"], r["mechanism"], f"{r['ours']:.4f}", r["best"], f"{r['best_rmse']:.4f}", f"{r['ratio']:.3f}",
          f"{r['rank']} of {r['n']}", "-" if r["oracle_ratio"] is None else f"{r['oracle_ratio']:.3f}",
          "-" if r["best_oracle_ratio"] is None else f"{r['best_oracle_ratio']:.3f}", f"{r['seconds']:.1f}",
          f"{r['best_seconds']:.1f}"] for r in rows])
    if rows:
        ratios = np.array([r["ratio"] for r in rows])
        text += (f"\nIVCNF is best in {int((ratios < 1).sum())} of {len(rows)} cases; geometric mean of "
                 f"IVCNF / best peer: {np.exp(np.log(ratios).mean()):.3f}.\n")
        text += time_ratios(records)
        text += _beyond_range(records)
    seconds, memory = defaultdict(list), defaultdict(list)
    for r in records:
        if r.get("status") == "ok":
            seconds[r["imputer"]].append(r["seconds"])
            memory[r["imputer"]].append(r["peak_mib"])
    text += "\n### Mean rank over the cases\n\n"
    text += _table(["imputer", "mean rank", "cases", "wins", "median s (fit+transform)", "median peak MiB"],
                   [[name, f"{np.mean(rk):.2f}", len(rk), sum(x == 1 for x in rk), f"{np.median(seconds[name]):.2f}",
                     f"{np.median(memory[name]):.0f}"]
                    for name, rk in sorted(ranks.items(), key=lambda kv: np.mean(kv[1]))])
    seeds = defaultdict(set)
    for r in records:
        seeds[r["imputer"]].add(r["seed"])
    few = sorted(n for n, ss in seeds.items() if len(ss) < max(len(v) for v in seeds.values()))
    text += ("\n### Every imputer, every case\n\nRMSE / MAE, mean ± sd over mask seeds"
             + (f" ({', '.join(few)}: mask seed 0 only, for time)" if few else "") + ".\n")
    by_table = defaultdict(lambda: defaultdict(dict))
    cases = _sound_cases(records)
    mechanisms = list(dict.fromkeys(mechanism for _, mechanism in cases))  # first-seen order
    for (table, mechanism), by in cases.items():
        for name, rs in by.items():
            mean_mae = np.mean([r["mae"] for r in rs])
            by_table[table][name][mechanism] = f"{_mean_sd([r['rmse'] for r in rs])} / {mean_mae:.3f}"
    for table, by in by_table.items():
        text += f"\n#### {table}\n\n"
        names = sorted(by, key=lambda n: (n != OURS, n))
        text += _table(["imputer", *mechanisms], [[n, *[by[n].get(m, "-") for m in mechanisms]] for n in names])
    text += _failures(records)
    if rows:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1))
        labels = [f"{r['table']}, {r['mechanism']}" for r in rows]
        ratios = [r["ratio"] for r in rows]
        ax.barh(labels, ratios, color=["tab:green" if x < 1 else "tab:red" for x in ratios])
        ax.axvline(1, color="k", lw=0.8)
        ax.set_xlabel("IVCNFImputer RMSE / best peer's RMSE (below 1: IVCNF wins)")
        ax.invert_yaxis()
        figure = _save_figure(fig, out, "accuracy.png", "IVCNF RMSE over the best peer's, per case")
        text = text.replace("### Mean rank", figure.lstrip() + "\n### Mean rank", 1)
    return text


def coverage_report(records):
    groups = defaultdict(list)
    for r in records:
        if r.get("status") == "ok" and "coverage" in r:
            groups[(r["table"], r["mechanism"], r["imputer"])].append(r)
    if not groups:
        return ""
    rows = []
    for (t, m, n), rs in sorted(groups.items()):
        label = f"{n}, one model" if any("proper_coverage" in r for r in rs) else n
        rows.append([t, m, label, _mean_sd([r["coverage"] for r in rs]), f"{np.mean([r['width'] for r in rs]):.3f}",
                     f"{np.mean([r['oracle_width'] for r in rs]):.3f}", _mean_sd([r["oracle_coverage"] for r in rs])])
        proper = [r for r in rs if "proper_coverage" in r]
        if proper:
            rows.append([t, m, f"{n}, proper ({proper[0]['n_proper']} re-estimated models)",
                         _mean_sd([r["proper_coverage"] for r in proper]),
                         f"{np.mean([r['proper_width'] for r in proper]):.3f}",
                         f"{np.mean([r['oracle_width'] for r in proper]):.3f}",
                         _mean_sd([r["oracle_coverage"] for r in proper])])
    n = next(iter(groups.values()))[0]["n_imputations"]
    return ("Coverage of the central 90% interval of each masked entry, from "
            f"{n} imputations per entry (the 5% and 95% sample quantiles), mean ± sd over mask seeds; width in the "
            "table's units. The oracle's interval comes from 1,000 draws of the exact conditional law. With "
            f"{n} draws even an exact sampler covers {exact_sampler_coverage(n):.3f} in expectation, not 0.90 "
            "(the sample quantiles of few draws are too close together), so that is the figure to compare with; "
            "under MNAR, the law's `p(x^H | x^O)` ignores that large values went missing, so even the oracle "
            "undercovers there. IVCNFImputer's proper copies are fewer (20: an exact sampler's expected "
            f"coverage {exact_sampler_coverage(20):.3f}) and carry the uncertainty of re-estimated parameters, "
            "which an exact sampler, knowing the true law, has none of.\n\n"
            + _table(["table", "missingness", "imputer", "coverage", "mean width", "oracle width", "oracle coverage"],
                     rows))


def _standard_error(values):
    """Standard error of the mean of ``values`` (NaN for fewer than two)."""
    values = np.asarray(values, dtype=float)
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def rubin_report(records):
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return ""
    labels = {"single": "single imputation", "multiple": "multiple imputation",
              "multiple, one model": "multiple imputation from one model (proper=False)"}
    by = defaultdict(lambda: defaultdict(list))
    for r in ok:
        for label, (est, lo, hi) in r["intervals"].items():
            name = label if r["imputer"] == "complete data" else f"{r['imputer']}, {labels.get(label, label)}"
            by[r.get("table", "gaussian")][name].append((est, lo, hi, r["truth"], r["repeat"]))
    m = ok[0].get("m")
    intros = {"gaussian": "Coefficient of column 1 in the least-squares regression of column 0 on columns 1-2, "
                          "true value 0.8; fresh 500-row AR(1) Gaussian sample (6 columns) and MAR 30% mask per "
                          "repeat",
              "mixture": "The same regression on the grid's Gaussian mixture (three components, 8 columns; "
                         "non-Gaussian, multimodal), true value the population coefficient from the law's moments; "
                         "fresh 500-row sample and MAR 30% mask per repeat"}
    text = ""
    for table in ("gaussian", "mixture"):
        if table not in by:
            continue
        rows = []
        for name, v in by[table].items():
            v = np.array(v)
            covered = (v[:, 1] <= v[:, 3]) & (v[:, 3] <= v[:, 2])
            share = np.mean(covered)
            error = v[:, 0] - v[:, 3]
            rows.append([name, len(v), f"{share:.3f} ± {np.sqrt(share * (1 - share) / len(v)):.3f}",
                         f"{np.mean(v[:, 2] - v[:, 1]):.3f}", f"{np.mean(error):+.4f} ± {_standard_error(error):.4f}",
                         f"{np.sqrt(np.mean(error ** 2)):.4f}"])
        text += (f"{intros[table]}; nominal 90% intervals; multiple imputation pooled by Rubin's rules from {m} "
                 "imputations; coverage and bias ± their standard errors over the repeats.\n\n"
                 + _table(["method", "repeats", "coverage", "mean width", "bias", "RMSE"], rows) + "\n")
        proper, one = (by[table].get(f"{OURS}, {labels[key]}") for key in ("multiple", "multiple, one model"))
        if proper and one:
            # Paired on the repeats both have: what re-estimating the model moves, without the repeats' spread.
            one_by_repeat = {int(row[4]): row[0] for row in one}
            shift = np.array([row[0] - one_by_repeat[int(row[4])] for row in proper if int(row[4]) in one_by_repeat])
            text += (f"{OURS}'s pooled estimate, proper copies minus one model's, paired over {len(shift)} repeats: "
                     f"{np.mean(shift):+.4f} ± {_standard_error(shift):.4f}.\n\n")
        older = sorted({f"{r['imputer']} ({r['code']})" for r in ok
                        if r.get("code") and r.get("table", "gaussian") == table})
        if older:
            text += f"Not re-run with the current code: {', '.join(older)}.\n\n"
    return text


def digits_report(records, out):
    ok = [r for r in records if r.get("status") == "ok" and "rate" in r]
    reference = next((r for r in records if r.get("imputer") == "complete data"), None)
    if not ok:
        return ""
    rates = sorted({r["rate"] for r in ok})
    names = sorted({r["imputer"] for r in ok}, key=lambda n: (n != OURS, n))
    cell = {(r["imputer"], r["rate"]): r for r in ok}

    def grid(field, fmt):
        return _table(["imputer", *[f"{rate:.0%}" for rate in rates]],
                      [[n + ("" if cell.get((n, rates[0]), {}).get("inductive", True) else " (transductive)"),
                        *[fmt(cell[(n, rate)][field]) if (n, rate) in cell else "-" for rate in rates]]
                       for n in names])

    text = "RMSE on the test split's masked pixels (pixels in [0, 1]):\n\n" + grid("rmse", lambda v: f"{v:.4f}")
    text += ("\nAccuracy of a logistic regression trained on the imputed train split, on the imputed test split"
             + (f" (on complete data: {reference['accuracy']:.4f})" if reference else "") + ":\n\n"
             + grid("accuracy", lambda v: f"{v:.4f}"))
    text += "\nSeconds to fit on the train split and impute both splits:\n\n" + grid("seconds", lambda v: f"{v:.0f}")
    older = sorted(f"{r['imputer']} at {r['rate']:.0%}" for r in ok if r.get("code"))
    if older:
        text += (f"\nNot re-run with the current code: {', '.join(older)} ("
                 f"{next(r['code'] for r in ok if r.get('code'))}).\n")
    bad = [r for r in records if r.get("status") not in ("ok", None) and "rate" in r]
    if bad:
        text += "\nFailed: " + "; ".join(f"{r['imputer']} at {r['rate']:.0%}: {r.get('error') or r['status']}"
                                          for r in bad) + "\n"
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for n in names:
        xs = [rate for rate in rates if (n, rate) in cell]
        style = dict(lw=2.5, color="k") if n == OURS else dict(lw=1)
        axes[0].plot(xs, [cell[(n, x)]["rmse"] for x in xs], marker="o", label=n, **style)
        axes[1].plot(xs, [cell[(n, x)]["accuracy"] for x in xs], marker="o", label=n, **style)
    axes[0].set(xlabel="missing rate", ylabel="test RMSE (masked pixels)")
    axes[1].set(xlabel="missing rate", ylabel="classifier accuracy")
    axes[1].legend(fontsize=7)
    return text + _save_figure(fig, out, "digits.png", "Test RMSE and classifier accuracy against the missing rate")


def completion_report(records):
    r = next((r for r in records if r.get("status") == "ok"), None)
    if r is None:
        return ""
    rows = [["first solution: one draw from the prior posterior", f"{r['prior_one_draw_rmse']:.4f}"],
            ["prior posterior: importance-weighted mean", f"{r['prior_weighted_mean_rmse']:.4f}"],
            [f"fitted Householder posterior ({r['n_reflections']} reflections): one draw",
             f"{r['fitted_one_draw_rmse']:.4f}"],
            ["fitted Householder posterior: importance-weighted mean", f"{r['fitted_weighted_mean_rmse']:.4f}"]]
    rows += [[f"{name} (fitted on train + masked test rows)", f"{v:.4f}"] for name, v in r["peers_rmse"].items()]
    return (f"{r['rows']} test digits, the centred 4 x 4 square ({r['hidden_pixels']} pixels) hidden; flow fitted on "
            f"the complete train split in {r['seconds_fit_flow']:.0f} s; per-row posteriors fitted for "
            f"{r['steps']} steps in {r['seconds_refine']:.0f} s (8 draws a step, Adam, learning rate 1e-2).\n\n"
            + _table(["completion", "RMSE of the hidden pixels"], rows)
            + "\n![Completions of the centred square next to the truth](completion.png)\n")


def scaling_report(records, out):
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return ""
    ok.sort(key=lambda r: (r["imputer"] != OURS, r.get("max_epochs") is None, r["columns"], r["rows"]))

    def training(r):
        if r["imputer"] != OURS:
            return "max_iter=25"
        return f"{r['max_epochs']} epochs" if r.get("max_epochs") else f"to early stopping ({r['epochs']} epochs)"

    rows = [[r["imputer"], training(r), r["rows"], r["columns"], f"{r['fit_seconds']:.1f}",
             f"{r['transform_seconds']:.1f}", f"{r['fit_seconds'] + r['transform_seconds']:.1f}",
             f"{r['peak_mib']:.0f}", f"{r['rmse']:.4f}", f"{r['oracle_rmse']:.4f}"] for r in ok]
    text = ("AR(1) Gaussian tables (correlation 0.8), 20% MCAR; each imputer fitted on the incomplete table, then "
            "transforms it. IVCNFImputer's fit time is proportional to its epochs, so the grid trains a fixed "
            "number of epochs to show how one epoch grows with the table (an epoch is at most 4,096 rows, "
            "`ROWS_PER_EPOCH`, so it stops growing past that); the rows marked 'to early stopping' use the "
            "defaults, as users would.\n\n"
            + _table(["imputer", "training", "rows", "columns", "fit s", "transform s", "total s", "peak MiB", "RMSE",
                      "oracle RMSE"], rows))
    fixed = [r for r in ok if r["imputer"] != OURS or r.get("max_epochs")]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, marker in ((OURS, "o"), ("MICE", "s")):
        by_rows = sorted([r for r in fixed if r["imputer"] == name and r["columns"] == 10], key=lambda r: r["rows"])
        by_cols = sorted([r for r in fixed if r["imputer"] == name and r["rows"] == 3000], key=lambda r: r["columns"])
        for ax, rs, x in ((axes[0], by_rows, "rows"), (axes[1], by_cols, "columns")):
            if not rs:
                continue
            xs = [r[x] for r in rs]
            label = f"{name} fit" + (f" ({rs[0]['max_epochs']} epochs)" if name == OURS else "")
            ax.loglog(xs, [r["fit_seconds"] for r in rs], marker=marker, label=label)
            ax.loglog(xs, [r["transform_seconds"] for r in rs], marker=marker, ls="--", label=f"{name} transform")
    axes[0].set(xlabel="rows (10 columns)", ylabel="seconds")
    axes[1].set(xlabel="columns (3,000 rows)", ylabel="seconds")
    axes[0].legend(fontsize=7)
    return text + _save_figure(fig, out, "scaling.png", "Seconds against rows and columns, log axes")


# ---------------------------------------------------------------------------------------------- mixed tables

ALL_NUMERIC, ORACLE = "IVCNFImputer (all-numeric)", "oracle"
MIXED_COMMAND = "python -m benchmarks.run --section mixed --workers 1"


def _geometric_mean(values):
    values = np.asarray([v for v in values if v is not None and np.isfinite(v) and v > 0], float)
    return float(np.exp(np.log(values).mean())) if len(values) else None


def _finite_values(values):
    return [v for v in values if v is not None and np.isfinite(v)]


def _finite_mean(values):
    """The mean of the finite values (PFC is NaN where a mask hid no categorical entry); None if none."""
    values = _finite_values(values)
    return float(np.mean(values)) if values else None


def mixed_summary(records):
    """Per (table, mechanism): mean PFC, numeric RMSE and seconds of each imputer over its seeds, the best
    peer by PFC (neither IVCNF variant nor the oracle) and IVCNF's ratios to it and to the all-numeric run."""
    cases = _sound_cases(records)
    rows = []
    for (table, mechanism), by in cases.items():
        mean = {name: {field: _finite_mean([r.get(field) for r in rs])
                       for field in ("pfc", "numeric_rmse", "seconds", "fit_seconds")}
                for name, rs in by.items()}
        peers = {n: m["pfc"] for n, m in mean.items() if n not in (OURS, ALL_NUMERIC, ORACLE) and m["pfc"] is not None}
        best = min(peers, key=peers.get) if peers else None
        rmses = [(m["numeric_rmse"], n) for n, m in mean.items()
                 if n not in (OURS, ALL_NUMERIC, ORACLE) and m["numeric_rmse"] is not None]
        best_rmse = min(rmses, default=(None, "-"))
        ours, plain = mean.get(OURS), mean.get(ALL_NUMERIC)

        def ratio(a, b):
            return a / b if a is not None and b not in (None, 0) else None

        rows.append(dict(
            table=table, mechanism=mechanism, means=mean, best=best, best_pfc=peers.get(best),
            best_rmse_peer=best_rmse[1], best_rmse=best_rmse[0],
            oracle_pfc=mean.get(ORACLE, {}).get("pfc"), oracle_rmse=mean.get(ORACLE, {}).get("numeric_rmse"),
            ours_pfc=ours and ours["pfc"], ours_rmse=ours and ours["numeric_rmse"],
            plain_pfc=plain and plain["pfc"], plain_rmse=plain and plain["numeric_rmse"],
            pfc_ratio=ratio(ours and ours["pfc"], peers.get(best)),
            rmse_ratio=ratio(ours and ours["numeric_rmse"], plain and plain["numeric_rmse"]),
            fit_ratio=ratio(ours and ours["fit_seconds"], plain and plain["fit_seconds"]),
            ours_fit=ours and ours["fit_seconds"], plain_fit=plain and plain["fit_seconds"]))
    return rows


def _fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def mixed_report(records, out):
    if not records:
        return ""
    rows = mixed_summary(records)
    tables = list(dict.fromkeys(r["table"] for r in records))
    shape = {r["table"]: r for r in records}
    text = ("Mixed-type tables as pandas DataFrames (`benchmarks/mixed_data.py`: which columns are categorical, "
            "integer and float, and why): "
            + "; ".join(f"{t}: {shape[t]['rows']:,} rows, {shape[t]['columns']} columns, "
                        f"{shape[t]['categorical_columns']} categorical" for t in tables)
            + ". The numeric grid's masks, drawn on the category codes. PFC: the share of the masked categorical "
            "entries imputed with a wrong category; numeric RMSE: over the masked integer and float entries, each "
            "column in its standard deviations over the complete table. Means over the mask seeds each imputer "
            "ran (3; hyperimpute as shipped and hyperimpute's missforest plugin seed 0 only); a PFC over the seeds "
            "whose mask hides categorical entries (MAR keeps 30% of the columns always observed: on diabetes_sex, "
            "mask seed 2 keeps `sex`). Best peer: the lowest PFC of the peers (neither IVCNF "
            "variant nor the oracle, which knows the simulated table's law). Peers: "
            "`benchmarks/mixed_peers.py`. Run in the environment with the `bench` extra: "
            f"`{MIXED_COMMAND}` (`--skip-imputers` / `--imputers NAME ...` run some imputers' tasks).\n\n")
    text += "### Summary: PFC against the best peer, numeric RMSE against the all-numeric run\n\n"
    text += _table(
        ["table", "missingness", "IVCNF PFC", "best peer (PFC)", "its PFC", "IVCNF / best", "oracle PFC",
         "IVCNF RMSE", "all-numeric RMSE", "IVCNF / all-numeric", "best peer RMSE", "IVCNF fit s",
         "all-numeric fit s"],
        [[r["table"], r["mechanism"], _fmt(r["ours_pfc"]), r["best"] or "-", _fmt(r["best_pfc"]), _fmt(r["pfc_ratio"]),
          _fmt(r["oracle_pfc"]), _fmt(r["ours_rmse"]), _fmt(r["plain_rmse"]), _fmt(r["rmse_ratio"]),
          f"{_fmt(r['best_rmse'])} ({r['best_rmse_peer']})", _fmt(r["ours_fit"], 1), _fmt(r["plain_fit"], 1)]
         for r in rows])
    targets = []
    for table in tables:
        mine = [r for r in rows if r["table"] == table]
        pfc_gm, rmse_gm, fit_gm = (_geometric_mean([r[k] for r in mine]) for k in ("pfc_ratio", "rmse_ratio",
                                                                                    "fit_ratio"))
        if pfc_gm is None and rmse_gm is None:
            continue
        targets.append([table, _fmt(pfc_gm), _fmt(rmse_gm), _fmt(fit_gm, 2),
                        sum(1 for r in mine if r["pfc_ratio"] is not None)])
    if targets:
        text += ("\nTargets, geometric means over the cases of each table: IVCNF's PFC over the best peer's "
                 "(target at most 0.95), IVCNF's numeric RMSE over the all-numeric run's (at most 1), IVCNF's fit "
                 "seconds over the all-numeric run's (at most 1.5).\n\n")
        text += _table(["table", "PFC / best peer", "RMSE / all-numeric", "fit s / all-numeric", "cases"], targets)
        text += "\n" + time_ratios(records, peers=("MissForest-like", "MICE (linear/logistic)",
                                                  "miceforest (most probable)"))
    else:
        text += "\nNo IVCNFImputer records yet: the figures above are the peers'.\n"
    by_table = defaultdict(lambda: defaultdict(dict))
    mechanisms = list(dict.fromkeys(r["mechanism"] for r in rows))
    for (table, mechanism), by in _sound_cases(records).items():
        for name, rs in by.items():
            by_table[table][name][mechanism] = rs
    order = [OURS, ALL_NUMERIC]
    for table in tables:
        by = by_table[table]
        names = sorted(by, key=lambda n: (n not in order, n == ORACLE, order.index(n) if n in order else 0, n))

        def grid(field, digits=3, by=by, names=names):
            def cell(rs):
                values = _finite_values([r.get(field) for r in rs])
                return _mean_sd(values, digits) if values else "-"

            return _table(["imputer", *mechanisms],
                          [[n, *[cell(by[n][m]) if m in by[n] else "-" for m in mechanisms]] for n in names])

        text += f"\n#### {table}\n\nPFC, mean ± sd over mask seeds:\n\n" + grid("pfc")
        text += "\nNumeric RMSE (column sds):\n\n" + grid("numeric_rmse")
        text += "\nSeconds (fit + transform, one thread):\n\n" + grid("seconds", 1)
    text += _failures(records)
    plotted = [r for r in rows if r["pfc_ratio"] is not None]
    if plotted:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7, 0.28 * len(plotted) + 1))
        labels = [f"{r['table']}, {r['mechanism']}" for r in plotted]
        ratios = [r["pfc_ratio"] for r in plotted]
        ax.barh(labels, ratios, color=["tab:green" if x <= 0.95 else "tab:red" for x in ratios])
        ax.axvline(0.95, color="k", lw=0.8, ls="--")
        ax.axvline(1, color="k", lw=0.8)
        ax.set_xlabel("IVCNFImputer PFC / best peer's PFC (target: at most 0.95)")
        ax.invert_yaxis()
        text += _save_figure(fig, out, "mixed.png", "IVCNF PFC over the best peer's, per case")
    return text


# ---------------------------------------------------------------------------------------------- components


def _sound_records(records):
    return [r for r in records if r.get("status") == "ok"]


def _describe_flow(settings):
    return (f"{settings['n_blocks']} blocks of width {settings['width']}, learning rate {settings['lr']}, batch "
            f"{settings['batch_size']}")


def flow_fit_report(records):
    ok = sorted(_sound_records(records), key=lambda r: (r["table"] != "breast_cancer", r["dtype"]))
    if not ok:
        return ""
    settings = ok[0]["settings"]
    rows = [[r["label"], r["dtype"], r["epochs"], f"{r['seconds_per_epoch']:.3f}", f"{r['fit_seconds']:.1f}",
             f"{r['flow_log_likelihood']:.3f}", f"{r['gaussian_log_likelihood']:.3f}"] for r in ok]
    return (f"The residual flow ({_describe_flow(settings)}, early stopping patience {settings['patience']}, at "
            f"most {settings['max_epochs']} epochs) fitted by maximum likelihood to 80% of the rows, standardised; "
            "mean log-likelihood per held-out row, against the full-covariance Gaussian fitted to the same rows "
            "(on the AR(1) Gaussian the true model).\n\n"
            + _table(["data", "dtype", "epochs", "s/epoch", "fit s", "held-out log-lik/row: flow", "Gaussian"],
                     rows))


def logdet_report(records):
    ok = sorted(_sound_records(records), key=lambda r: r["features"])
    if not ok:
        return ""
    rows = [[r["features"], f"{r['exact_seconds_per_step']:.3f}", f"{r['stochastic_seconds_per_step']:.3f}",
             f"{r['exact_seconds_per_step'] / r['stochastic_seconds_per_step']:.1f}"] for r in ok]
    return (f"Seconds per training step (`log_prob` and backward, float32, batch {ok[0]['batch']}) of an untrained "
            f"flow of {_describe_flow(ok[0]['settings'])}, with the exact and the stochastic log-determinant.\n\n"
            + _table(["d", "exact (s/step)", "stochastic (s/step)", "exact / stochastic"], rows))


def solvers_report(records):
    order = ["gaussian", "breast_cancer", "digits"]
    ok = sorted(_sound_records(records), key=lambda r: order.index(r["table"]) if r["table"] in order else len(order))
    if not ok:
        return ""
    solver_rows = [[r["label"], s["solver"], r["rows"], f"{s['rows_per_second']:.0f}", f"{s['mean_iterations']:.1f}",
                    s["max_iterations"], f"{s['converged']:.1%}"] for r in ok for s in r["solvers"]]
    pre_rows = [[r["label"], f"{p['missing_rate']:.0%}", p["neumann_terms"] or "none", p["products"],
                 f"{p['seconds']:.3f}"] for r in ok for p in r["preconditioner"]]
    return (f"Each solver on a float64 flow fitted to the standardised table (default architecture, early stopping), "
            f"{ok[0]['missing_rate']:.0%} MCAR, targets drawn from the prior, default tolerance; iterations over "
            "the rows with a hidden entry.\n\n"
            + _table(["data", "solver", "rows", "rows/s", "mean iter", "max iter", "converged"], solver_rows)
            + f"\nOne linear solve with `G^HH` by GMRES (relative tolerance 1e-8) on {ok[0]['preconditioner_rows']} "
            "rows, without and with the `J^HH` preconditioner (a truncated Neumann series per block):\n\n"
            + _table(["data", "MCAR rate", "Neumann terms per block", "G products", "seconds"], pre_rows))


def posteriors_report(records):
    order = ["prior", "amortised", "diagonal", "householder"]
    ok = sorted(_sound_records(records), key=lambda r: order.index(r["method"]) if r["method"] in order else len(order))
    if not ok:
        return ""
    first, k = ok[0], ok[0]["draws"]
    oracle = first["oracle_rmse"]
    labels = {"prior": "prior", "amortised": "amortised network", "diagonal": "per-row fitted diagonal"}
    rows = [["exact conditional mean (oracle)", f"{oracle:.4f}", "1.000", "-", "-"]]
    for r in ok:
        label = labels.get(r["method"], f"per-row fitted Householder ({r['n_reflections']})")
        rows.append([f"{label}, mean of {k} draws", f"{r['mean_rmse']:.4f}", f"{r['mean_rmse'] / oracle:.3f}",
                     f"{r['seconds']:.1f}", "-"])
        rows.append([f"{label}, importance-weighted mean", f"{r['weighted_rmse']:.4f}",
                     f"{r['weighted_rmse'] / oracle:.3f}", f"{r['seconds']:.1f}", f"{r['mean_ess']:.1f}"])
    return (f"The 10-column AR(1) Gaussian (correlation 0.8), a float64 flow fitted to {first['train_rows']:,} "
            f"complete rows; {first['rows']} test rows with {first['missing_rate']:.0%} MCAR "
            f"({first['masked_entries']} masked entries) imputed "
            "by the mean and the importance-weighted mean of draws from each posterior; seconds include fitting "
            "the posterior.\n\n"
            + _table(["imputation", "RMSE", "/ oracle", "seconds", f"mean ESS of {k}"], rows))


def provenance_header(out, sections):
    """Which command, on which date and machine, produced the records of ``sections`` (Markdown)."""
    path = Path(out) / PROVENANCE
    provenance = json.loads(path.read_text()) if path.exists() else {}
    if not sections:
        return "No records yet.\n"
    groups = defaultdict(list)
    for section in sections:
        entry = provenance.get(section)
        groups[None if entry is None else (entry["command"], entry["date"], entry["machine"])].append(section)
    if len(groups) == 1 and None not in groups:
        (command, date, machine), = groups
        return f"Produced by `{command}` on {date}.\n\nMachine: {machine}.\n"
    lines = [f"- {', '.join(names)}: " + ("provenance not recorded" if key is None else
                                          f"`{key[0]}` on {key[1]}; machine: {key[2]}")
             for key, names in groups.items()]
    return "Produced by several runs:\n\n" + "\n".join(lines) + "\n"


def write(out):
    """Write ``<out>/results.md`` (every table of the sections with records) and the PNG plots; returns the Markdown."""
    out = Path(out)
    reports = (
        ("accuracy", "Accuracy: 6 tables x 4 missingness mechanisms", lambda r: accuracy_report(r, out)),
        ("accuracy", "Uncertainty: 90% intervals from multiple imputations", coverage_report),
        ("rubin", "Uncertainty: Rubin's rules for a regression coefficient", rubin_report),
        ("digits", "The paper's MNIST protocol on digits", lambda r: digits_report(r, out)),
        ("completion", "Post-training completion of digits", completion_report),
        ("scaling", "Scaling", lambda r: scaling_report(r, out)),
        ("mixed", "Mixed-type tables: categorical and numeric columns", lambda r: mixed_report(r, out)),
        ("flow_fit", "The flow fitted to complete rows", flow_fit_report),
        ("logdet", "Log-determinant cost: one training step", logdet_report),
        ("solvers", "Constraint solvers on trained flows", solvers_report),
        ("posteriors", "Posteriors: imputation RMSE on the AR(1) Gaussian", posteriors_report),
    )
    parts, shown = [], []
    for section, title, make in reports:
        text = make(_records(out, section))
        if text:
            parts.append(f"## {title}\n\n{text}")
            shown.append(section)
    markdown = "\n".join([provenance_header(out, list(dict.fromkeys(shown))), *parts])
    (out / "results.md").write_text(markdown)
    return markdown
