"""Metrics, each defined in its docstring (and in the README).

Frame prediction (predictions and targets in [0, 1], shape ``(B, T, C, H, W)``):
- ``mse`` / ``mae``: squared / absolute error **summed over the pixels of a frame**, averaged
  over frames and sequences (the OpenSTL convention; a 64x64 frame of all zeros against Moving
  MNIST scores about 172).
- ``psnr``: ``10·log10(1 / mean-squared-error of the frame)``, per frame, averaged.
- ``ssim``: structural similarity with an 11x11 Gaussian window (σ = 1.5), ``C1 = (0.01)²``,
  ``C2 = (0.03)²`` for data range 1, computed per frame and channel on the valid region, averaged.

Classification: accuracy, per-class recall, confusion matrix (rows = true class), and F1 scores
(macro: unweighted mean over classes that occur in truth or prediction; weighted: weighted by
the true count of each class).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_frames(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(
            f"frame metrics expect predictions and targets of equal shape (B, T, C, H, W), got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )


def frame_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Per-frame squared error summed over pixels: ``(B, T)``."""
    _check_frames(pred, target)
    return ((pred.float() - target.float()) ** 2).flatten(2).sum(-1)


def frame_mae(pred: Tensor, target: Tensor) -> Tensor:
    """Per-frame absolute error summed over pixels: ``(B, T)``."""
    _check_frames(pred, target)
    return (pred.float() - target.float()).abs().flatten(2).sum(-1)


def frame_psnr(pred: Tensor, target: Tensor, eps: float = 1e-10) -> Tensor:
    """Per-frame PSNR in dB for data range 1: ``(B, T)``."""
    _check_frames(pred, target)
    mse = ((pred.float() - target.float()) ** 2).flatten(2).mean(-1)
    return 10.0 * torch.log10(1.0 / (mse + eps))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def frame_ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-frame SSIM (Wang et al. 2004), averaged over channels and valid pixels: ``(B, T)``."""
    _check_frames(pred, target)
    b, t, c, h, w = pred.shape
    x = pred.float().reshape(b * t * c, 1, h, w)
    y = target.float().reshape(b * t * c, 1, h, w)
    k = _gaussian_window(min(window, h, w), sigma).to(x.device)[None, None]
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = F.conv2d(x, k), F.conv2d(y, k)
    sxx = F.conv2d(x * x, k) - mu_x**2
    syy = F.conv2d(y * y, k) - mu_y**2
    sxy = F.conv2d(x * y, k) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(-1).reshape(b, t, c).mean(-1)


class FrameMetrics:
    """Accumulates per-horizon sums of MSE, MAE, SSIM and PSNR over batches."""

    names = ("mse", "mae", "ssim", "psnr")

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        vals = {
            "mse": frame_mse(pred, target),
            "mae": frame_mae(pred, target),
            "ssim": frame_ssim(pred, target),
            "psnr": frame_psnr(pred, target),
        }
        for k, v in vals.items():
            s = v.sum(0).double().cpu()
            self.sums[k] = self.sums[k] + s if k in self.sums else s
        self.count += pred.shape[0]

    def compute(self) -> dict:
        """``{"mse", "mae", "ssim", "psnr", "per_frame": {name: [value per horizon]}}``."""
        if self.count == 0:
            raise ValueError("FrameMetrics.compute() called before any update()")
        per = {k: (v / self.count).tolist() for k, v in self.sums.items()}
        out: dict = {k: float(sum(per[k]) / len(per[k])) for k in self.names}
        out["per_frame"] = per
        return out


# ---------------------------------------------------------------- classification
def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``(num_classes, num_classes)`` counts, rows = true class, columns = predicted class."""
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(cm: Tensor) -> dict:
    """Accuracy, per-class recall, macro and weighted F1 from a confusion matrix."""
    cm = cm.double()
    tp = cm.diag()
    true_n = cm.sum(1)
    pred_n = cm.sum(0)
    total = cm.sum()
    recall = torch.where(true_n > 0, tp / true_n.clamp(min=1), torch.zeros_like(tp))
    precision = torch.where(pred_n > 0, tp / pred_n.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    present = (true_n + pred_n) > 0
    return {
        "accuracy": float(tp.sum() / total) if total > 0 else math.nan,
        "per_class_recall": recall.tolist(),
        "f1_macro": float(f1[present].mean()) if present.any() else math.nan,
        "f1_weighted": float((f1 * true_n).sum() / total) if total > 0 else math.nan,
    }
