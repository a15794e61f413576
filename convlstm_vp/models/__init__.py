
from .deepconvlstm import DeepConvLSTM
from .patch_classifier import PatchSequenceClassifier
