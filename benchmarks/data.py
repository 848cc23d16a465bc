"""The benchmark tables, all offline: scikit-learn's bundled data and three synthetic sets.

The synthetic sets know their own conditional distributions, so each comes with an oracle:
``oracle_mean(X_missing)`` is ``E[x^H | x^O]`` (the Bayes limit of RMSE) and
``oracle_sample(X_missing, n, rng)`` draws from ``p(x^H | x^O)`` (the reference for interval
widths). The real tables are standardised with their complete values (so RMSE is in standard
deviations), the synthetic ones are left on the scale they are drawn on (unit variance per
column or close to it).
"""

from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine
from sklearn.preprocessing import StandardScaler


@dataclass
class Dataset:
    """A complete table, its labels if any, and its oracle where the generating law is known."""

    name: str
    X: np.ndarray
    y: np.ndarray | None = None
    law: object | None = field(default=None, repr=False)

    @property
    def has_oracle(self):
        return self.law is not None


class GaussianLaw:
    """``N(mean, cov)`` with exact conditionals, batched over rows that share a mask."""

    def __init__(self, mean, cov):
        self.mean, self.cov = np.asarray(mean, float), np.asarray(cov, float)

    def sample(self, n, rng):
        return rng.multivariate_normal(self.mean, self.cov, n)

    def moments(self):
        """The law's mean and covariance."""
        return self.mean, self.cov

    def _groups(self, X_missing):
        hidden = np.isnan(X_missing)
        patterns, index = np.unique(hidden, axis=0, return_inverse=True)
        for k, h in enumerate(patterns):
            rows = np.flatnonzero(index.ravel() == k)
            if h.any():
                yield rows, h

    def conditional(self, X_obs, h):
        """Mean (rows, |h|) and covariance (|h|, |h|) of ``x^H | x^O`` for rows sharing mask ``h``."""
        o = ~h
        if not o.any():
            return np.broadcast_to(self.mean[h], (len(X_obs), h.sum())), self.cov[np.ix_(h, h)]
        gain = np.linalg.solve(self.cov[np.ix_(o, o)], self.cov[np.ix_(o, h)]).T
        mean = self.mean[h] + (X_obs[:, o] - self.mean[o]) @ gain.T
        cov = self.cov[np.ix_(h, h)] - gain @ self.cov[np.ix_(o, h)]
        return mean, cov

    def log_marginal(self, X_obs, o):
        """``log N(x^O; mean^O, cov^OO)`` for rows sharing observed set ``o``."""
        if not o.any():
            return np.zeros(len(X_obs))
        diff = X_obs[:, o] - self.mean[o]
        cov = self.cov[np.ix_(o, o)]
        _, logdet = np.linalg.slogdet(cov)
        quad = np.einsum("ij,ij->i", diff, np.linalg.solve(cov, diff.T).T)
        return -0.5 * (quad + logdet + o.sum() * np.log(2 * np.pi))

    def oracle_mean(self, X_missing):
        out = np.array(X_missing, dtype=float)
        for rows, h in self._groups(X_missing):
            out[np.ix_(rows, h)] = self.conditional(X_missing[rows], h)[0]
        return out

    def oracle_sample(self, X_missing, n, rng):
        out = np.repeat(np.array(X_missing, dtype=float)[None], n, axis=0)
        for rows, h in self._groups(X_missing):
            mean, cov = self.conditional(X_missing[rows], h)
            chol = np.linalg.cholesky(cov + 1e-12 * np.eye(len(cov)))
            eps = rng.standard_normal((n, len(rows), h.sum()))
            out[np.ix_(np.arange(n), rows, np.flatnonzero(h))] = mean + eps @ chol.T
        return out


class MixtureLaw:
    """A Gaussian mixture; its conditionals are mixtures reweighted by each component's evidence."""

    def __init__(self, weights, components):
        self.weights = np.asarray(weights, float)
        self.components = components

    def sample(self, n, rng):
        k = rng.choice(len(self.weights), size=n, p=self.weights)
        X = np.empty((n, len(self.components[0].mean)))
        for j, comp in enumerate(self.components):
            X[k == j] = comp.sample(int((k == j).sum()), rng)
        return X

    def moments(self):
        """The mixture's mean and covariance (from its components', exactly)."""
        means = [c.mean for c in self.components]
        mean = sum(w * m for w, m in zip(self.weights, means, strict=True))
        second = sum(w * (c.cov + np.outer(c.mean, c.mean)) for w, c in zip(self.weights, self.components, strict=True))
        return mean, second - np.outer(mean, mean)

    def _responsibilities(self, X_obs, o):
        pairs = zip(self.weights, self.components, strict=True)
        log_r = np.stack([np.log(w) + c.log_marginal(X_obs, o) for w, c in pairs], 1)
        return np.exp(log_r - logsumexp(log_r, axis=1, keepdims=True))

    def oracle_mean(self, X_missing):
        out = np.array(X_missing, dtype=float)
        for rows, h in self.components[0]._groups(X_missing):
            r = self._responsibilities(X_missing[rows], ~h)
            means = np.stack([c.conditional(X_missing[rows], h)[0] for c in self.components], 1)
            out[np.ix_(rows, h)] = np.einsum("rk,rkh->rh", r, means)
        return out

    def oracle_sample(self, X_missing, n, rng):
        out = np.repeat(np.array(X_missing, dtype=float)[None], n, axis=0)
        for rows, h in self.components[0]._groups(X_missing):
            r = self._responsibilities(X_missing[rows], ~h)
            cum = r.cumsum(1)
            pick = (rng.random((n, len(rows), 1)) > cum[None]).sum(-1)  # component of each draw
            chosen = np.zeros((n, len(rows), h.sum()))
            for j, comp in enumerate(self.components):
                mean, cov = comp.conditional(X_missing[rows], h)
                chol = np.linalg.cholesky(cov + 1e-12 * np.eye(len(cov)))
                draw = mean + rng.standard_normal((n, len(rows), h.sum())) @ chol.T
                chosen = np.where((pick == j)[..., None], draw, chosen)
            out[np.ix_(np.arange(n), rows, np.flatnonzero(h))] = chosen
        return out


def ar1_covariance(n_features, rho=0.8):
    """The AR(1) correlation matrix ``rho ** |i - j|``."""
    idx = np.arange(n_features)
    return rho ** np.abs(idx[:, None] - idx[None, :])


def correlated_gaussian(n_samples=500, n_features=10, rho=0.8, seed=0):
    """A zero-mean AR(1) Gaussian (unit variances, correlation ``rho^|i-j|``), with its law as the oracle.

    The one generator of this table in the benchmarks: the accuracy grid, Rubin's rules, scaling,
    and the flow, solver and posterior sections all draw from it.
    """
    law = GaussianLaw(np.zeros(n_features), ar1_covariance(n_features, rho))
    return Dataset("gaussian", law.sample(n_samples, np.random.default_rng(seed)), law=law)


def gaussian_mixture(n_samples=500, n_features=8, seed=0):
    """Three well-separated components with their own random correlations (a multimodal table)."""
    rng = np.random.default_rng(12345)  # the law is fixed; ``seed`` only draws the rows
    components = []
    for _ in range(3):
        a = rng.normal(size=(n_features, n_features)) / np.sqrt(n_features)
        cov = 0.3 * (a @ a.T + 0.3 * np.eye(n_features))
        components.append(GaussianLaw(rng.normal(scale=1.5, size=n_features), cov))
    law = MixtureLaw([0.5, 0.3, 0.2], components)
    return Dataset("mixture", law.sample(n_samples, np.random.default_rng(seed)), law=law)


def nonlinear_factors(n_samples=500, seed=0):
    """Ten noisy non-linear views of two latent factors (columns are near-functions of a few factors).

    No closed-form conditional: the oracle is unknown. Standardised.
    """
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(2, n_samples))
    columns = [u, v, np.sin(2 * u), u * v, u ** 2, np.tanh(2 * v), np.exp(0.5 * u), np.cos(u + v),
               np.abs(v) - u, u + v ** 3 / 3]
    X = np.stack(columns, 1) + 0.1 * rng.normal(size=(n_samples, len(columns)))
    return Dataset("nonlinear", StandardScaler().fit_transform(X))


def _standardised(name, bunch):
    return Dataset(name, StandardScaler().fit_transform(bunch.data.astype(float)), bunch.target)


def digits():
    """8 x 8 digit images, pixels in [0, 1], with their labels (the paper's MNIST stand-in)."""
    bunch = load_digits()
    return Dataset("digits", bunch.data / 16.0, bunch.target)


def dequantised_digits(seed=0):
    """The digits' pixel counts (0-16) plus uniform noise on [0, 1), standardised: a continuous
    64-column table with no constant column, for measuring the flow and its solvers."""
    bunch = load_digits()
    noisy = bunch.data + np.random.default_rng(seed).uniform(size=bunch.data.shape)
    return Dataset("digits", StandardScaler().fit_transform(noisy), bunch.target)


def load(name, n_samples=None):
    """One of the accuracy grid's tables; ``n_samples`` keeps the first rows (for quick runs)."""
    makers = {
        "breast_cancer": lambda: _standardised("breast_cancer", load_breast_cancer()),
        "wine": lambda: _standardised("wine", load_wine()),
        "diabetes": lambda: _standardised("diabetes", load_diabetes()),
        "gaussian": correlated_gaussian,
        "mixture": gaussian_mixture,
        "nonlinear": nonlinear_factors,
    }
    if name not in makers:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(makers)}")
    data = makers[name]()
    if n_samples is not None:
        data.X = data.X[:n_samples]
        data.y = None if data.y is None else data.y[:n_samples]
    return data


TABLES = ["breast_cancer", "wine", "diabetes", "gaussian", "mixture", "nonlinear"]
