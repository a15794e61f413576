"""Sensor-stream building blocks: sliding windows, NaN interpolation, z-score and a window dataset.

A *recording* is a 2-D array ``(N, C)``: N time steps of C sensor channels, with one integer label
per time step ``(N,)``. Models consume *windows* ``(T, C)`` (time, channels) in float32 with one
integer label each; a batch from a ``DataLoader`` is then ``(B, T, C)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

LabelMode = Literal["last", "majority"]
#: Optional callable applied to each ``(T, C)`` window tensor.
WindowTransform = Callable[[torch.Tensor], torch.Tensor] | None
#: Optional callable applied to each integer label.
TargetTransform = Callable[[int], object] | None

__all__ = [
    "LabelMode",
    "Standardizer",
    "TargetTransform",
    "WindowDataset",
    "WindowTransform",
    "interpolate_nans",
    "sliding_windows",
]


def sliding_windows(
    data: np.ndarray,
    labels: np.ndarray,
    window: int = 24,
    step: int = 12,
    label_mode: LabelMode = "last",
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one recording into fixed-length windows.

    Window ``k`` covers samples ``[k * step, k * step + window)``; only windows that fit entirely
    inside the recording are kept, so the tail shorter than a window is dropped. A recording
    shorter than ``window`` yields **zero windows** (arrays with a leading axis of 0), not an
    error, so recordings of any length can be windowed and concatenated. ``step > window`` is
    allowed and skips the samples between windows.

    Args:
        data: ``(N, C)`` sensor samples.
        labels: ``(N,)`` non-negative integer label per sample.
        window: samples per window ``T`` (>= 1).
        step: samples between the starts of consecutive windows (>= 1).
        label_mode: ``"last"``: a window's label is the label of its last sample (the usual
            Opportunity convention); ``"majority"``: the most frequent label in the window, ties
            going to the smallest label.

    Returns:
        ``(windows, window_labels)``: ``windows`` is ``(W, window, C)`` with the dtype of
        ``data``, ``window_labels`` is ``(W,)`` int64, where ``W = (N - window) // step + 1`` for
        ``N >= window`` and 0 otherwise.
    """
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.ndim != 2:
        raise ValueError(f"data must be (N, C) = (time, channels), got shape {tuple(data.shape)}")
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"labels must be (N,) = ({data.shape[0]},) to match data {tuple(data.shape)}, "
            f"got shape {tuple(labels.shape)}"
        )
    if int(window) != window or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    if int(step) != step or step < 1:
        raise ValueError(f"step must be a positive integer, got {step!r}")
    if label_mode not in ("last", "majority"):
        raise ValueError(f"label_mode must be 'last' or 'majority', got {label_mode!r}")
    window, step = int(window), int(step)
    labels = labels.astype(np.int64, copy=False)
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be non-negative class indices, found {labels.min()}")

    num_samples, num_channels = data.shape
    if num_samples < window:
        return np.empty((0, window, num_channels), dtype=data.dtype), np.empty(0, dtype=np.int64)

    starts = np.arange(0, num_samples - window + 1, step)
    # sliding_window_view puts the window axis last: (N - window + 1, C, window).
    views = np.lib.stride_tricks.sliding_window_view(data, window, axis=0)[starts]
    windows = np.ascontiguousarray(np.swapaxes(views, 1, 2))

    if label_mode == "last":
        window_labels = labels[starts + window - 1].copy()
    else:
        label_windows = np.lib.stride_tricks.sliding_window_view(labels, window)[starts]
        num_labels = int(labels.max()) + 1
        # One bincount over (window index, label) pairs counts every window at once.
        keys = np.arange(len(starts))[:, None] * num_labels + label_windows
        counts = np.bincount(keys.ravel(), minlength=len(starts) * num_labels)
        window_labels = counts.reshape(len(starts), num_labels).argmax(axis=1).astype(np.int64)
    return windows, window_labels


def interpolate_nans(data: np.ndarray) -> np.ndarray:
    """Fill NaNs in each channel by linear interpolation over time.

    Leading and trailing NaNs take the nearest valid value of their channel; a channel with no
    valid value at all becomes 0.

    Args:
        data: ``(N, C)`` samples.

    Returns:
        A new ``(N, C)`` float array without NaNs.
    """
    data = np.asarray(data)
    data = data.astype(np.float32 if data.dtype == np.float32 else np.float64, copy=True)
    if data.ndim != 2:
        raise ValueError(f"data must be (N, C) = (time, channels), got shape {tuple(data.shape)}")
    missing = np.isnan(data)
    if not missing.any():
        return data
    time = np.arange(data.shape[0])
    for channel in np.flatnonzero(missing.any(axis=0)):
        valid = ~missing[:, channel]
        if not valid.any():
            data[:, channel] = 0.0
            continue
        # np.interp holds the edge values constant outside the valid range.
        data[:, channel] = np.interp(time, time[valid], data[valid, channel])
    return data


class Standardizer:
    """Per-channel z-score, ``(x - mean) / std``, with statistics fitted on training data only.

    Fit it on the training split and hand the same object (or its ``state_dict()``) to the test
    split, so test data never influences the statistics. Channels whose standard deviation is
    below ``eps`` (constant channels) are divided by 1 instead.

    Example:
        >>> standardizer = Standardizer().fit(train_samples)        # (N, C)
        >>> test_windows = standardizer.transform(test_windows)     # (..., C)
    """

    def __init__(
        self,
        mean: Sequence[float] | np.ndarray | None = None,
        std: Sequence[float] | np.ndarray | None = None,
        eps: float = 1e-8,
    ) -> None:
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (and call fit)")
        self.eps = float(eps)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        if mean is not None and std is not None:
            self._set(np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64))

    def _set(self, mean: np.ndarray, std: np.ndarray) -> None:
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"mean and std must both be (C,), got {tuple(mean.shape)} and {tuple(std.shape)}")
        self.mean = mean
        self.std = np.where(std < self.eps, 1.0, std)

    @property
    def num_channels(self) -> int:
        """Number of channels C the statistics cover."""
        if self.mean is None:
            raise RuntimeError("Standardizer is not fitted; call fit(train_data) first")
        return int(self.mean.shape[0])

    def fit(self, data: np.ndarray | Sequence[np.ndarray]) -> Standardizer:
        """Compute per-channel mean and std.

        Args:
            data: ``(..., C)`` samples, or a list of ``(N_i, C)`` recordings whose samples are
                pooled (each sample counts once, however many windows it later falls into).

        Returns:
            ``self``.
        """
        if isinstance(data, (list, tuple)):
            data = np.concatenate([np.reshape(part, (-1, np.shape(part)[-1])) for part in data])
        data = np.asarray(data, dtype=np.float64)
        if data.ndim < 1 or data.size == 0:
            raise ValueError(f"cannot fit a Standardizer on empty data of shape {data.shape}")
        flat = data.reshape(-1, data.shape[-1])
        self._set(flat.mean(axis=0), flat.std(axis=0))
        return self

    def transform(self, data: np.ndarray) -> np.ndarray:
        """Standardize ``(..., C)`` data; returns float32 of the same shape."""
        if self.mean is None or self.std is None:
            raise RuntimeError("Standardizer is not fitted; call fit(train_data) first")
        data = np.asarray(data)
        if data.shape[-1:] != self.mean.shape:
            raise ValueError(f"data must end in C={self.mean.shape[0]} channels, got shape {tuple(data.shape)}")
        return ((data - self.mean) / self.std).astype(np.float32)

    def fit_transform(self, data: np.ndarray) -> np.ndarray:
        """``fit(data)`` then ``transform(data)``."""
        return self.fit(data).transform(data)

    def state_dict(self) -> dict[str, list[float]]:
        """Plain-data statistics (JSON/YAML friendly) for checkpoints."""
        if self.mean is None or self.std is None:
            raise RuntimeError("Standardizer is not fitted; call fit(train_data) first")
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Sequence[float]]) -> Standardizer:
        """Rebuild a fitted Standardizer from ``state_dict()`` output."""
        return cls(mean=state["mean"], std=state["std"])

    def __repr__(self) -> str:
        fitted = "unfitted" if self.mean is None else f"num_channels={self.num_channels}"
        return f"{type(self).__name__}({fitted})"


class WindowDataset(Dataset):
    """Windows ``(T, C)`` float32 with integer labels; the base of the sensor datasets.

    ``dataset[i]`` is ``(window, label)``: ``window`` a ``(T, C)`` float32 tensor (after
    ``transform``), ``label`` a Python int in ``[0, num_classes)`` (after ``target_transform``).
    The whole split is also available as ``dataset.windows`` ``(W, T, C)`` and
    ``dataset.labels`` ``(W,)`` int64 for full-batch use.

    Args:
        windows: ``(W, T, C)`` windows.
        labels: ``(W,)`` integer labels.
        classes: class names, index = label.
        transform: optional callable applied to each ``(T, C)`` window tensor.
        target_transform: optional callable applied to each label.
    """

    def __init__(
        self,
        windows: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        classes: Sequence[str],
        transform: WindowTransform = None,
        target_transform: TargetTransform = None,
    ) -> None:
        windows = torch.as_tensor(np.asarray(windows, dtype=np.float32))
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        if windows.ndim != 3:
            raise ValueError(f"windows must be (W, T, C), got shape {tuple(windows.shape)}")
        if labels.shape != (windows.shape[0],):
            raise ValueError(f"labels must be (W,) = ({windows.shape[0]},), got shape {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(
                f"labels must lie in [0, {len(classes)}) for {len(classes)} classes, "
                f"got range [{int(labels.min())}, {int(labels.max())}]"
            )
        self.windows = windows
        self.labels = labels
        self.classes = tuple(classes)
        self.transform = transform
        self.target_transform = target_transform

    @property
    def num_channels(self) -> int:
        """Sensor channels C per time step."""
        return int(self.windows.shape[2])

    @property
    def window_length(self) -> int:
        """Time steps T per window."""
        return int(self.windows.shape[1])

    @property
    def num_classes(self) -> int:
        """Number of classes (including any Null class)."""
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, object]:
        window = self.windows[index]
        label: object = int(self.labels[index])
        if self.transform is not None:
            window = self.transform(window)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return window, label

    def class_counts(self) -> torch.Tensor:
        """``(num_classes,)`` int64 number of windows per class."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def extra_repr(self) -> str:
        """Dataset-specific lines for ``repr``; subclasses extend it."""
        return ""

    def __repr__(self) -> str:
        lines = [
            f"Number of windows: {len(self)}",
            f"Window shape (T, C): ({self.window_length}, {self.num_channels})",
            f"Classes: {self.num_classes}",
        ]
        extra = self.extra_repr()
        if extra:
            lines.extend(extra.splitlines())
        body = "\n".join("    " + line for line in lines)
        return f"Dataset {type(self).__name__}\n{body}"


def resolve_standardizer(
    normalize: bool,
    standardizer: Standardizer | None,
    fit_train: Callable[[], np.ndarray | Sequence[np.ndarray]],
    num_channels: int,
) -> Standardizer | None:
    """The statistics a split uses: ``None`` without normalisation, else the given ones, else
    ones fitted on what ``fit_train()`` returns (training samples ``(N, C)`` or a list of
    recordings; called only when needed). Checks they cover ``num_channels`` channels.
    """
    if not normalize:
        return None
    if standardizer is None:
        standardizer = Standardizer().fit(fit_train())
    if standardizer.num_channels != num_channels:
        raise ValueError(f"standardizer covers {standardizer.num_channels} channels, expected {num_channels}")
    return standardizer


def windows_from_recordings(
    recordings: Sequence[tuple[np.ndarray, np.ndarray]],
    window: int,
    step: int,
    label_mode: LabelMode,
    num_channels: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Window each ``(data (N_i, C), labels (N_i,))`` recording separately and concatenate.

    No window crosses from one recording into the next. Returns ``(W, window, C)`` windows and
    ``(W,)`` int64 labels (``W`` may be 0).
    """
    parts = [sliding_windows(data, labels, window, step, label_mode) for data, labels in recordings]
    if not parts:
        return np.empty((0, window, num_channels), dtype=np.float32), np.empty(0, dtype=np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
