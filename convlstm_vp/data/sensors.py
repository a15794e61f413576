"""Sensor datasets for activity recognition: windows ``(T, C)`` float32 and an integer label.

Public names:

- ``sliding_windows``, ``Standardizer``, ``interpolate_nans``, ``WindowDataset``: the generic
  stream-to-windows path (``sensor_windows.py``).
- ``Opportunity``: the UCI OPPORTUNITY benchmark, 113 body-worn channels (``opportunity.py``);
  the user downloads the files.
- ``BasicMotions`` and ``Daphnet``: real recordings that ship inside the ``aeon`` package, so the
  sensor branch trains and tests without any download.

Every dataset normalizes with statistics of its training split only and exposes them as
``dataset.standardizer``; pass that object to the test split (``standardizer=...``) to reuse it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
from einops import rearrange

from .opportunity import BODY_WORN_CHANNELS, GESTURE_CLASSES, LOCOMOTION_CLASSES, Opportunity
from .safe_io import InputError, first_line, read_text
from .sensor_windows import (
    LabelMode,
    Standardizer,
    TargetTransform,
    WindowDataset,
    WindowTransform,
    interpolate_nans,
    resolve_standardizer,
    sliding_windows,
    windows_from_recordings,
)

Split = Literal["train", "test"]

__all__ = [
    "BODY_WORN_CHANNELS",
    "BasicMotions",
    "Daphnet",
    "GESTURE_CLASSES",
    "LOCOMOTION_CLASSES",
    "Opportunity",
    "Standardizer",
    "WindowDataset",
    "aeon_data_dir",
    "interpolate_nans",
    "sliding_windows",
]


def aeon_data_dir() -> Path:
    """The folder of example datasets that the installed ``aeon`` package ships.

    Raises ``ModuleNotFoundError`` naming the package and the alternative (a ``root`` folder
    holding the files) when ``aeon`` is not installed.
    """
    try:
        import aeon.datasets
    except ImportError as e:
        raise ModuleNotFoundError(
            "BasicMotions and Daphnet read by default the copies that the 'aeon' package ships "
            "(aeon/datasets/data/), but aeon is not installed: pip install 'aeon>=1.0', or pass "
            "root= a folder holding BasicMotions_TRAIN.ts / BasicMotions_TEST.ts "
            "(Daphnet: csv_path= the S06R02E0.csv file)",
            name="aeon",
        ) from e

    return Path(aeon.datasets.__file__).resolve().parent / "data"


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


class BasicMotions(WindowDataset):
    """aeon's BasicMotions: smartwatch accelerometer + gyroscope, 4 activities, shipped with aeon.

    Four people wore a smartwatch while standing, walking, running and playing badminton; each
    case is 10 s at 10 Hz of 3-axis accelerometer and 3-axis gyroscope. 40 training and 40 test
    cases, 10 per class. Each case is one window.

    ``dataset[i]`` is ``(window (100, 6) float32, label)`` with labels
    ``0: badminton, 1: running, 2: standing, 3: walking``. Channels are z-scored with the mean and
    standard deviation of all training samples.

    Args:
        split: ``"train"`` or ``"test"``.
        root: folder holding ``BasicMotions_TRAIN.ts`` / ``BasicMotions_TEST.ts``; ``None`` reads
            the copy inside the installed aeon package.
        normalize: z-score the channels.
        standardizer: fitted statistics to use; ``None`` fits them on the training file.
        transform, target_transform: optional callables on each window / label.
    """

    CLASSES = ("badminton", "running", "standing", "walking")

    def __init__(
        self,
        split: Split = "train",
        *,
        root: str | Path | None = None,
        normalize: bool = True,
        standardizer: Standardizer | None = None,
        transform: WindowTransform = None,
        target_transform: TargetTransform = None,
    ) -> None:
        _check_split(split)
        self.root = Path(root) if root is not None else aeon_data_dir() / "BasicMotions"
        self.split = split
        cases, labels = self._load(split)
        self.standardizer = resolve_standardizer(
            normalize, standardizer, lambda: self._load("train")[0], cases.shape[-1]
        )
        if self.standardizer is not None:
            cases = self.standardizer.transform(cases)
        super().__init__(cases, labels, self.CLASSES, transform, target_transform)

    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Cases ``(n, T=100, C=6)`` float64 and labels ``(n,)`` int64 of one split file."""
        from aeon.datasets import load_from_ts_file

        path = self.root / f"BasicMotions_{split.upper()}.ts"
        if not path.is_file():
            raise FileNotFoundError(
                f"BasicMotions file not found: {path}. It ships with aeon "
                f"(aeon/datasets/data/BasicMotions/); pass root=None to use that copy."
            )
        cases, names = load_from_ts_file(str(path), return_type="numpy3d")
        names = np.char.lower(np.asarray(names, dtype=str))
        unknown = sorted(set(names.tolist()) - set(self.CLASSES))
        if unknown:
            raise ValueError(f"{path}: unknown class labels {unknown}, expected {self.CLASSES}")
        labels = np.searchsorted(np.array(self.CLASSES), names).astype(np.int64)
        return rearrange(np.asarray(cases, dtype=np.float64), "n c t -> n t c"), labels

    def extra_repr(self) -> str:
        return f"Root location: {self.root}\nSplit: {self.split}"


class Daphnet(WindowDataset):
    """One Daphnet freezing-of-gait recording shipped with aeon (``S06R02E0``), windowed.

    A Parkinson's patient walks wearing three 3-axis accelerometers (ankle, upper leg, trunk:
    9 channels, 64 Hz, 7040 samples = 110 s). The stream goes through ``sliding_windows``; the
    split is by time: the first ``train_fraction`` of the samples are training data, the rest
    test data, and no window crosses the boundary. Channels are z-scored with training-part
    statistics.

    Labels come from the ``is_anomaly`` column: ``0: no_freeze, 1: freeze``. This particular
    recording contains **no freeze episode** (every sample is 0), so it exercises the
    stream-windowing path (and suits forecasting or self-supervised use) but is not a
    classification benchmark; use ``BasicMotions`` or ``Opportunity`` for that.

    Args:
        split: ``"train"`` or ``"test"``.
        window: samples per window ``T`` (64 = 1 s).
        step: samples between window starts.
        label_mode: ``"last"`` or ``"majority"``.
        train_fraction: share of the stream (from its start) used for training, in (0, 1).
        csv_path: a CSV in the same format; ``None`` reads aeon's shipped copy.
        normalize: z-score the channels.
        standardizer: fitted statistics to use; ``None`` fits them on the training part.
        transform, target_transform: optional callables on each window / label.
    """

    CLASSES = ("no_freeze", "freeze")
    CHANNELS = (
        "ankle_horiz_fwd",
        "ankle_vert",
        "ankle_horiz_lateral",
        "leg_horiz_fwd",
        "leg_vert",
        "leg_horiz_lateral",
        "trunk_horiz_fwd",
        "trunk_vert",
        "trunk_horiz_lateral",
    )
    LABEL_COLUMN = "is_anomaly"

    def __init__(
        self,
        split: Split = "train",
        window: int = 64,
        step: int = 32,
        *,
        label_mode: LabelMode = "last",
        train_fraction: float = 0.7,
        csv_path: str | Path | None = None,
        normalize: bool = True,
        standardizer: Standardizer | None = None,
        transform: WindowTransform = None,
        target_transform: TargetTransform = None,
    ) -> None:
        _check_split(split)
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
        self.csv_path = (
            Path(csv_path) if csv_path is not None else aeon_data_dir() / "Daphnet_S06R02E0" / "S06R02E0.csv"
        )
        self.split = split
        data, labels = self._read()
        #: First sample of the test part; training windows end before it, test windows start at
        #: or after it.
        self.boundary = int(round(train_fraction * len(data)))
        part = slice(0, self.boundary) if split == "train" else slice(self.boundary, None)
        self.standardizer = resolve_standardizer(normalize, standardizer, lambda: data[: self.boundary], data.shape[1])
        stream = data[part]
        if self.standardizer is not None:
            stream = self.standardizer.transform(stream)
        windows, window_labels = windows_from_recordings(
            [(stream, labels[part])], window, step, label_mode, data.shape[1]
        )
        super().__init__(windows, window_labels, self.CLASSES, transform, target_transform)

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        """The stream ``(N, 9)`` float64 (NaNs interpolated) and labels ``(N,)`` int64."""
        if not self.csv_path.is_file():
            raise FileNotFoundError(
                f"Daphnet file not found: {self.csv_path}. aeon ships it as "
                f"aeon/datasets/data/Daphnet_S06R02E0/S06R02E0.csv; pass csv_path=None to use it."
            )
        text = read_text(self.csv_path, "Daphnet .csv")
        header = [name.strip() for name in (text.splitlines() or [""])[0].split(",")]
        wanted = list(self.CHANNELS) + [self.LABEL_COLUMN]
        missing = [name for name in wanted if name not in header]
        if missing:
            raise ValueError(f"{self.csv_path}: missing columns {missing}; expected a header with {wanted}")
        try:
            table = np.loadtxt(
                io.StringIO(text), delimiter=",", skiprows=1, ndmin=2, usecols=[header.index(name) for name in wanted]
            )
        except ValueError as exc:
            raise InputError(f"{self.csv_path}: not a Daphnet table of numbers ({first_line(exc)})") from None
        labels = table[:, -1]
        if np.isnan(labels).any() or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{self.csv_path}: column {self.LABEL_COLUMN!r} must hold 0 or 1")
        return interpolate_nans(table[:, :-1]), labels.astype(np.int64)

    def extra_repr(self) -> str:
        return f"Source: {self.csv_path}\nSplit: {self.split}\nTrain/test boundary: {self.boundary}"
