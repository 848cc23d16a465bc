"""The amortised posterior for image rows: a small convolutional network (the paper's, for images).

Same interface as :class:`~skivcnf.conditional.InferenceNetwork`: rows of ``d = C * H * W``
entries in C-order and their hidden masks in, :class:`~skivcnf.conditional.GaussianParameters`
out, for any mask.
"""

import math

import torch
from torch import nn

from .posteriors import GaussianParameters

__all__ = ["ConvInferenceNetwork"]


class ConvInferenceNetwork(nn.Module):
    """Amortised posterior for images: convolutions from ``[filled image, mask]`` to per-pixel Gaussian parameters.

    The image with its hidden pixels replaced by ``fill_values`` and the mask make ``2C``
    input channels; 3x3 "same" convolutions with ReLU (channels ``channels``) follow, then
    a 1x1 convolution to ``(2 + n_reflections) * C`` channels: per pixel, the mean, the
    log-scale and the Householder vectors' entries.

    Parameters
    ----------
    image_shape : (int, int, int)
        ``(C, H, W)``.
    channels : tuple of int, default=(4, 8, 16, 32, 8)
        Output channels of the 3x3 convolutions (the paper's).
    n_reflections : int, default=0
        Householder vectors produced per row.
    fill_values : Tensor (d,), optional
        Values put in hidden entries; zeros by default.
    generator : torch.Generator, optional
        Source of the initial weights; the global RNG is not touched.

    Attributes
    ----------
    features : int
        ``d = C * H * W``.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import ConvInferenceNetwork
    >>> network = ConvInferenceNetwork((1, 4, 4), n_reflections=2, generator=torch.Generator().manual_seed(0))
    >>> y = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    >>> hidden = torch.rand(3, 16, generator=torch.Generator().manual_seed(2)) < 0.5
    >>> params = network(torch.where(hidden, float("nan"), y), hidden)  # hidden entries are filled, NaN is fine
    >>> params.mean.shape, params.log_scale.shape, params.reflections.shape
    (torch.Size([3, 16]), torch.Size([3, 16]), torch.Size([3, 2, 16]))
    >>> bool(params.mean.abs().max() < 0.1) and bool(params.log_scale.abs().max() < 0.1)  # starts near the prior
    True
    """

    def __init__(self, image_shape, channels=(4, 8, 16, 32, 8), n_reflections=0, fill_values=None, generator=None):
        super().__init__()
        if n_reflections < 0:
            raise ValueError(f"n_reflections must be non-negative, got {n_reflections!r}.")
        self.image_shape = tuple(int(s) for s in image_shape)
        n_channels = self.image_shape[0]
        self.features = math.prod(self.image_shape)
        self.n_reflections = n_reflections
        dims = [2 * n_channels, *channels]
        layers = []
        for n_in, n_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Conv2d(n_in, n_out, 3, padding=1, device="meta"), nn.ReLU()]
        out = nn.Conv2d(dims[-1], (2 + n_reflections) * n_channels, 1, device="meta")
        # Built on the meta device so that nn.Conv2d's own initialisation draws nothing from the global RNG.
        self.net = nn.Sequential(*layers, out).to_empty(device="cpu")
        self.register_buffer(
            "fill_values",
            torch.zeros(self.features) if fill_values is None else torch.as_tensor(fill_values).float(),
        )
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator=None):
        """Initialise like ``torch.nn.Conv2d`` from ``generator``; the mean and log-scale start near 0 (the prior)."""
        for layer in self.net:
            if isinstance(layer, nn.Conv2d):
                bound = 1.0 / math.sqrt(layer.weight[0].numel())
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
        last, n_channels = self.net[-1], self.image_shape[0]
        last.weight[: 2 * n_channels].mul_(0.01)
        last.bias[: 2 * n_channels].zero_()

    def forward(self, y, hidden):
        """Parameters for rows ``y : Tensor (batch, d)`` with mask ``hidden : BoolTensor (batch, d)``.

        Returns :class:`~skivcnf.conditional.GaussianParameters` with ``mean`` and
        ``log_scale`` of shape ``(batch, d)`` and ``reflections`` of shape
        ``(batch, n_reflections, d)`` (None without reflections), in the rows' C-order.
        """
        batch, (n_channels, height, width) = y.shape[0], self.image_shape
        filled = torch.where(hidden, self.fill_values.to(y.dtype), y)
        images = torch.cat([filled, hidden.to(y.dtype)], dim=-1).reshape(batch, 2 * n_channels, height, width)
        out = self.net(images).reshape(batch, 2 + self.n_reflections, self.features)
        reflections = out[:, 2:] if self.n_reflections else None
        return GaussianParameters(out[:, 0], out[:, 1], reflections)
