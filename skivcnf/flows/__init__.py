"""The invertible residual flow (iResNet / Residual Flow) for tabular rows.

Torch only: tensors in, tensors out; nothing here knows of NaN, pandas or scikit-learn.
"""

from .blocks import ActNorm, BlockInverse, FlowLayer, ResidualBlock
from .flow import EXACT_LOGDET_MAX_FEATURES, FlowInverse, ResidualFlow
from .lipschitz import LipschitzLinear, LipSwish, SpectralNormBound
from .logdet import stochastic_block_logdet
from .training import TrainingHistory, fit_flow

__all__ = [
    "ActNorm",
    "BlockInverse",
    "EXACT_LOGDET_MAX_FEATURES",
    "FlowInverse",
    "FlowLayer",
    "LipSwish",
    "LipschitzLinear",
    "ResidualBlock",
    "ResidualFlow",
    "SpectralNormBound",
    "TrainingHistory",
    "fit_flow",
    "stochastic_block_logdet",
]
