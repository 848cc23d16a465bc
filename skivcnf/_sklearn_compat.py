"""Every private scikit-learn name skivcnf uses, imported here and nowhere else.

scikit-learn moves its private helpers between releases; an upgrade that breaks one should
touch this file only. The oldest release supported is the one ``pyproject.toml`` declares
(1.6, the first with the public ``validate_data`` and ``__sklearn_tags__``); CI runs the test
suite against it and against the newest release.
"""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, MissingValues, StrOptions
from sklearn.utils._set_output import _get_output_config, _wrap_data_with_container
from sklearn.utils.validation import _check_feature_names_in, _check_y

__all__ = [
    "Interval",
    "MissingValues",
    "StrOptions",
    "check_feature_names_in",
    "check_y",
    "fit_context",
    "output_container",
    "own_output_config",
    "wrap_in_output_container",
]

#: Decorator of ``fit``: validates the parameters once (``_parameter_constraints``).
fit_context = _fit_context

#: Input feature names, checked against ``feature_names_in_``.
check_feature_names_in = _check_feature_names_in


def check_y(y, estimator):
    """A classifier's targets as a 1-d array: a column vector warns, NaN and infinities raise, as ``validate_data``."""
    return _check_y(y, estimator=estimator)


def output_container(estimator, method="transform"):
    """The dense container chosen by ``set_output``: ``"default"``, ``"pandas"`` or ``"polars"``."""
    return _get_output_config(method, estimator)["dense"]


def own_output_config(estimator):
    """What ``set_output`` was told on this estimator (not the global setting), e.g. ``{"transform": "pandas"}``."""
    return dict(getattr(estimator, "_sklearn_output_config", {}))


def wrap_in_output_container(data, original_input, estimator, method="transform"):
    """``data`` in the container ``set_output`` chose, with the input's index and the output names."""
    return _wrap_data_with_container(method, data, original_input, estimator)
