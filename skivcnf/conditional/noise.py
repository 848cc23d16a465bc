"""Random numbers keyed by row: a row's draws depend on its key alone, not on its batch-mates.

A ``torch.Generator`` hands out numbers in order, so a row's draws depend on which rows came
before it in the batch, and on the batch size. :class:`RowNoise` is counter-based instead
(SplitMix64's mixing function applied to ``key + counter``, as in Salmon et al. 2011's
counter-based generators): entry ``(k, i, j)`` of the ``c``-th call depends only on row
``i``'s 64-bit key, ``c``, ``k`` and ``j``. Imputing a row alone, in another batch or in
another order therefore gives the same draws, given the same sequence of calls.
Keys come from :func:`row_keys`: a hash of a seed, the row's values and its mask.

:func:`sobol_uniform` gives randomised quasi-Monte Carlo points instead: the Sobol sequence,
digitally shifted by each row's own random bits, so that a row's points fill its hidden
coordinates more evenly than independent draws while each point stays exactly uniform.

:class:`ShardNoise` serves data-parallel training instead: each rank draws the whole global
batch's numbers from the same ``torch.Generator`` and keeps its own rows.
"""

import numpy as np
import torch
from scipy.special import ndtri

__all__ = ["RowNoise", "SOBOL_BITS", "SOBOL_MAX_DIMENSION", "ShardNoise", "distinct_keys", "row_keys", "sobol_uniform",
           "standard_normal", "uniform"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MULTIPLIERS = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
#: Bits of each coordinate of torch's Sobol points (``SobolEngine``'s ``MAXBIT``).
SOBOL_BITS = 30
#: The most coordinates a Sobol point has (``SobolEngine.MAXDIM``); wider rows draw independent noise.
SOBOL_MAX_DIMENSION = torch.quasirandom.SobolEngine.MAXDIM
#: The bits a hidden entry contributes to its row's key (a value no float64 input has: a NaN payload).
_HIDDEN_BITS = np.uint64(0x7FF8DEADBEEF0001)


def _mix(x):
    """SplitMix64's finaliser (a bijection of uint64 with full avalanche), elementwise."""
    x = (x ^ (x >> np.uint64(30))) * _MULTIPLIERS[0]
    x = (x ^ (x >> np.uint64(27))) * _MULTIPLIERS[1]
    return x ^ (x >> np.uint64(31))


def row_keys(seed, values, hidden):
    """One 64-bit key per row from ``seed``, the row's values and which entries are hidden.

    Parameters
    ----------
    seed : int
        In ``[0, 2**64)``.
    values : ndarray (n, d)
        Cast to float64; hidden entries are ignored (NaN is fine).
    hidden : ndarray of bool (n, d)

    Returns
    -------
    ndarray of uint64 (n,)
        Equal rows (same observed values, same mask) get equal keys.

    Examples
    --------
    >>> import numpy as np
    >>> from skivcnf.conditional.noise import row_keys
    >>> values = np.array([[1.0, np.nan], [2.0, 5.0], [1.0, 7.0]])
    >>> keys = row_keys(0, values, np.isnan(values))
    >>> bool(keys[0] == row_keys(0, values[:1], np.isnan(values[:1]))[0]), len(set(keys.tolist()))
    (True, 3)
    """
    with np.errstate(over="ignore"):
        bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
        bits = np.where(np.asarray(hidden, dtype=bool), _HIDDEN_BITS, bits)
        key = np.full(bits.shape[0], _mix(np.uint64(seed) + _GOLDEN), dtype=np.uint64)
        for column in bits.T:  # a loop over columns; every operation is over all rows at once
            key = _mix((key ^ column) + _GOLDEN)
    return key


def distinct_keys(keys):
    """Keys made distinct among equal ones: the ``k``-th occurrence of a key is mixed with ``k``.

    Equal rows share a key, hence their draws; where they must be independent (multiple
    imputations of duplicated rows), this gives each occurrence its own key, the first
    occurrence's still depending on the key alone.

    Parameters
    ----------
    keys : ndarray of uint64 (n,)

    Returns
    -------
    ndarray of uint64 (n,)

    Examples
    --------
    >>> import numpy as np
    >>> from skivcnf.conditional.noise import distinct_keys
    >>> out = distinct_keys(np.array([5, 7, 5], dtype=np.uint64))
    >>> len(set(out.tolist())), bool(out[0] == distinct_keys(np.array([5], dtype=np.uint64))[0])
    (3, True)
    """
    keys = np.asarray(keys, dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    occurrence = np.empty(len(keys), dtype=np.uint64)
    occurrence[order] = np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    with np.errstate(over="ignore"):
        return np.where(occurrence == 0, keys, _mix(keys ^ _mix(occurrence * _GOLDEN)))


class RowNoise:
    """Counter-based uniform and normal numbers for a block of rows, one key per row.

    Pass it where a ``torch.Generator`` is expected by the conditional sampler
    (:func:`~.sampling.sample_conditional`, :func:`~.sampling.importance_resample`,
    :func:`~.fitting.fit_posterior`): every tensor it makes has rows on dimension ``-2``
    (``-1`` for per-row scalars), and the ``c``-th call's numbers of row ``i`` depend only on
    ``keys[i]`` and ``c``.

    Parameters
    ----------
    keys : ndarray of uint64 (batch,)
    calls : int, default=0
        Calls already made (the counter); :meth:`rows` carries it over.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skivcnf.conditional.noise import RowNoise
    >>> keys = np.array([11, 22, 33], dtype=np.uint64)
    >>> a = RowNoise(keys).normal((4, 3, 2), torch.float64)
    >>> b = RowNoise(keys[1:]).normal((4, 2, 2), torch.float64)   # without row 0
    >>> torch.equal(a[:, 1:], b)
    True
    """

    def __init__(self, keys, calls=0):
        self.keys = np.asarray(keys, dtype=np.uint64)
        self.calls = int(calls)

    def __len__(self):
        return len(self.keys)

    def rows(self, index):
        """The noise of a subset of the rows (a boolean mask or indices), at the same counter."""
        return RowNoise(self.keys[np.asarray(index)], self.calls)

    def _uniform53(self, shape, rows_axis):
        """Uniforms in (0, 1) with 53 random bits, rows on ``rows_axis``; advances the counter."""
        shape = tuple(shape)
        if shape[rows_axis] != len(self.keys):
            raise ValueError(f"RowNoise has {len(self.keys)} rows; a tensor of shape {shape} has "
                             f"{shape[rows_axis]} on its rows' dimension {rows_axis}.")
        keys_shape = [1] * len(shape)
        keys_shape[rows_axis] = len(self.keys)
        # A position's counter: its flat index with the rows' dimension left out, then the call.
        other = list(shape)
        other[rows_axis] = 1
        counter = np.arange(int(np.prod(other)), dtype=np.uint64).reshape(other)
        with np.errstate(over="ignore"):
            call = _mix(np.uint64(self.calls) * _GOLDEN + _MULTIPLIERS[0])
            state = _mix(self.keys.reshape(keys_shape) ^ call) + (counter + np.uint64(1)) * _GOLDEN
            bits = _mix(_mix(state))
        self.calls += 1
        return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53

    def uniform(self, shape, dtype=torch.float32, device="cpu", rows_axis=-1):
        """Uniforms in (0, 1), Tensor of ``shape`` with the rows on ``rows_axis``."""
        return torch.as_tensor(self._uniform53(shape, rows_axis), dtype=dtype, device=device)

    def normal(self, shape, dtype=torch.float32, device="cpu", rows_axis=-2):
        """Standard normals (by the inverse CDF), Tensor of ``shape`` with the rows on ``rows_axis``."""
        return torch.as_tensor(ndtri(self._uniform53(shape, rows_axis)), dtype=dtype, device=device)


class ShardNoise:
    """One rank's rows of random tensors drawn for a whole global batch, alike on every rank.

    In data-parallel training each rank computes the bound of a contiguous share of the rows
    of every global batch. Drawing each tensor for the global batch from the same
    ``torch.Generator`` on every rank and keeping this rank's rows gives every row the numbers
    one process would give it for the whole batch, and keeps the ranks' generators in step.
    Pass it where the training loop passes a ``torch.Generator``; draws that are not per row
    (the Russian roulette's, the rows' order) use :attr:`generator` itself.

    Parameters
    ----------
    generator : torch.Generator or None
    n_rows : int
        Rows of the global batch.
    rows : slice
        This rank's rows of the global batch (at least one).

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional.noise import ShardNoise
    >>> whole = torch.randn(2 * 5, 3, generator=torch.Generator().manual_seed(0))  # (n_samples * rows, d)
    >>> share = ShardNoise(torch.Generator().manual_seed(0), 5, slice(3, 5)).normal((2 * 2, 3), torch.float32)
    >>> torch.equal(share, whole.view(2, 5, 3)[:, 3:5].reshape(4, 3))
    True
    """

    def __init__(self, generator, n_rows, rows):
        self.generator = generator
        self.n_rows = int(n_rows)
        self.rows = rows
        self.n_local = len(range(n_rows)[rows])
        if self.n_local < 1:
            raise ValueError(f"ShardNoise needs at least one row of the global batch, got {rows} of {n_rows}.")

    def _draw(self, sample, shape, dtype, device, rows_axis):
        """``sample`` the global tensor whose rows replace ``shape``'s on ``rows_axis``; keep this rank's rows.

        A rows' dimension of ``k`` times this rank's rows holds ``k`` stacked blocks of rows
        (the flattened ``(n_samples * batch, d)`` draws, sample-major), each the global batch's.
        """
        shape = tuple(shape)
        axis = rows_axis % len(shape)
        blocks, remainder = divmod(shape[axis], self.n_local)
        if remainder or not blocks:
            raise ValueError(f"ShardNoise has {self.n_local} rows; a tensor of shape {shape} has {shape[axis]} on "
                             f"its rows' dimension {rows_axis}.")
        whole = sample((*shape[:axis], blocks * self.n_rows, *shape[axis + 1:]), generator=self.generator,
                       dtype=dtype, device=device)
        whole = whole.reshape(*shape[:axis], blocks, self.n_rows, *shape[axis + 1:])
        return whole[(slice(None),) * (axis + 1) + (self.rows,)].reshape(shape).contiguous()

    def normal(self, shape, dtype=torch.float32, device="cpu", rows_axis=-2):
        """Standard normals, Tensor of ``shape`` with this rank's rows on ``rows_axis``."""
        return self._draw(torch.randn, shape, dtype, device, rows_axis)

    def uniform(self, shape, dtype=torch.float32, device="cpu", rows_axis=-1):
        """Uniforms in [0, 1), Tensor of ``shape`` with this rank's rows on ``rows_axis``."""
        return self._draw(torch.rand, shape, dtype, device, rows_axis)


def standard_normal(shape, generator, dtype, device):
    """Standard normals of ``shape`` from a ``torch.Generator`` (or None), a :class:`RowNoise` or a
    :class:`ShardNoise` (rows on dimension -2, possibly flattened with the draws)."""
    if isinstance(generator, RowNoise):
        shape = tuple(shape)
        if shape[-2] % max(len(generator), 1) == 0 and shape[-2] != len(generator):
            # Flattened ``(n_samples * batch, d)`` draws, sample-major as ``expand(...).reshape`` lays them out.
            stacked = (*shape[:-2], shape[-2] // len(generator), len(generator), shape[-1])
            return generator.normal(stacked, dtype, device).reshape(shape)
        return generator.normal(shape, dtype, device)
    if isinstance(generator, ShardNoise):
        return generator.normal(shape, dtype, device)
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def uniform(shape, generator, dtype, device, rows_axis=-1):
    """Uniforms in [0, 1) of ``shape`` (rows on ``rows_axis``) from a ``torch.Generator`` (or None), a
    :class:`RowNoise` or a :class:`ShardNoise`."""
    if isinstance(generator, (RowNoise, ShardNoise)):
        return generator.uniform(shape, dtype, device, rows_axis)
    return torch.rand(shape, generator=generator, dtype=dtype, device=device)


def sobol_uniform(n_points, counts, generator, start=0):
    """Randomised quasi-Monte Carlo uniforms: Sobol points digitally shifted per row.

    Row ``i`` takes the first ``counts[i]`` coordinates of the Sobol sequence's points
    ``start, ..., start + n_points - 1`` (unscrambled, :class:`torch.quasirandom.SobolEngine`),
    each XOR-ed with ``SOBOL_BITS`` random bits per coordinate drawn for the row (one call of
    ``generator``, whatever ``start``: a later call with the same counter and ``start = n_points``
    continues the same shifted sequence). A random digital shift keeps every point exactly uniform
    on ``(0, 1)^k`` and the net structure of the sequence (the first ``2^m`` points of a row put
    one point in each of ``2^m`` equal slices of any one coordinate), so averages over a row's
    points are unbiased, with less variance than independent draws for smooth integrands (Owen,
    "Monte Carlo and quasi-Monte Carlo", 2013, ch. 17). A row's points depend only on its own
    random bits and ``counts[i]``, never on its batch-mates.

    Parameters
    ----------
    n_points : int
    counts : Tensor (batch,)
        Coordinates each row needs (e.g. its hidden count), at most ``SOBOL_MAX_DIMENSION``.
    generator : RowNoise, ShardNoise, torch.Generator or None
        Where each row's shift comes from.
    start : int, default=0
        Index of the first point.

    Returns
    -------
    ndarray of float64 (n_points, batch, k)
        ``k = max(counts)``; a row's coordinates beyond its count are filled but meaningless.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skivcnf.conditional.noise import RowNoise, sobol_uniform
    >>> u = sobol_uniform(8, torch.tensor([2, 1]), RowNoise(np.array([5, 6], dtype=np.uint64)))
    >>> u.shape
    (8, 2, 2)
    >>> sorted(np.floor(u[:, 0, 0] * 8).astype(int).tolist())  # one point in each eighth
    [0, 1, 2, 3, 4, 5, 6, 7]
    >>> rest = sobol_uniform(8, torch.tensor([2]), RowNoise(np.array([5], dtype=np.uint64)), start=8)
    >>> both = np.concatenate([u[:, 0, 0], rest[:, 0, 0]])
    >>> sorted(np.floor(both * 16).astype(int).tolist()) == list(range(16))  # the same sequence, continued
    True
    """
    counts = torch.as_tensor(counts)
    batch, k = len(counts), max(int(counts.max()) if len(counts) else 0, 1)
    if k > SOBOL_MAX_DIMENSION:
        raise ValueError(f"Sobol points have at most {SOBOL_MAX_DIMENSION} coordinates; a row needs {k}.")
    scale = float(2 ** SOBOL_BITS)
    shift = uniform((batch, k), generator, torch.float64, "cpu", rows_axis=0).numpy()
    shift = np.minimum(np.floor(shift * scale), scale - 1).astype(np.uint64)
    engine = torch.quasirandom.SobolEngine(k, scramble=False)
    if start:
        engine.fast_forward(start)
    points = np.rint(engine.draw(n_points, dtype=torch.float64).numpy() * scale).astype(np.uint64)
    # The point's own cell of width 2^-SOBOL_BITS, at its centre: never 0 or 1.
    return ((points[:, None, :] ^ shift[None]).astype(np.float64) + 0.5) / scale
