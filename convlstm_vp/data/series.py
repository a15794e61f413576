"""Labelled time series from any UEA/UCR dataset or the user's own files, for sequence classification.

A *source* is named by one string (the sensor task's ``data.dataset``, ``convlstm-vp classify
--data``):

- ``aeon:<Name>``: a classification dataset of ``aeon.datasets.load_classification``. The ones
  aeon ships (BasicMotions, JapaneseVowels, GunPoint, ItalyPowerDemand, ...) are read from the
  installed package; others are downloaded into ``<root>/aeon/`` when the machine is online.
- ``<folder>/<Name>_TRAIN.ts``: a UEA/UCR ``.ts`` file; its test split is ``<Name>_TEST.ts``
  beside it. Series may differ in length and in their missing values (``?``, interpolated).
- ``<file>.npz``: ``X`` ``(N, T, C)`` and ``y`` ``(N,)``, optionally ``lengths`` ``(N,)`` (series
  ``i`` is ``X[i, :lengths[i]]``: variable lengths), and ``X_test``, ``y_test``
  (``lengths_test``); without ``X_test`` a seeded, stratified :data:`TEST_FRACTION` of the cases
  is the test split.
- ``<folder>``: ``.csv`` recordings, one per file (``train/`` and ``test/`` subfolders), a header
  row, numeric channel columns and a label column naming each sample's class; each recording is
  cut into windows (``window``, ``step``, ``label_mode``) as OPPORTUNITY is.

Class labels keep their names: strings stay strings (``"1"``, ``"walking"``); integer labels of
an ``.npz`` become their decimal spelling. Classes are ordered numerically when every name is a
number, else alphabetically.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .safe_io import InputError, read_npz, read_text
from .sensor_windows import LabelMode, WindowDataset, interpolate_nans, sliding_windows
from .splits import stratified_split

__all__ = [
    "LabelledSeries",
    "SeriesDataset",
    "TEST_FRACTION",
    "TEST_SPLIT_SEED",
    "class_order",
    "read_source",
    "source_kind",
]

#: Share of each class an ``.npz`` without ``X_test`` gives to its test split.
TEST_FRACTION = 0.25
#: Seed of that split (fixed, so runs with different seeds are scored on the same cases).
TEST_SPLIT_SEED = 1


@dataclass
class LabelledSeries:
    """What a source yields before normalisation.

    ``series``: one ``(T_i, C)`` float64 array per item (a case, or a window of a recording);
    ``labels``: ``(N,)`` class names (``None`` when the source holds no labels); ``ids``: a name
    per item (``file#index``, ``file@start``); ``groups``: ``(N,)`` the recording each item comes
    from (csv windows overlap, so validation holds out whole recordings), ``None`` for cases.
    """

    series: list[np.ndarray]
    labels: np.ndarray | None
    ids: list[str]
    groups: np.ndarray | None = None
    where: str = ""  # the file or folder, for messages
    #: csv sources: each recording's samples ``(N_g, C)`` (index = group), so normalisation
    #: statistics count every sample once rather than once per overlapping window
    recordings: list[np.ndarray] | None = None

    def subset(self, index: np.ndarray) -> LabelledSeries:
        return LabelledSeries(
            [self.series[i] for i in index],
            None if self.labels is None else self.labels[index],
            [self.ids[i] for i in index],
            None if self.groups is None else self.groups[index],
            self.where,
            self.recordings,
        )


class SeriesDataset(WindowDataset):
    """Series of possibly different lengths, zero-padded at the end to ``(N, T_max, C)`` float32.

    ``lengths`` ``(N,)`` int64 holds each series' real length (the padding after it is zeros, which
    the model never reads: :class:`~convlstm_vp.models.DeepConvLSTM` takes ``lengths=``);
    ``ids`` names each item. Equal lengths give an ordinary :class:`WindowDataset`.
    """

    def __init__(
        self, series: Sequence[np.ndarray], labels: np.ndarray, classes: Sequence[str], ids: Sequence[str]
    ) -> None:
        if not len(series):
            raise ValueError("SeriesDataset: no series")
        lengths = np.array([len(s) for s in series], dtype=np.int64)
        padded = np.zeros((len(series), int(lengths.max()), series[0].shape[1]), np.float32)
        for i, s in enumerate(series):
            padded[i, : len(s)] = s
        super().__init__(padded, labels, classes)
        self.lengths = torch.from_numpy(lengths)
        self.ids = list(ids)

    @property
    def variable_length(self) -> bool:
        return bool((self.lengths != self.lengths[0]).any())

    def subset(self, index: np.ndarray) -> SeriesDataset:
        return SeriesDataset(
            [self.windows[i, : int(self.lengths[i])].numpy() for i in index],
            self.labels[torch.from_numpy(np.asarray(index))].numpy(),
            self.classes,
            [self.ids[i] for i in index],
        )


def class_order(names: Sequence[str]) -> tuple[str, ...]:
    """Distinct class names, numerically ordered when all are numbers, else alphabetically."""
    distinct = sorted(set(str(n) for n in names))
    try:
        return tuple(sorted(distinct, key=float))
    except ValueError:
        return tuple(distinct)


def source_kind(spec: str) -> str:
    """``"aeon"``, ``"ts"``, ``"npz"`` or ``"csv"`` for a source string; ValueError otherwise."""
    if spec.startswith("aeon:"):
        if not spec[5:]:
            raise ValueError("data source 'aeon:': expected a dataset name after 'aeon:', e.g. aeon:JapaneseVowels")
        return "aeon"
    if spec.endswith(".ts"):
        return "ts"
    if spec.endswith(".npz"):
        return "npz"
    if Path(spec).is_dir():
        return "csv"
    raise ValueError(
        f"data source {spec!r}: expected aeon:<Name>, a <Name>_TRAIN.ts file, an .npz file or a folder of .csv "
        f"recordings" + ("" if Path(spec).exists() else " (no such file or folder)")
    )


def read_source(
    spec: str,
    split: str,
    *,
    root: str | Path | None = None,
    label_column: str = "label",
    window: int = 24,
    step: int = 12,
    label_mode: LabelMode = "last",
    classes: Sequence[str] | None = None,
) -> LabelledSeries:
    """The ``split`` (``"train"``, ``"test"``, or ``"all"``: every item of the named file, for
    classifying new data) of source ``spec``. ``classes``: the training classes, which csv
    windows need to label by ``label_mode`` (``None`` for the training split itself)."""
    kind = source_kind(spec)
    if kind == "aeon":
        return _read_aeon(spec[5:], "test" if split == "all" else split, root)
    if kind == "ts":
        path = Path(spec)
        if split == "test":
            if "_TRAIN" not in path.name:
                raise ValueError(
                    f"{path}: a training .ts file must be named <Name>_TRAIN.ts (its test split is <Name>_TEST.ts)"
                )
            path = path.with_name(path.name.replace("_TRAIN", "_TEST"))
        return read_ts(path)
    if kind == "npz":
        return _read_npz(Path(spec), split)
    folder = Path(spec)
    if split != "all":
        folder = folder / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{Path(spec)}: a folder of .csv recordings needs the subfolders train/ and test/; {folder} is missing"
            )
    return read_csv_folder(folder, label_column, window, step, label_mode, classes)


# ------------------------------------------------------------------------------------------ aeon
def _aeon_shipped(name: str) -> Path | None:
    from .sensors import aeon_data_dir

    folder = aeon_data_dir() / name
    return folder if (folder / f"{name}_TRAIN.ts").is_file() else None


def _read_aeon(name: str, split: str, root: str | Path | None) -> LabelledSeries:
    shipped = _aeon_shipped(name)
    if shipped is not None:  # read offline, the original (possibly unequal-length) files
        return read_ts(shipped / f"{name}_{split.upper()}.ts")
    from aeon.datasets import load_classification

    target = Path(root if root is not None else "datasets") / "aeon"
    try:
        X, y = load_classification(name, split=split, extract_path=str(target), load_equal_length=False)
    except Exception as exc:  # aeon raises URLError, ValueError, OSError, ... for a failed download
        raise FileNotFoundError(
            f"aeon:{name} is not shipped with aeon and could not be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); go online once so aeon downloads it into {target}, "
            f"or put {name}_TRAIN.ts / {name}_TEST.ts (timeseriesclassification.com) in a folder and set "
            f"data.dataset=<folder>/{name}_TRAIN.ts"
        ) from None
    series = [interpolate_nans(np.asarray(x, np.float64).T) for x in X]
    labels = np.asarray([str(v) for v in y])
    return LabelledSeries(
        series, labels, [f"{name}_{split.upper()}#{i}" for i in range(len(series))], where=f"aeon:{name}"
    )


# ------------------------------------------------------------------------------------------- .ts
def read_ts(path: str | Path) -> LabelledSeries:
    """A UEA/UCR ``.ts`` file: cases ``(T_i, C)`` (``?`` interpolated) and their class labels.

    Errors name the file and the line: a missing file, a case whose dimensions differ in number
    or length, a value that is not a number, a label outside ``@classLabel``, timestamps.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .ts file")
    labelled, declared = True, None
    series, labels = [], []
    in_data = False
    lines = read_text(path, ".ts").splitlines()
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            words = line.split()
            tag = words[0].lower()
            if tag == "@classlabel":
                labelled = len(words) > 1 and words[1].lower() == "true"
                declared = set(words[2:]) if labelled else None
            elif tag == "@timestamps" and len(words) > 1 and words[1].lower() == "true":
                raise ValueError(f"{path}, line {number}: .ts files with timestamps are not supported")
            elif tag == "@data":
                in_data = True
            elif not tag.startswith("@"):
                raise ValueError(
                    f"{path}, line {number}: expected a header line (@...) or @data before the cases, got {line[:60]!r}"
                )
            continue
        fields = line.split(":")
        if labelled:
            if len(fields) < 2:
                raise ValueError(f"{path}, line {number}: expected dimensions separated by ':' and a class label last")
            label = fields.pop().strip()
            if declared is not None and declared and label not in declared:
                raise ValueError(
                    f"{path}, line {number}: class label {label!r} is not one of @classLabel {sorted(declared)}"
                )
            labels.append(label)
        dims = []
        for d, text in enumerate(fields):
            try:
                dims.append(np.array([np.nan if v.strip() == "?" else float(v) for v in text.split(",")], np.float64))
            except ValueError:
                bad = next(v for v in text.split(",") if v.strip() != "?" and not _is_float(v))
                raise ValueError(
                    f"{path}, line {number}: dimension {d + 1}: {bad.strip()[:30]!r} is not a number"
                ) from None
        if series and len(dims) != series[0].shape[1]:
            raise ValueError(f"{path}, line {number}: {len(dims)} dimensions, the first case has {series[0].shape[1]}")
        if len({len(v) for v in dims}) > 1:
            raise ValueError(
                f"{path}, line {number}: the dimensions of one case differ in length {[len(v) for v in dims]}"
            )
        case = np.stack(dims, axis=1)  # (T, C)
        if not np.isfinite(case[~np.isnan(case)]).all():
            raise ValueError(f"{path}, line {number}: an infinite value")
        series.append(interpolate_nans(case))
    if not series:
        raise ValueError(f"{path}: no cases (expected @data and one case per line)")
    ids = [f"{path.stem}#{i}" for i in range(len(series))]
    return LabelledSeries(series, np.asarray(labels) if labelled else None, ids, where=str(path))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------ .npz
def _label_names(y: np.ndarray, where: str) -> np.ndarray:
    if y.dtype.kind in "US":
        return y.astype(str)
    if y.dtype.kind in "iu" or (y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all()):
        return np.asarray([str(int(v)) for v in y])
    raise ValueError(f"{where}: labels must be strings or integers, got dtype {y.dtype}")


def _npz_cases(
    data, x_key: str, y_key: str, len_key: str, path: Path, need_y: bool
) -> tuple[list[np.ndarray], np.ndarray | None]:
    X = np.asarray(data[x_key])
    if X.ndim != 3 or X.dtype.kind not in "fiu":
        raise ValueError(f"{path}: {x_key!r} must be numbers of shape (N, T, C), got {X.dtype} {X.shape}")
    if 0 in X.shape:
        raise ValueError(f"{path}: {x_key!r} holds no cases (shape {X.shape}; expected (N, T, C) with N, T, C >= 1)")
    lengths = np.full(len(X), X.shape[1]) if len_key not in data else np.asarray(data[len_key])
    if (
        lengths.shape != (len(X),)
        or lengths.dtype.kind not in "iu"
        or (lengths < 1).any()
        or (lengths > X.shape[1]).any()
    ):
        raise ValueError(f"{path}: {len_key!r} must be (N,) = ({len(X)},) integers in [1, T={X.shape[1]}]")
    series = []
    for i, n in enumerate(lengths):
        case = X[i, : int(n)].astype(np.float64)
        if not np.isfinite(case[~np.isnan(case)]).all():
            raise ValueError(f"{path}: {x_key}[{i}] holds an infinite value")
        series.append(interpolate_nans(case))
    if y_key not in data:
        if need_y:
            raise ValueError(f"{path}: no {y_key!r} array; training needs the class label of every case")
        return series, None
    y = np.asarray(data[y_key])
    if y.shape != (len(X),):
        raise ValueError(f"{path}: {y_key!r} must be (N,) = ({len(X)},), got {y.shape}")
    return series, _label_names(y, f"{path}: {y_key!r}")


def _read_npz(path: Path, split: str) -> LabelledSeries:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .npz file")
    data = read_npz(path)
    if "X" not in data:
        raise ValueError(f"{path}: expected an array 'X' (N, T, C) (and 'y'); found {sorted(data)}")
    if split == "test" and "X_test" in data:
        series, labels = _npz_cases(data, "X_test", "y_test", "lengths_test", path, True)
        return LabelledSeries(series, labels, [f"X_test#{i}" for i in range(len(series))], where=str(path))
    series, labels = _npz_cases(data, "X", "y", "lengths", path, split != "all")
    has_test = "X_test" in data
    every = LabelledSeries(series, labels, [f"X#{i}" for i in range(len(series))], where=str(path))
    if split == "all" or has_test:
        return every
    train, test = stratified_split(_class_index(labels, class_order(labels)), TEST_FRACTION, TEST_SPLIT_SEED)
    return every.subset(test if split == "test" else train)


def _class_index(labels: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[str(v)] for v in labels], np.int64)


# ------------------------------------------------------------------------------------------- csv
def read_csv_recording(path: Path, label_column: str) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """One ``.csv`` recording: channel names, samples ``(N, C)`` float64 (empty cells
    interpolated) and per-sample labels ``(N,)`` (``None`` without a label column). Errors name
    the file and the line."""
    try:
        rows = list(csv.reader(io.StringIO(read_text(path, ".csv"), newline="")))
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable .csv file ({exc})") from None
    if not rows:
        raise ValueError(f"{path}: empty file; expected a header row of column names")
    header = [h.strip() for h in rows[0]]
    has_label = label_column in header
    label_at = header.index(label_column) if has_label else -1
    channels = [h for i, h in enumerate(header) if i != label_at]
    if not channels:
        raise ValueError(f"{path}, line 1: no channel columns besides {label_column!r}")
    samples, labels = [], []
    for number, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}, line {number}: {len(row)} fields, the header has {len(header)}")
        values = []
        for i, text in enumerate(row):
            if i == label_at:
                if not text.strip():
                    raise ValueError(f"{path}, line {number}: empty {label_column!r}")
                labels.append(text.strip())
                continue
            text = text.strip()
            try:
                v = float(text) if text else np.nan
            except ValueError:
                raise ValueError(
                    f"{path}, line {number}, column {header[i]!r}: {text[:30]!r} is not a number"
                ) from None
            if np.isinf(v):
                raise ValueError(f"{path}, line {number}, column {header[i]!r}: an infinite value")
            values.append(v)
        samples.append(values)
    if not samples:
        raise ValueError(f"{path}: no samples after the header")
    return channels, interpolate_nans(np.array(samples, np.float64)), np.asarray(labels) if has_label else None


def read_csv_folder(
    folder: Path, label_column: str, window: int, step: int, label_mode: LabelMode, classes: Sequence[str] | None
) -> LabelledSeries:
    """Every ``.csv`` recording of ``folder`` cut into windows; ``groups`` holds the recording
    index of each window. Window labels follow ``label_mode`` over the per-sample labels, indexed
    by ``classes`` (the training classes; ``None``: the classes of these recordings)."""
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .csv recordings")
    recordings = [(f, *read_csv_recording(f, label_column)) for f in files]
    first = recordings[0][1]
    for f, channels, _, _ in recordings:
        if channels != first:
            raise ValueError(f"{f}, line 1: channels {channels} differ from {recordings[0][0].name}'s {first}")
    labelled = [r[3] is not None for r in recordings]
    if any(labelled) and not all(labelled):
        raise ValueError(
            f"{recordings[labelled.index(False)][0]}, line 1: no {label_column!r} column (other files have one)"
        )
    if classes is None and all(labelled):
        classes = class_order(np.concatenate([r[3] for r in recordings]))
    series, labels, ids, groups = [], [], [], []
    for g, (f, _, data, names) in enumerate(recordings):
        if names is not None:
            unknown = sorted(set(names.tolist()) - set(classes or ()))
            if unknown:
                raise ValueError(f"{f}: labels {unknown[:5]} are not among the training classes {list(classes or ())}")
            index = _class_index(names, classes)
        else:
            index = np.zeros(len(data), np.int64)
        windows, window_labels = sliding_windows(data, index, window, step, label_mode)
        series.extend(list(windows))
        labels.extend(window_labels.tolist())
        ids.extend(f"{f.name}@{s}" for s in range(0, len(windows) * step, step))
        groups.extend([g] * len(windows))
    if not series:
        raise ValueError(f"{folder}: every recording is shorter than data.window={window} samples")
    names_out = np.asarray([classes[i] for i in labels]) if all(labelled) and classes is not None else None
    return LabelledSeries(series, names_out, ids, np.asarray(groups), str(folder), [r[2] for r in recordings])
