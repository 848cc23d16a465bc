"""The IVCNF conditional sampler: solvers, implicit gradients, the bound and the posteriors.

Torch only: it takes a flow, tensors and boolean masks (``True`` = hidden), and knows
nothing of scikit-learn or NaN handling beyond ignoring hidden entries.

Typical use, for rows ``y`` with hidden entries ``hidden``::

    draws = sample_conditional(flow, y, hidden, n_samples=64, generator=gen)
    point, ess = conditional_mean(draws)               # importance-weighted completion
    posterior = GaussianPosterior(len(y), d, n_reflections=4)
    fit_posterior(flow, y, hidden, posterior)          # per-row refinement (paper 4.2.2)
"""

from .bound import (
    EXACT_VALUE_LOGDETS,
    LOGDET_METHODS,
    OBJECTIVES,
    BoundTerms,
    bound_integrand,
    bound_terms,
    importance_weighted_bound,
    masked_bound,
)
from .conv_network import ConvInferenceNetwork
from .fitting import fit_inference_network, fit_posterior
from .hidden_block import compact_hidden_block, hidden_jacobian, log_prob_and_hidden_jacobian, solve_hidden_block
from .implicit import attach_implicit_gradients
from .linalg import GMRESResult, gmres
from .noise import SOBOL_MAX_DIMENSION, RowNoise, ShardNoise, row_keys, sobol_uniform
from .posteriors import (
    GaussianParameters,
    GaussianPosterior,
    InferenceNetwork,
    log_density,
    marginal_variance,
    prior_parameters,
    rsample,
)
from .reliable import ReliableDraws, monte_carlo_error, reliable_draws, shrunk_mean
from .sampling import (
    ConditionalDraws,
    conditional_mean,
    draw_weights,
    importance_resample,
    sample_conditional,
    self_normalized_weights,
)
from .smoothing import PARETO_K_THRESHOLD, pareto_smoothed_log_weights
from .solver_options import SOLVERS, ConstraintSolution, SolverOptions, default_constraint_tolerance
from .solvers import resolve_chain, solve_constraint
from .supervised import ClassificationTask, ClassifierHead, draw_class_probabilities
from .warm_starts import chord_start

__all__ = [
    "EXACT_VALUE_LOGDETS",
    "LOGDET_METHODS",
    "OBJECTIVES",
    "PARETO_K_THRESHOLD",
    "SOLVERS",
    "BoundTerms",
    "ClassificationTask",
    "ClassifierHead",
    "ConditionalDraws",
    "ConstraintSolution",
    "ConvInferenceNetwork",
    "GMRESResult",
    "GaussianParameters",
    "GaussianPosterior",
    "InferenceNetwork",
    "ReliableDraws",
    "RowNoise",
    "SOBOL_MAX_DIMENSION",
    "ShardNoise",
    "SolverOptions",
    "attach_implicit_gradients",
    "bound_integrand",
    "bound_terms",
    "conditional_mean",
    "draw_class_probabilities",
    "draw_weights",
    "default_constraint_tolerance",
    "fit_inference_network",
    "fit_posterior",
    "gmres",
    "hidden_jacobian",
    "importance_weighted_bound",
    "log_density",
    "marginal_variance",
    "log_prob_and_hidden_jacobian",
    "compact_hidden_block",
    "masked_bound",
    "monte_carlo_error",
    "pareto_smoothed_log_weights",
    "reliable_draws",
    "shrunk_mean",
    "row_keys",
    "sobol_uniform",
    "prior_parameters",
    "resolve_chain",
    "rsample",
    "sample_conditional",
    "importance_resample",
    "self_normalized_weights",
    "solve_constraint",
    "chord_start",
    "solve_hidden_block",
]
