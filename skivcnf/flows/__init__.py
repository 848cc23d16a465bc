"""The invertible residual flow (iResNet / Residual Flow) for tabular rows and image rows.

Torch only: tensors in, tensors out; nothing here knows of NaN, pandas or scikit-learn.
"""

from .blocks import BlockInverse, FlowLayer, ResidualBlock, ResidualLayer
from .conv import ConvResidualBlock, ConvSpectralNormBound, LipschitzConv2d, conv_operator_norm
from .flow import EXACT_LOGDET_MAX_FEATURES, FlowInverse, ResidualFlow
from .image import Squeeze, image_flow
from .linear import ActNorm, InvertibleLinear
from .lipschitz import LipschitzLinear, LipSwish, SpectralNormBound
from .logdet import stochastic_block_logdet
from .training import TrainingHistory, fit_flow

__all__ = [
    "ActNorm",
    "BlockInverse",
    "ConvResidualBlock",
    "ConvSpectralNormBound",
    "EXACT_LOGDET_MAX_FEATURES",
    "FlowInverse",
    "FlowLayer",
    "InvertibleLinear",
    "LipSwish",
    "LipschitzConv2d",
    "LipschitzLinear",
    "ResidualBlock",
    "ResidualFlow",
    "ResidualLayer",
    "SpectralNormBound",
    "Squeeze",
    "TrainingHistory",
    "conv_operator_norm",
    "fit_flow",
    "image_flow",
    "stochastic_block_logdet",
]
