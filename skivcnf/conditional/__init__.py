"""The IVCNF conditional sampler: solvers, implicit gradients, the bound and the posteriors.

Torch only: it takes a flow, tensors and boolean masks (``True`` = hidden), and knows
nothing of scikit-learn or NaN handling beyond ignoring hidden entries.

Typical use, for rows ``y`` with hidden entries ``hidden``::

    draws = sample_conditional(flow, y, hidden, n_samples=64, generator=gen)
    point, ess = conditional_mean(draws)               # importance-weighted completion
    posterior = GaussianPosterior(len(y), d, n_reflections=4)
    fit_posterior(flow, y, hidden, posterior)          # per-row refinement (paper 4.2.2)
"""

from .bound import LOGDET_METHODS, BoundEstimate, bound_integrand, elbo, importance_weighted_bound
from .fitting import OBJECTIVES, PosteriorFitHistory, fit_inference_network, fit_posterior
from .implicit import attach_implicit_gradients
from .linalg import GMRESResult, gmres, masked_block
from .posteriors import (
    GaussianParameters,
    GaussianPosterior,
    InferenceNetwork,
    log_density,
    prior_parameters,
    rsample,
)
from .sampling import ConditionalDraws, conditional_mean, sample_conditional, self_normalized_weights
from .solvers import (
    SOLVERS,
    ConstraintSolution,
    SolverOptions,
    default_constraint_tolerance,
    hidden_jacobian,
    log_prob_and_hidden_jacobian,
    resolve_chain,
    solve_constraint,
)

__all__ = [
    "LOGDET_METHODS",
    "OBJECTIVES",
    "SOLVERS",
    "BoundEstimate",
    "ConditionalDraws",
    "ConstraintSolution",
    "GMRESResult",
    "GaussianParameters",
    "GaussianPosterior",
    "InferenceNetwork",
    "PosteriorFitHistory",
    "SolverOptions",
    "attach_implicit_gradients",
    "bound_integrand",
    "conditional_mean",
    "default_constraint_tolerance",
    "elbo",
    "fit_inference_network",
    "fit_posterior",
    "gmres",
    "hidden_jacobian",
    "importance_weighted_bound",
    "log_density",
    "log_prob_and_hidden_jacobian",
    "masked_block",
    "prior_parameters",
    "resolve_chain",
    "rsample",
    "sample_conditional",
    "self_normalized_weights",
    "solve_constraint",
]
