"""The paper's protocol (4.2.1, Tables 1 and 3) on scikit-learn's 8 x 8 digits, and its completion task (4.2.2).

Train on the incomplete train split (random pixels missing at ``--rates``), report the test
split's top-1 accuracy (Table 1) and the RMSE of its imputed pixels on [0, 1] (Table 3):

- ``ivcnf_classifier`` / ``ivcnf_classifier_conv``: :class:`~skivcnf.IVCNFClassifier` with
  the MLP or the convolutional flow (``image_shape=(8, 8)``), trained on the incomplete rows
  only; its RMSE is its own flow's imputation (``transform``). Its head reads the completed
  rows (the default); ``ivcnf_classifier_latent``, the same with the paper's input, the
  latent code (``head_input="latent"``); ``ivcnf_classifier_predictive``, the default with
  ``classification_loss="predictive"``.
- Switches at the end of an IVCNF method's name force a setting, in this order: ``_linear`` or
  ``_no_linear`` the flow's linear map (``linear_layer``), then ``_grid`` or ``_no_grid`` the
  dequantisation of the pixels' grid (``grid_dequantisation``); without a switch the estimator's
  default holds (the imputer's flow has the map, the classifier's has not; both dequantise).
  ``ivcnf_classifier_linear_no_grid`` was the classifier's default before these runs;
  ``ivcnf_classifier_predictive_linear_no_grid`` is how its 90% row was measured.
- ``hgb``: ``HistGradientBoostingClassifier`` on the incomplete data (native NaN support).
- ``iterative_lr``, ``ivcnf_lr`` / ``ivcnf_conv_lr``: ``IterativeImputer`` or ``IVCNFImputer``
  (MLP or convolutional flow), then a ``LogisticRegression``; the imputer's RMSE.

``--task completion``: the flow trained on the complete train images; a centred 4 x 4 square
hidden on ``--n-completion`` test images; completed by one draw from the prior (the paper's
"first solution"), by the amortised posterior's weighted mean, and after fitting per-row
Householder posteriors (``refinement_steps``); RMSE of each and a figure.

    python -m benchmarks.paper_digits --rates 0.5 0.9 --out benchmarks/results/paper_digits
    python -m benchmarks.paper_digits --task completion --out benchmarks/results/paper_digits

Rows of ``results.csv`` are appended as each fit ends, so that an interrupted run keeps them.
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skivcnf import IVCNFClassifier, IVCNFImputer

#: The paper's MNIST figures (Tables 1 and 3): other data, shown for reference, not compared.
PAPER_MNIST = {"accuracy": {0.5: 0.9616, 0.6: 0.9588, 0.7: 0.9485, 0.8: 0.9355, 0.9: 0.886},
               "rmse": {0.5: 0.1127, 0.6: 0.1221, 0.7: 0.1340, 0.8: 0.1470, 0.9: 0.1924}}
#: The methods without switches (see the module's docstring for the switches an IVCNF name may end in).
METHODS = ("hgb", "iterative_lr", "ivcnf_lr", "ivcnf_classifier", "ivcnf_classifier_latent", "ivcnf_conv_lr",
           "ivcnf_classifier_conv", "ivcnf_classifier_predictive")
#: Name switches and the estimator parameter each forces, in the order they may end a name.
SWITCHES = (("linear", "linear_layer"), ("grid", "grid_dequantisation"))
#: The convolutional flow: 2 blocks of 16 hidden channels (the exact log-determinant carries 64
#: tangents per row through every convolution: 4 blocks of 32 cost 5x more a step on the CPU).
CONV = {"image_shape": (8, 8), "n_blocks": 2, "conv_channels": (16, 16)}
PIXEL_MAX = 16.0


def split(rate, seed=0):
    """Train/test split of digits (70/30, stratified) with pixels missing completely at random at ``rate``."""
    X, y = load_digits(return_X_y=True)
    mask = np.random.default_rng(seed).random(X.shape) < rate
    mask[mask.all(axis=1), 0] = False  # no image entirely missing
    return train_test_split(X, np.where(mask, np.nan, X), mask, y, test_size=0.3, random_state=seed, stratify=y)


def _rmse(truth, imputed, mask):
    return float(np.sqrt(np.mean(((imputed - truth)[mask] / PIXEL_MAX) ** 2)))


def method_settings(method):
    """The method without its switches, and the estimator settings they force.

    >>> method_settings("ivcnf_lr_no_linear_grid")
    ('ivcnf_lr', {'linear_layer': False, 'grid_dequantisation': True})
    """
    forced = {}
    for switch, parameter in reversed(SWITCHES):
        for value, suffix in ((False, f"_no_{switch}"), (True, f"_{switch}")):
            if method.startswith("ivcnf") and method.endswith(suffix):
                forced[parameter], method = value, method[:-len(suffix)]
                break
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: one of {METHODS}, IVCNF ones with switches {SWITCHES}.")
    return method, dict(reversed(forced.items()))


def run_method(method, rate, max_epochs, seed=0):
    """One method at one rate: accuracy, RMSE (NaN where the method imputes nothing) and seconds."""
    X_train, X_test, Xm_train, Xm_test, _, mask_test, y_train, y_test = split(rate, seed)
    name = method
    method, forced = method_settings(method)
    options = {"random_state": seed, "max_epochs": max_epochs, **forced}
    conv = CONV if "conv" in method else {}
    started = time.perf_counter()
    rmse = float("nan")
    if method == "hgb":
        model = HistGradientBoostingClassifier(random_state=seed).fit(Xm_train, y_train)
    elif method.startswith("ivcnf_classifier"):
        head_input = "latent" if "_latent" in method else "data"
        loss = "predictive" if "_predictive" in method else "expected"
        model = IVCNFClassifier(head_hidden_layer_sizes=(64,), head_input=head_input, classification_loss=loss,
                                **options, **conv).fit(Xm_train, y_train)
        rmse = _rmse(X_test, model.transform(Xm_test), mask_test)
    else:
        imputer = IterativeImputer(random_state=seed, max_iter=10) if method == "iterative_lr" else \
            IVCNFImputer(**options, **conv)
        model = make_pipeline(imputer, StandardScaler(), LogisticRegression(max_iter=2000)).fit(Xm_train, y_train)
        rmse = _rmse(X_test, model[0].transform(Xm_test), mask_test)
    accuracy = float(model.score(Xm_test, y_test))
    return {"rate": rate, "method": name, "accuracy": accuracy, "rmse": rmse,
            "seconds": time.perf_counter() - started, "max_epochs": max_epochs}


def completion(n_images, refinement_steps, n_reflections, max_epochs, out, seed=0):
    """The post-training completion task (paper 4.2.2) with the convolutional flow; returns its rows."""
    X, y = load_digits(return_X_y=True)
    X_train, X_test = train_test_split(X, test_size=0.3, random_state=seed, stratify=y)
    X_test = X_test[:n_images]
    square = np.zeros((8, 8), dtype=bool)
    square[2:6, 2:6] = True
    mask = np.broadcast_to(square.ravel(), X_test.shape)
    X_missing = np.where(mask, np.nan, X_test)
    imputer = IVCNFImputer(random_state=seed, max_epochs=max_epochs, n_reflections=n_reflections, **CONV)
    started = time.perf_counter()
    imputer.fit(X_train)
    fit_seconds = time.perf_counter() - started
    completions = {"first solution": imputer.conditional_draws(X_missing, n_draws=1).values[0],
                   "amortised": imputer.transform(X_missing)}
    completions["fitted"] = imputer.set_params(refinement_steps=refinement_steps).transform(X_missing)
    rows = [{"completion": name, "rmse": _rmse(X_test, values, mask),
             "rmse_sd_over_images": float(np.std(np.sqrt(np.mean(((values - X_test) / PIXEL_MAX)[mask]
                                                                 .reshape(len(X_test), -1) ** 2, axis=1)))),
             "fit_seconds": fit_seconds} for name, values in completions.items()]
    _figure(X_test, X_missing, completions, out / "completion.png")
    return rows


def _figure(truth, missing, completions, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"truth": truth, "observed": np.nan_to_num(missing, nan=PIXEL_MAX / 2), **completions}
    n = min(len(truth), 8)
    fig, axes = plt.subplots(len(panels), n, figsize=(n, len(panels)))
    for row, (name, images) in enumerate(panels.items()):
        for col in range(n):
            ax = axes[row, col]
            ax.imshow(images[col].reshape(8, 8), cmap="gray_r", vmin=0, vmax=PIXEL_MAX)
            ax.set_xticks([]), ax.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _markdown(frame, digits):
    """A DataFrame as a markdown table (pandas' to_markdown needs tabulate, not a dependency)."""
    header = [frame.index.name or "", *map(str, frame.columns)]
    rows = [[str(index), *(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in values)]
            for index, values in zip(frame.index, frame.to_numpy(), strict=True)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def summary(results):
    """Accuracy and RMSE tables (rate by method), the paper's MNIST figures appended for reference."""
    tables = []
    for metric in ("accuracy", "rmse"):
        table = results.pivot_table(index="method", columns="rate", values=metric, dropna=False)
        paper = pd.DataFrame([PAPER_MNIST[metric]], index=["paper, MNIST (reference)"])
        table = pd.concat([table, paper[[r for r in table.columns if r in paper]]])
        tables.append(f"### {metric}\n\n" + _markdown(table, 4))
    seconds = results.pivot_table(index="method", columns="rate", values="seconds")
    tables.append("### seconds (fit + predict + impute)\n\n" + _markdown(seconds, 0))
    return "\n\n".join(tables)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("classification", "completion"), default="classification")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9])
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        help=f"of {', '.join(METHODS)}; IVCNF ones may end in switches (the module's docstring)")
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--n-completion", type=int, default=16)
    parser.add_argument("--refinement-steps", type=int, default=500)
    parser.add_argument("--n-reflections", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/paper_digits"))
    args = parser.parse_args(argv)
    for method in args.methods:
        try:
            method_settings(method)
        except ValueError as error:
            parser.error(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    if args.task == "completion":
        rows = completion(args.n_completion, args.refinement_steps, args.n_reflections, args.max_epochs, args.out)
        table = pd.DataFrame(rows)
        table.to_csv(args.out / "completion.csv", index=False)
        print(_markdown(table.set_index("completion"), 4))
        return
    path = args.out / "results.csv"
    for rate in args.rates:
        for method in args.methods:
            row = run_method(method, rate, args.max_epochs)
            print(row, flush=True)
            previous = pd.read_csv(path) if path.exists() else pd.DataFrame()
            if len(previous):
                previous = previous[~((previous["rate"] == rate) & (previous["method"] == method))]
            pd.concat([previous, pd.DataFrame([row])]).to_csv(path, index=False)
    text = summary(pd.read_csv(path))
    (args.out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
