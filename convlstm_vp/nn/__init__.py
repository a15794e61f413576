"""Neural-network building blocks: the N-d ConvLSTM cell, the sequence layer, layout helpers."""

from .cell import ConvLSTMCell
from .layer import ConvLSTM

__all__ = ["ConvLSTMCell", "ConvLSTM"]
