"""Fit and transform times on the CPU and on a CUDA GPU (docs/scaling.md, "GPU").

Run from the repository root on a machine with a GPU (about 15 minutes; ``--quick`` checks the
script in a minute on any machine)::

    python -m benchmarks.devices                    # the CPU, and CUDA where available
    python -m benchmarks.devices --devices cuda     # one device only
    python -m benchmarks.devices --batch-sizes 64 1024 --epochs 3 --rows 2048   # batch size on each device

Tables: breast cancer with 20% of its entries missing completely at random (MCAR), digits
with 50% MCAR, and a correlated Gaussian 1,000,000 x 10 table with 20% MCAR. ``fit`` runs at
the defaults but ``max_epochs=FIT_EPOCHS`` without early stopping (the same work on every
device); an epoch is at most 4,096 rows, so fit time does not grow with the table.
``transform`` is timed on the first ``TRANSFORM_ROWS`` rows of each table (rows per second
is the same for any number of rows; all of 1,000,000 rows take more than an hour on one CPU
core). The CPU runs on every core torch sees. Writes
``benchmarks/results/scaling/devices.json`` and prints the table.
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from skivcnf import IVCNFImputer

from . import data, masks

OUT = Path(__file__).parent / "results" / "scaling" / "devices.json"
FIT_EPOCHS = 20
TRANSFORM_ROWS = 2048


def _tables(quick):
    rng = np.random.default_rng(0)
    breast = data.load("breast_cancer").X
    digits = data.digits().X
    n_big = 20_000 if quick else 1_000_000
    big = data.correlated_gaussian(n_samples=n_big, n_features=10, seed=0).X
    for name, X, rate in (("breast_cancer", breast, 0.2), ("digits", digits, 0.5), (f"gaussian {n_big:,} x 10", big,
                                                                                   0.2)):
        yield name, np.where(masks.mcar(X, rate, rng), np.nan, X)


def measure(device, quick=False, epochs=FIT_EPOCHS, rows=TRANSFORM_ROWS, batch_size=64):
    epochs, rows = (2, 256) if quick else (epochs, rows)
    records = []
    for name, X in _tables(quick):
        imputer = IVCNFImputer(random_state=0, max_epochs=epochs, early_stopping=False, device=device,
                               batch_size=batch_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            imputer.fit(X)
            fit_seconds = time.perf_counter() - start
            start = time.perf_counter()
            imputer.transform(X[:rows])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            transform_seconds = time.perf_counter() - start
        records.append({"table": name, "device": device, "batch_size": batch_size,
                        "torch_threads": torch.get_num_threads(), "epochs": epochs,
                        "fit_seconds": round(fit_seconds, 1), "seconds_per_epoch": round(fit_seconds / epochs, 2),
                        "transform_rows": rows, "transform_rows_per_second": round(rows / transform_seconds, 1)})
        print(records[-1], flush=True)
    return records


def report(records):
    lines = ["| table | device | batch size | fit (s per epoch) | transform (rows/s) |", "|---|---|---|---|---|"]
    lines += [f"| {r['table']} | {r['device']} | {r['batch_size']} | {r['seconds_per_epoch']} | "
              f"{r['transform_rows_per_second']} |" for r in records]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    parser.add_argument("--quick", action="store_true", help="small tables and 2 epochs: checks the script only")
    parser.add_argument("--epochs", type=int, default=FIT_EPOCHS)
    parser.add_argument("--rows", type=int, default=TRANSFORM_ROWS, help="rows transformed (the rate's sample)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64],
                        help="IVCNFImputer(batch_size=...): training, and the draws' batch (a GPU draws 1,024 rows "
                             "at least)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    records = [record for device in args.devices for batch_size in args.batch_sizes
               for record in measure(device, args.quick, args.epochs, args.rows, batch_size)]
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=1) + "\n")
    print(report(records))


if __name__ == "__main__":
    main()
