"""scripts/train_deepconvlstm.py end to end, the OPPORTUNITY paper config, and the sensor task's batches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convlstm_vp.data.opportunity import GESTURE_CLASSES, LOCOMOTION_CLASSES, OPPORTUNITY_SPLITS
from convlstm_vp.train.checkpoint import load_checkpoint
from convlstm_vp.train.cli import run_training
from convlstm_vp.train.config import merge
from convlstm_vp.train.tasks.sensors import DEFAULTS, SensorTask, build_model, evaluate_windows, load_splits

REPO = Path(__file__).resolve().parents[1]


def test_script_runs_end_to_end_on_the_tiny_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/train_deepconvlstm.py",
            "--config",
            "configs/deepconvlstm-tiny.yaml",
            "--run-dir",
            str(run_dir),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for key in ("accuracy=", "f1_macro=", "f1_weighted="):
        assert key in proc.stdout

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("accuracy", "f1_macro", "f1_weighted"):
        assert 0.0 <= metrics[key] <= 1.0

    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["step"] == 4
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    # metrics.json tests best.pt (chosen on validation) on the test split: re-evaluating it gives
    # the same numbers; the validation cases are training cases, none of them a test case
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    cfg = merge(DEFAULTS, best["config"])
    train, val, test = load_splits(cfg)
    assert len(train) == 32 and len(val) == 8 and len(test) == 40  # BasicMotions: 40 train cases, 20% held out
    assert sorted(val.labels.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    model = build_model(cfg, in_channels=6, num_classes=4)
    model.load_state_dict(best["model"])
    again = evaluate_windows(model, test)
    for key in ("accuracy", "f1_macro", "f1_weighted"):
        assert abs(again[key] - metrics[key]) < 1e-6
    assert metrics["evaluated_on"]["split"] == "test" and metrics["evaluated_on"]["checkpoint"] == "best.pt"
    assert metrics["evaluated_on"]["checkpoint_step"] == best["step"] == metrics["validation"]["best_step"]
    v = metrics["validation"]
    assert v["split"] == "validation" and v["windows"] == 8 and v["best_metric"] == "f1_weighted"
    assert abs(evaluate_windows(model, val)["f1_weighted"] - v["metrics"]["f1_weighted"]) < 1e-6

    events = list(run_dir.glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/accuracy", "val/f1_macro", "val/f1_weighted", "test/accuracy"} <= scalars
    assert "val/confusion_matrix" in acc.Tags()["images"] and "test/confusion_matrix" in acc.Tags()["images"]


def _write_recording(path: Path, rows: int, rng: np.random.Generator) -> None:
    """A ``.dat`` recording in the OPPORTUNITY layout: time, 242 sensor columns, 7 label tracks."""
    table = rng.normal(size=(rows, 250)).round(3)
    table[:, 0] = np.arange(rows) * 33
    table[:, 243] = rng.choice([code for code, _ in LOCOMOTION_CLASSES], size=rows)
    table[:, 244:249] = 0
    table[:, 249] = np.repeat(rng.choice([code for code, _ in GESTURE_CLASSES], size=rows // 8 + 1), 8)[:rows]
    path.write_text("\n".join(" ".join(f"{v:g}" for v in row) for row in table) + "\n")


def test_opportunity_paper_config_trains_on_files_in_the_uci_layout(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "OpportunityUCIDataset" / "dataset"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in OPPORTUNITY_SPLITS["train"] + OPPORTUNITY_SPLITS["test"]:
        _write_recording(folder / name, rows=40, rng=rng)
    run_dir = tmp_path / "run"
    overrides = {
        "data.root": str(tmp_path / "data"),
        "model.conv_filters": 4,
        "model.hidden_channels": 8,
        "train.steps": 2,
        "train.batch_size": 16,
        "train.eval_every": 2,
        "train.checkpoint_every": 2,
        "train.progress": "false",
    }
    argv = ["--config", str(REPO / "configs/deepconvlstm-opportunity.yaml"), "--run-dir", str(run_dir)]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={value}"]
    metrics = run_training(argv, "test", DEFAULTS, SensorTask)
    assert {"accuracy", "f1_macro", "f1_weighted"} <= set(metrics)

    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    cfg = ckpt["config"]
    # the paper's settings survive from the config file
    assert (cfg["data"]["window"], cfg["data"]["step"], cfg["train"]["optimizer"]) == (24, 12, "rmsprop")
    assert cfg["train"]["rmsprop_alpha"] == 0.9 and cfg["model"]["conv_mode"] == "per_channel"
    state = ckpt["model"]
    assert tuple(state["convs.0.weight"].shape) == (4, 1, 5, 1)  # every sensor its own column
    assert tuple(state["lstm.cells.0.weight_ih"].shape) == (32, 4 * 113)  # 113 body-worn channels
    assert tuple(state["classifier.weight"].shape) == (18, 8)  # Null + 17 gestures
    assert "square_avg" in next(iter(ckpt["optimizer"]["state"].values()))  # RMSprop's state


def test_sensor_batches_are_seeded_epochs_over_the_training_windows() -> None:
    cfg = merge(DEFAULTS, {"train": {"batch_size": 8}})
    task = SensorTask(cfg)
    n = len(task.train_set)
    batches = n // 8  # BasicMotions: 40 windows, 5 batches per epoch
    seen = [i for step in range(batches) for i in _indices(task, step)]
    assert sorted(seen) == list(range(n))  # one epoch visits every window once
    x, y = task.train_batch(3, 0, 1)
    assert x.shape == (8, 100, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(task.train_batch(3, 0, 1)[0], x)  # a pure function of the step
    # two ranks take different slices of the same global stream
    assert _indices(task, 1, rank=0, world=2) != _indices(task, 1, rank=1, world=2)
    assert _indices(task, 1, rank=1, world=2) == _indices(task, 3, rank=0, world=1)


def _indices(task: SensorTask, step: int, rank: int = 0, world: int = 1) -> list[int]:
    """Indices of the windows in a batch, recovered by matching against the training windows."""
    x, _ = task.train_batch(step, rank, world)
    flat = task.train_set.windows.flatten(1)
    return [int((flat == row).all(1).nonzero()[0]) for row in x.flatten(1)]
