"""Multiple imputation with statsmodels: formula fits on each completed copy, pooled by pool_fits.

scikit-learn's diabetes data (442 rows, 10 predictors and a continuous outcome ``y``;
bundled, no download) as a pandas DataFrame: 20% of the predictors' entries are removed
completely at random, ``y`` stays complete and is part of the imputed table, so that the
imputations of the predictors depend on it (see docs/multiple_imputation.rst). With
``set_output(transform="pandas")`` the imputer returns its ``m = 10`` completed copies as one
DataFrame indexed by ``("imputation", row)``; each copy is analysed with statsmodels' formula
API, and the results are pooled by ``skivcnf.pooling.pool_fits`` (Rubin's rules on the
coefficients and their covariance matrices, Barnard and Rubin's degrees of freedom from each
fit's ``df_resid``):

* ``smf.ols("y ~ bmi + bp + s5")``, the outcome's linear regression;
* ``smf.logit("high ~ bmi + bp + s5")``, a logistic regression of ``high``, 1 when ``y`` is
  above its median (derived from the complete ``y`` in every copy, so it is not imputed).

For each model a table of pooled estimates, standard errors, 95% intervals and fractions
of missing information is printed, next to the fit on the data before any entry was
removed (a reference only this experiment has).

The imputer is small (2 blocks of width (32,), at most 20 epochs, ``n_draws=40``). Takes
about 10 seconds on one CPU core; seeded, so it reproduces. Needs statsmodels
(``pip install skivcnf[stats]``).

    python examples/statsmodels_pooling.py
"""

import time
import warnings

import numpy as np
import statsmodels.formula.api as smf
from sklearn.datasets import load_diabetes
from sklearn.exceptions import ConvergenceWarning

from skivcnf import IVCNFImputer
from skivcnf.pooling import pool_fits

MISSING_RATE = 0.2
N_IMPUTATIONS = 10
LEVEL = 0.95
MODELS = {"OLS": (smf.ols, "y ~ bmi + bp + s5"), "Logit": (smf.logit, "high ~ bmi + bp + s5")}


def fit(model, completed):
    """One model's fit on one completed table (``high`` derived from the complete ``y``)."""
    method, formula = MODELS[model]
    data = completed.assign(high=(completed["y"] > completed["y"].median()).astype(float))
    return method(formula, data=data).fit(**({"disp": 0} if model == "Logit" else {}))


def main():
    data = load_diabetes(as_frame=True)
    complete = data.frame.rename(columns={"target": "y"})
    predictors = list(data.feature_names)
    rng = np.random.default_rng(0)
    df = complete.copy()
    df[predictors] = df[predictors].mask(rng.random((len(df), len(predictors))) < MISSING_RATE)
    print(f"diabetes: {len(df)} rows, {df[predictors].isna().to_numpy().mean():.1%} of the predictors' entries "
          f"missing (MCAR), y complete")

    imputer = IVCNFImputer(n_blocks=2, hidden_layer_sizes=(32,), max_epochs=20, n_draws=40, random_state=0)
    imputer.set_output(transform="pandas")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 20 epochs is enough for this illustration
        imputer.fit(df)
    frame = imputer.sample_multiple_imputations(df, N_IMPUTATIONS)  # (m * n) rows, index ("imputation", row)
    print(f"imputer fitted and {N_IMPUTATIONS} copies drawn in {time.perf_counter() - start:.1f} s: "
          f"a DataFrame of {frame.shape[0]} rows, index levels {list(frame.index.names)}")

    for model in MODELS:
        fits = [fit(model, completed.droplevel("imputation"))
                for _, completed in frame.groupby(level="imputation")]
        pooled = pool_fits(fits, level=LEVEL)
        reference = fit(model, complete)
        names = list(fits[0].params.index)  # pooled.estimate[j] is the coefficient names[j]
        print(f"\n{model}: {MODELS[model][1]}, {N_IMPUTATIONS} fits pooled (dof_complete = df_resid = "
              f"{fits[0].df_resid:.0f})")
        print(f"{'':<10} {'estimate':>9} {'std_error':>9} {'low':>9} {'high':>9} {'missing_info':>12} "
              f"{'complete data':>13}")
        for j, name in enumerate(names):
            print(f"{name:<10} {pooled.estimate[j]:9.3f} {pooled.std_error[j]:9.3f} {pooled.low[j]:9.3f} "
                  f"{pooled.high[j]:9.3f} {pooled.missing_information[j]:12.2f} {reference.params[name]:13.3f}")
        inside = (pooled.low <= reference.params.to_numpy()) & (reference.params.to_numpy() <= pooled.high)
        print(f"{model} summary: complete-data estimate inside the pooled {LEVEL:.0%} interval for {inside.sum()} "
              f"of {len(names)} coefficients; missing information from {pooled.missing_information.min():.2f} to "
              f"{pooled.missing_information.max():.2f}; bmi interval {pooled.low[names.index('bmi')]:.3f} to "
              f"{pooled.high[names.index('bmi')]:.3f}")


if __name__ == "__main__":
    main()
