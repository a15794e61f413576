"""The frame-prediction training task: the encoder-forecaster trained on the frames of any
registered source (``data.dataset``; :mod:`.sources`). The model's input and output channels come
from the data (``data.channels``); the pictures and GIFs in TensorBoard and the run folder are in
the data's colours."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ....models.encoder_forecaster import Forecast
from ....models.heads import head_class
from ...checkpoint import atomic_write_bytes
from ...distributed import unwrap
from ...metrics import frame_mse
from ...tb import TBLogger, gif_bytes, png_bytes, prediction_strip, side_by_side, stack_rows, upscale
from .inference import build_model, evaluate_frames, predict
from .losses import LOSSES, check_scheduled_sampling, frame_loss, offset_l1, teacher_forcing
from .sources import FrameSource, source_class, test_sequences


class FramePredictionTask:
    """Frame prediction on ``data.dataset``'s source: its training batches seeded by (seed, step,
    rank), its validation set scored during training, its test set scored at the end."""

    best_metric = "mse"
    best_mode = "min"

    def __init__(self, cfg: dict) -> None:
        check_frame_config(cfg)
        self.cfg = cfg
        self.frames = cfg["model"]["input_frames"] + cfg["model"]["output_frames"]
        self.source: FrameSource = source_class(cfg)(cfg)
        self._val: tuple[Tensor, dict] | None = None

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def val_set(self) -> Tensor:
        """The fixed validation sequences ``(N, T, C, H, W)`` evaluated during training."""
        if self._val is None:
            self._val = self.source.validation_set()
        return self._val[0]

    def val_description(self) -> dict:
        self.val_set()
        return dict(self._val[1])

    def train_batch(self, step: int, rank: int, world: int) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Frames ``(B, T, C, H, W)`` of ``train.batch_size`` training sequences of the source
        (with ``motion_loss_weight`` > 0 also the true motion ``(offsets, weights)``), drawn from
        a generator seeded by ``(seed, step, rank)``."""
        rng = np.random.default_rng([int(self.cfg["seed"]), step, rank])
        return self.source.train_batch(rng, self.cfg["train"]["batch_size"])

    def _loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return frame_loss(self.cfg["loss"], pred, target, self.cfg["l1_weight"])

    def training_step(self, model: nn.Module, batch: Tensor, step: int) -> tuple[Tensor, dict]:
        """Loss and logs of one batch at training step ``step`` (which sets the scheduled-sampling
        probability). The logs are 0-dim tensors (the logger reads them on logging steps), so a
        step on a GPU does not wait for its kernels to finish."""
        device = next(model.parameters()).device
        motion = None
        if isinstance(batch, (tuple, list)):
            batch, *motion = (part.to(device) for part in batch)
        else:
            batch = batch.to(device)
        t_in = self.cfg["model"]["input_frames"]
        x, y = batch[:, :t_in], batch[:, t_in:]
        w = self.cfg["encoder_loss_weight"]
        forcing = teacher_forcing(self.cfg["model"]["scheduled_sampling"], step)
        # the model may be wrapped (DistributedDataParallel): forecast is reached through forward's wrapper
        out = _forecast(model, x, y, teacher_forcing=forcing, encoder_predictions=w > 0, offsets=motion is not None)
        pred = out.frames
        loss = self._loss(pred, y)
        logs = {}
        if w > 0:
            enc_loss = self._loss(out.encoder_frames, x[:, 1:])
            loss = loss + w * enc_loss
            logs["encoder_loss"] = enc_loss.detach()
        if motion is not None:
            offsets, weights = motion
            predicted = out.offsets
            # the predicted offsets cover the last predicted.shape[1] frames
            offsets, weights = offsets[:, -predicted.shape[1] :], weights[:, -predicted.shape[1] :]
            motion_loss = offset_l1(predicted, offsets, weights)
            loss = loss + self.cfg["motion_loss_weight"] * motion_loss
            logs["motion_loss"] = motion_loss.detach()
        logs["mse_per_frame"] = frame_mse(pred.detach(), y).mean()
        return loss, logs

    @torch.no_grad()
    def evaluate(self, model: nn.Module, logger: TBLogger | None, step: int) -> dict:
        """Frame metrics on the validation sequences (TensorBoard: examples, per-frame MSE)."""
        result = evaluate_frames(model, self.val_set(), self.cfg, logger, step)
        return {k: v for k, v in result.items() if k != "per_frame"}

    @torch.no_grad()
    def quick_evaluate(self, model: nn.Module) -> dict:
        """MSE (per frame, summed over pixels) of the first ``data.quick_eval_sequences``
        validation sequences: the training loop logs it every ``train.quick_eval_every`` steps
        (val_quick/)."""
        seqs = self.val_set()[: self.cfg["data"]["quick_eval_sequences"]]
        t_in, m = self.cfg["model"]["input_frames"], self.cfg["model"]
        pred = predict(
            model,
            seqs[:, :t_in],
            self.cfg["data"]["eval_batch_size"],
            self.cfg["train"]["precision"],
            filter_temperature=m["eval_filter_temperature"],
        )
        return {"mse": float(frame_mse(pred, seqs[:, t_in:]).mean())}

    @torch.no_grad()
    def test(self, model: nn.Module, logger: TBLogger | None, step: int, run_dir) -> dict:
        """The numbers metrics.json reports: ``model`` (the loop passes best.pt's weights) on the
        first ``data.final_eval_sequences`` test sequences, exactly as ``evaluate.py --checkpoint
        best.pt`` scores it by default (same set, batch size, precision and device; see
        :mod:`convlstm_vp.train.evaluate`). Writes ``predictions.png`` and ``predictions.gif`` of
        the first ``log.examples`` of them to ``run_dir``."""
        seqs, evaluated_on = test_sequences(self.cfg)
        result = evaluate_frames(model, seqs, self.cfg, return_predictions=True)
        pred = result.pop("predictions")
        t_in = self.cfg["model"]["input_frames"]
        shown = range(min(self.cfg["log"]["examples"], seqs.shape[0]))
        x, y = seqs[:, :t_in], seqs[:, t_in:]
        picture = stack_rows([prediction_strip(x[i], y[i], pred[i]) for i in shown], gap=8)
        video = stack_rows(
            [upscale(side_by_side(torch.cat([x[i], y[i]]), torch.cat([x[i], pred[i]])), 2) for i in shown], gap=8
        )
        atomic_write_bytes(run_dir / "predictions.png", png_bytes(picture))
        atomic_write_bytes(run_dir / "predictions.gif", gif_bytes(video, self.cfg["log"]["fps"]))
        result["evaluated_on"] = evaluated_on
        return result


def _forecast(model: nn.Module, frames: Tensor, targets: Tensor, **kwargs: Any) -> Forecast:
    """``EncoderForecaster.forecast`` of ``model``, called through ``model`` itself when it is a
    DistributedDataParallel wrapper: the wrapper synchronises gradients only for passes that go
    through its own call, which runs the inner module's ``forward``; for this one call that is
    ``forecast``."""
    inner = unwrap(model)
    if inner is model:
        return model.forecast(frames, targets, **kwargs)
    inner.forward = inner.forecast  # an instance attribute: nn.Module.__call__ runs it
    try:
        return model(frames, targets, **kwargs)
    finally:
        del inner.forward


MovingMNISTTask = FramePredictionTask  # the name scripts and tests use for the Moving MNIST job


def check_frame_config(cfg: dict) -> None:
    """ValueError naming the config key that does not fit: the loss, the head's options, the
    schedule and the source's ``data.*`` keys (before any work)."""
    if cfg["loss"] not in LOSSES:
        raise ValueError(f"config key 'loss': expected one of {LOSSES}, got {cfg['loss']!r}")
    head = head_class(cfg["model"]["head"])
    if cfg["motion_loss_weight"] > 0 and not head.has_kernels:
        raise ValueError(
            f"config key 'motion_loss_weight': needs a model.head with filter kernels "
            f"(head {head.name!r} has none whose motion it could train); got head {head.name!r}"
        )
    check_scheduled_sampling(cfg["model"]["scheduled_sampling"])
    t = cfg["model"]["eval_filter_temperature"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
        raise ValueError(f"config key 'model.eval_filter_temperature': expected a finite number > 0, got {t!r}")
    if t != 1.0 and not head.has_kernels:
        raise ValueError(
            f"config key 'model.eval_filter_temperature': the {head.name} head has no filter "
            f"kernels to sharpen; got {t!r}"
        )
    source_class(cfg).check_config(cfg)
