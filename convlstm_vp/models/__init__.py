
from .deepconvlstm import DeepConvLSTM
