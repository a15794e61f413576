"""Neural-network building blocks: the N-d ConvLSTM cell, the sequence layer, layout helpers,
and the layer training controls (regularizers, freezing, stored gradients, gradient scale)."""

from .cell import ConvLSTMCell
from .controls import L1, L2, L1L2, LayerControls, Regularizer, regularization_loss, scale_gradient
from .fast import compile_cells, lstm_gates
from .functional import NonFiniteInputError
from .layer import ConvLSTM

__all__ = [
    "ConvLSTMCell",
    "ConvLSTM",
    "LayerControls",
    "NonFiniteInputError",
    "Regularizer",
    "L1",
    "L2",
    "L1L2",
    "regularization_loss",
    "scale_gradient",
    "compile_cells",
    "lstm_gates",
]
