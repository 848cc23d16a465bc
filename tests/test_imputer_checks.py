"""scikit-learn's estimator checks, with default parameters (about 75 s on 2 cores)."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from skivcnf import IVCNFImputer


@parametrize_with_checks([IVCNFImputer(random_state=0)])
def test_sklearn_contract(estimator, check):
    check(estimator)
