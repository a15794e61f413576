"""Crash safety: SIGKILL + --resume is bit-exact, SIGTERM saves a checkpoint, safe loading,
failed saves keep the previous checkpoint, NaN policy, config and input validation."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convlstm_vp.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_moving_mnist.py"
CONFIG = ROOT / "configs" / "tiny-moving-mnist.yaml"
# a seconds-long deterministic run: one 4-channel layer, 4 + 4 frames, fp32, one thread
TINY = [
    "train.num_threads=1",
    "train.precision=fp32",
    "train.device=cpu",
    "train.progress=false",
    "model.hidden_channels=[4]",
    "model.input_frames=4",
    "model.output_frames=4",
    "data.eval_sequences=4",
    "data.eval_batch_size=4",
    "log.examples=1",
    "train.batch_size=2",
]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _cmd(run_dir: Path, overrides: list[str], resume: bool = False) -> list[str]:
    cmd = [sys.executable, str(SCRIPT), "--config", str(CONFIG), "--run-dir", str(run_dir)]
    for o in TINY + overrides:
        cmd += ["--set", o]
    return cmd + (["--resume"] if resume else [])


def _start(run_dir: Path, overrides: list[str], resume: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        _cmd(run_dir, overrides, resume), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(p: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out + err


def _wait_for(path: Path, p: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        if p.poll() is not None:
            raise AssertionError(f"the run ended (rc={p.returncode}) before {path} existed:\n{p.communicate()[1]}")
        if time.time() - t0 > timeout:
            p.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), f"tensor {k!r} differs"


# ----------------------------------------------------------------------------- exact resume
def _assert_same_training_state(resumed: dict, uninterrupted: dict) -> None:
    """Weights, optimizer moments and the schedule of two checkpoints are bit-identical."""
    _assert_same_weights(resumed["model"], uninterrupted["model"])
    opt_r, opt_u = resumed["optimizer"]["state"], uninterrupted["optimizer"]["state"]
    assert opt_r.keys() == opt_u.keys() and opt_r
    for k in opt_r:
        for name in opt_r[k]:
            assert torch.equal(torch.as_tensor(opt_r[k][name]), torch.as_tensor(opt_u[k][name])), (k, name)
    assert resumed["scheduler"] == uninterrupted["scheduler"]


def _resume_and_compare(
    run_dir: Path, reference: subprocess.Popen, reference_dir: Path, overrides: list[str], steps: int
) -> dict:
    """Resume ``run_dir`` to the end; its final state must equal the uninterrupted reference's."""
    rc, log = _finish(_start(run_dir, overrides, resume=True))
    assert rc == 0, log
    rc, log = _finish(reference)
    assert rc == 0, log
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    uninterrupted = load_checkpoint(reference_dir / "checkpoints" / "last.pt")
    assert resumed["step"] == uninterrupted["step"] == steps
    _assert_same_training_state(resumed, uninterrupted)
    return resumed


def test_sigkill_then_resume_is_bit_exact(tmp_path: Path) -> None:
    """Kill -9 at a random moment after the first checkpoint, resume, compare with a clean run.

    Scheduled sampling is on, so the run also depends on the model's ``sampling_updates``
    buffer and on the torch RNG (the coin flips); the plain configuration is covered by the
    SIGTERM test below.
    """
    steps = 8
    extra = ["model.scheduled_sampling=[1.0,0.0,4]"]
    overrides = extra + [f"train.steps={steps}", "train.checkpoint_every=2", "train.eval_every=3", "train.log_every=1"]
    reference = _start(tmp_path / "reference", overrides)  # runs beside the killed one
    rng = random.Random(f"{os.getpid()}-{time.time()}")
    killed_at = None
    for attempt, max_delay in enumerate((0.2, 0.05, 0.0)):
        run_dir = tmp_path / f"killed{attempt}"
        last = run_dir / "checkpoints" / "last.pt"
        p = _start(run_dir, overrides)
        _wait_for(last, p)
        time.sleep(rng.uniform(0.0, max_delay))
        alive = p.poll() is None
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        if alive and int(load_checkpoint(last)["step"]) < steps:
            killed_at = int(load_checkpoint(last)["step"])
            break
    assert killed_at is not None, "could not kill the run before it finished"
    assert p.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()

    resumed = _resume_and_compare(run_dir, reference, tmp_path / "reference", overrides, steps)
    # the scheduled-sampling counter is a buffer of the model and was restored
    assert int(resumed["model"]["sampling_updates"]) == steps


def test_sigterm_saves_a_checkpoint_and_resume_is_bit_exact(tmp_path: Path) -> None:
    """No periodic checkpoint before the end, so a last.pt before the end is SIGTERM's."""
    steps = 8
    overrides = [f"train.steps={steps}", "train.checkpoint_every=1000", "train.eval_every=1000"]
    reference = _start(tmp_path / "reference", overrides)
    rng = random.Random(f"{os.getpid()}-{time.time()}")
    stopped_at = None
    for attempt, max_delay in enumerate((0.15, 0.03, 0.0)):
        run_dir = tmp_path / f"stopped{attempt}"
        p = _start(run_dir, overrides)
        _wait_for(run_dir / "config.yaml", p)  # written once set-up is done, signals are handled
        time.sleep(rng.uniform(0.0, max_delay))
        p.send_signal(signal.SIGTERM)
        rc, log = _finish(p)
        if rc == 0:  # it finished before the signal arrived
            continue
        assert rc == 128 + signal.SIGTERM, log
        stopped_at = int(load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"])
        assert f"SIGTERM: saved checkpoint at step {stopped_at} to" in log
        assert "Traceback" not in log
        break
    assert stopped_at is not None and stopped_at < steps, "could not stop the run before it finished"
    assert not (run_dir / "metrics.json").exists()

    _resume_and_compare(run_dir, reference, tmp_path / "reference", overrides, steps)
