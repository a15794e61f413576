"""Layout helpers: every change between the user's layout and the internal one is an einops line.

The internal layout of a sequence is batch-first, channels-first: ``(B, T, C, *spatial)``.
A user's layout is set by ``batch_first`` (time first otherwise, as in ``torch.nn.LSTM``) and
``data_format`` ("channels_first" or "channels_last").
"""

from __future__ import annotations

from collections.abc import Sequence

from einops import rearrange
from torch import Tensor

DATA_FORMATS = ("channels_first", "channels_last")
_SPATIAL_NAMES = {0: [], 1: ["L"], 2: ["H", "W"], 3: ["D", "H", "W"]}


def check_data_format(data_format: str) -> str:
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format: expected one of {DATA_FORMATS}, got {data_format!r}")
    return data_format


def _axes(spatial_dims: int) -> list[str]:
    return [f"s{i}" for i in range(spatial_dims)]


def sequence_pattern(spatial_dims: int, batch_first: bool, data_format: str) -> str:
    """einops axes of a batched sequence in the user's layout, e.g. ``"b t s0 s1 c"``."""
    s = _axes(spatial_dims)
    bt = ["b", "t"] if batch_first else ["t", "b"]
    feat = ["c", *s] if data_format == "channels_first" else [*s, "c"]
    return " ".join(bt + feat)


def frame_pattern(spatial_dims: int, data_format: str) -> str:
    """einops axes of a batched frame (one time step), e.g. ``"b c s0 s1"``."""
    s = _axes(spatial_dims)
    return " ".join(["b", "c", *s] if data_format == "channels_first" else ["b", *s, "c"])


def internal_sequence_pattern(spatial_dims: int) -> str:
    return " ".join(["b", "t", "c", *_axes(spatial_dims)])


def sequence_to_internal(x: Tensor, spatial_dims: int, batch_first: bool, data_format: str) -> Tensor:
    """User layout → ``(B, T, C, *spatial)``."""
    src = sequence_pattern(spatial_dims, batch_first, data_format)
    dst = internal_sequence_pattern(spatial_dims)
    return x if src == dst else rearrange(x, f"{src} -> {dst}")


def sequence_from_internal(x: Tensor, spatial_dims: int, batch_first: bool, data_format: str) -> Tensor:
    """``(B, T, C, *spatial)`` → user layout."""
    src = internal_sequence_pattern(spatial_dims)
    dst = sequence_pattern(spatial_dims, batch_first, data_format)
    return x if src == dst else rearrange(x, f"{src} -> {dst}")


def frame_to_internal(x: Tensor, spatial_dims: int, data_format: str) -> Tensor:
    """``(B, *spatial, C)`` or ``(B, C, *spatial)`` → ``(B, C, *spatial)``."""
    src = frame_pattern(spatial_dims, data_format)
    dst = frame_pattern(spatial_dims, "channels_first")
    return x if src == dst else rearrange(x, f"{src} -> {dst}")


def frame_from_internal(x: Tensor, spatial_dims: int, data_format: str) -> Tensor:
    src = frame_pattern(spatial_dims, "channels_first")
    dst = frame_pattern(spatial_dims, data_format)
    return x if src == dst else rearrange(x, f"{src} -> {dst}")


def describe_sequence(spatial_dims: int, batch_first: bool, data_format: str, batched: bool = True) -> str:
    """Human-readable shape of a sequence in the given layout, e.g. ``"(B, T, C, H, W)"``."""
    s = _SPATIAL_NAMES[spatial_dims]
    bt = (["B", "T"] if batch_first else ["T", "B"]) if batched else ["T"]
    feat = ["C", *s] if data_format == "channels_first" else [*s, "C"]
    return "(" + ", ".join(bt + feat) + ")"


def describe_frame(
    spatial_dims: int,
    data_format: str,
    batched: bool = True,
    channel: str = "C",
    lead: Sequence[str] = (),
    spatial_suffix: str = "",
) -> str:
    """Human-readable shape of a frame (one time step), e.g. ``"(B, C, H, W)"``: ``lead`` axes
    come before ``B`` (a layer's stacked states), ``spatial_suffix`` marks output sizes (``"_out"``)."""
    s = [f"{name}{spatial_suffix}" for name in _SPATIAL_NAMES[spatial_dims]]
    feat = [channel, *s] if data_format == "channels_first" else [*s, channel]
    return "(" + ", ".join([*lead, *(["B"] if batched else []), *feat]) + ")"


def user_frame_shape(
    internal: Sequence[int], spatial_dims: int, data_format: str, batched: bool = True
) -> tuple[int, ...]:
    """A frame shape ``(B, C, *spatial)`` of the internal layout written in the user's layout
    (channels last where asked; without ``B`` when the user's input is unbatched), for messages."""
    shape = list(internal)
    if data_format == "channels_last" and spatial_dims:
        shape = [shape[0], *shape[2:], shape[1]]
    return tuple(shape if batched else shape[1:])
