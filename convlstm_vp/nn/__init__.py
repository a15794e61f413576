"""Neural-network building blocks: the N-d ConvLSTM cell, the sequence layer (and its rank-fixed
ConvLSTM1d/2d/3d), layout helpers, the computation paths (``implementation``) and the layer
training controls (regularizers, freezing, stored gradients, gradient scale)."""

from .cell import ConvLSTMCell, set_implementation
from .controls import L1, L1L2, L2, LayerControls, Regularizer, regularization_loss, scale_gradient
from .fast import IMPLEMENTATIONS, Implementation, lstm_gates
from .functional import NonFiniteInputError
from .layer import ConvLSTM, ConvLSTM1d, ConvLSTM2d, ConvLSTM3d

__all__ = [
    "ConvLSTMCell",
    "ConvLSTM",
    "ConvLSTM1d",
    "ConvLSTM2d",
    "ConvLSTM3d",
    "Implementation",
    "IMPLEMENTATIONS",
    "set_implementation",
    "LayerControls",
    "NonFiniteInputError",
    "Regularizer",
    "L1",
    "L2",
    "L1L2",
    "regularization_loss",
    "scale_gradient",
    "lstm_gates",
]
