"""Measure Moving MNIST generation speed (frames per second) on one CPU core.

Times two paths, both producing float32 tensors in [0, 1]:
  batch    -- ``moving_mnist_batch``: B sequences rendered at once (what a training loop calls);
  dataset  -- ``MovingMNIST.__getitem__`` one sequence at a time (what a DataLoader worker does).

Example:
    python scripts/benchmark_data.py --batch-size 64 --batches 30 --json out/benchmark_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from convlstm_vp.data import MovingMNIST, load_digits, moving_mnist_batch


def _best_rate(run, frames_per_run: int, repeats: int) -> tuple[float, float]:
    """(best, median) frames/s over ``repeats`` timed calls of ``run``."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(frames_per_run / (time.perf_counter() - start))
    return max(rates), float(np.median(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="datasets", help="data root (MNIST IDX files)")
    parser.add_argument("--source", default="auto", choices=["auto", "mnist", "embedded"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30, help="timed repeats of each path")
    parser.add_argument("--num-frames", type=int, default=20)
    parser.add_argument("--num-digits", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(1)
    digits = load_digits(args.root, "train", args.source)
    rng = np.random.default_rng(0)
    frames_per_batch = args.batch_size * args.num_frames

    def batch() -> None:
        moving_mnist_batch(
            args.batch_size,
            digits=digits,
            num_digits=args.num_digits,
            num_frames=args.num_frames,
            image_size=args.image_size,
            rng=rng,
        )

    dataset = MovingMNIST(
        args.root,
        "train",
        num_digits=args.num_digits,
        num_frames=args.num_frames,
        image_size=args.image_size,
        source=args.source,
    )
    indices = iter(range(len(dataset)))

    def items() -> None:
        for _ in range(args.batch_size):
            dataset[next(indices) % len(dataset)]

    batch()  # warm-up
    items()
    batch_best, batch_median = _best_rate(batch, frames_per_batch, args.batches)
    item_best, item_median = _best_rate(items, frames_per_batch, args.batches)

    result = {
        "benchmark": "moving_mnist_generation",
        "threads": torch.get_num_threads(),
        "digit_source": digits.source,
        "batch_size": args.batch_size,
        "num_frames": args.num_frames,
        "num_digits": args.num_digits,
        "image_size": args.image_size,
        "batch_frames_per_s_median": round(batch_median),
        "batch_frames_per_s_best": round(batch_best),
        "dataset_frames_per_s_median": round(item_median),
        "dataset_frames_per_s_best": round(item_best),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    print(
        f"moving_mnist_generation (1 thread, {digits.source} digits, {args.num_digits} digits, "
        f"{args.image_size}x{args.image_size}): batch {batch_median:,.0f} frames/s, "
        f"dataset items {item_median:,.0f} frames/s (medians of {args.batches})"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
