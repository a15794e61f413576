"""Moving MNIST frame prediction with the ConvLSTM encoder-forecaster."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import MovingMNIST, load_digits, moving_mnist_batch
from ...data.moving_mnist import frames_to_tensor, motion_targets, render_moving_mnist
from ...models.encoder_forecaster import EncoderForecaster
from ..config import TRAIN_DEFAULTS
from ..loop import resolve_precision
from ..metrics import FrameMetrics, frame_mse, frame_ssim
from ..tb import TBLogger, gif_bytes, png_bytes, prediction_strip, side_by_side, stack_rows, upscale

DEFAULTS: dict[str, Any] = {
    "name": "moving_mnist",
    "seed": 0,
    "loss": "bce",  # bce | mse | l1 | l1+mse | bce+l1
    "l1_weight": 1.0,  # weight of the L1 term of the bce+l1 loss
    # weight of a structural term, 1 - SSIM (the evaluation's definition), added to the loss
    "ssim_weight": 0.0,
    # weight of the auxiliary loss on the encoder's one-step-ahead predictions of the input frames
    "encoder_loss_weight": 0.0,
    # weight of an L1 loss between the filter kernels' mean source offsets and the generated
    # digits' true motion (filter heads; see motion_targets); 0 turns it off
    "motion_loss_weight": 0.0,
    "model": {
        "hidden_channels": [64, 64, 64],
        "kernel_size": 3,
        "patch_size": 4,
        "input_frames": 10,
        "output_frames": 10,
        "peephole": False,
        "head": "conv",  # conv | dynamic_filter | composite | warp
        "filter_size": 9,  # kernel side of the dynamic-filter and composite heads
        "motion_input": False,  # the cells also read each frame's difference to the one before
        "output_activation": None,  # null: sigmoid for the conv head, identity for the others
        "scheduled_sampling": None,  # [start, end, steps] or null
        # softmax temperature of the filter kernels when predicting: evaluations during training
        # (and so the best checkpoint), evaluate.py and predict.py (their --filter-temperature
        # overrides it); training itself always runs at 1. Below 1 sharpens the kernels, so less
        # blur piles up over the horizon: SSIM up, MSE a little worse (README "Results")
        "eval_filter_temperature": 1.0,
        # strides of the cells' convolutions: contiguous (NCHW) | channels_last (NHWC; no faster
        # for gpu-openstl on an H100, README "Where a GPU training step's time goes")
        "memory_format": "contiguous",
    },
    "data": {
        "root": "datasets",
        "source": "auto",  # auto | mnist | embedded
        "num_digits": 2,
        "eval_sequences": 1000,  # size of the fixed test set evaluated during training (every train.eval_every steps)
        # the frequent cheap evaluation (every train.quick_eval_every steps, TensorBoard
        # eval_quick/mse): MSE of the first this-many of those sequences
        "quick_eval_sequences": 16,
        # the end of training evaluates the best checkpoint on the first this-many test sequences,
        # the set evaluate.py scores by default, so metrics.json and evaluate.py --json agree
        "final_eval_sequences": 1000,
        "eval_batch_size": 50,
        "test_seed": 0,
    },
    "log": {"examples": 4, "fps": 4.0},
    "train": dict(TRAIN_DEFAULTS, lr=2e-3, precision="auto", eval_every=200, quick_eval_every=50),
}

LOSSES = ("bce", "mse", "l1", "l1+mse", "bce+l1")


def _bce(pred: Tensor, target: Tensor) -> Tensor:
    # written out rather than F.binary_cross_entropy, which raises on NaN predictions: a NaN loss
    # must reach the training loop, whose nan_policy decides (stop with a message, or skip)
    p = pred.clamp(1e-6, 1 - 1e-6)
    return -(target * torch.log(p) + (1 - target) * torch.log1p(-p)).mean()


def frame_loss(kind: str, pred: Tensor, target: Tensor, l1_weight: float = 1.0) -> Tensor:
    """Training loss on frames in [0, 1] (mean over pixels); ``l1_weight`` weighs the L1 term of "bce+l1"."""
    pred, target = pred.float(), target.float()
    if kind == "bce":
        return _bce(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "l1+mse":
        return F.l1_loss(pred, target) + F.mse_loss(pred, target)
    if kind == "bce+l1":
        return _bce(pred, target) + l1_weight * F.l1_loss(pred, target)
    raise ValueError(f"config key 'loss': expected one of {LOSSES}, got {kind!r}")


def build_model(cfg: dict) -> EncoderForecaster:
    m = {**DEFAULTS["model"], **cfg["model"]}  # other tasks (patch completion) reuse this with fewer keys
    ss = m["scheduled_sampling"]
    return EncoderForecaster(
        1,
        list(m["hidden_channels"]),
        m["kernel_size"],
        patch_size=m["patch_size"],
        input_frames=m["input_frames"],
        output_frames=m["output_frames"],
        scheduled_sampling=tuple(ss) if ss is not None else None,
        head=m["head"],
        filter_size=m["filter_size"],
        motion_input=m["motion_input"],
        output_activation=m["output_activation"],
        peephole=m["peephole"],
        memory_format=m["memory_format"],
    )


class MovingMNISTTask:
    """Batches are generated on the fly from the train digit pool, seeded by (seed, step, rank)."""

    best_metric = "mse"
    best_mode = "min"

    def __init__(self, cfg: dict) -> None:
        if cfg["loss"] not in LOSSES:
            raise ValueError(f"config key 'loss': expected one of {LOSSES}, got {cfg['loss']!r}")
        if cfg["motion_loss_weight"] > 0 and cfg["model"]["head"] == "conv":
            raise ValueError("config key 'motion_loss_weight': needs model.head 'dynamic_filter', 'composite' or 'warp' "
                             "(the conv head has no filter kernels whose motion it could train); got head 'conv'")
        t = cfg["model"]["eval_filter_temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
            raise ValueError(f"config key 'model.eval_filter_temperature': expected a finite number > 0, got {t!r}")
        if t != 1.0 and cfg["model"]["head"] == "conv":
            raise ValueError(f"config key 'model.eval_filter_temperature': the conv head has no filter kernels to sharpen; got {t!r}")
        self.cfg = cfg
        d = cfg["data"]
        self.frames = cfg["model"]["input_frames"] + cfg["model"]["output_frames"]
        self.train_digits = load_digits(d["root"], "train", d["source"])
        self._eval: Tensor | None = None

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def eval_set(self) -> Tensor:
        """The fixed test sequences ``(N, T, 1, 64, 64)`` used for evaluation during training."""
        if self._eval is None:
            d = self.cfg["data"]
            ds = MovingMNIST(d["root"], "test", num_digits=d["num_digits"], num_frames=self.frames,
                             length=d["eval_sequences"], seed=d["test_seed"], source=d["source"])
            self._eval = torch.stack([ds[i] for i in range(len(ds))])
        return self._eval

    def train_batch(self, step: int, rank: int, world: int) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Frames ``(B, T, 1, 64, 64)``; with ``motion_loss_weight`` > 0 also the true motion
        ``(offsets, weights)`` of :func:`~convlstm_vp.data.moving_mnist.motion_targets` (the same
        frames either way: the generator draws the same numbers)."""
        rng = np.random.default_rng([int(self.cfg["seed"]), step, rank])
        b, n = self.cfg["train"]["batch_size"], self.cfg["data"]["num_digits"]
        if self.cfg["motion_loss_weight"] == 0:
            return moving_mnist_batch(b, digits=self.train_digits, num_digits=n, num_frames=self.frames, rng=rng)
        pool = self.train_digits.images
        frames, corners, ids = render_moving_mnist(pool, b, self.frames, n, rng=rng, return_trajectories=True)
        offsets, weights = motion_targets(pool, corners, ids, frames.shape[-1], self.cfg["model"]["patch_size"])
        return frames_to_tensor(frames), torch.from_numpy(offsets), torch.from_numpy(weights)

    def _loss(self, pred: Tensor, target: Tensor) -> Tensor:
        loss = frame_loss(self.cfg["loss"], pred, target, self.cfg["l1_weight"])
        if self.cfg["ssim_weight"] > 0:
            loss = loss + self.cfg["ssim_weight"] * (1.0 - frame_ssim(pred, target).mean())
        return loss

    def training_step(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict]:
        """Loss and logs of one batch. The logs are 0-dim tensors (the logger reads them on
        logging steps), so a step on a GPU does not wait for its kernels to finish."""
        device = next(model.parameters()).device
        motion = None
        if isinstance(batch, (tuple, list)):
            batch, *motion = (part.to(device) for part in batch)
        else:
            batch = batch.to(device)
        t_in = self.cfg["model"]["input_frames"]
        x, y = batch[:, :t_in], batch[:, t_in:]
        w = self.cfg["encoder_loss_weight"]
        out = model(x, y, return_encoder_predictions=w > 0, return_offsets=motion is not None)
        pred, rest = (out, ()) if isinstance(out, Tensor) else (out[0], out[1:])
        loss = self._loss(pred, y)
        logs = {}
        if w > 0:
            enc_loss = self._loss(rest[0], x[:, 1:])
            loss = loss + w * enc_loss
            logs["encoder_loss"] = enc_loss.detach()
        if motion is not None:
            offsets, weights = motion
            predicted = rest[-1]
            # the predicted offsets cover the last predicted.shape[1] frames
            offsets, weights = offsets[:, -predicted.shape[1]:], weights[:, -predicted.shape[1]:]
            motion_loss = offset_l1(predicted, offsets, weights)
            loss = loss + self.cfg["motion_loss_weight"] * motion_loss
            logs["motion_loss"] = motion_loss.detach()
        logs["mse_per_frame"] = frame_mse(pred.detach(), y).mean()
        return loss, logs

    @torch.no_grad()
    def evaluate(self, model: nn.Module, logger: TBLogger | None, step: int) -> dict:
        result = evaluate_frames(model, self.eval_set(), self.cfg, logger, step)
        return {k: v for k, v in result.items() if k != "per_frame"}

    @torch.no_grad()
    def quick_evaluate(self, model: nn.Module) -> dict:
        """MSE (per frame, summed over pixels) of the first ``data.quick_eval_sequences`` test
        sequences: the training loop logs it every ``train.quick_eval_every`` steps (eval_quick/)."""
        seqs = self.eval_set()[: self.cfg["data"]["quick_eval_sequences"]]
        t_in, m = self.cfg["model"]["input_frames"], self.cfg["model"]
        trained_temperature = model.filter_temperature
        model.set_filter_temperature(m["eval_filter_temperature"])
        try:
            pred = predict(model, seqs[:, :t_in], self.cfg["data"]["eval_batch_size"], self.cfg["train"]["precision"])
        finally:
            model.set_filter_temperature(trained_temperature)
        return {"mse": float(frame_mse(pred, seqs[:, t_in:]).mean())}

    def final_evaluation(self, model: nn.Module, best_path, logger: TBLogger | None, step: int, run_dir) -> dict:
        """The numbers metrics.json reports: the best checkpoint (``best_path``; ``model`` when there
        is none) on the first ``data.final_eval_sequences`` test sequences, exactly as
        ``evaluate.py --checkpoint best.pt`` scores it by default (same set, batch size, precision
        and device; see :mod:`convlstm_vp.train.evaluate`). Writes ``predictions.png`` and
        ``predictions.gif`` of the first ``log.examples`` of them to ``run_dir``."""
        from ..checkpoint import atomic_write_bytes, load_checkpoint

        device, best_step = next(model.parameters()).device, step
        if best_path is not None:
            best_step = int(load_checkpoint(best_path)["step"])
            model, _ = load_trained(str(best_path))
            model = model.to(device)
        d = self.cfg["data"]
        ds = MovingMNIST(d["root"], "test", num_digits=d["num_digits"], num_frames=self.frames,
                         length=d["final_eval_sequences"], seed=d["test_seed"], source=d["source"])
        seqs = torch.stack([ds[i] for i in range(len(ds))])
        result = evaluate_frames(model, seqs, self.cfg, return_predictions=True)
        pred = result.pop("predictions")
        t_in = self.cfg["model"]["input_frames"]
        shown = range(min(self.cfg["log"]["examples"], seqs.shape[0]))
        x, y = seqs[:, :t_in], seqs[:, t_in:]
        picture = stack_rows([prediction_strip(x[i], y[i], pred[i]) for i in shown], gap=8)
        video = stack_rows([upscale(side_by_side(torch.cat([x[i], y[i]]), torch.cat([x[i], pred[i]])), 2) for i in shown], gap=8)
        atomic_write_bytes(run_dir / "predictions.png", png_bytes(picture))
        atomic_write_bytes(run_dir / "predictions.gif", gif_bytes(video, self.cfg["log"]["fps"]))
        test_set = str(ds.standard_path) if ds.standard_path else f"generated (seed {d['test_seed']}, test digits)"
        result["evaluated_on"] = {
            "split": "test", "test_set": test_set, "sequences": int(seqs.shape[0]),
            "what": f"test set {test_set}, first {int(seqs.shape[0])} sequences",
            "checkpoint": "best.pt" if best_path is not None else "final weights", "checkpoint_step": best_step,
        }
        return result


@torch.no_grad()
def predict(
    model: EncoderForecaster, frames: Tensor, batch_size: int = 50, precision: str = "fp32", return_offsets: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Predict ``(N, output_frames, C, H, W)`` from ``(N, input_frames, C, H, W)`` in batches; with
    ``return_offsets`` (filter heads) also the kernels' mean source offsets ``(N, output_frames,
    2, H/p, W/p)`` (see ``EncoderForecaster.forward``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    precision = resolve_precision(device, precision)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else torch.autocast(device.type, enabled=False)
    outs, offsets = [], []
    with ctx:
        for i in range(0, frames.shape[0], batch_size):
            out = model(frames[i : i + batch_size].to(device), return_offsets=return_offsets)
            if return_offsets:
                out, off = out
                offsets.append(off.float().cpu())
            outs.append(out.float().clamp(0, 1).cpu())
    model.train(was_training)
    return (torch.cat(outs), torch.cat(offsets)) if return_offsets else torch.cat(outs)


def offset_l1(offsets: Tensor, target: Tensor, weights: Tensor, dim: tuple[int, ...] | None = None) -> Tensor:
    """Mean absolute error (px, per component) of source offsets ``(N, T, 2, h, w)`` against the
    true motion ``target`` on the cells where ``weights`` ``(N, T, 1, h, w)`` is 1
    (:func:`~convlstm_vp.data.moving_mnist.motion_targets`), over all of them or per the
    dimensions left out of ``dim``; differentiable (the training loss ``motion_loss_weight`` weighs)."""
    dim = tuple(range(offsets.dim())) if dim is None else dim
    err = ((offsets - target).abs() * weights).sum(dim=dim)
    return err / (2 * weights.sum(dim=dim)).clamp(min=1)


def motion_error(offsets: Tensor, target: Tensor, weights: Tensor) -> dict:
    """:func:`offset_l1` of predicted offsets overall and per frame, with the same figures for
    offsets of zero (a model that predicts no motion) beside them."""
    still = torch.zeros_like(target)
    per_frame = (0, 2, 3, 4)
    return {
        "mae_px": float(offset_l1(offsets, target, weights)),
        "no_motion_mae_px": float(offset_l1(still, target, weights)),
        "per_frame": offset_l1(offsets, target, weights, per_frame).tolist(),
        "no_motion_per_frame": offset_l1(still, target, weights, per_frame).tolist(),
    }


def evaluate_frames(model: EncoderForecaster, sequences: Tensor, cfg: dict, logger: TBLogger | None = None, step: int = 0,
                    return_predictions: bool = False) -> dict:
    """MSE/MAE/SSIM/PSNR of ``model`` on ``sequences`` ``(N, T, 1, H, W)``; logs examples if asked;
    ``return_predictions`` adds the predicted frames (key "predictions")."""
    t_in = cfg["model"]["input_frames"]
    x, y = sequences[:, :t_in], sequences[:, t_in:]
    trained_temperature = model.filter_temperature  # predict at the configured one, then train on at this
    model.set_filter_temperature(cfg["model"]["eval_filter_temperature"])
    try:
        pred = predict(model, x, cfg["data"]["eval_batch_size"], cfg["train"]["precision"])
    finally:
        model.set_filter_temperature(trained_temperature)
    fm = FrameMetrics()
    fm.update(pred, y)
    result = fm.compute()
    if logger is not None:
        for i in range(min(cfg["log"]["examples"], x.shape[0])):
            logger.image(f"predictions/sequence_{i}", prediction_strip(x[i], y[i], pred[i]), step)
            video = side_by_side(torch.cat([x[i], y[i]]), torch.cat([x[i], pred[i]]))
            logger.gif(f"videos/sequence_{i}_truth_vs_prediction", upscale(video, 2), step, fps=cfg["log"]["fps"])
        for h, v in enumerate(result["per_frame"]["mse"]):
            logger.scalar(f"eval_per_frame/mse_t{h + 1:02d}", v, step)
    if return_predictions:
        result["predictions"] = pred
    return result



def load_trained(checkpoint: str, map_location: str = "cpu") -> tuple[EncoderForecaster, dict]:
    """Rebuild the model stored in a training checkpoint (safe loading) and return it with its config."""
    from ..checkpoint import CheckpointError, load_checkpoint
    from ..config import merge

    ck = load_checkpoint(checkpoint, map_location)
    try:
        cfg = merge(DEFAULTS, ck["config"])
        model = build_model(cfg)
        model.load_state_dict(ck["model"])
        model.set_filter_temperature(cfg["model"]["eval_filter_temperature"])
    except (ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{checkpoint} is not a Moving MNIST encoder-forecaster checkpoint: {exc}") from exc
    model.eval()
    return model, cfg
