"""Fit IVCNFImputer data-parallel on several processes with torchrun (torch.distributed).

Training is where the time goes, and it parallelises over rows: launched by ``torchrun``,
every process loads the same table and calls the ordinary ``IVCNFImputer(...).fit(X)``;
each then computes the bound of its share of every minibatch, the gradients are summed
over the processes, and every process takes the same step, so the fitted imputer is the
same on every rank (and equals a one-process fit on the same batches, to float precision).
Only rank 0 shows progress, warns and writes files. The table is scikit-learn's breast
cancer (569 rows x 30 features, bundled, no download) with 20% of its entries removed
completely at random; rank 0 saves the imputer and prints the RMSE on the removed entries,
on the standardised scale. Two processes on CPUs (gloo)::

    torchrun --nproc-per-node 2 examples/torchrun_fit.py

On a machine with GPUs, one process per GPU (NCCL)::

    torchrun --nproc-per-node 4 examples/torchrun_fit.py --device cuda

Run without ``torchrun`` (``python examples/torchrun_fit.py``), it fits in one process.
On CPUs, give each process its own cores: torchrun sets ``OMP_NUM_THREADS=1`` when it
starts more than one process; ``--threads`` sets torch's threads per process.
"""

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from sklearn.datasets import load_breast_cancer

from skivcnf import IVCNFImputer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder of the saved imputer")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    launched = "WORLD_SIZE" in os.environ  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
    if launched:
        if args.device == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # one GPU per process
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if launched else (0, 1)
    try:
        # Every rank builds the same table: fit checks that they agree.
        X = load_breast_cancer().data
        mask = np.random.default_rng(0).random(X.shape) < 0.2
        X_missing = np.where(mask, np.nan, X)
        imputer = IVCNFImputer(max_epochs=args.max_epochs, device=args.device, random_state=0, verbose=1)
        start = time.perf_counter()
        with warnings.catch_warnings():
            if rank != 0:
                warnings.simplefilter("ignore")  # rank 0 warns for all
            imputer.fit(X_missing)
        seconds = time.perf_counter() - start
        path = args.out / "torchrun_fit.pt"
        imputer.save(path)  # on every rank: rank 0 writes, the others wait until the file is complete
        if rank == 0:
            completed = imputer.transform(X_missing)
            rmse = np.sqrt(np.mean(((completed - X) / X.std(axis=0))[mask] ** 2))
            print(f"{world} process(es): fit {seconds:.1f} s, {len(imputer.history_.train_loss)} epochs, "
                  f"saved to {path}")
            print(f"IVCNFImputer RMSE on removed entries (standardised) {rmse:.3f}")
        if launched:
            dist.barrier()  # no rank leaves the group while another still uses it (gloo aborts then)
    finally:
        if launched:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
