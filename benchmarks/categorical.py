"""How IVCNFImputer's flow should see a categorical column: the measurement behind the choice in
docs/user_guide.rst ("Mixed-type tables") and docs/benchmarks.md, one thread.

Run from the repository root::

    python -m benchmarks.categorical            # records in benchmarks/results/categorical/encoding.jsonl
    python -m benchmarks.categorical --report   # the table, from the records

Two encodings of a categorical column with ``K > 2`` categories, both dequantised (a unit cell
of uniform noise around each value while training):

- ``one-hot`` (the default): ``K`` coordinates, the category the argmax of the block;
- ``codes``: one coordinate holding the category's code ``0..K-1``, the category the nearest
  code (``skivcnf._encoding.MAX_CODE_CATEGORIES`` raised past every ``K``).

The third way, the codes read as plain numbers (no dequantisation, imputations rounded to the
nearest code) is the suite's "IVCNFImputer (all-numeric)" peer, run by ``benchmarks.run
--section mixed``. Cases: the suite's mixed tables ``simulated`` and ``fair`` under MCAR 20%
and MAR 30%, mask seeds 0 and 1, the suite's task (:func:`benchmarks.sections.mixed`). Only
``codes`` is run here: the one-hot and all-numeric figures are the suite's records.
"""

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch

import skivcnf._encoding as encoding

from . import mixed_peers, sections

OUT = Path(__file__).parent / "results" / "categorical"
SUITE = Path(__file__).parent / "results" / "suite" / "mixed.jsonl"
CASES = [(table, mechanism, seed) for table in ("simulated", "fair") for mechanism in ("MCAR 20%", "MAR 30%")
         for seed in (0, 1)]
FIELDS = ("table", "mechanism", "seed", "pfc", "numeric_rmse", "fit_seconds", "epochs", "status")


def _suite_records(imputer):
    records = (json.loads(line) for line in SUITE.read_text().splitlines()) if SUITE.exists() else ()
    return {(r["table"], r["mechanism"], r["seed"]): r for r in records if r["imputer"] == imputer}


def run():
    """The ``codes`` encoding on every case (the one-hot figures are the suite's records)."""
    OUT.mkdir(parents=True, exist_ok=True)
    saved = encoding.MAX_CODE_CATEGORIES
    encoding.MAX_CODE_CATEGORIES = 10**9
    try:
        with (OUT / "encoding.jsonl").open("w") as f:
            for case in CASES:
                record = {"encoding": "codes", **{k: sections.mixed(*case, mixed_peers.OURS).get(k) for k in FIELDS}}
                f.write(json.dumps(record) + "\n")
                print(json.dumps(record))
    finally:
        encoding.MAX_CODE_CATEGORIES = saved


def report():
    codes = {(r["table"], r["mechanism"], r["seed"]): r
             for r in (json.loads(line) for line in (OUT / "encoding.jsonl").read_text().splitlines())}
    rows = [("one-hot (default)", _suite_records(mixed_peers.OURS)), ("codes, dequantised", codes),
            ("codes as plain numbers (the suite's all-numeric peer)", _suite_records(mixed_peers.ALL_NUMERIC))]
    print(f"| encoding | PFC | numeric RMSE | fit seconds |  (means over the {len(CASES)} cases)")
    print("|---|---|---|---|")
    for name, records in rows:
        chosen = [records[c] for c in CASES if c in records]
        if len(chosen) < len(CASES):
            print(f"| {name} | {len(chosen)} of {len(CASES)} cases recorded | | |")
            continue
        pfc, error, seconds = (np.mean([r[k] for r in chosen]) for k in ("pfc", "numeric_rmse", "fit_seconds"))
        print(f"| {name} | {pfc:.3f} | {error:.3f} | {seconds:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    report() if args.report else run()


if __name__ == "__main__":
    main()
