"""Stacked ConvLSTM encoder-forecaster for frame prediction (Shi et al. 2015).

Reads top to bottom:

1. ``patchify``: space-to-depth with einops, ``(B, T, C, H, W) → (B, T, C·p·p, H/p, W/p)``.
2. Encoder: a :class:`~convlstm_vp.nn.ConvLSTM` stack reads the ``input_frames`` frames; its
   final ``(h, c)`` per layer initialise the forecaster (the "copy" of Shi et al.).
3. Forecaster: a second stack of cells steps ``output_frames`` times. Its input at each step is
   the previous frame: the last observed one first, then its own prediction — or, in training
   with scheduled sampling, the true frame with probability ``eta`` (the model keeps the
   schedule; callers only pass ``targets``).
4. Head: the hidden states of all forecaster layers are concatenated and mixed by a 1x1
   convolution. With ``head="conv"`` (Shi et al.) its output is the patched frame itself, then
   ``unpatchify`` and the output activation. With ``head="dynamic_filter"`` (De Brabandere et al.
   2016, "Dynamic Filter Networks") the 1x1 convolution instead gives, for every patch cell, the
   logits of a ``filter_size x filter_size`` kernel; the softmax of those weights filters the
   previous full-resolution frame around each of the cell's p x p pixels. The model then
   predicts *where each pixel comes from* rather than drawing the frame: on Moving MNIST it
   learns the digits' motion quickly and keeps them sharp, and an empty background stays 0.
   ``head="composite"`` adds what a warp cannot do, in the manner of the compositing masks of
   Finn et al. (2016, CDNA): the same 1x1 convolution also draws a frame (sigmoid) and a
   per-pixel mask (sigmoid), and the prediction is ``mask * filtered + (1 - mask) * drawn``, so
   the model can redraw what the previous frame lost (digits that overlapped, blur).
   ``head="warp"`` keeps the same kernels but does not filter its own predictions: each kernel
   moves a per-pixel displacement field (a pixel's new displacement is its kernel's average of
   tap offset plus the displacement found there), and the frame is the last observed frame (or
   the last teacher-forced one) sampled bilinearly at it (``sample_displaced``). Kernels that mix
   a 2 px and a 3 px step then read 2.5 px per step, and after ten steps one sharp sample, where
   repeated filtering would have spread the digit over a ten-step binomial blur.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..nn import ConvLSTM
from ..nn.layout import check_data_format, describe_sequence, sequence_from_internal, sequence_to_internal
from ..nn.functional import check_finite, get_activation


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """``(B, T, C, H, W) → (B, T, C·p·p, H/p, W/p)`` (space-to-depth)."""
    if patch_size == 1:
        return x
    return rearrange(x, "b t c (h p1) (w p2) -> b t (c p1 p2) h w", p1=patch_size, p2=patch_size)


def unpatchify(x: Tensor, patch_size: int) -> Tensor:
    """``(B, T, C·p·p, H/p, W/p) → (B, T, C, H, W)`` (depth-to-space)."""
    if patch_size == 1:
        return x
    return rearrange(x, "b t (c p1 p2) h w -> b t c (h p1) (w p2)", p1=patch_size, p2=patch_size)


HEADS = ("conv", "dynamic_filter", "composite", "warp")
# initial bias of the composite head's mask logits: start close to the pure dynamic filter
COMPOSITE_MASK_BIAS = 2.0
COMPOSITE_DRAW_BIAS = -4.0


def apply_dynamic_filter(frame: Tensor, weights: Tensor) -> Tensor:
    """Filter each pixel of ``frame`` with its own kernel.

    Args:
        frame: ``(B, C, H, W)``.
        weights: ``(B, K*K, H/s, W/s)``, kernels in row-major order for odd ``K``, one kernel per
            ``s x s`` block of pixels (``s = 1``: one per pixel), shared by the C channels; the
            frame is zero-padded at its border.

    Returns:
        ``(B, C, H, W)`` with ``out[b, c, y, x] = sum_k weights[b, k, y//s, x//s] * frame[b, c, y+dy_k, x+dx_k]``.
    """
    b, c, h, w = frame.shape
    kk, hs, ws = weights.shape[1:]
    k = int(round(kk**0.5))
    if k * k != kk or k % 2 == 0 or h % hs or w % ws or h // hs != w // ws:
        raise ValueError(f"apply_dynamic_filter: expected weights (B, K*K, H/s, W/s) with odd K for frame {tuple(frame.shape)}, got {tuple(weights.shape)}")
    s = h // hs
    n = b * hs * ws * c
    # the (s + K - 1)^2 window that the K x K kernels of one s x s block read, for every block ...
    win = s + k - 1
    cols = F.unfold(frame, win, padding=k // 2, stride=s).view(b, c, win, win, hs * ws)
    cols = cols.permute(0, 4, 1, 2, 3).reshape(1, n, win, win)
    # ... filtered by that block's kernel: one depthwise convolution with a group per block and channel
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
        raise ValueError(f"sample_displaced: expected displacement (B, 2, H, W) = {(b, 2, h, w)}, got {tuple(displacement.shape)}")
    d = displacement.float()
    ys = torch.arange(h, device=d.device, dtype=d.dtype).view(1, h, 1)
    xs = torch.arange(w, device=d.device, dtype=d.dtype).view(1, 1, w)
    # grid_sample's normalised coordinates, x first; align_corners=True maps -1 and 1 to pixel centres 0 and size-1
    gy = (ys + d[:, 0]) * (2.0 / max(h - 1, 1)) - 1.0
    gx = (xs + d[:, 1]) * (2.0 / max(w - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(frame.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class EncoderForecaster(nn.Module):
    """ConvLSTM encoder-forecaster.

    Args:
        in_channels: channels of a frame (1 for Moving MNIST).
        hidden_channels: hidden channels per layer (list; its length is the number of layers).
        kernel_size: kernel per layer (int for all, or a list).
        patch_size: space-to-depth factor (4 turns 64x64x1 into 16x16x16).
        input_frames, output_frames: frames observed and frames predicted.
        data_format: "channels_first" ``(B, T, C, H, W)`` or "channels_last" ``(B, T, H, W, C)``.
        output_activation: applied to the predicted frames; ``None`` picks "sigmoid" (frames in
            [0, 1]) for ``head="conv"`` and "identity" for the other heads, whose output (a
            convex combination of pixels of the previous frame, and of a drawn frame) is
            already in range.
        head: "conv" (the 1x1 convolution draws the frame), "dynamic_filter" (it gives a
            per-pixel kernel applied to the previous frame), "composite" (that filtered frame
            blended with a drawn one through a learned mask) or "warp" (the kernels carry a
            displacement field; the last observed frame sampled at it); see the module docstring.
        filter_size: odd kernel side for the filter heads; it bounds the motion per
            frame it can express (9 covers 4 px, Moving MNIST moves 3.6 px per frame).
        filter_temperature: the kernels are ``softmax(logits / filter_temperature)``; below 1
            sharpens them. Meant for prediction with a trained model (``set_filter_temperature``,
            which ``evaluate.py`` / ``predict.py --filter-temperature`` call): less blur
            accumulates over the horizon when each step mixes fewer pixels.
        motion_input: the cells read each frame joined on channels by its difference to the
            frame before it (zero for the first input frame), so motion is an input rather than
            something the first layer must recover from its state.
        scheduled_sampling: ``(start, end, steps)``: in training, the probability of feeding the
            true previous frame decays linearly from ``start`` to ``end`` over ``steps``
            training calls; ``None`` always feeds the model's own prediction.
        check_finite: raise :class:`~convlstm_vp.nn.NonFiniteInputError` (a ``ValueError``)
            when ``frames`` or ``targets`` hold NaN/Inf (one ``isfinite().all()`` each).
        **cell_kwargs: passed to every cell (peephole, activations, initializers, ...).

    ``forward(frames, targets=None) -> predictions``:
        frames: ``(B, input_frames, C, H, W)`` in ``data_format``; H and W divisible by patch_size.
        targets: ``(B, output_frames, C, H, W)``, used only for scheduled sampling in training.
        predictions: ``(B, output_frames, C, H, W)`` in ``data_format``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden_channels: Sequence[int] = (64, 64, 64),
        kernel_size: int | list[int] = 5,
        *,
        patch_size: int = 4,
        input_frames: int = 10,
        output_frames: int = 10,
        data_format: str = "channels_first",
        output_activation: str | None = None,
        head: str = "conv",
        filter_size: int = 9,
        filter_temperature: float = 1.0,
        motion_input: bool = False,
        scheduled_sampling: Sequence[float] | None = None,
        check_finite: bool = True,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        hidden = list(hidden_channels)
        if not hidden or any((not isinstance(h, int)) or h <= 0 for h in hidden):
            raise ValueError(f"hidden_channels: expected a non-empty list of positive ints, got {hidden_channels!r}")
        for what, v in (("patch_size", patch_size), ("input_frames", input_frames), ("output_frames", output_frames), ("in_channels", in_channels)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{what}: expected a positive int, got {v!r}")
        if head not in HEADS:
            raise ValueError(f"head: expected one of {HEADS}, got {head!r}")
        if head != "conv" and (not isinstance(filter_size, int) or filter_size < 1 or filter_size % 2 == 0):
            raise ValueError(f"filter_size: expected an odd positive int, got {filter_size!r}")
        if output_activation is None:
            output_activation = "sigmoid" if head == "conv" else "identity"
        if not isinstance(motion_input, bool):
            raise TypeError(f"motion_input: expected a bool, got {motion_input!r}")
        if scheduled_sampling is not None:
            if len(scheduled_sampling) != 3:
                raise ValueError(f"scheduled_sampling: expected (start, end, steps), got {scheduled_sampling!r}")
            start, end, steps = scheduled_sampling
            if not (0 <= end <= 1 and 0 <= start <= 1 and steps > 0):
                raise ValueError(f"scheduled_sampling: probabilities in [0, 1] and steps > 0, got {scheduled_sampling!r}")
        self.in_channels = in_channels
        self.hidden_channels = hidden
        self.patch_size = patch_size
        self.input_frames = input_frames
        self.output_frames = output_frames
        self.data_format = check_data_format(data_format)
        self.output_activation = output_activation
        self._out_act = get_activation(output_activation, "output_activation")
        self.head_type = head
        self.filter_size = filter_size if head != "conv" else None
        self.motion_input = motion_input
        self.set_filter_temperature(filter_temperature)
        self.scheduled_sampling = tuple(scheduled_sampling) if scheduled_sampling is not None else None
        self.check_finite = check_finite
        kernels = kernel_size if isinstance(kernel_size, list) else [kernel_size] * len(hidden)
        c = in_channels * patch_size * patch_size
        # with motion_input the cells also read the difference to the previous frame
        c_in = 2 * c if motion_input else c
        # the frames are checked once here, not again by the inner layers
        self.encoder = ConvLSTM(c_in, hidden, list(kernels), spatial_dims=2, name="encoder", check_finite=False, return_all_layers=True, **cell_kwargs)
        self.forecaster = ConvLSTM(c_in, hidden, list(kernels), spatial_dims=2, name="forecaster", check_finite=False, **cell_kwargs)
        # the dynamic filter has one kernel per patch cell, shared by its p x p pixels; the
        # composite head adds a drawn patched frame and a patched mask (c channels each)
        kk = filter_size * filter_size if head != "conv" else 0
        head_out = {"conv": c, "dynamic_filter": kk, "composite": kk + 2 * c, "warp": kk}[head]
        self.head = nn.Conv2d(sum(hidden), head_out, kernel_size=1)
        if head == "composite":
            with torch.no_grad():  # start near the plain filter: mask ~0.88, drawn frame ~0.02
                self.head.bias[kk : kk + c].fill_(COMPOSITE_DRAW_BIAS)
                self.head.bias[kk + c :].fill_(COMPOSITE_MASK_BIAS)
        # number of training calls seen, drives the scheduled-sampling probability
        self.register_buffer("sampling_updates", torch.zeros((), dtype=torch.long))

    def set_filter_temperature(self, value: float) -> None:
        """Set the softmax temperature of the filter kernels (see the class docstring)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"filter_temperature: expected a finite number > 0, got {value!r}")
        if self.head_type == "conv" and value != 1.0:
            raise ValueError(f"filter_temperature: head='conv' has no filter kernels to sharpen, got {value!r}")
        self.filter_temperature = float(value)

    def set_head(self, head: str) -> None:
        """Switch between the two heads that share their parameters, ``"dynamic_filter"`` and
        ``"warp"`` (the same kernels: filtering the previous prediction, or moving a displacement
        field and sampling the last observed frame once). Meant for prediction with a trained
        model (``evaluate.py`` / ``predict.py --head``): the filter head's kernels then render
        sharp frames instead of frames whose blur piles up over the horizon."""
        shared = ("dynamic_filter", "warp")
        if head not in shared or self.head_type not in shared:
            raise ValueError(f"set_head: only {shared} share their parameters; this model's head is {self.head_type!r}, asked for {head!r}")
        self.head_type = head

    def teacher_forcing_probability(self) -> float:
        """Current probability of feeding the true previous frame in training (0 if disabled)."""
        if self.scheduled_sampling is None:
            return 0.0
        return float(self._teacher_forcing_tensor())

    def _teacher_forcing_tensor(self) -> Tensor:
        """The teacher-forcing probability as a 0-dim float64 tensor on the buffer's device:
        forward uses it without reading the counter back to the host (on a GPU each read waits
        for all queued work)."""
        assert self.scheduled_sampling is not None
        start, end, steps = self.scheduled_sampling
        frac = (self.sampling_updates.double() / float(steps)).clamp(max=1.0)
        return start + (end - start) * frac

    def _check(self, x: Tensor, frames: int, what: str) -> Tensor:
        expected = describe_sequence(2, True, self.data_format)
        if not isinstance(x, Tensor) or x.dim() != 5:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{what}: expected {expected} with T={frames}, C={self.in_channels} (data_format={self.data_format!r}), got {shape}")
        x = sequence_to_internal(x, 2, True, self.data_format)
        b, t, c, h, w = x.shape
        if t != frames or c != self.in_channels or h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"{what}: expected {expected} with T={frames}, C={self.in_channels} and H, W divisible by "
                f"patch_size={self.patch_size} (data_format={self.data_format!r}), got {tuple(sequence_from_internal(x, 2, True, self.data_format).shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"EncoderForecaster: {what} must be a floating-point tensor, got dtype {x.dtype}")
        if self.check_finite:
            check_finite(x, what, "EncoderForecaster (check_finite=True)")
        return x

    def forward(
        self,
        frames: Tensor,
        targets: Tensor | None = None,
        return_encoder_predictions: bool = False,
        return_offsets: bool = False,
    ) -> Tensor | tuple[Tensor, ...]:
        """Predict ``output_frames`` frames; see the class docstring for shapes.

        With ``return_encoder_predictions=True`` also return the encoder's one-step-ahead
        predictions of input frames ``1 .. input_frames-1`` (the same head applied to the
        encoder's hidden states), ``(B, input_frames - 1, C, H, W)``: an auxiliary training target
        that gives the encoder a signal at every input step.

        With ``return_offsets=True`` (filter heads only) also return the mean source offset of
        every filter kernel, float32 ``(B, T', 2, H/p, W/p)`` as ``(dy, dx)`` in pixels: where, on
        average, each patch cell of each predicted frame reads the frame before it. ``T'`` covers
        the predicted frames, preceded by the encoder's ``input_frames - 1`` when
        ``return_encoder_predictions`` is set. It is the motion the model predicts, for a loss
        against the true motion (``motion_loss_weight`` in the training config).

        Returns ``y``, ``(y, encoder_predictions)``, ``(y, offsets)`` or
        ``(y, encoder_predictions, offsets)``.
        """
        if return_offsets and self.head_type == "conv":
            raise ValueError("return_offsets: head='conv' has no filter kernels, so no offsets; use head='dynamic_filter', 'composite' or 'warp'")
        x = self._check(frames, self.input_frames, "frames")
        p = self.patch_size
        xp = patchify(self._with_motion(x, x[:, :1]), p)
        layer_outputs, (h_n, c_n) = self.encoder(xp)
        encoder_pred = None
        offsets: list[Tensor] = []
        if return_encoder_predictions:
            feats = torch.cat(layer_outputs, dim=2)[:, :-1]  # (B, T_in - 1, sum(hidden), h, w)
            b, t = feats.shape[:2]
            encoder_pred, enc_offsets, _ = self._frame(feats.flatten(0, 1), x[:, :-1].flatten(0, 1), return_offsets)
            encoder_pred = sequence_from_internal(encoder_pred.unflatten(0, (b, t)), 2, True, self.data_format)
            if return_offsets:
                offsets.append(enc_offsets.unflatten(0, (b, t)))
        hs = list(h_n.unbind(0)) if isinstance(h_n, Tensor) else list(h_n)
        cs = list(c_n.unbind(0)) if isinstance(c_n, Tensor) else list(c_n)

        eta: Tensor | None = None
        true_frames = None
        if self.training and targets is not None and self.scheduled_sampling is not None:
            true_frames = self._check(targets, self.output_frames, "targets")
            eta = self._teacher_forcing_tensor()
            self.sampling_updates += 1

        cells = self.forecaster.cells
        for cell in cells:
            cell.reset_dropout_masks()
        frame = x[:, -1]  # (B, C, H, W): the previous frame, observed or predicted
        before = x[:, -2] if x.shape[1] > 1 else frame  # the frame before it (motion_input)
        # the warp head samples the last observed (or teacher-forced) frame, ``source``, at the
        # displacement its kernels have accumulated since, instead of filtering its own prediction
        warp = self.head_type == "warp"
        source, displacement = frame, None
        outputs = []
        for step in range(self.output_frames):
            inp = patchify(self._with_motion(frame.unsqueeze(1), before.unsqueeze(1)), p).squeeze(1)
            before = frame
            for layer, cell in enumerate(cells):
                hs[layer], cs[layer] = cell.step(inp, (hs[layer], cs[layer]))
                inp = hs[layer]
            pred, offset, displacement = self._frame(torch.cat(hs, dim=1), source if warp else frame, return_offsets, displacement)
            outputs.append(pred)
            if return_offsets:
                offsets.append(offset.unsqueeze(1))
            frame = pred
            if true_frames is not None and step + 1 < self.output_frames:
                # drawn even once the probability reaches 0 (then never true): deciding "eta > 0"
                # on the host would cost a device sync per step on a GPU
                use_true = (torch.rand(pred.shape[0], 1, 1, 1, device=pred.device) < eta).to(pred.dtype)
                true_frame = true_frames[:, step].to(pred.dtype)
                frame = use_true * true_frame + (1 - use_true) * pred
                if warp:  # a true frame fed restarts the warp from it, with no displacement
                    source = use_true * true_frame + (1 - use_true) * source
                    displacement = (1 - use_true) * displacement
        y = sequence_from_internal(torch.stack(outputs, dim=1), 2, True, self.data_format)
        extras = ((encoder_pred,) if return_encoder_predictions else ()) + ((torch.cat(offsets, dim=1),) if return_offsets else ())
        return (y, *extras) if extras else y

    def _with_motion(self, x: Tensor, first_before: Tensor) -> Tensor:
        """``(B, T, C, H, W)`` frames, with ``motion_input`` joined on channels by their differences
        to the frame before each (``first_before`` for the first one; itself gives 0)."""
        if not self.motion_input:
            return x
        before = torch.cat([first_before, x[:, :-1]], dim=1)
        return torch.cat([x, x - before], dim=2)

    def _frame(
        self, feats: Tensor, previous: Tensor, with_offsets: bool = False, displacement: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Next full-resolution frame ``(N, C, H, W)`` from hidden features ``(N, sum(hidden), h, w)``
        and the previous frame ``(N, C, H, W)`` (used by the filter heads; for ``warp`` the frame
        it samples, with ``displacement`` ``(N, 2, H, W)`` accumulated since, ``None`` for none).

        Returns ``(frame, offsets, displacement)``: with ``with_offsets`` the kernels' mean source
        offsets ``(N, 2, h, w)``, else ``None``; for ``warp`` the new accumulated displacement,
        else ``None``."""
        z = self.head(feats)
        if self.head_type == "conv":
            return self._out_act(unpatchify(z.unsqueeze(1), self.patch_size).squeeze(1)), None, None
        k = self.filter_size
        kernels = torch.softmax(z[:, : k * k].float() / self.filter_temperature, dim=1)
        offsets = None
        if with_offsets or self.head_type == "warp":
            # kernel entry (i, j) in row-major order reads the pixel (i - k//2, j - k//2) away
            taps = torch.arange(k, device=kernels.device, dtype=kernels.dtype) - k // 2
            grid = kernels.unflatten(1, (k, k))  # (N, k, k, h, w)
            offsets = torch.stack([torch.einsum("nijhw,i->nhw", grid, taps), torch.einsum("nijhw,j->nhw", grid, taps)], dim=1)
        if self.head_type == "warp":
            # a pixel reads, through its kernel, the previous prediction around it, which read the
            # source frame at those pixels' displacements: so its source coordinate is the kernel's
            # average of (tap offset + displacement there); one bilinear sample of the source then
            # gives the frame, so blur does not pile up over the horizon as repeated filtering does
            p = self.patch_size
            new = offsets.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
            if displacement is not None:
                new = new + apply_dynamic_filter(displacement.float(), kernels)
            return self._out_act(sample_displaced(previous, new)), (offsets if with_offsets else None), new
        frame = apply_dynamic_filter(previous, kernels)
        if self.head_type == "composite":
            drawn, mask = (torch.sigmoid(unpatchify(part.float().unsqueeze(1), self.patch_size).squeeze(1)) for part in z[:, k * k :].chunk(2, dim=1))
            frame = mask * frame + (1 - mask) * drawn
        return self._out_act(frame), offsets, None

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, hidden_channels={self.hidden_channels}, patch_size={self.patch_size}, "
            f"input_frames={self.input_frames}, output_frames={self.output_frames}, "
            f"output_activation={self.output_activation!r}, head={self.head_type!r}"
            + (f", filter_size={self.filter_size}" if self.filter_size else "")
            + (f", filter_temperature={self.filter_temperature}" if self.filter_temperature != 1.0 else "")
            + (", motion_input=True" if self.motion_input else "")
            + f", scheduled_sampling={self.scheduled_sampling}"
        )
