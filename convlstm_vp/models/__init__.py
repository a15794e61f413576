"""Models built on the ConvLSTM cell: the encoder-forecaster (frame prediction), the 7x7-patch
sequence classifier and DeepConvLSTM (sensor activity recognition)."""

from .deepconvlstm import DeepConvLSTM
from .encoder_forecaster import EncoderForecaster, Forecast
from .heads import HEADS, FrameHead, register_head
from .patch_classifier import PatchSequenceClassifier

__all__ = [
    "EncoderForecaster",
    "Forecast",
    "FrameHead",
    "HEADS",
    "register_head",
    "PatchSequenceClassifier",
    "DeepConvLSTM",
]
