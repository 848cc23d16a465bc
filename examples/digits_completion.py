"""Complete handwritten digits with most of their pixels missing (the idea of the paper's Figure 1).

scikit-learn's digits (1797 images of 8 x 8 pixels, bundled with scikit-learn, no download),
pixels divided by 16 into [0, 1], are split into training and test images. IVCNFImputer is
fitted on training images of which 60% of the pixels were removed completely at random (it
never sees a complete image), then completes test images with 60% and with 80% of their
pixels removed. The root mean squared error on the removed pixels is printed next to that of
scikit-learn's SimpleImputer (pixel means) and KNNImputer (5 neighbours), fitted on the same
incomplete training images, and a figure of 8 test digits is saved to
``<out>/digits_completion.png``: for each missing rate the incomplete image (missing pixels
in red), the IVCNF and the KNN completions, and the true image on top.

With 64 columns this is the expensive case of the imputer (the cost per draw grows like
d^2), so the setting is kept small for the time budget: 600 training images, a flow of 3
blocks, ``max_epochs=15`` without early stopping, ``n_draws=32``, 150 test images per missing
rate. Takes about 20 seconds on 2 idle CPU cores, up to 3 minutes when other torch jobs share
the cores (the training time is printed). Seeded, so it reproduces; more images and epochs
give sharper completions.

    python examples/digits_completion.py [--out examples/output]
"""

import argparse
import time
from pathlib import Path

import matplotlib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.impute import KNNImputer, SimpleImputer
from sklearn.model_selection import train_test_split

from skivcnf import IVCNFImputer

matplotlib.use("Agg")  # write files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

N_TRAIN = 600
N_TEST = 150
TRAIN_MISSING_RATE = 0.6
TEST_MISSING_RATES = (0.6, 0.8)
N_SHOWN = 8


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/output"), help="folder for the figure")
    return parser.parse_args()


def remove(images, rate, rng):
    """The images with a fraction ``rate`` of their pixels set to NaN (MCAR), and the mask."""
    mask = rng.random(images.shape) < rate
    return np.where(mask, np.nan, images), mask


def main():
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    images, labels = load_digits(return_X_y=True)
    images = images / 16.0
    train, test = train_test_split(images, train_size=N_TRAIN, test_size=N_TEST, stratify=labels, random_state=0)
    rng = np.random.default_rng(0)
    train_missing, _ = remove(train, TRAIN_MISSING_RATE, rng)
    print(f"digits: {len(train)} training images with {np.isnan(train_missing).mean():.0%} of pixels missing, "
          f"{len(test)} test images, 8 x 8 = {images.shape[1]} pixels in [0, 1]")

    imputers = {
        "IVCNFImputer": IVCNFImputer(n_blocks=3, max_epochs=15, n_draws=32, early_stopping=False, random_state=0),
        "KNNImputer (k=5)": KNNImputer(n_neighbors=5),
        "SimpleImputer (mean)": SimpleImputer(keep_empty_features=True),
    }
    for name, imputer in imputers.items():
        start = time.perf_counter()
        imputer.fit(train_missing)
        print(f"fitted {name:<21} in {time.perf_counter() - start:6.1f} s")
    ivcnf = imputers["IVCNFImputer"]
    print(f"  IVCNF models {int(ivcnf.modelled_features_.sum())} of 64 pixels (the others are constant in the "
          f"training images); final training bound {-ivcnf.history_.train_loss[-1]:.2f} nats per image")

    shown = {}  # missing rate -> (incomplete images, {name: completed images}) for the figure
    print(f"\nRMSE on the removed pixels of {len(test)} test images (pixel scale [0, 1]):")
    print(f"{'missing rate':<14}" + "".join(f"{name:>23}" for name in imputers) + f"{'IVCNF time':>12}")
    for rate in TEST_MISSING_RATES:
        test_missing, mask = remove(test, rate, rng)
        completed, line = {}, f"{rate:<14.0%}"
        for name, imputer in imputers.items():
            start = time.perf_counter()
            completed[name] = imputer.transform(test_missing)
            seconds = time.perf_counter() - start
            assert np.array_equal(completed[name][~mask], test[~mask])  # observed pixels are kept
            line += f"{np.sqrt(np.mean((completed[name] - test)[mask] ** 2)):>23.4f}"
            if name == "IVCNFImputer":
                ivcnf_seconds = seconds
        print(line + f"{ivcnf_seconds:>10.1f} s")
        shown[rate] = (test_missing[:N_SHOWN], {k: v[:N_SHOWN] for k, v in completed.items()})

    # Figure: true digit on top, then per missing rate the incomplete image and two completions.
    rows = [("truth", test[:N_SHOWN])]
    for rate, (incomplete, completed) in shown.items():
        rows += [(f"{rate:.0%} missing", incomplete), (f"IVCNF\n({rate:.0%})", completed["IVCNFImputer"]),
                 (f"KNN\n({rate:.0%})", completed["KNNImputer (k=5)"])]
    cmap = plt.get_cmap("gray_r").copy()
    cmap.set_bad("tab:red")  # missing pixels (NaN, masked) in red
    fig, axes = plt.subplots(len(rows), N_SHOWN, figsize=(1.1 * N_SHOWN + 0.8, 1.1 * len(rows)))
    for r, (title, block) in enumerate(rows):
        for c in range(N_SHOWN):
            ax = axes[r, c]
            image = np.ma.masked_invalid(np.clip(block[c], 0.0, 1.0).reshape(8, 8))
            ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"IVCNF completions of test digits (trained on {len(train)} images, "
                 f"{TRAIN_MISSING_RATE:.0%} of pixels missing)", fontsize=10)
    fig.tight_layout()
    path = args.out / "digits_completion.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"figure written: {path}")


if __name__ == "__main__":
    main()
