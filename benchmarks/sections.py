"""The suite's sections on the imputer against its peers (accuracy, rubin, digits, completion, scaling, mixed).

Each task is a plain function of its key that returns one record (a dict).

A task builds its own data and mask from seeds, so that tasks can run in any order, in
separate processes, and be resumed. ``quick=True`` shrinks data and training for the smoke run.
"""

import warnings

import numpy as np
import torch
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from skivcnf.conditional import GaussianPosterior, conditional_mean, fit_posterior, sample_conditional
from skivcnf.pooling import pool_estimates

from . import data, masks, mixed_data, mixed_peers, peers
from .measure import (
    beyond_range,
    check_frame,
    check_output,
    interval_coverage,
    mae,
    numeric_rmse,
    ols,
    pfc,
    pfc_by_column,
    rmse,
    single_interval,
    timed,
)

QUICK_IVCNF = {"max_epochs": 2, "n_draws": 8}
N_MULTIPLE = 50  # imputations drawn for interval coverage
N_PROPER = 20  # of them with proper=True (each a model re-estimated on a bootstrap resample)
LEVEL = 0.9


def _build_imputer(name, seed, quick):
    imputer = peers.make(name, seed)
    if quick and name == "IVCNFImputer":
        imputer.set_params(**QUICK_IVCNF)
    return imputer


def _crashed(record, exc):
    record.update(status="crashed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
    return record


# ----------------------------------------------------------------------------------------------
# accuracy grid: tables x mechanisms x seeds x imputers, fit_transform on the incomplete table


def accuracy(table, mechanism, seed, imputer, quick=False):
    ds = data.load(table, n_samples=120 if quick else None)
    X = ds.X
    mask = masks.make_mask(mechanism, X, seed)
    X_missing = np.where(mask, np.nan, X)
    record = {"table": table, "mechanism": mechanism, "seed": seed, "imputer": imputer,
              "rows": X.shape[0], "columns": X.shape[1], "missing_rate": float(mask.mean())}
    try:
        model = _build_imputer(imputer, seed, quick)
        out, seconds, memory, kinds = timed(model.fit_transform, X_missing)
    except Exception as exc:
        return _crashed(record, exc)
    problems = check_output(X_missing, out, mask, is_mean=imputer == "mean")
    record.update(status="failed: " + "; ".join(problems) if problems else "ok", seconds=seconds,
                  peak_mib=memory, warnings=kinds, rmse=rmse(X, out, mask), mae=mae(X, out, mask),
                  beyond_range_sd=beyond_range(X_missing, out, mask))
    if ds.has_oracle:
        oracle = ds.law.oracle_mean(X_missing)
        record.update(oracle_rmse=rmse(X, oracle, mask), oracle_mae=mae(X, oracle, mask),
                      oracle_beyond_range_sd=beyond_range(X_missing, oracle, mask))
        if imputer in ("IVCNFImputer", "MICE"):
            record.update(_coverage(ds, X_missing, mask, model, imputer, seed, quick))
    return record


def _coverage(ds, X_missing, mask, model, imputer, seed, quick):
    """90% interval coverage and width from multiple imputations, with the oracle's width."""
    n = 10 if quick else N_MULTIPLE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if imputer == "IVCNFImputer":
            draws = model.sample_multiple_imputations(X_missing, n, proper=False)  # the fitted model's law
            n_proper = 3 if quick else N_PROPER
            proper = model.sample_multiple_imputations(X_missing, n_proper)  # bootstrap re-estimated models
            proper_coverage, proper_width = interval_coverage(ds.X, proper, mask, LEVEL)
        else:  # MICE with posterior sampling, one chain per imputation (the usual way)
            draws = np.stack([IterativeImputer(max_iter=25, sample_posterior=True, random_state=seed * 1000 + k)
                              .fit_transform(X_missing) for k in range(n)])
    coverage, width = interval_coverage(ds.X, draws, mask, LEVEL)
    oracle_draws = ds.law.oracle_sample(X_missing, 1000, np.random.default_rng(seed))
    oracle_coverage, oracle_width = interval_coverage(ds.X, oracle_draws, mask, LEVEL)
    record = {"coverage": coverage, "width": width, "oracle_coverage": oracle_coverage, "oracle_width": oracle_width,
              "n_imputations": n}
    if imputer == "IVCNFImputer":
        record.update(proper_coverage=proper_coverage, proper_width=proper_width, n_proper=n_proper)
    return record


# ----------------------------------------------------------------------------------------------
# Rubin's rules: coverage of a regression coefficient's interval over repeated samples and masks

RUBIN_ROWS, RUBIN_COLUMNS, RUBIN_M = 500, 6, 20


def rubin_case(table, repeat, rows=RUBIN_ROWS):
    """Repeat ``repeat`` of a Rubin's-rules table: the complete sample, its MAR 30% mask, the true
    coefficient and the law the sample was drawn from (``data.GaussianLaw`` or ``data.MixtureLaw``)."""
    if table == "gaussian":
        ds, seed, truth = data.correlated_gaussian(rows, RUBIN_COLUMNS, seed=10_000 + repeat), 10_000 + repeat, 0.8
    elif table == "mixture":
        ds, seed = data.gaussian_mixture(rows, seed=20_000 + repeat), 20_000 + repeat
        _, cov = ds.law.moments()
        truth = float(np.linalg.solve(cov[1:3, 1:3], cov[1:3, 0])[0])
    else:
        raise ValueError(f"no Rubin's-rules table {table!r}")
    return ds.X, masks.make_mask("MAR 30%", ds.X, seed), truth, ds.law


def rubin(repeat, imputer, quick=False, table="gaussian"):
    """Regress column 0 on columns 1-2 of a fresh sample with MAR 30% missing; record each method's
    interval for the coefficient of column 1.

    ``table="gaussian"``: a 500 x 6 AR(1) Gaussian, whose coefficient is ``rho = 0.8`` (column 0
    depends on the others through column 1 only). ``"mixture"``: the grid's three-component
    Gaussian mixture (500 x 8, non-Gaussian, multimodal), whose coefficient is the population
    least-squares one, computed from the law's moments.
    """
    X, mask, truth, _ = rubin_case(table, repeat, 150 if quick else RUBIN_ROWS)
    X_missing = np.where(mask, np.nan, X)
    m = 5 if quick else RUBIN_M

    def coefficient(table):
        coef, se, dof = ols(table[:, 1:3], table[:, 0])
        return coef[1], se[1], dof

    record = {"repeat": repeat, "imputer": imputer, "truth": truth, "m": m, "table": table}
    intervals = {}
    try:
        if imputer == "complete data":
            intervals["complete data"] = single_interval(*coefficient(X), level=LEVEL)
            keep = ~mask.any(1)
            if keep.sum() > 10:  # a few complete rows give no interval worth reporting
                intervals["complete cases"] = single_interval(*coefficient(X[keep]), level=LEVEL)
        else:
            if imputer == "IVCNFImputer":
                model = _build_imputer(imputer, repeat, quick)
                single = model.fit_transform(X_missing)
                draws = model.sample_multiple_imputations(X_missing, m)  # proper: bootstrap re-estimation
                fixed = [coefficient(d) for d in model.sample_multiple_imputations(X_missing, m, proper=False)]
                pooled = pool_estimates([f[0] for f in fixed], [f[1] ** 2 for f in fixed], dof_complete=fixed[0][2],
                                        level=LEVEL)
                intervals["multiple, one model"] = (pooled.estimate, pooled.low, pooled.high)
            elif imputer == "MICE":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    single = IterativeImputer(max_iter=25, random_state=repeat).fit_transform(X_missing)
                    draws = [IterativeImputer(max_iter=25, sample_posterior=True, random_state=repeat * 100 + k)
                             .fit_transform(X_missing) for k in range(m)]
            else:
                raise ValueError(f"no Rubin's-rules route for {imputer!r}")
            intervals["single"] = single_interval(*coefficient(single), level=LEVEL)
            fits = [coefficient(d) for d in draws]
            # Barnard and Rubin's degrees of freedom: the complete-data fit has n - 3 of them
            pooled = pool_estimates([f[0] for f in fits], [f[1] ** 2 for f in fits], dof_complete=fits[0][2],
                                    level=LEVEL)
            intervals["multiple"] = (pooled.estimate, pooled.low, pooled.high)
    except Exception as exc:
        return _crashed(record, exc)
    record["status"] = "ok"
    record["intervals"] = {k: [float(v) for v in iv] for k, iv in intervals.items()}
    return record


# ----------------------------------------------------------------------------------------------
# the paper's MNIST protocol (4.2.1) on digits: fit on the incomplete train split


def digits_split(quick=False):
    ds = data.digits()
    X, y = (ds.X[:300], ds.y[:300]) if quick else (ds.X, ds.y)
    return train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)


def digits_masks(X_train, X_test, rate, seed=0):
    """The protocol's MCAR masks of the training and test splits at ``rate``."""
    rng = np.random.default_rng([seed, int(rate * 100)])
    return masks.mcar(X_train, rate, rng), masks.mcar(X_test, rate, rng)


def digits_protocol(rate, imputer, seed=0, quick=False):
    X_train, X_test, y_train, y_test = digits_split(quick)
    m_train, m_test = digits_masks(X_train, X_test, rate, seed)
    train_missing, test_missing = np.where(m_train, np.nan, X_train), np.where(m_test, np.nan, X_test)
    inductive = peers.PEERS[imputer].inductive
    record = {"rate": rate, "imputer": imputer, "seed": seed, "inductive": inductive}
    try:
        model = _build_imputer(imputer, seed, quick)

        def fit_and_apply(train, test):
            train_out = model.fit_transform(train)
            # transductive peers impute the test rows from the test rows alone
            test_out = model.transform(test) if inductive else _build_imputer(imputer, seed, quick).fit_transform(test)
            return train_out, test_out

        (train_out, test_out), seconds, memory, kinds = timed(fit_and_apply, train_missing, test_missing)
    except Exception as exc:
        return _crashed(record, exc)
    problems = check_output(test_missing, test_out, m_test, is_mean=imputer == "mean")
    clf = LogisticRegression(max_iter=2000).fit(train_out, y_train)
    record.update(status="failed: " + "; ".join(problems) if problems else "ok", seconds=seconds, peak_mib=memory,
                  warnings=kinds, rmse=rmse(X_test, test_out, m_test), accuracy=float(clf.score(test_out, y_test)))
    return record


def digits_reference(quick=False):
    """Accuracy of the same classifier on complete digits (the ceiling of the protocol)."""
    X_train, X_test, y_train, y_test = digits_split(quick)
    clf = LogisticRegression(max_iter=2000).fit(X_train, y_train)
    return {"imputer": "complete data", "status": "ok", "accuracy": float(clf.score(X_test, y_test))}


# ----------------------------------------------------------------------------------------------
# post-training completion (paper 4.2.2): a flow fitted on complete digits, a centred square hidden

SQUARE = np.zeros((8, 8), dtype=bool)
SQUARE[2:6, 2:6] = True


def completion(quick=False, n_rows=200, n_reflections=8, steps=500, figure=None):
    """RMSE of the centre of test digits: first solution from the prior vs per-row fitted posteriors."""
    X_train, X_test, _, _ = digits_split(quick)
    X_test = X_test[: 40 if quick else n_rows]
    gen = torch.Generator().manual_seed(0)
    model = _build_imputer("IVCNFImputer", 0, quick)
    (_, seconds_fit, _, _) = timed(model.fit, X_train)
    mask = np.broadcast_to(SQUARE.ravel(), X_test.shape)
    cols = model.modelled_features_
    z = torch.as_tensor((X_test[:, cols] - model.center_) / model.scale_, dtype=torch.float32)
    hidden = torch.as_tensor(mask[:, cols].copy())
    y = torch.where(hidden, 0.0, z)
    flow = model.flow_

    def to_pixels(values):
        out = X_test.copy()
        full = values.detach().double().numpy() * model.scale_ + model.center_
        block = out[:, cols]
        block[mask[:, cols]] = full[mask[:, cols]]
        out[:, cols] = block
        return out

    def summarise(params, label):
        draws = sample_conditional(flow, y, hidden, params, n_samples=8 if quick else 64, generator=gen)
        mean, _ = conditional_mean(draws, weighted=True)
        first = to_pixels(draws.samples[0])
        return {f"{label}_one_draw_rmse": rmse(X_test, first, mask),
                f"{label}_weighted_mean_rmse": rmse(X_test, to_pixels(mean), mask)}, first, to_pixels(mean)

    posterior = GaussianPosterior(len(y), y.shape[1], n_reflections=n_reflections, generator=gen)
    with torch.no_grad():
        before, first_draw, first_mean = summarise(posterior(), "prior")
    (history, seconds_refine, _, _) = timed(
        lambda: fit_posterior(flow, y, hidden, posterior, n_samples=8, max_steps=10 if quick else steps, lr=1e-2,
                              generator=gen))
    with torch.no_grad():
        after, fitted_draw, fitted_mean = summarise(posterior(), "fitted")
    peers_rmse = {}
    stacked = np.vstack([X_train, np.where(mask, np.nan, X_test)])  # IterativeImputer needs NaN when fitting
    for name, imp in {"mean": SimpleImputer(), "KNN": KNNImputer(),
                      "MICE": IterativeImputer(max_iter=25, random_state=0)}.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peers_rmse[name] = rmse(X_test, imp.fit_transform(stacked)[len(X_train):], mask)
    if figure is not None:
        _completion_figure(figure, X_test, mask, first_draw, fitted_draw, fitted_mean)
    return {"status": "ok", "rows": len(X_test), "hidden_pixels": int(SQUARE.sum()), "n_reflections": n_reflections,
            "steps": history.n_steps, "seconds_fit_flow": seconds_fit,
            "seconds_refine": seconds_refine, **before, **after, "peers_rmse": peers_rmse}


def _completion_figure(path, X, mask, first, fitted, fitted_mean, n=8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    masked = np.where(mask, 0.5, X)
    rows = [("truth", X), ("observed (grey: hidden)", masked), ("first solution (prior draw)", first),
            ("fitted posterior: one draw", fitted), ("fitted posterior: weighted mean", fitted_mean)]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n, 1.25 * len(rows)))
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(np.clip(images[c].reshape(8, 8), 0, 1), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# scaling: fit and transform seconds against the table's size


def scaling(imputer, n_rows, n_columns, quick=False, max_epochs=None):
    ds = data.correlated_gaussian(n_rows, n_columns, seed=n_rows + n_columns)
    X = ds.X
    mask = masks.mcar(X, 0.2, np.random.default_rng(0))
    X_missing = np.where(mask, np.nan, X)
    record = {"imputer": imputer, "rows": n_rows, "columns": n_columns, "max_epochs": max_epochs}
    try:
        model = _build_imputer(imputer, 0, quick)
        if max_epochs is not None:
            model.set_params(max_epochs=max_epochs, early_stopping=False)
        _, fit_seconds, fit_memory, kinds = timed(model.fit, X_missing)
        out, transform_seconds, transform_memory, kinds2 = timed(model.transform, X_missing)
    except Exception as exc:
        return _crashed(record, exc)
    record.update(status="ok", fit_seconds=fit_seconds, transform_seconds=transform_seconds,
                  peak_mib=max(fit_memory, transform_memory), rmse=rmse(X, out, mask),
                  oracle_rmse=rmse(X, ds.law.oracle_mean(X_missing), mask), warnings=sorted(set(kinds + kinds2)))
    if imputer == "IVCNFImputer":
        record["epochs"] = len(model.history_.train_loss)
    return record


# ----------------------------------------------------------------------------------------------
# mixed-type tables: categories, integers and floats in one DataFrame (benchmarks.mixed_data)


def mixed(table, mechanism, seed, imputer, quick=False):
    """One imputer on one mixed table and mask: PFC of the categorical entries, RMSE of the numeric ones."""
    ds = mixed_data.load(table, n_samples=150 if quick else None)
    mask = mixed_data.make_mask(mechanism, ds, seed)
    frame_missing = mixed_data.with_missing(ds.frame, mask)
    categorical = np.isin(ds.frame.columns, ds.categorical)
    record = {"table": table, "mechanism": mechanism, "seed": seed, "imputer": imputer, "rows": len(ds.frame),
              "columns": ds.frame.shape[1], "categorical_columns": len(ds.categorical),
              "missing_rate": float(mask.mean()), "missing_categorical": int(mask[:, categorical].sum()),
              "missing_numeric": int(mask[:, ~categorical].sum())}
    try:
        if imputer == mixed_peers.ORACLE:
            model = mixed_peers.Oracle(ds, seed)
        else:
            model = mixed_peers.make(imputer, seed)
            if quick and imputer in mixed_peers.IVCNF_NAMES:
                model.set_params(**QUICK_IVCNF)
        out, seconds, memory, kinds = timed(model.fit_transform, frame_missing)
    except Exception as exc:
        return _crashed(record, exc)
    baseline = None if imputer in (mixed_peers.BASELINE, mixed_peers.ORACLE) else \
        mixed_peers.MostFrequentMean().fit_transform(frame_missing)
    problems = check_frame(frame_missing, out, mask, baseline=baseline)
    record.update(status="failed: " + "; ".join(problems) if problems else "ok", seconds=seconds, peak_mib=memory,
                  warnings=kinds)
    try:  # figures even with a changed dtype (reported in the status)
        record.update(pfc=pfc(ds.frame, out, mask, ds.categorical),
                      pfc_by_column=pfc_by_column(ds.frame, out, mask, ds.categorical),
                      numeric_rmse=numeric_rmse(ds.frame, out, mask, ds.numeric))
    except Exception as exc:
        problems.append(f"no figures: {type(exc).__name__}: {exc}".splitlines()[0][:200])
        record["status"] = "failed: " + "; ".join(problems)
    if imputer in mixed_peers.IVCNF_NAMES:
        record.update(fit_seconds=model.fit_seconds_, transform_seconds=model.transform_seconds_,
                      epochs=len(model.model.history_.train_loss))
    return record
