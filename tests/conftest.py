import pytest
import torch


@pytest.fixture(autouse=True)
def _two_threads():
    # CI has 2 cores; pinning keeps timings and reductions comparable with it.
    torch.set_num_threads(2)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)
