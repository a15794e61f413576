"""The models built on the ConvLSTM cell: frame prediction, patch classification, sensor windows."""

from .deepconvlstm import DeepConvLSTM
from .encoder_forecaster import EncoderForecaster, Forecast
from .patch_classifier import PatchSequenceClassifier

__all__ = ["DeepConvLSTM", "EncoderForecaster", "Forecast", "PatchSequenceClassifier"]
