"""Helpers shared by the test files: run a script of scripts/ in this process or as a subprocess."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _in_process(script: str):
    """The function a thin script in scripts/ runs (None: run the script as a subprocess)."""
    from convlstm_vp.train import evaluate, predict
    from convlstm_vp.train.cli import train_frames

    return {
        "scripts/train_moving_mnist.py": train_frames,
        "scripts/evaluate.py": evaluate.main,
        "scripts/predict.py": predict.main,
    }.get(script)


def run_script(script: str, *args: str, cwd: Path = ROOT, ok: bool = True) -> subprocess.CompletedProcess:
    """Run ``script`` with ``args``; the training, evaluate and predict scripts run in this process
    (their entry points as subprocesses are tested in test_cli.py and the reliability tests),
    others as a subprocess. ``ok``: assert that it exited with status 0."""
    main = _in_process(script) if cwd == ROOT else None
    if main is None:
        cmd = [sys.executable, script, *args]
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    else:
        res = run_main(main, *args, ok=False)
    if ok:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def run_main(main, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """``main(args)`` in this process, its output and exit status as a subprocess's would be."""
    out, err, status = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            ret = main(list(args))
            status = ret if isinstance(ret, int) else 0
        except SystemExit as exc:  # as the interpreter reports it
            status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
    res = subprocess.CompletedProcess(
        [getattr(main, "__name__", "main"), *args], status, out.getvalue(), err.getvalue()
    )
    if ok:
        assert res.returncode == 0, res.stdout + res.stderr
    return res
