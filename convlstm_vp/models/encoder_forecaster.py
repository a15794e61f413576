"""Stacked ConvLSTM encoder-forecaster for frame prediction (Shi et al. 2015).

Reads top to bottom:

1. ``patchify``: space-to-depth with einops, ``(B, T, C, H, W) → (B, T, C·p·p, H/p, W/p)``.
2. Encoder: a :class:`~convlstm_vp.nn.ConvLSTM` stack reads the ``input_frames`` frames; its
   final ``(h, c)`` per layer initialise the forecaster (the "copy" of Shi et al.).
3. Forecaster: a second stack of cells steps ``output_frames`` times. Its input at each step is
   the previous frame: the last observed one first, then its own prediction — or, with
   ``teacher_forcing`` > 0 and ``targets`` (scheduled sampling in training), the true previous
   frame with that probability. The caller passes the probability; the model keeps no schedule.
4. Head (:mod:`convlstm_vp.models.heads`, registered by name): the hidden states of all
   forecaster layers are concatenated and mixed by a 1x1 convolution. With ``head="conv"`` (Shi et al.) its output is the patched frame itself, then
   ``unpatchify`` and the output activation. With ``head="dynamic_filter"`` (De Brabandere et al.
   2016, "Dynamic Filter Networks") the 1x1 convolution instead gives, for every patch cell, the
   logits of a ``filter_size x filter_size`` kernel; the softmax of those weights filters the
   previous full-resolution frame around each of the cell's p x p pixels. The model then
   predicts *where each pixel comes from* rather than drawing the frame: on Moving MNIST it
   learns the digits' motion quickly and keeps them sharp, and an empty background stays 0.

Prediction-time settings of a dynamic-filter model are arguments of :meth:`EncoderForecaster.predict`
/ :meth:`~EncoderForecaster.forecast`, not state: ``filter_temperature`` (the kernels are
``softmax(logits / T)``) and ``render``. ``render="filter"`` filters each previous prediction;
``render="warp"`` uses the same kernels to move a per-pixel displacement field instead (a pixel's
new displacement is its kernel's average of tap offset plus the displacement found there), and
the frame is the last observed frame (or the last teacher-forced one) sampled bilinearly at it
(``sample_displaced``). Kernels that mix a 2 px and a 3 px step then read 2.5 px per step, and
after ten steps one sharp sample, where repeated filtering would have spread the digit over a
ten-step binomial blur.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from ..nn import ConvLSTM
from ..nn.fast import CompiledForward
from ..nn.functional import check_finite, get_activation
from ..nn.layout import check_data_format, describe_sequence, sequence_from_internal, sequence_to_internal
from .heads import HEADS, RENDERS, apply_dynamic_filter, head_class, sample_displaced, unpatchify

__all__ = [
    "EncoderForecaster",
    "Forecast",
    "HEADS",
    "RENDERS",
    "apply_dynamic_filter",
    "patchify",
    "sample_displaced",
    "unpatchify",
]
from .streaming import FrameStream


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """``(B, T, C, H, W) → (B, T, C·p·p, H/p, W/p)`` (space-to-depth)."""
    if patch_size == 1:
        return x
    return rearrange(x, "b t c (h p1) (w p2) -> b t (c p1 p2) h w", p1=patch_size, p2=patch_size)


class Forecast(NamedTuple):
    """What :meth:`EncoderForecaster.forecast` returns; a field not asked for is ``None``.

    frames: the predicted frames ``(B, output_frames, C, H, W)`` in the model's ``data_format``.
    encoder_frames: the encoder's one-step-ahead predictions of input frames
        ``1 .. input_frames-1``, ``(B, input_frames - 1, C, H, W)`` (``encoder_predictions=True``).
    offsets: float32 ``(B, T', 2, H/p, W/p)``, the mean source offset ``(dy, dx)`` in pixels of
        every filter kernel (``offsets=True``): the encoder's ``input_frames - 1`` steps first when
        ``encoder_predictions`` is set, then the ``output_frames`` predicted ones.
    """

    frames: Tensor
    encoder_frames: Tensor | None = None
    offsets: Tensor | None = None


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
            [0, 1]) for ``head="conv"`` and "identity" for ``head="dynamic_filter"``, whose output
            (a convex combination of pixels of the previous frame) is already in range.
        head: "conv" (the 1x1 convolution draws the frame) or "dynamic_filter" (it gives a
            per-pixel kernel applied to the previous frame); see the module docstring.
        filter_size: odd kernel side of the dynamic filter; it bounds the motion per frame it
            can express (9 covers 4 px, Moving MNIST moves 3.6 px per frame).
        check_finite: raise :class:`~convlstm_vp.nn.NonFiniteInputError` (a ``ValueError``)
            when ``frames`` or ``targets`` hold NaN/Inf (one ``isfinite().all()`` each).
        **cell_kwargs: passed to both :class:`~convlstm_vp.nn.ConvLSTM` stacks (peephole,
            activations, initializers, ``input_dropout``, ``recurrent_dropout``,
            ``implementation``, ...). Not ``dropout``: the forecaster steps its cells itself, so
            a between-layers dropout would reach the encoder only. With ``implementation``
            "graphed" (the default on CUDA) the whole forecast (encoder, forecaster loop, head)
            runs as one compiled graph, CUDA graphs on CUDA.

    Calls (shapes in ``data_format``; ``frames`` ``(B, input_frames, C, H, W)`` with H and W
    divisible by ``patch_size``, ``targets`` ``(B, output_frames, C, H, W)``):

    - ``forward(frames, targets=None, teacher_forcing=0.0) -> Tensor``: the predicted frames
      ``(B, output_frames, C, H, W)``; the training call.
    - :meth:`forecast`: the same, plus on request the encoder's predictions and the kernels'
      offsets, as a :class:`Forecast`; and the prediction-time ``filter_temperature`` / ``render``.
    - :meth:`predict`: frames for inference (eval mode, no gradients) with those settings.
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
        check_finite: bool = True,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        hidden = list(hidden_channels)
        if not hidden or any((not isinstance(h, int)) or h <= 0 for h in hidden):
            raise ValueError(f"hidden_channels: expected a non-empty list of positive ints, got {hidden_channels!r}")
        for what, v in (
            ("patch_size", patch_size),
            ("input_frames", input_frames),
            ("output_frames", output_frames),
            ("in_channels", in_channels),
        ):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{what}: expected a positive int, got {v!r}")
        head_cls = head_class(head)
        if "dropout" in cell_kwargs:
            raise TypeError(
                "EncoderForecaster has no between-layers dropout (the forecaster steps its cells itself); "
                "use input_dropout= or recurrent_dropout="
            )
        if output_activation is None:
            output_activation = head_cls.default_activation
        self.in_channels = in_channels
        self.hidden_channels = hidden
        self.patch_size = patch_size
        self.input_frames = input_frames
        self.output_frames = output_frames
        self.data_format = check_data_format(data_format)
        self.output_activation = output_activation
        self._out_act = get_activation(output_activation, "output_activation")
        self.check_finite = check_finite
        kernels = kernel_size if isinstance(kernel_size, list) else [kernel_size] * len(hidden)
        c = in_channels * patch_size * patch_size
        # the frames are checked once here, not again by the inner layers
        self.encoder = ConvLSTM(
            c,
            hidden,
            list(kernels),
            spatial_dims=2,
            name="encoder",
            check_finite=False,
            return_all_layers=True,
            **cell_kwargs,
        )
        self.forecaster = ConvLSTM(
            c, hidden, list(kernels), spatial_dims=2, name="forecaster", check_finite=False, **cell_kwargs
        )
        self.head = head_cls(sum(hidden), c, patch_size, filter_size=filter_size)
        self.filter_size = getattr(self.head, "filter_size", None)
        self._compiled_forward: CompiledForward | None = None  # implementation "graphed"

    @property
    def head_type(self) -> str:
        """The head's registered name (``HEADS``)."""
        return self.head.name

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_compiled_forward"] = None  # compiled code is rebuilt on first use, never copied
        return state

    def _check(self, x: Tensor, frames: int, what: str) -> Tensor:
        expected = describe_sequence(2, True, self.data_format)
        if not isinstance(x, Tensor) or x.dim() != 5:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{what}: expected {expected} with T={frames}, C={self.in_channels} (data_format={self.data_format!r}), got {shape}"
            )
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

    def check_rendering(self, filter_temperature: float = 1.0, render: str = "filter") -> float:
        """Check prediction-time settings for this model (as :meth:`forecast` does, so that a
        script can fail before its work); returns the temperature as a float. ValueError: a
        temperature that is not a finite number > 0, an unknown ``render``, or for the conv head
        anything but 1 and "filter"."""
        if (
            isinstance(filter_temperature, bool)
            or not isinstance(filter_temperature, (int, float))
            or not 0 < filter_temperature < float("inf")
        ):
            raise ValueError(f"filter_temperature: expected a finite number > 0, got {filter_temperature!r}")
        if render not in RENDERS:
            raise ValueError(f"render: expected one of {RENDERS}, got {render!r}")
        self.head.check_rendering(filter_temperature, render)
        return float(filter_temperature)

    def forward(self, frames: Tensor, targets: Tensor | None = None, teacher_forcing: float | Tensor = 0.0) -> Tensor:
        """Predicted frames ``(B, output_frames, C, H, W)``; ``forecast(...).frames``."""
        return self.forecast(frames, targets, teacher_forcing=teacher_forcing).frames

    @torch.no_grad()
    def predict(self, frames: Tensor, *, filter_temperature: float = 1.0, render: str = "filter") -> Tensor:
        """Predicted frames for inference: runs in eval mode (restoring the module's mode after)
        and without gradients.

        Args:
            frames: ``(B, input_frames, C, H, W)`` in ``data_format``.
            filter_temperature: dynamic filter only: the kernels are ``softmax(logits /
                filter_temperature)``; below 1 sharpens them, so less blur accumulates over the
                horizon. The conv head accepts only 1.
            render: "filter" (filter each previous prediction, as in training) or, dynamic filter
                only, "warp" (the same kernels move a displacement field; the last observed frame
                is sampled once at it; see the module docstring).

        Returns:
            ``(B, output_frames, C, H, W)``.
        """
        was_training = self.training
        self.eval()
        try:
            return self.forecast(frames, filter_temperature=filter_temperature, render=render).frames
        finally:
            self.train(was_training)

    def stream(
        self, horizon: int | None = None, *, filter_temperature: float = 1.0, render: str = "filter"
    ) -> FrameStream:
        """A :class:`~convlstm_vp.models.streaming.FrameStream` for online prediction:
        ``stream.push(frame) -> forecast`` of the next ``horizon`` frames (default
        ``output_frames``), one encoder step per frame, constant memory; the forecast after
        frames ``1 .. t`` is the clip forecast with the encoder run over all ``t`` frames
        (module :mod:`~convlstm_vp.models.streaming`). Settings as in :meth:`predict`."""
        horizon = self.output_frames if horizon is None else horizon
        return FrameStream(self, horizon, filter_temperature, render)

    def forecast(
        self,
        frames: Tensor,
        targets: Tensor | None = None,
        *,
        teacher_forcing: float | Tensor = 0.0,
        encoder_predictions: bool = False,
        offsets: bool = False,
        filter_temperature: float = 1.0,
        render: str = "filter",
    ) -> Forecast:
        """Predict ``output_frames`` frames, and what else is asked for.

        Args:
            frames: ``(B, input_frames, C, H, W)`` in ``data_format``.
            targets: the true next frames ``(B, output_frames, C, H, W)``; read only when
                ``teacher_forcing`` is not the number 0.
            teacher_forcing: probability (a number in [0, 1], or a 0-dim tensor, which is not read
                back to the host) of feeding the forecaster the true previous frame instead of its
                own prediction, drawn per sequence and step (scheduled sampling; the training task
                computes it from its schedule). Anything but the number 0 needs ``targets`` and
                draws ``output_frames - 1`` coins per sequence from the torch RNG.
            encoder_predictions: also return the encoder's one-step-ahead predictions of input
                frames ``1 .. input_frames-1`` (the same head applied to the encoder's hidden
                states): an auxiliary training target that gives the encoder a signal at every step.
            offsets: dynamic filter only: also return the mean source offset of every kernel,
                where on average each patch cell reads the frame before it: the motion the model
                predicts, for a loss against the true motion (``motion_loss_weight`` in training).
            filter_temperature, render: prediction-time settings of the dynamic filter (see
                :meth:`predict`); the conv head needs 1 and "filter".

        Returns:
            :class:`Forecast` ``(frames, encoder_frames, offsets)``, ``None`` where not asked for.
        """
        temperature = self.check_rendering(filter_temperature, render)
        if offsets:
            self.head.check_offsets()
        forcing = not (
            isinstance(teacher_forcing, (int, float)) and not isinstance(teacher_forcing, bool) and teacher_forcing == 0
        )
        if forcing:
            if isinstance(teacher_forcing, Tensor):
                if teacher_forcing.dim() != 0:
                    raise ValueError(
                        f"teacher_forcing: expected a number or a 0-dim tensor, got shape {tuple(teacher_forcing.shape)}"
                    )
            elif (
                isinstance(teacher_forcing, bool)
                or not isinstance(teacher_forcing, (int, float))
                or not 0 <= teacher_forcing <= 1
            ):
                raise ValueError(f"teacher_forcing: expected a probability in [0, 1], got {teacher_forcing!r}")
            if targets is None:
                raise ValueError("teacher_forcing: feeding true frames needs targets (B, output_frames, C, H, W)")
        x = self._check(frames, self.input_frames, "frames")
        true_frames = self._check(targets, self.output_frames, "targets") if forcing else None
        warp = render == "warp"
        paths = self.encoder.cells[0].paths(x.device.type)
        if not (paths.whole_forward and not torch.compiler.is_compiling()):
            return self._forecast_core(x, true_frames, teacher_forcing, encoder_predictions, offsets, temperature, warp)
        if forcing:
            # a tensor on the frames' device: a new probability every training step compiles
            # nothing new, and a CPU tensor would keep the graph off CUDA graphs
            teacher_forcing = torch.as_tensor(teacher_forcing, dtype=torch.float32).to(x.device, non_blocking=True)
        if self._compiled_forward is None:
            self._compiled_forward = CompiledForward(
                self._forecast_core, "EncoderForecaster forward", paths.cuda_graphs
            )
        return self._compiled_forward(
            x, true_frames, teacher_forcing if forcing else 0.0, encoder_predictions, offsets, temperature, warp
        )

    def _forecast_core(
        self,
        x: Tensor,
        true_frames: Tensor | None,
        teacher_forcing: float | Tensor,
        encoder_predictions: bool,
        offsets: bool,
        temperature: float,
        warp: bool,
    ) -> Forecast:
        """:meth:`forecast` on checked inputs: ``x`` ``(B, input_frames, C, H, W)`` and
        ``true_frames`` (None: no teacher forcing) in the internal channels-first layout."""
        p = self.patch_size
        layer_outputs, (h_n, c_n) = self.encoder(patchify(x, p))
        encoder_frames = None
        all_offsets: list[Tensor] = []
        if encoder_predictions:
            feats = torch.cat(layer_outputs, dim=2)[:, :-1]  # (B, T_in - 1, sum(hidden), h, w)
            b, t = feats.shape[:2]
            enc, enc_offsets, _ = self._frame(feats.flatten(0, 1), x[:, :-1].flatten(0, 1), temperature, warp, offsets)
            encoder_frames = sequence_from_internal(enc.unflatten(0, (b, t)), 2, True, self.data_format)
            if offsets:
                all_offsets.append(enc_offsets.unflatten(0, (b, t)))
        hs = list(h_n.unbind(0)) if isinstance(h_n, Tensor) else list(h_n)
        cs = list(c_n.unbind(0)) if isinstance(c_n, Tensor) else list(c_n)

        cells = self.forecaster.cells
        for cell in cells:
            cell.reset_dropout_masks()
        frame = x[:, -1]  # (B, C, H, W): the previous frame, observed or predicted
        # rendering by warp samples the last observed (or teacher-forced) frame, ``source``, at
        # the displacement its kernels have accumulated since, instead of filtering its own prediction
        source, displacement = frame, None
        outputs = []
        for step in range(self.output_frames):
            inp = patchify(frame.unsqueeze(1), p).squeeze(1)
            for layer, cell in enumerate(cells):
                hs[layer], cs[layer] = cell.step(inp, (hs[layer], cs[layer]))
                inp = hs[layer]
            pred, offset, displacement = self._frame(
                torch.cat(hs, dim=1), source if warp else frame, temperature, warp, offsets, displacement
            )
            outputs.append(pred)
            if offsets:
                all_offsets.append(offset.unsqueeze(1))
            frame = pred
            if true_frames is not None and step + 1 < self.output_frames:
                # drawn whatever the probability (a tensor probability is never read back: on a
                # GPU each read would wait for all queued work)
                use_true = (torch.rand(pred.shape[0], 1, 1, 1, device=pred.device) < teacher_forcing).to(pred.dtype)
                true_frame = true_frames[:, step].to(pred.dtype)
                frame = use_true * true_frame + (1 - use_true) * pred
                if warp:  # a true frame fed restarts the warp from it, with no displacement
                    source = use_true * true_frame + (1 - use_true) * source
                    displacement = (1 - use_true) * displacement
        # contiguous: channels-last steps (implementation "auto" on some CPUs) leave their layout
        y = sequence_from_internal(torch.stack(outputs, dim=1).contiguous(), 2, True, self.data_format)
        return Forecast(y, encoder_frames, torch.cat(all_offsets, dim=1) if offsets else None)

    def _frame(
        self,
        feats: Tensor,
        previous: Tensor,
        temperature: float = 1.0,
        warp: bool = False,
        with_offsets: bool = False,
        displacement: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Next full-resolution frame ``(N, C, H, W)`` from hidden features ``(N, sum(hidden), h, w)``
        and the previous frame ``(N, C, H, W)`` (read by the dynamic filter; with ``warp`` the
        frame it samples, with ``displacement`` ``(N, 2, H, W)`` accumulated since, ``None`` for none).

        Returns ``(frame, offsets, displacement)``: with ``with_offsets`` the kernels' mean source
        offsets ``(N, 2, h, w)``, else ``None``; with ``warp`` the new accumulated displacement,
        else ``None``."""
        z = self.head(feats)
        return self.head.render(z, previous, self._out_act, temperature, warp, with_offsets, displacement)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, hidden_channels={self.hidden_channels}, patch_size={self.patch_size}, "
            f"input_frames={self.input_frames}, output_frames={self.output_frames}, "
            f"output_activation={self.output_activation!r}, head={self.head_type!r}"
            + (f", filter_size={self.filter_size}" if self.filter_size else "")
        )
