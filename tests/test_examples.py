"""Every example runs to the end and writes its figures (slow: minutes in all)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WITH_FIGURES = ["pipeline_grid_search", "multiple_imputation", "digits_completion", "diagnostics"]


@pytest.mark.slow
@pytest.mark.parametrize("name", WITH_FIGURES)
def test_example_runs_and_writes_figures(name, tmp_path):
    pytest.importorskip("matplotlib")
    result = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900, env={**os.environ, "MPLBACKEND": "Agg"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(tmp_path.glob("*.png")), "no figure written"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart", "flow_density"])
def test_text_example_runs(name):
    result = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py")], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]

