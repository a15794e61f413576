"""The convlstm-vp command (python -m convlstm_vp.cli / python -m convlstm_vp) and the run outputs
people read: metrics.json that agrees with evaluate.py, predictions.png/gif, legible TensorBoard
strips, the frequent quick evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_main
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convlstm_vp.train.tb import prediction_strip

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-moving-mnist.yaml"


def _cli(*args: str, module: str = "convlstm_vp.cli", ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if ok:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def _in_process(*args: str) -> subprocess.CompletedProcess:
    """``convlstm-vp ARGS`` in this process (the entry points as subprocesses: the help test, the
    fixture's training and the evaluate agreement), asserting status 0; torch's threads restored."""
    from convlstm_vp.cli import main

    threads = torch.get_num_threads()
    try:
        return run_main(main, *args)
    finally:
        torch.set_num_threads(threads)


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """``convlstm-vp ARGS`` in this process: (exit status, stdout, stderr)."""
    from convlstm_vp.cli import main

    try:
        status = main(list(args))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    out = capsys.readouterr()
    return status, out.out, out.err


def test_help_lists_every_subcommand_with_one_line(capsys):
    for module in ("convlstm_vp.cli", "convlstm_vp"):  # both entry points, as a user runs them
        out = _cli("--help", module=module).stdout
        for name in ("train", "evaluate", "predict", "benchmark"):
            assert sum(line.split()[:1] == [name] for line in out.splitlines()) == 1, (name, out)
    status, _, err = _main(capsys)  # no command: the usage on stderr, status 2
    assert status == 2 and "train" in err
    status, _, err = _main(capsys, "bogus")
    assert status == 2 and "unknown command 'bogus'" in err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--help"], ["frames", "patches", "patch-completion", "sensors"]),
        (["train", "frames", "--help"], ["--config", "--set", "--resume", "--run-dir"]),
        (["train", "patches", "--help"], ["--config"]),
        (["train", "patch-completion", "--help"], ["--config"]),
        (["train", "sensors", "--help"], ["--config"]),
        (["evaluate", "--help"], ["--checkpoint", "--sequences", "--json", "--recognition", "--motion"]),
        (["predict", "--help"], ["--checkpoint", "--input", "--output", "--fps"]),
        (["benchmark", "--help"], ["--quick", "--configs", "--memory"]),
    ],
)
def test_subcommand_help(args, expected, capsys):
    status, out, _ = _main(capsys, *args)
    assert status == 0
    assert out.startswith("usage: convlstm-vp " + args[0])
    for word in expected:
        assert word in out, (args, word)


def test_unknown_training_job_and_script_errors_keep_their_status(tmp_path: Path, capsys):
    status, _, err = _main(capsys, "train", "bogus")
    assert status == 2 and "unknown job 'bogus'" in err
    missing = str(tmp_path / "none.pt")
    res = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "--checkpoint", missing],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "not found" in res.stderr
    status, _, err = _main(capsys, "evaluate", "--checkpoint", missing)
    assert status == 2 and "not found" in err


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """A tiny frame-prediction run through ``convlstm-vp train frames`` with the quick evaluation on."""
    run = tmp_path_factory.mktemp("cli") / "tiny"
    res = _cli(
        "train",
        "frames",
        "--config",
        str(TINY),
        "--run-dir",
        str(run),
        "--set",
        "train.quick_eval_every=2",
        "--set",
        "data.quick_eval_sequences=4",
    )
    assert "  on: test set generated (seed 0, test digits), first 16 sequences (best.pt of step" in res.stdout
    assert (
        "chosen on validation: mse=" in res.stdout
        and "validation sequences generated from the train digits" in res.stdout
    )
    return run


def test_final_metrics_agree_with_evaluate_on_the_same_checkpoint(cli_run: Path, tmp_path: Path):
    metrics = json.loads((cli_run / "metrics.json").read_text())
    on = metrics["evaluated_on"]
    assert on["sequences"] == 16 and on["split"] == "test" and on["checkpoint"] == "best.pt"
    assert on["test_set"] == "generated (seed 0, test digits)"
    ck = str(cli_run / "checkpoints" / "best.pt")
    cmd = [sys.executable, "scripts/evaluate.py", "--checkpoint", ck, "--json", str(tmp_path / "s.json")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    _in_process("evaluate", "--checkpoint", ck, "--json", str(tmp_path / "c.json"))
    script, cli = (json.loads((tmp_path / f).read_text()) for f in ("s.json", "c.json"))
    assert script == cli  # both ways: the same numbers
    assert script["sequences"] == 16 and script["evaluated_on"]["sequences"] == 16
    for k in ("mse", "mae", "ssim", "psnr"):
        assert script[k] == pytest.approx(metrics[k], rel=1e-6, abs=1e-9), k
    for k, curve in metrics["per_frame"].items():
        assert script["per_frame"][k] == pytest.approx(curve, rel=1e-6), k


def test_run_folder_gets_legible_predictions_from_the_best_checkpoint(cli_run: Path):
    png = Image.open(cli_run / "predictions.png")
    # 2 examples x (inputs, truth, prediction rows of 4 frames at 2x): 4 * 128 + 3 * 2 px wide
    assert png.size == (4 * 128 + 3 * 2, 2 * (3 * 128 + 2 * 2) + 8)
    gif = Image.open(cli_run / "predictions.gif")
    assert gif.n_frames == 8 and gif.size == (2 * (2 * 64 + 2), 2 * (2 * 64) + 8)
    assert not list(cli_run.glob("*.tmp*")) and not list(cli_run.glob(".*tmp*"))


def test_quick_evaluation_is_logged_as_its_own_curve(cli_run: Path):
    ea = EventAccumulator(str(cli_run), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    quick = ea.Scalars("val_quick/mse")
    assert [e.step for e in quick] == [2, 4, 6] and all(0 < e.value < 4096 for e in quick)
    assert [e.step for e in ea.Scalars("val/mse")] == [3, 6]
    strip = ea.Images("predictions/sequence_0")[-1]
    assert (strip.width, strip.height) == (4 * 128 + 3 * 2, 3 * 128 + 2 * 2)


def test_predict_and_benchmark_subcommands_run(cli_run: Path, tmp_path: Path):
    clip = torch.rand(8, 64, 64).numpy()
    import numpy as np

    np.save(tmp_path / "clip.npy", clip)
    _in_process(
        "predict",
        "--checkpoint",
        str(cli_run / "checkpoints" / "best.pt"),
        "--input",
        str(tmp_path / "clip.npy"),
        "--output",
        str(tmp_path / "out.gif"),
    )
    assert Image.open(tmp_path / "out.gif").n_frames == 8
    _in_process(
        "benchmark",
        "--quick",
        "--threads",
        "1",
        "--configs",
        "layer",
        "--memory",
        "off",
        "--json",
        str(tmp_path / "b.json"),
    )
    report = json.loads((tmp_path / "b.json").read_text())
    assert {c["impl"] for c in report["configs"]["layer"]["cases"]} >= {"project", "reference"}


def test_train_patches_subcommand_records_its_evaluation_set(tmp_path: Path):
    config = ROOT / "configs" / "tiny-patch-classifier.yaml"
    res = _in_process("train", "patches", "--config", str(config), "--run-dir", str(tmp_path / "p"))
    assert "test accuracy:" in res.stdout  # what scripts/train_patch_classifier.py prints too
    on = json.loads((tmp_path / "p" / "metrics.json").read_text())["evaluated_on"]
    assert on["split"] == "test" and on["digits"] == 64 and "64 evenly spaced digits" in on["what"]


def test_prediction_strip_is_wide_enough_to_read_at_the_default_size():
    frames = torch.rand(10, 1, 64, 64)
    strip = prediction_strip(frames, frames, frames)
    assert strip.shape == (1, 3 * 128 + 2 * 2, 10 * 128 + 9 * 2)  # rows: inputs, truth, prediction
    assert strip.shape[2] >= 600
    # the truth row shows the truth frames, upscaled 2x (nearest neighbour)
    assert torch.equal(strip[0, 130:258:2, 0:128:2], frames[0, 0])
