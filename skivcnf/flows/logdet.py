"""The stochastic log-determinant of a residual block ``z -> z + h(z)``.

The exact one, :meth:`~skivcnf.flows.blocks.ResidualBlock.forward_and_logdet`, forms the
per-row Jacobian ``I + dh/dz`` in closed form and takes a batched ``slogdet``: no
variance and ``O(d w^2)`` per row, the choice for tabular widths. Above them, the
Residual Flows estimator (Chen et al. 2019): the value is the power series
``log det(I + J) = sum_k (-1)^(k+1) tr(J^k) / k`` truncated by a Russian roulette and
reweighted so that it stays unbiased, with Hutchinson's trace estimator. The gradient is
the Neumann series ``d log det(I + J) = sum_k (-1)^k tr(J^k dJ)``, estimated with the
same roulette and probe vector, so that the graph holds one vector-Jacobian product
instead of the whole series.

The ``generator`` is a ``torch.Generator`` or, in data-parallel training, an object with a
``generator`` (for the roulette, drawn alike by every rank) and a ``normal(shape, dtype,
device)`` that gives this rank's rows of a global draw
(:class:`skivcnf.conditional.noise.ShardNoise`: taken by duck typing, as ``flows`` does not
import ``conditional``).
"""

import torch

__all__ = ["stochastic_block_logdet"]


def _probe(shape, generator, dtype, device):
    """Gaussian probe vectors, rows first."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    return generator.normal(shape, dtype, device)


def _roulette_coefficients(n_exact_terms, geom_p, generator, dtype, device):
    """Number of series terms and the weights ``1 / P(N >= k - n_exact_terms)``.

    ``N`` is geometric (failures before the first success, ``P(N >= m) = (1 - p)^m``);
    the first ``n_exact_terms`` terms are always kept with weight 1.
    """
    if not (generator is None or isinstance(generator, torch.Generator)):
        generator = generator.generator  # one draw for all rows: the global one, alike on every rank
    u = torch.rand((), generator=generator, device=None if generator is None else generator.device)
    extra = int(torch.floor(torch.log(u) / torch.log1p(torch.tensor(-geom_p))).item())
    n_terms = n_exact_terms + extra
    k = torch.arange(n_terms + 1, dtype=dtype, device=device)
    coeff = torch.pow(1.0 - geom_p, -(k - n_exact_terms).clamp_min(0))
    return n_terms, coeff


def stochastic_block_logdet(block, z, generator=None, n_exact_terms=2, geom_p=0.5):
    """Block output and an unbiased estimate of ``log|det(I + dh/dz)|`` per row.

    The estimate's value and its gradient (with respect to ``z`` and the weights) are
    both unbiased. Their variance is finite when ``Lip(h)^2 < 1 - geom_p``; the
    expected number of vector-Jacobian products is ``n_exact_terms + (1 - geom_p) / geom_p``
    for the value plus one with a graph for the gradient.

    Parameters
    ----------
    block : ResidualLayer
        A residual block (:class:`~skivcnf.flows.ResidualBlock`, :class:`~skivcnf.flows.ConvResidualBlock`):
        its ``residual`` branch ``h`` and its parameters are used.
    z : Tensor (batch, d)
    generator : torch.Generator, optional
        Source of the roulette draw and the Gaussian probe vectors (one per row); or a
        data-parallel share of the draws (see the module's docstring).
    n_exact_terms : int
        Series terms always computed.
    geom_p : float
        Stopping probability of the geometric roulette, in ``(0, 1)``.

    Returns
    -------
    out : Tensor (batch, d)
    logdet : Tensor (batch,)

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualBlock, stochastic_block_logdet
    >>> block = ResidualBlock(3, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> z = torch.randn(1, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> _, estimate = stochastic_block_logdet(block, z.expand(500, 3), generator=torch.Generator().manual_seed(2))
    >>> estimate.shape
    torch.Size([500])
    >>> _, exact = block.forward_and_logdet(z)
    >>> bool((estimate.mean() - exact).abs() < 0.02)  # the average of many estimates
    True
    """
    if not 0 < geom_p < 1:
        raise ValueError(f"geom_p must lie in (0, 1), got {geom_p!r}.")
    if n_exact_terms < 1:
        raise ValueError(f"n_exact_terms must be at least 1, got {n_exact_terms!r}.")
    n_terms, coeff = _roulette_coefficients(n_exact_terms, geom_p, generator, z.dtype, z.device)
    probe = _probe(z.shape, generator, z.dtype, z.device)
    needs_grad = torch.is_grad_enabled() and (
        z.requires_grad or any(p.requires_grad for p in block.parameters())
    )
    with torch.enable_grad():
        z_in = z if z.requires_grad else z.detach().requires_grad_(True)
        h = block.residual(z_in)
        # u_k = probe^T J^k, built without a graph; sign (-1)^k folded in.
        u = probe
        value = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        neumann = coeff[0] * probe
        for k in range(1, n_terms + 1):
            (u,) = torch.autograd.grad(h, z_in, -u, retain_graph=True)
            # u = (-1)^k probe^T J^k, so tr-estimate of (-1)^(k+1) J^k / k is -u.probe / k.
            value = value - coeff[k] * (u * probe).sum(dim=1) / k
            neumann = neumann + coeff[k] * u
        if not needs_grad:
            return (z + h).detach(), value
        # Surrogate w^T (dh/dz) probe whose gradient is the Neumann estimate.
        (vjp,) = torch.autograd.grad(h, z_in, neumann.detach(), create_graph=True)
        surrogate = (vjp * probe).sum(dim=1)
    logdet = value.detach() + surrogate - surrogate.detach()
    return z_in + h, logdet
