"""Multi-process training: 2 CPU processes under torchrun (gloo) end with identical weights, only
rank 0 writes, and a resumed 2-process run is bit-identical; distributed batch sharding."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from convlstm_vp.train.checkpoint import load_checkpoint, weights_digest
from convlstm_vp.train.distributed import dataset_batch_indices

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- batch sharding
def test_dataset_batches_are_disjoint_across_ranks_and_cover_each_epoch() -> None:
    n, batch, world, seed = 50, 4, 2, 3
    per_epoch = (n // world) // batch  # 6 batches per rank and epoch
    for epoch in range(2):
        seen: list[int] = []
        for rank in range(world):
            for k in range(per_epoch):
                idx = dataset_batch_indices(n, batch, epoch * per_epoch + k, seed, rank, world)
                assert len(idx) == batch and all(0 <= i < n for i in idx)
                seen += idx
        assert len(seen) == len(set(seen)) == per_epoch * batch * world  # no sample twice per epoch
    first = [dataset_batch_indices(n, batch, k, seed, 0, world) for k in range(per_epoch)]
    second = [dataset_batch_indices(n, batch, per_epoch + k, seed, 0, world) for k in range(per_epoch)]
    assert first != second  # each epoch is reshuffled
    # a pure function of its arguments: what a resumed run draws again
    assert dataset_batch_indices(n, batch, 7, seed, 1, world) == dataset_batch_indices(n, batch, 7, seed, 1, world)
    assert dataset_batch_indices(n, batch, 7, seed + 1, 1, world) != dataset_batch_indices(n, batch, 7, seed, 1, world)


def test_dataset_batches_when_a_shard_is_smaller_than_a_batch() -> None:
    for step in range(5):
        idx = dataset_batch_indices(5, 8, step, 0, 1, 2)
        assert len(idx) == 8 and set(idx) <= set(range(5))


# ----------------------------------------------------------------------------- torchrun
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# a 4-channel model trained on the CPU, one thread per rank, batches of 2
_TINY_CPU = [
    "train.num_threads=1", "train.precision=fp32", "train.device=cpu", "train.progress=false",
    "model.hidden_channels=[4]", "log.examples=1", "train.batch_size=2",
]  # fmt: skip


def _torchrun(
    run_dir: Path, overrides: list[str], resume: bool = False, script: Path | None = None
) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(script or ROOT / "scripts" / "train_moving_mnist.py"),
        "--config", str(ROOT / "configs" / "tiny-moving-mnist.yaml"), "--run-dir", str(run_dir),
    ]  # fmt: skip
    for o in overrides:
        cmd += ["--set", o]
    if resume:
        cmd.append("--resume")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(p: subprocess.Popen) -> str:
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out
    return out


def _check_rank0_only_outputs(run_dir: Path) -> dict:
    """Rank 0 wrote one event file, the checkpoints, metrics.json and the predictions; both ranks' weights agree."""
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    events = [f for f in files if f.startswith("events.out.tfevents.")]
    assert len(events) == 1, files  # a second writer would add its own event file
    assert sorted(set(files) - set(events)) == [
        ".lock",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "config.yaml",
        "metrics.json",
        "predictions.gif",
        "predictions.png",
    ]  # .lock: rank 0's run-folder lock
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["world_size"] == 2 and len(last["rng_ranks"]) == 2
    # every rank hashed its own final weights: they are identical, and equal to the checkpoint's
    assert len(metrics["weights_sha256"]) == 2
    assert metrics["weights_sha256"][0] == metrics["weights_sha256"][1] == weights_digest(last["model"])
    return last


def test_two_process_training_agrees_and_resumes_exactly(tmp_path: Path) -> None:
    steps = 6
    overrides = _TINY_CPU + [
        "model.input_frames=4", "model.output_frames=4", "data.val_sequences=4", "data.eval_batch_size=4",
        f"train.steps={steps}", "train.checkpoint_every=2", "train.eval_every=3",
        # the coin flips of scheduled sampling come from each rank's own RNG stream
        "model.scheduled_sampling=[1.0,0.0,4]",
    ]  # fmt: skip
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    p = _torchrun(full, overrides)
    # keep the first intermediate checkpoint of the full run as the start of a resumed run
    last = full / "checkpoints" / "last.pt"
    t0 = time.time()
    while not last.exists():
        assert p.poll() is None, p.communicate()[0]
        assert time.time() - t0 < 240
        time.sleep(0.005)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(last, resumed / "checkpoints" / "last.pt")
    out = _wait(p)
    assert out.count("test: ") == 1  # only rank 0 reports

    start = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert 0 < start["step"] < steps
    final_full = _check_rank0_only_outputs(full)
    assert final_full["step"] == steps

    _wait(_torchrun(resumed, overrides, resume=True))
    final_resumed = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert final_resumed["step"] == steps
    for k, v in final_full["model"].items():
        assert torch.equal(v, final_resumed["model"][k]), k
    assert json.loads((resumed / "metrics.json").read_text())["weights_sha256"][0] == weights_digest(
        final_full["model"]
    )


_PROBE = """
import gc, json, os, sys
gc.disable()  # only explicit collections: what the loop frees itself, not what a collection happens to
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel
import convlstm_vp.train.loop as loop
from convlstm_vp.train.cli import run_training
from convlstm_vp.train.tasks.frames import DEFAULTS, MovingMNISTTask

_cleanup = loop.cleanup_distributed

def probe(info):
    seen = {"ddp_alive": sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()),
            "group_initialized": tdist.is_initialized()}
    _cleanup(info)
    seen["group_after"] = tdist.is_initialized()
    with open(os.path.join(os.environ["PROBE_DIR"], f"rank{info.rank}.json"), "w") as f:
        json.dump(seen, f)

loop.cleanup_distributed = probe
run_training(sys.argv[1:], "", DEFAULTS, MovingMNISTTask)
"""


def test_ranks_free_the_ddp_wrapper_before_tearing_the_process_group_down(tmp_path: Path, monkeypatch) -> None:
    """The DDP wrapper (a reference cycle, holding the process group through its reducer) is gone
    when the group is destroyed, even with the cyclic collector off: the group is not left to be
    freed by a collection during interpreter shutdown."""
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    monkeypatch.setenv("PROBE_DIR", str(tmp_path))
    overrides = _TINY_CPU + [
        "model.input_frames=2", "model.output_frames=2", "data.val_sequences=2", "data.eval_batch_size=2",
        "train.steps=2", "train.checkpoint_every=2", "train.eval_every=2",
    ]  # fmt: skip
    _wait(_torchrun(tmp_path / "run", overrides, script=script))
    for rank in range(2):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen == {"ddp_alive": 0, "group_initialized": True, "group_after": False}, (rank, seen)
