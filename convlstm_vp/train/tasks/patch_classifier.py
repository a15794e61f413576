"""Digit classification from sequences of 7x7 patches with :class:`PatchSequenceClassifier`.

Evaluation, on the validation digits during training (held out of the train digits, see
:class:`~.patch_data.PatchDigitPool`) and on the test split (or ``data.test_size`` of its digits)
at the end: ``accuracy``, ``per_class_recall`` (a list of 10), ``f1_macro``, ``f1_weighted``
(see :mod:`convlstm_vp.train.metrics`) and the mean cross-entropy ``loss``. TensorBoard gets
those as scalars plus the confusion matrix and a grid of misclassified digits reassembled from
their patches (captioned ``true->predicted``), under ``val/`` and ``test/``; the test pictures
are also written as PNGs to the run folder (``confusion_matrix.png``, ``misclassified.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ...data import unpatchify
from ...data.splits import check_val_fraction
from ...models.patch_classifier import PatchSequenceClassifier
from ..config import TRAIN_DEFAULTS, ConfigError
from ..metrics import classification_metrics, confusion_matrix
from ..precision import eval_autocast, resolve_precision
from ..tb import TBLogger, confusion_matrix_image
from .digit_images import captioned_tiles, digit_grid, save_png
from .patch_data import DATA_DEFAULTS, PatchDigitPool, describe_test_set, load_test_patches

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
    "log": {"misclassified": 32},  # misclassified digits shown per evaluation
    "train": dict(TRAIN_DEFAULTS, batch_size=64, lr=3e-3, precision="auto", eval_every=500),
}


def check_data_config(data: dict) -> None:
    """Fail fast, naming the key, on data settings the patch tasks cannot use."""
    for key, choices in (("order", ("raster", "snake")), ("source", ("auto", "mnist", "embedded"))):
        if data[key] not in choices:
            raise ConfigError(f"config key 'data.{key}': expected one of {choices}, got {data[key]!r}")
    if data["patch_size"] < 1 or DIGIT_SIZE % data["patch_size"]:
        raise ConfigError(f"config key 'data.patch_size': must divide {DIGIT_SIZE}, got {data['patch_size']!r}")
    for key in ("max_shift", "max_rotation", "max_scale", "train_size", "test_size"):
        if data[key] < 0:
            raise ConfigError(f"config key 'data.{key}': expected a value >= 0, got {data[key]!r}")
    try:
        check_val_fraction(data["val_fraction"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if data["max_scale"] >= 1:
        raise ConfigError(f"config key 'data.max_scale': expected a value below 1, got {data['max_scale']!r}")
    if data["eval_batch_size"] < 1:
        raise ConfigError(
            f"config key 'data.eval_batch_size': expected a positive value, got {data['eval_batch_size']!r}"
        )


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
    ctx = eval_autocast(device, precision)
    outs = []
    with ctx:
        for i in range(0, patches.shape[0], batch_size):
            outs.append(model(patches[i : i + batch_size].to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(outs)


class PatchClassifierTask:
    """Batches come from the train digits (optionally shifted, validation digits held out);
    validation picks best.pt, the test split is scored at the end."""

    best_metric = "accuracy"
    best_mode = "max"
    # validation accuracy/F1 saturate on a small validation set (BasicMotions: 8 cases); among
    # equal scores the lower validation cross-entropy picks best.pt
    tie_break = ("loss", "min")

    def __init__(self, cfg: dict) -> None:
        check_data_config(cfg["data"])
        self.cfg = cfg
        self.pool = PatchDigitPool(cfg["data"], int(cfg["seed"]))
        self._val: tuple[Tensor, Tensor] | None = None
        self.image_paths: list[Path] = []

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def val_set(self) -> tuple[Tensor, Tensor]:
        """Validation patch sequences ``(N, 16, 1, 7, 7)`` and labels ``(N,)``."""
        if self._val is None:
            self._val = self.pool.val_set()
        return self._val

    def val_description(self) -> dict:
        return self.pool.val_description()

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
        """Metrics on the validation digits; TensorBoard gets their pictures under ``val/``."""
        return self._score(model, *self.val_set(), logger, step, "val")

    @torch.no_grad()
    def test(self, model: nn.Module, logger: TBLogger | None, step: int, run_dir: Path) -> dict:
        """Metrics on the test digits; their pictures go to TensorBoard (``test/``) and to
        ``confusion_matrix.png`` and ``misclassified.png`` in ``run_dir``."""
        patches, labels = load_test_patches(self.cfg["data"])
        result = self._score(model, patches, labels, logger, step, "test", run_dir)
        result["evaluated_on"] = describe_test_set(self.cfg["data"], int(labels.shape[0]))
        return result

    def _score(
        self,
        model: nn.Module,
        patches: Tensor,
        labels: Tensor,
        logger: TBLogger | None,
        step: int,
        split: str,
        run_dir: Path | None = None,
    ) -> dict:
        logits = predict_logits(model, patches, self.cfg["data"]["eval_batch_size"], self.cfg["train"]["precision"])
        pred = logits.argmax(1)
        cm = confusion_matrix(pred, labels, NUM_CLASSES)
        result = classification_metrics(cm)
        result["loss"] = float(F.cross_entropy(logits, labels))
        if logger is not None and logger.enabled:
            self._pictures(logger, step, split, cm, patches, labels, pred, run_dir)
            for k, r in enumerate(result["per_class_recall"]):
                logger.scalar(f"{split}_per_class/recall_{k}", r, step)
        return result

    def _pictures(
        self,
        logger: TBLogger,
        step: int,
        split: str,
        cm: Tensor,
        patches: Tensor,
        labels: Tensor,
        pred: Tensor,
        run_dir: Path | None,
    ) -> None:
        """Confusion matrix and misclassified digits to TensorBoard under ``split/``; also as PNGs
        into ``run_dir`` when given."""
        cm_img = confusion_matrix_image(cm)
        logger.image(f"{split}/confusion_matrix", cm_img, step, dataformats="HWC")
        pictures = {"confusion_matrix.png": rearrange(torch.from_numpy(cm_img).float() / 255.0, "h w c -> c h w")}
        wrong = torch.nonzero(pred != labels).flatten()[: self.cfg["log"]["misclassified"]]
        if len(wrong):
            digits = unpatchify(patches[wrong], DIGIT_SIZE, self.cfg["data"]["order"])  # (n, 1, 28, 28)
            captions = [f"{int(labels[i])}->{int(pred[i])}" for i in wrong]
            grid = digit_grid(captioned_tiles(digits, captions), cols=8)
            logger.image(f"{split}/misclassified", grid, step)
            pictures["misclassified.png"] = grid
        if run_dir is not None:
            self.image_paths = [save_png(Path(run_dir) / name, picture) for name, picture in pictures.items()]


__all__ = ["DEFAULTS", "PatchClassifierTask", "build_model", "check_data_config", "predict_logits"]
