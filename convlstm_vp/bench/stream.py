"""Streaming prediction speed: frames/s and latency per frame in PyTorch and onnxruntime.

    python scripts/benchmark_stream.py --config configs/cpu-quick.yaml --config default \
        --json stream.json

For each config the frame-prediction model is built (seed 0, untrained: the weights do not
change the work) and fed random 1-sequence frames of the config's size one at a time:

- PyTorch: ``model.stream(horizon=output_frames)`` (``implementation="auto"``, fp32): after the
  ``input_frames - 1`` warm-up pushes, every timed push is one encoder step plus the forecast.
- onnxruntime: the ``step`` export (``convlstm_vp.export``) on a CPU session, the state fed back.

The two alternate frame by frame, so that a shared machine's load falls on both alike.

Both run on ``--threads`` threads (torch and onnxruntime). Also reported: the file size of both
exports, and the largest absolute difference between onnxruntime and PyTorch over the timed
frames (step form) and for one clip (forecast form).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..export import export_forecaster, onnx_session
from ..models.streaming import zero_state


def _summary(seconds: list[float]) -> dict:
    ms = sorted(s * 1e3 for s in seconds)
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": ms[int(0.9 * (len(ms) - 1))],
        "frames_per_s": len(ms) / (sum(ms) / 1e3),
    }


def _build(config: str):
    from ..train.config import load_config
    from ..train.tasks.frames.inference import DEFAULTS, build_model

    cfg = load_config(None if config == "default" else config, DEFAULTS)
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg


def bench_config(config: str, frames: int, folder: Path) -> dict:
    """Time one config's model (module docstring); ``folder`` receives the exports."""
    model, cfg = _build(config)
    c, (h, w), horizon = (
        cfg["data"]["channels"],
        cfg["data"]["size"],
        model.output_frames,
    )
    temperature = cfg["model"]["eval_filter_temperature"]
    clip = torch.rand(1, model.input_frames - 1 + frames, c, h, w)
    step = export_forecaster(model, folder / "step.onnx", (h, w), form="step", filter_temperature=temperature)
    whole = export_forecaster(model, folder / "forecast.onnx", (h, w), filter_temperature=temperature)
    session = onnx_session(step, torch.get_num_threads())
    names = [i.name for i in session.get_inputs()]
    state = [x.numpy() for hc in zero_state(model, clip[:, 0]) for x in hc]
    stream = model.stream(horizon, filter_temperature=temperature)
    torch_times, ort_times, worst_step = [], [], 0.0
    for t in range(clip.shape[1]):  # the two runtimes alternate frame by frame: the same load on both
        t0 = time.perf_counter()
        want = stream.push(clip[:, t])
        t1 = time.perf_counter()
        got, *state = session.run(None, dict(zip(names, [clip[:, t].numpy(), *state])))
        t2 = time.perf_counter()
        if want is not None:
            torch_times.append(t1 - t0)
            ort_times.append(t2 - t1)
            worst_step = max(worst_step, float(np.abs(got - want.numpy()).max()))
    context = clip[:, : model.input_frames]
    got = onnx_session(whole, 1).run(None, {"frames": context.numpy()})[0]
    worst_clip = float(np.abs(got - model.predict(context, filter_temperature=temperature).numpy()).max())
    return {
        "config": config,
        "load_average": os.getloadavg()[0],
        "hidden_channels": model.hidden_channels,
        "head": model.head_type,
        "frame": [c, h, w],
        "horizon": horizon,
        "timed_frames": frames,
        "pytorch": _summary(torch_times),
        "onnxruntime": _summary(ort_times),
        "step_onnx_mb": step.stat().st_size / 1e6,
        "forecast_onnx_mb": whole.stat().st_size / 1e6,
        "max_abs_error": {"step": worst_step, "forecast": worst_clip},
    }


def table(rows: list[dict]) -> str:
    """The results as a markdown table."""
    lines = [
        (
            "| model | runtime | median ms/frame | p90 ms | frames/s | export MB (step / forecast) "
            "| max abs error vs PyTorch |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        layers = f"{len(r['hidden_channels'])}x{r['hidden_channels'][0]}"
        name = f"{r['config']} ({layers}, {r['head']})"
        err = r["max_abs_error"]
        extra = {
            "pytorch": " | |",
            "onnxruntime": f" | {r['step_onnx_mb']:.2f} / {r['forecast_onnx_mb']:.2f} "
            f"| step {err['step']:.1e}, forecast {err['forecast']:.1e} |",
        }
        for runtime in ("pytorch", "onnxruntime"):
            s = r[runtime]
            lines.append(
                f"| {name} | {runtime} | {s['median_ms']:.2f} | {s['p90_ms']:.2f} "
                f"| {s['frames_per_s']:.1f}{extra[runtime]}"
            )
    return "\n".join(lines)


def main(argv=None, prog: str | None = None) -> list[dict]:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        action="append",
        default=None,
        help="a frame-prediction config, or 'default' (the 3x64 model); repeatable (default: cpu-quick and default)",
    )
    p.add_argument("--frames", type=int, default=50, help="timed frames after the warm-up")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.config or ["configs/cpu-quick.yaml", "default"]:
            rows.append(bench_config(config, args.frames, Path(tmp)))
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows
