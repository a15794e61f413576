"""Frame prediction with the ConvLSTM encoder-forecaster: on Moving MNIST or on a folder of the
user's own videos (``data.dataset``: ``moving_mnist`` | ``video_folder``), one training path for both.

The model's input and output channels come from the data (``data.channels``: 1 for Moving MNIST,
1 or 3 for videos); the pictures and GIFs in TensorBoard and the run folder are in the data's
colours. Training tricks that need Moving MNIST's generator (``motion_loss_weight``: the digits'
true motion) are refused on other data with an error naming the key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import MovingMNIST, VideoFolder, load_digits, moving_mnist_batch
from ...data.moving_mnist import frames_to_tensor, motion_targets, render_moving_mnist
from ...models.encoder_forecaster import EncoderForecaster, Forecast
from ...models.heads import head_class
from ..config import TRAIN_DEFAULTS
from ..distributed import unwrap
from ..metrics import FrameMetrics, frame_mse
from ..precision import eval_autocast, resolve_precision
from ..tb import TBLogger, gif_bytes, png_bytes, prediction_strip, side_by_side, stack_rows, upscale

DEFAULTS: dict[str, Any] = {
    "name": "moving_mnist",
    "seed": 0,
    "loss": "bce",  # bce | mse | l1 | l1+mse | bce+l1
    "l1_weight": 1.0,  # weight of the L1 term of the bce+l1 loss
    # weight of the auxiliary loss on the encoder's one-step-ahead predictions of the input frames
    "encoder_loss_weight": 0.0,
    # weight of an L1 loss between the filter kernels' mean source offsets and the generated
    # digits' true motion (dynamic-filter head; see motion_targets); 0 turns it off
    "motion_loss_weight": 0.0,
    "model": {
        "hidden_channels": [64, 64, 64],
        "kernel_size": 3,
        "patch_size": 4,
        "input_frames": 10,
        "output_frames": 10,
        "peephole": False,
        "head": "conv",  # conv | dynamic_filter
        "filter_size": 9,  # kernel side of the dynamic-filter head
        "output_activation": None,  # null: sigmoid for the conv head, identity for dynamic_filter
        # [start, end, steps] or null: in training step k the forecaster is fed the true previous
        # frame with probability start + (end - start) * min(k / steps, 1) (scheduled_sampling())
        "scheduled_sampling": None,
        # softmax temperature of the filter kernels when predicting: validation during training
        # (and so the best checkpoint), the final test, evaluate.py and predict.py (their --filter-temperature
        # overrides it); training itself always runs at 1. Below 1 sharpens the kernels, so less
        # blur piles up over the horizon: SSIM up, MSE a little worse (README "Results")
        "eval_filter_temperature": 1.0,
    },
    "data": {
        "dataset": "moving_mnist",  # moving_mnist | video_folder (convlstm_vp.data.VideoFolder)
        # moving_mnist: the data root (datasets/); video_folder: the folder of your videos
        "root": "datasets",
        # video_folder: frames are resized keeping the aspect ratio and centre-cropped to [H, W],
        # 1 (grey) or 3 (RGB) channels, every frame_step-th source frame (Moving MNIST: 64x64 grey)
        "size": [64, 64],
        "channels": 1,
        "frame_step": 1,
        # video_folder: where decoded frames are cached (null: <data.root>/.cache)
        "cache_dir": None,
        "source": "auto",  # moving_mnist: auto | mnist | embedded
        "num_digits": 2,
        # validation (every train.eval_every steps; picks best.pt): this many fixed sequences of
        # train digits (MovingMNIST split "val"; the test digits are left to the final test), or
        # at most this many clips of the video folder's validation split
        "val_sequences": 1000,
        # the frequent cheap validation (every train.quick_eval_every steps, TensorBoard
        # val_quick/mse): MSE of the first this-many validation sequences
        "quick_eval_sequences": 16,
        # the end of training tests best.pt on the first this-many test sequences (video folder:
        # test clips), the set evaluate.py scores by default, so metrics.json and evaluate.py agree
        "final_eval_sequences": 1000,
        "eval_batch_size": 50,
        "test_seed": 0,  # moving_mnist: seed of the generated test set
    },
    "log": {"examples": 4, "fps": 4.0},
    "train": dict(TRAIN_DEFAULTS, lr=2e-3, precision="auto", eval_every=200, quick_eval_every=50),
}

LOSSES = ("bce", "mse", "l1", "l1+mse", "bce+l1")
DATASETS = ("moving_mnist", "video_folder")


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
    channels = cfg.get("data", {}).get("channels", 1)
    return EncoderForecaster(
        channels,
        list(m["hidden_channels"]),
        m["kernel_size"],
        patch_size=m["patch_size"],
        input_frames=m["input_frames"],
        output_frames=m["output_frames"],
        head=m["head"],
        filter_size=m["filter_size"],
        output_activation=m["output_activation"],
        peephole=m["peephole"],
    )


def check_scheduled_sampling(spec: Any) -> None:
    """ValueError naming ``model.scheduled_sampling`` unless it is null or ``[start, end, steps]``
    with probabilities in [0, 1] and ``steps`` > 0."""
    if spec is None:
        return
    ok = isinstance(spec, (list, tuple)) and len(spec) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec)
    if not ok or not (0 <= spec[0] <= 1 and 0 <= spec[1] <= 1 and spec[2] > 0):
        raise ValueError(f"config key 'model.scheduled_sampling': expected [start, end, steps] with start and end "
                         f"probabilities in [0, 1] and steps > 0, or null; got {spec!r}")


def scheduled_sampling(spec: Sequence[float] | None, step: int) -> float:
    """Teacher-forcing probability at training step ``step`` (0-based) of the schedule ``spec`` =
    ``(start, end, steps)``: ``start`` at step 0, linear to ``end`` at step ``steps``, then ``end``;
    0 when ``spec`` is None (always free running)."""
    if spec is None:
        return 0.0
    start, end, steps = spec
    frac = min(step / float(steps), 1.0)
    return start + (end - start) * frac


def teacher_forcing(spec: Sequence[float] | None, step: int) -> float | Tensor:
    """What a training step passes as ``EncoderForecaster.forecast(teacher_forcing=...)``: the
    number 0 without a schedule; with one, :func:`scheduled_sampling` at ``step`` as a 0-dim
    float64 tensor, which the model mixes in even once it is 0 (it cannot read it without a host
    sync). So a run keeps one computation (the same coin draws, the same autograd graph) over its
    whole schedule, and a resumed run repeats it bit for bit."""
    if spec is None:
        return 0.0
    return torch.tensor(scheduled_sampling(spec, step), dtype=torch.float64)


def check_frame_data(cfg: dict) -> None:
    """ValueError naming the ``data.*`` key that does not fit ``data.dataset`` (before any work)."""
    d = cfg["data"]
    if d["dataset"] not in DATASETS:
        raise ValueError(f"config key 'data.dataset': expected one of {DATASETS}, got {d['dataset']!r}")
    size = d["size"]
    if not (len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError(f"config key 'data.size': expected [H, W] with positive integers, got {size!r}")
    if d["channels"] not in (1, 3):
        raise ValueError(f"config key 'data.channels': expected 1 (grey) or 3 (RGB), got {d['channels']!r}")
    if d["frame_step"] < 1:
        raise ValueError(f"config key 'data.frame_step': expected an integer >= 1, got {d['frame_step']!r}")
    # a size that model.patch_size does not divide is left to fit()'s check of batch 0, which names both
    if d["dataset"] == "moving_mnist":
        for key, value, fixed in (("size", list(size), [64, 64]), ("channels", d["channels"], 1), ("frame_step", d["frame_step"], 1)):
            if value != fixed:
                raise ValueError(f"config key 'data.{key}': Moving MNIST frames are 64x64 grey, generated frame by frame "
                                 f"(expected {fixed}); it applies to data.dataset 'video_folder', got {value!r}")
    elif cfg["motion_loss_weight"] > 0:
        raise ValueError("config key 'motion_loss_weight': the motion targets come from Moving MNIST's generator (the "
                         f"digits' true motion), which data.dataset {d['dataset']!r} does not have; set it to 0")


class FramePredictionTask:
    """Frame prediction on ``data.dataset``: Moving MNIST batches are generated on the fly from the
    train digit pool, video-folder batches are clips of the training split
    (:class:`~convlstm_vp.data.VideoFolder`) drawn at random; both seeded by (seed, step, rank)."""

    best_metric = "mse"
    best_mode = "min"

    def __init__(self, cfg: dict) -> None:
        if cfg["loss"] not in LOSSES:
            raise ValueError(f"config key 'loss': expected one of {LOSSES}, got {cfg['loss']!r}")
        head = head_class(cfg["model"]["head"])
        if cfg["motion_loss_weight"] > 0 and not head.has_kernels:
            raise ValueError(f"config key 'motion_loss_weight': needs a model.head with filter kernels "
                             f"(head {head.name!r} has none whose motion it could train); got head {head.name!r}")
        check_scheduled_sampling(cfg["model"]["scheduled_sampling"])
        t = cfg["model"]["eval_filter_temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
            raise ValueError(f"config key 'model.eval_filter_temperature': expected a finite number > 0, got {t!r}")
        if t != 1.0 and not head.has_kernels:
            raise ValueError(f"config key 'model.eval_filter_temperature': the {head.name} head has no filter "
                             f"kernels to sharpen; got {t!r}")
        check_frame_data(cfg)
        self.cfg = cfg
        d = cfg["data"]
        self.frames = cfg["model"]["input_frames"] + cfg["model"]["output_frames"]
        self.videos = d["dataset"] == "video_folder"
        if self.videos:
            self.train_clips = video_folder(cfg, "train")
        else:
            self.train_digits = load_digits(d["root"], "train", d["source"])
        self._eval: Tensor | None = None

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def val_set(self) -> Tensor:
        """The fixed validation sequences ``(N, T, C, H, W)`` evaluated during training: Moving
        MNIST split "val" (train digits), or the first ``data.val_sequences`` clips of the video
        folder's validation split."""
        if self._eval is None:
            d = self.cfg["data"]
            if self.videos:
                ds = video_folder(self.cfg, "val")
                self._eval = ds.clips(range(min(len(ds), d["val_sequences"])))
            else:
                ds = MovingMNIST(d["root"], "val", num_digits=d["num_digits"], num_frames=self.frames,
                                 length=d["val_sequences"], source=d["source"])
                self._eval = torch.stack([ds[i] for i in range(len(ds))])
        return self._eval

    def val_description(self) -> dict:
        if self.videos:
            n = int(self.val_set().shape[0])
            return {"split": "validation", "sequences": n,
                    "what": f"{n} clips of the validation split of {self.cfg['data']['root']} (carved from the training videos)"}
        n = self.cfg["data"]["val_sequences"]
        return {"split": "validation", "sequences": n,
                "what": f"{n} validation sequences generated from the train digits (MovingMNIST split 'val')"}

    def train_batch(self, step: int, rank: int, world: int) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Frames ``(B, T, C, H, W)``: ``train.batch_size`` training clips drawn with replacement
        (video folder), or generated sequences (Moving MNIST), with ``motion_loss_weight`` > 0 also
        the true motion ``(offsets, weights)`` of
        :func:`~convlstm_vp.data.moving_mnist.motion_targets` (the same frames either way: the
        generator draws the same numbers)."""
        rng = np.random.default_rng([int(self.cfg["seed"]), step, rank])
        b, n = self.cfg["train"]["batch_size"], self.cfg["data"]["num_digits"]
        if self.videos:
            return self.train_clips.clips(rng.integers(len(self.train_clips), size=b))
        if self.cfg["motion_loss_weight"] == 0:
            return moving_mnist_batch(b, digits=self.train_digits, num_digits=n, num_frames=self.frames, rng=rng)
        pool = self.train_digits.images
        frames, corners, ids = render_moving_mnist(pool, b, self.frames, n, rng=rng, return_trajectories=True)
        offsets, weights = motion_targets(pool, corners, ids, frames.shape[-1], self.cfg["model"]["patch_size"])
        return frames_to_tensor(frames), torch.from_numpy(offsets), torch.from_numpy(weights)

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
            offsets, weights = offsets[:, -predicted.shape[1]:], weights[:, -predicted.shape[1]:]
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
        pred = predict(model, seqs[:, :t_in], self.cfg["data"]["eval_batch_size"], self.cfg["train"]["precision"],
                       filter_temperature=m["eval_filter_temperature"])
        return {"mse": float(frame_mse(pred, seqs[:, t_in:]).mean())}

    @torch.no_grad()
    def test(self, model: nn.Module, logger: TBLogger | None, step: int, run_dir) -> dict:
        """The numbers metrics.json reports: ``model`` (the loop passes best.pt's weights) on the
        first ``data.final_eval_sequences`` test sequences, exactly as ``evaluate.py --checkpoint
        best.pt`` scores it by default (same set, batch size, precision and device; see
        :mod:`convlstm_vp.train.evaluate`). Writes ``predictions.png`` and ``predictions.gif`` of
        the first ``log.examples`` of them to ``run_dir``."""
        from ..checkpoint import atomic_write_bytes

        seqs, evaluated_on = test_sequences(self.cfg)
        result = evaluate_frames(model, seqs, self.cfg, return_predictions=True)
        pred = result.pop("predictions")
        t_in = self.cfg["model"]["input_frames"]
        shown = range(min(self.cfg["log"]["examples"], seqs.shape[0]))
        x, y = seqs[:, :t_in], seqs[:, t_in:]
        picture = stack_rows([prediction_strip(x[i], y[i], pred[i]) for i in shown], gap=8)
        video = stack_rows([upscale(side_by_side(torch.cat([x[i], y[i]]), torch.cat([x[i], pred[i]])), 2) for i in shown], gap=8)
        atomic_write_bytes(run_dir / "predictions.png", png_bytes(picture))
        atomic_write_bytes(run_dir / "predictions.gif", gif_bytes(video, self.cfg["log"]["fps"]))
        result["evaluated_on"] = evaluated_on
        return result


MovingMNISTTask = FramePredictionTask  # the job's name in older scripts and the frames job's module


def video_folder(cfg: dict, split: str, root: str | None = None) -> VideoFolder:
    """The ``split`` of the video folder ``root`` (default ``data.root``) with ``cfg``'s clip
    length, frame size, channels and frame step."""
    d, m = cfg["data"], cfg["model"]
    return VideoFolder(root or d["root"], split, m["input_frames"], m["output_frames"], size=tuple(d["size"]),
                       channels=d["channels"], frame_step=d["frame_step"], cache_dir=d["cache_dir"])


def test_sequences(cfg: dict, root: str | None = None, sequences: int | None = None, **moving_mnist: Any) -> tuple[Tensor, dict]:
    """The test sequences ``(N, T, C, H, W)`` of ``cfg``'s data and the ``evaluated_on`` entry
    naming them: the first ``sequences`` (default ``data.final_eval_sequences``) clips of the
    video folder's test split (``root`` overrides ``data.root``), or Moving MNIST test sequences
    (``moving_mnist`` overrides the keyword arguments of :class:`~convlstm_vp.data.MovingMNIST`:
    ``num_digits``, ``seed``, ``standard_file``). The end of training and ``evaluate.py`` share it,
    so they score the same set."""
    d, m = cfg["data"], cfg["model"]
    n = d["final_eval_sequences"] if sequences is None else sequences
    frames = m["input_frames"] + m["output_frames"]
    if d["dataset"] == "video_folder":
        ds = video_folder(cfg, "test", root)
        seqs = ds.clips(range(min(n, len(ds))))
        test_set = f"{ds.root} test split"
        what = f"{test_set}, first {seqs.shape[0]} of {len(ds)} clips ({', '.join(str(f.relative_to(ds.root)) for f in ds.files)})"
        return seqs, {"split": "test", "test_set": test_set, "sequences": int(seqs.shape[0]), "what": what}
    kw = {"num_digits": d["num_digits"], "seed": d["test_seed"], **moving_mnist}
    ds = MovingMNIST(root or d["root"], "test", num_frames=frames, length=n, source=d["source"], **kw)
    seqs = torch.stack([ds[i] for i in range(len(ds))])
    if seqs.shape[1] < frames:
        raise ValueError(f"test sequences have {seqs.shape[1]} frames; the model needs {frames}")
    seqs = seqs[:, :frames]
    test_set = str(ds.standard_path) if ds.standard_path else f"generated (seed {kw['seed']}, test digits)"
    return seqs, {"split": "test", "test_set": test_set, "sequences": int(seqs.shape[0]),
                  "what": f"test set {test_set}, first {int(seqs.shape[0])} sequences"}


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


@torch.no_grad()
def predict(
    model: EncoderForecaster,
    frames: Tensor,
    batch_size: int = 50,
    precision: str = "fp32",
    return_offsets: bool = False,
    *,
    filter_temperature: float = 1.0,
    render: str = "filter",
) -> Tensor | tuple[Tensor, Tensor]:
    """Predict ``(N, output_frames, C, H, W)`` from ``(N, input_frames, C, H, W)`` in batches, in
    eval mode (the model's mode is restored after); ``filter_temperature`` and ``render`` as in
    :meth:`EncoderForecaster.predict`. With ``return_offsets`` (dynamic filter) also the kernels'
    mean source offsets ``(N, output_frames, 2, H/p, W/p)`` (``EncoderForecaster.forecast``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    precision = resolve_precision(device, precision)
    ctx = eval_autocast(device, precision)
    outs, offsets = [], []
    try:
        with ctx:
            for i in range(0, frames.shape[0], batch_size):
                out = model.forecast(frames[i : i + batch_size].to(device), offsets=return_offsets,
                                     filter_temperature=filter_temperature, render=render)
                if return_offsets:
                    offsets.append(out.offsets.float().cpu())
                outs.append(out.frames.float().clamp(0, 1).cpu())
    finally:
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
    """MSE/MAE/SSIM/PSNR of ``model`` on ``sequences`` ``(N, T, C, H, W)``; logs examples if asked;
    ``return_predictions`` adds the predicted frames (key "predictions")."""
    t_in = cfg["model"]["input_frames"]
    x, y = sequences[:, :t_in], sequences[:, t_in:]
    pred = predict(model, x, cfg["data"]["eval_batch_size"], cfg["train"]["precision"],
                   filter_temperature=cfg["model"]["eval_filter_temperature"])
    fm = FrameMetrics()
    fm.update(pred, y)
    result = fm.compute()
    if logger is not None:
        for i in range(min(cfg["log"]["examples"], x.shape[0])):
            logger.image(f"predictions/sequence_{i}", prediction_strip(x[i], y[i], pred[i]), step)
            video = side_by_side(torch.cat([x[i], y[i]]), torch.cat([x[i], pred[i]]))
            logger.gif(f"videos/sequence_{i}_truth_vs_prediction", upscale(video, 2), step, fps=cfg["log"]["fps"])
        for h, v in enumerate(result["per_frame"]["mse"]):
            logger.scalar(f"val_per_frame/mse_t{h + 1:02d}", v, step)
    if return_predictions:
        result["predictions"] = pred
    return result



# config keys of removed options that a checkpoint's config may still hold, with the values that
# train the same model as this code (None: any value); other values cannot be rebuilt
_REMOVED_KEYS = {
    ("ssim_weight",): None,  # a loss term: any value (training only)
    ("model", "memory_format"): None,  # strides only: any value
    ("model", "motion_input"): False,
}


def _upgrade_config(config: dict, checkpoint: str) -> dict:
    """A checkpoint's config without the keys of removed options (``_REMOVED_KEYS``); a model that
    needed one of them, or a removed head, is a ValueError naming it. A model trained with the
    removed ``head: warp`` has the parameters of a dynamic-filter one: it loads as that, with a
    warning to render it with ``render="warp"`` as it was trained."""
    import copy
    import warnings

    config = copy.deepcopy(config)
    data = config.get("data")
    if isinstance(data, dict) and "eval_sequences" in data:  # the validation set's former key
        data.setdefault("val_sequences", data.pop("eval_sequences"))
    for path, neutral in _REMOVED_KEYS.items():
        *parents, key = path
        section = config
        for part in parents:
            section = section.get(part, {}) if isinstance(section, dict) else {}
        if isinstance(section, dict) and key in section:
            value = section.pop(key)
            if neutral is not None and value != neutral:
                raise ValueError(f"it was trained with config key {'.'.join(path)!r} = {value!r}, an option this version no longer has")
    model = config.get("model", {})
    if model.get("head") == "composite":
        raise ValueError("it was trained with model.head 'composite', a head this version no longer has")
    if model.get("head") == "warp":
        model["head"] = "dynamic_filter"
        warnings.warn(f"{checkpoint} was trained with the removed head 'warp': loaded as the dynamic filter whose "
                      f"kernels it shares; render with render='warp' (--render warp) as it was trained", stacklevel=3)
    return config


def load_trained(checkpoint: str, map_location: str = "cpu") -> tuple[EncoderForecaster, dict]:
    """Rebuild the model stored in a training checkpoint (safe loading) and return it with its
    config (predict with ``filter_temperature=cfg["model"]["eval_filter_temperature"]``).

    Older checkpoints load too: a ``sampling_updates`` buffer (a scheduled-sampling counter the
    training step replaces) and config keys of removed options that do not change the model are
    dropped (``_upgrade_config``; docs/results/removed-options.md)."""
    from ..checkpoint import CheckpointError, load_checkpoint
    from ..config import merge

    ck = load_checkpoint(checkpoint, map_location)
    try:
        cfg = merge(DEFAULTS, _upgrade_config(ck["config"], checkpoint))
        model = build_model(cfg)
        model.load_state_dict({k: v for k, v in ck["model"].items() if k != "sampling_updates"})
    except (ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{checkpoint} is not a frame-prediction encoder-forecaster checkpoint: {exc}") from exc
    model.eval()
    return model, cfg
