"""A training run's timeline from its TensorBoard events: steady steps/s and a metric against minutes.

    python scripts/run_timeline.py --run-dir runs/gpu-quick [--metric val/mse] [--after 200] \
        [--csv curve.csv] [--json timeline.json]

Steps/s is measured between the first logged step at or after ``--after`` and the last logged
step, from ``train/elapsed_seconds`` (seconds since training started in that process), so the
compilation and warm-up before ``--after`` are not counted (evaluations in between are). The
curve gives the metric at each evaluation against the minutes since training started. Runs
written before ``train/elapsed_seconds`` existed use the events' wall times (minutes since the
first logged step).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def timeline(run_dir: Path, metric: str = "val/mse", after: int = 0) -> dict:
    if not any(run_dir.glob("events.out.tfevents.*")):
        raise SystemExit(f"--run-dir: no TensorBoard event files in {run_dir}")
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    if "train/elapsed_seconds" in tags:
        clock = {e.step: e.value for e in ea.Scalars("train/elapsed_seconds")}
        source = "train/elapsed_seconds"
    elif "train/loss" in tags:
        events = ea.Scalars("train/loss")
        clock = {e.step: e.wall_time - events[0].wall_time for e in events}
        source = "wall time since the first logged step"
    else:
        raise SystemExit(f"--run-dir: {run_dir} has no train/loss or train/elapsed_seconds scalars")
    steps = sorted(clock)
    later = [s for s in steps if s >= after]
    rate = None
    if len(later) >= 2 and clock[later[-1]] > clock[later[0]]:
        rate = (later[-1] - later[0]) / (clock[later[-1]] - clock[later[0]])
    curve = []
    if metric in tags:
        for e in ea.Scalars(metric):
            known = [s for s in steps if s <= e.step]
            curve.append(
                {"step": e.step, "minutes": round(clock[known[-1]] / 60, 3) if known else None, metric: e.value}
            )
    return {
        "run_dir": str(run_dir),
        "clock": source,
        "steps_per_second": rate,
        "measured_between_steps": [later[0], later[-1]] if rate else None,
        "metric": metric,
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--metric", default="val/mse", help="the scalar for the curve (default val/mse)")
    parser.add_argument("--after", type=int, default=0, help="measure steps/s from this step on (default 0)")
    parser.add_argument("--csv", type=Path, help="write the curve here (step, minutes, metric)")
    parser.add_argument("--json", type=Path, help="write the whole timeline here")
    args = parser.parse_args(argv)
    out = timeline(args.run_dir, args.metric, args.after)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "minutes", args.metric])
            w.writerows([p["step"], p["minutes"], p[args.metric]] for p in out["curve"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    rate = out["steps_per_second"]
    print(
        f"{args.run_dir}: {rate:.2f} steps/s between steps {out['measured_between_steps']}"
        if rate
        else f"{args.run_dir}: too few logged steps after step {args.after} for a rate",
        file=sys.stderr,
    )
    for p in out["curve"]:
        print(f"  step {p['step']}: {p['minutes']} min, {args.metric} {p[args.metric]:.4g}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
