"""TensorBoard logging: scalars, image grids, animated GIF "videos" and confusion matrices.

Videos are written as animated GIFs inside TensorBoard image summaries, which is what
``SummaryWriter.add_video`` produces too, but without needing moviepy: the Images tab plays them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from einops import rearrange
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter


def to_uint8(x: Tensor | np.ndarray) -> np.ndarray:
    """Float in [0, 1] (or uint8) → uint8 numpy array."""
    if isinstance(x, Tensor):
        x = x.detach().float().cpu().numpy()
    if x.dtype != np.uint8:
        x = (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return x


def gif_bytes(frames: Tensor | np.ndarray, fps: float = 4.0) -> bytes:
    """Encode ``(T, C, H, W)`` frames (C = 1 or 3, values in [0, 1]) as an animated GIF."""
    arr = to_uint8(frames)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"gif_bytes expects frames (T, C, H, W) with C 1 or 3, got {arr.shape}")
    imgs = [Image.fromarray(f[0] if f.shape[0] == 1 else rearrange(f, "c h w -> h w c")) for f in arr]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    return buf.getvalue()


def side_by_side(*sequences: Tensor, gap: int = 2) -> Tensor:
    """Put ``(T, C, H, W)`` sequences side by side, separated by a white ``gap``: ``(T, C, H, W')``."""
    parts = []
    for i, s in enumerate(sequences):
        if i:
            parts.append(torch.ones(*s.shape[:-1], gap, dtype=s.dtype, device=s.device))
        parts.append(s)
    return torch.cat(parts, dim=-1)


def upscale(x: Tensor, factor: int) -> Tensor:
    """Repeat every pixel of ``(..., H, W)`` ``factor`` times along both axes (nearest neighbour)."""
    if factor == 1:
        return x
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def prediction_strip(
    inputs: Tensor, truth: Tensor, pred: Tensor, gap: int = 2, scale: int = 2, per_row: int = 10
) -> Tensor:
    """One picture per sequence, legible without zooming: the inputs, then the truth, then the
    prediction, each in rows of at most ``per_row`` frames (truth and prediction of a time step one
    above the other), every frame upscaled ``scale`` times, white ``gap`` between frames and rows.
    64x64 frames at the defaults give a 1298 x 388 picture (10 + 10 frames).

    Args: ``(T_in, C, H, W)``, ``(T_out, C, H, W)``, ``(T_out, C, H, W)``. Returns ``(C, H', W')``.
    """
    rows = []
    for seq in (inputs, truth, pred):
        for i in range(0, seq.shape[0], per_row):
            rows.append(upscale(seq[i : i + per_row], scale))
    cols = max(r.shape[0] for r in rows)
    blank = torch.ones_like(rows[0][:1])
    lines = []
    for r in rows:  # pad short rows with white frames so that every row has the same width
        r = torch.cat([r, blank.expand(cols - r.shape[0], *r.shape[1:])]) if r.shape[0] < cols else r
        lines.append(side_by_side(*[f.unsqueeze(0) for f in r], gap=gap)[0])
    c, _, w = lines[0].shape
    out = []
    for i, line in enumerate(lines):
        if i:
            out.append(torch.ones(c, gap, w, dtype=line.dtype, device=line.device))
        out.append(line)
    return torch.cat(out, dim=1)


def stack_rows(images: Sequence[Tensor], gap: int = 4) -> Tensor:
    """Stack ``(..., C, H, W)`` pictures of one width top to bottom with a white ``gap``."""
    parts = []
    for i, img in enumerate(images):
        if i:
            parts.append(torch.ones(*img.shape[:-2], gap, img.shape[-1], dtype=img.dtype, device=img.device))
        parts.append(img)
    return torch.cat(parts, dim=-2)


def png_bytes(img: Tensor | np.ndarray) -> bytes:
    """Encode a ``(C, H, W)`` picture (C = 1 or 3, values in [0, 1]) as PNG."""
    arr = to_uint8(img)
    pil = Image.fromarray(arr[0] if arr.shape[0] == 1 else rearrange(arr, "c h w -> h w c"))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


_FONT, _SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.4


def _text(text: str) -> np.ndarray:
    """``text`` in black on white, an RGB uint8 ``(h, w, 3)`` just large enough for it."""
    (w, h), base = cv2.getTextSize(text, _FONT, _SCALE, 1)
    img = np.full((h + base + 2, w + 2, 3), 255, np.uint8)
    cv2.putText(img, text, (1, h + 1), _FONT, _SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def _paste(img: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    img[top : top + patch.shape[0], left : left + patch.shape[1]] = np.minimum(
        img[top : top + patch.shape[0], left : left + patch.shape[1]], patch
    )


def confusion_matrix_image(
    cm: Tensor | np.ndarray, class_names: Sequence[str] | None = None, cell: int = 36
) -> np.ndarray:
    """Render a confusion matrix as an RGB uint8 image ``(H, W, 3)``: rows are the true classes
    (axis ``true``, names on the left), columns the predicted ones (axis ``predicted``, names
    written upwards above them), each cell its count, shaded by the share of its row (green on
    the diagonal, blue off it). Names are written in full and cells grow (from ``cell`` pixels)
    until the largest count fits."""
    cm = np.asarray(cm.cpu() if isinstance(cm, Tensor) else cm)
    n = cm.shape[0]
    names = [str(s) for s in class_names] if class_names is not None else [str(i) for i in range(n)]
    labels = [_text(s) for s in names]
    counts = [[_text(str(int(v))) for v in row] for row in cm]
    cell = max(
        [cell] + [c.shape[1] + 6 for row in counts for c in row] + [c.shape[0] + 6 for row in counts for c in row]
    )
    name_w = max(t.shape[1] for t in labels)
    axis_true, axis_pred = np.rot90(_text("true")).copy(), _text("predicted")
    left = axis_true.shape[1] + 6 + name_w + 6
    top = axis_pred.shape[0] + 4 + name_w + 6
    img = np.full((top + n * cell + 4, max(left + n * cell + 4, left + axis_pred.shape[1] + 4), 3), 255, np.uint8)
    _paste(img, axis_pred, 2, left + max((n * cell - axis_pred.shape[1]) // 2, 0))
    _paste(img, axis_true, top + max((n * cell - axis_true.shape[0]) // 2, 0), 2)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    for r in range(n):
        y0 = top + r * cell
        _paste(img, labels[r], y0 + (cell - labels[r].shape[0]) // 2, left - 6 - labels[r].shape[1])
        upright = np.rot90(labels[r]).copy()  # the column name, read bottom to top
        _paste(img, upright, top - 6 - upright.shape[0], left + r * cell + (cell - upright.shape[1]) // 2)
        for c in range(n):
            shade = int(255 - 200 * norm[r, c])
            x0 = left + c * cell
            img[y0 : y0 + cell - 1, x0 : x0 + cell - 1] = (shade, shade, 255) if r != c else (shade, 255, shade)
            t = counts[r][c]
            _paste(img, t, y0 + (cell - 1 - t.shape[0]) // 2, x0 + (cell - 1 - t.shape[1]) // 2)
    return img


class TBLogger:
    """A thin wrapper over ``SummaryWriter``; disabled loggers (non-zero ranks) do nothing."""

    def __init__(self, log_dir: str | Path, enabled: bool = True, purge_step: int | None = None) -> None:
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        # flushed every 15 s (SummaryWriter's default is 120 s): a run killed outright loses at
        # most the last 15 s of its curves
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=15) if enabled else None

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), step)

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        """Log the numbers in ``values``: ints, floats and 0-dim tensors (read here, so a training
        step can hand over device tensors without waiting for them); other entries are skipped."""
        for k, v in values.items():
            if isinstance(v, Tensor) and v.dim() == 0:
                v = float(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.scalar(f"{prefix}{k}", v, step)

    def image(self, tag: str, img: Tensor | np.ndarray, step: int, dataformats: str = "CHW") -> None:
        if self.writer is not None:
            self.writer.add_image(tag, to_uint8(img), step, dataformats=dataformats)

    def gif(self, tag: str, frames: Tensor, step: int, fps: float = 4.0) -> None:
        """Log ``(T, C, H, W)`` frames in [0, 1] as an animated GIF the Images tab plays."""
        if self.writer is None:
            return
        t, c, h, w = frames.shape
        img = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=gif_bytes(frames, fps))
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=img)]), step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
