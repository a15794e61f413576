"""Moving MNIST: bouncing MNIST digits on a square canvas (Srivastava et al., 2015).

Each sequence places ``num_digits`` 28x28 digits at uniform random positions on an
``image_size`` x ``image_size`` canvas; every digit moves in its own uniform random direction at a
fixed speed (3.6 px/frame by default, the original 0.1 step on a 36-px range) and reflects off the
walls, so its speed never changes. Overlapping digits are combined with a pixel-wise maximum.

Layout: frames are float32 in [0, 1]; an item is ``(T, 1, H, W)`` (``data_format=
"channels_first"``) or ``(T, H, W, 1)`` (``"channels_last"``); batches add a leading ``B``.

The standard test set ``mnist_test_seq.npy`` (shape ``(20, 10000, 64, 64)``, uint8) is used for
``split="test"`` when it is present at ``<root>/moving_mnist/mnist_test_seq.npy``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset

from .digits import DATA_FORMATS, DataFormat, DigitSet, Source, check_choice, load_digits
from .safe_io import read_npy

__all__ = [
    "MovingMNIST",
    "bouncing_trajectories",
    "render_moving_mnist",
    "moving_mnist_batch",
    "frames_to_tensor",
    "motion_targets",
    "standard_test_file",
    "STANDARD_TEST_URL",
    "DEFAULT_SPEED",
]

logger = logging.getLogger(__name__)

_SPLIT_CODES = {"train": 0, "test": 1, "val": 2}
# the last entry of a validation item's seed: validation seeds have four entries, so none equals
# the three-entry (seed, step, rank) of a training batch or a test item's (seed, 1, index)
_VAL_TAG = 7919

DEFAULT_SPEED = 3.6
"""Pixels per frame: the original generator's step of 0.1 over the 36-px range of a 64-px canvas."""
STANDARD_TEST_URL = "http://www.cs.toronto.edu/~nitish/unsupervised_video/mnist_test_seq.npy"


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def bouncing_trajectories(
    num_sequences: int,
    num_frames: int,
    num_digits: int = 2,
    *,
    image_size: int = 64,
    digit_size: int = 28,
    speed: float = DEFAULT_SPEED,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of digits bouncing inside the canvas.

    A digit starts at a uniform position in ``[0, L]^2`` with ``L = image_size - digit_size``,
    moves at ``speed`` px/frame in a uniform random direction and reflects off the walls. The
    reflection is computed in closed form (the unbounded straight path folded into ``[0, L]``),
    so the distance travelled per frame is exactly ``speed``.

    Returns:
        ``(positions, velocities)``, both float64 of shape ``(N, D, T, 2)`` with ``(y, x)`` in
        the last axis: ``positions[..., t, :]`` lies in ``[0, L]`` and ``velocities[..., t, :]``
        is the velocity leaving frame ``t`` (its norm is always ``speed``).
    """
    if image_size <= digit_size:
        raise ValueError(f"image_size must be larger than digit_size={digit_size}, got {image_size}")
    if num_sequences < 0 or num_frames < 1 or num_digits < 1:
        raise ValueError(
            "expected num_sequences >= 0, num_frames >= 1 and num_digits >= 1, got "
            f"{num_sequences}, {num_frames}, {num_digits}"
        )
    rng = _as_rng(rng)
    limit = float(image_size - digit_size)
    start = rng.uniform(0.0, limit, size=(num_sequences, num_digits, 1, 2))
    theta = rng.uniform(0.0, 2.0 * np.pi, size=(num_sequences, num_digits, 1))
    velocity0 = speed * np.stack([np.sin(theta), np.cos(theta)], axis=-1)  # (N, D, 1, 2)
    steps = np.arange(num_frames, dtype=np.float64)[:, None]  # (T, 1)
    phase = np.mod(start + velocity0 * steps, 2.0 * limit)  # (N, D, T, 2)
    reflected = phase > limit
    positions = np.where(reflected, 2.0 * limit - phase, phase)
    velocities = np.where(reflected, -velocity0, velocity0)
    return positions, velocities


def render_moving_mnist(
    digits: np.ndarray,
    num_sequences: int,
    num_frames: int = 20,
    num_digits: int = 2,
    image_size: int = 64,
    *,
    speed: float = DEFAULT_SPEED,
    rng: np.random.Generator | int | None = None,
    return_trajectories: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render Moving MNIST sequences as uint8 frames.

    Args:
        digits: uint8 digit pool of shape ``(M, h, w)`` (MNIST: ``h = w = 28``).
        num_sequences: ``N``, the number of sequences.
        num_frames: ``T``, frames per sequence.
        num_digits: ``D``, digits per sequence, drawn uniformly from the pool with replacement.
        image_size: canvas side ``S``.
        speed: pixels per frame.
        rng: a ``numpy.random.Generator`` or a seed.
        return_trajectories: also return the integer top-left corners and the digit indices.

    Returns:
        frames: uint8 ``(N, T, S, S)``; with ``return_trajectories`` also ``corners`` int64
        ``(N, D, T, 2)`` (``(y, x)``, each in ``[0, S - h]``) and ``digit_ids`` int64 ``(N, D)``.
    """
    if digits.ndim != 3 or digits.dtype != np.uint8 or digits.shape[1] != digits.shape[2]:
        raise ValueError(f"digits must be a uint8 array of shape (M, h, h), got {digits.dtype} {digits.shape}")
    if len(digits) == 0:
        raise ValueError("digits must contain at least one digit, got an empty pool")
    rng = _as_rng(rng)
    digit_size = digits.shape[1]
    digit_ids = rng.integers(0, len(digits), size=(num_sequences, num_digits))
    positions, _ = bouncing_trajectories(
        num_sequences,
        num_frames,
        num_digits,
        image_size=image_size,
        digit_size=digit_size,
        speed=speed,
        rng=rng,
    )
    corners = np.rint(positions).astype(np.int64)
    frames = np.zeros((num_sequences, num_frames, image_size, image_size), dtype=np.uint8)
    # One small np.maximum per (sequence, digit, frame) into a slice view: ~40 pastes per
    # sequence, far cheaper than scatter-based indexing for 28x28 windows.
    for n in range(num_sequences):
        sequence = frames[n]
        for d in range(num_digits):
            digit = digits[digit_ids[n, d]]
            for t, (y, x) in enumerate(corners[n, d].tolist()):
                window = sequence[t, y : y + digit_size, x : x + digit_size]
                np.maximum(window, digit, out=window)
    if return_trajectories:
        return frames, corners, digit_ids
    return frames


def _touched_cells(
    digits: np.ndarray, corners: np.ndarray, digit_ids: np.ndarray, image_size: int, c: int
) -> np.ndarray:
    """``(N, D, T, S/c, S/c)`` bool: the ``c`` x ``c`` cells each placed digit's ink touches.

    Which cells a glyph touches depends only on its corner modulo ``c`` (its phase within a cell)
    and is then moved by whole cells: each used glyph's cell map is computed once per phase, and
    every placement copies its map into the grid.
    """
    n, d, t, _ = corners.shape
    h = digits.shape[1]
    g = image_size // c
    span = -(-(h + c - 1) // c)  # cells a glyph can reach from any phase
    used, inverse = np.unique(digit_ids, return_inverse=True)
    ink = digits[used] > 0  # (U, h, h)
    padded = np.zeros((len(used), c, c, span * c, span * c), dtype=bool)
    for py in range(c):
        for px in range(c):
            padded[:, py, px, py : py + h, px : px + h] = ink
    local = padded.reshape(len(used), c, c, span, c, span, c).any(axis=(4, 6))  # (U, c, c, span, span)
    flat = corners.reshape(-1, 2)
    glyph = np.repeat(inverse.reshape(-1), t)  # the pool row of every (sequence, digit, frame)
    maps = local[glyph, flat[:, 0] % c, flat[:, 1] % c]  # (M, span, span)
    steps = np.arange(span)
    rows = (flat[:, 0] // c)[:, None] + steps  # (M, span)
    cols = (flat[:, 1] // c)[:, None] + steps
    grid = np.zeros((len(flat), g + span, g + span), dtype=bool)  # cells past the canvas hold no ink
    grid[np.arange(len(flat))[:, None, None], rows[:, :, None], cols[:, None, :]] = maps
    return grid[:, :g, :g].reshape(n, d, t, g, g)


def motion_targets(
    digits: np.ndarray,
    corners: np.ndarray,
    digit_ids: np.ndarray,
    image_size: int = 64,
    cell_size: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Where each cell of each frame comes from: the true motion of the generated digits.

    A digit moves rigidly, so every pixel of frame ``t`` near it is pixel ``p + (corner[t - 1] -
    corner[t])`` of frame ``t - 1`` (its own ink and the background around it alike). For the
    ``cell_size`` x ``cell_size`` cells that one digit's ink touches in frame ``t`` or ``t - 1``
    and no other digit's ink touches in either, that offset is the target; other cells (blank
    background, where any source is right, and cells two digits share) carry no target.

    Args:
        digits: the uint8 pool ``(M, h, h)`` the frames were rendered from.
        corners: integer top-left corners ``(N, D, T, 2)`` as ``(y, x)``, and
        digit_ids: ``(N, D)``, both as :func:`render_moving_mnist` returns them.
        image_size: canvas side ``S``; ``cell_size`` must divide it.

    Returns:
        ``offsets`` float32 ``(N, T - 1, 2, S/c, S/c)``: ``(dy, dx)`` source offset of frames
        ``1 .. T-1``, and ``weights`` float32 ``(N, T - 1, 1, S/c, S/c)``: 1 where the offset is
        a target, else 0 (the offset there is 0).
    """
    if corners.ndim != 4 or corners.shape[-1] != 2 or digit_ids.shape != corners.shape[:2]:
        raise ValueError(
            f"motion_targets: expected corners (N, D, T, 2) and digit_ids (N, D), got {corners.shape} and {digit_ids.shape}"
        )
    if not isinstance(cell_size, int) or cell_size < 1 or image_size % cell_size:
        raise ValueError(
            f"motion_targets: cell_size must be a positive int dividing image_size={image_size}, got {cell_size!r}"
        )
    h = digits.shape[1]
    if corners.size and (corners.min() < 0 or corners.max() > image_size - h):
        raise ValueError(
            f"motion_targets: corners must lie in [0, {image_size - h}] for {h}x{h} digits on a {image_size}x{image_size} "
            f"canvas, got values from {corners.min()} to {corners.max()}"
        )
    touched = _touched_cells(digits, corners, digit_ids, image_size, cell_size)  # (N, D, T, g, g)
    near = touched[:, :, 1:] | touched[:, :, :-1]  # (N, D, T-1, g, g)
    count = near.sum(axis=1, keepdims=True)
    owned = near & (count == 1)  # one digit only
    shift = (corners[:, :, :-1] - corners[:, :, 1:]).astype(np.float32)  # (N, D, T-1, 2)
    offsets = (owned[:, :, :, None] * shift[..., None, None]).sum(axis=1)  # (N, T-1, 2, g, g)
    weights = owned.any(axis=1)[:, :, None].astype(np.float32)
    return offsets.astype(np.float32), weights


def frames_to_tensor(frames: np.ndarray, data_format: DataFormat = "channels_first") -> torch.Tensor:
    """uint8 frames ``(..., T, H, W)`` to float32 in [0, 1]: ``(..., T, 1, H, W)`` or ``(..., T, H, W, 1)``."""
    check_choice("data_format", data_format, DATA_FORMATS)
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).to(torch.float32).div_(255.0)
    if data_format == "channels_first":
        return rearrange(tensor, "... t h w -> ... t 1 h w")
    return rearrange(tensor, "... t h w -> ... t h w 1")


def moving_mnist_batch(
    batch_size: int,
    *,
    digits: DigitSet | np.ndarray | None = None,
    root: str | os.PathLike = "datasets",
    split: Literal["train", "test"] = "train",
    source: Source = "auto",
    num_digits: int = 2,
    num_frames: int = 20,
    image_size: int = 64,
    speed: float = DEFAULT_SPEED,
    rng: np.random.Generator | int | None = None,
    data_format: DataFormat = "channels_first",
) -> torch.Tensor:
    """Generate a batch of Moving MNIST sequences directly as a tensor (no Dataset/DataLoader).

    Args:
        batch_size: ``B``.
        digits: the digit pool; ``None`` loads ``split`` of ``source`` from ``root`` via
            :func:`~convlstm_vp.data.digits.load_digits`.
        rng: a ``numpy.random.Generator`` (advanced in place, so successive calls differ) or seed.

    Returns:
        float32 tensor in [0, 1] of shape ``(B, T, 1, S, S)``, or ``(B, T, S, S, 1)`` for
        ``data_format="channels_last"``.
    """
    if digits is None:
        digits = load_digits(root, split, source)
    pool = digits.images if isinstance(digits, DigitSet) else digits
    frames = render_moving_mnist(pool, batch_size, num_frames, num_digits, image_size, speed=speed, rng=rng)
    return frames_to_tensor(frames, data_format)


def standard_test_file(root: str | os.PathLike = "datasets") -> Path:
    """Where the standard Moving MNIST test set is expected: ``<root>/moving_mnist/mnist_test_seq.npy``."""
    return Path(root) / "moving_mnist" / "mnist_test_seq.npy"


class MovingMNIST(Dataset):
    """Moving MNIST sequences for video prediction.

    Items are float32 tensors in [0, 1] of shape ``(T, 1, S, S)`` (``channels_first``) or
    ``(T, S, S, 1)`` (``channels_last``); there is no label. Video prediction splits an item along
    ``T`` into input and target frames.

    ``split="train"`` renders items on the fly from the train digit pool. Item ``i`` is seeded by
    ``(seed, epoch, i)``, so a DataLoader with any number of workers yields the same, non-repeating
    items, and calling :meth:`set_epoch` before each epoch gives new sequences. With
    ``persistent_workers=True`` the workers keep the epoch they started with; use non-persistent
    workers (the default) or :func:`moving_mnist_batch` when sequences must change every epoch.

    ``split="test"`` is a fixed, reproducible set: the standard file
    ``<root>/moving_mnist/mnist_test_seq.npy`` when present (see ``standard_file``), otherwise
    items rendered from the test digit pool, seeded by ``(seed, i)`` only.

    ``split="val"`` is a fixed validation set drawn from the *train* digit pool with its own seeds
    (never those of training batches or test items): what training evaluates to pick its best
    checkpoint and stop early, so the test digits are left to the final evaluation.

    Args:
        root: data root (MNIST IDX files, the standard test file).
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_digits: digits per sequence.
        num_frames: ``T``; for the standard file, the first ``T`` of its 20 frames.
        image_size: canvas side ``S``.
        length: number of items; for the standard file capped at the number of sequences in it.
        seed: base seed of the generated items.
        source: digit source, see :func:`~convlstm_vp.data.digits.load_digits`.
        transform: optional callable applied to each item tensor (after the layout change).
        data_format: ``"channels_first"`` or ``"channels_last"``.
        standard_file: ``None`` uses the standard test file for ``split="test"`` when it exists
            and matches the request (2 digits, its image size, ``num_frames`` <= its frames);
            ``True`` requires it (FileNotFoundError if missing); ``False`` always generates.
        download: let torchvision download MNIST when the digit source needs it.
        speed: digit speed in px/frame.
    """

    def __init__(
        self,
        root: str | os.PathLike = "datasets",
        split: Literal["train", "val", "test"] = "train",
        num_digits: int = 2,
        num_frames: int = 20,
        image_size: int = 64,
        length: int = 10000,
        seed: int = 0,
        source: Source = "auto",
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        data_format: DataFormat = "channels_first",
        standard_file: bool | None = None,
        download: bool = False,
        speed: float = DEFAULT_SPEED,
    ) -> None:
        check_choice("split", split, tuple(_SPLIT_CODES))
        check_choice("data_format", data_format, DATA_FORMATS)
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        if standard_file and split != "test":
            raise ValueError("standard_file=True needs split='test': the standard file is a test set")
        self.root = Path(root)
        self.split = split
        self.num_digits = num_digits
        self.num_frames = num_frames
        self.image_size = image_size
        self.seed = int(seed)
        self.source = source
        self.transform = transform
        self.data_format = data_format
        self.speed = speed
        self.epoch = 0
        self.standard_path: Path | None = None
        self._standard_array: np.ndarray | None = None
        self.digits: DigitSet | None = None

        if split == "test" and standard_file is not False:
            self.standard_path = self._find_standard_file(required=bool(standard_file))
        if self.standard_path is not None:
            file_sequences = self._standard().shape[1]
            self.length = min(length, file_sequences)
            logger.info("Moving MNIST test set: standard file %s (%d sequences)", self.standard_path, self.length)
        else:
            self.length = length
            self.digits = load_digits(root, self._digit_split, source, download=download)
            # Validate the generator settings once, here rather than in a worker.
            bouncing_trajectories(
                0, num_frames, num_digits, image_size=image_size, digit_size=self.digits.images.shape[1]
            )
        self._batch_rng = np.random.default_rng([self.seed, _SPLIT_CODES[split], 2**31])

    @property
    def _digit_split(self) -> str:
        """The digit pool this split renders from: validation sequences use the train digits."""
        return "test" if self.split == "test" else "train"

    def _find_standard_file(self, required: bool) -> Path | None:
        path = standard_test_file(self.root)
        if not path.is_file():
            if required:
                raise FileNotFoundError(
                    f"Moving MNIST standard test file not found: {path}. Download it from "
                    f"{STANDARD_TEST_URL} into {path.parent}/ (see datasets/README.md), or pass "
                    "standard_file=None/False to generate the test set from MNIST test digits."
                )
            return None
        array = read_npy(path, mmap_mode="r")
        if array.ndim != 4 or array.dtype != np.uint8 or array.shape[2] != array.shape[3]:
            raise ValueError(
                f"{path} must be a uint8 array of shape (T, N, S, S) like (20, 10000, 64, 64), "
                f"got {array.dtype} {array.shape}"
            )
        frames, _, size, _ = array.shape
        mismatch = []
        if self.num_digits != 2:
            mismatch.append(f"num_digits={self.num_digits} (file has 2)")
        if self.image_size != size:
            mismatch.append(f"image_size={self.image_size} (file has {size})")
        if self.num_frames > frames:
            mismatch.append(f"num_frames={self.num_frames} (file has {frames})")
        if mismatch:
            if required:
                raise ValueError(f"standard file {path} does not match the request: {', '.join(mismatch)}")
            logger.info("Not using %s (%s); generating the test set", path, ", ".join(mismatch))
            return None
        return path

    def _standard(self) -> np.ndarray:
        # Opened lazily in each process so that pickling the dataset for workers stays cheap.
        if self._standard_array is None:
            assert self.standard_path is not None
            self._standard_array = np.load(self.standard_path, mmap_mode="r")
        return self._standard_array

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_standard_array"] = None
        return state

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose training sequences ``__getitem__`` returns (no effect on val or test)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _item_rng(self, index: int) -> np.random.Generator:
        if self.split == "train":
            return np.random.default_rng([self.seed, _SPLIT_CODES["train"], self.epoch, index])
        if self.split == "val":
            return np.random.default_rng([self.seed, _SPLIT_CODES["val"], index, _VAL_TAG])
        return np.random.default_rng([self.seed, _SPLIT_CODES["test"], index])

    def __getitem__(self, index: int) -> torch.Tensor:
        """Sequence ``index`` as float32 ``(T, 1, S, S)`` (or ``(T, S, S, 1)``) in [0, 1]."""
        index = int(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for MovingMNIST of length {self.length}")
        if self.standard_path is not None:
            frames = np.asarray(self._standard()[: self.num_frames, index])
        else:
            assert self.digits is not None
            frames = render_moving_mnist(
                self.digits.images,
                1,
                self.num_frames,
                self.num_digits,
                self.image_size,
                speed=self.speed,
                rng=self._item_rng(index),
            )[0]
        item = frames_to_tensor(frames, self.data_format)
        return self.transform(item) if self.transform is not None else item

    def _tracks(self, index: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        """Corners ``(1, D, T, 2)`` and digit indices ``(1, D)`` of generated sequence ``index``."""
        if self.standard_path is not None:
            raise ValueError(
                f"{what}: the standard test file {self.standard_path} has no trajectories; "
                "use a generated test set (standard_file=False)"
            )
        index = int(index)
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for MovingMNIST of length {self.length}")
        assert self.digits is not None
        _, corners, ids = render_moving_mnist(
            self.digits.images,
            1,
            self.num_frames,
            self.num_digits,
            self.image_size,
            speed=self.speed,
            rng=self._item_rng(index),
            return_trajectories=True,
        )
        return corners, ids

    def trajectories(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Where the digits of sequence ``index`` are and what they are: integer top-left corners
        ``(D, T, 2)`` as ``(y, x)`` and labels ``(D,)`` (generated sets only: the standard file
        stores frames, not trajectories)."""
        corners, ids = self._tracks(index, "trajectories")
        assert self.digits is not None
        return corners[0], self.digits.labels[ids[0]]

    def motion(self, index: int, cell_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """The true motion of sequence ``index`` per ``cell_size`` cell: :func:`motion_targets`'
        ``(offsets, weights)`` for frames ``1 .. T-1``, ``(T - 1, 2, S/c, S/c)`` and
        ``(T - 1, 1, S/c, S/c)`` (generated sets only, like :meth:`trajectories`)."""
        corners, ids = self._tracks(index, "motion")
        assert self.digits is not None
        offsets, weights = motion_targets(self.digits.images, corners, ids, self.image_size, cell_size)
        return offsets[0], weights[0]

    def generate_batch(self, batch_size: int, rng: np.random.Generator | int | None = None) -> torch.Tensor:
        """A fresh batch from this dataset's digit pool, ``(B, T, 1, S, S)`` (or channels_last).

        Uses ``rng`` when given, else a generator seeded from ``seed`` and kept by the dataset, so
        successive calls differ and a run is reproducible. The transform is not applied.
        """
        if self.digits is None:
            self.digits = load_digits(self.root, self._digit_split, self.source)
        return moving_mnist_batch(
            batch_size,
            digits=self.digits,
            num_digits=self.num_digits,
            num_frames=self.num_frames,
            image_size=self.image_size,
            speed=self.speed,
            rng=self._batch_rng if rng is None else rng,
            data_format=self.data_format,
        )

    def __repr__(self) -> str:
        where = (
            f"standard_file={self.standard_path}"
            if self.standard_path
            else (f"source={self.digits.source if self.digits else self.source}")
        )
        return (
            f"{type(self).__name__}(split={self.split!r}, length={self.length}, "
            f"num_digits={self.num_digits}, num_frames={self.num_frames}, "
            f"image_size={self.image_size}, {where}, data_format={self.data_format!r})"
        )
