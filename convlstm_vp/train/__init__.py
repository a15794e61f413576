"""Training: the loop, checkpoints, metrics, TensorBoard logging, configs and distributed set-up."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, load_config
from .loop import NonFiniteLossError, fit

__all__ = [
    "CheckpointError",
    "ConfigError",
    "NonFiniteLossError",
    "fit",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
]
