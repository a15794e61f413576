"""scripts/profile_training.py: it profiles the training loop's own step, and reports every part."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convlstm_vp.train.loop import fit

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny-moving-mnist.yaml")


def _script():
    spec = importlib.util.spec_from_file_location("profile_training", ROOT / "scripts" / "profile_training.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_profiled_steps_are_the_training_loops_steps(tmp_path):
    """N profiled steps from the config's seed end with the weights fit() reaches in N steps."""
    prof = _script()
    sets = [
        "train.num_threads=1",
        "train.steps=3",
        "motion_loss_weight=0.5",
        "model.head=dynamic_filter",
        "model.scheduled_sampling=[1.0,0.0,2]",
    ]
    args = argparse.Namespace(task="moving_mnist", config=TINY, overrides=sets)
    task, model, cfg, device = prof.build(args)
    stepper = prof.Stepper(task, model, cfg, device, total_steps=3)
    times: dict[str, float] = {}
    stepper.run()
    stepper.run(reads=False)
    stepper.run(times=times)  # the synchronised variant computes the same step
    assert set(times) == set(prof.PHASES) and all(v > 0 for v in times.values())

    from convlstm_vp.train.tasks.frames import MovingMNISTTask

    fit_task = MovingMNISTTask(cfg)
    fit(fit_task, cfg, tmp_path / "run")
    ref = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]
    got = model.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)


def test_profile_script_reports_loop_phases_and_operators(tmp_path):
    out, trace = tmp_path / "prof.json", tmp_path / "trace"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "profile_training.py"),
            "--config",
            TINY,
            "--set",
            "train.num_threads=1",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--trace",
            str(trace),
            "--profile-steps",
            "2",
            "--top",
            "5",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and r["precision"] == "fp32" and r["steps"] == 3 and r["threads"] == 1
    for key in ("loop", "no_reads"):
        assert r[f"{key}_ms_per_step"] > 0
        assert r[f"{key}_steps_per_second"] == pytest.approx(1e3 / r[f"{key}_ms_per_step"])
    assert set(r["phases_ms_per_step"]) == {"data", "forward", "backward", "optimizer"}
    assert all(v > 0 for v in r["phases_ms_per_step"].values())
    ops = r["top_ops"]
    assert 0 < len(ops) <= 5 and all(o["self_ms_per_step"] > 0 for o in ops)
    assert [o["self_ms_per_step"] for o in ops] == sorted((o["self_ms_per_step"] for o in ops), reverse=True)
    assert any("conv" in o["op"] for o in ops), [o["op"] for o in ops]
    assert json.loads((trace / "trace.json").read_text())["traceEvents"]
    assert "loop (2 reads/step)" in proc.stdout and "busiest operators" in proc.stdout


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--steps", "0"], "--steps: expected a positive number of steps, got 0"),
        (["--warmup", "-1"], "--warmup: expected 0 or more steps, got -1"),
        (["--set", "train.stepz=3"], "train.stepz"),
    ],
)
def test_profile_script_rejects_bad_arguments(argv, expected):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "profile_training.py"), "--config", TINY, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert expected in proc.stderr


@pytest.mark.parametrize(
    "task, config",
    [
        ("patch_classifier", "tiny-patch-classifier.yaml"),
        ("patch_completion", "tiny-patch-completion.yaml"),
        ("sensors", "deepconvlstm-tiny.yaml"),
    ],
)
def test_profiler_steps_every_task(task, config):
    prof = _script()
    args = argparse.Namespace(task=task, config=str(ROOT / "configs" / config), overrides=["train.num_threads=1"])
    t, model, cfg, device = prof.build(args)
    before = [p.detach().clone() for p in model.parameters()]
    stepper = prof.Stepper(t, model, cfg, device, total_steps=2)
    times: dict[str, float] = {}
    stepper.run()
    stepper.run(times=times)
    assert set(times) == set(prof.PHASES) and all(v > 0 for v in times.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "the steps trained nothing"
