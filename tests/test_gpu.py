"""IVCNFImputer end to end on a CUDA device: run where a GPU is present, skipped elsewhere.

``pytest tests/test_gpu.py`` on a GPU machine: fit, transform, multiple imputations (proper and
not), scores, save/load across devices, and Dask partitions on the GPU model.
"""

import warnings

import numpy as np
import pytest
import torch

from skivcnf import IVCNFImputer

from .helpers import TINY_IMPUTER as TINY
from .helpers import diabetes_with_holes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

#: The same weights on another device: float32 kernels that sum in another order, through
#: constraint solves to 1e-6 and importance weights; a few 1e-4 of a column's sd at most.
DEVICE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def data():
    _, X_missing, mask, _ = diabetes_with_holes(n_rows=120)
    return X_missing, mask


@pytest.fixture(scope="module")
def on_gpu(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return IVCNFImputer(**{**TINY, "max_epochs": 5, "n_draws": 16, "device": "cuda"}).fit(data[0])


def test_fit_and_draws_stay_on_the_gpu(data, on_gpu):
    X, mask = data
    assert next(on_gpu.flow_.parameters()).is_cuda and next(on_gpu.posterior_.parameters()).is_cuda
    out = on_gpu.transform(X)
    np.testing.assert_array_equal(out[~mask], X[~mask])
    assert np.isfinite(out).all()
    for proper in (True, False):
        copies = on_gpu.sample_multiple_imputations(X, 3, proper=proper)
        assert copies.shape == (3, *X.shape) and np.isfinite(copies).all()
        np.testing.assert_array_equal(copies[:, ~mask], np.broadcast_to(X[~mask], (3, (~mask).sum())))
    assert np.isfinite(on_gpu.score_samples(X)).all()


def test_a_gpu_model_loads_on_the_cpu_and_back(data, on_gpu, tmp_path):
    X, _ = data
    sd = np.nanstd(X, axis=0)
    on_gpu.save(tmp_path / "gpu.pt")
    on_cpu = IVCNFImputer.load(tmp_path / "gpu.pt", device="cpu")
    assert next(on_cpu.flow_.parameters()).device.type == "cpu" and on_cpu.device == "cpu"
    # Row-keyed noise is drawn on the CPU, so both devices draw the same numbers.
    np.testing.assert_allclose(on_cpu.transform(X) / sd, on_gpu.transform(X) / sd, rtol=0, atol=DEVICE_TOLERANCE)
    on_cpu.save(tmp_path / "cpu.pt")
    back = IVCNFImputer.load(tmp_path / "cpu.pt", device="cuda")
    assert next(back.flow_.parameters()).is_cuda
    np.testing.assert_allclose(back.transform(X), on_gpu.transform(X), rtol=0, atol=1e-5 * np.nanmax(sd))


def test_dask_partitions_on_the_gpu_model(data, on_gpu):
    skdask = pytest.importorskip("skivcnf.dask")
    da = pytest.importorskip("dask.array")
    X, _ = data
    sd = np.nanstd(X, axis=0)
    lazy = skdask.transform(on_gpu, da.from_array(X, chunks=50))
    np.testing.assert_allclose(lazy.compute(scheduler="synchronous") / sd, on_gpu.transform(X) / sd, rtol=0,
                               atol=1e-5)
