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


@parametrize_with_checks([IVCNFImputer(**{**TINY, "early_stopping": True})])
def test_sklearn_contract(estimator, check):
    check(estimator)


@pytest.mark.slow
@parametrize_with_checks([IVCNFImputer(random_state=0)])
def test_sklearn_contract_with_default_parameters(estimator, check):
    check(estimator)
