"""Crash-safe checkpoints: atomic writes, safe loading, complete RNG state.

A checkpoint is a plain dict of tensors and Python primitives, written with ``torch.save`` to a
temporary file in the same folder, flushed and fsync'ed, then renamed over the old file (an
atomic replace on POSIX), so a crash or a failed write leaves the previous file as it was.
Loading uses ``torch.load(weights_only=True)``, which never executes code from the file; a
truncated, corrupted or foreign file is a :class:`CheckpointError` that names it.

Keys written by :func:`convlstm_vp.train.fit`: ``format``, ``model``, ``optimizer``,
``scheduler``, ``scaler``, ``step``, ``best_score``, ``skipped``, ``config``, ``world_size``,
``rng`` (rank 0's torch/CUDA/numpy/python RNG states) and, under torchrun, ``rng_ranks`` (every
rank's).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import check_resume_config
from .distributed import DistInfo, agree_on_signal, gather_objects, rank_seed
from .state import NonFiniteLossError, TrainingState

FORMAT = "convlstm_vp.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or not a convlstm_vp checkpoint."""


def _umask() -> int:
    """The process umask (read by setting it and setting it back: the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (tmp file + fsync + rename + fsync of the folder)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the target, not the temporary file that could not be made
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    try:
        # mkstemp creates the file 0600; a run's files get the mode any new file gets (0666 less the umask)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not exc.filename:  # name the file a full disk failed to take
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class RunFolderInUse(RuntimeError):
    """Another live process trains into the same run folder."""


@contextlib.contextmanager
def run_folder_lock(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (created if missing) while the block runs.

    The lock is an OS file lock (``flock``) on ``run_dir/.lock``, which holds the owner's PID: the
    kernel releases it when its process ends, even by SIGKILL, so ``--resume`` after a kill just
    works, while a second live process on the same folder gets :class:`RunFolderInUse` naming the
    folder and the holder's PID, before it touches any file there.
    """
    if not enabled:
        yield
        return
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderInUse(
                f"run folder {run_dir} is in use by another training process (PID {holder}); "
                "wait for it to finish, or choose another --run-dir / name"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented JSON that every parser accepts: NaN and +/-Inf (which ``json.dumps``
    writes as the non-standard ``NaN``/``Infinity``) become ``null``."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), indent=2, allow_nan=False).encode()


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_write_bytes` left in ``folder``."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def capture_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy's global generator and Python's ``random``."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def weights_digest(state_dict: dict[str, Any]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors (in name order)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomically save ``payload`` (model/optimizer/... state dicts, step, config) with RNG states."""
    payload = dict(payload)
    payload["format"] = FORMAT
    payload.setdefault("rng", capture_rng_state())
    atomic_torch_save(payload, path)


def _check_integrity(path: Path) -> None:
    """Raise :class:`CheckpointError` when a member of the checkpoint's zip archive fails its CRC-32.

    ``torch.save`` stores every tensor as a zip member with its CRC, but ``torch.load`` does not
    check them: flipped bytes inside a tensor's data would load as a silently changed weight.
    A file that is not a zip archive is left to ``torch.load``, whose error says what is wrong.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):
        return
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {path} is corrupted: its member {bad!r} fails the CRC-32 check "
            "(the file changed after it was written)"
        )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; raise :class:`CheckpointError` with the reason if it is bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"could not read checkpoint {path}: the file is empty")
    _check_integrity(path)
    try:
        with warnings.catch_warnings():  # e.g. a foreign pickle protocol; the error below says more
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, unsafe global, ...
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"could not read checkpoint {path}: it is truncated, corrupted or holds objects other than "
            f"tensors and plain data ({type(exc).__name__}: {first_line})"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a convlstm_vp checkpoint (expected a dict with format={FORMAT!r})")
    for key in ("model", "step", "config"):
        if key not in obj:
            raise CheckpointError(f"checkpoint {path} lacks the key {key!r}")
    check_loaded(obj, path)
    return obj


def check_loaded(ck: dict[str, Any], path: str | Path) -> None:
    """CheckpointError naming ``path`` when checkpoint ``ck``'s config is not a mapping, its
    model is not a state dict of tensors, or a weight is NaN/Inf (training never saves such
    weights; a file that holds them was made elsewhere, and would predict NaN)."""
    if not isinstance(ck["config"], dict):
        kind = type(ck["config"]).__name__
        raise CheckpointError(f"checkpoint {path}: its 'config' is a {kind}, expected a mapping of config keys")
    model = ck["model"]
    if not isinstance(model, dict) or not all(isinstance(t, torch.Tensor) for t in model.values()):
        raise CheckpointError(f"checkpoint {path}: its 'model' is not a state dict of tensors")
    bad = [name for name, t in model.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(f"checkpoint {path}: the weights {', '.join(bad[:3])}{more} hold NaN/Inf values")


def seed_everything(seed: int) -> None:
    """Seed torch, numpy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class Checkpointer:
    """Saves and restores a run's ``checkpoints/last.pt`` and ``best.pt``.

    A checkpoint holds the model, optimizer, scheduler and scaler states, the
    :class:`~convlstm_vp.train.state.TrainingState`, the config, the task's ``checkpoint_state()``
    when it has one, and the RNG states (of every rank under torchrun, so that a resumed
    multi-process run is bit-exact too). Weights that became NaN/Inf are never saved: the save
    raises :class:`~convlstm_vp.train.state.NonFiniteLossError` and the last good file stays.
    """

    def __init__(
        self,
        run_dir: Path,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
        state: TrainingState,
        cfg: dict,
        task: Any,
        dist: DistInfo,
    ) -> None:
        folder = Path(run_dir) / "checkpoints"
        self.last_path, self.best_path = folder / "last.pt", folder / "best.pt"
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.state, self.cfg, self.task, self.dist = state, cfg, task, dist

    def save(self, path: Path, all_ranks: bool = True) -> None:
        """Rank 0 writes ``path`` at the state's step; with ``all_ranks`` (every rank calls) it
        holds every rank's RNG states.

        Weights that became NaN/Inf (a finite loss and gradient can still step them there, e.g.
        with a huge learning rate) stop the run before anything is written (DDP ranks agree: the
        weights are the same on every rank)."""
        step = self.state.step
        bad = [
            n for n, t in self.model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
        ]
        if bad:
            raise NonFiniteLossError(
                f"the weights became NaN/Inf by step {step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                f"{path.name} was not written and the last good checkpoint is kept at {self.last_path}; lower train.lr"
            )
        rng_ranks = gather_objects(capture_rng_state(), self.dist) if all_ranks and self.dist.world_size > 1 else None
        if self.dist.rank != 0:
            return
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            **self.state.state_dict(),
            "config": self.cfg,
            "world_size": self.dist.world_size,
        }
        if hasattr(self.task, "checkpoint_state"):  # what applying the model later needs (classes, statistics)
            payload["task_state"] = self.task.checkpoint_state()
        if rng_ranks is not None:
            payload["rng"], payload["rng_ranks"] = rng_ranks[0], rng_ranks
        save_checkpoint(path, payload)

    def stop_on_signal(self, signum: int | None, flush: Any) -> None:
        """When any rank received a signal (``signum`` here): save ``last.pt``, ``flush()`` the
        logs and raise ``SystemExit(128 + signum)``."""
        signum = agree_on_signal(signum, self.dist)
        if signum is None:
            return
        self.save(self.last_path)
        flush()
        if self.dist.rank == 0:
            name = signal.Signals(signum).name
            print(
                f"{name}: saved checkpoint at step {self.state.step} to {self.last_path}; continue with --resume",
                file=sys.stderr,
                flush=True,
            )
        raise SystemExit(128 + signum)

    def resume(self, seed: int) -> None:
        """Restore everything ``last.pt`` holds; CheckpointError naming the file when it is missing
        or does not fit this config's model and optimizer."""
        path = self.last_path
        if not path.is_file():
            raise CheckpointError(f"--resume: no checkpoint to resume from at {path}")
        ck = load_checkpoint(path)
        check_resume_config(ck["config"], self.cfg, path)
        self._restore_training(ck)
        self.state.load_state_dict(ck)
        self._restore_rank_rng(ck, seed)

    def _restore_training(self, ck: dict) -> None:
        """Load model/optimizer/scheduler/scaler states from checkpoint ``ck``."""
        path, tc = self.last_path, self.cfg["train"]
        saved_steps = ck.get("config", {}).get("train", {}).get("steps")
        if tc["schedule"] == "onecycle" and saved_steps is not None and saved_steps != tc["steps"]:
            raise CheckpointError(
                f"--resume: {path} was written by a run with train.steps={saved_steps}, this config has "
                f"train.steps={tc['steps']}; the onecycle schedule cannot change length (use "
                f"train.schedule=cosine or constant to extend a run)"
            )
        try:
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.scheduler.load_state_dict(ck["scheduler"])
            if "scaler" in ck:
                self.scaler.load_state_dict(ck["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"--resume: {path} does not match the model or optimizer of this config "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
            ) from exc

    def _restore_rank_rng(self, ck: dict, seed: int) -> None:
        """Restore this rank's RNG states.

        A checkpoint written with the same number of processes holds every rank's states, so the
        resumed run is exact. Otherwise rank 0 gets the saved states, the other ranks fresh streams
        (the run goes on correctly but is not bit-identical to an uninterrupted one).
        """
        dist = self.dist
        states = ck.get("rng_ranks")
        if states is not None and len(states) == dist.world_size:
            restore_rng_state(states[dist.rank])
            return
        restore_rng_state(ck["rng"])
        saved_world = int(ck.get("world_size", 1))
        if dist.rank:
            seed_everything(rank_seed(seed + int(ck["step"]), dist.rank))
        if saved_world != dist.world_size and dist.rank == 0:
            print(
                f"note: {self.last_path} was written by {saved_world} process(es), this run has {dist.world_size}; "
                f"training continues, but not bit-identically to an uninterrupted run",
                file=sys.stderr,
            )

    def load_best_weights(self) -> int | None:
        """Load ``best.pt``'s weights into the model (in place, so that code compiled for it, and
        CUDA graphs pointing at its parameters, serve the test too) and put it in eval mode;
        returns best.pt's step, or None (weights untouched) when there is no ``best.pt``."""
        if not self.best_path.is_file():
            return None
        ck = load_checkpoint(self.best_path)
        self.model.load_state_dict(ck["model"])
        self.model.eval()
        return int(ck["step"])
