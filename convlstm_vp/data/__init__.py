"""Datasets for convlstm_vp: MNIST digit sources, Moving MNIST, MNIST patch sequences, video folders, sensors."""

from .digits import DigitSet, load_digits
from .mnist_patches import MNISTPatchSequences, patchify, unpatchify
from .moving_mnist import MovingMNIST, motion_targets, moving_mnist_batch, render_moving_mnist
from .sensors import BasicMotions, Daphnet, Opportunity, Standardizer, sliding_windows
from .series import LabelledSeries, SeriesDataset, read_source, read_ts
from .splits import stratified_split
from .video_folder import VideoFolder

__all__ = [
    "BasicMotions",
    "Daphnet",
    "DigitSet",
    "LabelledSeries",
    "MNISTPatchSequences",
    "MovingMNIST",
    "Opportunity",
    "SeriesDataset",
    "Standardizer",
    "VideoFolder",
    "load_digits",
    "motion_targets",
    "moving_mnist_batch",
    "patchify",
    "read_source",
    "read_ts",
    "render_moving_mnist",
    "sliding_windows",
    "stratified_split",
    "unpatchify",
]
