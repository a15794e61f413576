"""Predict the next frames of your own video with a trained frame-prediction checkpoint.

    python scripts/predict.py --checkpoint runs/cpu-quick/checkpoints/best.pt --input clip.mp4 --output out.gif
    convlstm-vp predict --checkpoint runs/cpu-quick/checkpoints/best.pt --input clip.mp4 --output out.gif

The input (.npy/.npz, .gif, or any video OpenCV reads: .mp4, .avi, ...) of any size is brought to
the model's frames as its training data was (``convlstm_vp.data.VideoFolder``): every
``data.frame_step``-th frame, resized keeping the aspect ratio and centre-cropped to ``data.size``,
grey or RGB as ``data.channels``; and scaled to [0, 1]: the scale follows the data type (8-bit
frames are divided by 255; float frames must already lie in [0, 1]; ``--input-range LO,HI``
maps ``[LO, HI]`` to ``[0, 1]`` for any other range), and NaN/Inf or values outside the range are
an error, never clipped silently. The first ``input_frames`` frames are
the context (``--start`` moves the window). The output shows the input with the frames that
follow it in the file (when there are any) on the left, and the input with the model's
prediction on the right, each frame enlarged ``--scale`` times; .gif, .mp4 and .avi outputs are
supported (.npy saves the predicted frames ``(T, C, H, W)``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from convlstm_vp.data.video_folder import load_frames
from convlstm_vp.train.checkpoint import CheckpointError
from convlstm_vp.train.cli import (
    add_render_arguments,
    check_output_file,
    check_render_arguments,
    fail,
    int_between,
    non_negative_int,
    positive_float,
    positive_int,
)
from convlstm_vp.train.stream_video import STREAM_SUFFIXES, report, stream_video
from convlstm_vp.train.tasks.frames.inference import load_trained, predict
from convlstm_vp.train.tb import gif_bytes, side_by_side, upscale

OUTPUT_SUFFIXES = (".gif", ".mp4", ".avi", ".npy")
#: the largest --scale (a 64x64 model's side-by-side output is then 4096 pixels wide)
MAX_SCALE = 32


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


def write_video(path: Path, frames: torch.Tensor, fps: float) -> None:
    """Write ``(T, C, H, W)`` frames (C 1 grey or 3 RGB) in [0, 1] as .gif, .mp4/.avi, or .npy."""
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        path.write_bytes(gif_bytes(frames, fps))
        return
    if suffix == ".npy":
        np.save(path, frames.numpy())
        return
    u8 = (frames.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (T, H, W, C)
    colour = u8.shape[-1] == 3
    u8 = np.ascontiguousarray(u8[..., ::-1] if colour else u8[..., 0])  # OpenCV writes BGR
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if suffix == ".mp4" else "MJPG"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, (u8.shape[2], u8.shape[1]), isColor=colour)
    if not writer.isOpened():
        raise ValueError(f"OpenCV cannot write {path}; use .gif, .mp4, .avi or .npy")
    for f in u8:
        writer.write(f)
    writer.release()


def _stream(args: argparse.Namespace, model, cfg: dict, temperature: float, input_range) -> Path:
    """``--stream``: :func:`~convlstm_vp.train.stream_video.stream_video`, then its summary."""
    horizon = cfg["model"]["output_frames"] if args.horizon is None else args.horizon
    if horizon > cfg["model"]["output_frames"]:
        raise ValueError(
            f"--horizon: the model forecasts at most output_frames="
            f"{cfg['model']['output_frames']} frames, got {horizon}"
        )
    out = Path(args.output)
    timings = stream_video(
        model,
        cfg,
        Path(args.input),
        out,
        horizon=horizon,
        filter_temperature=temperature,
        render=args.render,
        input_range=input_range,
        start=args.start,
        fps=args.fps,
        scale=args.scale,
    )
    report(timings, out, horizon)
    return out


def main(argv=None, prog: str | None = None) -> Path:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help=".npy/.npz, .gif or a video file of any frame size")
    p.add_argument("--output", required=True, help="out.gif, out.mp4, out.avi or out.npy")
    p.add_argument(
        "--start",
        type=non_negative_int,
        default=0,
        help="index of the first context frame (counted after the model's data.frame_step)",
    )
    p.add_argument(
        "--input-range",
        default=None,
        metavar="LO,HI",
        help="map input values in [LO, HI] to [0, 1] (default: uint8 / 255; float frames must lie in [0, 1])",
    )
    add_render_arguments(p)
    p.add_argument(
        "--fps", type=positive_float, default=4.0, help="frames per second of a .gif/.mp4/.avi output (default 4)"
    )
    p.add_argument(
        "--scale",
        type=int_between(1, MAX_SCALE),
        default=1,
        help=f"enlarge every frame of the side-by-side output this many times, 1 to {MAX_SCALE} "
        "(nearest neighbour; default 1)",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="read the video frame by frame and forecast after every frame "
        "(convlstm_vp.train.stream_video); writes each frame beside its forecast "
        "made --horizon frames earlier (.mp4/.avi)",
    )
    p.add_argument(
        "--horizon", type=positive_int, default=None, help="--stream: frames ahead (default the model's output_frames)"
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's); 1 is fastest for one stream on a busy machine",
    )
    args = p.parse_args(argv)
    check_render_arguments(p, args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    if args.stream and out.suffix.lower() not in STREAM_SUFFIXES:
        p.error(
            f"--output: --stream writes frame by frame to a file ending in "
            f"{', '.join(STREAM_SUFFIXES)}, got {args.output!r}"
        )
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        p.error(f"--output: expected a file ending in {', '.join(OUTPUT_SUFFIXES)}, got {args.output!r}")
    check_output_file(out, "--output")
    try:
        input_range = parse_range(args.input_range)
        model, cfg = load_trained(args.checkpoint)
        temperature = (
            cfg["model"]["eval_filter_temperature"] if args.filter_temperature is None else args.filter_temperature
        )
        model.check_rendering(temperature, args.render)
        if args.stream:
            return _stream(args, model, cfg, temperature, input_range)
        d = cfg["data"]
        frames = load_frames(Path(args.input), d["size"], d["channels"], d["frame_step"], input_range)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or args.input}: {exc.strerror or exc}")
    t_in, t_out = cfg["model"]["input_frames"], cfg["model"]["output_frames"]
    if frames.shape[0] < args.start + t_in:
        fail(
            f"{args.input} has {frames.shape[0]} frames; the model needs {t_in} context frames from index {args.start}"
        )
    seq = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, C, H, W) in [0, 1]
    context = seq[args.start : args.start + t_in]
    pred = predict(
        model, context.unsqueeze(0), 1, cfg["train"]["precision"], filter_temperature=temperature, render=args.render
    )[0]
    if not bool(torch.isfinite(pred).all()):
        fail(f"the prediction of {args.checkpoint} for {args.input} holds NaN/Inf values; nothing was written")
    truth = seq[args.start + t_in : args.start + t_in + t_out]
    if truth.shape[0] < t_out:  # pad the missing future with blank frames
        truth = torch.cat([truth, torch.zeros(t_out - truth.shape[0], *truth.shape[1:])])
    try:
        if out.suffix.lower() == ".npy":
            write_video(out, pred, args.fps)
        else:
            write_video(
                out,
                upscale(side_by_side(torch.cat([context, truth]), torch.cat([context, pred])), args.scale),
                args.fps,
            )
    except (OSError, ValueError) as exc:
        fail(f"{out}: {getattr(exc, 'strerror', None) or exc}")
    print(
        f"wrote {out}: {t_in} context frames, {t_out} predicted frames (left: input + following frames, right: input + prediction)"
    )
    return out


if __name__ == "__main__":
    main()
