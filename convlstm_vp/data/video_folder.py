"""Frame-prediction clips cut from a folder of the user's own videos.

Every video under ``root`` (searched recursively: .mp4 .avi .mov .mkv .webm read with OpenCV,
.gif read with Pillow, and .npy/.npz arrays of frames) is decoded once, brought to ``size``
(aspect ratio kept: scaled to cover ``size``, then centre-cropped) and ``channels`` (1 grey or 3
RGB), and cached as an 8-bit memory-mapped ``.npy``; items are clips of ``input_frames +
output_frames`` consecutive frames ``(T, C, H, W)``, float32 in [0, 1].

Splits (``split`` = "train", "val" or "test"; docs/data.md, "Your own videos"):

- ``root/train/`` and ``root/test/`` present: their files are the train and test splits;
- otherwise, several readable files: a deterministic split by file (sorted paths shuffled by a
  fixed seed; :data:`TEST_FRACTION` of the files, at least one, are the test split);
- a single readable file: its last :data:`TEST_FRACTION` of frames are the test split.

The validation split (which picks ``best.pt``) is carved from the training files the same way,
by file when there are at least two of them, else as the block of frames just before the
test block (:data:`VAL_FRACTION` of the training frames, at least one clip's worth). No clip straddles a boundary: clips
are cut inside each part of each file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .safe_io import InputError, check_video_size, first_line, open_image, read_npy, read_npz
from .splits import VAL_SPLIT_SEED

__all__ = [
    "VideoFolder",
    "CacheError",
    "VIDEO_SUFFIXES",
    "ARRAY_SUFFIXES",
    "fit_frame",
    "iter_frames",
    "load_frames",
    "to_unit_range",
    "TEST_FRACTION",
    "VAL_FRACTION",
]

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
ARRAY_SUFFIXES = (".npy", ".npz")
#: share of the files (or, for a single video, of its frames) held out as the test split
TEST_FRACTION = 0.2
#: share of the training files (or of a single video's training frames) held out for validation
VAL_FRACTION = 0.1
_CACHE_VERSION = 1  # bump when the cached frames would change for the same options
SPLITS = ("train", "val", "test")


class CacheError(ValueError):
    """The frame cache cannot be written (a read-only data folder, a full disk): not the video's fault."""


#: what to do about frames of another range, said by ``predict`` (which maps ranges) and by training
PREDICT_RANGE_HINT = "pass --input-range LO,HI to map another range to [0, 1]"
TRAIN_RANGE_HINT = "convert the file to uint8 frames or floats in [0, 1]"


def to_unit_range(
    arr: np.ndarray,
    path: Path | str,
    input_range: tuple[float, float] | None = None,
    range_hint: str = PREDICT_RANGE_HINT,
) -> np.ndarray:
    """Frames of any numeric dtype as float32 in [0, 1]: ``input_range`` ``(lo, hi)`` maps to [0, 1];
    without it uint8 is divided by 255 and floats must already lie in [0, 1]. NaN/Inf, values
    outside the range and other dtypes are a ValueError naming ``path``."""
    if arr.size == 0:
        raise InputError(f"{path}: holds no frames (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)):
        raise InputError(f"{path}: expected numeric frames (uint8, or float in [0, 1]), got dtype {arr.dtype}")
    x = arr.astype(np.float64)
    if not np.isfinite(x).all():
        raise InputError(f"{path}: frames hold NaN or Inf")
    if input_range is None:
        if arr.dtype == np.uint8:
            input_range = (0.0, 255.0)
        elif np.issubdtype(arr.dtype, np.floating):
            input_range = (0.0, 1.0)
        else:
            raise InputError(f"{path}: {arr.dtype} frames have no known scale; {range_hint}")
    lo, hi = input_range
    if x.min() < lo or x.max() > hi:
        raise InputError(
            f"{path}: {arr.dtype} frames must lie in [{lo:g}, {hi:g}], got values in "
            f"[{x.min():g}, {x.max():g}]; {range_hint}"
        )
    return ((x - lo) / (hi - lo)).astype(np.float32)


def _array_frames(arr: np.ndarray, path: Path) -> np.ndarray:
    """An array of frames as ``(T, H, W, C)`` with C 1 or 3: accepts ``(T, H, W)``,
    ``(T, H, W, 1|3)`` and ``(T, 1|3, H, W)``."""
    if arr.ndim == 3:
        return arr[..., None]
    if arr.ndim == 4 and arr.shape[-1] in (1, 3):
        return arr
    if arr.ndim == 4 and arr.shape[1] in (1, 3):
        return np.moveaxis(arr, 1, -1)
    raise InputError(f"{path}: expected frames (T, H, W), (T, H, W, 1|3) or (T, 1|3, H, W), got shape {arr.shape}")


def _read_frame_array(path: Path) -> np.ndarray:
    """The frames of an ``.npy``, or of an ``.npz``'s array "frames" (else its only array),
    read through :mod:`convlstm_vp.data.safe_io` (declared sizes checked before loading)."""
    if path.suffix.lower() == ".npy":
        return read_npy(path)
    arrays = read_npz(path)
    if "frames" not in arrays and len(arrays) != 1:
        raise InputError(f"{path}: expected an array named 'frames' or a single array, got keys {sorted(arrays)}")
    return arrays["frames"] if "frames" in arrays else next(iter(arrays.values()))


def _gif_frames(path: Path) -> np.ndarray:
    """The frames of a GIF ``(T, H, W, 3)`` uint8, its declared size checked before decoding."""
    img = open_image(path, "GIF")
    try:
        count = getattr(img, "n_frames", 1)
        check_video_size(path, count, *img.size)
        frames = []
        for i in range(count):
            img.seek(i)
            frames.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    except InputError:
        raise
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        raise InputError(f"{path}: not a readable GIF ({first_line(exc)})") from None
    finally:
        img.close()
    return np.stack(frames)


def iter_frames(
    path: Path | str, input_range: tuple[float, float] | None = None, range_hint: str = PREDICT_RANGE_HINT
) -> Iterator[np.ndarray]:
    """The frames of a video or frame array one at a time, float32 ``(h, w, c)`` in [0, 1] with c = 1
    (grey sources) or 3 (RGB), so a long high-resolution video is never held whole in memory.
    Videos and GIFs are 8-bit; arrays are scaled by :func:`to_unit_range` (an .npz is read from
    its key "frames", else its only array). A file that cannot be read is a ValueError naming it
    (raised before the first frame for arrays and GIFs, after the last for videos); a missing one
    a FileNotFoundError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        yield from to_unit_range(_array_frames(_read_frame_array(path), path), path, input_range, range_hint)
        return
    if suffix == ".gif":
        yield from to_unit_range(_gif_frames(path), path, input_range, range_hint)
        return
    cap = cv2.VideoCapture(str(path))
    count = 0
    try:
        check_video_size(
            path,
            cap.get(cv2.CAP_PROP_FRAME_COUNT),
            cap.get(cv2.CAP_PROP_FRAME_WIDTH),
            cap.get(cv2.CAP_PROP_FRAME_HEIGHT),
        )
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            count += 1
            frame = frame[..., None] if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            yield to_unit_range(frame, path, input_range, range_hint)
    finally:
        cap.release()
    if not count:
        raise InputError(f"{path}: OpenCV read no frames (expected a video such as .mp4, .avi, .mov, .mkv or .webm)")


def load_frames(
    path: Path | str,
    size: Sequence[int],
    channels: int,
    frame_step: int = 1,
    input_range: tuple[float, float] | None = None,
    range_hint: str = PREDICT_RANGE_HINT,
) -> np.ndarray:
    """Every ``frame_step``-th frame of ``path`` (:func:`iter_frames`) fitted to ``size`` and
    ``channels`` by :func:`fit_frame`: float32 ``(T, H, W, channels)`` in [0, 1]. The dataset and
    ``predict`` both bring frames to the model's resolution through this function."""
    return np.stack(
        [
            fit_frame(f, size, channels)
            for i, f in enumerate(iter_frames(path, input_range, range_hint))
            if i % frame_step == 0
        ]
    )


def fit_frame(frame: np.ndarray, size: Sequence[int], channels: int) -> np.ndarray:
    """One frame ``(h, w, c)`` (c 1 or 3, float in [0, 1]) as ``(H, W, channels)`` for ``size`` =
    ``(H, W)``: scaled, keeping the aspect ratio, until it covers ``H x W``, then centre-cropped (so
    the sides of a wider frame, or the top and bottom of a taller one, are cut off, never
    stretched); area interpolation when shrinking, bilinear when enlarging. Grey to 3 channels
    repeats the grey plane; RGB to 1 channel is the luma ``0.299 R + 0.587 G + 0.114 B``."""
    out_h, out_w = int(size[0]), int(size[1])
    h, w = frame.shape[:2]
    scale = max(out_h / h, out_w / w)
    new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(frame), (new_w, new_h), interpolation=interp)
    if resized.ndim == 2:
        resized = resized[..., None]
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    crop = resized[top : top + out_h, left : left + out_w]
    if channels == 1 and crop.shape[-1] == 3:
        crop = (crop @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    elif channels == 3 and crop.shape[-1] == 1:
        crop = np.repeat(crop, 3, axis=-1)
    return np.clip(crop, 0.0, 1.0).astype(np.float32)


def _decode(path: Path, size: tuple[int, int], channels: int, frame_step: int) -> np.ndarray:
    """Decode ``path`` into uint8 frames ``(T, H, W, C)`` (:func:`load_frames`). (Tests replace
    this function to check that a cached file is not decoded again.)"""
    frames = load_frames(path, size, channels, frame_step, range_hint=TRAIN_RANGE_HINT)
    return (frames * 255.0 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class _Segment:
    """Frames ``[start, stop)`` of one cached file, a contiguous part of a split."""

    file: int
    start: int
    stop: int


class VideoFolder(Dataset):
    """Clips of the videos under ``root`` for frame prediction.

    An item is ``(input_frames + output_frames, C, H, W)`` float32 in [0, 1] (``channels_last``:
    ``(T, H, W, C)``): consecutive frames (every ``frame_step``-th frame of the source) of one
    file, never straddling a split boundary. Frames are resized keeping the aspect ratio and then
    centre-cropped to ``size`` (:func:`fit_frame`).

    Args:
        root: folder searched recursively for videos (.mp4 .avi .mov .mkv .webm .gif) and frame
            arrays (.npy/.npz with frames ``(T, H, W)``, ``(T, H, W, 1|3)`` or ``(T, 1|3, H, W)``,
            uint8 or float in [0, 1]).
        split: "train", "val" (carved from the training files, for model selection) or "test"
            (module docstring).
        input_frames, output_frames: the clip length is their sum.
        size: ``(H, W)`` of the frames.
        channels: 1 (grey) or 3 (RGB).
        frame_step: keep every this-many-th frame of the source (speeds slow footage up).
        clip_stride: frames between the starts of consecutive clips; default (None) 1 for
            "train" (every clip) and ``output_frames`` for "val"/"test", so every held-out frame
            after a file's first ``input_frames`` is a target exactly once.
        cache_dir: where decoded frames are cached (default ``root/.cache``); a cache entry is keyed
            by the source's path, byte size and modification time and by ``size``, ``channels``
            and ``frame_step``, so a changed file or option decodes again.
        data_format: "channels_first" or "channels_last".

    Files that cannot be read are named in one warning and skipped; a folder without any readable
    file is a FileNotFoundError naming it. ``files`` lists the files of the split, ``num_frames``
    their frame counts in the split, ``skipped`` the unreadable ones.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        input_frames: int = 10,
        output_frames: int = 10,
        size: Sequence[int] = (64, 64),
        channels: int = 1,
        frame_step: int = 1,
        clip_stride: int | None = None,
        cache_dir: str | Path | None = None,
        data_format: str = "channels_first",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"VideoFolder: split must be one of {SPLITS}, got {split!r}")
        for name, v in (("input_frames", input_frames), ("output_frames", output_frames), ("frame_step", frame_step)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"VideoFolder: {name} must be an integer >= 1, got {v!r}")
        if clip_stride is not None and (
            isinstance(clip_stride, bool) or not isinstance(clip_stride, int) or clip_stride < 1
        ):
            raise ValueError(f"VideoFolder: clip_stride must be an integer >= 1 or None, got {clip_stride!r}")
        size = tuple(size) if isinstance(size, (list, tuple)) else size
        if not (
            isinstance(size, tuple)
            and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
        ):
            raise ValueError(f"VideoFolder: size must be (H, W) with positive integers, got {size!r}")
        if channels not in (1, 3):
            raise ValueError(f"VideoFolder: channels must be 1 (grey) or 3 (RGB), got {channels!r}")
        if data_format not in ("channels_first", "channels_last"):
            raise ValueError(
                f"VideoFolder: data_format must be 'channels_first' or 'channels_last', got {data_format!r}"
            )
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"VideoFolder: video folder not found: {self.root} (put your videos there, or set data.root)"
            )
        self.split, self.size, self.channels, self.frame_step = split, size, channels, frame_step
        self.clip_frames = input_frames + output_frames
        self.clip_stride = clip_stride or (1 if split == "train" else output_frames)
        self.data_format = data_format
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.root / ".cache"

        sources = self._find_sources()
        self.skipped: list[Path] = []
        arrays: dict[Path, np.ndarray] = {}
        errors = []
        for path in sorted({p for group in sources.values() for p in group}):
            try:
                arrays[path] = self._cached(path)
            except CacheError:
                raise
            except (ValueError, OSError, EOFError, MemoryError, cv2.error) as exc:  # InputError among them
                self.skipped.append(path)
                errors.append(f"{path.relative_to(self.root)} ({str(exc).split(': ', 1)[-1][:160]})")
        if errors:
            warnings.warn(
                f"VideoFolder {self.root}: skipped {len(errors)} unreadable file(s): " + "; ".join(errors),
                RuntimeWarning,
                stacklevel=2,
            )
        if not arrays:
            unreadable = f"; unreadable: {'; '.join(errors)}" if errors else ""
            raise FileNotFoundError(
                f"VideoFolder: no readable video or frame array under {self.root} "
                f"(looked for {', '.join(VIDEO_SUFFIXES + ARRAY_SUFFIXES)}){unreadable}"
            )
        sources = {k: [p for p in v if p in arrays] for k, v in sources.items()}
        parts = self._split_segments(sources, {p: a.shape[0] for p, a in arrays.items()}, self.clip_frames)
        self.files = sorted({path for path, _, _ in parts[split]})
        self._arrays = [arrays[p] for p in self.files]
        index = {p: i for i, p in enumerate(self.files)}
        self.segments = [_Segment(index[p], a, b) for p, a, b in parts[split]]
        self.num_frames = [sum(s.stop - s.start for s in self.segments if s.file == i) for i in range(len(self.files))]
        self._clips = [
            (s.file, t) for s in self.segments for t in range(s.start, s.stop - self.clip_frames + 1, self.clip_stride)
        ]
        if not self._clips:
            longest = max((s.stop - s.start for s in self.segments), default=0)
            raise ValueError(
                f"VideoFolder {self.root}: split {split!r} has no clip of {self.clip_frames} frames "
                f"(its longest part holds {longest} frames after frame_step {frame_step}); use fewer "
                f"input_frames/output_frames, a smaller frame_step, or longer videos"
            )

    # ------------------------------------------------------------------ files and splits
    def _find_sources(self) -> dict[str, list[Path]]:
        """Candidate files: {"train": [...], "test": [...]} when ``root/train`` and ``root/test``
        exist, else {"all": [...]}; the cache folder is never searched."""
        suffixes = VIDEO_SUFFIXES + ARRAY_SUFFIXES

        def files_under(folder: Path) -> list[Path]:
            return sorted(
                p
                for p in folder.rglob("*")
                if p.is_file()
                and p.suffix.lower() in suffixes
                and self.cache_dir not in p.parents
                and ".cache" not in p.relative_to(self.root).parts
            )

        if (self.root / "train").is_dir() and (self.root / "test").is_dir():
            return {"train": files_under(self.root / "train"), "test": files_under(self.root / "test")}
        return {"all": files_under(self.root)}

    @staticmethod
    def _split_segments(
        sources: dict[str, list[Path]], lengths: dict[Path, int], clip_frames: int
    ) -> dict[str, list[tuple[Path, int, int]]]:
        """``{split: [(file, start, stop), ...]}`` by the rules of the module docstring (a
        validation block cut from a single training video holds at least ``clip_frames`` frames)."""

        def by_file(files: list[Path], fraction: float) -> tuple[list[Path], list[Path]]:
            order = list(files)
            np.random.default_rng(VAL_SPLIT_SEED).shuffle(order)
            k = min(max(round(fraction * len(order)), 1), len(order) - 1)
            return sorted(order[k:]), sorted(order[:k])

        def whole(files: list[Path]) -> list[tuple[Path, int, int]]:
            return [(p, 0, lengths[p]) for p in files]

        def tail(
            path: Path, stop: int, fraction: float, least: int = 1
        ) -> tuple[tuple[Path, int, int], tuple[Path, int, int]]:
            cut = max(stop - max(int(round(fraction * stop)), least), 0)
            return (path, 0, cut), (path, cut, stop)

        if "all" in sources:
            files = sources["all"]
            if len(files) == 1:
                rest, test = tail(files[0], lengths[files[0]], TEST_FRACTION)
                train_files, test_parts = None, [test]
            else:
                train_files, test_files = by_file(files, TEST_FRACTION)
                test_parts = whole(test_files)
        else:
            train_files, test_parts = sources["train"], whole(sources["test"])
            if not test_parts:
                raise FileNotFoundError("VideoFolder: the test/ folder holds no readable video or frame array")
            if not train_files:
                raise FileNotFoundError("VideoFolder: the train/ folder holds no readable video or frame array")
        if train_files is None or len(train_files) == 1:
            path, _, stop = rest if train_files is None else (train_files[0], 0, lengths[train_files[0]])
            train, val = tail(path, stop, VAL_FRACTION, least=clip_frames)
            return {"train": [train], "val": [val], "test": test_parts}
        train_files, val_files = by_file(train_files, VAL_FRACTION)
        return {"train": whole(train_files), "val": whole(val_files), "test": test_parts}

    def _cached(self, path: Path) -> np.ndarray:
        """The uint8 frames ``(T, H, W, C)`` of ``path``, memory-mapped from the cache (decoded and
        written there first when no entry matches)."""
        st = path.stat()
        key = json.dumps(
            {
                "file": str(path.resolve()),
                "bytes": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "size": list(self.size),
                "channels": self.channels,
                "frame_step": self.frame_step,
                "version": _CACHE_VERSION,
            },
            sort_keys=True,
        )
        entry = self.cache_dir / f"{path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npy"
        if entry.is_file():
            try:
                return np.load(entry, mmap_mode="r")
            except (ValueError, OSError):  # a damaged entry (e.g. a disk that filled up): decode again
                logger.warning("cache entry %s is unreadable; decoding %s again", entry, path)
        frames = _decode(path, self.size, self.channels, self.frame_step)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, frames)
            os.replace(tmp, entry)  # atomic: a reader never sees half a file
        except OSError as exc:
            if tmp.parent.is_dir():
                tmp.unlink(missing_ok=True)
            raise CacheError(
                f"VideoFolder: cannot write the frame cache {entry} ({exc.strerror or exc}); make "
                f"{self.cache_dir} writable or set data.cache_dir (cache_dir=) to a writable folder"
            ) from None
        logger.info("decoded %s: %d frames -> %s", path, frames.shape[0], entry)
        return np.load(entry, mmap_mode="r")

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self._clips)

    def clip_origin(self, index: int) -> tuple[Path, int]:
        """``(file, first frame index)`` of clip ``index`` (frame indices count after ``frame_step``)."""
        f, t = self._clips[index]
        return self.files[f], t

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -len(self) <= index < len(self):
            raise IndexError(f"VideoFolder: index {index} out of range for {len(self)} clips")
        f, t = self._clips[index]
        clip = torch.from_numpy(np.array(self._arrays[f][t : t + self.clip_frames])).float().div_(255.0)
        return clip if self.data_format == "channels_last" else clip.permute(0, 3, 1, 2).contiguous()

    def clips(self, indices: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
        """Clips ``indices`` (default: all) stacked: ``(N, T, C, H, W)`` (channels_first)."""
        indices = range(len(self)) if indices is None else indices
        return torch.stack([self[int(i)] for i in indices])

    def describe(self) -> str:
        """One line: the split, its clips, files and frames."""
        return (
            f"{self.split} split of {self.root}: {len(self)} clips of {self.clip_frames} frames "
            f"(stride {self.clip_stride}) from {len(self.files)} file(s), {sum(self.num_frames)} frames"
        )
