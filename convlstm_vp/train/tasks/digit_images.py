"""Pictures of reassembled digits for TensorBoard and PNG files (patch classifier and completion)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from ..checkpoint import atomic_write_bytes
from ..tb import to_uint8

__all__ = ["captioned_tiles", "digit_grid", "save_png"]


def captioned_tiles(images: Tensor, captions: Sequence[str], scale: int = 2, caption_height: int = 14) -> Tensor:
    """Upscale grey images and write a caption under each.

    Args:
        images: ``(N, 1, H, W)`` in [0, 1].
        captions: ``N`` short strings (about ``W * scale / 7`` characters fit).
        scale: nearest-neighbour upscaling factor.
        caption_height: pixels of the caption strip under each image.

    Returns:
        ``(N, 3, H * scale + caption_height, W * scale)`` float in [0, 1].
    """
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"captioned_tiles expects images (N, 1, H, W), got {tuple(images.shape)}")
    if len(captions) != images.shape[0]:
        raise ValueError(f"captioned_tiles: {images.shape[0]} images but {len(captions)} captions")
    big = F.interpolate(images.float().cpu(), scale_factor=scale, mode="nearest").clamp(0, 1)
    big = big.expand(-1, 3, -1, -1)
    n, _, h, w = big.shape
    strips = np.zeros((n, caption_height, w, 3), np.uint8)
    for i, text in enumerate(captions):
        cv2.putText(strips[i], text, (2, caption_height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1)
    strip = rearrange(torch.from_numpy(strips).float() / 255.0, "n h w c -> n c h w")
    return torch.cat([big, strip], dim=2)


def digit_grid(tiles: Tensor, cols: int, gap: int = 2) -> Tensor:
    """Lay ``(N, C, H, W)`` tiles out row by row, ``cols`` per row, on a grey background: ``(C, H', W')``."""
    if tiles.dim() != 4:
        raise ValueError(f"digit_grid expects tiles (N, C, H, W), got {tuple(tiles.shape)}")
    return make_grid(tiles.float().cpu(), nrow=max(cols, 1), padding=gap, pad_value=0.5)


def save_png(path: str | Path, image: Tensor) -> Path:
    """Write a ``(C, H, W)`` image in [0, 1] (C = 1 or 3) as a PNG, atomically; returns the path."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"save_png expects an image (C, H, W) with C 1 or 3, got {tuple(image.shape)}")
    arr = to_uint8(image)
    pil = Image.fromarray(arr[0] if arr.shape[0] == 1 else rearrange(arr, "c h w -> h w c"))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
