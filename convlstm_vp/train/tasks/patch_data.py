"""Batches of MNIST patch sequences for the patch tasks (classification and completion).

Training batches are cut from the train digit pool with the same ``patchify`` that
:class:`~convlstm_vp.data.MNISTPatchSequences` uses, after an optional random shift, rotation
and zoom of each digit; batch ``k`` is a pure function of ``(seed, k, rank)`` (exact resume).
Validation (during training: the best checkpoint, early stopping) holds out a seeded, stratified
``data.val_fraction`` of those train digits (:func:`~convlstm_vp.data.splits.stratified_split`);
the test set, scored once at the end, is the test split's own items, stacked.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

from ...data import MNISTPatchSequences, load_digits, patchify
from ...data.splits import VAL_SPLIT_SEED, stratified_split
from ..distributed import dataset_batch_indices

__all__ = [
    "DATA_DEFAULTS",
    "PatchDigitPool",
    "patch_sequences",
    "random_affine",
    "subset_indices",
    "describe_test_set",
    "load_test_patches",
]

DATA_DEFAULTS: dict = {
    "root": "datasets",
    "source": "auto",  # auto | mnist | embedded
    "patch_size": 7,  # side of a patch; 7 cuts a 28x28 digit into 16 patches
    "order": "raster",  # raster | snake
    "max_shift": 0,  # training augmentation: shift each digit by up to this many pixels,
    "max_rotation": 0.0,  # rotate it by up to this many degrees,
    "max_scale": 0.0,  # and zoom it by a factor in [1 - max_scale, 1 + max_scale]
    "train_size": 0,  # use N evenly spaced train digits (0: all), validation included
    "val_fraction": 0.1,  # share of each class of those held out for validation (best.pt, patience)
    "test_size": 0,  # test on N evenly spaced test digits (0: all)
    "eval_batch_size": 500,
}


def random_affine(
    images: np.ndarray,
    rng: np.random.Generator,
    max_shift: int = 0,
    max_rotation: float = 0.0,
    max_scale: float = 0.0,
) -> np.ndarray:
    """Move every image by its own random shift, rotation and scaling about its centre.

    Args:
        images: ``(N, H, W)`` uint8; pixels moved in from outside are 0.
        rng: source of the random draws: shifts, then angles, then scales, each drawn only
            when its range is non-zero.
        max_shift: whole-pixel shift in ``[-max_shift, max_shift]`` per axis.
        max_rotation: angle in degrees, uniform in ``[-max_rotation, max_rotation]``.
        max_scale: zoom factor uniform in ``[1 - max_scale, 1 + max_scale]``.

    Returns:
        ``(N, H, W)``, same dtype. With only shifts the pixels are moved exactly (no
        interpolation); rotations and scaling interpolate bilinearly.
    """
    n, h, w = images.shape
    if max_shift <= 0 and max_rotation <= 0 and max_scale <= 0:
        return images
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2)) if max_shift > 0 else np.zeros((n, 2), np.int64)
    angles = rng.uniform(-max_rotation, max_rotation, n) if max_rotation > 0 else np.zeros(n)
    scales = 1.0 + rng.uniform(-max_scale, max_scale, n) if max_scale > 0 else np.ones(n)
    out = np.empty_like(images)
    for i in range(n):
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(angles[i]), float(scales[i]))
        matrix[:, 2] += shifts[i, ::-1]  # (dx, dy)
        out[i] = cv2.warpAffine(images[i], matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    return out


def subset_indices(total: int, size: int) -> np.ndarray:
    """``size`` evenly spaced indices into ``total`` items (all of them for ``size=0``).

    Evenly spaced rather than the first ``size``: the embedded digits are sorted by label, so
    a prefix would hold a single class.
    """
    if size > total:
        raise ValueError(f"cannot take {size} of {total} items")
    if size == 0 or size == total:
        return np.arange(total)
    return np.linspace(0, total - 1, size).round().astype(np.int64)


def patch_sequences(images: np.ndarray, patch_size: int, order: str) -> Tensor:
    """uint8 digits ``(N, 28, 28)`` → float32 patch sequences ``(N, T, 1, p, p)`` in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images).astype(np.float32) / 255.0).unsqueeze(1)
    return patchify(x, patch_size, order)


class PatchDigitPool:
    """The train digits a patch task samples its batches from, and the validation digits held
    out of them (``data.val_fraction`` of each class, seeded: :func:`stratified_split`).

    Args:
        data: the task's ``data`` config (keys of :data:`DATA_DEFAULTS`).
        seed: the run's seed.
    """

    def __init__(self, data: dict, seed: int) -> None:
        digits = load_digits(data["root"], "train", data["source"])
        if data["train_size"] > len(digits):
            raise ValueError(
                f"config key 'data.train_size': {data['train_size']} is more than the {len(digits)} train digits"
            )
        pool = subset_indices(len(digits), data["train_size"])  # into the train split
        fit, val = stratified_split(digits.labels[pool], data["val_fraction"], VAL_SPLIT_SEED)
        self.indices, self.val_indices = pool[fit], pool[val]
        self.images = digits.images[self.indices]
        self.labels = torch.tensor(digits.labels[self.indices], dtype=torch.int64)
        self.val_images = digits.images[self.val_indices]
        self.val_labels = torch.tensor(digits.labels[self.val_indices], dtype=torch.int64)
        self.source = digits.source
        self.data = data
        self.seed = int(seed)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def val_set(self) -> tuple[Tensor, Tensor]:
        """The validation digits as ``(patches (N, T, 1, p, p), labels (N,))``, not augmented."""
        return patch_sequences(self.val_images, self.data["patch_size"], self.data["order"]), self.val_labels

    def val_description(self) -> dict:
        n = len(self.val_indices)
        return {
            "split": "validation",
            "digits": n,
            "what": f"{n} train digits held out for validation ({self.data['val_fraction']:g} of each class, seeded)",
        }

    def batch(self, step: int, rank: int, world: int, batch_size: int, augment: bool = True) -> tuple[Tensor, Tensor]:
        """Batch ``step`` of ``rank``: ``(patches (B, T, 1, p, p) float32, labels (B,) int64)``."""
        idx = dataset_batch_indices(len(self), batch_size, step, self.seed, rank, world)
        images = self.images[idx]
        if augment:
            rng = np.random.default_rng([self.seed, step, rank])
            d = self.data
            images = random_affine(images, rng, d["max_shift"], d["max_rotation"], d["max_scale"])
        return patch_sequences(images, self.data["patch_size"], self.data["order"]), self.labels[idx]


def load_test_patches(data: dict) -> tuple[Tensor, Tensor]:
    """The test set: ``(patches (N, T, 1, p, p), labels (N,))``: the test split's items (or
    ``data.test_size`` evenly spaced ones, see :func:`subset_indices`), in split order."""
    ds = MNISTPatchSequences(data["root"], "test", data["patch_size"], data["order"], data["source"])
    if data["test_size"] > len(ds):
        raise ValueError(f"config key 'data.test_size': {data['test_size']} is more than the {len(ds)} test digits")
    items = [ds[int(i)] for i in subset_indices(len(ds), data["test_size"])]
    return torch.stack([p for p, _ in items]), torch.tensor([int(y) for _, y in items], dtype=torch.int64)


def describe_test_set(data: dict, n: int) -> dict:
    """The ``evaluated_on`` entry of a patch task's test: which test digits, how many."""
    what = (
        "test split, all digits" if not data["test_size"] else f"test split, {n} evenly spaced digits (data.test_size)"
    )
    return {"split": "test", "digits": n, "what": what}
