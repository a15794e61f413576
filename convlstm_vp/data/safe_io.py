"""The one way in for the user's files: arrays, images, videos and text, read safely.

Every reader of a user's file (frames and videos, ``.npy``/``.npz`` arrays, GIF/PNG images,
``.ts`` and ``.csv`` text, configs) goes through these functions. A file that cannot be decoded
is an :class:`InputError` (a ``ValueError``): one line that names the file and says what is
wrong, never a traceback of the decoder. Sizes a file declares are checked against the limits
below *before* memory is allocated, so a 1 KB file declaring a terabyte array is refused at
once (docs/reliability.md, "Size limits"):

- :data:`MAX_ARRAY_BYTES`: one ``.npy`` array or one member of an ``.npz`` (its header's shape
  times its item size);
- :data:`MAX_IMAGE_PIXELS`: width x height of one image or GIF frame;
- :data:`MAX_VIDEO_FRAMES`: the frames a video or GIF declares.

The limits are module attributes: a user with bigger inputs may raise them
(``convlstm_vp.data.safe_io.MAX_ARRAY_BYTES = ...``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "InputError",
    "MAX_ARRAY_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_VIDEO_FRAMES",
    "read_npy",
    "read_npz",
    "open_image",
    "check_video_size",
    "read_text",
    "first_line",
]

#: bytes one array of a .npy/.npz may declare (8 GiB)
MAX_ARRAY_BYTES = 8 * 2**30
#: pixels (width x height) of one image or GIF frame (a 16k x 16k picture)
MAX_IMAGE_PIXELS = 16384 * 16384
#: frames one video or GIF may declare
MAX_VIDEO_FRAMES = 1_000_000


class InputError(ValueError):
    """A user's file cannot be read: one line naming the file and what is wrong with it."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """``exc`` as one short line: its type and the first line of its message."""
    text = (str(exc).strip().splitlines() or [""])[0][:limit]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _missing(path: Path, what: str) -> FileNotFoundError:
    if path.is_dir():
        return FileNotFoundError(f"{path}: is a folder, expected a {what} file")
    return FileNotFoundError(f"{path}: no such {what} file")


def _need_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise _missing(path, what)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (expected a {what} file)")


def _check_header(path: Path, where: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse an object (pickled) dtype or a declared size above :data:`MAX_ARRAY_BYTES`."""
    if dtype.hasobject:
        raise InputError(f"{where}: holds Python objects (pickled data), which are never loaded; save numbers instead")
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size > MAX_ARRAY_BYTES:
        raise InputError(
            f"{where}: declares a {dtype} array of shape {tuple(shape)} ({size / 2**30:.1f} GiB), "
            f"above the limit of {MAX_ARRAY_BYTES / 2**30:g} GiB "
            "(convlstm_vp.data.safe_io.MAX_ARRAY_BYTES)"
        )


def _read_header(handle: Any, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the ``.npy`` stream ``handle`` from its header alone."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(handle)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unknown .npy format version {version}")
        # 3.0 differs from 2.0 only in the header's text encoding (UTF-8 field names)
        reader = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = reader(handle)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise InputError(f"{where}: not a readable .npy array ({first_line(exc)})") from None
    return tuple(shape), np.dtype(dtype)


def read_npy(path: str | Path, mmap_mode: str | None = None) -> np.ndarray:
    """The array of a ``.npy`` file, its header checked first (:func:`_check_header`)."""
    path = Path(path)
    _need_file(path, ".npy")
    with path.open("rb") as f:
        shape, dtype = _read_header(f, str(path))
    _check_header(path, str(path), shape, dtype)
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({first_line(exc)})") from None


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file by name, each member's header checked before it loads.

    A file that is not a zip archive, a member that fails its CRC, a truncated archive or a
    pickled member is an :class:`InputError` naming the file (and the member)."""
    path = Path(path)
    _need_file(path, ".npz")
    if not zipfile.is_zipfile(path):
        raise InputError(
            f"{path}: not a complete .npz file (an .npz is a zip archive of .npy arrays; no zip "
            "directory found: the file is truncated or of another format)"
        )
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                name = member[:-4] if member.endswith(".npy") else member
                where = f"{path}: array {name!r}"
                with zf.open(member) as handle:
                    shape, dtype = _read_header(handle, where)
                _check_header(path, where, shape, dtype)
                with zf.open(member) as handle:
                    out[name] = _read_member(handle, where)
    except InputError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
        problem = first_line(exc)
        raise InputError(f"{path}: a truncated or corrupted .npz file ({problem})") from None
    return out


def _read_member(handle: Any, where: str) -> np.ndarray:
    import io

    try:
        return np.load(io.BytesIO(handle.read()), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{where}: not a readable .npy array ({first_line(exc)})") from None


def open_image(path: str | Path, what: str = "image") -> Any:
    """A ``PIL.Image`` of ``path`` (header read, pixels not yet decoded) whose declared width x
    height and frame count lie within :data:`MAX_IMAGE_PIXELS` and :data:`MAX_VIDEO_FRAMES`."""
    import warnings

    from PIL import Image

    path = Path(path)
    _need_file(path, what)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        # Pillow's own bomb check is replaced by the limit below, which names the declared size
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        raise InputError(f"{path}: not a readable {what} ({first_line(exc)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS or width < 1 or height < 1:
        img.close()
        raise InputError(
            f"{path}: declares {width}x{height} pixels, outside 1 to {MAX_IMAGE_PIXELS} pixels "
            "(convlstm_vp.data.safe_io.MAX_IMAGE_PIXELS)"
        )
    return img


def check_video_size(path: str | Path, frames: float, width: float, height: float) -> None:
    """Refuse a video whose declared frame count or frame size is above the limits (OpenCV's
    ``CAP_PROP_FRAME_COUNT``/``WIDTH``/``HEIGHT``; 0 or negative means unknown and passes)."""
    if frames > MAX_VIDEO_FRAMES:
        raise InputError(
            f"{path}: declares {int(frames)} frames, above the limit of {MAX_VIDEO_FRAMES} "
            "(convlstm_vp.data.safe_io.MAX_VIDEO_FRAMES)"
        )
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"{path}: declares {int(width)}x{int(height)} frames, above the limit of "
            f"{MAX_IMAGE_PIXELS} pixels (convlstm_vp.data.safe_io.MAX_IMAGE_PIXELS)"
        )


def read_text(path: str | Path, what: str) -> str:
    """The text of ``path`` decoded as UTF-8; a file in another encoding (or binary) is an
    :class:`InputError` naming the file, the byte and the expected ``what``."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, what)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"{exc.reason} at byte {exc.start}"
        raise InputError(f"{path}: not a UTF-8 text {what} file ({where})") from None
