"""Digit classification from sequences of 7x7 patches with :class:`PatchSequenceClassifier`.

Evaluation (on the test split, or its first ``data.eval_size`` digits): ``accuracy``,
``per_class_recall`` (a list of 10), ``f1_macro``, ``f1_weighted`` (see
:mod:`convlstm_vp.train.metrics`) and the mean cross-entropy ``loss``. TensorBoard gets those
as scalars plus the confusion matrix and a grid of misclassified test digits reassembled from
their patches (captioned ``true->predicted``); both pictures are also written as PNGs to the
run folder (``confusion_matrix.png``, ``misclassified.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ...data import unpatchify
from ...models.patch_classifier import PatchSequenceClassifier
from ..config import TRAIN_DEFAULTS, ConfigError
from ..loop import resolve_precision
from ..metrics import classification_metrics, confusion_matrix
from ..tb import TBLogger, confusion_matrix_image
from .digit_images import captioned_tiles, digit_grid, save_png
from .patch_data import DATA_DEFAULTS, PatchDigitPool, test_patch_set

NUM_CLASSES = 10
DIGIT_SIZE = 28

DEFAULTS: dict[str, Any] = {
    "name": "patch_classifier",
    "seed": 0,
    "label_smoothing": 0.0,
    "model": {
        "hidden_channels": [32],
        "kernel_size": 3,
        "head": "flatten",  # flatten | pool
        "bidirectional": False,
        "dropout": 0.0,
        "peephole": False,
    },
    "data": dict(DATA_DEFAULTS),
    "log": {"misclassified": 32},  # misclassified test digits shown per evaluation
    "train": dict(TRAIN_DEFAULTS, batch_size=64, lr=3e-3, precision="auto", eval_every=500),
}


def check_data_config(data: dict) -> None:
    """Fail fast, naming the key, on data settings the patch tasks cannot use."""
    for key, choices in (("order", ("raster", "snake")), ("source", ("auto", "mnist", "embedded"))):
        if data[key] not in choices:
            raise ConfigError(f"config key 'data.{key}': expected one of {choices}, got {data[key]!r}")
    if data["patch_size"] < 1 or DIGIT_SIZE % data["patch_size"]:
        raise ConfigError(f"config key 'data.patch_size': must divide {DIGIT_SIZE}, got {data['patch_size']!r}")
    for key in ("max_shift", "max_rotation", "max_scale", "train_size", "eval_size"):
        if data[key] < 0:
            raise ConfigError(f"config key 'data.{key}': expected a value >= 0, got {data[key]!r}")
    if data["max_scale"] >= 1:
        raise ConfigError(f"config key 'data.max_scale': expected a value below 1, got {data['max_scale']!r}")
    if data["eval_batch_size"] < 1:
        raise ConfigError(f"config key 'data.eval_batch_size': expected a positive value, got {data['eval_batch_size']!r}")


def build_model(cfg: dict) -> PatchSequenceClassifier:
    m = cfg["model"]
    return PatchSequenceClassifier(
        1,
        list(m["hidden_channels"]),
        m["kernel_size"],
        num_classes=NUM_CLASSES,
        patch_size=cfg["data"]["patch_size"],
        dropout=m["dropout"],
        head=m["head"],
        bidirectional=m["bidirectional"],
        peephole=m["peephole"],
    )


@torch.no_grad()
def predict_logits(model: nn.Module, patches: Tensor, batch_size: int, precision: str = "fp32") -> Tensor:
    """Logits ``(N, num_classes)`` float32 for patch sequences ``(N, T, C, p, p)``, in batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    precision = resolve_precision(device, precision)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    outs = []
    with ctx:
        for i in range(0, patches.shape[0], batch_size):
            outs.append(model(patches[i : i + batch_size].to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(outs)


class PatchClassifierTask:
    """Batches come from the train digits (optionally shifted), evaluation uses the test split."""

    best_metric = "accuracy"
    best_mode = "max"

    def __init__(self, cfg: dict) -> None:
        check_data_config(cfg["data"])
        self.cfg = cfg
        self.pool = PatchDigitPool(cfg["data"], int(cfg["seed"]))
        self._eval: tuple[Tensor, Tensor] | None = None
        self.image_paths: list[Path] = []

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def eval_set(self) -> tuple[Tensor, Tensor]:
        """Test patch sequences ``(N, 16, 1, 7, 7)`` and labels ``(N,)``."""
        if self._eval is None:
            self._eval = test_patch_set(self.cfg["data"])
        return self._eval

    def eval_description(self) -> dict:
        """What the evaluation (and metrics.json) is computed on: the test split's digits."""
        n, size = int(self.eval_set()[1].shape[0]), self.cfg["data"]["eval_size"]
        return {"split": "test", "digits": n,
                "what": "test split, all digits" if not size else f"test split, {n} evenly spaced digits (data.eval_size)"}

    def train_batch(self, step: int, rank: int, world: int) -> tuple[Tensor, Tensor]:
        return self.pool.batch(step, rank, world, self.cfg["train"]["batch_size"])

    def training_step(self, model: nn.Module, batch: tuple[Tensor, Tensor], step: int) -> tuple[Tensor, dict]:
        device = next(model.parameters()).device
        x, y = batch[0].to(device), batch[1].to(device)
        logits = model(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg["label_smoothing"])
        return loss, {"accuracy": float((logits.detach().argmax(1) == y).float().mean())}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, logger: TBLogger | None, step: int) -> dict:
        patches, labels = self.eval_set()
        logits = predict_logits(model, patches, self.cfg["data"]["eval_batch_size"], self.cfg["train"]["precision"])
        pred = logits.argmax(1)
        cm = confusion_matrix(pred, labels, NUM_CLASSES)
        result = classification_metrics(cm)
        result["loss"] = float(F.cross_entropy(logits, labels))
        if logger is not None and logger.enabled:
            self._log_pictures(logger, step, cm, patches, labels, pred)
            for k, r in enumerate(result["per_class_recall"]):
                logger.scalar(f"eval_per_class/recall_{k}", r, step)
        return result

    def _log_pictures(self, logger: TBLogger, step: int, cm: Tensor, patches: Tensor, labels: Tensor, pred: Tensor) -> None:
        cm_img = confusion_matrix_image(cm)
        logger.image("eval/confusion_matrix", cm_img, step, dataformats="HWC")
        paths = [save_png(logger.log_dir / "confusion_matrix.png", rearrange(torch.from_numpy(cm_img).float() / 255.0, "h w c -> c h w"))]
        wrong = torch.nonzero(pred != labels).flatten()[: self.cfg["log"]["misclassified"]]
        if len(wrong):
            digits = unpatchify(patches[wrong], DIGIT_SIZE, self.cfg["data"]["order"])  # (n, 1, 28, 28)
            captions = [f"{int(labels[i])}->{int(pred[i])}" for i in wrong]
            grid = digit_grid(captioned_tiles(digits, captions), cols=8)
            logger.image("eval/misclassified", grid, step)
            paths.append(save_png(logger.log_dir / "misclassified.png", grid))
        self.image_paths = paths



__all__ = ["DEFAULTS", "PatchClassifierTask", "build_model", "check_data_config", "predict_logits"]
