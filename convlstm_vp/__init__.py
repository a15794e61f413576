"""convlstm_vp: spatiotemporal sequence learning with one N-dimensional ConvLSTM cell."""

from .nn import ConvLSTM, ConvLSTMCell
from .models import DeepConvLSTM

__version__ = "0.1.0"

__all__ = ["ConvLSTM", "ConvLSTMCell", "__version__"]
