"""Data-parallel fit under torch.distributed: 2 CPU processes (gloo, loopback) against one process.

The 2-process runs are launched as users launch them, with ``python -m torch.distributed.run``
(torchrun): this file's own ``__main__`` (the worker: it records each rank's fitted weights,
histories, progress output and warnings) and ``examples/torchrun_fit.py``. The one-process
references run here. Two ranks must hold bit-identical weights (they take the same summed
gradient); against one process they differ only by the order of float summation of the
gradients (two half-batch sums added instead of one sum), amplified over a few Adam steps.
"""

import contextlib
import io
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from skivcnf import IVCNFImputer
from skivcnf import _distributed as distributed
from skivcnf.conditional import InferenceNetwork, fit_inference_network
from skivcnf.conditional.noise import ShardNoise, standard_normal, uniform
from skivcnf.flows import ResidualFlow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "torchrun_fit.py"
IMPUTER = dict(n_blocks=2, hidden_layer_sizes=(16,), max_epochs=3, batch_size=32, n_draws=8, device="cpu",
                random_state=0)


def _table():
    """200 x 4, correlated, 20% of the entries missing."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)) @ np.array([[1.0, 0.5, 0.0, 0.2], [0.0, 1.0, 0.3, 0.0],
                                              [0.0, 0.0, 1.0, 0.4], [0.0, 0.0, 0.0, 1.0]])
    return np.where(rng.random(X.shape) < 0.2, np.nan, X)


def _direct_problem():
    """Float64 rows for ``fit_inference_network``: 100 training rows in batches of 33, so the last
    batch has 1 row (fewer than the ranks: computed whole on both)."""
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(125, 4, generator=gen, dtype=torch.float64)
    hidden = torch.rand(125, 4, generator=gen) < 0.3
    flow = ResidualFlow(4, n_blocks=2, hidden_features=(16,), generator=torch.Generator().manual_seed(0)).double()
    network = InferenceNetwork(4, hidden_features=(16,), generator=torch.Generator().manual_seed(1)).double()
    return y, hidden, flow, network


def _fit_direct():
    """Stochastic log-determinants (probes and roulettes), dequantisation and held-out rows."""
    y, hidden, flow, network = _direct_problem()
    history = fit_inference_network(flow, y, hidden, network, max_epochs=2, batch_size=33, n_samples=2,
                                    logdet="clade", train_flow=True, validation_fraction=0.2,
                                    dequantisation=torch.full((4,), 0.1, dtype=torch.float64),
                                    generator=torch.Generator().manual_seed(5))
    return {**_state("flow", flow), **_state("network", network)}, history


def _state(prefix, module):
    return {f"{prefix}.{k}": v.detach().clone() for k, v in module.state_dict().items()}


def _imputer_state(imputer):
    return {**_state("flow", imputer.flow_), **_state("posterior", imputer.posterior_)}


# ---------------------------------------------------------------------------------------------- worker


def _worker(out):
    """Run on every rank by torchrun: record what the test compares in ``out/rank<r>.pt``."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    saves = []
    torch_save = torch.save
    torch.save = lambda obj, f, *a, **k: (saves.append(os.fspath(f)), torch_save(obj, f, *a, **k))[1]
    record = {}
    X = _table()
    stderr = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(stderr):
        warnings.simplefilter("always")
        imputer = IVCNFImputer(**IMPUTER, early_stopping=False, verbose=1).fit(X)
        imputer.save(out / "imputer.pt")
        # save returns once rank 0 has written the file: every rank can read it at once.
        loaded = IVCNFImputer.load(out / "imputer.pt")
        record["transform"] = imputer.transform(X)
        record["loaded_transform"] = loaded.transform(X)
    # Only the warnings raised on purpose: the fit's own (uneven weights after 3 epochs) vary with the flow.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_as_the_package_does()
    record["imputer"] = _imputer_state(imputer)
    record["imputer_train_loss"] = imputer.history_.train_loss
    record["progress"] = stderr.getvalue()
    record["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    record["saves"] = saves
    torch.save = torch_save
    record["direct"], history = _fit_direct()
    record["direct_history"] = (history.train_loss, history.validation_loss, history.n_steps)
    record["skipped"] = _skip_is_collective(rank)
    # A rank given other data must fail, on every rank, naming the problem.
    other = X.copy()
    other[tuple(np.argwhere(~np.isnan(X))[0])] += rank  # one observed entry moves on rank 1
    for name, changed in (("values", other), ("rows", X[:199 + rank])):
        try:
            IVCNFImputer(**IMPUTER, early_stopping=False).fit(changed)
            record[f"mismatch_{name}"] = None
        except ValueError as exc:
            record[f"mismatch_{name}"] = str(exc)
    record["failures"] = _failures_stop_every_rank(X)
    torch.save(record, out / f"rank{rank}.pt")
    torch.distributed.barrier()  # no rank leaves the group while another still uses it
    torch.distributed.destroy_process_group()


def _warn_as_the_package_does():
    """A public method's re-emitted warning, an epoch's warning and the end-of-fit warning (rank 0's only)."""
    from skivcnf._training import TrainingHistory, fit_loop
    from skivcnf._utils import one_warning_per_kind
    from skivcnf.exceptions import NumericalWarning, UnreliableWeightsWarning

    one_warning_per_kind(lambda: warnings.warn("uneven weights", UnreliableWeightsWarning, stacklevel=2))()

    def epoch():
        warnings.warn("an epoch's warning", NumericalWarning, stacklevel=2)
        history.n_skipped_steps = 1
        return 0.0

    history = TrainingHistory()
    fit_loop(history, epoch, max_epochs=1)


def _failures_stop_every_rank(X):
    """An error in rank 1's share of the third step, in both ranks' backward pass of the second step,
    then in rank 0's held-out loss: each rank's message."""
    from unittest import mock

    from skivcnf.conditional import fitting

    rank, messages = torch.distributed.get_rank(), {}
    real, calls = fitting.bound_terms, []

    def failing_on_rank_1(*args, **kwargs):
        calls.append(1)
        if rank == 1 and len(calls) == 3:
            raise ArithmeticError("rank 1's own error")
        return real(*args, **kwargs)

    def failing_on_rank_0(*args, **kwargs):
        raise ArithmeticError("rank 0's own error")

    real_backward, backwards = torch.Tensor.backward, []

    def failing_backward(self, *args, **kwargs):
        backwards.append(1)
        if len(backwards) == 2:
            raise ArithmeticError(f"rank {rank}'s own backward error")
        return real_backward(self, *args, **kwargs)

    for name, owner, target, replacement in (("step", fitting, "bound_terms", failing_on_rank_1),
                                             ("both", torch.Tensor, "backward", failing_backward),
                                             ("held_out", fitting, "held_out_bound_loss", failing_on_rank_0)):
        try:
            with mock.patch.object(owner, target, replacement):
                IVCNFImputer(**IMPUTER).fit(X)
            messages[name] = None
        except Exception as exc:
            messages[name] = f"{type(exc).__name__}: {exc}"
    return messages


def _skip_is_collective(rank):
    """A non-finite loss on rank 1 only skips the step on both ranks; a rank without a graph adds nothing."""
    from skivcnf._training import TrainingHistory, guarded_step

    weight = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    history = TrainingHistory()
    nan_on_rank_1 = (weight ** 2).sum() * (float("nan") if rank == 1 else 1.0)
    first = guarded_step(optimizer, nan_on_rank_1, history, reducer=distributed.GradientReducer())
    no_graph_on_rank_1 = (weight ** 2).sum() if rank == 0 else torch.tensor(0.0)
    second = guarded_step(optimizer, no_graph_on_rank_1, history, reducer=distributed.GradientReducer())
    return first, second, weight.item(), history.n_skipped_steps


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(*args, cwd, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
               "127.0.0.1", "--master-port", str(_free_port()), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _torchrun(__file__, "worker", out, cwd=out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)], out


# ---------------------------------------------------------------------------------------------- tests


def _assert_states(actual, expected, **tolerance):
    assert actual.keys() == expected.keys()
    for key in expected:
        if tolerance:
            torch.testing.assert_close(actual[key], expected[key], **tolerance, msg=key)
        else:
            assert torch.equal(actual[key], expected[key]), key


def test_ranks_hold_identical_weights_and_histories(ranks):
    (rank0, rank1), _ = ranks
    _assert_states(rank1["imputer"], rank0["imputer"])
    _assert_states(rank1["direct"], rank0["direct"])
    assert rank1["imputer_train_loss"] == rank0["imputer_train_loss"]
    assert rank1["direct_history"] == rank0["direct_history"]
    np.testing.assert_array_equal(rank1["transform"], rank0["transform"])


def test_two_processes_equal_one_process_on_the_same_global_batches(ranks):
    (rank0, _), _ = ranks
    # Float64: the two half-batch gradient sums differ from one sum by ~1e-16 relative; after
    # 8 Adam steps (and a GMRES solve per step in the CLADE surrogate) 1e-9 leaves a wide margin.
    direct, history = _fit_direct()
    _assert_states(rank0["direct"], direct, rtol=1e-10, atol=1e-12)
    train, validation, n_steps = rank0["direct_history"]
    assert n_steps == history.n_steps == 8
    np.testing.assert_allclose(train, history.train_loss, rtol=1e-9)
    np.testing.assert_allclose(validation, history.validation_loss, rtol=1e-9)
    # The imputer trains in float32: summation order changes gradients by ~1e-7 relative, and
    # Adam, which divides by the gradient's running scale, passes that on to the 21 steps'
    # updates (lr 2e-3): 1e-4 relative, 1e-5 absolute.
    imputer = IVCNFImputer(**IMPUTER, early_stopping=False).fit(_table())
    _assert_states(rank0["imputer"], _imputer_state(imputer), rtol=1e-5, atol=1e-6)


def test_only_rank_zero_shows_progress_warns_and_writes(ranks):
    (rank0, rank1), out = ranks
    assert "fit inference network" in rank0["progress"] and rank1["progress"] == ""
    assert rank0["warnings"] == ["UnreliableWeightsWarning: uneven weights", "NumericalWarning: an epoch's warning",
                                 "NumericalWarning: 1 training steps had a non-finite loss or gradient and were "
                                 "skipped; consider a smaller learning rate or standardised inputs."]
    # Training's warnings come from rank 0 alone; an inference method's are each rank's own (it runs locally).
    assert rank1["warnings"] == ["UnreliableWeightsWarning: uneven weights"]
    assert rank0["saves"] == [os.fspath(out / "imputer.pt")] and rank1["saves"] == []
    for rank in (rank0, rank1):
        np.testing.assert_array_equal(rank["loaded_transform"], rank["transform"])


def test_other_data_on_a_rank_raises_on_every_rank(ranks):
    (rank0, rank1), _ = ranks
    for rank in (rank0, rank1):
        assert "same X on every rank" in rank["mismatch_values"] and "observed values" in rank["mismatch_values"]
        assert "number of rows" in rank["mismatch_rows"] and "(from (199, 4) to (200, 4))" in rank["mismatch_rows"]


def test_an_error_on_one_rank_stops_every_rank(ranks):
    # Without the shared failure flag the other rank waits in the step's all_reduce (or the held-out
    # loss's broadcast) for ever, and the worker times out.
    (rank0, rank1), _ = ranks
    assert rank1["failures"]["step"] == "ArithmeticError: rank 1's own error"
    assert rank0["failures"]["step"].startswith("RuntimeError: fit under torch.distributed stopped: 1 other rank(s)")
    # Both ranks fail the same step: each re-raises its own error.
    for r, rank in enumerate((rank0, rank1)):
        assert rank["failures"]["both"] == f"ArithmeticError: rank {r}'s own backward error"
    assert rank0["failures"]["held_out"] == "ArithmeticError: rank 0's own error"
    assert rank1["failures"]["held_out"].startswith("RuntimeError: rank 0 raised an error")


def test_a_step_is_skipped_on_every_rank_when_one_loss_is_not_finite(ranks):
    (rank0, rank1), _ = ranks
    # Step 1 skipped on both; step 2: only rank 0's gradient 2 * 1.0, so 1 - 0.5 * 2 = 0.
    assert rank0["skipped"] == rank1["skipped"] == (False, True, 0.0, 1)


def test_the_torchrun_example_fits_saves_once_and_equals_one_process(tmp_path):
    result = _torchrun(EXAMPLE, "--max-epochs", "2", "--threads", "1", "--out", tmp_path, cwd=tmp_path, timeout=300)
    assert result.stdout.count("RMSE on removed entries") == 1, result.stdout  # rank 0 only
    rmse = float(result.stdout.split("(standardised)")[1].split()[0])
    assert 0 < rmse < 1.2  # mean imputation's is about 1 by construction
    fitted = IVCNFImputer.load(tmp_path / "torchrun_fit.pt")
    from sklearn.datasets import load_breast_cancer

    X = load_breast_cancer().data
    X_missing = np.where(np.random.default_rng(0).random(X.shape) < 0.2, np.nan, X)
    one = IVCNFImputer(max_epochs=2, device="cpu", random_state=0).fit(X_missing)
    # Compare what the models compute on the training rows rather than their raw weights. The two runs differ
    # only in the summation order of float32 gradients, but Adam normalises each step: an entry whose gradient
    # is near 0 moves by up to lr a step whatever the gradient's size, and the linear map's factors by
    # step_scale times that, so such entries can differ by ~1e-4 (5.8e-5 measured on 1 of ~33,000 weights).
    # The flow's outputs then differ by up to 1.0e-4 (measured; 160 of 17,070 above 1e-5); 5e-4 leaves a 5x margin.
    for key in ("flow", "posterior"):
        torch.testing.assert_close(_computed(fitted, X_missing)[key], _computed(one, X_missing)[key],
                                   rtol=1e-4, atol=5e-4, msg=lambda m, key=key: f"{key}: {m}")


def _computed(imputer, X):
    """The flow's latent values and the posterior's parameters on the standardised rows of ``X``."""
    y = torch.as_tensor(imputer._layout().standardise(X), dtype=torch.float32)
    hidden = torch.isnan(y)
    y = torch.where(hidden, 0.0, y)
    with torch.no_grad():
        params = imputer.posterior_(y, hidden)
        return {"flow": imputer.flow_(y), "posterior": torch.cat([p.reshape(len(y), -1) for p in params
                                                                  if p is not None], dim=1)}


# ---------------------------------------------------------------------------------------------- ShardNoise


@pytest.mark.parametrize("n_rows, world", [(7, 2), (6, 3), (5, 5)])
def test_shard_slices_partition_a_batch_as_tensor_split(monkeypatch, n_rows, world):
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    shares = []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shares.append(torch.arange(n_rows)[distributed.shard_slice(n_rows)])
    for share, expected in zip(shares, torch.tensor_split(torch.arange(n_rows), world), strict=True):
        assert torch.equal(share, expected)


def test_shard_noise_gives_each_rank_its_rows_of_the_single_process_draw():
    n_rows, n_samples, d = 7, 3, 4
    whole = torch.Generator().manual_seed(0)
    per_row = standard_normal((n_samples, n_rows, d), whole, torch.float64, "cpu")  # rsample's layout
    flat = standard_normal((n_samples * n_rows, d), whole, torch.float64, "cpu")  # the probes' layout
    cells = torch.rand((n_rows, d), generator=whole, dtype=torch.float64)  # dequantisation: rows first
    scalar = torch.rand((), generator=whole)
    for rows in torch.tensor_split(torch.arange(n_rows), 2):
        share = slice(int(rows[0]), int(rows[-1]) + 1)
        noise = ShardNoise(torch.Generator().manual_seed(0), n_rows, share)
        assert torch.equal(standard_normal((n_samples, len(rows), d), noise, torch.float64, "cpu"),
                           per_row[:, share])
        assert torch.equal(standard_normal((n_samples * len(rows), d), noise, torch.float64, "cpu"),
                           flat.view(n_samples, n_rows, d)[:, share].reshape(-1, d))
        assert torch.equal(uniform((len(rows), d), noise, torch.float64, "cpu", rows_axis=0), cells[share])
        assert torch.equal(torch.rand((), generator=noise.generator), scalar)  # the generators stay in step


def test_shard_noise_refuses_an_empty_share_and_a_foreign_shape():
    with pytest.raises(ValueError, match="at least one row"):
        ShardNoise(torch.Generator(), 1, slice(1, 1))
    with pytest.raises(ValueError, match="has 2 rows"):
        ShardNoise(torch.Generator(), 4, slice(0, 2)).normal((3, 4))


def test_without_a_process_group_nothing_communicates():
    assert (distributed.world_size(), distributed.rank(), distributed.is_distributed()) == (1, 0, False)
    assert distributed.all_sum([1.5, 2]) == [1.5, 2.0] and distributed.from_rank_zero(lambda: 3.0) == 3.0
    written = []
    distributed.write_on_rank_zero(lambda: written.append(1))
    assert written == [1]


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(Path(sys.argv[2]))
