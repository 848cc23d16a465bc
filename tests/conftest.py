import pytest
import torch


@pytest.fixture(autouse=True)
def _two_threads():
    # CI has 2 cores; pinning keeps timings and reductions comparable with it.
    torch.set_num_threads(2)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def trained_flow():
    """A non-linear flow trained briefly on a curved 6-D table (float64), and its data."""
    from skivcnf.flows import ResidualFlow, fit_flow

    gen = torch.Generator().manual_seed(99)
    z = torch.randn(600, 3, generator=gen, dtype=torch.float64)
    noise = 0.3 * torch.randn(600, 3, generator=gen, dtype=torch.float64)
    data = torch.cat([z, z[:, :1] ** 2 - 1 + noise[:, :1], torch.sin(2 * z[:, 1:2]) + noise[:, 1:2],
                      z[:, :1] * z[:, 2:3] + noise[:, 2:]], dim=1)
    data = (data - data.mean(0)) / data.std(0)
    torch.set_num_threads(2)
    flow = ResidualFlow(6, n_blocks=4, hidden_features=(32, 32), generator=gen).double()
    fit_flow(flow, data, max_epochs=30, batch_size=128, lr=5e-3, generator=gen)
    return flow, data
