"""Every example runs to the end, writes the figures its docstring names, and prints what it claims.

Slow: each example takes from 10 s to a minute on 2 idle cores (minutes when the cores are
shared). The value checks read the numbers the examples print; each is a consequence of the
method that holds whatever the seed, with the margin stated next to it.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def numbers_after(text, label):
    """The numbers on the first line of ``text`` that contains ``label``, after it."""
    for line in text.splitlines():
        if label in line:
            return [float(x) for x in re.findall(r"-?\d+\.?\d*(?:e-?\d+)?", line.split(label, 1)[1])]
    raise AssertionError(f"no line with {label!r} in the output:\n{text[-2000:]}")


def check_quickstart(out):
    # Mean imputation's RMSE on standardised columns is about 1 by construction (the removed
    # entries' spread around the column mean); a model of the joint law must do better.
    ivcnf = numbers_after(out, "IVCNFImputer")[0]
    mean = numbers_after(out, "SimpleImputer (mean)")[0]
    assert ivcnf < mean and 0.8 < mean < 1.2, (ivcnf, mean)


def check_flow_density(out):
    epochs, best = numbers_after(out, "flow trained for")[:2]
    assert 1 <= best <= epochs
    flow, gaussian = numbers_after(out, "held-out log-likelihood per row: flow")[0], numbers_after(
        out, "full-covariance Gaussian")[0]
    # The example's point: breast cancer is far from Gaussian (8 nats per row in the recorded run).
    assert flow > gaussian, (flow, gaussian)


def check_multiple_imputation(out):
    # With m exchangeable copies and the truth, the truth lies within the copies' range with
    # probability (m - 1) / (m + 1) = 90.5% for m = 20; on ~1300 removed entries the binomial
    # standard error is under 1 point. Collapsed copies (no spread) would give ~0%; the band
    # leaves 10 points below and 6.5 above for a model learned from 70% of 442 rows.
    inside = numbers_after(out, "true value of a removed entry within the range of its")[1]
    assert 80 <= inside <= 97, inside
    # Calibrated copies spread, around the truth, as far as the point imputation errs.
    rmse = numbers_after(out, "RMSE of the single imputation on the removed entries (standardised):")[0]
    spread = numbers_after(out, "root mean variance of the")[1]
    assert 0.8 < spread / rmse < 1.25, (spread, rmse)


def check_digits_completion(out):
    rows = re.findall(r"^(\d+)%\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out, flags=re.MULTILINE)
    assert len(rows) == 2, out[-2000:]
    for rate, ivcnf, _knn, mean in rows:
        assert float(ivcnf) < float(mean), (rate, ivcnf, mean)  # pixels are far from independent


def check_diagnostics(out):
    # The conditional mean minimises the expected squared error, so the point imputation errs
    # less than a single draw; and, by the law of total variance, it is less spread out.
    point_rmse, point_sd = numbers_after(out, "transform  RMSE on removed entries (standardised)")[:2]
    draw_rmse, draw_sd = numbers_after(out, "one draw   RMSE on removed entries (standardised)")[:2]
    assert point_rmse < draw_rmse and point_sd < draw_sd, (point_rmse, draw_rmse, point_sd, draw_sd)
    assert numbers_after(out, "converged draws:")[0] >= 99.0


def check_pipeline_grid_search(out):
    # Breast cancer is an easy classification: any sound imputation keeps accuracy above 90%.
    assert numbers_after(out, "IVCNF pipeline (2 blocks) accuracy per fold")[-1] > 0.9


def check_statsmodels_pooling(out):
    # bmi is about 8 (OLS) and 5 (Logit) standard errors from 0 on the complete data; 20% of
    # the entries missing widen its interval by about a tenth (the missing information), far
    # from reaching 0.
    for model in ("OLS", "Logit"):
        summary = numbers_after(out, f"{model} summary: complete-data estimate inside the pooled")
        inside, n_coefficients, fmi_low, fmi_high, bmi_low, _ = summary[1:]
        assert bmi_low > 0, (model, summary)
        # every predictor has missing entries, so B > 0 and 0 < missing information < 1
        assert 0 < fmi_low <= fmi_high < 1, (model, summary)
        # each interval misses the complete-data estimate with probability under 5% (its T
        # also counts the sampling variance W); one miss in 4 is allowed.
        assert n_coefficients == 4 and inside >= 3, (model, summary)


EXAMPLE_FIGURES = {
    "quickstart": ([], check_quickstart),
    "flow_density": ([], check_flow_density),
    "pipeline_grid_search": (["pipeline_grid_search.png"], check_pipeline_grid_search),
    "multiple_imputation": (["multiple_imputation.png"], check_multiple_imputation),
    "digits_completion": (["digits_completion.png"], check_digits_completion),
    "diagnostics": (["diagnostics_distributions.png", "diagnostics_training.png", "diagnostics_solver.png"],
                    check_diagnostics),
    "statsmodels_pooling": ([], check_statsmodels_pooling),
}
EXAMPLE_REQUIRES = {"statsmodels_pooling": ["statsmodels"]}  # optional extras an example imports


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXAMPLE_FIGURES))
def test_example_runs_writes_its_figures_and_its_claims_hold(name, tmp_path):
    figures, check = EXAMPLE_FIGURES[name]
    command = [sys.executable, str(EXAMPLES / f"{name}.py")]
    for module in EXAMPLE_REQUIRES.get(name, []):
        pytest.importorskip(module)
    if figures:
        pytest.importorskip("matplotlib")
        command += ["--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                            env={**os.environ, "MPLBACKEND": "Agg"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(figures)
    for figure in figures:
        assert (tmp_path / figure).read_bytes()[:8] == PNG_SIGNATURE
    check(result.stdout)
