"""Sequence classification on the user's own data (.ts, .npz, .csv folders, aeon names),
variable-length series, and ``convlstm-vp classify``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convlstm_vp import DeepConvLSTM
from convlstm_vp.data.series import TEST_FRACTION, class_order, read_source, read_ts
from convlstm_vp.train.checkpoint import load_checkpoint, save_checkpoint
from convlstm_vp.train.classify import classify
from convlstm_vp.train.cli import run_training
from convlstm_vp.train.config import ConfigError, merge
from convlstm_vp.train.tasks.sensors import DEFAULTS, SensorTask
from convlstm_vp.train.tb import confusion_matrix_image

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("left turn", "right turn", "stop")  # names with spaces: they must survive as they are


def _series(rng: np.random.Generator, label: int, length: int) -> np.ndarray:
    """(length, 2): class k is a sine of frequency k + 1 in channel 0, a ramp in channel 1."""
    t = np.linspace(0, 1, length)
    return np.stack([np.sin(2 * np.pi * (label + 1) * t), (label - 1) * t], 1) + 0.05 * rng.standard_normal((length, 2))


def write_ts(path: Path, cases: list[np.ndarray], labels: list[str] | None) -> None:
    lines = [
        "# written by the tests",
        f"@problemName {path.stem}",
        "@timeStamps false",
        "@missing false",
        "@univariate false",
        f"@dimensions {cases[0].shape[1]}",
        "@equalLength false",
        "@classLabel "
        + ("true " + " ".join(sorted({label.replace(" ", "_") for label in labels})) if labels else "false"),
        "@data",
    ]
    for i, case in enumerate(cases):
        dims = ":".join(",".join(f"{v:.5f}" for v in case[:, c]) for c in range(case.shape[1]))
        lines.append(dims + (f":{labels[i].replace(' ', '_')}" if labels else ""))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def ts_pair(tmp_path_factory) -> Path:
    """A variable-length .ts pair (lengths 20-40), 3 classes, 24 train / 12 test cases."""
    folder = tmp_path_factory.mktemp("ts")
    rng = np.random.default_rng(0)
    for split, n in (("TRAIN", 24), ("TEST", 12)):
        labels = [CLASSES[i % 3] for i in range(n)]
        cases = [_series(rng, i % 3, int(rng.integers(20, 41))) for i in range(n)]
        write_ts(folder / f"Turns_{split}.ts", cases, labels)
    return folder / "Turns_TRAIN.ts"


def tiny(dataset: str, **data) -> dict:
    cfg = merge(
        DEFAULTS,
        {
            "model": {"conv_filters": 8, "conv_kernel": 3, "num_conv_layers": 2, "hidden_channels": 16, "dropout": 0.0},
            "data": {"dataset": dataset, **data},
            "train": {
                "steps": 30,
                "batch_size": 8,
                "lr": 0.01,
                "eval_every": 10,
                "checkpoint_every": 10,
                "log_every": 10,
                "progress": False,
                "num_threads": 1,
            },
        },
    )
    return cfg


def test_padded_batch_gives_the_logits_of_each_series_alone() -> None:
    torch.manual_seed(0)
    lengths = [9, 23, 12, 17]
    x = torch.zeros(4, 23, 3)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, 3)
    x_junk = x.clone()
    for i, n in enumerate(lengths):
        x_junk[i, n:] = 1e3  # what lies past a series' end must not matter
    for recurrent in ("rank0", "rank1"):
        for conv_mode in ("mixed", "per_channel"):
            model = DeepConvLSTM(
                3,
                5,
                conv_filters=8,
                conv_kernel=3,
                num_conv_layers=2,
                hidden_channels=16,
                recurrent=recurrent,
                conv_mode=conv_mode,
            ).eval()
            batch = model(x_junk, lengths=torch.tensor(lengths))
            alone = torch.stack([model(x[i : i + 1, :n])[0] for i, n in enumerate(lengths)])
            torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
            # without lengths the padding is read as data: the logits differ
            assert not torch.allclose(model(x_junk), alone, atol=1e-3)
    with pytest.raises(ValueError, match=r"lengths: expected one length per series in \[5, T=23\]"):
        model(x, lengths=torch.tensor([4, 23, 12, 17]))


def test_ts_pair_trains_with_variable_lengths_and_classify_reproduces_the_test(ts_pair: Path, tmp_path: Path) -> None:
    cfg = tiny(str(ts_pair))
    task = SensorTask(cfg)
    assert task.classes == ("left_turn", "right_turn", "stop")
    assert task.variable and len(task.train_set) + len(task.val_set) == 24 and len(task.test_set) == 12
    x, y, lengths = task.train_batch(0, 0, 1)
    assert x.shape[1] == int(lengths.max()) and x.shape[0] == 8  # cut to the batch's longest series
    for i in range(8):  # zero padding after each series' end
        assert float(x[i, int(lengths[i]) :].abs().sum()) == 0.0

    run = tmp_path / "run"
    argv = ["--run-dir", str(run)] + [
        f"--set={k}"
        for k in (
            f"data.dataset={ts_pair}",
            "model.conv_filters=8",
            "model.conv_kernel=3",
            "model.num_conv_layers=2",
            "model.hidden_channels=16",
            "model.dropout=0.0",
            "train.steps=30",
            "train.batch_size=8",
            "train.lr=0.01",
            "train.eval_every=10",
            "train.checkpoint_every=10",
            "train.progress=false",
            "train.num_threads=1",
        )
    ]
    metrics = run_training(argv, "test", DEFAULTS, SensorTask)
    saved = json.loads((run / "metrics.json").read_text())
    assert set(saved["per_class_recall"]) == {"left_turn", "right_turn", "stop"}  # names, not indices
    assert saved["accuracy"] > 0.6  # three easy classes after 30 steps; chance is 1/3
    png = run / "confusion_matrix.png"
    assert png.is_file() and png.stat().st_size > 1000
    tags = EventAccumulator(str(run)).Reload().Tags()["images"]
    assert "test/confusion_matrix" in tags and "val/confusion_matrix" in tags
    scalars = EventAccumulator(str(run)).Reload().Tags()["scalars"]
    assert {"test_per_class/recall_left_turn", "val_per_class/recall_stop"} <= set(scalars)

    ck = load_checkpoint(run / "checkpoints" / "best.pt")
    state = ck["task_state"]
    assert state["classes"] == ["left_turn", "right_turn", "stop"] and len(state["standardizer"]["mean"]) == 2

    # classify the test file with best.pt: the same numbers as the run's test, and one row per case
    out = tmp_path / "out"
    test_file = ts_pair.with_name("Turns_TEST.ts")
    result = classify(run / "checkpoints" / "best.pt", str(test_file), out)
    assert abs(result["metrics"]["accuracy"] - metrics["accuracy"]) < 1e-9
    assert abs(result["metrics"]["f1_weighted"] - metrics["f1_weighted"]) < 1e-9
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 12 and list(rows[0]) == ["id", "predicted", "label", "p_left_turn", "p_right_turn", "p_stop"]
    assert rows[0]["id"] == "Turns_TEST#0"
    for row in rows:
        probs = [float(row[f"p_{c}"]) for c in state["classes"]]
        assert abs(sum(probs) - 1) < 1e-4 and row["predicted"] == state["classes"][int(np.argmax(probs))]
    assert (out / "confusion_matrix.png").is_file() and json.loads((out / "metrics.json").read_text())["evaluated_on"][
        "items"
    ] == 12

    # the console command; unlabelled data gives predictions and no metrics
    rng = np.random.default_rng(5)
    X = np.zeros((3, 30, 2))
    for i in range(3):
        X[i] = _series(rng, i, 30)
    np.savez(tmp_path / "new.npz", X=X)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "convlstm_vp",
            "classify",
            "--checkpoint",
            str(run / "checkpoints" / "best.pt"),
            "--data",
            str(tmp_path / "new.npz"),
            "--output",
            str(tmp_path / "new"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and not (tmp_path / "new" / "metrics.json").exists()
    assert len(list(csv.DictReader((tmp_path / "new" / "predictions.csv").open()))) == 3
    # a model trained on 2 channels refuses 3, naming the item
    np.savez(tmp_path / "bad.npz", X=np.zeros((2, 30, 3)))
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/classify.py",
            "--checkpoint",
            str(run / "checkpoints" / "best.pt"),
            "--data",
            str(tmp_path / "bad.npz"),
            "--output",
            str(tmp_path / "bad"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "X#0 has 3 channels, the model was trained on 2" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_malformed_ts_and_csv_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "Bad_TRAIN.ts"
    bad.write_text("@problemName Bad\n@classLabel true a b\n@data\n1,2,3:a\n1,2,x3:b\n")
    with pytest.raises(ValueError, match=r"Bad_TRAIN.ts, line 5: dimension 1: 'x3' is not a number"):
        read_ts(bad)
    bad.write_text("@classLabel true a b\n@data\n1,2,3:4,5,6:a\n1,2,3:b\n")
    with pytest.raises(ValueError, match=r"line 4: 1 dimensions, the first case has 2"):
        read_ts(bad)
    bad.write_text("@classLabel true a b\n@data\n1,2,3:c\n")
    with pytest.raises(ValueError, match=r"line 3: class label 'c' is not one of @classLabel \['a', 'b'\]"):
        read_ts(bad)
    folder = tmp_path / "rec" / "train"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("acc_x,acc_y,label\n0.1,0.2,walk\n0.3,oops,walk\n")
    with pytest.raises(ValueError, match=r"a.csv, line 3, column 'acc_y': 'oops' is not a number"):
        read_source(str(tmp_path / "rec"), "train", window=2, step=1)
    (folder / "a.csv").write_text("acc_x,acc_y,label\n0.1,0.2,walk\n0.3,walk\n")
    with pytest.raises(ValueError, match=r"a.csv, line 3: 2 fields, the header has 3"):
        read_source(str(tmp_path / "rec"), "train", window=2, step=1)
    # the task reports it as a config error before any training
    (tmp_path / "rec" / "test").mkdir()
    with pytest.raises(ConfigError, match=r"data.dataset.*a.csv, line 3"):
        SensorTask(tiny(str(tmp_path / "rec"), window=2, step=1))


def test_npz_split_is_stratified_and_seeded_and_lengths_are_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 40
    y = np.array([0, 1, 2, 3] * 10)
    lengths = rng.integers(12, 31, n)
    X = np.zeros((n, 30, 2), np.float32)
    for i in range(n):
        X[i, : lengths[i]] = _series(rng, y[i] % 3, int(lengths[i]))
    np.savez(tmp_path / "d.npz", X=X, y=y, lengths=lengths)
    train = read_source(str(tmp_path / "d.npz"), "train")
    test = read_source(str(tmp_path / "d.npz"), "test")
    # each class gives round(TEST_FRACTION * 10) = round(2.5) = 2 of its 10 cases
    assert TEST_FRACTION == 0.25 and sorted(test.labels.tolist()) == sorted(["0", "1", "2", "3"] * 2)
    assert len(train.series) + len(test.series) == n
    assert not set(train.ids) & set(test.ids)
    assert [len(s) for s in test.series] == [int(lengths[int(i.split("#")[1])]) for i in test.ids]
    assert read_source(str(tmp_path / "d.npz"), "test").ids == test.ids  # seeded
    # with X_test the file's own split is used
    np.savez(tmp_path / "e.npz", X=X[:30], y=y[:30], X_test=X[30:], y_test=y[30:])
    assert len(read_source(str(tmp_path / "e.npz"), "test").series) == 10
    np.savez(tmp_path / "f.npz", X=X, y=y, lengths=lengths + 5)
    with pytest.raises(ValueError, match=r"'lengths' must be \(N,\) = \(40,\) integers in \[1, T=30\]"):
        read_source(str(tmp_path / "f.npz"), "train")
    with pytest.raises(ValueError, match="expected aeon:<Name>, a <Name>_TRAIN.ts file"):
        read_source(str(tmp_path / "nothing.h5"), "train")


def test_csv_folder_windows_and_validation_by_whole_recordings(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for split, files in (("train", 5), ("test", 2)):
        (tmp_path / "rec" / split).mkdir(parents=True)
        for f in range(files):
            rows = ["acc_x,activity,acc_y"]
            for t in range(60):
                label = ("sit", "walk")[(t // 30 + f) % 2]
                rows.append(f"{rng.normal() + (label == 'walk') * 2:.4f},{label},{rng.normal():.4f}")
            (tmp_path / "rec" / split / f"r{f}.csv").write_text("\n".join(rows) + "\n")
    cfg = tiny(str(tmp_path / "rec"), window=10, step=5, label_column="activity", val_fraction=0.2)
    task = SensorTask(cfg)
    assert task.classes == ("sit", "walk") and task.in_channels == 2
    train_files = {i.split("@")[0] for i in task.train_set.ids}
    val_files = {i.split("@")[0] for i in task.val_set.ids}
    assert len(val_files) == 1 and not train_files & val_files and len(train_files) == 4
    assert len(task.test_set) == 2 * 11  # (60 - 10) // 5 + 1 windows per recording
    assert "held out" in task.val_description()["what"]
    # the statistics pool the samples of the training recordings, each once (windows overlap)
    from convlstm_vp.data.series import read_csv_recording

    samples = np.concatenate(
        [read_csv_recording(tmp_path / "rec" / "train" / f, "activity")[1] for f in sorted(train_files)]
    )
    np.testing.assert_allclose(task.standardizer.mean, samples.mean(0))
    np.testing.assert_allclose(task.standardizer.std, samples.std(0))


def test_single_class_training_split_and_short_series_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds a single class .'no_freeze'"):
        SensorTask(tiny("daphnet", window=64, step=32))
    rng = np.random.default_rng(3)
    X = np.stack([_series(rng, i % 2, 20) for i in range(20)])
    np.savez(tmp_path / "short.npz", X=X, y=np.arange(20) % 2, lengths=np.r_[[4], np.full(19, 20)])
    with pytest.raises(ConfigError, match=r"X#0 has 4 samples, the model's valid convolutions need at least .* = 5"):
        SensorTask(tiny(str(tmp_path / "short.npz")))


def test_aeon_names_shipped_and_missing() -> None:
    jv = read_source("aeon:JapaneseVowels", "train")
    lengths = {len(s) for s in jv.series}
    assert len(jv.series) == 270 and min(lengths) == 7 and max(lengths) == 26  # the original, unequal lengths
    assert jv.series[0].shape[1] == 12 and class_order(jv.labels) == tuple(str(k) for k in range(1, 10))
    with pytest.raises(
        FileNotFoundError, match=r"aeon:NoSuchDataset25 is not shipped with aeon .* NoSuchDataset25_TRAIN.ts"
    ):
        read_source("aeon:NoSuchDataset25", "train", root="/nonexistent-root-for-tests")


def test_classify_a_patch_classifier_checkpoint(tmp_path: Path) -> None:
    from convlstm_vp.train.tasks.patch_classifier import DEFAULTS as PATCH_DEFAULTS
    from convlstm_vp.train.tasks.patch_classifier import build_model

    cfg = merge(PATCH_DEFAULTS, {"model": {"hidden_channels": [4]}})
    torch.manual_seed(0)
    model = build_model(cfg)
    save_checkpoint(tmp_path / "p.pt", {"model": model.state_dict(), "config": cfg, "step": 7})
    digits = (np.random.default_rng(4).random((5, 28, 28)) * 255).astype(np.uint8)
    np.savez(tmp_path / "digits.npz", X=digits, y=np.array([0, 1, 2, 3, 4]))
    result = classify(tmp_path / "p.pt", str(tmp_path / "digits.npz"), tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert [r["label"] for r in rows] == ["0", "1", "2", "3", "4"] and len(rows[0]) == 3 + 10
    from convlstm_vp.data import patchify

    expected = model.eval()(patchify(torch.from_numpy(digits).float().unsqueeze(1) / 255, 7, "raster")).argmax(1)
    assert [r["predicted"] for r in rows] == [str(int(k)) for k in expected]
    assert result["metrics"]["evaluated_on"]["checkpoint_step"] == 7
    np.savez(tmp_path / "bad.npz", X=np.full((2, 28, 28), 3.0))
    with pytest.raises(ValueError, match=r"'X' must be uint8 or floats in \[0, 1\]"):
        classify(tmp_path / "p.pt", str(tmp_path / "bad.npz"), tmp_path / "out2")


def test_confusion_matrix_image_keeps_full_names_and_fits_counts() -> None:
    short = confusion_matrix_image(np.array([[1, 0], [0, 1]]), ["walking_upstairs", "b"])
    long = confusion_matrix_image(np.array([[1, 0], [0, 1]]), ["walking_upstairs_slowly_ab", "b"])
    assert long.shape[1] > short.shape[1] and long.shape[0] > short.shape[0]  # names are not cut at 12 characters
    big = confusion_matrix_image(np.array([[123456789, 0], [0, 1]]), ["a", "b"])
    small = confusion_matrix_image(np.array([[1, 0], [0, 1]]), ["a", "b"])
    assert big.shape[1] > small.shape[1]  # the cells grow to hold the count


def test_equal_validation_scores_are_decided_by_the_tie_break(tmp_path: Path) -> None:
    """F1 stuck at 1.0 while the validation loss falls: best.pt is the last evaluation, not the first."""
    from convlstm_vp.train.loop import fit

    class Flat:
        best_metric, best_mode = "f1_weighted", "max"

        def __init__(self, tie_break):
            self.tie_break = tie_break

        def build_model(self):
            return torch.nn.Linear(1, 1)

        def train_batch(self, step, rank, world):
            return torch.ones(2, 1)

        def training_step(self, model, batch, step):
            return model(batch).pow(2).mean(), {}

        def evaluate(self, model, logger, step):
            return {"f1_weighted": 1.0, "loss": 1.0 / step}

        def val_description(self):
            return {"split": "validation", "what": "constant"}

        def test(self, model, logger, step, run_dir):
            return {"evaluated_on": {"split": "test", "what": "nothing"}}

    cfg = merge(DEFAULTS, {"train": {"steps": 4, "eval_every": 1, "checkpoint_every": 4, "progress": False}})
    assert fit(Flat(("loss", "min")), cfg, tmp_path / "a")["validation"]["best_step"] == 4
    assert fit(Flat(None), cfg, tmp_path / "b")["validation"]["best_step"] == 1


def test_daphnet_csv_with_both_classes_validates_on_later_windows(tmp_path: Path) -> None:
    from convlstm_vp.data import Daphnet

    rng = np.random.default_rng(6)
    n = 1000
    freeze = ((np.arange(n) // 50) % 3 == 2).astype(int)  # every third stretch of 50 samples freezes
    table = np.column_stack([rng.normal(size=(n, 9)) + freeze[:, None], freeze])
    path = tmp_path / "S99.csv"
    path.write_text(
        ",".join(list(Daphnet.CHANNELS) + ["is_anomaly"])
        + "\n"
        + "\n".join(",".join(f"{v:g}" for v in row) for row in table)
        + "\n"
    )
    task = SensorTask(tiny("daphnet", root=str(path), window=40, step=20, val_fraction=0.2))
    n_train = (700 - 40) // 20 + 1  # windows of the first 70% of the stream
    k = round(0.2 * n_train)
    assert len(task.val_set) == k and len(task.train_set) == n_train - k - 1  # one overlapping window dropped
    # no training window shares a sample with a validation window: the last training window ends
    # before the first validation window starts
    last_train_end = (len(task.train_set) - 1) * 20 + 40
    first_val_start = (n_train - k) * 20
    assert last_train_end <= first_val_start
    assert set(task.train_set.labels.tolist()) == {0, 1}


def test_classify_an_old_checkpoint_without_task_state(ts_pair: Path, tmp_path: Path) -> None:
    """Checkpoints written before task_state: the statistics are fitted again from the config's data."""
    cfg = tiny(str(ts_pair))
    task = SensorTask(cfg)
    torch.manual_seed(0)
    model = task.build_model()
    save_checkpoint(
        tmp_path / "new.pt",
        {"model": model.state_dict(), "config": cfg, "step": 1, "task_state": task.checkpoint_state()},
    )
    save_checkpoint(tmp_path / "old.pt", {"model": model.state_dict(), "config": cfg, "step": 1})
    test_file = str(ts_pair.with_name("Turns_TEST.ts"))
    a = classify(tmp_path / "new.pt", test_file, tmp_path / "a")
    b = classify(tmp_path / "old.pt", test_file, tmp_path / "b")
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()
    assert a["metrics"]["accuracy"] == b["metrics"]["accuracy"]


def test_classify_matches_class_names_that_differ_only_in_case(tmp_path):
    """The same dataset read from two sources (aeon:BasicMotions's "Badminton" against a model
    trained on basicmotions's "badminton") is classified, not refused; an unknown label still is."""
    import numpy as np
    import pytest

    from convlstm_vp.train.classify import match_classes

    classes = ("badminton", "running")
    assert match_classes(np.array(["Badminton", "RUNNING", "running"]), classes, "aeon:X").tolist() == [
        "badminton",
        "running",
        "running",
    ]
    with pytest.raises(ValueError, match=r"aeon:X: labels \['Walking'\] are not among the model's classes"):
        match_classes(np.array(["Walking"]), classes, "aeon:X")
    # ambiguous when the model's own classes differ only in case: exact names only
    assert match_classes(np.array(["a"]), ("a", "A"), "s").tolist() == ["a"]
    with pytest.raises(ValueError):
        match_classes(np.array(["c"]), ("a", "A"), "s")
