"""Saving, loading and pickling a fitted IVCNFImputer.

``save`` writes plain data only (tensors, numbers, strings; ``torch.save`` of a dict), so
``load`` reads it with ``torch.load(weights_only=True)``, which runs no code from the file.
Pickling keeps the modules' weights as state dicts on the CPU, so a fitted imputer unpickles
on a machine without a GPU. Both rebuild the flow and the posterior with the estimator's own
builder, so fit, load and unpickling make the same architecture.

Under ``torch.distributed`` (an imputer fitted data-parallel is the same on every rank),
``save`` is a collective: every rank calls it, rank 0 alone writes, and every rank returns
once the file is complete, so that ``load`` right after reads it on any rank. Calling it on
rank 0 alone would leave rank 0 waiting for the others.
"""

import json
import math
import os
from dataclasses import asdict
from numbers import Integral

import numpy as np
import torch
from sklearn.impute import MissingIndicator

from ._distributed import write_on_rank_zero
from ._encoding import TableEncoder
from ._sklearn_compat import own_output_config
from ._training import TrainingHistory
from ._utils import RandomStreams, resolve_device

__all__ = ["FORMAT", "VERSION", "load_imputer", "save_imputer", "pickled_state", "restore_pickled_state"]

FORMAT = "skivcnf.IVCNFImputer"
#: Version 2: centre and scale instead of StandardScaler's internals, the ``set_output``
#: configuration, the unified training history, the root seed of the named random streams.
#: Version 3: the column kinds and categories (mixed-type tables).
#: Version 4: the estimator's class, its modules by name (a classifier's head), its classes.
VERSION = 4

_ARRAYS = ("empty_features_", "constant_values_", "modelled_features_", "center_", "scale_", "observed_range_")


def _cpu_state(module):
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def save_imputer(imputer, path):
    """Write a fitted ``imputer`` to ``path`` (see :meth:`IVCNFImputer.save`); under ``torch.distributed``,
    call it on every rank: rank 0 writes, the others wait for it (see the module's docstring)."""
    write_on_rank_zero(lambda: _write(imputer, path))


def _write(imputer, path):
    params = imputer.get_params()
    if not (params["random_state"] is None or isinstance(params["random_state"], Integral)):
        params["random_state"] = None  # a RandomState instance was only used to seed fit
    for name in ("hidden_layer_sizes", "conv_channels", "image_shape", "head_hidden_layer_sizes"):
        if params.get(name) is not None:
            params[name] = list(params[name])
    fitted = {
        "n_features_in": int(imputer.n_features_in_),
        "feature_names_in": [str(n) for n in imputer.feature_names_in_] if hasattr(imputer, "feature_names_in_")
        else None,
        "root_seed": imputer._streams.root_seed,
        "indicator_features": imputer.indicator_.features_.tolist() if imputer.indicator_ is not None else None,
        "history": asdict(imputer.history_) if imputer.history_ is not None else None,
        # set_output's choice (e.g. {"transform": "pandas"}) is estimator state too.
        "output_config": own_output_config(imputer),
        "encoder": imputer._encoder.to_dict(),
        "estimator": type(imputer).__name__,
        "pixel_step": imputer.pixel_step_,
        "classes": imputer.classes_.tolist() if hasattr(imputer, "classes_") else None,
    }
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "params": json.dumps(params, default=_plain_number),
        "fitted": json.dumps(fitted, default=_plain_number),
        "arrays": {name: torch.from_numpy(np.array(getattr(imputer, name))) for name in _ARRAYS},
        "modules": {name: _cpu_state(getattr(imputer, name)) for name in imputer._MODULES
                    if getattr(imputer, name) is not None},
    }
    payload["arrays"]["grid_steps_"] = torch.from_numpy(np.array(imputer.grid_steps_))
    if hasattr(imputer, "class_prior_"):
        payload["arrays"]["class_prior_"] = torch.from_numpy(imputer.class_prior_)
    torch.save(payload, os.fspath(path))


def _plain_number(value):
    """JSON for NumPy scalars among the parameters (e.g. ``n_draws`` from ``np.arange`` in a grid search)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"parameter value {value!r} of type {type(value).__name__} cannot be saved.")


def load_imputer(cls, path, device=None):
    """Read an imputer written by :func:`save_imputer` (see :meth:`IVCNFImputer.load`)."""
    payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a file written by IVCNFImputer.save.")
    if payload["version"] != VERSION:
        newer = payload["version"] > VERSION
        raise ValueError(f"{os.fspath(path)!r} was written by {'a newer' if newer else 'an older'} skivcnf (format "
                         f"version {payload['version']}, this one reads {VERSION}); "
                         f"{'upgrade skivcnf' if newer else 'refit the imputer'} to use it.")
    fitted = json.loads(payload["fitted"])
    if fitted["estimator"] != cls.__name__:
        raise ValueError(f"{os.fspath(path)!r} holds a {fitted['estimator']}: read it with {fitted['estimator']}.load.")
    params = {**cls._EARLIER_PARAMETERS, **json.loads(payload["params"])}
    for name in ("hidden_layer_sizes", "conv_channels", "image_shape", "head_hidden_layer_sizes"):
        if params.get(name) is not None:
            params[name] = tuple(params[name])
    if device is not None:
        if not isinstance(device, str):
            raise TypeError(f"device must be a str such as 'cpu' or 'cuda:0', got {type(device).__name__}.")
        resolve_device(device)  # a device that cannot be used fails here, naming it
        params["device"] = device
    if isinstance(params["missing_values"], float) and math.isnan(params["missing_values"]):
        params["missing_values"] = np.nan
    imputer = cls(**params)
    imputer.n_features_in_ = fitted["n_features_in"]
    encoder = imputer._encoder = TableEncoder.from_dict(fitted["encoder"])
    imputer.feature_kinds_ = np.array(encoder.kinds, dtype=object)
    imputer.categories_ = list(encoder.categories)
    if fitted["feature_names_in"] is not None:
        imputer.feature_names_in_ = np.asarray(fitted["feature_names_in"], dtype=object)
    for name in _ARRAYS:
        setattr(imputer, name, payload["arrays"][name].numpy())
    imputer.pixel_step_ = fitted["pixel_step"]
    # Files written before grid dequantisation trained every float feature as continuous.
    steps = payload["arrays"].get("grid_steps_")
    imputer.grid_steps_ = steps.numpy() if steps is not None else np.zeros(len(imputer.modelled_features_))
    if fitted["classes"] is not None:
        imputer.classes_ = np.asarray(fitted["classes"])
        imputer.class_prior_ = payload["arrays"]["class_prior_"].numpy()
    imputer.empty_features_ = imputer.empty_features_.astype(bool)
    imputer.modelled_features_ = imputer.modelled_features_.astype(bool)
    imputer.indicator_ = None
    if fitted["indicator_features"] is not None:
        imputer.indicator_ = _rebuild_indicator(imputer.n_features_in_, fitted["indicator_features"])
    if fitted["output_config"]:
        imputer.set_output(**fitted["output_config"])
    imputer._streams = RandomStreams(fitted["root_seed"])
    imputer.history_ = TrainingHistory(**fitted["history"]) if fitted["history"] else None
    imputer._device = resolve_device(imputer.device, fall_back_to_cpu=True)
    _set_modules(imputer, payload["modules"])
    return imputer


def _set_modules(imputer, states):
    """Rebuild the estimator's modules from their CPU ``states`` (a name -> state dict) onto its device;
    the modules without a state (no modelled column) are None."""
    for name in imputer._MODULES:
        setattr(imputer, name, None)
    if states:
        for name, module in imputer._rebuild_modules(int(imputer.modelled_features_.sum())).items():
            module.load_state_dict(states[name])
            setattr(imputer, name, module.to(imputer._device))


def _rebuild_indicator(n_features, features):
    """A fitted MissingIndicator flagging ``features`` (fitted, as in ``fit``, on an array)."""
    row = np.zeros((1, n_features))
    row[0, np.asarray(features, dtype=int)] = np.nan
    return MissingIndicator(missing_values=np.nan, error_on_new=False).fit(row)


def pickled_state(state):
    """``__getstate__``: the estimator's state, its modules as CPU state dicts (parametrised modules pickle so)."""
    state = dict(state)
    for name in ("flow_", "posterior_", "head_"):
        if isinstance(state.get(name), torch.nn.Module):
            state[name] = _cpu_state(state[name])
    state.pop("_device", None)
    return state


def restore_pickled_state(imputer):
    """After ``__setstate__``: rebuild the modules on the ``device`` setting (the CPU if it is absent)."""
    state = imputer.__dict__
    if "modelled_features_" not in state:
        return
    state.setdefault("grid_steps_", np.zeros(len(state["modelled_features_"])))  # pickled before it existed
    imputer._device = resolve_device(imputer.device, fall_back_to_cpu=True)
    if isinstance(state.get("flow_"), dict):
        _set_modules(imputer, {name: state[name] for name in imputer._MODULES})
