"""``convlstm-vp predict --stream``: predict a video frame by frame, as from a live camera.

The video is read one frame at a time (``convlstm_vp.data.video_folder.iter_frames``, brought to
the model's frames as ``predict`` does) and pushed into ``model.stream(horizon=k)``
(:class:`~convlstm_vp.models.streaming.FrameStream`): one encoder step per frame, constant
memory. The first ``input_frames`` frames warm the state; from then on every frame gets a
forecast of the ``k`` frames after it. The output video shows every frame on the left and, on
the right, its forecast made ``k`` frames earlier (from the frames up to ``t - k``; blank while
there is none yet), so the two sides show the same moment. The frames are written as they are
predicted (.mp4 or .avi); only the last ``k`` forecasts are held.

Prints one line per frame with the model's latency (the push: encoder step plus forecast) and at
the end the frames/s of the model alone and of the whole loop (decoding and writing included).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np
import torch

from ..data.video_folder import fit_frame, iter_frames
from ..models import EncoderForecaster
from .tb import side_by_side, upscale

STREAM_SUFFIXES = (".mp4", ".avi")


class _FrameWriter:
    """Writes ``(C, H, W)`` frames in [0, 1] one at a time to an .mp4 / .avi file."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self.writer = path, fps, None

    def write(self, frame: torch.Tensor) -> None:
        u8 = (frame.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, C)
        colour = u8.shape[-1] == 3
        u8 = np.ascontiguousarray(u8[..., ::-1] if colour else u8[..., 0])  # OpenCV writes BGR
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.suffix.lower() == ".mp4" else "MJPG"))
            self.writer = cv2.VideoWriter(
                str(self.path),
                fourcc,
                self.fps,
                (u8.shape[1], u8.shape[0]),
                isColor=colour,
            )
            if not self.writer.isOpened():
                raise ValueError(f"OpenCV cannot write {self.path}; use .mp4 or .avi")
        self.writer.write(u8)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def stream_video(
    model: EncoderForecaster,
    cfg: dict,
    source: Path,
    output: Path,
    *,
    horizon: int,
    filter_temperature: float,
    render: str,
    input_range: tuple[float, float] | None = None,
    start: int = 0,
    fps: float = 4.0,
    scale: int = 1,
) -> dict:
    """Stream ``source`` through ``model`` into ``output`` (module docstring); returns the timings
    ``{"frames", "latency_ms" (per forecasting frame), "model_fps", "loop_fps"}``. A video that
    ends before the warm-up is a ValueError, and then no output file is left."""
    d = cfg["data"]
    stream = model.stream(horizon, filter_temperature=filter_temperature, render=render)
    pending: deque[torch.Tensor] = deque()  # forecasts of the next k frames, the oldest first
    writer = _FrameWriter(output, fps)
    latencies: list[float] = []
    model_seconds, frames, began = 0.0, 0, time.perf_counter()
    try:
        kept = (f for i, f in enumerate(iter_frames(source, input_range)) if i % d["frame_step"] == 0)
        for i, raw in enumerate(kept):
            if i < start:
                continue
            frame = torch.from_numpy(fit_frame(raw, d["size"], d["channels"])).permute(2, 0, 1)
            t0 = time.perf_counter()
            forecast = stream.push(frame)
            seconds = time.perf_counter() - t0
            model_seconds += seconds
            frames += 1
            shown = pending.popleft() if len(pending) == horizon else torch.zeros_like(frame)
            if forecast is not None:
                pending.append(forecast[horizon - 1].float())
                latencies.append(seconds * 1e3)
            writer.write(upscale(side_by_side(frame[None], shown[None])[0], scale))
            what = "forecast" if forecast is not None else f"warm-up {frames}/{model.input_frames}"
            print(f"frame {frames}: {seconds * 1e3:.2f} ms ({what})")
    except BaseException:
        writer.close()
        output.unlink(missing_ok=True)
        raise
    writer.close()
    if frames < model.input_frames:
        output.unlink(missing_ok=True)
        raise ValueError(
            f"{source} ends after {frames} frames (from index {start}), before the warm-up of "
            f"{model.input_frames} frames that the model needs"
        )
    loop = time.perf_counter() - began
    return {
        "frames": frames,
        "latency_ms": latencies,
        "model_fps": frames / model_seconds,
        "loop_fps": frames / loop,
    }


def report(timings: dict, output: Path, horizon: int) -> None:
    """Print the summary line of :func:`stream_video`'s ``timings``."""
    lat = timings["latency_ms"]
    print(
        f"wrote {output}: {timings['frames']} frames (left: the frame, right: its forecast "
        f"made {horizon} frames earlier); latency per forecasting frame median "
        f"{statistics.median(lat):.2f} ms, max {max(lat):.2f} ms; "
        f"{timings['model_fps']:.1f} frames/s (model), "
        f"{timings['loop_fps']:.1f} frames/s (with decoding and writing)"
    )
    sys.stdout.flush()
