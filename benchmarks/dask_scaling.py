"""Transform throughput with 1 and 2 Dask workers, and each worker's peak memory (docs/scaling.md).

Run from the repository root (needs the ``dask`` extra; about 8 minutes on 2 cores, alone)::

    python -m benchmarks.dask_scaling

Two lazily generated tables, 1,000,000 x 10 and 200,000 x 30 (correlated Gaussian columns,
20% of the entries missing completely at random, generated chunk by chunk on the workers, so
that no process ever holds a whole table). An imputer is fitted (10 epochs) on the first 4,000
rows, computed in memory. For 1 and then 2 worker processes of a ``LocalCluster`` (one thread
each, torch on one thread), ``skivcnf.dask.transform`` is computed on the first partitions: the
same number of partitions per worker, so that a perfect speed-up halves no time but doubles the
rows per second. A row costs the same wherever it lies, so rows per second on a prefix of
partitions is the table's; imputing all of 1,000,000 rows at one worker's rate would take
more than an hour. Each worker's peak resident memory (``ru_maxrss``) is read after the timed
partitions and, on the first table with 2 workers, again after three times as many more (4x the
rows in all): flat means memory does not grow with the rows imputed.
Writes ``benchmarks/results/scaling/dask.json`` and prints the table.
"""

import json
import resource
import time
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "scaling" / "dask.json"
#: (rows, columns, rows per partition, partitions per worker in the timed run); memory is followed on the first
TABLES = ((1_000_000, 10, 500, 6), (200_000, 30, 100, 4))
RATE = 0.2
FIT_ROWS, FIT_EPOCHS = 4000, 10


def _table(n_rows, n_cols, chunk, seed=0):
    """A lazy (n_rows, n_cols) Dask array with correlated columns and entries missing at random."""
    import dask.array as da

    mixing = np.random.default_rng(seed).normal(size=(n_cols, n_cols)) / np.sqrt(n_cols)
    rng = da.random.default_rng(seed)
    values = rng.standard_normal((n_rows, n_cols), chunks=(chunk, n_cols)) @ mixing
    return da.where(rng.random((n_rows, n_cols), chunks=(chunk, n_cols)) < RATE, np.nan, values)


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _one_thread():
    import torch

    torch.set_num_threads(1)


def measure(n_rows, n_cols, chunk, per_worker, n_workers, imputer, lazy, follow_memory):
    import distributed

    import skivcnf.dask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, distributed.Client(cluster) as client:
            client.run(_one_thread)
            out = skivcnf.dask.transform(imputer, lazy)
            out.blocks[:n_workers].compute()  # warm-up: the model reaches every worker, torch is imported
            n_parts = n_workers * per_worker
            start = time.perf_counter()
            out.blocks[n_workers:n_workers + n_parts].compute()
            seconds = time.perf_counter() - start
            peak = list(client.run(_peak_rss_mib).values())
            follow = follow_memory and n_workers == 2
            longer = out.blocks[n_workers + n_parts:n_workers + 4 * n_parts].compute() if follow else None
            peak_longer = list(client.run(_peak_rss_mib).values()) if longer is not None else None
    rows = n_parts * chunk
    return {"table": f"{n_rows:,} x {n_cols}", "workers": n_workers, "rows_timed": rows, "seconds": round(seconds, 1),
            "rows_per_second": round(rows / seconds, 1), "peak_rss_mib": [round(p) for p in peak],
            "peak_rss_mib_after_4x_rows": None if peak_longer is None else [round(p) for p in peak_longer]}


def main():
    import torch

    from skivcnf import IVCNFImputer

    torch.set_num_threads(1)
    records = []
    for n_rows, n_cols, chunk, per_worker in TABLES:
        lazy = _table(n_rows, n_cols, chunk)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imputer = IVCNFImputer(max_epochs=FIT_EPOCHS, random_state=0).fit(lazy[:FIT_ROWS].compute())
        for n_workers in (1, 2):
            records.append(measure(n_rows, n_cols, chunk, per_worker, n_workers, imputer, lazy,
                                   follow_memory=(n_rows, n_cols) == TABLES[0][:2]))
            print(records[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(records, indent=1) + "\n")
    print(report(records))


def report(records):
    lines = ["| table | workers | rows timed | seconds | rows/s | speed-up | peak RSS per worker (MiB) |",
             "|---|---|---|---|---|---|---|"]
    one = {r["table"]: r["rows_per_second"] for r in records if r["workers"] == 1}
    for r in records:
        peak = "/".join(map(str, r["peak_rss_mib"]))
        if r["peak_rss_mib_after_4x_rows"]:
            peak += " (after 4x the rows: " + "/".join(map(str, r["peak_rss_mib_after_4x_rows"])) + ")"
        lines.append(f"| {r['table']} | {r['workers']} | {r['rows_timed']:,} | {r['seconds']} | {r['rows_per_second']} "
                     f"| {r['rows_per_second'] / one[r['table']]:.2f} | {peak} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
