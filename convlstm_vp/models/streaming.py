"""Frame-by-frame prediction with an encoder-forecaster: one encoder step per new frame.

A :class:`FrameStream` (``stream = model.stream(horizon=k)``) keeps the encoder's state
``(h, c)`` per layer, nothing else, so its memory is constant over a stream of any length.
``stream.push(frame)`` advances the encoder by that frame (one step of every encoder layer),
then runs the forecaster from a copy of the new state, the frame being the previous frame,
for ``horizon`` steps (as :meth:`EncoderForecaster.forecast` does after its encoder).

What the forecast means: after frames ``1 .. t`` have been pushed, the encoder state is the one
the model's encoder reaches after reading **all** ``t`` frames from a zero state, and the
forecast equals the clip forecast of the model run with ``input_frames = t`` on frames
``1 .. t``, its first ``horizon`` frames. It is not the forecast from the last
``input_frames`` frames alone (that would take ``input_frames`` encoder steps per frame). At
``t = input_frames`` the two coincide with ``model.predict(frames)``. The first
``input_frames - 1`` pushes return ``None``: the model was trained to forecast after
``input_frames`` frames, and those frames warm the state.

:func:`stream_step` is that step as a function of ``(frame, state)``, the form exported to ONNX
(``convlstm_vp.export``).
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

State = list[tuple[Tensor, Tensor]]


def zero_state(model: nn.Module, frame: Tensor) -> State:
    """The encoder's zero state ``[(h, c)]`` per layer, each ``(B, hidden, H/p, W/p)``, for
    ``frame`` ``(B, C, H, W)``."""
    b, _, h, w = frame.shape
    p = model.patch_size
    return [
        (frame.new_zeros(b, n, h // p, w // p), frame.new_zeros(b, n, h // p, w // p)) for n in model.hidden_channels
    ]


def _patched(frame: Tensor, p: int) -> Tensor:
    """``(B, C, H, W) → (B, C·p·p, H/p, W/p)``: one frame as the model's patchify makes it."""
    return rearrange(frame, "b c (h p1) (w p2) -> b (c p1 p2) h w", p1=p, p2=p)


def encoder_step(model: nn.Module, frame: Tensor, state: State) -> State:
    """The encoder's state after ``frame`` ``(B, C, H, W)``: one step of every layer."""
    inp = _patched(frame, model.patch_size)
    new_state = []
    for cell, layer_state in zip(model.encoder.cells, state):
        h, c = cell.step(inp, layer_state)
        new_state.append((h, c))
        inp = h
    return new_state


def rollout(
    model: nn.Module,
    frame: Tensor,
    state: State,
    horizon: int,
    filter_temperature: float = 1.0,
    warp: bool = False,
) -> Tensor:
    """The forecaster's ``horizon`` frames ``(B, horizon, C, H, W)`` from the encoder's ``state``
    (copied, not changed) after the last observed ``frame`` ``(B, C, H, W)``."""
    hs = [h for h, _ in state]
    cs = [c for _, c in state]
    previous, displacement, outputs = frame, None, []
    for _ in range(horizon):
        inp = _patched(previous, model.patch_size)
        for layer, cell in enumerate(model.forecaster.cells):
            hs[layer], cs[layer] = cell.step(inp, (hs[layer], cs[layer]))
            inp = hs[layer]
        pred, _, displacement = model._frame(
            torch.cat(hs, dim=1),
            frame if warp else previous,
            filter_temperature,
            warp,
            False,
            displacement,
        )
        outputs.append(pred)
        previous = pred
    return torch.stack(outputs, dim=1)


def stream_step(
    model: nn.Module,
    frame: Tensor,
    state: State,
    horizon: int,
    filter_temperature: float = 1.0,
    warp: bool = False,
) -> tuple[Tensor, State]:
    """One streaming step of an :class:`~convlstm_vp.models.EncoderForecaster` (checked inputs,
    channels-first layout): :func:`encoder_step`, then :func:`rollout`.

    Args:
        model: the encoder-forecaster.
        frame: the new frame ``(B, C, H, W)``.
        state: the encoder's ``[(h, c)]`` per layer before it (:func:`zero_state` at the start).
        horizon: frames to forecast, ``1 .. model.output_frames``.
        filter_temperature, warp: the dynamic filter's prediction-time settings
            (:meth:`EncoderForecaster.predict`; ``warp`` is ``render="warp"``).

    Returns:
        ``(forecast (B, horizon, C, H, W), new state)``.
    """
    new_state = encoder_step(model, frame, state)
    return rollout(model, frame, new_state, horizon, filter_temperature, warp), new_state


class FrameStream:
    """Online prediction: push frames one at a time, get the forecast after each.

    Made by :meth:`EncoderForecaster.stream`; see the module docstring for what the forecast
    equals. Runs in eval mode without gradients (the model's mode is restored after each push).

    ``push(frame)``: ``frame`` ``(B, C, H, W)`` or unbatched ``(C, H, W)`` (``(H, W, C)`` /
    ``(B, H, W, C)`` for a channels_last model), float, ``H`` and ``W`` divisible by
    ``patch_size``; returns ``None`` during the warm-up (the first ``input_frames - 1`` frames),
    then the forecast ``(B, horizon, C, H, W)`` (unbatched: ``(horizon, C, H, W)``) of the
    ``horizon`` frames after it, in the model's ``data_format``.
    """

    def __init__(
        self,
        model: nn.Module,
        horizon: int,
        filter_temperature: float = 1.0,
        render: str = "filter",
    ) -> None:
        if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= model.output_frames:
            raise ValueError(f"horizon: expected an int in [1, output_frames={model.output_frames}], got {horizon!r}")
        self.model = model
        self.horizon = horizon
        self.filter_temperature = model.check_rendering(filter_temperature, render)
        self.render = render
        self.state: State | None = None
        self.frames_seen = 0
        self._shape: tuple[int, ...] | None = None

    def reset(self) -> None:
        """Forget the frames seen: the next push starts a new stream from a zero state."""
        self.state, self.frames_seen, self._shape = None, 0, None

    def _check(self, frame: Any) -> tuple[Tensor, bool]:
        """``frame`` as a checked channels-first ``(B, C, H, W)`` batch, and whether it was
        unbatched."""
        if not isinstance(frame, Tensor) or frame.dim() not in (3, 4):
            shape = tuple(frame.shape) if isinstance(frame, Tensor) else type(frame).__name__
            raise ValueError(
                f"FrameStream.push: expected a frame (B, C, H, W) or (C, H, W) in the model's data_format, got {shape}"
            )
        unbatched = frame.dim() == 3
        batch = frame.unsqueeze(0) if unbatched else frame
        if self.model.data_format == "channels_last":
            batch = rearrange(batch, "b h w c -> b c h w")
        # the model's own check, on the frame as a one-frame clip
        x = self.model._check(batch.unsqueeze(1), 1, "frame")[:, 0]
        if self._shape is not None and tuple(x.shape) != self._shape:
            raise ValueError(
                f"FrameStream.push: the stream holds frames of shape {self._shape} (channels "
                f"first), got {tuple(x.shape)}; call reset() to start a stream of another size"
            )
        return x, unbatched

    @torch.no_grad()
    def push(self, frame: Tensor) -> Tensor | None:
        x, unbatched = self._check(frame)
        was_training = self.model.training
        self.model.eval()
        try:
            state = self.state if self.state is not None else zero_state(self.model, x)
            self.state = encoder_step(self.model, x, state)
            self._shape = tuple(x.shape)
            self.frames_seen += 1
            if self.frames_seen < self.model.input_frames:  # warming up: no forecast computed
                return None
            forecast = rollout(
                self.model,
                x,
                self.state,
                self.horizon,
                self.filter_temperature,
                self.render == "warp",
            )
        finally:
            self.model.train(was_training)
        if self.model.data_format == "channels_last":
            forecast = rearrange(forecast, "b t c h w -> b t h w c")
        return forecast[0] if unbatched else forecast
