"""Smoke test of the benchmark suite (``python -m benchmarks.run --quick``) and checks of its oracles.

The suite's figures are only as good as its masks, oracles and interval arithmetic, so those
are tested on cases with known answers; the quick run then checks that every section
produces its tables and plots. (Rubin's rules are tested with ``skivcnf.pooling``.)
"""

import json

import numpy as np
import pytest
from scipy import stats
from sklearn.impute import SimpleImputer

from benchmarks import components, data, masks, measure, peers, report, run


def test_masks_rates_and_no_empty_row():
    X = data.correlated_gaussian(4000, 10, seed=0).X
    for name in masks.MECHANISMS:
        mask = masks.make_mask(name, X, seed=3)
        assert not mask.all(axis=1).any()
        # every mechanism removes 20-50% of the entries (binomial sd at n=40,000 is < 0.003)
        expected = {"MCAR 20%": 0.2, "MCAR 50%": 0.5, "MAR 30%": 0.3, "MNAR 30%": 0.3}[name]
        assert abs(mask.mean() - expected) < 0.02, name
    assert np.array_equal(masks.make_mask("MCAR 20%", X, 1), masks.make_mask("MCAR 20%", X, 1))


def test_mar_depends_on_observed_columns_only_and_mnar_on_the_value():
    X = data.correlated_gaussian(20000, 6, seed=1).X
    mar = masks.make_mask("MAR 30%", X, seed=0)
    always = ~mar.any(axis=0)
    assert always.sum() == 2  # 30% of 6 columns, rounded
    # under self-masking MNAR, missing values are larger than observed ones (selection on the value)
    mnar = masks.make_mask("MNAR 30%", X, seed=0)
    assert (X[mnar].mean() - X[~mnar].mean()) > 0.5


def test_gaussian_oracle_matches_regression_and_sampler():
    law = data.GaussianLaw(np.zeros(3), data.ar1_covariance(3, 0.8))
    X = np.array([[np.nan, 1.0, np.nan], [0.5, np.nan, -1.0]])
    mean = law.oracle_mean(X)
    # AR(1) is Markov: E[x0 | x1] = 0.8 x1, E[x2 | x1] = 0.8 x1, E[x1 | x0, x2] = 0.8 (x0 + x2) / 1.64
    np.testing.assert_allclose(mean[0], [0.8, 1.0, 0.8])
    np.testing.assert_allclose(mean[1], [0.5, 0.8 * (0.5 - 1.0) / 1.64, -1.0])
    draws = law.oracle_sample(X, 20000, np.random.default_rng(0))
    # conditional sd of x0 | x1 is 0.6; the Monte Carlo mean is within 4 standard errors
    assert abs(draws[:, 0, 0].mean() - 0.8) < 4 * 0.6 / np.sqrt(20000)
    assert abs(draws[:, 0, 0].std() - 0.6) < 0.01


def test_mixture_oracle_mean_is_the_mean_of_its_sampler():
    ds = data.gaussian_mixture(50, seed=2)
    X = ds.X.copy()
    X[np.random.default_rng(0).random(X.shape) < 0.4] = np.nan
    X[np.isnan(X).all(1), 0] = 0.0
    draws = ds.law.oracle_sample(X, 4000, np.random.default_rng(1))
    spread = draws.std(axis=0) / np.sqrt(4000)
    assert np.all(np.abs(draws.mean(axis=0) - ds.law.oracle_mean(X)) <= 5 * spread + 1e-12)


def test_interval_coverage():
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((2000, 1))
    draws = rng.standard_normal((200, 2000, 1))  # an exact predictive law: 90% of truths fall inside
    coverage, width = measure.interval_coverage(truth, draws, np.ones_like(truth, bool), 0.9)
    assert abs(coverage - 0.9) < 0.03 and abs(width - 2 * stats.norm.ppf(0.95)) < 0.1
    # 50 exact draws give a narrower sample interval: the truth, one more exchangeable draw, falls inside
    # with probability about (51 - 2 * 3.45) / 51 = 0.865 (interpolated order statistics)
    assert abs(measure.exact_sampler_coverage(50, trials=20_000) - 0.865) < 0.01
    assert abs(measure.exact_sampler_coverage(2000, trials=2_000) - 0.9) < 0.02


def test_gaussian_log_likelihood_is_the_maximum_likelihood_gaussian_density():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(200, 3)), rng.normal(size=(50, 3))
    expected = stats.multivariate_normal(train.mean(0), np.cov(train.T, bias=True)).logpdf(test).mean()
    assert components.gaussian_log_likelihood(train, test) == pytest.approx(expected, rel=1e-12)


def test_dequantised_digits_are_continuous_and_standardised():
    X = data.dequantised_digits().X
    assert X.shape == (1797, 64)
    np.testing.assert_allclose(X.std(axis=0), 1.0, rtol=1e-9)
    assert len(np.unique(X[:, 0])) == len(X)  # pixel 0 is always 0 in the digits; the noise makes it continuous


def test_peers_are_named_records():
    for name, peer in peers.PEERS.items():
        assert isinstance(peer, peers.Peer) and peer.name == name
    assert isinstance(peers.make("mean", 0), SimpleImputer)
    assert peers.PEERS["IVCNFImputer"].inductive and not peers.PEERS["GAIN"].inductive
    assert {p.package for p in peers.PEERS.values()} == {"skivcnf", "sklearn", "hyperimpute", "miceforest"}


def test_check_output_flags_fallbacks_and_changed_observed_values():
    X = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, 6.0]])
    mask = np.isnan(X)
    mean_filled = np.where(mask, np.nanmean(X, axis=0), X)
    assert measure.check_output(X, mean_filled, mask) == ["equals mean imputation (silent fallback)"]
    assert measure.check_output(X, mean_filled, mask, is_mean=True) == []
    other = mean_filled + np.where(mask, 1.0, 0.0)
    other[1, 0] = 3.5
    assert measure.check_output(X, other, mask) == ["changed 25.0% of observed entries"]


def test_quick_run_writes_every_section(tmp_path):
    run.main(["--quick", "--workers", "1", "--out", str(tmp_path)])
    for section in run.SECTIONS:
        records = [json.loads(line) for line in (tmp_path / f"{section}.jsonl").read_text().splitlines()]
        assert records and all(r["status"] == "ok" for r in records), section
    accuracy = [json.loads(line) for line in (tmp_path / "accuracy.jsonl").read_text().splitlines()]
    for r in accuracy:
        assert np.isfinite(r["rmse"]) and r["rmse"] > 0
        if "oracle_rmse" in r:  # the Bayes limit, up to sampling noise of a few hundred entries
            assert r["rmse"] > 0.9 * r["oracle_rmse"]
    text = (tmp_path / "results.md").read_text()
    for heading in ("## Accuracy", "## Uncertainty: 90%", "Rubin's rules", "MNIST protocol", "completion",
                    "## Scaling", "## The flow fitted", "## Log-determinant", "## Constraint solvers", "## Posteriors"):
        assert heading in text
    assert text.startswith(f"Produced by `python -m benchmarks.run --quick --workers 1 --out {tmp_path}` on ")
    solvers = [json.loads(line) for line in (tmp_path / "solvers.jsonl").read_text().splitlines()]
    newton = next(s for r in solvers for s in r["solvers"] if s["solver"] == "newton")
    assert newton["converged"] == 1.0 and newton["max_iterations"] <= 10
    for line in (tmp_path / "posteriors.jsonl").read_text().splitlines():
        r = json.loads(line)  # no imputation beats the exact conditional mean by more than sampling noise
        assert r["weighted_rmse"] > 0.9 * r["oracle_rmse"] and 1 <= r["mean_ess"] <= r["draws"]
    # the report is rebuilt from the stored records alone, identically
    assert report.write(tmp_path) == text
    for png in ("accuracy.png", "digits.png", "completion.png", "scaling.png"):
        assert (tmp_path / png).stat().st_size > 1000
    # a rerun finds every task stored and runs none
    lines = (tmp_path / "accuracy.jsonl").read_text()
    run.run(["accuracy"], tmp_path, quick=True, workers=1, log=lambda *_: None)
    assert (tmp_path / "accuracy.jsonl").read_text() == lines


@pytest.mark.parametrize("name", sorted(run.SECTIONS))
def test_every_section_plans_tasks(name):
    full, quick = run.plan(name, quick=False), run.plan(name, quick=True)
    assert quick and len(quick) <= len(full)
    assert len({key for key, _, _ in full}) == len(full)  # keys identify stored records


def test_unknown_section_raises():
    with pytest.raises(ValueError, match="unknown section"):
        run.plan("flow", quick=True)


def test_provenance_header_names_each_run(tmp_path):
    first = {"command": "python -m benchmarks.run", "date": "2026-01-01", "machine": "A"}
    second = dict(first, date="2026-02-02")
    (tmp_path / report.PROVENANCE).write_text(json.dumps({"accuracy": first, "rubin": first}))
    assert report.provenance_header(tmp_path, ["accuracy", "rubin"]) == (
        "Produced by `python -m benchmarks.run` on 2026-01-01.\n\nMachine: A.\n")
    (tmp_path / report.PROVENANCE).write_text(json.dumps({"accuracy": first, "solvers": second}))
    header = report.provenance_header(tmp_path, ["accuracy", "solvers", "logdet"])
    assert "- accuracy: `python -m benchmarks.run` on 2026-01-01; machine: A" in header
    assert "- solvers: `python -m benchmarks.run` on 2026-02-02; machine: A" in header
    assert "- logdet: provenance not recorded" in header


def test_rubin_report_gives_bias_with_its_standard_error_and_the_paired_shift():
    def record(repeat, imputer, intervals):
        return {"repeat": repeat, "imputer": imputer, "truth": 1.0, "m": 20, "status": "ok", "intervals": intervals}

    # Proper copies err by +0.1, +0.3; one model's by 0.0, +0.1: shifts 0.1 and 0.2, mean 0.15, se 0.05.
    records = [record(0, "IVCNFImputer", {"multiple": [1.1, 0.9, 1.3], "multiple, one model": [1.0, 0.8, 1.2]}),
               record(1, "IVCNFImputer", {"multiple": [1.3, 1.2, 1.4], "multiple, one model": [1.1, 0.9, 1.15]})]
    text = report.rubin_report(records)
    assert "| IVCNFImputer, multiple imputation | 2 | 0.500 ± 0.354 | 0.300 | +0.2000 ± 0.1000 | 0.2236 |" in text
    assert "proper copies minus one model's, paired over 2 repeats: +0.1500 ± 0.0500." in text


def test_resampling_report_pairs_each_variant_with_one_models_estimate(tmp_path):
    from benchmarks import uncertainty

    def line(repeat, one, shift):
        pooled = {name: {"estimate": one + shift[name], "low": one + shift[name] - 0.1,
                         "high": one + shift[name] + 0.1} for name in shift}
        return {"table": "mixture", "repeat": repeat, "truth": 1.0, "copies": 20, **pooled}

    shifts = [{"one model": 0.0, "bootstrap": 0.02, "half": 0.0, "none": 0.01},
              {"one model": 0.0, "bootstrap": 0.04, "half": 0.0, "none": 0.01}]
    path = tmp_path / "resampling_mixture.jsonl"
    path.write_text("".join(json.dumps(line(r, one, shift)) + "\n"
                            for r, (one, shift) in enumerate(zip([0.95, 1.15], shifts, strict=True))))
    text = uncertainty.resampling_report(path)
    # one model: errors -0.05, +0.15 (bias +0.05 ± 0.1); bootstrap shifts +0.02, +0.04: +0.03 ± 0.01
    assert "| one model | 0.500 ± 0.354 | 0.200 | +0.0500 ± 0.1000 | +0.0000 ± 0.0000 | - |" in text
    assert "| bootstrap | 0.500 ± 0.354 | 0.200 | +0.0800 ± 0.1100 | +0.0300 ± 0.0100 | - |" in text


def _pooled_interval(estimate):
    """A stored pooled slope with its 90% interval, as the uncertainty studies record it."""
    return {"estimate": estimate, "low": estimate - 0.1, "high": estimate + 0.1}


def _write_records(path, records):
    path.write_text("".join(json.dumps(line) + "\n" for line in records))


def test_attenuation_report_pairs_settings_with_the_default_and_the_normal_model(tmp_path):
    from benchmarks import uncertainty

    records = [{"table": "gaussian", "repeat": r, "truth": 0.8, "copies": 20,
                **{name: _pooled_interval(0.75 + r * 0.02 + k * 0.01)
                   for k, name in enumerate(uncertainty.ATTENUATION_SETTINGS)}}
               for r in range(2)]
    records[1]["default"]["law"] = 0.76  # the flow's own law, stored by the newer records only
    path = tmp_path / "attenuation_gaussian.jsonl"
    _write_records(path, records)
    reference = [{"repeat": r, "normal model (proper)": _pooled_interval(0.78 + r * 0.02)} for r in range(3)]
    _write_records(tmp_path / "reference_gaussian.jsonl", reference)
    text = uncertainty.attenuation_report(path)
    # default: errors -0.05 and -0.03, shifts from the normal model -0.03 both times
    assert "| default | 1.000 ± 0.000 | 0.200 | -0.0400 ± 0.0100 | +0.0000 ± 0.0000 | - |" in text
    assert "| patience 24 | 1.000 ± 0.000 | 0.200 | -0.0300 ± 0.0100 | +0.0100 ± 0.0000 | - |" in text
    assert "default minus the proper normal model, paired over 2 repeats: -0.0300 ± 0.0000; its flow's law: " \
           "-0.0400 ± nan over 1" in text
    assert "patience 24 minus the proper normal model, paired over 2 repeats: -0.0200 ± 0.0000\n" in text


def test_decompose_report_pairs_the_flows_law_and_its_copies_with_the_complete_data_and_the_normal_model(tmp_path):
    from benchmarks import uncertainty

    records = [{"table": "gaussian", "repeat": r, "truth": 0.8, "copies": 20, "complete data": 0.80 + r * 0.02,
                "flow's law": 0.78 + r * 0.02, "4 proposals a copy": _pooled_interval(0.76 + r * 0.02),
                "32 proposals a copy": _pooled_interval(0.77 + r * 0.04)} for r in range(2)]
    path = tmp_path / "decompose_gaussian.jsonl"
    _write_records(path, records)
    reference = [{"repeat": r, "normal model (proper)": _pooled_interval(0.79 + r * 0.02)} for r in range(3)]
    _write_records(tmp_path / "reference_gaussian.jsonl", reference)
    text = uncertainty.decompose_report(path)
    # 32 proposals: errors -0.03 and +0.01; shifts from the 4-proposal copies +0.01 and +0.03.
    assert "| 32 proposals a copy | 1.000 ± 0.000 | 0.200 | -0.0100 ± 0.0200 | +0.0200 ± 0.0100 | - |" in text
    # The flow's law: 0.02 below the complete data's and 0.01 below the normal model's, both repeats.
    assert "| flow's law | -0.0100 ± 0.0100 | -0.0200 ± 0.0000 | -0.0100 ± 0.0000 |" in text
    assert "| 4 proposals a copy | -0.0300 ± 0.0100 | -0.0400 ± 0.0000 | -0.0300 ± 0.0000 |" in text


def test_entry_coverage_report_sets_each_cell_against_an_exact_sampler_with_as_many_draws(tmp_path, monkeypatch):
    from benchmarks import uncertainty

    monkeypatch.setattr(uncertainty, "exact_sampler_coverage", {50: 0.866, 20: 0.815}.get)
    records = [{"table": "gaussian", "mechanism": "MAR 30%", "seed": s, "status": "ok", "n_imputations": 50,
                "n_proper": 20, "coverage": 0.83 + 0.02 * s, "proper_coverage": 0.80, "oracle_coverage": 0.9}
               for s in range(2)]
    records.append({"table": "gaussian", "mechanism": "MCAR 20%", "seed": 0, "status": "crashed"})
    path = tmp_path / "entry_coverage_gaussian.jsonl"
    _write_records(path, records)
    text = uncertainty.entry_coverage_report(path)
    # one model: mean 0.84, 0.026 below 0.866; proper copies 0.015 below 0.815; crashed cases left out
    assert "| MAR 30% | 0.840 (-0.026) | 0.800 (-0.015) | 0.900 | 2 |" in text
    assert "MCAR 20%" not in text


def test_entry_width_report_averages_each_setting_over_its_fits(tmp_path):
    from benchmarks import uncertainty

    def line(setting, seed, coverage):
        return {"table": "gaussian", "setting": setting, "seed": seed, "seconds": 10.0 + seed, "epochs": 30 + 2 * seed,
                "rmse": 0.5, "sd ratio": 0.96, "4 proposals": {"coverage": coverage, "width": 1.5},
                "16 proposals": {"coverage": coverage + 0.01, "width": 1.6}}

    path = tmp_path / "entry_width_gaussian.jsonl"
    _write_records(path, [line("default", 0, 0.82), line("default", 1, 0.86), line("150 epochs", 0, 0.70)])
    text = uncertainty.entry_width_report(path)
    assert "| default | 31 | 10.5 | 0.840 | 1.500 | 0.850 | 1.600 | 0.5000 | 0.960 | 2 |" in text
    assert "| 150 epochs | 30 | 10.0 | 0.700 | 1.500 | 0.710 | 1.600 | 0.5000 | 0.960 | 1 |" in text
    assert "8 training draws" not in text


def test_point_estimates_report_averages_cells_and_lists_each_digits_rate(tmp_path):
    from benchmarks import point_estimates

    def cell(table, seed, weighted, shrunk):
        return {"table": table, "mechanism": "MCAR 20%", "seed": seed, "fit_seconds": 5.0, "weighted": weighted,
                "plain": 0.9, "shrunk": shrunk}

    def scored(accuracy):
        return {"accuracy": accuracy, "rmse": 0.25}

    tables, digits = tmp_path / "point_tables.jsonl", tmp_path / "point_digits.jsonl"
    _write_records(tables, [cell("wine", 0, 0.70, 0.69), cell("wine", 1, 0.80, 0.79), cell("mixture", 0, 0.5, 0.5)])
    _write_records(digits, [{"rate": 0.9, "epochs": 44, "fit_seconds": 292.0, "weighted": scored(0.36),
                             "plain": scored(0.41), "shrunk": scored(0.39), "weighted, another stream": scored(0.35),
                             "weighted, mean of the two streams": scored(0.375), "weighted monte carlo sd": 0.04,
                             "imputed sd": 0.29, "complete-data classifier": {"weighted": 0.3, "plain": 0.33,
                                                                              "shrunk": 0.32}}])
    peers = tmp_path / "point_digits_peers.jsonl"
    _write_records(peers, [{"rate": 0.9, "imputer": "MICE", "accuracy": 0.406, "rmse": 0.2749,
                            "complete-data classifier": 0.286}])
    text = point_estimates.report(tables, digits, peers)
    assert "| wine | MCAR 20% | 0.7500 | 0.9000 | 0.7400 | 0.9867 | 2 |" in text
    assert "| mixture | MCAR 20% | 0.5000 | 0.9000 | 0.5000 | 1.0000 | 1 |" in text
    ratio = np.exp(np.mean(np.log([0.74 / 0.75, 1.0])))
    assert f"geometric mean {ratio:.4f}, range 0.9867-1.0000" in text
    assert "Digits, 90% missing (44 epochs, fit 292 s)" in text
    assert "| shrunk | 0.390 | 0.2500 | 0.320 |" in text
    assert "| weighted, another stream | 0.350 | 0.2500 | - |" in text
    assert "| MICE (peer) | 0.406 | 0.2749 | 0.286 |" in text


def test_normal_data_augmentation_draws_proper_imputations_of_a_gaussian_table():
    from benchmarks import uncertainty

    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.8], [0.8, 1.0]])
    X = rng.multivariate_normal([1.0, -1.0], cov, 2000)
    X_missing = X.copy()
    X_missing[rng.random(2000) < 0.4, 1] = np.nan
    copies = uncertainty.gaussian_data_augmentation(X_missing, 5, rng, burn_in=50, thin=5)
    observed = ~np.isnan(X_missing)
    assert copies.shape == (5, 2000, 2) and all(np.array_equal(c[observed], X[observed]) for c in copies)
    hidden = ~observed[:, 1]
    # Missing entries follow x1 | x0 ~ N(-1 + 0.8 (x0 - 1), 0.36): residual mean 0 and variance 0.36,
    # up to sampling error (about 800 entries a copy: 0.02 on the mean, 0.02 on the variance) and
    # the parameters' posterior spread (about 0.02 at 2,000 rows).
    residual = copies[:, hidden, 1] - (-1 + 0.8 * (X[hidden, 0] - 1))
    assert abs(residual.mean()) < 0.05 and abs(residual.var() - 0.36) < 0.06
    # Copies differ where entries are missing (they are draws, not one fill).
    assert np.std(copies[:, hidden, 1], axis=0).mean() > 0.3


def test_mixture_moments_are_the_mixtures_mean_and_covariance():
    law = data.gaussian_mixture(10).law
    mean, cov = law.moments()
    X = law.sample(200_000, np.random.default_rng(0))
    # Sampling error of a mean or covariance of 200,000 rows with entries of order 1: about 0.003.
    np.testing.assert_allclose(X.mean(axis=0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(X.T), cov, atol=0.03)
    gaussian = data.correlated_gaussian(10, 4).law
    assert np.array_equal(gaussian.moments()[1], data.ar1_covariance(4))


def test_beyond_range_measures_the_distance_past_the_observed_range_in_sds():
    X_missing = np.array([[0.0, 1.0], [2.0, np.nan], [np.nan, 3.0]])
    out = np.array([[0.0, 1.0], [2.0, 7.0], [-1.0, 3.0]])
    mask = np.isnan(X_missing)
    # Column 0: observed range [0, 2], sd 1, imputed -1 (1 below); column 1: [1, 3], sd 1, imputed 7 (4 above).
    assert measure.beyond_range(X_missing, out, mask) == pytest.approx(4.0)
    assert measure.beyond_range(X_missing, np.where(mask, 1.5, X_missing), mask) == 0.0


# ---------------------------------------------------------------------------------------------- mixed-type tables


@pytest.mark.parametrize("name", ["fair", "simulated", "diabetes_sex"])
def test_mixed_tables_keep_their_column_kinds_through_codes_and_masks(name):
    import pandas as pd

    from benchmarks import mixed_data

    table = mixed_data.load(name)
    frame = table.frame
    for column in frame.columns:
        dtype = frame[column].dtype
        if column in table.categorical:
            assert isinstance(dtype, pd.CategoricalDtype), column
        elif column in table.integer:
            assert dtype == np.int64, column
        else:
            assert dtype == np.float64, column
    assert mixed_data.from_codes(table.codes(), frame).equals(frame)
    for mechanism in masks.MECHANISMS:
        mask = mixed_data.make_mask(mechanism, table, seed=1)
        assert not mask.all(axis=1).any()
        incomplete = mixed_data.with_missing(frame, mask)
        assert np.array_equal(incomplete.isna().to_numpy(), mask)
        for column in table.integer:
            assert incomplete[column].dtype == "Int64"
        for column in table.categorical:
            assert incomplete[column].dtype == frame[column].dtype


def test_pfc_and_numeric_rmse_count_masked_entries_only():
    import pandas as pd

    truth = pd.DataFrame({"c": pd.Categorical(["a", "b", "a", "b"]), "x": [0.0, 2.0, 4.0, 6.0]})
    imputed = pd.DataFrame({"c": pd.Categorical(["b", "b", "b", "a"]), "x": [0.0, 2.0, 4.0 + np.sqrt(5), 6.0]})
    mask = np.array([[True, False], [True, False], [False, True], [True, True]])
    # categorical entries masked in rows 0, 1, 3: row 0 and row 3 are wrong (row 2 is wrong but observed)
    assert measure.pfc(truth, imputed, mask, ["c"]) == pytest.approx(2 / 3)
    # x masked in rows 2 and 3, errors sqrt(5) and 0, column sd sqrt(5): RMSE sqrt((1 + 0) / 2)
    assert measure.numeric_rmse(truth, imputed, mask, ["x"]) == pytest.approx(np.sqrt(0.5))


def test_check_frame_flags_dtypes_observed_changes_and_fallbacks():
    import pandas as pd

    given = pd.DataFrame({"c": pd.Categorical(["a", None, "b"]), "n": pd.array([1, 2, None], dtype="Int64"),
                          "x": [0.5, np.nan, 1.0]})
    mask = given.isna().to_numpy()
    sound = pd.DataFrame({"c": pd.Categorical(["a", "b", "b"]), "n": pd.array([1, 2, 3], dtype="Int64"),
                          "x": [0.5, 0.7, 1.0]})
    assert measure.check_frame(given, sound, mask) == []
    as_floats = sound.assign(n=sound["n"].astype(float))
    assert measure.check_frame(given, as_floats, mask) == ["dtype changed: n"]
    moved = sound.assign(x=[0.6, 0.7, 1.0])
    assert measure.check_frame(given, moved, mask) == ["changed 16.7% of observed entries"]
    assert measure.check_frame(given, sound, mask, baseline=sound) == [
        "equals most frequent / mean imputation (silent fallback)"]
    assert measure.check_frame(given, given, mask) == ["3 entries left missing"]


def test_mixed_oracle_is_the_exact_posterior_where_it_has_a_closed_form():
    from scipy.special import expit, softmax
    from scipy.stats import norm

    from benchmarks import mixed_data

    law = mixed_data.MixedLaw()
    X = law.sample_codes(300, np.random.default_rng(0))
    col = {name: j for j, name in enumerate(law.columns)}
    x = X[:, [col["x0"], col["x1"], col["x2"]]]
    # c1 hidden, everything else observed: p(c1 | rest) is proportional to softmax(W x) p(c3 | x0, c1) p(x3 | c1, x2)
    hidden_c1 = X.copy()
    hidden_c1[:, col["c1"]] = np.nan
    c3 = X[:, col["c3"]][:, None]
    p3 = expit(1.5 * x[:, [0]] + law.g)
    posterior = (softmax(x @ law.W.T, axis=1) * np.where(c3 == 1, p3, 1 - p3)
                 * norm.pdf(X[:, [col["x3"]]], law.m + 0.5 * x[:, [2]], law.x3_noise))
    found = law.oracle(hidden_c1, n_draws=4000)[:, col["c1"]]
    clear = np.sort(posterior / posterior.sum(1, keepdims=True), axis=1)[:, -1] > 0.6  # no near ties
    assert np.mean(found[clear] == posterior.argmax(1)[clear]) > 0.97
    # x3 hidden with c1 and x2 observed: its posterior mean is m[c1] + 0.5 x2 exactly
    hidden_x3 = X.copy()
    hidden_x3[:, col["x3"]] = np.nan
    expected = law.m[X[:, col["c1"]].astype(int)] + 0.5 * x[:, 2]
    np.testing.assert_allclose(law.oracle(hidden_x3, n_draws=50)[:, col["x3"]], expected)


def test_mixed_peers_keep_dtypes_and_use_the_other_columns():
    from benchmarks import mixed_data, mixed_peers

    table = mixed_data.load("simulated", n_samples=300)
    mask = mixed_data.make_mask("MCAR 20%", table, seed=0)
    incomplete = mixed_data.with_missing(table.frame, mask)
    baseline = mixed_peers.MostFrequentMean().fit_transform(incomplete)
    assert measure.check_frame(incomplete, baseline, mask) == []
    base_pfc = measure.pfc(table.frame, baseline, mask, table.categorical)
    for model in (mixed_peers.mice_linear(0), mixed_peers.missforest_like(0, n_estimators=10, max_iter=3)):
        out = model.fit_transform(incomplete)
        assert measure.check_frame(incomplete, out, mask, baseline=baseline) == []
        # c1 and x3 depend on the Gaussians: a model of the table misclassifies far less than the mode
        assert measure.pfc(table.frame, out, mask, table.categorical) < 0.8 * base_pfc
        assert measure.numeric_rmse(table.frame, out, mask, table.numeric) < measure.numeric_rmse(
            table.frame, baseline, mask, table.numeric)


def test_mixed_plan_and_imputer_selection(tmp_path):
    from benchmarks import mixed_peers

    full = run.plan("mixed", quick=False)
    oracle_tables = {key[0] for key, _, _ in full if key[-1] == mixed_peers.ORACLE}
    assert oracle_tables == {"simulated"}
    assert {key[2] for key, _, _ in full if key[-1] in run.MIXED_ONE_SEED_PEERS} == {0}
    assert {key[-1] for key, _, _ in full} == set(mixed_peers.MIXED_PEERS) | {mixed_peers.ORACLE}
    run.run(["mixed"], tmp_path, quick=True, workers=1, log=lambda *_: None, imputers=[mixed_peers.BASELINE])
    records = [json.loads(line) for line in (tmp_path / "mixed.jsonl").read_text().splitlines()]
    assert {r["imputer"] for r in records} == {mixed_peers.BASELINE} and len(records) == 4
    assert all(r["status"] == "ok" and 0 < r["pfc"] < 1 for r in records)
    run.run(["mixed"], tmp_path, quick=True, workers=1, log=lambda *_: None,
            skip_imputers=[*mixed_peers.IVCNF_NAMES, "MissForest-like"])
    records = [json.loads(line) for line in (tmp_path / "mixed.jsonl").read_text().splitlines()]
    assert {r["imputer"] for r in records} == {mixed_peers.BASELINE, "MICE (linear/logistic)", mixed_peers.ORACLE}
    assert "## Mixed-type tables" in report.write(tmp_path)
