"""Frame prediction with the ConvLSTM encoder-forecaster over registered frame sources.

- :mod:`.task`: :class:`FramePredictionTask`, what :func:`~convlstm_vp.train.loop.fit` trains;
- :mod:`.sources`: one class per ``data.dataset`` (Moving MNIST, video folder), registered by name;
- :mod:`.losses`: the frame and motion losses and the scheduled-sampling schedule;
- :mod:`.inference`: building, loading (``load_trained``), predicting with and scoring a model;
- :mod:`.defaults`: the job's config defaults.
"""

from .defaults import DEFAULTS
from .inference import build_model, evaluate_frames, load_trained, predict
from .losses import (
    LOSSES,
    check_scheduled_sampling,
    frame_loss,
    motion_error,
    offset_l1,
    scheduled_sampling,
    teacher_forcing,
)
from .sources import (
    SOURCES,
    FrameSource,
    MovingMNISTSource,
    VideoFolderSource,
    check_frame_data,
    register_source,
    source_class,
    test_sequences,
    video_folder,
)
from .task import FramePredictionTask, MovingMNISTTask, check_frame_config

__all__ = [
    "DEFAULTS",
    "LOSSES",
    "SOURCES",
    "FramePredictionTask",
    "FrameSource",
    "MovingMNISTSource",
    "MovingMNISTTask",
    "VideoFolderSource",
    "build_model",
    "check_frame_config",
    "check_frame_data",
    "check_scheduled_sampling",
    "evaluate_frames",
    "frame_loss",
    "load_trained",
    "motion_error",
    "offset_l1",
    "predict",
    "register_source",
    "scheduled_sampling",
    "source_class",
    "teacher_forcing",
    "test_sequences",
    "video_folder",
]
