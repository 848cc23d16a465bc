"""Data-parallel training under ``torch.distributed``: each rank trains on its share of every batch.

A user launches N processes (``torchrun --nproc-per-node N script.py``), initialises the
default process group (gloo on CPUs, NCCL on GPUs) and calls ``fit`` with the same table on
every rank. Training then splits each global minibatch into N contiguous shares
(:func:`shard_slice`), each rank back-propagates its share of the global batch's loss, and
:class:`GradientReducer` sums the gradients over the ranks before every rank takes the same
step: the model stays identical on every rank and equals one process trained on the same
global batches, up to the order of float summation. That is what
``torch.nn.parallel.DistributedDataParallel`` does, done here by hand: the bound calls the
flow through several methods (constrained solves, implicit gradients, Jacobian products),
not through one ``forward``, whose hooks the wrapper relies on.

Every collective here is a call that all ranks make, in the same order; without a process
group, or with a group of one process, none of them communicates. Only the default process
group is used. A leaf module: it imports torch only.
"""

import torch
import torch.distributed as dist

__all__ = ["GradientReducer", "all_sum", "broadcast_modules", "check_same_data", "from_rank_zero",
           "is_distributed", "is_rank_zero", "rank", "shard_slice", "shared_generator", "world_size",
           "write_on_rank_zero"]

#: Bytes of one flattened bucket of gradients (DistributedDataParallel's default bucket size).
BUCKET_BYTES = 25 * 2**20


def world_size():
    """Processes in the default process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank():
    """This process's rank in the default process group; 0 without one."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_distributed():
    """Whether a process group of more than one process is initialised (training then shards its batches)."""
    return world_size() > 1


def is_rank_zero():
    """Whether this process speaks for all: it alone shows progress, warns and writes files."""
    return rank() == 0


def shard_slice(n_rows):
    """This rank's contiguous rows of a global batch of ``n_rows``: ``torch.tensor_split``'s share.

    The first ``n_rows % world_size()`` ranks get one row more than the others.

    Examples
    --------
    >>> from skivcnf._distributed import shard_slice
    >>> shard_slice(5)  # one process: every row
    slice(0, 5, None)
    """
    size, index = world_size(), rank()
    base, extra = divmod(n_rows, size)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def _scalar_device():
    """Where small tensors for a collective live: NCCL only moves CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _coalesced(tensors, collective, bucket_bytes=BUCKET_BYTES):
    """Apply ``collective`` (in place, to a flat tensor) to ``tensors`` through a few flattened buckets.

    One call per bucket instead of one per tensor: a collective's latency, not its bytes,
    dominates for the many small tensors of a tabular model.
    """
    groups = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    buckets = []
    for group in groups.values():
        bucket, size = [], 0
        for tensor in group:
            if bucket and size + tensor.numel() * tensor.element_size() > bucket_bytes:
                buckets.append(bucket)
                bucket, size = [], 0
            bucket.append(tensor)
            size += tensor.numel() * tensor.element_size()
        buckets.append(bucket)
    flats = [torch.cat([t.reshape(-1) for t in bucket]) for bucket in buckets]
    for work in [collective(flat) for flat in flats]:
        if work is not None:
            work.wait()
    for bucket, flat in zip(buckets, flats, strict=True):
        for tensor, part in zip(bucket, flat.split([t.numel() for t in bucket]), strict=True):
            tensor.copy_(part.view_as(tensor))


class GradientReducer:
    """Sums the gradients of a step over the ranks, so that every rank takes the same step.

    Each rank back-propagates ``-(its rows' bounds).sum() / (rows of the global batch)``;
    the sum over the ranks of these gradients is the gradient of the global batch's loss
    ``-(all rows' bounds).sum() / (rows of the global batch)``, exactly as one process
    computes it, up to the order of float summation. The gradients travel flattened in
    buckets (as in DistributedDataParallel), with one flag per parameter (whether some rank
    has a gradient for it, so that a parameter no rank reached keeps ``grad=None``, as in one
    process) and one flag for a non-finite loss on some rank, so that the decision to skip a
    step is the same on every rank. A rank whose share of the step raised joins the same
    collective with ``failed=True`` (:meth:`share_failure`): the other ranks then raise too,
    instead of waiting for it for ever.

    Parameters
    ----------
    bucket_bytes : int, default=BUCKET_BYTES
    """

    def __init__(self, bucket_bytes=BUCKET_BYTES):
        self.bucket_bytes = bucket_bytes

    def reduce(self, parameters, loss_finite=True, failed=False):
        """Replace each parameter's gradient by its sum over the ranks.

        Parameters
        ----------
        parameters : list of torch.nn.Parameter
            The same list, in the same order, on every rank.
        loss_finite : bool, default=True
            Whether this rank's loss was finite (and back-propagated).
        failed : bool, default=False
            Whether this rank's share of the step raised (see :meth:`share_failure`).

        Returns
        -------
        bool
            Whether every rank's loss was finite; if not, the gradients are not summed and
            the caller skips the step (on every rank alike). False on a rank that failed.

        Raises
        ------
        RuntimeError
            On the ranks that did not fail, when another rank's share of the step raised.
        """
        if not parameters:
            finite, failures = all_sum([0.0 if loss_finite else 1.0, float(failed)])
            if not failed:
                _raise_if_another_failed(failures)
            return finite == 0 and not failed
        reference = parameters[0]
        flags = torch.tensor([0.0 if loss_finite else 1.0, float(failed)] +
                             [float(p.grad is not None) for p in parameters],
                             dtype=reference.dtype, device=reference.device)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        _coalesced([flags, *grads], lambda flat: dist.all_reduce(flat, async_op=True), self.bucket_bytes)
        if failed:  # this rank re-raises its own error, whoever else failed
            return False
        _raise_if_another_failed(float(flags[1]))
        if flags[0] > 0:
            return False
        for parameter, grad, reached in zip(parameters, grads, flags[2:].tolist(), strict=True):
            parameter.grad = grad if reached > 0 else None
        return True

    def share_failure(self, parameters):
        """Join the step's collective as a rank whose share raised; the caller then re-raises its error.

        Every other rank's :meth:`reduce` of the same step raises a RuntimeError.
        """
        self.reduce(parameters, failed=True)


def _raise_if_another_failed(failures):
    if round(failures) > 0:
        raise RuntimeError(f"fit under torch.distributed stopped: {round(failures)} other rank(s) raised an error "
                           "during a training step (their traceback says why).")


def all_sum(values):
    """The sums over the ranks of a few floats (float64), the same list on every rank."""
    if not is_distributed():
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=_scalar_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def from_rank_zero(compute):
    """``compute()`` (a float) on rank 0, sent to every rank; the other ranks do not call it.

    For a value all ranks must agree on (a held-out loss that decides early stopping): the
    others would only repeat rank 0's work, and could round differently on another device.
    """
    if not is_distributed():
        return compute()
    result, error = 0.0, None
    if is_rank_zero():
        try:
            result = compute()
        except Exception as exc:  # re-raised below, once the other ranks know
            error = exc
    value = torch.tensor([result, float(error is not None)], dtype=torch.float64, device=_scalar_device())
    dist.broadcast(value, src=0)
    if error is not None:
        raise error
    if value[1] > 0:
        raise RuntimeError("rank 0 raised an error computing a value every rank needs (its traceback says why).")
    return float(value[0])


def broadcast_modules(modules):
    """Copy rank 0's parameters and buffers into every rank's ``modules`` (as DistributedDataParallel does)."""
    if not is_distributed():
        return
    tensors = [t.data for module in modules for t in (*module.parameters(), *module.buffers())]
    with torch.no_grad():
        _coalesced(tensors, lambda flat: dist.broadcast(flat, src=0, async_op=True))


def shared_generator(generator, device):
    """``generator``, or, if None, a generator seeded alike on every rank (from rank 0's global generator).

    The batches' row order is drawn from it, so it must agree across ranks.
    """
    if generator is not None or not is_distributed():
        return generator
    seed = torch.randint(2**62, (1,), dtype=torch.int64).to(_scalar_device())
    dist.broadcast(seed, src=0)
    return torch.Generator(device=device).manual_seed(int(seed))


def _fingerprint(table):
    """Cheap float64 summaries of a 2-D tensor that change when a value, a row or a column moves."""
    row_sums = torch.sum(table, dim=1, dtype=torch.float64)
    column_sums = torch.sum(table, dim=0, dtype=torch.float64)
    return [row_sums @ torch.linspace(1.0, 2.0, len(row_sums), dtype=torch.float64, device=table.device),
            column_sums @ torch.linspace(1.0, 2.0, len(column_sums), dtype=torch.float64, device=table.device)]


def check_same_data(values, hidden):
    """Raise a ValueError on every rank unless every rank has the same table (shape, values, mask).

    Data-parallel training needs the same rows on every rank (each trains on its share of
    every batch, and the batches are drawn alike): a rank given other data would train on
    rows no other rank sees, and its statistics would disagree. Compares the shape and
    checksums (sums weighted by position) through one ``all_reduce``.

    Parameters
    ----------
    values : Tensor (n, d)
        Finite (hidden entries filled).
    hidden : BoolTensor (n, d)
    """
    if not is_distributed():
        return
    names = ("number of rows", "number of columns", "observed values", "observed values",
             "missing entries", "missing entries")
    stats = torch.stack([torch.tensor(float(values.shape[0]), dtype=torch.float64, device=values.device),
                         torch.tensor(float(values.shape[1]), dtype=torch.float64, device=values.device),
                         *_fingerprint(values), *_fingerprint(hidden.to(torch.uint8))]).to(_scalar_device())
    bounds = torch.cat([stats, -stats])
    dist.all_reduce(bounds, op=dist.ReduceOp.MIN)
    low, high = bounds[:len(stats)], -bounds[len(stats):]
    differs = [name for name, lo, hi in zip(names, low.tolist(), high.tolist(), strict=True) if lo != hi]
    if differs:
        shapes = [tuple(int(v) for v in bound[:2].tolist()) for bound in (low, high)]
        shape = f" (from {shapes[0]} to {shapes[1]})" if shapes[0] != shapes[1] else ""
        raise ValueError(f"fit under torch.distributed needs the same X on every rank (each rank trains on its "
                         f"share of every batch), but the {', '.join(dict.fromkeys(differs))} differ between "
                         f"ranks{shape}.")


def write_on_rank_zero(write):
    """Call ``write()`` on rank 0 only; every rank returns once it is done (a collective).

    Other ranks wait for rank 0, so that a file it writes can be read on any rank right
    after; if rank 0's ``write`` raises, it re-raises there and the others raise an OSError.
    """
    if not is_distributed():
        write()
        return
    error = None
    if is_rank_zero():
        try:
            write()
        except Exception as exc:  # re-raised below, once the other ranks know
            error = exc
    failed = torch.tensor([0.0 if error is None else 1.0], device=_scalar_device())
    dist.all_reduce(failed)
    if error is not None:
        raise error
    if float(failed) > 0:
        raise OSError("rank 0 failed to write the file (its traceback says why).")
