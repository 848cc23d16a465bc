"""Missingness mechanisms: MCAR, MAR (logistic in always-observed columns), MNAR (self-masking).

Each returns a boolean mask (``True`` = missing) with no fully-missing row: such a row gets
one random entry back. The logistic models follow the protocol of Muzellec et al. (2020),
used by most recent imputation benchmarks: weights drawn at random, intercepts set by
bisection so that the expected rate is the one asked for.
"""

import numpy as np
from scipy.special import expit


def _keep_one_per_row(mask, rng):
    full = mask.all(axis=1)
    mask[full, rng.integers(0, mask.shape[1], full.sum())] = False
    return mask


def _intercept_for_rate(logits, rate):
    """The intercept ``b`` with ``mean(sigmoid(logits + b)) = rate`` (bisection; monotone in ``b``)."""
    lo, hi = -50.0, 50.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expit(logits + mid).mean() < rate else (lo, mid)
    return (lo + hi) / 2


def mcar(X, rate, rng):
    """Each entry missing with probability ``rate``, independently."""
    return _keep_one_per_row(rng.random(X.shape) < rate, rng)


def mar_logistic(X, rate, rng, observed_fraction=0.3):
    """A random ``observed_fraction`` of columns is always observed; each other column is missing
    with probability ``sigmoid(X_obs @ w + b)``, so missingness depends on observed values only.

    ``rate`` is the missing rate of the masked columns (the table's rate is ``rate * (1 - observed_fraction)``).
    """
    n, d = X.shape
    n_obs = max(1, int(round(observed_fraction * d)))
    observed = rng.permutation(d)[:n_obs]
    masked = np.setdiff1d(np.arange(d), observed)
    Z = (X[:, observed] - X[:, observed].mean(0)) / (X[:, observed].std(0) + 1e-12)
    mask = np.zeros((n, d), dtype=bool)
    for j in masked:
        w = rng.normal(size=n_obs)
        logits = Z @ w / np.sqrt(n_obs)
        logits = 2.0 * logits / (logits.std() + 1e-12)  # same strength of selection for every column
        mask[:, j] = rng.random(n) < expit(logits + _intercept_for_rate(logits, rate))
    return _keep_one_per_row(mask, rng)


def mnar_self_masking(X, rate, rng, strength=2.0):
    """Each entry missing with probability ``sigmoid(strength * z + b_j)``, ``z`` its own standardised
    value: large values go missing more often, so the missing values are not like the observed ones."""
    Z = (X - X.mean(0)) / (X.std(0) + 1e-12)
    logits = strength * Z
    probs = np.stack([expit(logits[:, j] + _intercept_for_rate(logits[:, j], rate)) for j in range(X.shape[1])], 1)
    return _keep_one_per_row(rng.random(X.shape) < probs, rng)


MECHANISMS = {
    "MCAR 20%": lambda X, rng: mcar(X, 0.2, rng),
    "MCAR 50%": lambda X, rng: mcar(X, 0.5, rng),
    "MAR 30%": lambda X, rng: mar_logistic(X, 0.3 / 0.7, rng),
    "MNAR 30%": lambda X, rng: mnar_self_masking(X, 0.3, rng),
}
"""Name -> ``mask(X, rng)``; the MAR and MNAR settings miss about 30% of the table's entries."""


def make_mask(mechanism, X, seed):
    """The mask of ``mechanism`` for mask seed ``seed`` (the same for every imputer)."""
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown mechanism {mechanism!r}; choose from {sorted(MECHANISMS)}")
    return MECHANISMS[mechanism](X, np.random.default_rng([seed, 7919]))
