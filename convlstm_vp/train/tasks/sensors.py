"""Activity recognition from sensor windows with DeepConvLSTM (BasicMotions or OPPORTUNITY).

The task hands :func:`convlstm_vp.train.fit` a :class:`~convlstm_vp.models.DeepConvLSTM`, training
batches of ``(B, T, C)`` windows and an evaluation on the test split that reports accuracy, macro
F1 and weighted F1 (defined in :mod:`convlstm_vp.train.metrics`) and logs the confusion matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import BasicMotions, Opportunity
from ...data.sensor_windows import WindowDataset
from ...models.deepconvlstm import DeepConvLSTM
from ..config import TRAIN_DEFAULTS, ConfigError
from ..metrics import classification_metrics, confusion_matrix
from ..tb import TBLogger, confusion_matrix_image

DATASETS = ("basicmotions", "opportunity")

DEFAULTS: dict[str, Any] = {
    "name": "deepconvlstm",
    "seed": 0,
    "model": {
        "conv_filters": 64,
        "conv_kernel": 5,
        "num_conv_layers": 4,
        "hidden_channels": 128,
        "lstm_layers": 2,
        "dropout": 0.5,
        "conv_mode": "mixed",  # mixed | per_channel
        "recurrent": "rank0",  # rank0 | rank1
        "recurrent_kernel": 3,
    },
    "data": {
        "dataset": "basicmotions",  # basicmotions | opportunity
        "root": None,  # null: aeon's copy of BasicMotions / "datasets" for OPPORTUNITY
        "task": "gestures",  # OPPORTUNITY: gestures | locomotion
        "window": 24,  # OPPORTUNITY window length (samples); BasicMotions cases are whole windows
        "step": 12,  # OPPORTUNITY window step
        "label_mode": "last",  # last | majority
        "eval_batch_size": 256,
    },
    "train": dict(TRAIN_DEFAULTS, optimizer="adam", schedule="constant", warmup_fraction=0.0, eval_every=100),
}


def load_splits(cfg: dict) -> tuple[WindowDataset, WindowDataset]:
    """Training and test windows; the test split is normalized with the training statistics."""
    d = cfg["data"]
    if d["dataset"] == "basicmotions":
        train = BasicMotions("train", root=d["root"])
        test = BasicMotions("test", root=d["root"], standardizer=train.standardizer)
    elif d["dataset"] == "opportunity":
        root = d["root"] if d["root"] is not None else "datasets"
        kw = {"task": d["task"], "window": d["window"], "step": d["step"], "label_mode": d["label_mode"]}
        train = Opportunity(root, "train", **kw)
        test = Opportunity(root, "test", standardizer=train.standardizer, **kw)
    else:
        raise ConfigError(f"config key 'data.dataset': expected one of {DATASETS}, got {d['dataset']!r}")
    return train, test


def build_model(cfg: dict, in_channels: int, num_classes: int) -> DeepConvLSTM:
    """``DeepConvLSTM(in_channels, num_classes, **cfg["model"])``."""
    return DeepConvLSTM(in_channels, num_classes, **cfg["model"])


class SensorTask:
    """DeepConvLSTM on sensor windows.

    Batch ``k`` is a pure function of ``(seed, k, rank)``: the training windows are read in
    epochs, each epoch a permutation drawn from a generator seeded with ``(seed, epoch)``, and
    global batch ``k * world + rank`` takes the next ``batch_size`` positions of that stream.
    """

    best_metric = "f1_weighted"
    best_mode = "max"

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.train_set, self.test_set = load_splits(cfg)
        self.classes = self.train_set.classes
        self.in_channels = int(self.train_set.windows.shape[-1])

    def build_model(self) -> nn.Module:
        return build_model(self.cfg, self.in_channels, len(self.classes))

    def train_batch(self, step: int, rank: int, world: int) -> tuple[Tensor, Tensor]:
        """Windows ``(B, T, C)`` float32 and labels ``(B,)`` int64 of global batch ``step * world + rank``."""
        n = len(self.train_set)
        b = self.cfg["train"]["batch_size"]
        start = (step * world + rank) * b
        positions = np.arange(start, start + b)
        epochs = positions // n
        index = np.empty(b, dtype=np.int64)
        for epoch in np.unique(epochs):
            perm = np.random.default_rng([int(self.cfg["seed"]), int(epoch)]).permutation(n)
            here = epochs == epoch
            index[here] = perm[positions[here] % n]
        idx = torch.from_numpy(index)
        return self.train_set.windows[idx], self.train_set.labels[idx]

    def training_step(self, model: nn.Module, batch: tuple[Tensor, Tensor], step: int) -> tuple[Tensor, dict]:
        device = next(model.parameters()).device
        x, y = batch[0].to(device), batch[1].to(device)
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        accuracy = float((logits.detach().argmax(1) == y).float().mean())
        return loss, {"accuracy": accuracy}

    @torch.no_grad()
    def eval_description(self) -> dict:
        """What the evaluation (and metrics.json) is computed on: every window of the test split."""
        n = len(self.test_set)
        return {"split": "test", "windows": n, "what": f"{self.cfg['data']['dataset']} test split, all {n} windows"}

    def evaluate(self, model: nn.Module, logger: TBLogger | None, step: int) -> dict:
        return evaluate_windows(model, self.test_set, self.cfg["data"]["eval_batch_size"], logger, step)


@torch.no_grad()
def evaluate_windows(
    model: nn.Module, dataset: WindowDataset, batch_size: int = 256, logger: TBLogger | None = None, step: int = 0
) -> dict:
    """Accuracy, macro / weighted F1, mean cross-entropy and per-class recall of ``model`` on ``dataset``.

    Logs the confusion matrix (rows = true class) as the image ``eval/confusion_matrix``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, total_loss = [], 0.0
    for i in range(0, len(dataset), batch_size):
        x = dataset.windows[i : i + batch_size].to(device)
        y = dataset.labels[i : i + batch_size].to(device)
        logits = model(x).float()
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        preds.append(logits.argmax(1).cpu())
    model.train(was_training)
    cm = confusion_matrix(torch.cat(preds), dataset.labels, len(dataset.classes))
    m = classification_metrics(cm)
    if logger is not None:
        logger.image("eval/confusion_matrix", confusion_matrix_image(cm, dataset.classes), step, dataformats="HWC")
    return {
        "accuracy": m["accuracy"],
        "f1_macro": m["f1_macro"],
        "f1_weighted": m["f1_weighted"],
        "loss": total_loss / max(len(dataset), 1),
        "per_class_recall": dict(zip(dataset.classes, m["per_class_recall"])),
    }

