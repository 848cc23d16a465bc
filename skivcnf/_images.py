"""Rows that are flattened images (``image_shape``): their layout, dequantisation and modules.

A convolutional flow needs every pixel at its place: no pixel is dropped as constant, and all
share one centre and one scale (a per-pixel standardisation would stretch the nearly
constant border pixels of digits into noise). Pixels are intensities on a grid (0..16 for
scikit-learn's digits, k/255 for 8-bit images): training adds uniform noise of the grid's
step to the observed pixels (uniform dequantisation, as image flows do), so that a pixel that
never varies (a digit's corner) has a bounded density rather than a collapsing one.
"""

from numbers import Integral

import numpy as np

from ._columns import ColumnLayout, grid_step
from .conditional import ConvInferenceNetwork
from .flows import image_flow

__all__ = ["build_image_modules", "check_image_shape", "image_layout", "pixel_step"]


def check_image_shape(image_shape, n_features):
    """``image_shape`` as ``(C, H, W)``; raises a ValueError unless it is 2 or 3 positive ints whose product is
    ``n_features``."""
    shape = tuple(image_shape)
    if len(shape) not in (2, 3) or not all(isinstance(s, Integral) and s > 0 for s in shape):
        raise ValueError(f"image_shape must be (height, width) or (channels, height, width) of positive ints, got "
                         f"{image_shape!r}.")
    shape = (1, *shape) if len(shape) == 2 else shape
    if int(np.prod(shape)) != n_features:
        raise ValueError(f"image_shape={tuple(image_shape)!r} has {int(np.prod(shape))} pixels but X has "
                         f"{n_features} features; rows must be images flattened in C-order (channel, row, column).")
    return tuple(int(s) for s in shape)


def image_layout(X, mask):
    """The :class:`~skivcnf._columns.ColumnLayout` of image rows: every pixel modelled, one centre and scale.

    Raises a ValueError naming the pixels that are missing in every row (nothing to place them by).
    """
    empty = mask.all(axis=0)
    if empty.any():
        raise ValueError(f"image_shape needs every pixel observed in some row; pixels {np.flatnonzero(empty).tolist()} "
                         "are missing in every row.")
    observed = X[~mask]
    scale = float(np.std(observed)) or 1.0
    d = X.shape[1]
    return ColumnLayout(empty, np.zeros(d), np.ones(d, dtype=bool), np.full(d, float(np.mean(observed))),
                        np.full(d, scale))


def pixel_step(X, mask):
    """The step of the grid the observed intensities of every pixel lie on (0 if none, or one value)."""
    return grid_step(X[~mask])


def build_image_modules(estimator, image_shape, generator):
    """The convolutional flow (:func:`~skivcnf.flows.image_flow`) and the paper's convolutional inference network."""
    flow = image_flow(image_shape, n_blocks=estimator.n_blocks, hidden_channels=tuple(estimator.conv_channels),
                      n_dense_blocks=estimator.n_dense_blocks, dense_hidden=tuple(estimator.hidden_layer_sizes),
                      lipschitz_coeff=estimator.lipschitz_coeff, generator=generator)
    return flow, ConvInferenceNetwork(image_shape, n_reflections=estimator.n_reflections, generator=generator)
