"""Fit time per epoch of IVCNFImputer with 1 and 2 data-parallel processes (torchrun, gloo, CPUs).

Run from the repository root::

    python -m benchmarks.ddp                      # JSON to results/scaling/ddp.json, a Markdown table
    python -m benchmarks.ddp --epochs 2 --out /tmp/ddp.json

Each case launches ``python -m torch.distributed.run --nproc-per-node N -m benchmarks.ddp
--worker ...`` on the loopback interface, one torch thread per process (``OMP_NUM_THREADS=1``,
``torch.set_num_threads(1)``), so that N processes use N cores. Each fits
``IVCNFImputer(max_epochs=epochs, early_stopping=False, random_state=0)`` on the full table
(20% MCAR): a fixed number of epochs, no held-out rows. The time per epoch is the median of
``history_.epoch_seconds`` on rank 0 after the first epoch (which also pays for warm-up); the
fit's wall time includes the first epoch and the process group's start. An epoch is at most
4,096 rows drawn afresh (``ROWS_PER_EPOCH``), so the 20,000-row table's epoch is 64 steps of 64
rows; the batch of 256 rows shows how the per-step overhead (Python, the gradient exchange)
weighs less on larger batches. On a shared machine, other load skews the 2-process numbers most.
"""

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).parent / "results" / "scaling" / "ddp.json"

#: (table, rows, columns, batch_size)
CASES = [("synthetic", 20_000, 10, 64), ("synthetic", 20_000, 10, 256), ("breast_cancer", 569, 30, 64)]


def _table(name, n_rows, n_columns):
    """The complete table and its copy with 20% of the entries removed (the same on every rank)."""
    if name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        X = load_breast_cancer().data
    else:
        from .data import correlated_gaussian

        X = correlated_gaussian(n_rows, n_columns, seed=0).X
    return np.where(np.random.default_rng(0).random(X.shape) < 0.2, np.nan, X)


def worker(table, n_rows, n_columns, batch_size, epochs, out):
    """One rank of a measurement: fit, and on rank 0 write the epoch times to ``out``."""
    import torch.distributed as dist

    from skivcnf import IVCNFImputer

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    X = _table(table, n_rows, n_columns)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imputer = IVCNFImputer(max_epochs=epochs, batch_size=batch_size, early_stopping=False, device="cpu",
                               random_state=0).fit(X)
    seconds = time.perf_counter() - start
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps({"epoch_seconds": imputer.history_.epoch_seconds, "fit_seconds": seconds,
                                         "steps": imputer.history_.n_steps, "shape": list(X.shape)}))
    dist.barrier()  # no rank leaves the group while another still uses it
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(table, n_rows, n_columns, batch_size, n_processes, epochs):
    """Launch ``n_processes`` ranks with torchrun and return rank 0's record."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n_processes),
                   "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "benchmarks.ddp",
                   "--worker", table, str(n_rows), str(n_columns), str(batch_size), str(epochs), str(out)]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode:
            raise RuntimeError(result.stderr[-3000:])
        record = json.loads(out.read_text())
    later = record["epoch_seconds"][1:] or record["epoch_seconds"]
    return {"table": table, "shape": record["shape"], "batch_size": batch_size, "processes": n_processes,
            "epochs": epochs, "steps": record["steps"], "seconds_per_epoch": round(statistics.median(later), 3),
            "first_epoch_seconds": round(record["epoch_seconds"][0], 3),
            "fit_seconds": round(record["fit_seconds"], 2)}


def markdown(records):
    """Seconds per epoch with 1 and 2 processes, and the speed-up, per table and batch size."""
    lines = ["| table | rows x columns | batch | s/epoch, 1 process | s/epoch, 2 processes | speed-up |",
             "|---|---|---|---|---|---|"]
    cases = dict.fromkeys((r["table"], tuple(r["shape"]), r["batch_size"]) for r in records)
    for table, shape, batch in cases:
        by = {r["processes"]: r["seconds_per_epoch"] for r in records
              if (r["table"], tuple(r["shape"]), r["batch_size"]) == (table, shape, batch)}
        lines.append(f"| {table} | {shape[0]:,} x {shape[1]} | {batch} | {by.get(1, float('nan')):.2f} | "
                     f"{by.get(2, float('nan')):.2f} | {by.get(1, float('nan')) / by.get(2, float('nan')):.2f} |")
    return "\n".join(lines)


def main():
    if sys.argv[1:2] == ["--worker"]:
        table, n_rows, n_columns, batch_size, epochs, out = sys.argv[2:]
        worker(table, int(n_rows), int(n_columns), int(batch_size), int(epochs), out)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    records = []
    for table, n_rows, n_columns, batch_size in CASES:
        for n_processes in (1, 2):
            records.append(measure(table, n_rows, n_columns, batch_size, n_processes, args.epochs))
            print(json.dumps(records[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(["python -m benchmarks.ddp", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "records": records}, indent=1) + "\n")
    print(markdown(records))


if __name__ == "__main__":
    main()
