"""Shared command-line handling for the training scripts (kept here so scripts stay short)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError
from .config import ConfigError, config_error, load_config


def train_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoints/last.pt")
    p.add_argument("--run-dir", help="output folder (default: runs/<name>)")
    return p


def run_training(
    argv: Sequence[str] | None,
    description: str,
    defaults: dict[str, Any],
    make_task: Callable[[dict], Any],
) -> dict:
    """Parse arguments, load the config, build the task and call :func:`fit`; print the result.

    Exit status: 2 for a bad config, a missing data file or a bad checkpoint (one line on
    stderr, no traceback); 3 when training stopped on a NaN/Inf loss (``train.nan_policy=stop``);
    128 + N after signal N (SIGINT, SIGTERM) once the checkpoint is saved.
    """
    from .loop import NonFiniteLossError, fit

    args = train_parser(description).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, defaults, args.overrides)
        run_dir = Path(args.run_dir or Path("runs") / cfg["name"])
        try:
            task = make_task(cfg)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, (ConfigError, CheckpointError)):
                raise
            raise config_error(exc, cfg, "setting up the task") from exc
        metrics = fit(task, cfg, run_dir, resume=args.resume)
    except (ConfigError, CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 reports
        return metrics
    print(f"run folder: {run_dir}")
    print("final evaluation: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics
