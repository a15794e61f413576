"""Benchmark the ConvLSTM layer and models against a classic reference, torch.nn.LSTM and Keras.

For every configuration the script times, case by case and interleaved (round-robin, median
over rounds, so a noisy shared machine slows every case alike):

  forward            the model in eval mode under ``torch.no_grad()``;
  forward+backward   a training step: forward in train mode, loss, backward.

(``--clock cpu`` with ``--threads 1``: the process's CPU time instead of wall time, which a
machine shared with other jobs stretches unevenly) and reports sequences/s, achieved GFLOP/s (analytic convolution / matrix-product FLOPs, below),
the fraction of this machine's own convolution peak (a large ``conv2d`` measured in the same
run, per precision) and the peak memory of one training step.

Configurations (``--configs``):
  moving_mnist     the default Moving MNIST encoder-forecaster (hidden 64,64,64, kernel 3,
                   patch 4 → 16x16x16 frames, 10+10 frames, batch 16);
  patch            the 7x7 patch classifier (16 steps of 1x7x7 patches, hidden 32, batch 64);
  deepconvlstm     the DeepConvLSTM recurrence (OPPORTUNITY paper shapes: 8 steps of
                   64x113 = 7232 features, 2x128 LSTM, dropout 0.5, batch 100): the project's
                   rank-0 layer against torch.nn.LSTM; plus the whole model;
  layer            one ConvLSTM2D layer (B=8, T=20, 16x16x16 → 64, kernel 5), where Keras
                   ConvLSTM2D (torch backend) is compared when keras is installed;
  openstl          OpenSTL ConvLSTM-S shapes (4x128, kernel 5, 16x16x16, batch 16); CUDA only
                   unless named.

Cases: the project's model (``implementation="auto"``) in fp32 and in bf16 autocast, with
variants that switch single fast paths (CPU) or run the eager and per-step-compiled paths
instead of "graphed", the one "auto" takes on CUDA (CUDA); "reference": a straightforward ConvLSTM written below
(one convolution over the concatenated [x, h] per step, fp32, NCHW), the classic
implementation; torch.nn.LSTM for rank 0; Keras ConvLSTM2D when importable.

FLOPs (multiply-add = 2 FLOPs), counted analytically, elementwise gate arithmetic not counted:
  convolution  2 · B · prod(spatial_out) · C_out · C_in · prod(kernel)
  linear       2 · B · out_features · in_features
  ConvLSTM step: the input-to-state convolution (C_in → 4H) plus the state-to-state one
  (H → 4H) at every step (the step from a zero state counts too, whether or not an
  implementation skips it); a training step counts 3x the forward FLOPs (forward, gradient of
  the input, gradient of the weights). GFLOP/s = these FLOPs / measured time.

Peak memory of one training step: CUDA: ``torch.cuda.max_memory_allocated`` minus the memory
allocated before the step. CPU (``--memory subprocess``, the default): every case runs once in
a fresh subprocess and reports its peak resident set (VmHWM, or ru_maxrss) during the first
training step minus the resident set before it. ``--memory inprocess`` (the default with
--quick) resets the peak counter (/proc/self/clear_refs) in this process instead: faster, but
memory the allocator kept from earlier cases is not counted again, so it can read low.

Floors (what the project promises, per kind of machine: the CPU's kind, "amx", "avx512_bf16",
"avx512", "avx2" or "other", from /proc/cpuinfo, or "cuda"; ratios are medians of per-round
ratios of adjacent timings, the project at implementation "auto"; :data:`FLOORS`):
  CPUs with native bf16 (amx, avx512_bf16), both sides at the same precision:
    moving_mnist  bf16 training step >= 1.5x the reference's, and >= 40% of the bf16 peak;
    layer         bf16 training step >= 50% of the bf16 peak;
    patch         bf16 training step >= 1.5x the reference's;
    deepconvlstm  rank-0 layer's bf16 training-step time <= 1.1x torch.nn.LSTM's;
  CPUs without native bf16 (avx512, avx2, other):
    moving_mnist  fp32 training step >= 1.1x the reference's;
  every CPU: deepconvlstm  rank-0 layer's fp32 training-step time <= 1.2x torch.nn.LSTM's;
  CUDA: moving_mnist >= 1.2x and openstl >= 1.5x the reference's fp32 training throughput.

Example (the README's table; ``convlstm-vp benchmark ...`` and ``python -m convlstm_vp.bench.run ...``
take the same arguments):
    nice -n -5 python scripts/benchmark.py --threads 1 --json benchmark.json
    python scripts/benchmark.py --quick --json /tmp/bench.json      # a smoke test, seconds

Layout: the reference models are in :mod:`convlstm_vp.bench.reference`, the configurations, cases
and FLOP counts in :mod:`convlstm_vp.bench.cases`; this module times them and reports.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.fast import cpu_kind
from ..train.precision import eval_autocast, resolve_precision
from .cases import BUILDERS, KERAS_STATUS, PRECISIONS, Case, Config, conv_flops


# ============================================================================ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_once(case: Case, cfg: Config, device: torch.device, x: Tensor) -> None:
    model = case.model
    model.eval()
    with torch.no_grad(), eval_autocast(device, case.precision):
        model(x)


def train_once(case: Case, cfg: Config, device: torch.device, x: Tensor, y: Tensor) -> None:
    model = case.model
    model.train()
    for p in model.parameters():
        p.grad = None
    with eval_autocast(device, case.precision):
        out = model(x)
    cfg.loss(out, y).backward()


def _timed(fn: Callable[[], None], device: torch.device, inner: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per call, over ``inner`` calls."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(inner):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / inner, (time.process_time() - c0) / inner


CLOCK = {"which": "wall"}  # "cpu": timings are this process's CPU time (--clock cpu)


def _clock(wall: float, cpu: float) -> float:
    return cpu if CLOCK["which"] == "cpu" else wall


def run_config(
    cfg: Config,
    device: torch.device,
    rounds: int,
    inner: int,
    warmup: int,
    log: Callable[[str], None],
    train_only: bool = False,
) -> None:
    """Time every case of ``cfg``; ``train_only`` skips the forward (eval) timings, and with them
    the compiled cases' second compilation."""
    x, y = cfg.make_inputs(device)
    for case in list(cfg.cases):
        try:
            case.model = case.build().to(device)
            t0 = time.perf_counter()
            # compiled cases: the first call compiles, CUDA graph trees record on the next ones
            for _ in range(max(warmup, 3) if "compiles" in case.note else warmup):
                if not train_only:
                    forward_once(case, cfg, device, x)
                train_once(case, cfg, device, x, y)
            _sync(device)
            case.results["warmup_s"] = time.perf_counter() - t0  # compilation included
            log(f"  {case.name}: warm-up {case.results['warmup_s']:.1f} s")
        except Exception as exc:  # a case that cannot run here is reported, not fatal
            case.results["error"] = f"{type(exc).__name__}: {exc}"
            log(f"  {case.name}: skipped ({case.results['error']})")
            case.model = None
    live = [c for c in cfg.cases if c.model is not None]
    for c in live:
        c.samples = {"fwd": [], "train": [], "fwd_cpu": [], "train_cpu": []}
    for r in range(rounds):
        order = live[r % len(live) :] + live[: r % len(live)]  # rotate the order every round
        for case in order:
            if not train_only:
                w, cpu = _timed(lambda: forward_once(case, cfg, device, x), device, inner)
                case.samples["fwd"].append(_clock(w, cpu))
                case.samples["fwd_cpu"].append(cpu)
            w, cpu = _timed(lambda: train_once(case, cfg, device, x, y), device, inner)
            case.samples["train"].append(_clock(w, cpu))
            case.samples["train_cpu"].append(cpu)
        log(f"  round {r + 1}/{rounds} done")
    for case in live:
        s = case.samples
        train = statistics.median(s["train"])
        case.results.update(
            train_ms=train * 1e3,
            train_cpu_ms=statistics.median(s["train_cpu"]) * 1e3,
            train_seq_per_s=cfg.batch / train,
            train_gflops=3 * cfg.flops_fwd / train / 1e9,
        )
        if s["fwd"]:
            fwd = statistics.median(s["fwd"])
            case.results.update(
                fwd_ms=fwd * 1e3,
                fwd_cpu_ms=statistics.median(s["fwd_cpu"]) * 1e3,
                fwd_seq_per_s=cfg.batch / fwd,
                fwd_gflops=cfg.flops_fwd / fwd / 1e9,
            )


# ============================================================================ memory
def _vm_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_memory_here(
    case: Case, cfg: Config, device: torch.device, x: Tensor, y: Tensor, fresh: bool
) -> float | None:
    """Peak MB of one training step of ``case`` in this process (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        train_once(case, cfg, device, x, y)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    can_reset = _reset_hwm()
    rss = _vm_kb("VmRSS")
    if can_reset and rss is not None:
        train_once(case, cfg, device, x, y)
        hwm = _vm_kb("VmHWM")
        return None if hwm is None else max(hwm - rss, 0) / 1024
    if fresh:  # ru_maxrss is monotonic: only a fresh process gives a meaningful delta
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        train_once(case, cfg, device, x, y)
        return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, 0) / 1024
    return None


def measure_memory(
    cfgs: list[Config], device: torch.device, mode: str, args: argparse.Namespace, log: Callable[[str], None]
) -> None:
    for cfg in cfgs:
        for case in cfg.cases:
            if "error" in case.results or mode == "off":
                continue
            if "compile" in case.note and mode == "subprocess":
                case.results["peak_mem_mb"] = None  # would compile again in the fresh process
                continue
            if mode == "inprocess":
                x, y = cfg.make_inputs(device)
                case.results["peak_mem_mb"] = measure_memory_here(case, cfg, device, x, y, fresh=False)
                continue
            cmd = (
                [
                    sys.executable,
                    "-m",
                    "convlstm_vp.bench.run",
                    "--_memory-case",
                    f"{cfg.name}::{case.name}",
                    "--device",
                    str(device),
                ]
                + (["--quick"] if args.quick else [])
                + (["--threads", str(args.threads)] if args.threads else [])
            )
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=_child_env())
                line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
                case.results["peak_mem_mb"] = json.loads(line)["peak_mem_mb"]
            except Exception as exc:
                case.results["peak_mem_mb"] = None
                log(f"  memory of {cfg.name} / {case.name} failed: {type(exc).__name__}: {exc}")
        log(f"  memory of {cfg.name} measured")


def _child_env() -> dict[str, str]:
    """This process's environment with this copy of the package first on the import path."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else root
    return env


def memory_case_main(spec: str, device: torch.device, quick: bool) -> None:
    """Subprocess entry: build one case, run one training step, print its peak memory as JSON."""
    cfg_name, case_name = spec.split("::", 1)
    cfg = BUILDERS[cfg_name](device, quick)
    case = next(c for c in cfg.cases if c.name == case_name)
    x, y = cfg.make_inputs(device)
    case.model = case.build().to(device)
    print(json.dumps({"peak_mem_mb": measure_memory_here(case, cfg, device, x, y, fresh=True)}))


# ============================================================================ peak
def measure_peak(device: torch.device, quick: bool, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The machine's convolution peak: the best of a few large conv2d forwards (3x3, 5x5, "same"),
    per precision, over NCHW and NHWC memory formats, timed like the cases (median of rounds)."""
    if quick:
        shapes = [(2, 64, 16, 64, 3)]
    elif device.type == "cuda":
        shapes = [(64, 256, 64, 256, 3), (128, 128, 32, 512, 3), (64, 128, 32, 256, 5)]
    else:
        shapes = [(16, 256, 32, 256, 3), (64, 128, 16, 512, 3), (32, 128, 16, 256, 5)]
    out: dict[str, Any] = {}
    for prec in PRECISIONS:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[prec]
        best, best_shape = 0.0, ""
        for b, c, s, o, k in shapes:
            flops = conv_flops(b, s * s, c, o, k * k)
            for fmt, fmt_name in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "NHWC")):
                x = torch.randn(b, c, s, s, device=device, dtype=dtype).contiguous(memory_format=fmt)
                w = torch.randn(o, c, k, k, device=device, dtype=dtype).contiguous(memory_format=fmt)
                with torch.no_grad():
                    for _ in range(2):
                        F.conv2d(x, w, padding=k // 2)
                    inner = 20 if quick else 2
                    times = [
                        _clock(*_timed(lambda: F.conv2d(x, w, padding=k // 2), device, inner))
                        for _ in range(max(rounds, 3))
                    ]
                rate = flops / statistics.median(times) / 1e9
                if rate > best:
                    best, best_shape = rate, f"conv2d x=({b},{c},{s},{s}) w=({o},{c},{k},{k}) {fmt_name}"
        out[prec] = {"gflops": best, "shape": best_shape}
        log(f"  peak {prec}: {best:.1f} GFLOP/s ({best_shape})")
    return out


# ============================================================================ floors
def _paired_ratio(a: Case, b: Case, key: str) -> float | None:
    """Median over rounds of a[key] / b[key] (adjacent timings in the same round)."""
    sa, sb = a.samples.get(key), b.samples.get(key)
    if not sa or not sb:
        return None
    return statistics.median(x / y for x, y in zip(sa, sb))


@dataclass(frozen=True)
class Floor:
    """A speed the project promises on some kinds of machine (:data:`FLOORS`).

    ``measure``: "speedup" (``against``'s training-step time over ``project``'s, at least
    ``required``), "time_ratio" (``project``'s time over ``against``'s, at most ``required``) or
    "peak" (``project``'s training GFLOP/s over the conv2d peak of its precision, at least
    ``required``; ``against`` unused)."""

    config: str
    kinds: tuple[str, ...]  # CPU kinds (convlstm_vp.nn.fast.cpu_kind) or ("cuda",)
    what: str
    project: str
    against: str
    measure: str
    required: float


_BF16 = ("amx", "avx512_bf16")  # CPUs with native bfloat16: the training default is bf16
_NO_BF16 = ("avx512", "avx2", "other")
FLOORS = (
    Floor(
        "moving_mnist",
        _BF16,
        "Moving MNIST training step vs the reference, both bf16",
        "project bf16",
        "reference bf16",
        "speedup",
        1.5,
    ),
    Floor(
        "moving_mnist",
        _BF16,
        "Moving MNIST training step: share of the bf16 conv peak",
        "project bf16",
        "",
        "peak",
        0.40,
    ),
    Floor(
        "layer",
        _BF16,
        "one ConvLSTM2D layer's training step: share of the bf16 conv peak",
        "project bf16",
        "",
        "peak",
        0.50,
    ),
    Floor(
        "patch",
        _BF16,
        "patch classifier training step vs the reference, both bf16",
        "project bf16",
        "reference bf16",
        "speedup",
        1.5,
    ),
    Floor(
        "deepconvlstm",
        _BF16,
        "rank-0 layer training-step time vs torch.nn.LSTM, both bf16",
        "project rank-0 layer bf16",
        "torch.nn.LSTM bf16",
        "time_ratio",
        1.1,
    ),
    Floor(
        "moving_mnist",
        _NO_BF16,
        "Moving MNIST training step vs the reference, both fp32",
        "project fp32",
        "reference fp32",
        "speedup",
        1.1,
    ),
    Floor(
        "deepconvlstm",
        _BF16 + _NO_BF16,
        "rank-0 layer training-step time vs torch.nn.LSTM, both fp32",
        "project rank-0 layer fp32",
        "torch.nn.LSTM fp32",
        "time_ratio",
        1.2,
    ),
    Floor(
        "moving_mnist",
        ("cuda",),
        "training throughput vs the reference cell (fp32)",
        "project",
        "reference fp32",
        "speedup",
        1.2,
    ),
    Floor(
        "openstl",
        ("cuda",),
        "training throughput at OpenSTL's ConvLSTM-S shapes vs the reference cell (fp32)",
        "project",
        "reference fp32",
        "speedup",
        1.5,
    ),
)


def machine_kind(device_type: str) -> str:
    """The kind the floors are chosen by: "cuda", or the CPU's kind."""
    return "cuda" if device_type == "cuda" else cpu_kind()


def _check_floor(f: Floor, cfg: Config, peak: dict[str, Any]) -> dict[str, Any] | None:
    def find(name: str) -> Case | None:
        # "project" alone: the project's row at the training default (role "project")
        hit = (c for c in cfg.cases if (c.name == name or (name == "project" and c.role == "project")))
        return next((c for c in hit if "error" not in c.results and c.samples.get("train")), None)

    proj = find(f.project)
    if proj is None:
        return None
    out: dict[str, Any] = {"config": f.config, "what": f.what, "project": proj.name}
    if f.measure == "peak":
        pk = peak.get(proj.precision, {}).get("gflops")
        measured = proj.results["train_gflops"] / pk if pk else None
        out.update(against=f"{proj.precision} conv2d peak", required=f">= {f.required:.0%}")
        ok = measured is not None and measured >= f.required
    else:
        base = find(f.against)
        if base is None:
            return None
        a, b = (base, proj) if f.measure == "speedup" else (proj, base)
        measured = _paired_ratio(a, b, "train")
        out.update(
            against=base.name,
            cpu_time_ratio=_paired_ratio(a, b, "train_cpu"),
            required=(">= " if f.measure == "speedup" else "<= ") + f"{f.required}x",
        )
        ok = measured is not None and (measured >= f.required if f.measure == "speedup" else measured <= f.required)
    return {**out, "measure": f.measure, "measured": measured, "met": ok}


def floors(
    cfgs: dict[str, Config], device_type: str = "cpu", peak: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The floors of this machine's kind (:func:`machine_kind`) whose cases ran."""
    kind = machine_kind(device_type)
    out = []
    for f in FLOORS:
        if kind in f.kinds and f.config in cfgs:
            checked = _check_floor(f, cfgs[f.config], peak or {})
            if checked is not None:
                out.append(checked)
    return out


def _with_implementation(build: Callable[[], nn.Module], impl: str) -> Callable[[], nn.Module]:
    def built() -> nn.Module:
        from convlstm_vp.nn import set_implementation

        return set_implementation(build(), impl)

    return built


# ============================================================================ report
def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def table(cfg: Config, peak: dict[str, Any]) -> str:
    ref = next((c for c in cfg.cases if c.role in ("reference", "baseline") and "train_ms" in c.results), None)
    same = {c.precision: c for c in cfg.cases if ref is not None and c.impl == ref.impl and "train_ms" in c.results}
    head = (
        "case",
        "fwd ms",
        "fwd+bwd ms",
        "train seq/s",
        "GFLOP/s",
        "% peak",
        "peak MB",
        "speed-up",
        "vs ref same prec",
    )
    rows = []
    for c in cfg.cases:
        r = c.results
        if "error" in r:
            rows.append((c.name, "skipped: " + r["error"][:60], "", "", "", "", "", "", ""))
            continue
        pk = peak.get(c.precision, {}).get("gflops")
        frac = 100 * r["train_gflops"] / pk if pk else None
        speed = _paired_ratio(ref, c, "train") if ref is not None else None
        eq = same.get(c.precision)
        speed_eq = _paired_ratio(eq, c, "train") if eq is not None else None
        rows.append(
            (
                c.name,
                _fmt(r.get("fwd_ms"), ".1f"),
                _fmt(r["train_ms"], ".1f"),
                _fmt(r["train_seq_per_s"], ".1f"),
                _fmt(r["train_gflops"], ".1f"),
                _fmt(frac, ".0f"),
                _fmt(r.get("peak_mem_mb"), ".0f"),
                _fmt(speed, ".2f") + ("x" if speed is not None else ""),
                _fmt(speed_eq, ".2f") + ("x" if speed_eq is not None else ""),
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(v).ljust(w) for v, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [
        f"{cfg.name}: {cfg.description}; {cfg.shapes}; {cfg.flops_fwd / 1e9:.2f} GFLOP forward",
        line(head),
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    out += [line(r) for r in rows]
    if ref is not None:
        out.append(
            f"(speed-up: {ref.name} time / case time, median of per-round ratios; vs ref same prec: the same "
            f"against the {ref.impl} row of the case's precision; % peak: training GFLOP/s over the conv2d peak "
            "of the case's precision)"
        )
    return "\n".join(out)


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "kind": machine_kind(device.type),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _parser(prog: str | None) -> argparse.ArgumentParser:
    """The command line of the benchmark."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one round: a smoke test")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--configs",
        default=None,
        help=f"comma-separated subset of {','.join(BUILDERS)} (default: all but openstl on CPU)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, quick 1)")
    parser.add_argument("--inner", type=int, default=None, help="calls per timing (default: by config size)")
    parser.add_argument("--memory", choices=["auto", "subprocess", "inprocess", "off"], default="auto")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="CPU: add the compiled implementations ('compiled', 'graphed') at the default training "
        "precision (CUDA has them by default)",
    )
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="time training steps only (no forward-only timings; compiled cases compile once)",
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="what the timings measure: wall-clock time, or this process's CPU time (with --threads 1 "
        "on a machine that other jobs share: the work, without the waits for a core)",
    )
    parser.add_argument("--_memory-case", dest="memory_case", default=None, help=argparse.SUPPRESS)
    return parser


def _report(args, info: dict, rounds: int, memory: str, started: float, peak: dict, cfgs: dict) -> dict[str, Any]:
    """The JSON report: the machine and command, the peaks, every case's results, the floors."""
    report = {
        "meta": {
            **info,
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "quick": args.quick,
            "rounds": rounds,
            "clock": args.clock,
            "memory_method": memory,
            "seconds": time.time() - started,
            "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "flops": "conv: 2*B*prod(out)*C_out*C_in*prod(k); linear: 2*B*out*in; ConvLSTM step: input conv "
            "(C_in->4H) + state conv (H->4H); training step = 3x forward; gate arithmetic not counted",
            **KERAS_STATUS,
        },
        "peak": peak,
        "configs": {
            name: {
                "description": cfg.description,
                "shapes": cfg.shapes,
                "batch": cfg.batch,
                "flops_forward": cfg.flops_fwd,
                "cases": [
                    {
                        "name": c.name,
                        "impl": c.impl,
                        "precision": c.precision,
                        "note": c.note,
                        **c.results,
                        "fwd_peak_fraction": (c.results["fwd_gflops"] / peak[c.precision]["gflops"])
                        if "fwd_gflops" in c.results and c.precision in peak
                        else None,
                        "train_peak_fraction": (c.results["train_gflops"] / peak[c.precision]["gflops"])
                        if "train_gflops" in c.results and c.precision in peak
                        else None,
                        "samples_ms": {k: [v * 1e3 for v in vs] for k, vs in c.samples.items()},
                    }
                    for c in cfg.cases
                ],
            }
            for name, cfg in cfgs.items()
        },
        "floors": floors(cfgs, torch.device(args.device).type, peak),
    }
    return report


def _print_summary(report: dict, info: dict, peak: dict, cfgs: dict, clock: str, device: torch.device) -> None:
    """The machine, the peaks, one table per configuration and the floors, on stdout."""
    print(
        f"\nmachine: {info.get('cpu', '?')} (kind {info['kind']}), {info['cpu_count']} cores, {device}, "
        f"clock {clock}, torch {torch.__version__}, "
        f"{info['threads']} threads; load average at start {info.get('loadavg_start')}"
    )
    print("peak: " + ", ".join(f"{p} {v['gflops']:.1f} GFLOP/s ({v['shape']})" for p, v in peak.items()))
    if KERAS_STATUS:
        print(KERAS_STATUS["keras"])
    for cfg in cfgs.values():
        print()
        print(table(cfg, peak))
    print("\nfloors:")
    for f in report["floors"]:
        got = _fmt(f["measured"], ".0%") if f["measure"] == "peak" else _fmt(f["measured"], ".2f") + "x"
        print(
            f"  {'MET ' if f['met'] else 'MISSED'} {f['config']}: {f['what']}: {got} "
            f"(required {f['required']}; CPU-time ratio {_fmt(f.get('cpu_time_ratio'), '.2f')}x)"
        )


def main(argv: list[str] | None = None, prog: str | None = None) -> dict[str, Any]:
    parser = _parser(prog)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu needs --threads 1 (CPU time sums over threads)")
    CLOCK["which"] = args.clock
    if args.memory_case:
        memory_case_main(args.memory_case, device, args.quick)
        return {}
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    warnings.filterwarnings("ignore", message=".*LSTM with projections.*")
    rounds = args.rounds or (1 if args.quick else 5)
    warmup = 1 if args.quick else 2
    memory = (
        args.memory if args.memory != "auto" else ("inprocess" if args.quick or device.type == "cuda" else "subprocess")
    )
    names = (
        args.configs.split(",") if args.configs else [n for n in BUILDERS if n != "openstl" or device.type == "cuda"]
    )
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        parser.error(f"--configs: unknown {unknown}; choose from {list(BUILDERS)}")

    started = time.time()
    info = machine_info(device, torch.get_num_threads())
    log(
        f"benchmark on {info.get('cpu', platform.processor())} ({device}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, rounds={rounds}"
    )
    peak = measure_peak(device, args.quick, rounds, log)
    cfgs: dict[str, Config] = {}
    for name in names:
        cfg = BUILDERS[name](device, args.quick)
        if args.compile and device.type == "cpu" and name in ("moving_mnist", "patch", "layer"):
            main = resolve_precision(device, "auto")  # the training default on this CPU
            base = next(c for c in cfg.cases if c.impl == "project" and c.precision == main)
            for impl in ("compiled", "graphed"):
                cfg.cases.append(
                    Case(
                        f"project {main}, implementation {impl}",
                        "project",
                        main,
                        _with_implementation(base.build, impl),
                        note=f"implementation={impl!r}, compiles",
                    )
                )
        cfgs[name] = cfg
        log(f"{name}: {len(cfg.cases)} cases")
        inner = args.inner or (1 if args.quick or cfg.flops_fwd > 2e10 else 3)
        run_config(cfg, device, rounds, inner, warmup, log, train_only=args.train_only)
        if memory == "inprocess":
            measure_memory([cfg], device, memory, args, log)
        for c in cfg.cases:
            c.model = None  # free the models before the next configuration
    if memory == "subprocess":
        measure_memory(list(cfgs.values()), device, memory, args, log)
    report = _report(args, info, rounds, memory, started, peak, cfgs)
    _print_summary(report, info, peak, cfgs, args.clock, device)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    main()
