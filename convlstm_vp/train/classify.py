"""Apply a trained classifier to new data: ``convlstm-vp classify`` (``scripts/classify.py``).

    convlstm-vp classify --checkpoint runs/jv/checkpoints/best.pt --data aeon:JapaneseVowels --output out/
    convlstm-vp classify --checkpoint runs/mine/checkpoints/best.pt --data new_cases.npz --output out/
    convlstm-vp classify --checkpoint runs/patch_classifier/checkpoints/best.pt --data digits.npz --output out/

A DeepConvLSTM checkpoint (``convlstm-vp train sensors``) reads the sources it trains on: an
``aeon:<Name>`` dataset (its test split), a ``.ts`` file, an ``.npz`` (``X`` ``(N, T, C)``,
optional ``y``, ``lengths``) or a folder of ``.csv`` recordings (windowed with the training
config's ``window``, ``step``, ``label_mode``); channels are z-scored with the training
statistics stored in the checkpoint. A patch-classifier checkpoint (``convlstm-vp train patches``)
reads an ``.npz`` whose ``X`` holds 28x28 digits ``(N, 28, 28)`` (uint8, or floats in [0, 1]) and
optionally ``y`` (0-9).

Writes into ``--output``: ``predictions.csv`` (``id``, ``predicted``, the true ``label`` when the
data has labels, then ``p_<class>``, the softmax probability of each class) and, when labels are
present, ``metrics.json`` (accuracy, macro / weighted F1, per-class recall) and
``confusion_matrix.png``. Exit status 2 with a one-line error for a bad checkpoint or data.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data.mnist_patches import patchify
from ..data.safe_io import read_npz
from ..data.sensor_windows import Standardizer
from ..data.series import read_source
from .checkpoint import CheckpointError, atomic_write_bytes, json_bytes, load_checkpoint
from .cli import check_output_folder, fail
from .config import ConfigError, merge


def _sensor_model(ck: dict) -> tuple[nn.Module, dict, tuple[str, ...], Standardizer | None]:
    from .tasks import sensors

    cfg = merge(sensors.DEFAULTS, ck["config"])
    state = ck.get("task_state")
    if state is None:  # a checkpoint from before task_state: the statistics come from the training data
        train = sensors.load_splits(cfg)[0]
        state = {
            "classes": list(train.classes),
            "in_channels": train.num_channels,
            "standardizer": train.standardizer.state_dict() if train.standardizer is not None else None,
        }  # type: ignore[attr-defined]
    model = sensors.build_model(cfg, int(state["in_channels"]), len(state["classes"]))
    model.load_state_dict(ck["model"])
    standardizer = Standardizer.from_state_dict(state["standardizer"]) if state["standardizer"] else None
    return model, cfg, tuple(state["classes"]), standardizer


def _sensor_inputs(spec: str, cfg: dict, classes: tuple[str, ...], standardizer: Standardizer | None, min_length: int):
    """Windows ``(N, T, C)``, lengths ``(N,)``, ids and label names (or ``None``) of ``spec``."""
    d = cfg["data"]
    raw = read_source(
        spec,
        "all",
        root=d["root"],
        label_column=d["label_column"],
        window=d["window"],
        step=d["step"],
        label_mode=d["label_mode"],
        classes=classes,
    )
    channels = standardizer.num_channels if standardizer is not None else raw.series[0].shape[1]
    series = []
    for name, s in zip(raw.ids, raw.series):
        if s.shape[1] != channels:
            raise ValueError(f"{raw.where}: {name} has {s.shape[1]} channels, the model was trained on {channels}")
        if len(s) < min_length:
            raise ValueError(
                f"{raw.where}: {name} has {len(s)} samples, the model reads series of at least {min_length}"
            )
        series.append(standardizer.transform(s) if standardizer is not None else s.astype(np.float32))
    lengths = torch.tensor([len(s) for s in series], dtype=torch.long)
    windows = torch.zeros(len(series), int(lengths.max()), channels)
    for i, s in enumerate(series):
        windows[i, : len(s)] = torch.from_numpy(np.asarray(s, np.float32))
    return windows, lengths, raw.ids, raw.labels


def _patch_inputs(spec: str, cfg: dict) -> tuple[Tensor, list[str], np.ndarray | None]:
    """Patch sequences ``(N, T, 1, p, p)``, ids and labels (or ``None``) of a digits ``.npz``."""
    path = Path(spec)
    if path.suffix != ".npz" or not path.is_file():
        raise FileNotFoundError(
            f"{spec}: a patch classifier reads an .npz file with 'X' (N, 28, 28) digits (and optionally 'y')"
        )
    data = read_npz(path)
    if "X" not in data:
        raise ValueError(f"{path}: expected an array 'X' of digits (N, 28, 28); found {sorted(data)}")
    X, y = data["X"], data.get("y")
    if X.ndim == 4 and X.shape[1] == 1:
        X = X[:, 0]
    if X.ndim != 3 or X.shape[1:] != (28, 28) or len(X) == 0:
        raise ValueError(f"{path}: 'X' must hold 28x28 digits (N, 28, 28) with N >= 1, got shape {X.shape}")
    if X.dtype == np.uint8:
        images = X.astype(np.float32) / 255.0
    elif X.dtype.kind == "f" and np.isfinite(X).all() and X.min() >= 0 and X.max() <= 1:
        images = X.astype(np.float32)
    else:
        raise ValueError(f"{path}: 'X' must be uint8 or floats in [0, 1], got {X.dtype} in [{X.min()}, {X.max()}]")
    if y is not None and (y.shape != (len(X),) or y.dtype.kind not in "iu" or y.min() < 0 or y.max() > 9):
        raise ValueError(f"{path}: 'y' must be (N,) = ({len(X)},) digits 0-9, got {y.dtype} {y.shape}")
    patches = patchify(torch.from_numpy(images).unsqueeze(1), cfg["data"]["patch_size"], cfg["data"]["order"])
    return patches, [f"X#{i}" for i in range(len(X))], (None if y is None else np.array([str(int(v)) for v in y]))


def match_classes(names: np.ndarray, classes: tuple[str, ...], spec: str) -> np.ndarray:
    """``names`` (the data's labels) as the model's ``classes``: equal, or equal but for case
    when that is unambiguous (the same dataset read from two sources: "Badminton" and
    "badminton"); a label that matches no class is a ValueError naming ``spec``."""
    known = set(classes)
    folded = {c.casefold(): c for c in classes}
    unique = len(folded) == len(classes)
    out = np.asarray([n if n in known or not unique else folded.get(str(n).casefold(), n) for n in names.tolist()])
    unknown = sorted(set(out.tolist()) - known)
    if unknown:
        raise ValueError(f"{spec}: labels {unknown[:5]} are not among the model's classes {list(classes)}")
    return out


def classify(checkpoint: str | Path, spec: str, output: str | Path, batch_size: int = 256) -> dict:
    """Predict every item of source ``spec`` with ``checkpoint``; write the files into ``output``
    (see the module docstring). Returns ``{"items", "predictions", "metrics" (or None)}``."""
    from .tasks.sensors import classification_report, min_series_length, predict_logits

    ck = load_checkpoint(checkpoint)
    cfg_model = ck.get("config", {}).get("model", {})
    if "conv_mode" in cfg_model:
        model, cfg, classes, standardizer = _sensor_model(ck)
        windows, lengths, ids, names = _sensor_inputs(spec, cfg, classes, standardizer, min_series_length(cfg["model"]))
        logits = predict_logits(model, windows, lengths if bool((lengths != lengths[0]).any()) else None, batch_size)
    elif "head" in cfg_model and "patch_size" in ck.get("config", {}).get("data", {}):
        from .tasks.patch_classifier import DEFAULTS, NUM_CLASSES, build_model
        from .tasks.patch_classifier import predict_logits as patch_logits

        cfg = merge(DEFAULTS, ck["config"])
        model = build_model(cfg)
        model.load_state_dict(ck["model"])
        classes = tuple(str(k) for k in range(NUM_CLASSES))
        patches, ids, names = _patch_inputs(spec, cfg)
        logits = patch_logits(model, patches, batch_size)
    else:
        raise CheckpointError(
            f"{checkpoint}: not a DeepConvLSTM (train sensors) or patch-classifier (train patches) checkpoint"
        )
    if names is not None:  # before anything is written
        names = match_classes(names, classes, spec)
    probs = torch.softmax(logits, 1)
    predicted = [classes[k] for k in logits.argmax(1).tolist()]
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "predicted"] + (["label"] if names is not None else []) + [f"p_{c}" for c in classes])
    for i, name in enumerate(ids):
        writer.writerow(
            [name, predicted[i]] + ([names[i]] if names is not None else []) + [f"{p:.6f}" for p in probs[i].tolist()]
        )
    atomic_write_bytes(out / "predictions.csv", buf.getvalue().encode())
    metrics = None
    if names is not None:
        lookup = {c: k for k, c in enumerate(classes)}
        labels = torch.tensor([lookup[str(v)] for v in names], dtype=torch.long)
        metrics = classification_report(logits, labels, classes, image_path=out / "confusion_matrix.png")
        metrics["evaluated_on"] = {
            "data": spec,
            "items": len(ids),
            "checkpoint": str(checkpoint),
            "checkpoint_step": ck.get("step"),
        }
        atomic_write_bytes(out / "metrics.json", json_bytes(metrics))
    return {"items": len(ids), "predictions": out / "predictions.csv", "metrics": metrics}


def main(argv=None, prog: str | None = None) -> dict:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a sensors or patches training run")
    p.add_argument("--data", required=True, help="aeon:<Name>, a .ts file, an .npz or a folder of .csv recordings")
    p.add_argument(
        "--output", required=True, help="folder for predictions.csv (and metrics.json, confusion_matrix.png)"
    )
    args = p.parse_args(argv)
    check_output_folder(args.output, "--output")
    try:
        result = classify(args.checkpoint, args.data, args.output)
    except (CheckpointError, ConfigError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or args.output}: {exc.strerror or exc}")
    print(f"wrote {result['predictions']} ({result['items']} items)")
    if result["metrics"] is not None:
        m = result["metrics"]
        print(f"accuracy={m['accuracy']:.4f}, f1_macro={m['f1_macro']:.4f}, f1_weighted={m['f1_weighted']:.4f}")
    return result


if __name__ == "__main__":
    main()
