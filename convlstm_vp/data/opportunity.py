"""The UCI OPPORTUNITY Activity Recognition dataset: ``.dat`` reader, 113 body-worn channels, split.

Layout on disk (as unzipped from the UCI archive)::

    <root>/OpportunityUCIDataset/dataset/S1-ADL1.dat ... S4-ADL5.dat, S1-Drill.dat ... S4-Drill.dat

Each ``.dat`` file is whitespace-separated text with 250 columns per row (about 30 Hz): column 1
is the time in ms, columns 2-243 are sensor readings (``NaN`` where a sensor dropped out), columns
244-250 are the label tracks Locomotion, HL_Activity, LL_Left_Arm, LL_Left_Arm_Object,
LL_Right_Arm, LL_Right_Arm_Object, ML_Both_Arms. Column numbers in this docstring are 1-based as
in the dataset's ``column_names.txt``; the constants below are 0-based array indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from .sensor_windows import (
    LabelMode,
    Standardizer,
    TargetTransform,
    WindowDataset,
    WindowTransform,
    interpolate_nans,
    resolve_standardizer,
    windows_from_recordings,
)

Split = Literal["train", "test"]
Task = Literal["gestures", "locomotion"]

__all__ = [
    "BODY_WORN_CHANNELS",
    "COLUMN_NAMES",
    "GESTURE_CLASSES",
    "LOCOMOTION_CLASSES",
    "OPPORTUNITY_SPLITS",
    "Opportunity",
    "read_opportunity_file",
]


def _column_layout() -> list[tuple[str, str]]:
    """``(name, group)`` for each of the 250 columns, in file order.

    Groups: ``time``; ``body`` (body-worn sensor readings used by the benchmark);
    ``body_quaternion`` (orientation quaternions of the body-worn IMUs, not used); ``object``
    (sensors on the 12 kitchen objects); ``ambient`` (reed switches, furniture accelerometers,
    location tags); ``label``.
    """
    xyz = ("X", "Y", "Z")
    layout: list[tuple[str, str]] = [("MILLISEC", "time")]
    # 12 three-axis accelerometers on the body (columns 2-37).
    for place in ("RKN^", "HIP", "LUA^", "RUA_", "LH", "BACK", "RKN_", "RWR", "RUA^", "LUA_", "LWR", "RH"):
        layout += [(f"Accelerometer {place} acc{a}", "body") for a in xyz]
    # 5 IMUs on back and arms, 13 columns each (columns 38-102): acc, gyro, magnetic, quaternion.
    for place in ("BACK", "RUA", "RLA", "LUA", "LLA"):
        for signal in ("acc", "gyro", "magnetic"):
            layout += [(f"InertialMeasurementUnit {place} {signal}{a}", "body") for a in xyz]
        layout += [(f"InertialMeasurementUnit {place} Quaternion{q}", "body_quaternion") for q in range(1, 5)]
    # 2 shoe IMUs, 16 columns each (columns 103-134).
    shoe_signals = (
        [f"Eu{a}" for a in xyz]
        + [f"Nav_A{a.lower()}" for a in xyz]
        + [f"Body_A{a.lower()}" for a in xyz]
        + [f"AngVelBodyFrame{a}" for a in xyz]
        + [f"AngVelNavFrame{a}" for a in xyz]
        + ["Compass"]
    )
    for shoe in ("L-SHOE", "R-SHOE"):
        layout += [(f"InertialMeasurementUnit {shoe} {s}", "body") for s in shoe_signals]
    # 12 objects, 5 columns each (columns 135-194).
    for obj in (
        "CUP",
        "SALAMI",
        "WATER",
        "CHEESE",
        "BREAD",
        "KNIFE1",
        "MILK",
        "SPOON",
        "SUGAR",
        "KNIFE2",
        "PLATE",
        "GLASS",
    ):
        layout += [(f"Accelerometer {obj} {s}", "object") for s in ("accX", "accY", "accZ", "gyroX", "gyroY")]
    # Ambient sensors (columns 195-243).
    for switch in (
        "DISHWASHER S1",
        "FRIDGE S3",
        "FRIDGE S2",
        "FRIDGE S1",
        "MIDDLEDRAWER S1",
        "MIDDLEDRAWER S2",
        "MIDDLEDRAWER S3",
        "LOWERDRAWER S3",
        "LOWERDRAWER S2",
        "UPPERDRAWER",
        "DISHWASHER S3",
        "LOWERDRAWER S1",
        "DISHWASHER S2",
    ):
        layout.append((f"REED SWITCH {switch}", "ambient"))
    for thing in ("DOOR1", "LAZYCHAIR", "DOOR2", "DISHWASHER", "UPPERDRAWER", "LOWERDRAWER", "MIDDLEDRAWER", "FRIDGE"):
        layout += [(f"Accelerometer {thing} acc{a}", "ambient") for a in xyz]
    for tag in range(1, 5):
        layout += [(f"LOCATION TAG{tag} {a}", "ambient") for a in xyz]
    # Label tracks (columns 244-250).
    layout += [
        (name, "label")
        for name in (
            "Locomotion",
            "HL_Activity",
            "LL_Left_Arm",
            "LL_Left_Arm_Object",
            "LL_Right_Arm",
            "LL_Right_Arm_Object",
            "ML_Both_Arms",
        )
    ]
    return layout


_LAYOUT = _column_layout()
NUM_COLUMNS = 250
if len(_LAYOUT) != NUM_COLUMNS:  # pragma: no cover - guards edits of the table above
    raise RuntimeError(f"OPPORTUNITY column table has {len(_LAYOUT)} entries, expected 250")

#: Names of the 250 columns, 0-based (``COLUMN_NAMES[0] == "MILLISEC"``).
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in _LAYOUT)
#: 0-based indices of the 113 body-worn channels of the benchmark (Ordóñez & Roggen 2016): the
#: 36 body accelerometer axes, acc/gyro/magnetic of the 5 back and arm IMUs (no quaternions),
#: and all 32 shoe IMU columns. Never the time column, object/ambient sensors or a label.
BODY_WORN_CHANNELS: tuple[int, ...] = tuple(i for i, (_, g) in enumerate(_LAYOUT) if g == "body")
LOCOMOTION_COLUMN = COLUMN_NAMES.index("Locomotion")  # 243
GESTURE_COLUMN = COLUMN_NAMES.index("ML_Both_Arms")  # 249

#: ``(code in the file, class name)``; the class index is the position in this tuple.
GESTURE_CLASSES: tuple[tuple[int, str], ...] = (
    (0, "Null"),
    (406516, "Open Door 1"),
    (406517, "Open Door 2"),
    (404516, "Close Door 1"),
    (404517, "Close Door 2"),
    (406520, "Open Fridge"),
    (404520, "Close Fridge"),
    (406505, "Open Dishwasher"),
    (404505, "Close Dishwasher"),
    (406519, "Open Drawer 1"),
    (404519, "Close Drawer 1"),
    (406511, "Open Drawer 2"),
    (404511, "Close Drawer 2"),
    (406508, "Open Drawer 3"),
    (404508, "Close Drawer 3"),
    (408512, "Clean Table"),
    (407521, "Drink from Cup"),
    (405506, "Toggle Switch"),
)
LOCOMOTION_CLASSES: tuple[tuple[int, str], ...] = (
    (0, "Null"),
    (1, "Stand"),
    (2, "Walk"),
    (4, "Sit"),
    (5, "Lie"),
)
_TASKS: dict[str, tuple[int, tuple[tuple[int, str], ...]]] = {
    "gestures": (GESTURE_COLUMN, GESTURE_CLASSES),
    "locomotion": (LOCOMOTION_COLUMN, LOCOMOTION_CLASSES),
}

#: The standard split of the Opportunity challenge / DeepConvLSTM: subject 4 is not used.
OPPORTUNITY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": tuple(
        [f"S1-ADL{i}.dat" for i in range(1, 6)]
        + ["S1-Drill.dat"]
        + [f"S{s}-{run}.dat" for s in (2, 3) for run in ("ADL1", "ADL2", "ADL3", "Drill")]
    ),
    "test": tuple(f"S{s}-ADL{i}.dat" for s in (2, 3) for i in (4, 5)),
}

_DOWNLOAD_HINT = (
    "Download OpportunityUCIDataset.zip from the UCI Machine Learning Repository "
    "(https://archive.ics.uci.edu/dataset/226/opportunity+activity+recognition) and unzip it "
    "into the data root, so that <root>/OpportunityUCIDataset/dataset/S1-ADL1.dat exists "
    "(default root: datasets/)."
)


def _map_codes(codes: np.ndarray, classes: Sequence[tuple[int, str]], source: Path) -> np.ndarray:
    """Map raw label codes ``(N,)`` to class indices ``(N,)`` int64, naming unknown codes."""
    known = np.array([code for code, _ in classes], dtype=np.int64)
    order = np.argsort(known)
    positions = np.searchsorted(known[order], codes)
    positions = np.clip(positions, 0, len(known) - 1)
    found = known[order][positions] == codes
    if not found.all():
        unknown = sorted(set(codes[~found].tolist()))
        raise ValueError(f"{source}: unknown label codes {unknown[:10]}; expected one of {known.tolist()}")
    return order[positions].astype(np.int64)


def read_opportunity_file(path: str | Path, task: Task = "gestures") -> tuple[np.ndarray, np.ndarray]:
    """Read one OPPORTUNITY ``.dat`` recording.

    Args:
        path: the ``.dat`` file (250 whitespace-separated columns per row).
        task: ``"gestures"`` (ML_Both_Arms, 18 classes with Null) or ``"locomotion"``
            (5 classes with Null).

    Returns:
        ``(data, labels)``: ``data`` is ``(N, 113)`` float32, the body-worn channels with NaNs
        linearly interpolated per channel; ``labels`` is ``(N,)`` int64 class indices.
    """
    if task not in _TASKS:
        raise ValueError(f"task must be 'gestures' or 'locomotion', got {task!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OPPORTUNITY file not found: {path}. {_DOWNLOAD_HINT}")
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, UnicodeDecodeError) as exc:  # a binary or garbled file, a non-number cell
        raise ValueError(
            f"{path}: not an OPPORTUNITY .dat text table of numbers ({str(exc).splitlines()[0][:160]})"
        ) from None
    if table.shape[1] != NUM_COLUMNS:
        raise ValueError(
            f"{path}: expected {NUM_COLUMNS} whitespace-separated columns per row "
            f"(time, 242 sensors, 7 labels), got {table.shape[1]}"
        )
    label_column, classes = _TASKS[task]
    raw_labels = table[:, label_column]
    if np.isnan(raw_labels).any():
        raise ValueError(f"{path}: label column {label_column + 1} ({COLUMN_NAMES[label_column]}) has NaNs")
    fractional = np.flatnonzero(raw_labels != np.round(raw_labels))
    if fractional.size:  # casting would turn e.g. 406516.5 into a class silently
        r = int(fractional[0])
        raise ValueError(
            f"{path}: line {r + 1}: label column {label_column + 1} ({COLUMN_NAMES[label_column]}) "
            f"holds {float(raw_labels[r])!r}; expected an integer label code"
        )
    labels = _map_codes(raw_labels.astype(np.int64), classes, path)
    sensors = table[:, BODY_WORN_CHANNELS]
    # NaN marks a dropped sample (interpolated below); Inf or values beyond float32 are corruption
    bad = np.argwhere(np.isinf(sensors) | (np.abs(np.nan_to_num(sensors)) > np.finfo(np.float32).max))
    if bad.size:
        r, col = (int(v) for v in bad[0])
        raise ValueError(
            f"{path}: line {r + 1}: sensor column {BODY_WORN_CHANNELS[col] + 1} "
            f"({COLUMN_NAMES[BODY_WORN_CHANNELS[col]]}) holds {float(sensors[r, col])!r}; expected a finite "
            "float32 value or NaN (missing)"
        )
    data = interpolate_nans(sensors).astype(np.float32)
    return data, labels


class Opportunity(WindowDataset):
    """OPPORTUNITY windows ``(T, 113)`` float32 with gesture or locomotion labels.

    Each recording is interpolated (NaNs), standardized with training statistics, then cut into
    windows that never cross from one recording into the next; a window's label is that of its
    last sample (``label_mode="last"``) or the majority label.

    Args:
        root: data root holding ``OpportunityUCIDataset/dataset/*.dat``.
        split: ``"train"`` (S1 ADL1-5 and Drill, S2 and S3 ADL1-3 and Drill) or ``"test"``
            (S2 and S3 ADL4-5).
        task: ``"gestures"`` (18 classes: Null + 17 gestures) or ``"locomotion"`` (5 classes).
        window: time steps per window ``T`` (24 = 800 ms at 30 Hz).
        step: samples between window starts (12 = 50% overlap).
        label_mode: ``"last"`` or ``"majority"``.
        files: optional file names (relative to the dataset folder) or paths that replace the
            split's standard file list, e.g. ``["S1-ADL1.dat"]``.
        normalize: z-score the channels.
        standardizer: fitted statistics to use. ``None``: for ``split="train"`` fit on this
            split's recordings; for ``split="test"`` fit on the standard training files (which
            re-reads them; pass ``standardizer=train_set.standardizer`` to avoid that).
        transform, target_transform: optional callables on each window / label.

    Raises:
        FileNotFoundError: naming the first missing file and where to put the dataset.
    """

    def __init__(
        self,
        root: str | Path = "datasets",
        split: Split = "train",
        task: Task = "gestures",
        window: int = 24,
        step: int = 12,
        *,
        label_mode: LabelMode = "last",
        files: Sequence[str | Path] | None = None,
        normalize: bool = True,
        standardizer: Standardizer | None = None,
        transform: WindowTransform = None,
        target_transform: TargetTransform = None,
    ) -> None:
        if split not in OPPORTUNITY_SPLITS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if task not in _TASKS:
            raise ValueError(f"task must be 'gestures' or 'locomotion', got {task!r}")
        self.root = Path(root)
        self.split = split
        self.task = task
        self.files = self._resolve(OPPORTUNITY_SPLITS[split] if files is None else files)
        recordings = [read_opportunity_file(path, task) for path in self.files]

        def fit_train() -> list[np.ndarray]:
            if split == "train":
                return [data for data, _ in recordings]
            train_files = self._resolve(OPPORTUNITY_SPLITS["train"])
            return [read_opportunity_file(path, task)[0] for path in train_files]

        self.standardizer = resolve_standardizer(normalize, standardizer, fit_train, len(BODY_WORN_CHANNELS))
        if self.standardizer is not None:
            recordings = [(self.standardizer.transform(d), labels) for d, labels in recordings]

        windows, labels = windows_from_recordings(recordings, window, step, label_mode, len(BODY_WORN_CHANNELS))
        self.channel_names = tuple(COLUMN_NAMES[i] for i in BODY_WORN_CHANNELS)
        super().__init__(windows, labels, [name for _, name in _TASKS[task][1]], transform, target_transform)

    @property
    def dataset_dir(self) -> Path:
        """Folder the ``.dat`` files are read from: ``<root>/OpportunityUCIDataset/dataset``."""
        return self.root / "OpportunityUCIDataset" / "dataset"

    def _resolve(self, names: Sequence[str | Path]) -> tuple[Path, ...]:
        """Paths for ``names``; raises FileNotFoundError for the first that does not exist."""
        if len(names) == 0:
            raise ValueError("files must name at least one .dat recording")
        paths = tuple(Path(n) if Path(n).is_absolute() else self.dataset_dir / n for n in names)
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(
                    f"OPPORTUNITY file not found: {path} (needed for split={self.split!r}). {_DOWNLOAD_HINT}"
                )
        return paths

    def extra_repr(self) -> str:
        return f"Root location: {self.root}\nSplit: {self.split}\nTask: {self.task}\nRecordings: {len(self.files)}"
