"""Heads of the encoder-forecaster: what turns the forecaster's hidden state into the next frame.

Every head is a 1x1 convolution over the concatenated hidden states of all forecaster layers
(``(N, sum(hidden), h, w)`` at patch resolution), so its parameters are ``head.weight`` and
``head.bias`` whatever it renders. A head says:

- what it outputs: :meth:`FrameHead.render` turns the convolution's output into the next
  full-resolution frame ``(N, C, H, W)`` (and, for heads with filter kernels, their mean source
  offsets and the displacement that warp rendering accumulates);
- how it may render: :meth:`FrameHead.check_rendering` accepts or refuses a prediction-time
  ``filter_temperature`` and ``render`` mode;
- what it gives the loss: ``has_kernels`` (filter kernels, so offsets for a motion loss and a
  temperature to sharpen them) and ``default_activation`` (the output activation when the model
  is built with ``output_activation=None``).

Heads are registered by name (``HEADS``; ``EncoderForecaster(head=...)``, config key
``model.head``). A new head is one subclass of :class:`FrameHead` decorated with
``@register_head("name")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

RENDERS = ("filter", "warp")


def unpatchify(x: Tensor, patch_size: int) -> Tensor:
    """``(B, T, C·p·p, H/p, W/p) → (B, T, C, H, W)`` (depth-to-space)."""
    if patch_size == 1:
        return x
    return rearrange(x, "b t (c p1 p2) h w -> b t c (h p1) (w p2)", p1=patch_size, p2=patch_size)


class FrameHead(nn.Conv2d):
    """A 1x1 convolution from ``features`` hidden channels to what the head needs, plus how that
    output becomes a frame. Subclasses set ``name``, ``has_kernels``, ``default_activation`` and
    implement :meth:`out_channels` and :meth:`render`."""

    name: str = ""
    has_kernels: bool = False  # filter kernels: offsets, filter_temperature, render="warp"
    default_activation: str = "identity"

    def __init__(self, features: int, patch_channels: int, patch_size: int, **options: object) -> None:
        # options a head does not use (filter_size of a conv head) are ignored, as the model's are
        super().__init__(features, self.out_channels(patch_channels, **options), kernel_size=1)
        self.patch_size = patch_size

    @classmethod
    def out_channels(cls, patch_channels: int, **options: object) -> int:
        """Channels of the 1x1 convolution's output for frames of ``patch_channels`` (C·p·p)."""
        raise NotImplementedError

    def check_rendering(self, temperature: float, render: str) -> None:
        """ValueError when this head cannot render with ``temperature`` / ``render``."""
        if not self.has_kernels and temperature != 1.0:
            raise ValueError(
                f"filter_temperature: head={self.name!r} has no filter kernels to sharpen, got {temperature!r}"
            )
        if not self.has_kernels and render != "filter":
            raise ValueError(
                f"render: head={self.name!r} draws its frames; render={render!r} needs head={_kernel_heads()}"
            )

    def check_offsets(self) -> None:
        """ValueError when this head cannot give kernel offsets (no filter kernels)."""
        if not self.has_kernels:
            raise ValueError(
                f"offsets: head={self.name!r} has no filter kernels, so no offsets; use head={_kernel_heads()}"
            )

    def render(
        self,
        z: Tensor,
        previous: Tensor,
        activation: Callable[[Tensor], Tensor],
        temperature: float = 1.0,
        warp: bool = False,
        with_offsets: bool = False,
        displacement: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The next frame ``(N, C, H, W)`` from the convolution's output ``z`` ``(N, out, h, w)``
        and the previous frame ``previous`` ``(N, C, H, W)`` (with ``warp``: the frame sampled,
        ``displacement`` ``(N, 2, H, W)`` accumulated since it, None for none); ``activation`` is
        the model's output activation. Returns ``(frame, offsets, displacement)``: the kernels'
        mean source offsets ``(N, 2, h, w)`` with ``with_offsets``, the new displacement with
        ``warp``, else None."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, head={self.name!r}"


HEADS: dict[str, type[FrameHead]] = {}


def register_head(name: str) -> Callable[[type[FrameHead]], type[FrameHead]]:
    """Class decorator: make ``cls`` the head called ``name`` (``EncoderForecaster(head=name)``)."""

    def register(cls: type[FrameHead]) -> type[FrameHead]:
        cls.name = name
        HEADS[name] = cls
        return cls

    return register


def head_class(name: object) -> type[FrameHead]:
    """The head registered as ``name``; ValueError listing the registered heads otherwise."""
    if not isinstance(name, str) or name not in HEADS:
        raise ValueError(f"head: expected one of {tuple(HEADS)}, got {name!r}")
    return HEADS[name]


def _kernel_heads() -> str:
    return " or ".join(repr(n) for n, cls in HEADS.items() if cls.has_kernels)


@register_head("conv")
class ConvHead(FrameHead):
    """The 1x1 convolution draws the patched frame itself (Shi et al. 2015): depth-to-space and
    the output activation (sigmoid by default: frames in [0, 1])."""

    default_activation = "sigmoid"

    @classmethod
    def out_channels(cls, patch_channels: int, **options: object) -> int:
        return patch_channels

    def render(self, z, previous, activation, temperature=1.0, warp=False, with_offsets=False, displacement=None):
        return activation(unpatchify(z.unsqueeze(1), self.patch_size).squeeze(1)), None, None


@register_head("dynamic_filter")
class DynamicFilterHead(FrameHead):
    """For every patch cell the logits of a ``filter_size x filter_size`` kernel (De Brabandere et
    al. 2016); their softmax filters the previous frame around each of the cell's p x p pixels,
    or (``warp``) moves a displacement field at which the source frame is sampled once. The
    output is a convex combination of pixels, already in range: the activation defaults to
    identity."""

    has_kernels = True

    def __init__(self, features: int, patch_channels: int, patch_size: int, filter_size: int = 9) -> None:
        if isinstance(filter_size, bool) or not isinstance(filter_size, int) or filter_size < 1 or filter_size % 2 == 0:
            raise ValueError(f"filter_size: expected an odd positive int, got {filter_size!r}")
        super().__init__(features, patch_channels, patch_size, filter_size=filter_size)
        self.filter_size = filter_size

    @classmethod
    def out_channels(cls, patch_channels: int, filter_size: int = 9, **options: object) -> int:
        return filter_size * filter_size

    def render(self, z, previous, activation, temperature=1.0, warp=False, with_offsets=False, displacement=None):
        k = self.filter_size
        kernels = torch.softmax(z.float() / temperature, dim=1)
        offsets = None
        if with_offsets or warp:
            # kernel entry (i, j) in row-major order reads the pixel (i - k//2, j - k//2) away
            taps = torch.arange(k, device=kernels.device, dtype=kernels.dtype) - k // 2
            grid = kernels.unflatten(1, (k, k))  # (N, k, k, h, w)
            offsets = torch.stack(
                [torch.einsum("nijhw,i->nhw", grid, taps), torch.einsum("nijhw,j->nhw", grid, taps)], dim=1
            )
        if warp:
            # a pixel reads, through its kernel, the previous prediction around it, which read the
            # source frame at those pixels' displacements: so its source coordinate is the kernel's
            # average of (tap offset + displacement there); one bilinear sample of the source then
            # gives the frame, so blur does not pile up over the horizon as repeated filtering does
            p = self.patch_size
            new = offsets.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
            if displacement is not None:
                new = new + apply_dynamic_filter(displacement.float(), kernels)
            return activation(sample_displaced(previous, new)), (offsets if with_offsets else None), new
        return activation(apply_dynamic_filter(previous, kernels)), offsets, None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, filter_size={self.filter_size}"


def filter_by_taps(frame: Tensor, weights: Tensor) -> Tensor:
    """:func:`apply_dynamic_filter` from shifted copies of the frame: the ``K*K`` taps as
    fixed-size slices of the zero-padded frame (k across, then k down), stacked last, weighted
    and summed. Every shape but the batch is fixed, with no convolution grouped by batch
    element, so that a graph exported with a dynamic batch axis (ONNX) holds slices and
    element-wise products only."""
    c, h, w = frame.shape[1:]
    kk, hs, ws = weights.shape[1:]
    k, s = math.isqrt(kk), h // hs
    padded = F.pad(frame, (k // 2,) * 4)
    # (B, C, H + k - 1, W, k), then (B, C, H, W, k, k)
    across = torch.stack([padded[..., j : j + w] for j in range(k)], dim=-1)
    taps = torch.stack([across[:, :, i : i + h] for i in range(k)], dim=-2)
    taps = taps.reshape(-1, c, hs, s, ws, s, kk)  # the taps of every pixel, row-major, by block
    per_block = weights.permute(0, 2, 3, 1).reshape(-1, 1, hs, 1, ws, 1, kk).to(taps.dtype)
    return (taps * per_block).sum(dim=-1).reshape(-1, c, h, w)


def apply_dynamic_filter(frame: Tensor, weights: Tensor) -> Tensor:
    """Filter each pixel of ``frame`` with its own kernel.

    Args:
        frame: ``(B, C, H, W)``.
        weights: ``(B, K*K, H/s, W/s)``, kernels in row-major order for odd ``K``, one kernel per
            ``s x s`` block of pixels (``s = 1``: one per pixel), shared by the C channels; the
            frame is zero-padded at its border.

    Returns:
        ``(B, C, H, W)`` with
        ``out[b, c, y, x] = sum_k weights[b, k, y//s, x//s] * frame[b, c, y+dy_k, x+dx_k]``.
    """
    if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
        return filter_by_taps(frame, weights)
    b, c, h, w = frame.shape
    kk, hs, ws = weights.shape[1:]
    k = int(round(kk**0.5))
    if k * k != kk or k % 2 == 0 or h % hs or w % ws or h // hs != w // ws:
        raise ValueError(
            f"apply_dynamic_filter: expected weights (B, K*K, H/s, W/s) with odd K for frame "
            f"{tuple(frame.shape)}, got {tuple(weights.shape)}"
        )
    s = h // hs
    n = b * hs * ws * c
    if n == 0:  # an empty batch (grouped convolutions need at least one group)
        return frame * weights.sum(1, keepdim=True).repeat_interleave(s, 2).repeat_interleave(s, 3)
    # the (s + K - 1)^2 window that the K x K kernels of one s x s block read, for every block ...
    win = s + k - 1
    cols = F.unfold(frame, win, padding=k // 2, stride=s).view(b, c, win, win, hs * ws)
    cols = cols.permute(0, 4, 1, 2, 3).reshape(1, n, win, win)
    # ... filtered by that block's kernel: one depthwise convolution per block and channel
    kernels = weights.permute(0, 2, 3, 1).reshape(b * hs * ws, 1, kk).expand(-1, c, -1).reshape(n, 1, k, k)
    out = F.conv2d(cols, kernels.to(cols.dtype), groups=n)  # (1, n, s, s)
    return out.view(b, hs, ws, c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def sample_displaced(frame: Tensor, displacement: Tensor) -> Tensor:
    """Sample ``frame`` at every pixel displaced by ``displacement``, bilinearly.

    Args:
        frame: ``(B, C, H, W)``.
        displacement: ``(B, 2, H, W)`` as ``(dy, dx)`` in pixels.

    Returns:
        ``(B, C, H, W)`` with ``out[b, c, y, x] = frame[b, c, y + dy, x + dx]`` interpolated
        bilinearly between the four nearest pixels; outside the frame reads 0.
    """
    b, c, h, w = frame.shape
    if displacement.shape != (b, 2, h, w):
        raise ValueError(
            f"sample_displaced: expected displacement (B, 2, H, W) = {(b, 2, h, w)}, got {tuple(displacement.shape)}"
        )
    d = displacement.float()
    ys = torch.arange(h, device=d.device, dtype=d.dtype).view(1, h, 1)
    xs = torch.arange(w, device=d.device, dtype=d.dtype).view(1, 1, w)
    # grid_sample's normalised coordinates, x first; align_corners=True maps -1 and 1 to the
    # centres of pixels 0 and size-1
    gy = (ys + d[:, 0]) * (2.0 / max(h - 1, 1)) - 1.0
    gx = (xs + d[:, 1]) * (2.0 / max(w - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(frame.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
