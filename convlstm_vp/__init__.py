"""convlstm_vp: spatiotemporal sequence learning with one N-dimensional ConvLSTM cell."""

from .nn import L1, L2, L1L2, ConvLSTM, ConvLSTMCell, Regularizer, regularization_loss
from .models import DeepConvLSTM, EncoderForecaster, Forecast, PatchSequenceClassifier

__version__ = "0.1.0"

__all__ = [
    "ConvLSTM",
    "ConvLSTMCell",
    "regularization_loss",
    "Regularizer",
    "L1",
    "L2",
    "L1L2",
    "EncoderForecaster",
    "Forecast",
    "PatchSequenceClassifier",
    "DeepConvLSTM",
    "__version__",
]
