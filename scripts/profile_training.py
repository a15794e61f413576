"""Where a training step's time goes: data, forward (with the loss), backward, optimizer.

Builds the task and the model from a config exactly as the training scripts do (same YAML, same
``--set`` overrides, same precision, ``train.deterministic`` and ``train.num_threads``), then:

  1. runs ``--warmup`` steps untimed (cuDNN's and the allocator's first calls);
  2. "loop": times ``--steps`` steps the way ``convlstm_vp.train.loop.fit`` runs them, with its
     two reads per step (the loss and gradient norm checked for NaN/Inf, then the loss for the
     progress bar), but without evaluation, checkpoints or TensorBoard: the loop's steady-state
     steps/s;
  3. "no reads": the same steps without those reads, so the host never waits for the device
     inside a step (on a GPU: what the per-step reads cost);
  4. "phases": ``--steps`` more steps with a device synchronisation after each phase, giving the
     time of each (the sum is a little above the loop's step: nothing overlaps);
  5. with ``--trace DIR``: ``--profile-steps`` steps under ``torch.profiler``; the busiest
     operators (by self device time on CUDA, self CPU time on CPU) are printed and a Chrome
     trace is written to ``DIR/trace.json`` (open it in chrome://tracing or Perfetto).

The parameters keep training through every part, so the numbers are those of a run that has
started, not of step 0. With ``--set train.implementation=compiled`` the cells' steps compile during the
warm-up (give it 20 steps or so).

Examples:
    python scripts/profile_training.py --config configs/gpu-openstl.yaml --set train.precision=bf16
    python scripts/profile_training.py --config configs/cpu-quick.yaml --steps 20 --json prof.json
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

import convlstm_vp  # noqa: F401  (first: it sets how OpenMP threads wait before torch loads them)

# isort: split
import torch

from convlstm_vp.nn import set_implementation
from convlstm_vp.train.checkpoint import seed_everything
from convlstm_vp.train.config import ConfigError, load_config
from convlstm_vp.train.loop import _deterministic, build_optimizer, build_scheduler
from convlstm_vp.train.precision import resolve_device, training_precision

TASKS = {
    "moving_mnist": ("convlstm_vp.train.tasks.frames", "MovingMNISTTask"),
    "patch_classifier": ("convlstm_vp.train.tasks.patch_classifier", "PatchClassifierTask"),
    "patch_completion": ("convlstm_vp.train.tasks.patch_completion", "PatchCompletionTask"),
    "sensors": ("convlstm_vp.train.tasks.sensors", "SensorTask"),
}
PHASES = ("data", "forward", "backward", "optimizer")


class Stepper:
    """One training step as the loop runs it, split into phases that can be timed."""

    def __init__(
        self,
        task: Any,
        model: torch.nn.Module,
        cfg: dict,
        device: torch.device,
        total_steps: int,
        optimizer_impl: str = "default",
    ) -> None:
        # the learning-rate schedule must cover every profiled step (a config shorter than them
        # gets its schedule stretched; the schedule's values do not change a step's time)
        tc = dict(cfg["train"], steps=max(cfg["train"]["steps"], total_steps))
        self.task, self.model, self.device, self.tc = task, model, device, tc
        self.optimizer = build_optimizer(model, tc)
        if optimizer_impl != "default":  # torch's for-each (multi-tensor) or fused (one kernel) variant
            if "fused" not in self.optimizer.defaults:
                raise ValueError(
                    f"--optimizer-impl {optimizer_impl}: {type(self.optimizer).__name__} has no such variant"
                )
            cls = type(self.optimizer)
            accepted = inspect.signature(cls).parameters
            kw = {k: v for k, v in self.optimizer.defaults.items() if k in accepted}
            kw.update(foreach=optimizer_impl == "foreach", fused=optimizer_impl == "fused")
            self.optimizer = cls(self.optimizer.param_groups[0]["params"], **kw)
        self.scheduler = build_scheduler(self.optimizer, tc)
        self.autocast, self.use_scaler, self.precision = training_precision(device, tc["precision"])
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)
        self.step_index = 0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, reads: bool = True, times: dict[str, float] | None = None) -> None:
        """One step; ``times`` (phase -> seconds, accumulated) synchronises after each phase."""
        clock = time.perf_counter

        def mark(phase: str, t0: float) -> float:
            if times is None:
                return t0
            self.sync()
            t1 = clock()
            times[phase] = times.get(phase, 0.0) + t1 - t0
            return t1

        t = clock()
        batch = self.task.train_batch(self.step_index, 0, 1)
        t = mark("data", t)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss, _ = self.task.training_step(self.model, batch, self.step_index)
        total = loss.float()
        t = mark("forward", t)
        self.scaler.scale(total).backward()
        t = mark("backward", t)
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.tc["grad_clip"] if self.tc["grad_clip"] > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if reads and not self.use_scaler:  # the loop's NaN/Inf check: one read of loss and norm
            ok = torch.stack([torch.isfinite(total.detach()), torch.isfinite(norm)]).tolist()
            if not all(ok):
                raise FloatingPointError(f"non-finite loss or gradient norm at profiled step {self.step_index}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if reads:
            float(loss.detach())  # the progress bar's read
        mark("optimizer", t)
        self.step_index += 1


def timed_steps(stepper: Stepper, n: int, reads: bool) -> float:
    """Seconds per step over ``n`` steps (synchronised at both ends only)."""
    stepper.sync()
    t0 = time.perf_counter()
    for _ in range(n):
        stepper.run(reads=reads)
    stepper.sync()
    return (time.perf_counter() - t0) / n


def profile_ops(stepper: Stepper, n: int, out_dir: Path, rows: int) -> list[dict[str, Any]]:
    """``n`` steps under torch.profiler: the busiest operators, and a Chrome trace in ``out_dir``."""
    from torch.profiler import ProfilerActivity, profile

    cuda = stepper.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(n):
            stepper.run(reads=True)
        stepper.sync()
    out_dir.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out_dir / "trace.json"))
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    return [
        {
            "op": e.key,
            "calls_per_step": e.count / n,
            "self_ms_per_step": getattr(e, key) / 1e3 / n,
            "share": getattr(e, key) / total,
            **({"cpu_self_ms_per_step": e.self_cpu_time_total / 1e3 / n} if cuda else {}),
        }
        for e in events[:rows]
    ]


def build(args: argparse.Namespace) -> tuple[Any, torch.nn.Module, dict, torch.device]:
    module_name, class_name = TASKS[args.task]
    module = importlib.import_module(module_name)
    cfg = load_config(args.config, module.DEFAULTS, args.overrides)
    tc = cfg["train"]
    if tc["num_threads"]:
        torch.set_num_threads(tc["num_threads"])
    seed_everything(int(cfg.get("seed", 0)))
    device = resolve_device(tc["device"], 0, "config key 'train.device'")
    task = getattr(module, class_name)(cfg)
    model = task.build_model().to(device)
    set_implementation(model, tc["implementation"])
    model.train()
    return task, model, cfg, device


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, as for the training scripts (repeatable)",
    )
    p.add_argument(
        "--task", choices=sorted(TASKS), default="moving_mnist", help="the config's task (default moving_mnist)"
    )
    p.add_argument("--steps", type=int, default=50, help="timed steps per measurement (default 50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    p.add_argument(
        "--optimizer-impl",
        choices=["default", "foreach", "fused"],
        default="default",
        help="the optimizer's torch implementation (default: torch's choice, as training uses)",
    )
    p.add_argument(
        "--trace", type=Path, default=None, help="also profile with torch.profiler; Chrome trace to DIR/trace.json"
    )
    p.add_argument("--profile-steps", type=int, default=5, help="steps recorded with --trace (default 5)")
    p.add_argument("--top", type=int, default=15, help="operators listed with --trace (default 15)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    for name in ("steps", "profile_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a positive number of steps, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup: expected 0 or more steps, got {args.warmup}")
    try:
        task, model, cfg, device = build(args)
    except ConfigError as exc:
        p.exit(2, f"error: {exc}\n")
    tc = cfg["train"]
    with _deterministic(tc["deterministic"]):
        total = args.warmup + 3 * args.steps + (args.profile_steps if args.trace else 0)
        try:
            stepper = Stepper(task, model, cfg, device, total, args.optimizer_impl)
        except (ValueError, RuntimeError) as exc:
            p.exit(2, f"error: {exc}\n")
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            stepper.run()
        stepper.sync()
        warmup_s = time.perf_counter() - t0
        loop = timed_steps(stepper, args.steps, reads=True)
        no_reads = timed_steps(stepper, args.steps, reads=False)
        times: dict[str, float] = {}
        for _ in range(args.steps):
            stepper.run(times=times)
        phases = {k: times[k] / args.steps * 1e3 for k in PHASES}
        ops = profile_ops(stepper, args.profile_steps, args.trace, args.top) if args.trace else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict[str, Any] = {
        "config": args.config,
        "overrides": args.overrides,
        "task": args.task,
        "device": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": stepper.precision,  # auto resolved
        "deterministic": tc["deterministic"],
        "implementation": tc["implementation"],
        "optimizer": type(stepper.optimizer).__name__,
        "optimizer_impl": args.optimizer_impl,
        "batch_size": tc["batch_size"],
        "warmup_steps": args.warmup,
        "warmup_seconds": round(warmup_s, 3),
        "steps": args.steps,
        "loop_ms_per_step": loop * 1e3,
        "loop_steps_per_second": 1.0 / loop,
        "no_reads_ms_per_step": no_reads * 1e3,
        "no_reads_steps_per_second": 1.0 / no_reads,
        "phases_ms_per_step": phases,
    }
    if ops is not None:
        report["top_ops"] = ops
    print(
        f"{args.config} {' '.join(args.overrides)} on {name} ({stepper.precision}, batch {tc['batch_size']}, "
        f"deterministic={tc['deterministic']}, implementation={tc['implementation']}, "
        f"optimizer {type(stepper.optimizer).__name__} {args.optimizer_impl}); warm-up {args.warmup} steps in {warmup_s:.1f} s"
    )
    print(f"  loop (2 reads/step)   {loop * 1e3:8.2f} ms/step  {1 / loop:7.2f} steps/s")
    print(f"  no reads              {no_reads * 1e3:8.2f} ms/step  {1 / no_reads:7.2f} steps/s")
    s = sum(phases.values())
    print("  phases (synchronised) " + "  ".join(f"{k} {v:.2f}" for k, v in phases.items()) + f"  = {s:.2f} ms")
    if ops is not None:
        print(
            f"  busiest operators ({'self device' if device.type == 'cuda' else 'self CPU'} time per step; trace: {args.trace / 'trace.json'}):"
        )
        for o in ops:
            print(
                f"    {o['self_ms_per_step']:8.3f} ms {100 * o['share']:5.1f}%  x{o['calls_per_step']:<6.0f} {o['op']}"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
