"""convlstm_vp: spatiotemporal sequence learning with one N-dimensional ConvLSTM cell."""

from . import openmp

openmp.configure()  # before torch loads its OpenMP runtime (imported by .nn and .models)

from .models import DeepConvLSTM, EncoderForecaster, Forecast, PatchSequenceClassifier
from .nn import (
    L1,
    L1L2,
    L2,
    ConvLSTM,
    ConvLSTM1d,
    ConvLSTM2d,
    ConvLSTM3d,
    ConvLSTMCell,
    Regularizer,
    regularization_loss,
)

__version__ = "0.1.0"

__all__ = [
    "ConvLSTMCell",
    "ConvLSTM",
    "ConvLSTM1d",
    "ConvLSTM2d",
    "ConvLSTM3d",
    "EncoderForecaster",
    "Forecast",
    "PatchSequenceClassifier",
    "DeepConvLSTM",
    "regularization_loss",
    "Regularizer",
    "L1",
    "L2",
    "L1L2",
    "__version__",
]
