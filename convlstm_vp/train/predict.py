"""Predict the next frames of your own video with a trained Moving MNIST checkpoint.

    python scripts/predict.py --checkpoint runs/cpu-quick/checkpoints/best.pt --input clip.mp4 --output out.gif
    convlstm-vp predict --checkpoint runs/cpu-quick/checkpoints/best.pt --input clip.mp4 --output out.gif

The input (.npy, .gif, or any video OpenCV reads: .mp4, .avi, ...) is converted to grayscale,
resized to the model's frame size and scaled to [0, 1]: the scale follows the data type (8-bit
frames are divided by 255; float frames must already lie in [0, 1]; ``--input-range LO,HI``
maps ``[LO, HI]`` to ``[0, 1]`` for any other range), and NaN/Inf or values outside the range are
an error, never clipped silently. The first ``input_frames`` frames are
the context (``--start`` moves the window). The output shows the input with the frames that
follow it in the file (when there are any) on the left, and the input with the model's
prediction on the right; .gif and .mp4 outputs are supported (.npy saves the predicted frames).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from convlstm_vp.train.checkpoint import CheckpointError
from convlstm_vp.train.cli import non_negative_int
from convlstm_vp.train.tasks.moving_mnist import load_trained, predict
from convlstm_vp.train.tb import gif_bytes, side_by_side


OUTPUT_SUFFIXES = (".gif", ".mp4", ".avi", ".npy")


def parse_range(text: str | None) -> tuple[float, float] | None:
    """``"LO,HI"`` → ``(LO, HI)`` with finite ``LO < HI``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--input-range: expected LO,HI (e.g. 0,255), got {text!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"--input-range: expected finite LO < HI, got {text!r}")
    return lo, hi


def to_unit_range(arr: np.ndarray, path: Path, input_range: tuple[float, float] | None = None) -> np.ndarray:
    """Frames of any numeric dtype as float32 in [0, 1]: ``input_range`` ``(lo, hi)`` maps to [0, 1];
    without it uint8 is divided by 255 and floats must already lie in [0, 1]. NaN/Inf, values
    outside the range and other dtypes are a ValueError naming ``path``."""
    if arr.size == 0:
        raise ValueError(f"{path}: holds no frames (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)):
        raise ValueError(f"{path}: expected numeric frames (uint8, or float in [0, 1]), got dtype {arr.dtype}")
    x = arr.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: frames hold NaN or Inf")
    if input_range is None:
        if arr.dtype == np.uint8:
            input_range = (0.0, 255.0)
        elif np.issubdtype(arr.dtype, np.floating):
            input_range = (0.0, 1.0)
        else:
            raise ValueError(f"{path}: {arr.dtype} frames have no known scale; pass --input-range LO,HI (e.g. 0,4095)")
    lo, hi = input_range
    if x.min() < lo or x.max() > hi:
        raise ValueError(f"{path}: {arr.dtype} frames must lie in [{lo:g}, {hi:g}], got values in "
                         f"[{x.min():g}, {x.max():g}]; pass --input-range LO,HI to map another range to [0, 1]")
    return ((x - lo) / (hi - lo)).astype(np.float32)


def read_frames(path: Path, input_range: tuple[float, float] | None = None) -> np.ndarray:
    """Frames of a .npy, .gif or video file as float32 grayscale ``(T, H, W)`` in [0, 1] (see
    :func:`to_unit_range` for the scale; .gif and video frames are 8-bit)."""
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{path}: not a readable .npy array ({exc})") from None
        if arr.ndim == 4 and arr.shape[1] in (1, 3):  # (T, C, H, W)
            arr = arr.mean(1) if arr.shape[1] == 3 else arr[:, 0]
        elif arr.ndim == 4 and arr.shape[-1] in (1, 3):  # (T, H, W, C)
            arr = arr.mean(-1) if arr.shape[-1] == 3 else arr[..., 0]
        if arr.ndim != 3:
            raise ValueError(f"{path}: expected frames (T, H, W), (T, 1|3, H, W) or (T, H, W, 1|3), got shape {arr.shape}")
        return to_unit_range(arr, path, input_range)
    if path.suffix.lower() == ".gif":
        try:
            img = Image.open(path)
            frames = []
            for i in range(getattr(img, "n_frames", 1)):
                img.seek(i)
                frames.append(np.asarray(img.convert("L"), dtype=np.uint8))
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"{path}: not a readable GIF ({exc})") from None
        return to_unit_range(np.stack(frames), path, input_range)
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    cap.release()
    if not frames:
        raise ValueError(f"{path}: OpenCV read no frames (expected a video file such as .mp4 or .avi)")
    return to_unit_range(np.stack(frames), path, input_range)


def write_video(path: Path, frames: torch.Tensor, fps: float) -> None:
    """Write ``(T, 1, H, W)`` frames in [0, 1] as .gif, .mp4/.avi, or .npy."""
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        path.write_bytes(gif_bytes(frames, fps))
        return
    if suffix == ".npy":
        np.save(path, frames.numpy())
        return
    u8 = (frames.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()[:, 0]
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if suffix == ".mp4" else "MJPG"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, (u8.shape[2], u8.shape[1]), isColor=False)
    if not writer.isOpened():
        raise ValueError(f"OpenCV cannot write {path}; use .gif, .mp4, .avi or .npy")
    for f in u8:
        writer.write(f)
    writer.release()


def main(argv=None, prog: str | None = None) -> Path:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help=".npy, .gif or a video file")
    p.add_argument("--output", required=True, help="out.gif, out.mp4, out.avi or out.npy")
    p.add_argument("--start", type=non_negative_int, default=0, help="index of the first context frame")
    p.add_argument("--input-range", default=None, metavar="LO,HI",
                   help="map input values in [LO, HI] to [0, 1] (default: uint8 / 255; float frames must lie in [0, 1])")
    p.add_argument("--render", choices=["filter", "warp"], default="filter",
                   help="how a dynamic-filter model renders its frames: filter each previous prediction (default, as "
                        "trained) or warp: move a displacement field with the same kernels and sample the last input once")
    p.add_argument("--filter-temperature", type=float, default=None,
                   help="softmax temperature of the filter kernels; below 1 sharpens them (default: the config's "
                        "model.eval_filter_temperature, 1 unless set)")
    p.add_argument("--fps", type=float, default=4.0)
    args = p.parse_args(argv)
    out = Path(args.output)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        p.error(f"--output: expected a file ending in {', '.join(OUTPUT_SUFFIXES)}, got {args.output!r}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create the output folder {out.parent}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        input_range = parse_range(args.input_range)
        model, cfg = load_trained(args.checkpoint)
        temperature = cfg["model"]["eval_filter_temperature"] if args.filter_temperature is None else args.filter_temperature
        model.check_rendering(temperature, args.render)
        frames = read_frames(Path(args.input), input_range)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    t_in, t_out = cfg["model"]["input_frames"], cfg["model"]["output_frames"]
    size = 64
    if frames.shape[0] < args.start + t_in:
        print(f"error: {args.input} has {frames.shape[0]} frames; the model needs {t_in} context frames "
              f"from index {args.start}", file=sys.stderr)
        raise SystemExit(2)
    resized = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])
    seq = torch.from_numpy(resized).float().clamp(0, 1).unsqueeze(1)  # (T, 1, H, W); area resizing stays in range
    context = seq[args.start : args.start + t_in]
    pred = predict(model, context.unsqueeze(0), 1, cfg["train"]["precision"], filter_temperature=temperature, render=args.render)[0]
    truth = seq[args.start + t_in : args.start + t_in + t_out]
    if truth.shape[0] < t_out:  # pad the missing future with blank frames
        truth = torch.cat([truth, torch.zeros(t_out - truth.shape[0], *truth.shape[1:])])
    if out.suffix.lower() == ".npy":
        write_video(out, pred, args.fps)
    else:
        write_video(out, side_by_side(torch.cat([context, truth]), torch.cat([context, pred])), args.fps)
    print(f"wrote {out}: {t_in} context frames, {t_out} predicted frames (left: input + following frames, right: input + prediction)")
    return out


if __name__ == "__main__":
    main()
