"""scikit-learn's estimator checks, with default parameters.

Marked slow: with today's defaults they take about 7 minutes on 2 cores (the fits on the
checks' small tables are dominated by per-step overhead); making them fast is open work.
"""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from skivcnf import IVCNFImputer


@pytest.mark.slow
@parametrize_with_checks([IVCNFImputer(random_state=0)])
def test_sklearn_contract(estimator, check):
    check(estimator)
