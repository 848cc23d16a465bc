"""Record the package's outputs on fixed inputs, or compare them with a recording.

A refactoring must not change what the package computes. This script fits and runs
``IVCNFImputer`` (and the flow and posterior fitting functions below it) on fixed tables,
masks and seeds, on one thread, and stores every output in one ``.npz`` file:

- breast cancer (scikit-learn's table, 20% MCAR, mask seed 0) and a 500 x 10 AR(1) Gaussian
  (rho 0.8, 30% MCAR on 5 columns): ``transform``, ``sample_multiple_imputations``,
  ``score_samples``, the training history, every weight, a save/load round trip; variants
  with a held-out split, ``objective="elbo"``, per-row refinement and the missing indicator;
- ``fit_flow`` on complete Gaussian rows and ``fit_posterior`` on a fixed flow.

Usage::

    python -m benchmarks.record_outputs --out before.npz        # record
    python -m benchmarks.record_outputs --compare before.npz    # record again and compare

``--compare`` prints, per output, whether it is bit-identical or its largest absolute
difference, and exits non-zero when one differs by more than ``--atol``.
"""

import argparse
import os
import sys
import tempfile
import warnings

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer

from skivcnf import IVCNFImputer
from skivcnf.conditional import GaussianPosterior, fit_posterior
from skivcnf.flows import ResidualFlow, fit_flow

SMALL = {"n_blocks": 2, "hidden_layer_sizes": (32, 32), "n_draws": 16, "batch_size": 64}


def _tables():
    X = load_breast_cancer().data
    rng = np.random.default_rng(0)
    Xm = X.copy()
    Xm[rng.random(X.shape) < 0.2] = np.nan
    yield "bc", Xm
    rng = np.random.default_rng(1)
    cov = 0.8 ** np.abs(np.subtract.outer(np.arange(10), np.arange(10)))
    G = rng.multivariate_normal(np.zeros(10), cov, 500)
    Gm = G.copy()
    Gm[:, 5:][rng.random((500, 5)) < 0.3] = np.nan
    yield "ar1", Gm


_VARIANTS = {
    "plain": {"max_epochs": 6, "early_stopping": False},
    "heldout": {"max_epochs": 6, "early_stopping": True, "n_iter_no_change": 2},
    "elbo_refined": {"max_epochs": 4, "early_stopping": False, "objective": "elbo", "refinement_steps": 3,
                     "add_indicator": True},
}


def _bounds(history):
    """Training and held-out bounds per epoch.

    The history held bounds (``elbo``, ``validation``) before the redesign and holds losses,
    minus the bounds, after it; reading both lets this script run on either side.
    """
    if hasattr(history, "elbo"):
        return np.asarray(history.elbo), np.asarray(history.validation)
    return -np.asarray(history.train_loss), -np.asarray(history.validation_loss)


def record():
    torch.set_num_threads(1)
    out = {}
    warnings.simplefilter("ignore")
    for table, X in _tables():
        for variant, params in _VARIANTS.items():
            key = f"{table}/{variant}"
            imputer = IVCNFImputer(**SMALL, **params, random_state=0, device="cpu").fit(X)
            out[f"{key}/transform"] = imputer.transform(X)
            out[f"{key}/multiple"] = np.asarray(imputer.sample_multiple_imputations(X[:100], 3))
            out[f"{key}/score"] = imputer.score_samples(X[:100])
            out[f"{key}/history_bound"], out[f"{key}/history_validation"] = _bounds(imputer.history_)
            for name, value in imputer.flow_.state_dict().items():
                out[f"{key}/flow/{name}"] = value.numpy()
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "imputer.pt")
                imputer.save(path)
                out[f"{key}/loaded_transform"] = IVCNFImputer.load(path).transform(X[:50])
    # The flow's own maximum-likelihood fit, and a per-row posterior fit on a fixed flow.
    gen = torch.Generator().manual_seed(3)
    cov = torch.tensor(0.8 ** np.abs(np.subtract.outer(np.arange(4), np.arange(4))))
    y = torch.randn(300, 4, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    flow = ResidualFlow(4, n_blocks=2, hidden_features=(16,), generator=torch.Generator().manual_seed(4)).double()
    history = fit_flow(flow, y, max_epochs=5, batch_size=64, patience=2, generator=torch.Generator().manual_seed(5))
    out["fit_flow/train_loss"] = np.asarray(history.train_loss)
    out["fit_flow/validation_loss"] = np.asarray(history.validation_loss)
    for name, value in flow.state_dict().items():
        out[f"fit_flow/flow/{name}"] = value.numpy()
    hidden = torch.rand(40, 4, generator=gen) < 0.4
    posterior = GaussianPosterior(40, 4, n_reflections=2, generator=torch.Generator().manual_seed(6)).double()
    p_hist = fit_posterior(flow, y[:40], hidden, posterior, n_samples=4, max_steps=20,
                           generator=torch.Generator().manual_seed(7))
    out["fit_posterior/bound"] = _bounds(p_hist)[0]
    for name, value in posterior.state_dict().items():
        out[f"fit_posterior/{name}"] = value.detach().numpy()
    return out


def compare(recorded, current, atol):
    worst = 0.0
    for key in sorted(set(recorded) | set(current)):
        if key not in current or key not in recorded:
            print(f"{key}: only in {'the recording' if key in recorded else 'this run'}")
            worst = np.inf
            continue
        a, b = recorded[key], current[key]
        if a.shape != b.shape:
            print(f"{key}: shape {a.shape} -> {b.shape}")
            worst = np.inf
        elif np.array_equal(a, b, equal_nan=True):
            continue
        else:
            diff = float(np.nanmax(np.abs(a - b))) if a.size else 0.0
            print(f"{key}: max |difference| {diff:.3g}")
            worst = max(worst, diff)
    n_same = sum(np.array_equal(recorded[k], current[k], equal_nan=True) for k in recorded
                 if k in current and recorded[k].shape == current[k].shape)
    print(f"{n_same} of {len(recorded)} outputs bit-identical; largest difference {worst:.3g}")
    return worst <= atol


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the recording here")
    parser.add_argument("--compare", help="compare this run with a recording")
    parser.add_argument("--atol", type=float, default=0.0)
    args = parser.parse_args(argv)
    current = record()
    if args.out:
        np.savez_compressed(args.out, **current)
    if args.compare:
        return 0 if compare(dict(np.load(args.compare)), current, args.atol) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
