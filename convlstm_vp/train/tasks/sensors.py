"""Activity recognition from sensor windows with DeepConvLSTM (BasicMotions or OPPORTUNITY).

The task hands :func:`convlstm_vp.train.fit` a :class:`~convlstm_vp.models.DeepConvLSTM`, training
batches of ``(B, T, C)`` windows, a validation split held out of the training data (picks
``best.pt``) and a test split scored at the end; each evaluation reports accuracy, macro F1 and
weighted F1 (defined in :mod:`convlstm_vp.train.metrics`) and logs the confusion matrix.

Validation: BasicMotions holds out a seeded, stratified ``data.val_fraction`` of its training
cases. OPPORTUNITY holds out whole recordings (:data:`OPPORTUNITY_VAL_FILES`), because its
windows overlap (``step`` < ``window``): windows drawn at random would put copies of the
training samples into the validation set. Channels are z-scored with the statistics of the
training split before the hold-out (BasicMotions) or of the remaining training recordings
(OPPORTUNITY).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import BasicMotions, Opportunity
from ...data.opportunity import OPPORTUNITY_SPLITS
from ...data.sensor_windows import WindowDataset
from ...data.splits import VAL_SPLIT_SEED, check_val_fraction, stratified_split
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
        # BasicMotions: share of each class of the training cases held out for validation
        # (best.pt, train.patience); OPPORTUNITY validates on whole recordings instead
        "val_fraction": 0.2,
        "eval_batch_size": 256,
    },
    "train": dict(TRAIN_DEFAULTS, optimizer="adam", schedule="constant", warmup_fraction=0.0, eval_every=100),
}


#: OPPORTUNITY recordings of the standard training list held out for validation: one ADL run of
#: each test subject (their ADL4-5 runs are the test set), so validation resembles the test.
OPPORTUNITY_VAL_FILES = ("S2-ADL3.dat", "S3-ADL3.dat")


def _subset(data: WindowDataset, index: np.ndarray) -> WindowDataset:
    return WindowDataset(data.windows[torch.from_numpy(index)], data.labels[torch.from_numpy(index)], data.classes)


def load_splits(cfg: dict) -> tuple[WindowDataset, WindowDataset, WindowDataset]:
    """Training, validation and test windows, all normalized with the training statistics (see
    the module docstring for how validation is held out)."""
    d = cfg["data"]
    try:
        check_val_fraction(d["val_fraction"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if d["dataset"] == "basicmotions":
        full = BasicMotions("train", root=d["root"])
        test = BasicMotions("test", root=d["root"], standardizer=full.standardizer)
        fit, held_out = stratified_split(full.labels.numpy(), d["val_fraction"], VAL_SPLIT_SEED)
        train, val = _subset(full, fit), _subset(full, held_out)
    elif d["dataset"] == "opportunity":
        root = d["root"] if d["root"] is not None else "datasets"
        kw = {"task": d["task"], "window": d["window"], "step": d["step"], "label_mode": d["label_mode"]}
        fit_files = [f for f in OPPORTUNITY_SPLITS["train"] if f not in OPPORTUNITY_VAL_FILES]
        train = Opportunity(root, "train", files=fit_files, **kw)
        val = Opportunity(root, "train", files=list(OPPORTUNITY_VAL_FILES), standardizer=train.standardizer, **kw)
        test = Opportunity(root, "test", standardizer=train.standardizer, **kw)
    else:
        raise ConfigError(f"config key 'data.dataset': expected one of {DATASETS}, got {d['dataset']!r}")
    return train, val, test


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
    # validation accuracy/F1 saturate on a small validation set (BasicMotions: 8 cases); among
    # equal scores the lower validation cross-entropy picks best.pt
    tie_metric = "loss"

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.train_set, self.val_set, self.test_set = load_splits(cfg)
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

    def val_description(self) -> dict:
        d, n = self.cfg["data"], len(self.val_set)
        if d["dataset"] == "opportunity":
            what = f"opportunity recordings {', '.join(OPPORTUNITY_VAL_FILES)} held out of the training list, {n} windows"
        else:
            what = f"{d['dataset']} training split, {n} cases held out ({d['val_fraction']:g} of each class, seeded)"
        return {"split": "validation", "windows": n, "what": what}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, logger: TBLogger | None, step: int) -> dict:
        """Metrics on the validation windows (confusion matrix to TensorBoard ``val/``)."""
        return evaluate_windows(model, self.val_set, self.cfg["data"]["eval_batch_size"], logger, step, "val")

    @torch.no_grad()
    def test(self, model: nn.Module, logger: TBLogger | None, step: int, run_dir) -> dict:
        """Metrics on every window of the test split (confusion matrix to TensorBoard ``test/``)."""
        result = evaluate_windows(model, self.test_set, self.cfg["data"]["eval_batch_size"], logger, step, "test")
        n = len(self.test_set)
        result["evaluated_on"] = {"split": "test", "windows": n, "what": f"{self.cfg['data']['dataset']} test split, all {n} windows"}
        return result


@torch.no_grad()
def evaluate_windows(
    model: nn.Module, dataset: WindowDataset, batch_size: int = 256, logger: TBLogger | None = None, step: int = 0,
    split: str = "eval",
) -> dict:
    """Accuracy, macro / weighted F1, mean cross-entropy and per-class recall of ``model`` on ``dataset``.

    Logs the confusion matrix (rows = true class) as the image ``<split>/confusion_matrix``.
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
        logger.image(f"{split}/confusion_matrix", confusion_matrix_image(cm, dataset.classes), step, dataformats="HWC")
    return {
        "accuracy": m["accuracy"],
        "f1_macro": m["f1_macro"],
        "f1_weighted": m["f1_weighted"],
        "loss": total_loss / max(len(dataset), 1),
        "per_class_recall": dict(zip(dataset.classes, m["per_class_recall"])),
    }

