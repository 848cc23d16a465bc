"""scikit-learn's estimator checks.

A tiny flow runs every check in the default run (a few seconds), with early stopping on so
that the held-out split is exercised too; the default parameters (4 blocks of width 64, up to
100 epochs) run them again under the ``slow`` mark (70 s on 2 idle cores, ten minutes when
other torch jobs share them).
"""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from skivcnf import IVCNFImputer

from .helpers import TINY_IMPUTER as TINY

#: Checks expected to fail, and why. The estimator computes in float32, and on some BLAS builds (MKL on
#: Intel CPUs) a product's rounding depends on the batch's shape (one row takes another kernel than
#: many), so a row's ``score_samples`` alone differs from its value within the table by a unit or two
#: in float32's last place (1e-6 at a log-density of -4), above this check's 1e-7. The same invariance
#: is tested at float32's resolution in tests/test_drawing.py (``transform`` and the copies as well).
EXPECTED_FAILED_CHECKS = {
    "check_methods_subset_invariance": "float32 rounding depends on the batch's shape on some BLAS builds; "
                                       "tests/test_drawing.py checks the invariance at float32's resolution",
}


def _expected_failed_checks(estimator):
    return EXPECTED_FAILED_CHECKS


@parametrize_with_checks([IVCNFImputer(**{**TINY, "early_stopping": True})],
                         expected_failed_checks=_expected_failed_checks)
def test_sklearn_contract(estimator, check):
    check(estimator)


@pytest.mark.slow
@parametrize_with_checks([IVCNFImputer(random_state=0)], expected_failed_checks=_expected_failed_checks)
def test_sklearn_contract_with_default_parameters(estimator, check):
    check(estimator)
