"""Residual flows for image rows: the squeeze permutation and the :func:`image_flow` builder.

As in the Residual Flows paper's image models, convolutional residual blocks come first
(after a space-to-depth squeeze, which gives 3x3 kernels a wider view and more channels)
and fully connected residual blocks last, so that distant pixels interact.
"""

import torch

from .blocks import BlockInverse, FlowLayer, ResidualBlock
from .conv import ConvResidualBlock
from .flow import ResidualFlow
from .linear import ActNorm
from .linearize import PermutationProducts

__all__ = ["Squeeze", "image_flow"]


class Squeeze(FlowLayer):
    """Space-to-depth on flattened image rows: ``(C, H, W) -> (4C, H/2, W/2)`` (RealNVP, Glow).

    Output channel ``4c + 2i + j`` holds the pixels of channel ``c`` at row offset ``i``
    and column offset ``j`` of every 2x2 patch. A permutation of the row's entries: its
    inverse is exact, its log-determinant 0. ``reverse=True`` gives the inverse layer
    (depth-to-space, ``(4C, H/2, W/2) -> (C, H, W)``).

    Parameters
    ----------
    image_shape : (int, int, int)
        ``(C, H, W)``, the unsqueezed shape, with ``H`` and ``W`` even.
    reverse : bool, default=False
        Depth-to-space instead.

    Attributes
    ----------
    features : int
        ``C * H * W``.
    output_shape : (int, int, int)
        ``(4C, H/2, W/2)`` (``(C, H, W)`` when ``reverse``).

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import Squeeze
    >>> squeeze = Squeeze((1, 2, 2))
    >>> squeeze.output_shape
    (4, 1, 1)
    >>> x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # one 2x2 image, row by row
    >>> squeeze(x).tolist(), squeeze.inverse(squeeze(x)).solution.tolist()
    ([[1.0, 2.0, 3.0, 4.0]], [[1.0, 2.0, 3.0, 4.0]])
    >>> out = Squeeze((2, 4, 4))(torch.arange(32.0).unsqueeze(0)).reshape(8, 2, 2)
    >>> out[:4, 0, 0].tolist()  # channel 0's top-left 2x2 patch, now in 4 channels at one pixel
    [0.0, 1.0, 4.0, 5.0]
    >>> torch.equal(Squeeze((2, 4, 4), reverse=True)(Squeeze((2, 4, 4))(x.repeat(1, 8))), x.repeat(1, 8))
    True
    """

    def __init__(self, image_shape, reverse=False):
        super().__init__()
        channels, height, width = (int(s) for s in image_shape)
        if height % 2 or width % 2:
            raise ValueError(f"Squeeze needs an even height and width, got image_shape={tuple(image_shape)}.")
        self.image_shape = (channels, height, width)
        self.reverse = bool(reverse)
        squeezed = (4 * channels, height // 2, width // 2)
        self.output_shape = self.image_shape if reverse else squeezed
        self.features = channels * height * width
        index = torch.arange(self.features).reshape(channels, height // 2, 2, width // 2, 2)
        index = index.permute(0, 2, 4, 1, 3).reshape(-1)
        index, inverse_index = (torch.argsort(index), index) if reverse else (index, torch.argsort(index))
        # Not in the state dict: a function of the shape, not a learned value.
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("inverse_index", inverse_index, persistent=False)

    def forward(self, z):
        return z[..., self.index]

    @torch.no_grad()
    def inverse(self, x, tol=None, max_iter=None):
        """The exact inverse permutation (``tol`` and ``max_iter`` unused); :class:`BlockInverse`."""
        converged = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        return BlockInverse(x[..., self.inverse_index], converged, 0, x.new_zeros(x.shape[0]))

    def forward_and_tangents(self, z, tangents):
        """Output and the tangents ``(batch, k, d)`` permuted alike."""
        return self(z), tangents[..., self.index]

    def forward_tangents_and_logdet(self, z, tangents):
        """Output, permuted tangents and ``log|det| = 0`` per row."""
        out, products = self.forward_and_tangents(z, tangents)
        return out, products, z.new_zeros(z.shape[0])

    def linearize_inverse(self, z, n_terms=None, tol=None):
        """Products with the inverse permutation, exact (``n_terms`` and ``tol`` unused)."""
        return PermutationProducts(self.inverse_index)

    def extra_repr(self):
        return f"image_shape={self.image_shape}, output_shape={self.output_shape}, reverse={self.reverse}"


def image_flow(image_shape, n_blocks=4, hidden_channels=(32, 32), n_dense_blocks=1, dense_hidden=(64, 64),
               lipschitz_coeff=0.9, squeeze=True, generator=None, **flow_options):
    """A residual flow for image rows: squeeze, convolutional blocks, then fully connected blocks.

    The layers, in the data -> latent order: a :class:`Squeeze` (when ``squeeze`` and
    ``H``, ``W`` are even), ``n_blocks`` x [ActNorm, :class:`~skivcnf.flows.ConvResidualBlock`]
    on the (squeezed) image, the reverse squeeze, then ``n_dense_blocks`` x [ActNorm,
    :class:`~skivcnf.flows.ResidualBlock`]. Every weight is drawn from ``generator``, so
    the flow is the same for the same seed.

    The squeeze is undone so that latent coordinate ``i`` stays pixel ``i``'s: the IVCNF
    constraint ``g^H(y) = x^H`` ties hidden pixels to the latents at the same places, and
    needs ``G^HH`` invertible. A flow that only permuted would have ``G^HH`` a block of a
    permutation matrix, singular for most masks (the constraint solvers then failed on
    most rows with partly hidden images).

    Parameters
    ----------
    image_shape : (int, int, int)
        ``(C, H, W)``; rows have ``d = C * H * W`` entries in C-order.
    n_blocks : int, default=4
        Convolutional residual blocks.
    hidden_channels : tuple of int, default=(32, 32)
        Hidden channels of each convolutional branch.
    n_dense_blocks : int, default=1
        Fully connected residual blocks after them (0 for none).
    dense_hidden : tuple of int, default=(64, 64)
        Hidden widths of each fully connected branch.
    lipschitz_coeff : float, default=0.9
        Bound on every block's ``Lip(h)``.
    squeeze : bool, default=True
    generator : torch.Generator, optional
    **flow_options
        ``logdet``, ``n_exact_terms``, ``geom_p``, ``inverse_tol``, ``inverse_max_iter`` of
        :meth:`~skivcnf.flows.ResidualFlow.from_layers`.

    Returns
    -------
    ResidualFlow

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import image_flow
    >>> flow = image_flow((1, 4, 4), n_blocks=1, hidden_channels=(8,), dense_hidden=(16,),
    ...                   generator=torch.Generator().manual_seed(0)).double()
    >>> [type(layer).__name__ for layer in flow.layers]
    ['Squeeze', 'ActNorm', 'ConvResidualBlock', 'Squeeze', 'ActNorm', 'ResidualBlock']
    >>> y = torch.randn(3, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> flow.log_prob(y).shape, bool(flow.invert(flow(y)).residual.max() < 1e-10)
    (torch.Size([3]), True)
    """
    channels, height, width = (int(s) for s in image_shape)
    features = channels * height * width
    layers = []
    shape = (channels, height, width)
    squeezed = squeeze and height % 2 == 0 and width % 2 == 0
    if squeezed:
        layers.append(Squeeze(shape))
        shape = layers[-1].output_shape
    for _ in range(n_blocks):
        layers += [ActNorm(features), ConvResidualBlock(shape, tuple(hidden_channels), lipschitz_coeff,
                                                        generator=generator)]
    if squeezed:
        layers.append(Squeeze((channels, height, width), reverse=True))
    for _ in range(n_dense_blocks):
        layers += [ActNorm(features), ResidualBlock(features, tuple(dense_hidden), lipschitz_coeff,
                                                    generator=generator)]
    return ResidualFlow.from_layers(features, layers, **flow_options)
