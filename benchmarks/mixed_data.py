"""The mixed-type tables of the suite (``mixed`` section): pandas DataFrames with category,
integer and float columns, all offline.

- ``fair``: statsmodels' affairs survey (Fair 1978; 6,366 rows), 1,000 rows drawn once with
  a fixed seed so that one IVCNF fit stays near a minute on one core. The two occupation
  codes are nominal (a code's number means nothing: student, farming, white collar, ...):
  categories. The ordinal codes (marriage rating 1-5, religiousness 1-4), the years of
  education (9-20) and the number of children (0-5, the survey's "5 or more", coded 5.5,
  recorded as 5) are integers. Age and years married (the midpoints of the survey's
  brackets) and the affairs measure (time in affairs, continuous, mostly 0) are floats.
- ``simulated``: 800 rows of a law with known conditionals (:class:`MixedLaw`): three
  correlated Gaussians, two nominal columns drawn from them (a multinomial logit with 4
  categories, a thresholded latent Gaussian with 3), a binary one from a Gaussian and the
  first category, a float whose mean depends on the 4-category column (not monotonically in
  its code, so codes read as numbers mislead) and a Poisson count.
- ``diabetes_sex``: scikit-learn's diabetes table on its original scale (``scaled=False``,
  442 rows), ``sex`` a category with 2 levels; the columns whose every value is whole (age,
  total cholesterol ``s1``, glucose ``s6``) integers, the rest floats.

Each table is a :class:`MixedTable`: the complete frame and its column kinds. The masks are
the numeric grid's (:mod:`benchmarks.masks`), drawn on :meth:`MixedTable.codes` (each category
as its code, so MNAR self-masking makes the last categories go missing more often); the
incomplete frame keeps the dtypes, integers as pandas' nullable ``Int64``.
"""

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit, log_softmax
from scipy.stats import norm, poisson

from . import masks

OCCUPATIONS = ["student", "farming/unskilled", "white collar", "teacher/nurse/skilled", "managerial", "professional"]


@dataclass
class MixedTable:
    """A complete mixed-type table and its column kinds (lists of column names)."""

    name: str
    frame: pd.DataFrame
    categorical: list
    integer: list
    law: object | None = field(default=None, repr=False)

    @property
    def numeric(self):
        """The non-categorical columns (floats and integers), in the frame's order."""
        return [c for c in self.frame.columns if c not in self.categorical]

    @property
    def has_oracle(self):
        return self.law is not None

    def codes(self, frame=None):
        """``frame`` (default the complete one) as floats: each category its code, missing entries NaN."""
        return codes(self.frame if frame is None else frame)

    def describe(self):
        """One line: rows and the columns of each kind."""
        floats = [c for c in self.numeric if c not in self.integer]
        sizes = ", ".join(f"{c} ({len(self.frame[c].cat.categories)})" for c in self.categorical)
        return (f"{len(self.frame):,} rows; categorical: {sizes}; integer: {', '.join(self.integer) or 'none'}; "
                f"float: {', '.join(floats) or 'none'}")


def codes(frame):
    """A frame with category, integer and float columns as a float array (NaN where missing)."""
    columns = []
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.CategoricalDtype):
            columns.append(np.where(column.cat.codes.to_numpy() < 0, np.nan, column.cat.codes.to_numpy()))
        else:
            columns.append(column.astype("Float64").to_numpy(dtype=float, na_value=np.nan))
    return np.column_stack(columns).astype(float)


def from_codes(values, like):
    """The float array ``values`` as a frame with the columns and dtypes of ``like``: category codes
    rounded to the nearest category (clipped to the range), integers rounded."""
    out = {}
    for j, name in enumerate(like.columns):
        dtype, column = like[name].dtype, np.asarray(values[:, j], dtype=float)
        if isinstance(dtype, pd.CategoricalDtype):
            code = np.clip(np.round(column), 0, len(dtype.categories) - 1)
            code = np.where(np.isnan(column), -1, code).astype(int)
            out[name] = pd.Categorical.from_codes(code, dtype=dtype)
        elif pd.api.types.is_integer_dtype(dtype):
            out[name] = pd.array(np.where(np.isnan(column), np.nan, np.round(column)), dtype="Float64").astype(dtype)
        else:
            out[name] = column.astype(dtype)
    return pd.DataFrame(out, index=like.index)


def with_missing(frame, mask):
    """``frame`` with the entries of ``mask`` missing, integer columns as nullable ``Int64``."""
    out = {}
    for j, name in enumerate(frame.columns):
        column = frame[name]
        if pd.api.types.is_integer_dtype(column.dtype):
            column = column.astype("Int64")
        out[name] = column.mask(mask[:, j])
    return pd.DataFrame(out, index=frame.index)


def make_mask(mechanism, table, seed):
    """The numeric grid's mask of ``mechanism`` drawn on the table's codes (the same for every imputer)."""
    return masks.make_mask(mechanism, table.codes(), seed)


# ---------------------------------------------------------------------------------------------- tables


FAIR_ROWS = 1_000


def fair(n_samples=FAIR_ROWS, seed=0):
    """statsmodels' affairs survey, ``n_samples`` rows drawn without replacement (``seed`` fixed)."""
    from statsmodels.datasets import fair as fair_data

    raw = fair_data.load_pandas().data
    raw = raw.iloc[np.sort(np.random.default_rng(seed).choice(len(raw), n_samples, replace=False))]
    raw = raw.reset_index(drop=True)
    frame = pd.DataFrame({
        "rate_marriage": raw["rate_marriage"].astype("int64"),
        "age": raw["age"],
        "yrs_married": raw["yrs_married"],
        "children": np.floor(raw["children"]).astype("int64"),  # 5.5 is the survey's "5 or more"
        "religious": raw["religious"].astype("int64"),
        "educ": raw["educ"].astype("int64"),
        "occupation": pd.Categorical.from_codes(raw["occupation"].astype(int) - 1, OCCUPATIONS),
        "occupation_husb": pd.Categorical.from_codes(raw["occupation_husb"].astype(int) - 1, OCCUPATIONS),
        "affairs": raw["affairs"],
    })
    return MixedTable("fair", frame, ["occupation", "occupation_husb"],
                      ["rate_marriage", "children", "religious", "educ"])


def diabetes_sex():
    """scikit-learn's diabetes table unscaled, ``sex`` a 2-level category, whole-valued columns integers."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(scaled=False, as_frame=True).data.copy()
    frame["sex"] = pd.Categorical(frame["sex"].astype(int), categories=[1, 2])
    integer = ["age", "s1", "s6"]
    for name in integer:
        frame[name] = frame[name].astype("int64")
    return MixedTable("diabetes_sex", frame, ["sex"], integer)


class MixedLaw:
    """The law of the simulated table, with its exact generative conditionals.

    ``x0, x1, x2`` ~ N(0, AR(1) with correlation 0.6); ``c1`` in {a, b, c, d} with
    ``P(c1 = k | x) = softmax(W x)_k``; ``c2`` in {low, mid, high} the bin of
    ``x1 - 0.5 x2 + 0.6 e`` cut at -0.6 and 0.6; ``c3`` in {no, yes} with
    ``P(yes | x, c1) = sigmoid(1.5 x0 + g[c1])``; ``x3 = m[c1] + 0.5 x2 + 0.5 e``;
    ``n`` ~ Poisson(exp(0.5 + 0.5 x0 + d[c2])) (``e`` standard normal noise each).

    :meth:`oracle` gives, for an incomplete table, the posterior mode of each hidden category
    and the posterior mean of each hidden number under this law (by importance sampling:
    hidden Gaussians from their exact conditional on the observed ones, the rest drawn from
    the law, weighted by the likelihood of the observed non-Gaussian entries).
    """

    columns = ["x0", "x1", "c1", "x2", "c2", "x3", "n", "c3"]
    categories = {"c1": ["a", "b", "c", "d"], "c2": ["low", "mid", "high"], "c3": ["no", "yes"]}
    W = np.array([[1.5, 0.0, 0.0], [-1.5, 1.5, 0.0], [0.0, -1.5, 1.5], [0.0, 0.0, -1.5]])
    cuts = np.array([-np.inf, -0.6, 0.6, np.inf])
    c2_noise = 0.6
    g = np.array([-1.0, 1.0, 0.0, -1.0])
    m = np.array([0.0, 2.0, -2.0, 1.0])
    x3_noise = 0.5
    d = np.array([-0.5, 0.0, 0.5])

    def __init__(self, rho=0.6):
        idx = np.arange(3)
        self.cov = rho ** np.abs(idx[:, None] - idx[None, :])

    # the generative pieces, broadcast over any leading shape
    def c1_logp(self, x):
        return log_softmax(x @ self.W.T, axis=-1)

    def c2_logp(self, x):
        centre = (x[..., 1] - 0.5 * x[..., 2])[..., None]
        upper, lower = norm.cdf((self.cuts[1:] - centre) / self.c2_noise), norm.cdf((self.cuts[:-1] - centre) /
                                                                                   self.c2_noise)
        return np.log(np.maximum(upper - lower, 1e-300))

    def c3_p(self, x, c1):
        return expit(1.5 * x[..., 0] + self.g[c1])

    def x3_mean(self, x, c1):
        return self.m[c1] + 0.5 * x[..., 2]

    def n_rate(self, x, c2):
        return np.exp(0.5 + 0.5 * x[..., 0] + self.d[c2])

    @staticmethod
    def _categorical_draw(logp, rng):
        cum = np.exp(logp).cumsum(-1)
        return np.minimum((rng.random(logp.shape[:-1] + (1,)) > cum).sum(-1), logp.shape[-1] - 1)

    def sample_codes(self, n, rng):
        """``n`` rows as codes, in :attr:`columns` order."""
        x = rng.multivariate_normal(np.zeros(3), self.cov, n)
        c1 = self._categorical_draw(self.c1_logp(x), rng)
        u = x[:, 1] - 0.5 * x[:, 2] + self.c2_noise * rng.standard_normal(n)
        c2 = np.searchsorted(self.cuts[1:-1], u)
        c3 = (rng.random(n) < self.c3_p(x, c1)).astype(int)
        x3 = self.x3_mean(x, c1) + self.x3_noise * rng.standard_normal(n)
        count = rng.poisson(self.n_rate(x, c2))
        return np.column_stack([x[:, 0], x[:, 1], c1, x[:, 2], c2, x3, count, c3]).astype(float)

    def oracle(self, X_codes, n_draws=4000, rng=None, chunk=100):
        """Posterior modes (categories) and means (numbers) of the hidden entries of ``X_codes``
        (codes in :attr:`columns` order, NaN where hidden); observed entries are kept."""
        rng = np.random.default_rng(0) if rng is None else rng
        out = np.array(X_codes, dtype=float)
        col = {name: j for j, name in enumerate(self.columns)}
        gauss = [col["x0"], col["x1"], col["x2"]]
        for start in range(0, len(out), chunk):
            rows = out[start:start + chunk]
            rows[:] = self._oracle_rows(rows, col, gauss, n_draws, rng)
        return out

    def _oracle_rows(self, rows, col, gauss, n_draws, rng):
        r = len(rows)
        hidden = np.isnan(rows)
        # hidden Gaussians from their exact conditional given the observed ones, row by row pattern
        x = np.repeat(np.nan_to_num(rows[:, gauss])[:, None, :], n_draws, axis=1)
        g_hidden = hidden[:, gauss]
        for pattern in np.unique(g_hidden, axis=0):
            if not pattern.any():
                continue
            which = np.flatnonzero((g_hidden == pattern).all(1))
            h, o = pattern, ~pattern
            if o.any():
                gain = np.linalg.solve(self.cov[np.ix_(o, o)], self.cov[np.ix_(o, h)]).T
                mean = rows[np.ix_(which, np.array(gauss)[o])] @ gain.T
                cov = self.cov[np.ix_(h, h)] - gain @ self.cov[np.ix_(o, h)]
            else:
                mean, cov = np.zeros((len(which), h.sum())), self.cov[np.ix_(h, h)]
            chol = np.linalg.cholesky(cov + 1e-12 * np.eye(len(cov)))
            draws = mean[:, None, :] + rng.standard_normal((len(which), n_draws, h.sum())) @ chol.T
            block = x[which]
            block[:, :, h] = draws
            x[which] = block
        log_w = np.zeros((r, n_draws))

        def observed_or_drawn(name, logp):
            """The column's observed code (adding its log-likelihood) or a draw from ``logp``."""
            j = col[name]
            value = np.where(np.isnan(rows[:, j]), 0, rows[:, j]).astype(int)[:, None].repeat(n_draws, 1)
            seen = ~hidden[:, j]
            picked = np.take_along_axis(logp, value[..., None], -1)[..., 0]
            log_w[seen] += picked[seen]
            drawn = self._categorical_draw(logp, rng)
            return np.where(seen[:, None], value, drawn)

        c1 = observed_or_drawn("c1", self.c1_logp(x))
        c2 = observed_or_drawn("c2", self.c2_logp(x))
        p3 = self.c3_p(x, c1)
        c3 = observed_or_drawn("c3", np.log(np.maximum(np.stack([1 - p3, p3], -1), 1e-300)))
        j = col["x3"]
        mean3, seen3 = self.x3_mean(x, c1), ~hidden[:, j]
        log_w[seen3] += norm.logpdf(rows[seen3, j][:, None], mean3[seen3], self.x3_noise)
        x3 = np.where(seen3[:, None], rows[:, j][:, None], mean3)  # E[x3 | x, c1]: the mean, not a draw
        j = col["n"]
        rate, seen_n = self.n_rate(x, c2), ~hidden[:, j]
        log_w[seen_n] += poisson.logpmf(rows[seen_n, j][:, None], rate[seen_n])
        count = np.where(seen_n[:, None], rows[:, j][:, None], rate)  # E[n | x, c2]
        w = np.exp(log_w - log_w.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        filled = rows.copy()
        for name, values in (("x0", x[..., 0]), ("x1", x[..., 1]), ("x2", x[..., 2]), ("x3", x3), ("n", count)):
            j = col[name]
            filled[:, j] = np.where(hidden[:, j], (w * values).sum(1), rows[:, j])
        for name, values in (("c1", c1), ("c2", c2), ("c3", c3)):
            j, k = col[name], len(self.categories[name])
            probs = np.stack([(w * (values == c)).sum(1) for c in range(k)], 1)
            filled[:, j] = np.where(hidden[:, j], probs.argmax(1), rows[:, j])
        return filled


SIMULATED_ROWS = 800


def simulated(n_samples=SIMULATED_ROWS, seed=0):
    """``n_samples`` rows of :class:`MixedLaw` (rows drawn with ``seed``; the law is fixed)."""
    law = MixedLaw()
    X = law.sample_codes(n_samples, np.random.default_rng([seed, 31]))
    frame = pd.DataFrame({name: X[:, j] for j, name in enumerate(law.columns)})
    for name, labels in law.categories.items():
        frame[name] = pd.Categorical.from_codes(frame[name].astype(int), labels)
    frame["n"] = frame["n"].astype("int64")
    return MixedTable("simulated", frame, list(law.categories), ["n"], law=law)


def load(name, n_samples=None):
    """One of the mixed tables; ``n_samples`` keeps the first rows (for quick runs)."""
    makers = {"fair": fair, "simulated": simulated, "diabetes_sex": diabetes_sex}
    if name not in makers:
        raise ValueError(f"unknown mixed table {name!r}; choose from {sorted(makers)}")
    table = makers[name]()
    if n_samples is not None:
        table.frame = table.frame.iloc[:n_samples].reset_index(drop=True)
    return table


TABLES = ["fair", "simulated", "diabetes_sex"]
ORACLE_TABLES = {"simulated"}
"""The tables whose law is known (the section adds the oracle's imputations to their cases)."""
