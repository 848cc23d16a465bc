"""Image rows (``image_shape``): every pixel modelled on one scale, the convolutional flow and posterior."""

import numpy as np
import pytest

from skivcnf import IVCNFClassifier, IVCNFImputer
from skivcnf._images import check_image_shape, image_layout, pixel_step
from skivcnf.conditional import ConvInferenceNetwork
from skivcnf.flows import ConvResidualBlock

IMAGE = {"image_shape": (4, 4), "n_blocks": 1, "conv_channels": (4,), "n_dense_blocks": 1, "hidden_layer_sizes": (8,),
         "max_epochs": 2, "n_draws": 4, "early_stopping": False, "random_state": 0}


def bars(n=48, rate=0.3, seed=0):
    """4x4 integer images 0..8 with a bright row or column, a dark border pixel that never varies, and holes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 3, size=(n, 4, 4)).astype(float)
    lines = rng.integers(0, 4, n)
    vertical = rng.random(n) < 0.5
    images[vertical, :, lines[vertical]] += 6
    images[~vertical, lines[~vertical], :] += 6
    images[:, 0, 0] = 0.0
    X = images.reshape(n, 16)
    return X, np.where(rng.random(X.shape) < rate, np.nan, X), vertical.astype(int)


def test_shape_is_checked():
    assert check_image_shape((4, 4), 16) == (1, 4, 4) and check_image_shape([2, 2, 4], 16) == (2, 2, 4)
    with pytest.raises(ValueError, match="has 9 pixels but X has 16 features"):
        check_image_shape((3, 3), 16)
    with pytest.raises(ValueError, match="positive ints"):
        check_image_shape((4, 0, 4), 16)
    _, X, _ = bars()
    with pytest.raises(ValueError, match="has 9 pixels"):
        IVCNFImputer(**{**IMAGE, "image_shape": (3, 3)}).fit(X)


def test_every_pixel_is_modelled_on_one_scale():
    _, X, _ = bars()
    mask = np.isnan(X)
    layout = image_layout(X, mask)
    assert layout.modelled.all() and not layout.empty.any()
    np.testing.assert_allclose(layout.center, np.nanmean(X))
    np.testing.assert_allclose(layout.scale, np.nanstd(X))
    assert pixel_step(X, mask) == 1.0 and pixel_step(X / 255, mask) == pytest.approx(1 / 255)
    assert pixel_step(np.sqrt(X + 2.0), mask) == 0.0  # intensities on no grid: no dequantisation
    X[:, 5] = np.nan
    with pytest.raises(ValueError, match=r"pixels \[5\] are missing in every row"):
        image_layout(X, np.isnan(X))


@pytest.fixture(scope="module")
def fitted():
    X, X_missing, _ = bars()
    return IVCNFImputer(**IMAGE).fit(X_missing), X, X_missing


def test_fit_builds_the_convolutional_modules(fitted):
    imputer, _, _ = fitted
    assert imputer.modelled_features_.all() and imputer.pixel_step_ == 1.0
    assert any(isinstance(layer, ConvResidualBlock) for layer in imputer.flow_.layers)
    assert isinstance(imputer.posterior_, ConvInferenceNetwork)
    assert all(bound <= 0.9 + 1e-6 for bound in imputer.flow_.lipschitz_bounds())
    # The never-varying pixel is dequantised: the bound stays finite instead of growing without limit.
    assert np.isfinite(imputer.history_.train_loss).all()


def test_transform_fills_holes_and_keeps_observed_pixels(fitted):
    imputer, _, X_missing = fitted
    out = imputer.transform(X_missing)
    observed = ~np.isnan(X_missing)
    assert np.isfinite(out).all() and np.array_equal(out[observed], X_missing[observed])
    # Imputations lie within the trained range widened by 3 sd (draws beyond it get no weight).
    assert out.min() >= -0.5 - 3 * np.nanstd(X_missing) and out.max() <= 8.5 + 3 * np.nanstd(X_missing)


def test_save_and_load_rebuild_the_image_model(fitted, tmp_path):
    imputer, _, X_missing = fitted
    imputer.save(tmp_path / "images.pt")
    loaded = IVCNFImputer.load(tmp_path / "images.pt")
    assert loaded.image_shape == (4, 4) and loaded.pixel_step_ == 1.0
    np.testing.assert_array_equal(loaded.transform(X_missing[:8]), imputer.transform(X_missing[:8]))


def test_classifier_on_images():
    _, X_missing, y = bars(n=64)
    clf = IVCNFClassifier(**{**IMAGE, "max_epochs": 3}).fit(X_missing, y)
    proba = clf.predict_proba(X_missing[:10])
    assert proba.shape == (10, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
