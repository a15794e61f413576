"""Digit completion: from the first 8 patches of a digit, predict the last 8.

The model is the frame-prediction :class:`~convlstm_vp.models.EncoderForecaster` with no
space-to-depth (``patch_size=1``) on ``1x7x7`` patch frames: the encoder reads
``model.input_frames`` patches, the forecaster predicts ``model.output_frames`` (together the 16
patches of a digit; in raster or snake order the first 8 are the top half).

Evaluation, on the validation digits during training (held out of the train digits, see
:class:`~.patch_data.PatchDigitPool`) and on the test split at the end: the frame metrics of
:mod:`convlstm_vp.train.metrics` over the predicted patches (``mse``/``mae`` summed over the 49
pixels of a patch, ``ssim``, ``psnr``) and the mean binary cross-entropy ``bce``. Pictures: for
``log.examples`` digits (evenly spaced over the set, so every class shows), three reassembled
digits side by side — the input half (missing patches grey), the input half with the predicted
half, and the truth — to TensorBoard (``val/completions``, ``test/completions``); the test one
also to ``completions.png`` in the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from ...data import unpatchify
from ..config import TRAIN_DEFAULTS, ConfigError
from ..metrics import FrameMetrics
from ..tb import TBLogger
from .digit_images import captioned_tiles, digit_grid, save_png
from .frames.inference import build_model as build_encoder_forecaster
from .frames.inference import predict
from .frames.losses import LOSSES, check_scheduled_sampling, frame_loss, teacher_forcing
from .patch_classifier import DIGIT_SIZE, check_data_config
from .patch_data import DATA_DEFAULTS, PatchDigitPool, describe_test_set, load_test_patches, subset_indices

DEFAULTS: dict[str, Any] = {
    "name": "patch_completion",
    "seed": 0,
    "loss": "bce",  # bce | mse | l1 | l1+mse
    "model": {
        "hidden_channels": [32, 32],
        "kernel_size": 3,
        "input_frames": 8,
        "output_frames": 8,
        "peephole": False,
        "scheduled_sampling": None,  # [start, end, steps] or null, as in frame prediction
    },
    "data": dict(DATA_DEFAULTS),
    "log": {"examples": 10},
    "train": dict(TRAIN_DEFAULTS, batch_size=64, lr=3e-3, precision="auto", eval_every=500),
}

MISSING = 0.35  # grey level of the patches the model has not seen, in the "input" picture


def build_model(cfg: dict) -> nn.Module:
    """The encoder-forecaster of frame prediction, without space-to-depth (patch frames are 7x7)."""
    return build_encoder_forecaster({"model": dict(cfg["model"], patch_size=1)})


class PatchCompletionTask:
    """Train on (optionally shifted) train digits; validate on held-out train digits; test and
    draw completions of test digits at the end."""

    best_metric = "mse"
    best_mode = "min"

    def __init__(self, cfg: dict) -> None:
        check_data_config(cfg["data"])
        if cfg["loss"] not in LOSSES:
            raise ConfigError(f"config key 'loss': expected one of {LOSSES}, got {cfg['loss']!r}")
        patches = (DIGIT_SIZE // cfg["data"]["patch_size"]) ** 2
        m = cfg["model"]
        if m["input_frames"] < 1 or m["output_frames"] < 1 or m["input_frames"] + m["output_frames"] != patches:
            raise ConfigError(
                f"config keys 'model.input_frames' + 'model.output_frames' must be positive and add up to the "
                f"{patches} patches of a digit (data.patch_size={cfg['data']['patch_size']}), got "
                f"{m['input_frames']} + {m['output_frames']}"
            )
        check_scheduled_sampling(m["scheduled_sampling"])
        self.cfg = cfg
        self.pool = PatchDigitPool(cfg["data"], int(cfg["seed"]))
        self._val: Tensor | None = None
        self.image_path: Path | None = None

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def val_set(self) -> Tensor:
        """Validation patch sequences ``(N, 16, 1, 7, 7)``."""
        if self._val is None:
            self._val = self.pool.val_set()[0]
        return self._val

    def val_description(self) -> dict:
        return self.pool.val_description()

    def train_batch(self, step: int, rank: int, world: int) -> Tensor:
        return self.pool.batch(step, rank, world, self.cfg["train"]["batch_size"])[0]

    def training_step(self, model: nn.Module, batch: Tensor, step: int) -> tuple[Tensor, dict]:
        batch = batch.to(next(model.parameters()).device)
        t_in = self.cfg["model"]["input_frames"]
        x, y = batch[:, :t_in], batch[:, t_in:]
        pred = model(x, y, teacher_forcing(self.cfg["model"]["scheduled_sampling"], step))
        return frame_loss(self.cfg["loss"], pred, y), {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, logger: TBLogger | None, step: int) -> dict:
        """Metrics on the validation digits; their completions to TensorBoard (``val/completions``)."""
        return self._score(model, self.val_set(), logger, step, "val")

    @torch.no_grad()
    def test(self, model: nn.Module, logger: TBLogger | None, step: int, run_dir: Path) -> dict:
        """Metrics on the test digits; their completions to TensorBoard (``test/completions``) and
        ``completions.png`` in ``run_dir``."""
        sequences = load_test_patches(self.cfg["data"])[0]
        result = self._score(model, sequences, logger, step, "test", run_dir)
        result["evaluated_on"] = describe_test_set(self.cfg["data"], int(sequences.shape[0]))
        return result

    def _score(
        self,
        model: nn.Module,
        sequences: Tensor,
        logger: TBLogger | None,
        step: int,
        split: str,
        run_dir: Path | None = None,
    ) -> dict:
        t_in = self.cfg["model"]["input_frames"]
        x, y = sequences[:, :t_in], sequences[:, t_in:]
        pred = predict(model, x, self.cfg["data"]["eval_batch_size"], self.cfg["train"]["precision"])
        fm = FrameMetrics()
        fm.update(pred, y)
        result = {k: v for k, v in fm.compute().items() if k != "per_frame"}
        result["bce"] = float(frame_loss("bce", pred, y))
        if logger is not None and logger.enabled:
            shown = subset_indices(x.shape[0], min(self.cfg["log"]["examples"], x.shape[0]))
            picture = self.completion_picture(x[shown], pred[shown], y[shown])
            logger.image(f"{split}/completions", picture, step)
            if run_dir is not None:
                self.image_path = save_png(Path(run_dir) / "completions.png", picture)
        return result

    def completion_picture(self, inputs: Tensor, pred: Tensor, truth: Tensor) -> Tensor:
        """One row per digit: input half (unseen patches grey), input + predicted half, truth.

        Args: patch sequences ``(n, T_in, 1, p, p)``, ``(n, T_out, 1, p, p)``, ``(n, T_out, 1, p, p)``.
        Returns: an RGB picture ``(3, H, W)`` in [0, 1].
        """
        order = self.cfg["data"]["order"]
        unseen = torch.full_like(truth, MISSING)
        digits = [
            unpatchify(torch.cat([inputs, part], dim=1), DIGIT_SIZE, order)
            for part in (unseen, pred.to(inputs.dtype), truth)
        ]  # three (n, 1, 28, 28)
        tiles = rearrange(torch.stack(digits, dim=1), "n k c h w -> (n k) c h w")
        captions = ["input", "predicted", "truth"] * inputs.shape[0]
        return digit_grid(captioned_tiles(tiles, captions), cols=3)
