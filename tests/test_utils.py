"""The device resolver and the named random streams (skivcnf/_utils.py)."""

import numpy as np
import pytest
import torch

from skivcnf._utils import STREAMS, RandomStreams, resolve_device


def test_streams_are_the_spawned_children_of_the_root_seed():
    streams = RandomStreams(12345)
    children = np.random.SeedSequence(12345).spawn(len(STREAMS))
    for name, child in zip(STREAMS, children, strict=True):
        assert streams.seed(name) == int(child.generate_state(1, dtype=np.uint64)[0])
    assert len({streams.seed(name) for name in STREAMS}) == len(STREAMS)


def test_generators_repeat_for_a_stream_and_differ_between_streams():
    streams = RandomStreams(7)
    first = torch.rand(4, generator=streams.generator("transform"))
    again = torch.rand(4, generator=streams.generator("transform"))
    other = torch.rand(4, generator=streams.generator("score_samples"))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_root_seed_comes_from_random_state_without_touching_global_rngs():
    numpy_state = np.random.get_state()[1].copy()  # noqa: NPY002 - the global state is what is checked
    torch_state = torch.get_rng_state().clone()
    # The first 31-bit draw of the Mersenne Twister seeded with 3 (and 4): the same root every time.
    expected = {seed: int(np.random.RandomState(seed).randint(np.iinfo(np.int32).max)) for seed in (3, 4)}
    assert {seed: RandomStreams.from_random_state(seed).root_seed for seed in (3, 4)} == expected
    assert expected[3] != expected[4]
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_device_policies():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.warns(UserWarning, match="runs on the CPU"):
            assert resolve_device("cuda:0", fall_back_to_cpu=True) == torch.device("cpu")
