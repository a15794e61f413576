"""MNIST digits as sequences of patches, for sequence classification with ConvLSTM2D.

A 28x28 digit cut into 7x7 patches becomes a sequence of 16 frames of shape ``(1, 7, 7)``
(``(T, C, H, W)``, DESIGN.md's channels-first layout), read in ``"raster"`` order (row by row,
left to right) or ``"snake"`` order (boustrophedon: odd rows right to left, so consecutive
patches are always neighbours). :func:`patchify` and :func:`unpatchify` are exact inverses.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal, TypeVar

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset

from .digits import DATA_FORMATS, DIGIT_SIZE, DataFormat, DigitSet, Source, check_choice, load_digits

__all__ = ["MNISTPatchSequences", "patchify", "unpatchify", "patch_order"]

Order = Literal["raster", "snake"]
ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)

_ORDERS = ("raster", "snake")


def patch_order(grid_rows: int, grid_cols: int, order: Order = "raster") -> np.ndarray:
    """Sequence position -> raster index of each patch of a ``grid_rows x grid_cols`` grid.

    Returns:
        int64 array of shape ``(grid_rows * grid_cols,)``; ``order="raster"`` is the identity,
        ``"snake"`` reverses every odd row.
    """
    check_choice("order", order, _ORDERS)
    grid = np.arange(grid_rows * grid_cols, dtype=np.int64).reshape(grid_rows, grid_cols)
    if order == "snake":
        grid[1::2] = grid[1::2, ::-1]
    return grid.reshape(-1)


def _grid(size: int, patch_size: int, what: str) -> int:
    if patch_size < 1 or size % patch_size:
        raise ValueError(f"{what} {size} must be divisible by patch_size={patch_size}")
    return size // patch_size


def patchify(
    images: ArrayT,
    patch_size: int = 7,
    order: Order = "raster",
    data_format: DataFormat = "channels_first",
) -> ArrayT:
    """Cut images into a sequence of square patches.

    Args:
        images: ``(..., C, H, W)`` (channels_first) or ``(..., H, W, C)`` (channels_last);
            a torch tensor or a numpy array. ``H`` and ``W`` must be divisible by ``patch_size``.
        patch_size: side ``p`` of each patch.
        order: ``"raster"`` or ``"snake"`` patch order.
        data_format: layout of both input and output.

    Returns:
        ``(..., T, C, p, p)`` or ``(..., T, p, p, C)`` with ``T = (H / p) * (W / p)``, same type.
        A 28x28 digit ``(1, 28, 28)`` with ``p = 7`` gives ``(16, 1, 7, 7)``.
    """
    check_choice("data_format", data_format, DATA_FORMATS)
    if images.ndim < 3:
        raise ValueError(f"images must have at least 3 dims (..., C, H, W), got shape {tuple(images.shape)}")
    if data_format == "channels_first":
        height, width = images.shape[-2], images.shape[-1]
        pattern = "... c (gh ph) (gw pw) -> ... (gh gw) c ph pw"
    else:
        height, width = images.shape[-3], images.shape[-2]
        pattern = "... (gh ph) (gw pw) c -> ... (gh gw) ph pw c"
    rows, cols = _grid(height, patch_size, "height"), _grid(width, patch_size, "width")
    patches = rearrange(images, pattern, ph=patch_size, pw=patch_size)
    if order == "raster":
        return patches
    return patches[..., _index(patch_order(rows, cols, order), patches), :, :, :]


def unpatchify(
    patches: ArrayT,
    image_size: int | tuple[int, int] | None = None,
    order: Order = "raster",
    data_format: DataFormat = "channels_first",
) -> ArrayT:
    """Reassemble patches made by :func:`patchify` into images (the exact inverse).

    Args:
        patches: ``(..., T, C, p, p)`` (channels_first) or ``(..., T, p, p, C)`` (channels_last).
        image_size: ``H`` or ``(H, W)`` of the image; ``None`` assumes a square grid
            (``T`` a perfect square).
        order: the order the patches were made in.
        data_format: layout of both input and output.

    Returns:
        ``(..., C, H, W)`` or ``(..., H, W, C)``, same type as ``patches``.
    """
    check_choice("data_format", data_format, DATA_FORMATS)
    if patches.ndim < 4:
        raise ValueError(f"patches must have at least 4 dims (..., T, C, p, p), got shape {tuple(patches.shape)}")
    num_patches = patches.shape[-4]
    patch_size = patches.shape[-1] if data_format == "channels_first" else patches.shape[-2]
    if image_size is None:
        side = int(round(num_patches**0.5))
        if side * side != num_patches:
            raise ValueError(f"cannot infer a square grid from {num_patches} patches; pass image_size")
        rows = cols = side
    else:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        rows, cols = _grid(height, patch_size, "height"), _grid(width, patch_size, "width")
        if rows * cols != num_patches:
            raise ValueError(
                f"image_size {(height, width)} with patch_size {patch_size} needs {rows * cols} "
                f"patches, got {num_patches}"
            )
    if order != "raster":
        inverse = np.argsort(patch_order(rows, cols, order))
        patches = patches[..., _index(inverse, patches), :, :, :]
    if data_format == "channels_first":
        return rearrange(patches, "... (gh gw) c ph pw -> ... c (gh ph) (gw pw)", gh=rows, gw=cols)
    return rearrange(patches, "... (gh gw) ph pw c -> ... (gh ph) (gw pw) c", gh=rows, gw=cols)


def _index(indices: np.ndarray, like: ArrayT) -> np.ndarray | torch.Tensor:
    """Indices in the array library of ``like`` (torch tensors need a tensor on their device)."""
    if isinstance(like, torch.Tensor):
        return torch.as_tensor(indices, device=like.device)
    return indices


class MNISTPatchSequences(Dataset):
    """MNIST digits as patch sequences with their labels.

    Item ``i`` is ``(patches, label)``: ``patches`` float32 in [0, 1] of shape
    ``(T, 1, p, p)`` (channels_first) or ``(T, p, p, 1)`` (channels_last) with
    ``T = (28 / p)^2`` (16 for ``p = 7``), and ``label`` an int in 0..9.

    Args:
        root: data root, see :func:`~convlstm_vp.data.digits.load_digits`.
        split: ``"train"`` or ``"test"``.
        patch_size: ``p``, must divide 28 (7 gives 16 patches of 7x7).
        order: ``"raster"`` or ``"snake"``.
        source: ``"auto"``, ``"mnist"`` or ``"embedded"``.
        data_format: ``"channels_first"`` or ``"channels_last"``.
        transform: optional callable on the digit image ``(1, 28, 28)`` float32, applied before
            patchifying (e.g. normalisation).
        target_transform: optional callable on the label.
        download: let torchvision download MNIST.
    """

    def __init__(
        self,
        root: str | os.PathLike = "datasets",
        split: Literal["train", "test"] = "train",
        patch_size: int = 7,
        order: Order = "raster",
        source: Source = "auto",
        data_format: DataFormat = "channels_first",
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        target_transform: Callable[[int], object] | None = None,
        download: bool = False,
    ) -> None:
        check_choice("order", order, _ORDERS)
        check_choice("data_format", data_format, DATA_FORMATS)
        self.grid = _grid(DIGIT_SIZE, patch_size, "digit size")
        self.patch_size = patch_size
        self.order: Order = order
        self.data_format: DataFormat = data_format
        self.transform = transform
        self.target_transform = target_transform
        self.split = split
        self.digits: DigitSet = load_digits(root, split, source, download=download)

    @property
    def num_patches(self) -> int:
        """Sequence length ``T``."""
        return self.grid * self.grid

    def __len__(self) -> int:
        return len(self.digits)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, object]:
        """``(patches (T, 1, p, p) float32 in [0, 1], label)``."""
        image = torch.from_numpy(self.digits.images[index].astype(np.float32) / 255.0)
        image = rearrange(image, "h w -> 1 h w")
        if self.transform is not None:
            image = self.transform(image)
        patches = patchify(image, self.patch_size, self.order)
        if self.data_format == "channels_last":
            patches = rearrange(patches, "t c h w -> t h w c")
        label: object = int(self.digits.labels[index])
        if self.target_transform is not None:
            label = self.target_transform(label)
        return patches, label

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, length={len(self)}, "
            f"patch_size={self.patch_size}, order={self.order!r}, source={self.digits.source!r}, "
            f"data_format={self.data_format!r})"
        )
