"""Sequence classification with DeepConvLSTM: sensor windows, UEA/UCR datasets, the user's files.

The task hands :func:`convlstm_vp.train.fit` a :class:`~convlstm_vp.models.DeepConvLSTM`, training
batches of ``(B, T, C)`` windows (with their ``lengths`` when series differ in length), a
validation split held out of the training data (picks ``best.pt``) and a test split scored at the
end; each evaluation reports accuracy, macro F1 and weighted F1 (defined in
:mod:`convlstm_vp.train.metrics`) and logs the confusion matrix (the test one also as
``confusion_matrix.png`` in the run folder).

``data.dataset`` names the source: ``basicmotions``, ``opportunity``, ``daphnet``, or any source
of :mod:`convlstm_vp.data.series` (``aeon:<Name>``, a ``<Name>_TRAIN.ts`` file, an ``.npz``, a
folder of ``.csv`` recordings).

Validation: datasets of cases (BasicMotions, aeon, .ts, .npz) hold out a seeded, stratified
``data.val_fraction`` of their training cases. Windowed recordings hold out whole recordings,
because their windows overlap (``step`` < ``window``): windows drawn at random would put copies of
the training samples into the validation set. OPPORTUNITY holds out :data:`OPPORTUNITY_VAL_FILES`;
a csv folder a seeded ``data.val_fraction`` of its training recordings; Daphnet, one stream, the
last ``data.val_fraction`` of its training windows (and the windows overlapping them are dropped).
Channels are z-scored with the statistics of the training split before the hold-out (cases) or of
the remaining training recordings (windows); the statistics and the class names are stored in the
checkpoints (``task_state``), which ``convlstm-vp classify`` applies to new data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ...data import BasicMotions, Daphnet, Opportunity
from ...data.opportunity import OPPORTUNITY_SPLITS
from ...data.sensor_windows import Standardizer, WindowDataset
from ...data.series import LabelledSeries, SeriesDataset, class_order, read_source, source_kind
from ...data.splits import VAL_SPLIT_SEED, check_val_fraction, stratified_split
from ...models.deepconvlstm import DeepConvLSTM
from ..checkpoint import atomic_write_bytes
from ..config import TRAIN_DEFAULTS, ConfigError
from ..metrics import classification_metrics, confusion_matrix
from ..tb import TBLogger, confusion_matrix_image, png_bytes

DATASETS = (
    "basicmotions",
    "opportunity",
    "daphnet",
    "aeon:<Name>",
    "<Name>_TRAIN.ts",
    "<file>.npz",
    "<folder of .csv>",
)

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
        # basicmotions | opportunity | daphnet | aeon:<Name> | <Name>_TRAIN.ts | <file>.npz | <folder of .csv>
        "dataset": "basicmotions",
        # null: aeon's copy of BasicMotions / "datasets" for OPPORTUNITY and aeon downloads;
        # Daphnet: a CSV in its format (null: aeon's copy)
        "root": None,
        "task": "gestures",  # OPPORTUNITY: gestures | locomotion
        "window": 24,  # windowed recordings (OPPORTUNITY, Daphnet, csv): window length (samples)
        "step": 12,  # their window step
        "label_mode": "last",  # last | majority
        "label_column": "label",  # csv recordings: the column holding each sample's class
        # share of the training data held out for validation (best.pt, train.patience): of each
        # class's cases, or of the csv recordings; OPPORTUNITY validates on fixed recordings
        "val_fraction": 0.2,
        "eval_batch_size": 256,
    },
    "train": dict(TRAIN_DEFAULTS, optimizer="adam", schedule="constant", warmup_fraction=0.0, eval_every=100),
}


#: OPPORTUNITY recordings of the standard training list held out for validation: one ADL run of
#: each test subject (their ADL4-5 runs are the test set), so validation resembles the test.
OPPORTUNITY_VAL_FILES = ("S2-ADL3.dat", "S3-ADL3.dat")


def _subset(data: WindowDataset, index: np.ndarray) -> WindowDataset:
    if isinstance(data, SeriesDataset):
        return data.subset(index)
    return WindowDataset(data.windows[torch.from_numpy(index)], data.labels[torch.from_numpy(index)], data.classes)


def _series_dataset(raw: LabelledSeries, classes: tuple[str, ...], standardizer: Standardizer) -> SeriesDataset:
    if raw.labels is None:
        raise ConfigError(
            f"config key 'data.dataset': {raw.where} holds no class labels; training and testing need them"
        )
    unknown = sorted(set(raw.labels.tolist()) - set(classes))
    if unknown:
        raise ConfigError(
            f"config key 'data.dataset': {raw.where}: classes {unknown[:5]} do not occur in the training split {list(classes)}"
        )
    lookup = {c: i for i, c in enumerate(classes)}
    return SeriesDataset(
        [standardizer.transform(s) for s in raw.series],
        np.array([lookup[str(v)] for v in raw.labels]),
        classes,
        raw.ids,
    )


def _source_splits(d: dict) -> tuple[WindowDataset, WindowDataset, WindowDataset, Standardizer]:
    """A :mod:`convlstm_vp.data.series` source: training, validation, test, the statistics."""
    kw = {
        "root": d["root"],
        "label_column": d["label_column"],
        "window": d["window"],
        "step": d["step"],
        "label_mode": d["label_mode"],
    }
    try:
        full = read_source(d["dataset"], "train", **kw)
        if full.labels is None:
            raise ValueError(f"{full.where} holds no class labels; training needs them")
        classes = class_order(full.labels)
        test = read_source(d["dataset"], "test", classes=classes, **kw)
    except ValueError as exc:
        raise ConfigError(f"config key 'data.dataset': {exc}") from None
    if full.groups is None:  # cases: a stratified share of each class
        lookup = {c: i for i, c in enumerate(classes)}
        fit, held = stratified_split(np.array([lookup[v] for v in full.labels]), d["val_fraction"], VAL_SPLIT_SEED)
        standardizer = Standardizer().fit(full.series)
    else:  # windows of recordings: whole recordings
        recordings = np.unique(full.groups)
        if len(recordings) < 2:
            raise ConfigError(
                f"config key 'data.dataset': {full.where} holds one training recording; validation "
                f"holds out whole recordings, so it needs at least two"
            )
        k = min(max(int(round(d["val_fraction"] * len(recordings))), 1), len(recordings) - 1)
        val_recordings = np.random.default_rng(VAL_SPLIT_SEED).choice(recordings, size=k, replace=False)
        held = np.flatnonzero(np.isin(full.groups, val_recordings))
        fit = np.flatnonzero(~np.isin(full.groups, val_recordings))
        standardizer = Standardizer().fit([full.recordings[g] for g in recordings if g not in val_recordings])  # type: ignore[index]
    return (
        _series_dataset(full.subset(fit), classes, standardizer),
        _series_dataset(full.subset(held), classes, standardizer),
        _series_dataset(test, classes, standardizer),
        standardizer,
    )


def _daphnet_splits(d: dict) -> tuple[WindowDataset, WindowDataset, WindowDataset, Standardizer]:
    kw = {"window": d["window"], "step": d["step"], "label_mode": d["label_mode"], "csv_path": d["root"]}
    full = Daphnet("train", **kw)
    test = Daphnet("test", standardizer=full.standardizer, **kw)
    n = len(full)
    k = min(max(int(round(d["val_fraction"] * n)), 1), n - 1)
    # windows k steps apart overlap when k * step < window: drop the training windows that would
    # share samples with the first validation window
    overlap = -(-d["window"] // d["step"]) - 1
    fit = np.arange(max(n - k - overlap, 0))
    return _subset(full, fit), _subset(full, np.arange(n - k, n)), test, full.standardizer


def load_splits(cfg: dict) -> tuple[WindowDataset, WindowDataset, WindowDataset]:
    """Training, validation and test windows, all normalized with the training statistics (see
    the module docstring for how validation is held out); ``train.standardizer`` holds them."""
    d = cfg["data"]
    try:
        check_val_fraction(d["val_fraction"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if d["dataset"] == "basicmotions":
        full = BasicMotions("train", root=d["root"])
        test = BasicMotions("test", root=d["root"], standardizer=full.standardizer)
        fit, held_out = stratified_split(full.labels.numpy(), d["val_fraction"], VAL_SPLIT_SEED)
        train, val, standardizer = _subset(full, fit), _subset(full, held_out), full.standardizer
    elif d["dataset"] == "opportunity":
        root = d["root"] if d["root"] is not None else "datasets"
        kw = {"task": d["task"], "window": d["window"], "step": d["step"], "label_mode": d["label_mode"]}
        fit_files = [f for f in OPPORTUNITY_SPLITS["train"] if f not in OPPORTUNITY_VAL_FILES]
        train = Opportunity(root, "train", files=fit_files, **kw)
        val = Opportunity(root, "train", files=list(OPPORTUNITY_VAL_FILES), standardizer=train.standardizer, **kw)
        test = Opportunity(root, "test", standardizer=train.standardizer, **kw)
        standardizer = train.standardizer
    elif d["dataset"] == "daphnet":
        train, val, test, standardizer = _daphnet_splits(d)
    else:
        try:
            source_kind(d["dataset"])
        except ValueError as exc:
            raise ConfigError(f"config key 'data.dataset': expected one of {DATASETS}; {exc}") from None
        train, val, test, standardizer = _source_splits(d)
    train.standardizer = standardizer
    return train, val, test


def build_model(cfg: dict, in_channels: int, num_classes: int) -> DeepConvLSTM:
    """``DeepConvLSTM(in_channels, num_classes, **cfg["model"])``."""
    return DeepConvLSTM(in_channels, num_classes, **cfg["model"])


def min_series_length(model_cfg: dict) -> int:
    """The shortest series the configured model reads (its valid convolutions need that many)."""
    return model_cfg["num_conv_layers"] * (model_cfg["conv_kernel"] - 1) + 1


def lengths_of(dataset: WindowDataset) -> Tensor:
    """``(N,)`` real length of every item (a :class:`SeriesDataset` knows them; windows are full)."""
    lengths = getattr(dataset, "lengths", None)
    return lengths if lengths is not None else torch.full((len(dataset),), dataset.window_length, dtype=torch.long)


def check_lengths(dataset: WindowDataset, model_cfg: dict, what: str) -> None:
    """ConfigError naming the shortest item when a series is shorter than the model reads."""
    need, lengths = min_series_length(model_cfg), lengths_of(dataset)
    if len(dataset) and int(lengths.min()) < need:
        i = int(lengths.argmin())
        name = dataset.ids[i] if hasattr(dataset, "ids") else f"item {i}"
        raise ConfigError(
            f"config keys 'model.num_conv_layers', 'model.conv_kernel': {what} {name} has {int(lengths[i])} samples, the "
            f"model's valid convolutions need at least num_conv_layers * (conv_kernel - 1) + 1 = {need}; lower them"
        )


class SensorTask:
    """DeepConvLSTM on sensor windows or whole series.

    Batch ``k`` is a pure function of ``(seed, k, rank)``: the training windows are read in
    epochs, each epoch a permutation drawn from a generator seeded with ``(seed, epoch)``, and
    global batch ``k * world + rank`` takes the next ``batch_size`` positions of that stream.
    Series of different lengths come as ``(windows, labels, lengths)``, cut to the batch's
    longest series.
    """

    best_metric = "f1_weighted"
    best_mode = "max"
    tie_break = ("loss", "min")  # validation sets of a few cases reach F1 1.0 early; the loss still improves

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.train_set, self.val_set, self.test_set = load_splits(cfg)
        self.standardizer: Standardizer = self.train_set.standardizer  # type: ignore[attr-defined]
        self.classes = self.train_set.classes
        self.in_channels = int(self.train_set.windows.shape[-1])
        present = torch.unique(self.train_set.labels).tolist()
        if len(present) < 2:
            only = self.classes[present[0]] if present else "none"
            raise ConfigError(
                f"config key 'data.dataset': the training split of {cfg['data']['dataset']} holds a single class "
                f"({only!r}, {len(self.train_set)} windows); a classifier needs at least two classes to learn"
            )
        for what, data in (("training", self.train_set), ("validation", self.val_set), ("test", self.test_set)):
            check_lengths(data, cfg["model"], what)
        self.variable = any(getattr(s, "variable_length", False) for s in (self.train_set, self.val_set, self.test_set))

    def build_model(self) -> nn.Module:
        return build_model(self.cfg, self.in_channels, len(self.classes))

    def checkpoint_state(self) -> dict:
        """What applying the model to new data needs: class names and the z-score statistics."""
        return {
            "kind": "sensors",
            "classes": list(self.classes),
            "in_channels": self.in_channels,
            "standardizer": self.standardizer.state_dict() if self.standardizer is not None else None,
        }

    def train_batch(self, step: int, rank: int, world: int) -> tuple[Tensor, ...]:
        """Windows ``(B, T, C)`` float32 and labels ``(B,)`` int64 of global batch ``step * world + rank``
        (and ``lengths`` ``(B,)`` when the series differ in length)."""
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
        if not self.variable:
            return self.train_set.windows[idx], self.train_set.labels[idx]
        lengths = self.train_set.lengths[idx]  # type: ignore[attr-defined]
        return self.train_set.windows[idx, : int(lengths.max())], self.train_set.labels[idx], lengths

    def training_step(self, model: nn.Module, batch: tuple[Tensor, ...], step: int) -> tuple[Tensor, dict]:
        device = next(model.parameters()).device
        x, y = batch[0].to(device), batch[1].to(device)
        logits = model(x) if len(batch) == 2 else model(x, lengths=batch[2])
        loss = F.cross_entropy(logits.float(), y)
        accuracy = float((logits.detach().argmax(1) == y).float().mean())
        return loss, {"accuracy": accuracy}

    def val_description(self) -> dict:
        d, n = self.cfg["data"], len(self.val_set)
        if d["dataset"] == "opportunity":
            what = (
                f"opportunity recordings {', '.join(OPPORTUNITY_VAL_FILES)} held out of the training list, {n} windows"
            )
        elif d["dataset"] == "daphnet":
            what = f"daphnet: the last {n} windows of the training part ({d['val_fraction']:g}), none overlapping a training window"
        elif d["dataset"] != "basicmotions" and source_kind(d["dataset"]) == "csv":  # ids are "<file>@<start>"
            files = sorted({i.split("@")[0] for i in self.val_set.ids})  # type: ignore[attr-defined]
            what = f"{d['dataset']}: training recordings {', '.join(files)} held out, {n} windows"
        else:
            what = f"{d['dataset']} training split, {n} cases held out ({d['val_fraction']:g} of each class, seeded)"
        return {"split": "validation", "windows": n, "what": what}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, logger: TBLogger | None, step: int) -> dict:
        """Metrics on the validation windows (confusion matrix to TensorBoard ``val/``)."""
        return evaluate_windows(model, self.val_set, self.cfg["data"]["eval_batch_size"], logger, step, "val")

    @torch.no_grad()
    def test(self, model: nn.Module, logger: TBLogger | None, step: int, run_dir) -> dict:
        """Metrics on every window of the test split (confusion matrix to TensorBoard ``test/``
        and to ``confusion_matrix.png`` in ``run_dir``)."""
        result = evaluate_windows(
            model,
            self.test_set,
            self.cfg["data"]["eval_batch_size"],
            logger,
            step,
            "test",
            image_path=Path(run_dir) / "confusion_matrix.png",
        )
        n = len(self.test_set)
        result["evaluated_on"] = {
            "split": "test",
            "windows": n,
            "what": f"{self.cfg['data']['dataset']} test split, all {n} windows",
        }
        return result


@torch.no_grad()
def predict_logits(model: nn.Module, windows: Tensor, lengths: Tensor | None = None, batch_size: int = 256) -> Tensor:
    """Logits ``(N, num_classes)`` float32 (on the CPU) of windows ``(N, T, C)`` in batches, in eval
    mode (the model's mode is restored); ``lengths`` ``(N,)`` for zero-padded series."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(windows), batch_size):
        x = windows[i : i + batch_size]
        if lengths is None:
            out.append(model(x.to(device)).float().cpu())
        else:
            n = lengths[i : i + batch_size]
            out.append(model(x[:, : int(n.max())].to(device), lengths=n).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def classification_report(
    logits: Tensor,
    labels: Tensor,
    classes: tuple[str, ...],
    logger: TBLogger | None = None,
    step: int = 0,
    split: str = "eval",
    image_path: Path | None = None,
) -> dict:
    """Accuracy, macro / weighted F1, mean cross-entropy and per-class recall (keyed by class
    name) of ``logits`` ``(N, K)`` against ``labels`` ``(N,)``; the confusion matrix (rows = true
    class) goes to TensorBoard as ``<split>/confusion_matrix`` (with the recalls as
    ``<split>_per_class/recall_<name>``) and, with ``image_path``, to a PNG."""
    cm = confusion_matrix(logits.argmax(1), labels, len(classes))
    m = classification_metrics(cm)
    if logger is not None or image_path is not None:
        img = confusion_matrix_image(cm, classes)
        if logger is not None:
            logger.image(f"{split}/confusion_matrix", img, step, dataformats="HWC")
            for name, recall in zip(classes, m["per_class_recall"]):  # tagged with the class names
                logger.scalar(f"{split}_per_class/recall_{name}", recall, step)
        if image_path is not None:
            atomic_write_bytes(image_path, png_bytes(rearrange(img, "h w c -> c h w")))
    return {
        "accuracy": m["accuracy"],
        "f1_macro": m["f1_macro"],
        "f1_weighted": m["f1_weighted"],
        "loss": float(F.cross_entropy(logits, labels, reduction="sum")) / max(len(labels), 1),
        "per_class_recall": dict(zip(classes, m["per_class_recall"])),
    }


@torch.no_grad()
def evaluate_windows(
    model: nn.Module,
    dataset: WindowDataset,
    batch_size: int = 256,
    logger: TBLogger | None = None,
    step: int = 0,
    split: str = "eval",
    image_path: Path | None = None,
) -> dict:
    """:func:`classification_report` of ``model`` on every item of ``dataset``."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is not None and not dataset.variable_length:  # type: ignore[attr-defined]
        lengths = None
    logits = predict_logits(model, dataset.windows, lengths, batch_size)
    return classification_report(logits, dataset.labels, dataset.classes, logger, step, split, image_path)
