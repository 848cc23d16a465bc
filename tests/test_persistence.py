"""Saving, loading and pickling a fitted IVCNFImputer: the copy behaves as the original, bit for bit."""

import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
import torch

from skivcnf import IVCNFImputer

from .helpers import TINY_IMPUTER as TINY
from .helpers import diabetes_with_holes


@pytest.fixture(scope="module")
def frame():
    _, X_missing, _, _ = diabetes_with_holes()
    return pd.DataFrame(X_missing, columns=[f"c{i}" for i in range(X_missing.shape[1])])


@pytest.fixture(scope="module")
def fitted(frame):
    return IVCNFImputer(add_indicator=True, **TINY).fit(frame)


def assert_same_imputer(copy, original, X):
    """Same parameters, fitted state and outputs (every method, bit for bit)."""
    # NaN (the default missing_values) equals itself only by identity, which pickling does not keep.
    mine, theirs = copy.get_params(), original.get_params()
    assert mine.keys() == theirs.keys()
    same = [mine[k] == theirs[k] or (isinstance(mine[k], float) and np.isnan(mine[k]) and np.isnan(theirs[k]))
            for k in mine]
    assert all(same), [k for k, ok in zip(mine, same, strict=True) if not ok]
    for name in ("n_features_in_", "empty_features_", "modelled_features_", "constant_values_", "center_", "scale_",
                 "grid_steps_", "observed_range_"):
        np.testing.assert_array_equal(getattr(copy, name), getattr(original, name))
    assert list(copy.get_feature_names_out()) == list(original.get_feature_names_out())
    assert copy.history_ == original.history_
    for method, args in (("transform", ()), ("score_samples", ()), ("sample_multiple_imputations", (3,))):
        mine, theirs = getattr(copy, method)(X, *args), getattr(original, method)(X, *args)
        assert type(mine) is type(theirs)
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    for mine, theirs in zip(copy.conditional_draws(X), original.conditional_draws(X), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_save_takes_numpy_scalar_parameters(tmp_path, frame):
    # A grid built with np.arange hands NumPy integers to set_params.
    imputer = IVCNFImputer(**{**TINY, "n_draws": np.int64(3), "missing_values": np.float64(np.nan)}).fit(frame)
    imputer.save(tmp_path / "imputer.pt")
    loaded = IVCNFImputer.load(tmp_path / "imputer.pt")
    assert loaded.n_draws == 3 and type(loaded.n_draws) is int
    np.testing.assert_array_equal(loaded.transform(frame), imputer.transform(frame))


def test_pickle_round_trip(frame, fitted):
    assert_same_imputer(pickle.loads(pickle.dumps(fitted)), fitted, frame)


def test_joblib_round_trip(tmp_path, frame, fitted):
    joblib.dump(fitted, tmp_path / "imputer.joblib")
    assert_same_imputer(joblib.load(tmp_path / "imputer.joblib"), fitted, frame)


def test_safe_save_and_load(tmp_path, frame, fitted):
    path = tmp_path / "imputer.pt"
    fitted.save(path)
    loaded = IVCNFImputer.load(path)
    assert_same_imputer(loaded, fitted, frame)
    assert list(loaded.feature_names_in_) == list(frame.columns)
    # The file is plain data: the restricted unpickler reads it.
    torch.load(path, weights_only=True)


@pytest.mark.parametrize("round_trip", ["save", "pickle"])
def test_set_output_survives_persistence(tmp_path, frame, round_trip):
    imputer = IVCNFImputer(**TINY).set_output(transform="pandas").fit(frame)
    if round_trip == "save":
        imputer.save(tmp_path / "imputer.pt")
        copy = IVCNFImputer.load(tmp_path / "imputer.pt")
    else:
        copy = pickle.loads(pickle.dumps(imputer))
    out = copy.transform(frame)
    assert isinstance(out, pd.DataFrame)
    pd.testing.assert_frame_equal(out, imputer.transform(frame))
    pd.testing.assert_frame_equal(copy.sample_multiple_imputations(frame, 2),
                                  imputer.sample_multiple_imputations(frame, 2))


def test_an_imputer_without_a_flow_round_trips(tmp_path):
    X = np.array([[1.5, np.nan], [np.nan, np.nan], [1.5, np.nan]])
    imputer = IVCNFImputer(keep_empty_features=True, **TINY).fit(X)
    imputer.save(tmp_path / "imputer.pt")
    for copy in (IVCNFImputer.load(tmp_path / "imputer.pt"), pickle.loads(pickle.dumps(imputer))):
        assert copy.flow_ is None and copy.history_ is None
        np.testing.assert_array_equal(copy.transform(X), [[1.5, 0.0]] * 3)


def test_load_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a file written by IVCNFImputer.save"):
        IVCNFImputer.load(path)
    pickled = tmp_path / "pickled.pt"
    with open(pickled, "wb") as handle:
        pickle.dump(IVCNFImputer(), handle, protocol=2)
    with pytest.raises(pickle.UnpicklingError):  # weights_only refuses arbitrary objects
        IVCNFImputer.load(pickled)


def test_load_refuses_a_file_from_a_newer_version(tmp_path, fitted):
    path = tmp_path / "imputer.pt"
    fitted.save(path)
    payload = torch.load(path, weights_only=True)
    payload["version"] += 1  # as if a later skivcnf had written it
    torch.save(payload, path)
    with pytest.raises(ValueError, match="newer"):
        IVCNFImputer.load(path)


def test_an_imputer_saved_for_cuda_loads_where_there_is_none(tmp_path, frame, fitted):
    expected = fitted.transform(frame)
    moved = pickle.loads(pickle.dumps(fitted))
    moved.device = "cuda:0"  # as if fitted on a GPU machine
    moved.save(tmp_path / "gpu.pt")
    if torch.cuda.is_available():
        revived, loaded = pickle.loads(pickle.dumps(moved)), IVCNFImputer.load(tmp_path / "gpu.pt")
    else:  # the CPU, with a warning that says so
        with pytest.warns(UserWarning, match="not available"):
            revived = pickle.loads(pickle.dumps(moved))
        with pytest.warns(UserWarning, match="not available"):
            loaded = IVCNFImputer.load(tmp_path / "gpu.pt")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for copy in (revived, loaded):
        assert next(copy.flow_.parameters()).device.type == device
        out = copy.transform(frame)
        if device == "cpu":  # the same arithmetic and the same random streams as the original
            np.testing.assert_array_equal(out, expected)
        else:  # a CUDA generator draws other numbers: only the observed entries are comparable
            observed, d = ~np.isnan(frame.to_numpy()), frame.shape[1]
            np.testing.assert_array_equal(out[:, :d][observed], expected[:, :d][observed])


def test_load_onto_a_named_device(tmp_path, frame, fitted):
    fitted.save(tmp_path / "imputer.pt")
    loaded = IVCNFImputer.load(tmp_path / "imputer.pt", device="cpu")
    assert loaded.device == "cpu" and next(loaded.flow_.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(loaded.transform(frame), fitted.transform(frame))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            IVCNFImputer.load(tmp_path / "imputer.pt", device="cuda")
    with pytest.raises(ValueError, match="device must be"):
        IVCNFImputer.load(tmp_path / "imputer.pt", device="gpu")


def test_imputers_saved_before_the_linear_layer_load_without_it(tmp_path, frame):
    import json

    earlier = IVCNFImputer(**{**TINY, "linear_layer": False}).fit(frame)
    earlier.save(tmp_path / "now.pt")
    payload = torch.load(tmp_path / "now.pt", weights_only=True)
    params = json.loads(payload["params"])
    del params["linear_layer"]  # as written before the parameter existed
    torch.save({**payload, "params": json.dumps(params)}, tmp_path / "earlier.pt")
    loaded = IVCNFImputer.load(tmp_path / "earlier.pt")
    assert loaded.linear_layer is False
    assert_same_imputer(loaded, earlier, frame)
    state = earlier.__getstate__()
    del state["linear_layer"]
    unpickled = IVCNFImputer.__new__(IVCNFImputer)
    unpickled.__setstate__(state)
    assert_same_imputer(unpickled, earlier, frame)


def test_imputers_saved_before_grid_dequantisation_load_without_it(tmp_path, frame):
    import json

    earlier = IVCNFImputer(**{**TINY, "grid_dequantisation": False}).fit(frame)
    assert not earlier.grid_steps_.any()
    earlier.save(tmp_path / "now.pt")
    payload = torch.load(tmp_path / "now.pt", weights_only=True)
    params = json.loads(payload["params"])
    del params["grid_dequantisation"]  # as written before the parameter and its array existed
    arrays = {k: v for k, v in payload["arrays"].items() if k != "grid_steps_"}
    torch.save({**payload, "params": json.dumps(params), "arrays": arrays}, tmp_path / "earlier.pt")
    loaded = IVCNFImputer.load(tmp_path / "earlier.pt")
    assert loaded.grid_dequantisation is False
    assert_same_imputer(loaded, earlier, frame)
    state = earlier.__getstate__()
    del state["grid_dequantisation"], state["grid_steps_"]
    unpickled = IVCNFImputer.__new__(IVCNFImputer)
    unpickled.__setstate__(state)
    assert_same_imputer(unpickled, earlier, frame)

