"""Shared command-line handling for the training scripts and ``convlstm-vp train`` (kept here so scripts stay short)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..data.safe_io import InputError
from .checkpoint import CheckpointError, RunFolderInUse
from .config import ConfigError, config_error, load_config


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def add_render_arguments(p: argparse.ArgumentParser) -> None:
    """``--render`` and ``--filter-temperature``: how a frame model's predictions are rendered
    (``evaluate`` and ``predict``); :func:`check_render_arguments` checks them once parsed."""
    p.add_argument(
        "--render",
        choices=["filter", "warp"],
        default="filter",
        help="how a dynamic-filter model renders its frames: filter each previous prediction (default, as "
        "trained) or warp: move a displacement field with the same kernels and sample the last input once",
    )
    p.add_argument(
        "--filter-temperature",
        type=float,
        default=None,
        help="softmax temperature of the filter kernels; below 1 sharpens them (default: the config's "
        "model.eval_filter_temperature, 1 unless set)",
    )


def check_render_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error unless ``--filter-temperature`` is unset or a finite number > 0."""
    if args.filter_temperature is not None and not 0 < args.filter_temperature < float("inf"):
        p.error(f"--filter-temperature: expected a finite number > 0, got {args.filter_temperature}")


def int_between(low: int, high: int) -> Callable[[str], int]:
    """argparse type: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        value = _int_at_least(text, low)
        if value > high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {value}")
        return value

    parse.__name__ = f"integer {low}-{high}"
    return parse


def fail(message: str) -> NoReturn:
    """Print ``error: message`` (one line) and exit with status 2, the status of every input or
    usage error (docs/reliability.md, "Exit statuses")."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


def _probe_writable(folder: Path, flag: str) -> None:
    """Create the missing parts of ``folder`` and check that a file can be created in it."""
    import tempfile

    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        fail(f"{flag}: cannot create the output folder {folder}: {existing} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{flag}: cannot create the output folder {folder} ({exc.strerror or exc})")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        fail(f"{flag}: cannot write into the folder {folder} ({exc.strerror or exc})")


def check_output_file(path: str | Path, flag: str) -> Path:
    """Before any work: ``path`` is not a folder, and its folder exists (or is created) and
    takes a new file; else a one-line error (status 2) naming ``flag`` and the path."""
    path = Path(path)
    if path.is_dir():
        fail(f"{flag} {path} is a folder; expected a file name")
    if path.exists() and not os.access(path, os.W_OK):
        fail(f"{flag} {path}: the file exists and is not writable")
    _probe_writable(path.parent, flag)
    return path


def check_output_folder(path: str | Path, flag: str) -> Path:
    """Before any work: ``path`` is a folder (or is created) that takes new files; else a
    one-line error (status 2) naming ``flag`` and the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        fail(f"{flag} {path} is a file; expected a folder")
    _probe_writable(path, flag)
    return path


def train_parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=100 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoints/last.pt")
    p.add_argument("--run-dir", help="output folder (default: runs/<name>)")
    return p


def run_training(
    argv: Sequence[str] | None,
    description: str,
    defaults: dict[str, Any],
    make_task: Callable[[dict], Any],
    prog: str | None = None,
) -> dict:
    """Parse arguments, load the config, build the task and call :func:`fit`; print the result.

    Exit status: 2 for a bad config, a missing data file, a bad checkpoint or a run folder that
    another live process trains into (one line on stderr, no traceback); 3 when training stopped on a NaN/Inf loss (``train.nan_policy=stop``);
    128 + N after signal N (SIGINT, SIGTERM) once the checkpoint is saved.
    """
    from .loop import NonFiniteLossError, fit

    args = train_parser(description, prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, defaults, args.overrides)
        run_dir = Path(args.run_dir or Path("runs") / cfg["name"])
        try:
            task = make_task(cfg)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, (ConfigError, CheckpointError, InputError)):  # they name their key or file
                raise
            raise config_error(exc, cfg, "setting up the task") from exc
        metrics = fit(task, cfg, run_dir, resume=args.resume)
    except (ConfigError, CheckpointError, InputError, FileNotFoundError, RunFolderInUse) as exc:
        fail(str(exc))
    except OSError as exc:  # a full disk, a read-only or vanished run folder, ...
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}; the files written before it (the last checkpoint) are intact")
    except NonFiniteLossError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(3) from None
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 reports
        return metrics
    print(f"run folder: {run_dir}")
    scores = ", ".join(
        f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float) and k != "final_evaluation_seconds"
    )
    print(f"test: {scores}")
    on = metrics.get("evaluated_on")
    if isinstance(on, dict):
        print(
            f"  on: {on['what']}"
            + (f" ({on['checkpoint']} of step {on['checkpoint_step']})" if "checkpoint" in on else "")
        )
    val = metrics.get("validation")
    if isinstance(val, dict) and isinstance(val.get("metrics"), dict):
        score = val["metrics"].get(val["best_metric"])
        print(
            f"chosen on validation: {val['best_metric']}={score:.4f} at step {val['best_step']} ({val['what']})"
            + (f"; stopped early at step {metrics['step']} (train.patience)" if metrics.get("stopped_early") else "")
        )
    return metrics


# ---------------------------------------------------------------------------- training jobs
# ``convlstm-vp train JOB ...`` and the training scripts run these (the scripts pass their own
# docstring as the help text). Each job: (task module, one-line summary).
TRAIN_JOBS: dict[str, tuple[str, str]] = {
    "frames": (
        "frames",
        "frame prediction with the ConvLSTM encoder-forecaster on Moving MNIST or your videos (data.dataset; scripts/train_moving_mnist.py)",
    ),
    "patches": (
        "patch_classifier",
        "MNIST digits read as sequences of 7x7 patches, classified (scripts/train_patch_classifier.py)",
    ),
    "patch-completion": (
        "patch_completion",
        "complete MNIST digits from their first 8 patches (scripts/complete_patches.py)",
    ),
    "sensors": (
        "sensors",
        "DeepConvLSTM on sensor windows or series: BasicMotions, OPPORTUNITY, aeon:<Name>, .ts, .npz, .csv (scripts/train_deepconvlstm.py)",
    ),
}


def train_frames(argv: Sequence[str] | None, description: str | None = None, prog: str | None = None) -> dict:
    from .tasks.frames import DEFAULTS, FramePredictionTask

    return run_training(argv, description or TRAIN_JOBS["frames"][1], DEFAULTS, FramePredictionTask, prog)


def train_patches(argv: Sequence[str] | None, description: str | None = None, prog: str | None = None) -> dict:
    from .tasks.patch_classifier import DEFAULTS, PatchClassifierTask

    metrics = run_training(argv, description or TRAIN_JOBS["patches"][1], DEFAULTS, PatchClassifierTask, prog)
    print(f"test accuracy: {metrics['accuracy']:.4f}")
    print("per-class recall: " + ", ".join(f"{k}: {r:.3f}" for k, r in enumerate(metrics["per_class_recall"])))
    return metrics


def train_patch_completion(argv: Sequence[str] | None, description: str | None = None, prog: str | None = None) -> dict:
    from .tasks.patch_completion import DEFAULTS, PatchCompletionTask

    tasks: list[PatchCompletionTask] = []

    def make_task(cfg: dict) -> PatchCompletionTask:
        tasks.append(PatchCompletionTask(cfg))
        return tasks[-1]

    metrics = run_training(argv, description or TRAIN_JOBS["patch-completion"][1], DEFAULTS, make_task, prog)
    if tasks and tasks[-1].image_path is not None:
        print(f"reassembled digits: {tasks[-1].image_path}")
    return metrics


def train_sensors(argv: Sequence[str] | None, description: str | None = None, prog: str | None = None) -> dict:
    from .tasks.sensors import DEFAULTS, SensorTask

    return run_training(argv, description or TRAIN_JOBS["sensors"][1], DEFAULTS, SensorTask, prog)


_JOB_FUNCTIONS = {
    "frames": train_frames,
    "patches": train_patches,
    "patch-completion": train_patch_completion,
    "sensors": train_sensors,
}


def train_main(argv: Sequence[str] | None = None, prog: str = "convlstm-vp train") -> int:
    """``convlstm-vp train JOB --config CONFIG [--set k=v ...] [--resume] [--run-dir DIR]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = f"usage: {prog} {{{','.join(TRAIN_JOBS)}}} --config CONFIG [--set KEY=VALUE ...] [--resume] [--run-dir DIR]"
    if not argv or argv[0] in ("-h", "--help"):
        lines = [usage, "", "jobs:"] + [f"  {name:<17} {summary}" for name, (_, summary) in TRAIN_JOBS.items()]
        lines += ["", f"'{prog} JOB --help' lists a job's options."]
        print("\n".join(lines), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    if job not in _JOB_FUNCTIONS:
        print(f"{usage}\n{prog}: error: unknown job {job!r}; choose from {', '.join(TRAIN_JOBS)}", file=sys.stderr)
        return 2
    _JOB_FUNCTIONS[job](rest, None, f"{prog} {job}")
    return 0
