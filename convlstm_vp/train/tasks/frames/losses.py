"""The frame-prediction losses and the scheduled-sampling schedule.

``frame_loss`` compares predicted and true frames in [0, 1]; ``offset_l1`` compares the filter
kernels' mean source offsets with the true motion (``motion_loss_weight``); the schedule
``model.scheduled_sampling`` sets the teacher-forcing probability of every training step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("bce", "mse", "l1", "l1+mse", "bce+l1")


def _bce(pred: Tensor, target: Tensor) -> Tensor:
    # written out rather than F.binary_cross_entropy, which raises on NaN predictions: a NaN loss
    # must reach the training loop, whose nan_policy decides (stop with a message, or skip)
    p = pred.clamp(1e-6, 1 - 1e-6)
    return -(target * torch.log(p) + (1 - target) * torch.log1p(-p)).mean()


def frame_loss(kind: str, pred: Tensor, target: Tensor, l1_weight: float = 1.0) -> Tensor:
    """Training loss on frames in [0, 1] (mean over pixels); ``l1_weight`` weighs the L1 term of "bce+l1"."""
    pred, target = pred.float(), target.float()
    if kind == "bce":
        return _bce(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "l1+mse":
        return F.l1_loss(pred, target) + F.mse_loss(pred, target)
    if kind == "bce+l1":
        return _bce(pred, target) + l1_weight * F.l1_loss(pred, target)
    raise ValueError(f"config key 'loss': expected one of {LOSSES}, got {kind!r}")


def check_scheduled_sampling(spec: Any) -> None:
    """ValueError naming ``model.scheduled_sampling`` unless it is null or ``[start, end, steps]``
    with probabilities in [0, 1] and ``steps`` > 0."""
    if spec is None:
        return
    ok = (
        isinstance(spec, (list, tuple))
        and len(spec) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec)
    )
    if not ok or not (0 <= spec[0] <= 1 and 0 <= spec[1] <= 1 and spec[2] > 0):
        raise ValueError(
            f"config key 'model.scheduled_sampling': expected [start, end, steps] with start and end "
            f"probabilities in [0, 1] and steps > 0, or null; got {spec!r}"
        )


def scheduled_sampling(spec: Sequence[float] | None, step: int) -> float:
    """Teacher-forcing probability at training step ``step`` (0-based) of the schedule ``spec`` =
    ``(start, end, steps)``: ``start`` at step 0, linear to ``end`` at step ``steps``, then ``end``;
    0 when ``spec`` is None (always free running)."""
    if spec is None:
        return 0.0
    start, end, steps = spec
    frac = min(step / float(steps), 1.0)
    return start + (end - start) * frac


def teacher_forcing(spec: Sequence[float] | None, step: int) -> float | Tensor:
    """What a training step passes as ``EncoderForecaster.forecast(teacher_forcing=...)``: the
    number 0 without a schedule; with one, :func:`scheduled_sampling` at ``step`` as a 0-dim
    float64 tensor, which the model mixes in even once it is 0 (it cannot read it without a host
    sync). So a run keeps one computation (the same coin draws, the same autograd graph) over its
    whole schedule, and a resumed run repeats it bit for bit."""
    if spec is None:
        return 0.0
    return torch.tensor(scheduled_sampling(spec, step), dtype=torch.float64)


def offset_l1(offsets: Tensor, target: Tensor, weights: Tensor, dim: tuple[int, ...] | None = None) -> Tensor:
    """Mean absolute error (px, per component) of source offsets ``(N, T, 2, h, w)`` against the
    true motion ``target`` on the cells where ``weights`` ``(N, T, 1, h, w)`` is 1
    (:func:`~convlstm_vp.data.moving_mnist.motion_targets`), over all of them or per the
    dimensions left out of ``dim``; differentiable (the training loss ``motion_loss_weight`` weighs)."""
    dim = tuple(range(offsets.dim())) if dim is None else dim
    err = ((offsets - target).abs() * weights).sum(dim=dim)
    return err / (2 * weights.sum(dim=dim)).clamp(min=1)


def motion_error(offsets: Tensor, target: Tensor, weights: Tensor) -> dict:
    """:func:`offset_l1` of predicted offsets overall and per frame, with the same figures for
    offsets of zero (a model that predicts no motion) beside them."""
    still = torch.zeros_like(target)
    per_frame = (0, 2, 3, 4)
    return {
        "mae_px": float(offset_l1(offsets, target, weights)),
        "no_motion_mae_px": float(offset_l1(still, target, weights)),
        "per_frame": offset_l1(offsets, target, weights, per_frame).tolist(),
        "no_motion_per_frame": offset_l1(still, target, weights, per_frame).tolist(),
    }
