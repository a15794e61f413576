"""Crash safety: SIGKILL + --resume is bit-exact, SIGTERM saves a checkpoint, safe loading,
failed saves keep the previous checkpoint, NaN policy, config and input validation."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import run_main

from convlstm_vp.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from convlstm_vp.train.config import ConfigError

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
    "data.val_sequences=4",
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
        _cmd(run_dir, overrides, resume),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
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
    """Resume ``run_dir`` to the end, in this process (the kill or stop is what needs a process of
    its own); its final state must equal the uninterrupted reference's."""
    from convlstm_vp.train.cli import train_frames

    run_main(train_frames, *_cmd(run_dir, overrides, resume=True)[2:])
    rc, log = _finish(reference)
    assert rc == 0, log
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    uninterrupted = load_checkpoint(reference_dir / "checkpoints" / "last.pt")
    assert resumed["step"] == uninterrupted["step"] == steps
    _assert_same_training_state(resumed, uninterrupted)
    return resumed


def test_sigkill_then_resume_is_bit_exact(tmp_path: Path) -> None:
    """Kill -9 at a random moment after the first checkpoint, resume, compare with a clean run.

    Scheduled sampling is on, so the run also depends on the restored step (which sets the
    teacher-forcing probability) and on the torch RNG (the coin flips); the plain configuration is
    covered by the SIGTERM test below.
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
    # the schedule follows the training step; the model keeps no counter of its own
    assert "sampling_updates" not in resumed["model"]


def test_sigterm_saves_a_checkpoint_and_resume_is_bit_exact(tmp_path: Path) -> None:
    """No periodic checkpoint before the end, so a last.pt before the end is SIGTERM's."""
    steps = 24  # long enough that the signal lands before the last step on a fast, idle machine
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
        if stopped_at == steps:  # the signal arrived during the last step: try again sooner
            stopped_at = None
            continue
        break
    assert stopped_at is not None and stopped_at < steps, "could not stop the run before it finished"
    assert not (run_dir / "metrics.json").exists()

    _resume_and_compare(run_dir, reference, tmp_path / "reference", overrides, steps)


# ----------------------------------------------------------------------------- safe loading
class _CreatesFile:
    """A pickle payload that creates ``path`` when unpickled by an unsafe loader."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _good_checkpoint(path: Path, value: float = 1.0) -> None:
    save_checkpoint(path, {"model": {"w": torch.full((3,), value)}, "step": 5, "config": {"name": "t"}})


def test_load_checkpoint_round_trip(tmp_path: Path) -> None:
    _good_checkpoint(tmp_path / "ok.pt", 2.5)
    ck = load_checkpoint(tmp_path / "ok.pt")
    assert ck["step"] == 5 and torch.equal(ck["model"]["w"], torch.full((3,), 2.5))
    assert set(ck["rng"]) >= {"torch", "numpy", "python"}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_run_files_get_the_mode_of_the_users_umask(tmp_path: Path, umask: int) -> None:
    from convlstm_vp.train.checkpoint import atomic_write_bytes

    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "metrics.json", b"{}")
        _good_checkpoint(tmp_path / "last.pt", 1.0)
    finally:
        os.umask(old)
    for name in ("metrics.json", "last.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert os.umask(old) == old  # the process umask is left as it was


def test_flipped_bytes_inside_a_tensor_are_a_checkpoint_error(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.linspace(-1, 1, 4096)}, "step": 7, "config": {}})
    with zipfile.ZipFile(path) as zf:
        member = next(i for i in zf.infolist() if "/data/" in i.filename)
        start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
    data = bytearray(path.read_bytes())
    data[start + 1000 : start + 1064] = bytes(b ^ 0x5A for b in data[start + 1000 : start + 1064])
    path.write_bytes(bytes(data))
    # torch.load alone reads it without complaint: a silently changed weight
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.linspace(-1, 1, 4096))
    with pytest.raises(CheckpointError, match=r"last.pt is corrupted: its member '.*data/0' fails the CRC-32 check"):
        load_checkpoint(path)


def test_a_second_training_on_a_locked_run_folder_stops_before_touching_it(tmp_path: Path) -> None:
    from convlstm_vp.train.checkpoint import run_folder_lock

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = run / "checkpoints" / ".last.pt.abc.tmp"  # stands for the holder's save in progress
    stale.write_bytes(b"half")
    with run_folder_lock(run):
        p = _start(run, ["train.steps=2"])
        rc, out = _finish(p)
        assert rc == 2, out
        assert (
            f"run folder {run} is in use by another training process (PID {os.getpid()})" in out
            and "Traceback" not in out
        )
        assert stale.exists() and not (run / "config.yaml").exists()  # nothing touched
    # a holder killed by SIGKILL releases the lock: the next run (or --resume) proceeds
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from convlstm_vp.train.checkpoint import run_folder_lock\n"
            f"with run_folder_lock(Path({str(run)!r})):\n print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RuntimeError, match=f"PID {holder.pid}"):
        with run_folder_lock(run):
            pass
    holder.kill()
    holder.wait()
    with run_folder_lock(run):
        assert (run / ".lock").read_text().strip() == str(os.getpid())


def test_a_full_disk_is_one_line_naming_the_file_and_the_last_checkpoint_stays(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import errno

    from convlstm_vp.train import checkpoint
    from convlstm_vp.train.cli import run_training
    from convlstm_vp.train.tasks.frames import DEFAULTS, MovingMNISTTask

    real_fdopen, writes = os.fdopen, []

    def filling_fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        writes.append(1)
        if len(writes) > 3:  # config.yaml, last.pt at step 2, best.pt ... then the disk is full

            def no_space(data):
                raise OSError(errno.ENOSPC, "No space left on device")

            f.write = no_space
        return f

    run = tmp_path / "run"
    argv = ["--config", str(CONFIG), "--run-dir", str(run)]
    for o in TINY + ["train.steps=6", "train.checkpoint_every=2", "train.eval_every=2"]:
        argv += ["--set", o]
    monkeypatch.setattr(checkpoint.os, "fdopen", filling_fdopen)
    with pytest.raises(SystemExit) as info:
        run_training(argv, "test", DEFAULTS, MovingMNISTTask)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert "No space left on device; the files written before it (the last checkpoint) are intact" in err
    assert str(run / "checkpoints") in err  # names the file it could not write
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_truncated_and_random_files_give_checkpoint_errors(tmp_path: Path) -> None:
    _good_checkpoint(tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    for name, content in [
        ("truncated.pt", data[: len(data) // 2]),
        ("cut_at_end.pt", data[:-10]),
        ("empty.pt", b""),
        ("random.pt", random.Random(0).randbytes(4096)),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path, writer: str) -> None:
    import pickle

    # the payload is real: an ordinary unpickler creates the file
    probe = tmp_path / "probe_created"
    pickle.loads(pickle.dumps(_CreatesFile(probe))).close()
    assert probe.exists()

    target = tmp_path / "pwned"
    payload = {"format": "convlstm_vp.checkpoint/1", "model": {}, "step": 0, "config": {}, "x": _CreatesFile(target)}
    path = tmp_path / "evil.pt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    assert not target.exists()


@pytest.mark.parametrize(
    "content",
    [
        {"w": torch.zeros(2)},  # a bare state dict
        torch.ones(3),  # a tensor
        {"format": "someone-else/1", "model": {}, "step": 0, "config": {}},
        {"format": "convlstm_vp.checkpoint/1", "model": {}},  # ours but incomplete
    ],
    ids=["state_dict", "tensor", "other_format", "missing_keys"],
)
def test_foreign_torch_files_give_checkpoint_errors(tmp_path: Path, content) -> None:
    path = tmp_path / "foreign.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="foreign.pt"):
        load_checkpoint(path)


def _failing(exc: type[BaseException]):
    def fail(*args, **kwargs):
        raise exc("simulated failure")

    return fail


@pytest.mark.parametrize(
    "target, exc",
    [
        ("os.replace", OSError),  # the rename fails
        ("os.fsync", OSError),  # the data is written to the temporary file, then the disk fails
        ("torch.save", RuntimeError),  # serialization fails
        ("os.replace", KeyboardInterrupt),  # interrupted at the worst moment
    ],
)
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch, target: str, exc) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    _good_checkpoint(path, 1.0)
    before = path.read_bytes()
    module, name = target.split(".")
    monkeypatch.setattr({"os": os, "torch": torch}[module], name, _failing(exc))
    with pytest.raises(exc, match="simulated"):
        _good_checkpoint(path, 2.0)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_resume_from_a_corrupted_checkpoint_fails_with_a_clear_message(tmp_path: Path, capsys) -> None:
    from convlstm_vp.train.cli import run_training
    from convlstm_vp.train.tasks.frames import DEFAULTS, MovingMNISTTask

    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 not really a zip")
    argv = ["--config", str(CONFIG), "--run-dir", str(tmp_path / "run"), "--resume"]
    for o in TINY:
        argv += ["--set", o]
    with pytest.raises(SystemExit) as info:
        run_training(argv, "test", DEFAULTS, MovingMNISTTask)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "could not read checkpoint" in err and str(last) in err


# ----------------------------------------------------------------------------- in-process runs
def _tiny_config(*overrides: str) -> dict:
    from convlstm_vp.train.config import load_config
    from convlstm_vp.train.tasks.frames import DEFAULTS

    return load_config(CONFIG, DEFAULTS, TINY + list(overrides))


def _fit(cfg: dict, run_dir: Path, resume: bool = False, task=None) -> dict:
    from convlstm_vp.train.loop import fit
    from convlstm_vp.train.tasks.frames import MovingMNISTTask

    return fit(task or MovingMNISTTask(cfg), cfg, run_dir, resume=resume)


def test_stale_temporaries_are_removed_and_a_mismatched_resume_names_the_file(tmp_path: Path) -> None:
    stale = tmp_path / "checkpoints" / ".last.pt.k1l2d.tmp"  # what a kill during a save leaves
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")
    _fit(_tiny_config("train.steps=2", "train.eval_every=2"), tmp_path)
    assert not stale.exists()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 2
    with pytest.raises(
        ConfigError,
        match=r"last\.pt was trained with in model\.hidden_channels: \[4\] -> \[6\], "
        r"train\.schedule: 'onecycle' -> 'constant'",
    ):
        _fit(
            _tiny_config("train.steps=4", "model.hidden_channels=[6]", "train.schedule=constant"), tmp_path, resume=True
        )
    with pytest.raises(CheckpointError, match=r"train\.steps=2.*train\.steps=4.*onecycle"):
        _fit(_tiny_config("train.steps=4"), tmp_path, resume=True)


# ----------------------------------------------------------------------------- NaN policy
def _injecting_task(cfg: dict, at: int, kind: str):
    """A Moving MNIST task that makes step ``at`` non-finite: in the loss, the gradient or the data.

    It records, when step ``at`` starts, the bytes of last.pt and a copy of the weights.
    """
    from convlstm_vp.train.tasks.frames import MovingMNISTTask

    class Injecting(MovingMNISTTask):
        seen: dict = {}

        def train_batch(self, step: int, rank: int, world: int):
            batch = super().train_batch(step, rank, world)
            self.step = step
            if step == at and kind == "input":
                batch[0, 0, 0, 0, 0] = float("nan")
            if step == at and kind == "weights":  # after step at - 1's update, a weight becomes Inf
                with torch.no_grad():
                    next(self.model.parameters()).view(-1)[0] = float("inf")
            return batch

        def training_step(self, model, batch, step):
            if self.step in (at, at + 1, at + 2) and torch.is_grad_enabled():
                self.seen[self.step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if self.step == at:
                    last = self.run_dir / "checkpoints" / "last.pt"
                    self.seen["last.pt"] = last.read_bytes()
            loss, logs = super().training_step(model, batch, step)
            if self.step == at and kind == "loss":
                loss = loss * float("nan")
            if self.step == at and kind == "grad":  # finite loss, NaN gradient
                w = next(model.parameters())
                loss = loss + torch.where(torch.tensor(True), w.sum() * 0, torch.sqrt(w.sum() * 0 - 1))
            self.model = model
            return loss, logs

    return Injecting(cfg)


@pytest.mark.parametrize("kind", ["loss", "grad", "input"])
def test_nan_stop_keeps_the_last_good_checkpoint(tmp_path: Path, kind: str) -> None:
    from convlstm_vp.train.loop import NonFiniteLossError

    cfg = _tiny_config("train.steps=8", "train.checkpoint_every=2", "train.eval_every=1000", "train.nan_policy=stop")
    task = _injecting_task(cfg, 5, kind)
    task.run_dir = tmp_path
    with pytest.raises(NonFiniteLossError, match="at step 5") as info:
        _fit(cfg, tmp_path, task=task)
    if kind == "input":
        assert "frames of shape" in str(info.value) and "1 NaN" in str(info.value)
    last = tmp_path / "checkpoints" / "last.pt"
    assert last.read_bytes() == task.seen["last.pt"]  # untouched since before the bad step
    ck = load_checkpoint(last)
    assert ck["step"] == 4
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not (tmp_path / "metrics.json").exists()


def test_non_finite_weights_are_never_saved_as_a_good_checkpoint(tmp_path: Path) -> None:
    from convlstm_vp.train.loop import NonFiniteLossError

    # nan_policy=skip would skip the NaN losses that follow: the save after the bad step stops it
    cfg = _tiny_config("train.steps=8", "train.checkpoint_every=2", "train.eval_every=1000", "train.nan_policy=skip")
    task = _injecting_task(cfg, 5, "weights")
    task.run_dir = tmp_path
    with pytest.raises(
        NonFiniteLossError, match=r"weights became NaN/Inf by step 6 .*last.pt was not written.*kept at"
    ):
        _fit(cfg, tmp_path, task=task)
    last = tmp_path / "checkpoints" / "last.pt"
    assert last.read_bytes() == task.seen["last.pt"]
    ck = load_checkpoint(last)
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not (tmp_path / "metrics.json").exists()


def test_json_outputs_stay_valid_json_with_nan_and_inf() -> None:
    import json

    from convlstm_vp.train.checkpoint import json_bytes

    text = json_bytes(
        {"mse": float("nan"), "per_frame": [1.0, float("inf"), -float("inf")], "ok": 2, "nested": {"x": float("nan")}}
    )
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}")) == {
        "mse": None,
        "per_frame": [1.0, None, None],
        "ok": 2,
        "nested": {"x": None},
    }


@pytest.mark.parametrize("kind", ["loss", "grad", "input"])
def test_nan_skip_leaves_the_weights_of_that_step_unchanged(tmp_path: Path, kind: str) -> None:
    import json

    cfg = _tiny_config("train.steps=8", "train.checkpoint_every=2", "train.eval_every=1000", "train.nan_policy=skip")
    task = _injecting_task(cfg, 5, kind)
    task.run_dir = tmp_path
    _fit(cfg, tmp_path, task=task)
    before, after, later = task.seen[5], task.seen[6], task.seen[7]
    _assert_same_weights(before, after)  # the bad step changed nothing
    assert any(not torch.equal(after[k], later[k]) for k in after)  # training went on
    assert json.loads((tmp_path / "metrics.json").read_text())["skipped_steps"] == 1
    ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ck["step"] == 8 and ck["skipped"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_cli_exits_with_status_3_on_a_nan_loss(tmp_path: Path, capsys) -> None:
    from convlstm_vp.train.cli import run_training
    from convlstm_vp.train.tasks.frames import DEFAULTS

    def make_task(cfg: dict):
        task = _injecting_task(cfg, 3, "loss")
        task.run_dir = tmp_path
        return task

    argv = ["--config", str(CONFIG), "--run-dir", str(tmp_path)]
    for o in TINY + ["train.steps=6", "train.checkpoint_every=2", "train.eval_every=1000"]:
        argv += ["--set", o]
    with pytest.raises(SystemExit) as info:
        run_training(argv, "test", DEFAULTS, make_task)
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "non-finite loss or gradient at step 3" in err and "nan_policy=skip" in err
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 2


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 10, 20, 37])
@pytest.mark.parametrize("warmup", [0.0, 0.05, 0.1, 0.25, 0.5])
def test_every_schedule_runs_its_whole_length(steps: int, warmup: float) -> None:
    """Short runs: OneCycleLR raised ZeroDivisionError mid-run when warm-up came to one step."""
    from convlstm_vp.train.loop import build_scheduler

    for schedule in ("onecycle", "cosine", "constant"):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = build_scheduler(opt, {"steps": steps, "warmup_fraction": warmup, "schedule": schedule, "lr": 0.1})
        lrs = []
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert all(0 <= lr <= 0.1 + 1e-12 for lr in lrs), (schedule, lrs)
        if schedule == "onecycle" and steps >= 4:
            assert max(lrs) > 0.05 and lrs[-1] < max(lrs)  # warms up to the peak, then anneals


def test_training_precision_gives_the_autocast_and_refuses_fp16_off_cuda():
    from contextlib import nullcontext

    from convlstm_vp.train.config import ConfigError
    from convlstm_vp.train.loop import training_precision

    cpu = torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bf16 on a CPU that emulates it warns (below)
        ctx, scaler, ran = training_precision(cpu, "bf16")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 and not scaler and ran == "bf16"
    ctx, scaler, ran = training_precision(cpu, "fp32")
    assert isinstance(ctx, nullcontext) and not scaler and ran == "fp32"
    with pytest.raises(ConfigError, match="'train.precision': fp16 needs a CUDA device"):
        training_precision(cpu, "fp16")


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, native):
    from contextlib import nullcontext

    from convlstm_vp.train import precision

    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: native)
    cpu = torch.device("cpu")
    ctx, _, ran = precision.training_precision(cpu, "auto")
    assert ran == ("bf16" if native else "fp32")
    assert isinstance(ctx, torch.autocast if native else nullcontext)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert precision.resolve_precision(cpu, "bf16") == "bf16"  # an explicit choice is kept ...
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if native:
        assert not messages
    else:  # ... with a warning naming the fix where it is emulated
        assert len(messages) == 1 and "without native bfloat16" in messages[0] and "train.precision=auto" in messages[0]


@pytest.mark.parametrize(
    "flags, oneDNN, native",
    [
        (
            "fpu avx2 avx512f avx512bw avx512_vnni",
            True,
            False,
        ),  # Skylake to Ice Lake: oneDNN converts, slower than fp32
        ("fpu avx2 avx512f avx512_bf16", True, True),  # Cooper Lake, Zen 4
        ("fpu avx2 avx512f amx_bf16 amx_tile", True, True),  # Sapphire Rapids
        ("fpu avx2 fma", False, False),  # AVX2 only
    ],
)
def test_native_bf16_needs_the_bf16_instructions_not_only_avx512(monkeypatch, tmp_path, flags, oneDNN, native):
    """precision auto is bf16 only where the CPU has bf16 arithmetic: oneDNN's bf16 on plain
    AVX-512 measured 2.2x slower than fp32 (the Moving MNIST training step on an Ice Lake)."""
    import builtins

    from convlstm_vp.nn import fast

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(info if f == "/proc/cpuinfo" else f, *a, **k))
    monkeypatch.setattr(fast, "cpu_bf16_supported", lambda: oneDNN)
    assert fast.cpu_bf16_native.__wrapped__() is native
    # where /proc/cpuinfo cannot be read, oneDNN's own check decides
    monkeypatch.setattr(
        builtins,
        "open",
        lambda f, *a, **k: (_ for _ in ()).throw(OSError("no")) if f == "/proc/cpuinfo" else real_open(f, *a, **k),
    )
    assert fast.cpu_bf16_native.__wrapped__() is oneDNN


# ----------------------------------------------------------------------------- resume cannot lie
def test_resume_with_a_changed_config_is_an_error_listing_the_keys(tmp_path: Path) -> None:
    """A resumed run trains as its config says: a changed rate or seed (which the restored
    optimizer and batches would silently ignore or follow) is refused, naming both values; the
    keys of the allow-list (logging, checkpoint and evaluation intervals) may change."""
    from convlstm_vp.train.config import RESUME_MAY_CHANGE, resume_changes

    base = ["train.steps=4", "train.eval_every=2", "train.schedule=constant", "train.checkpoint_every=2"]
    _fit(_tiny_config(*base, "train.steps=2"), tmp_path)
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.003 -> 0\.5"):
        _fit(_tiny_config(*base, "train.lr=0.5"), tmp_path, resume=True)
    with pytest.raises(ConfigError, match=r"seed: 0 -> 7.*train\.precision: 'fp32' -> 'auto'"):
        _fit(_tiny_config(*base, "seed=7", "train.precision=auto"), tmp_path, resume=True)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before  # refused before any step
    resumed = _fit(_tiny_config(*base, "train.log_every=1", "log.examples=2", "name=renamed"), tmp_path, resume=True)
    assert resumed["step"] == 4
    assert {"train.log_every", "train.steps", "name"} <= set(RESUME_MAY_CHANGE)
    assert resume_changes({"train": {"lr": 1.0}, "old_key": 1}, {"train": {"lr": 1.0}, "new_key": 2}) == []


def test_an_empty_run_name_is_refused() -> None:
    for item in ('name=""', "name=a/b", "name=.."):
        with pytest.raises(ConfigError, match=r"config key 'name': expected a run name"):
            _tiny_config(item)


@pytest.mark.parametrize(
    "item",
    [
        "name=",
        "name=null",
        "train.steps=null",
        "train.lr=null",
        "seed=null",
        "train.deterministic=null",
        "train.precision=null",
        "train.num_threads=null",
    ],
)
def test_a_null_override_is_refused_naming_the_key(item: str) -> None:
    key = item.split("=")[0]
    with pytest.raises(ConfigError, match=rf"config key '{key}': expected .*got null"):
        _tiny_config(item)


def test_a_config_file_that_is_not_utf8_or_not_yaml_is_one_line_naming_it(tmp_path: Path) -> None:
    from convlstm_vp.train.config import load_config
    from convlstm_vp.train.tasks.frames import DEFAULTS

    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not a UTF-8 text YAML config file \(invalid") as info:
        load_config(bad, DEFAULTS)
    bad.write_bytes(b"train: {steps: 3\n  lr: [\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml is not valid YAML: .*\(line \d+, column \d+\)") as info:
        load_config(bad, DEFAULTS)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- loaded weights
def test_checkpoints_with_nan_weights_or_a_config_that_is_not_a_mapping_are_refused(tmp_path: Path) -> None:
    weights = {"w": torch.ones(3), "steps": torch.tensor(2)}
    save_checkpoint(tmp_path / "ok.pt", {"model": weights, "step": 0, "config": {}})
    load_checkpoint(tmp_path / "ok.pt")
    save_checkpoint(tmp_path / "nan.pt", {"model": {"w": torch.tensor([1.0, float("nan")])}, "step": 0, "config": {}})
    with pytest.raises(CheckpointError, match=r"nan\.pt: the weights w hold NaN/Inf"):
        load_checkpoint(tmp_path / "nan.pt")
    save_checkpoint(tmp_path / "str.pt", {"model": weights, "step": 0, "config": "fp32"})
    with pytest.raises(CheckpointError, match=r"str\.pt: its 'config' is a str, expected a mapping"):
        load_checkpoint(tmp_path / "str.pt")


# ----------------------------------------------------------------------------- outputs, statuses
def test_an_unwritable_output_folder_is_found_before_the_checkpoint_is_read(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import tempfile

    from convlstm_vp.cli import main

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)  # a read-only folder (root may write anywhere)
    missing = tmp_path / "not-read.pt"  # never opened: the output is checked first
    for argv in (
        ["predict", "--checkpoint", str(missing), "--input", "x.npy", "--output", str(tmp_path / "ro" / "o.gif")],
        ["evaluate", "--checkpoint", str(missing), "--json", str(tmp_path / "ro" / "e.json")],
        ["classify", "--checkpoint", str(missing), "--data", "x.npz", "--output", str(tmp_path / "ro")],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and f"cannot write into the folder {tmp_path / 'ro'} (Permission denied)" in err, (
            err
        )
        assert "not-read.pt" not in err


def test_a_failed_write_names_the_target_not_its_temporary_file(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    from convlstm_vp.train.checkpoint import atomic_write_bytes

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".predictions.csv.x1.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as info:
        atomic_write_bytes(tmp_path / "predictions.csv", b"id\n")
    assert info.value.filename == str(tmp_path / "predictions.csv")


def test_exit_statuses_follow_the_table(tmp_path: Path, capsys, monkeypatch) -> None:
    """docs/reliability.md, "Exit statuses": 0 success, 2 every input or usage error, 3 a
    training stopped by NaN (test_cli_exits_with_status_3_on_a_nan_loss), 1 only a bug: an
    exception no check expected leaves main() (the interpreter then exits with status 1)."""
    import numpy as np

    import convlstm_vp.train.predict as predict
    from convlstm_vp.cli import main

    def status(argv):
        try:
            return main(argv)
        except SystemExit as exc:
            return exc.code

    from convlstm_vp.train.tasks.frames import build_model

    clip = tmp_path / "clip.npy"
    np.save(clip, np.zeros((8, 16, 16), np.uint8))
    missing = str(tmp_path / "missing.pt")
    cfg = _tiny_config()
    ck = str(tmp_path / "frames.pt")
    save_checkpoint(ck, {"model": build_model(cfg).state_dict(), "step": 0, "config": cfg})
    table = {
        ("--version",): 0,
        (): 2,
        ("nope",): 2,
        ("train", "frames", "--config", str(tmp_path / "none.yaml")): 2,
        ("predict", "--checkpoint", ck, "--input", str(clip), "--output", str(tmp_path / "o.gif"), "--fps", "0"): 2,
        ("predict", "--checkpoint", ck, "--input", str(clip), "--output", str(tmp_path / "o.npy")): 0,
        ("evaluate", "--checkpoint", ck, "--data", str(tmp_path)): 2,  # --data: video-folder checkpoints only
        ("predict", "--checkpoint", missing, "--input", str(clip), "--output", str(tmp_path / "o.gif")): 2,
        ("evaluate", "--checkpoint", missing): 2,
        ("evaluate", "--checkpoint", ck, "--json", str(tmp_path)): 2,  # --json onto a folder
        ("classify", "--checkpoint", missing, "--data", str(clip), "--output", str(tmp_path / "c")): 2,
    }
    for argv, expected in table.items():
        assert status(list(argv)) == expected, (argv, capsys.readouterr().err)

    def bug(*args, **kwargs):
        raise RuntimeError("an unexpected bug")

    monkeypatch.setattr(predict, "load_trained", bug)
    with pytest.raises(RuntimeError, match="an unexpected bug"):
        main(["predict", "--checkpoint", missing, "--input", str(clip), "--output", str(tmp_path / "o.gif")])
