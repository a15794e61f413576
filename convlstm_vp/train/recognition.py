"""Are the digits still recognisable? A digit classifier read on predicted Moving MNIST frames.

MSE and SSIM reward a blurred guess; a reader of a prediction asks whether each digit is still
the digit it was. :class:`DigitRecognizer` is a small CNN trained on the *training* digit pool
(never the test digits the sequences are made of), with the distortions a digit meets inside a
Moving MNIST frame or a prediction of one: shifts of up to ``max_shift`` pixels, for half of the
samples a second digit pasted over it with ``max`` at a random offset (two digits crossing), a
Gaussian blur of up to 1.5 px and dimming down to half the intensity. It answers "is this still
a recognisable 7?", not "is it sharp?".
:func:`recognition_accuracy` crops the 28x28 window where each digit truly is in every frame
(the generator's trajectories) and classifies it, for the prediction and, as the ceiling, for
the ground truth (whose crops also hold parts of the other digit when the two overlap).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

DIGIT = 28


class DigitRecognizer(nn.Module):
    """``(N, 1, 28, 28)`` digits in [0, 1] → ``(N, 10)`` logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, DIGIT, DIGIT):
            raise ValueError(f"DigitRecognizer: expected digits (N, 1, {DIGIT}, {DIGIT}), got {tuple(x.shape)}")
        return self.classifier(self.features(x))


def _windows(images: Tensor, dy: Tensor, dx: Tensor, pad: int) -> Tensor:
    """The 28x28 window at offset ``(dy[i], dx[i])`` of each zero-padded ``images[i]`` ``(N, 1, 28, 28)``."""
    corners = torch.stack([dy, dx], dim=-1).view(-1, 1, 1, 2)
    return crop_digits(F.pad(images, (pad,) * 4).unsqueeze(1), corners).view(-1, 1, DIGIT, DIGIT)


def _distort(images: Tensor, gen: torch.Generator, max_shift: int) -> Tensor:
    """Shift each digit by up to ``max_shift`` px (zero fill) and overlay half of them with
    another digit of the batch at a random offset of up to 14 px."""
    n = images.shape[0]
    shift = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)
    out = _windows(images, shift[0], shift[1], max_shift)
    other = images[torch.randperm(n, generator=gen)]
    off = torch.randint(0, 2 * 14 + 1, (2, n), generator=gen)
    moved = _windows(other, off[0], off[1], 14)
    overlay = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).to(images.dtype)
    out = torch.maximum(out, overlay * moved)
    # blur (Gaussian, sigma 0 to 1.5 px) and dimming (x0.5 to x1): a blurred, faded digit is
    # still the digit to a reader, so the classifier should judge its shape, not its crispness
    sigma = torch.rand(n, generator=gen) * 1.5
    r = torch.arange(-3, 4, dtype=images.dtype)
    g = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    g = g / g.sum(dim=1, keepdim=True)
    kernels = (g[:, :, None] * g[:, None, :]).unsqueeze(1)  # (N, 1, 7, 7)
    out = F.conv2d(out.view(1, n, DIGIT, DIGIT), kernels, padding=3, groups=n).view(n, 1, DIGIT, DIGIT)
    return out * (0.5 + 0.5 * torch.rand(n, 1, 1, 1, generator=gen))


def _as_input(images: np.ndarray) -> Tensor:
    """uint8 digits ``(N, 28, 28)`` → float ``(N, 1, 28, 28)`` in [0, 1] (a copy)."""
    return torch.tensor(images, dtype=torch.float32).div_(255).unsqueeze(1)


@torch.no_grad()
def digit_accuracy(recognizer: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of uint8 digits ``(N, 28, 28)`` that ``recognizer`` labels right (isolated digits)."""
    return float((recognizer(_as_input(images)).argmax(1) == torch.tensor(labels)).float().mean())


def train_digit_recognizer(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = 6,
    batch_size: int = 128,
    lr: float = 2e-3,
    max_shift: int = 2,
    seed: int = 0,
) -> DigitRecognizer:
    """Train :class:`DigitRecognizer` on uint8 digits ``(N, 28, 28)`` with labels ``(N,)`` in 0..9
    (seeded: the same digits give the same classifier). Returns it in eval mode."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (DIGIT, DIGIT) or images.dtype != np.uint8:
        raise ValueError(
            f"train_digit_recognizer: expected uint8 digits (N, {DIGIT}, {DIGIT}), got {images.dtype} {images.shape}"
        )
    if labels.shape != (len(images),) or len(images) == 0 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"train_digit_recognizer: expected {len(images)} labels in 0..9, got shape {labels.shape}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = _as_input(images)
    y = torch.tensor(labels, dtype=torch.long)
    model = DigitRecognizer()
    opt = torch.optim.Adam(model.parameters(), lr)
    steps = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(_distort(x[idx], gen, max_shift)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def crop_digits(frames: Tensor, corners: Tensor) -> Tensor:
    """The 28x28 window of every digit in every frame.

    Args:
        frames: ``(N, T, 1, S, S)``.
        corners: integer top-left corners ``(N, D, T, 2)`` as ``(y, x)``.

    Returns:
        ``(N, D, T, 1, 28, 28)``.
    """
    n, t, c, s, _ = frames.shape
    if corners.dim() != 4 or corners.shape[0] != n or corners.shape[2] != t or corners.shape[3] != 2 or c != 1:
        raise ValueError(
            f"crop_digits: expected frames (N, T, 1, S, S) and corners (N, D, T, 2), got {tuple(frames.shape)} and {tuple(corners.shape)}"
        )
    if int(corners.min()) < 0 or int(corners.max()) > s - DIGIT:
        raise ValueError(f"crop_digits: corners must lie in [0, {s - DIGIT}] for {s}x{s} frames")
    d = corners.shape[1]
    offs = torch.arange(DIGIT)
    ys = (corners[..., 0, None] + offs).view(n, d, t, DIGIT, 1).expand(-1, -1, -1, -1, DIGIT)
    xs = (corners[..., 1, None] + offs).view(n, d, t, 1, DIGIT).expand(-1, -1, -1, DIGIT, -1)
    src = frames[:, :, 0]  # (N, T, S, S)
    ni = torch.arange(n).view(n, 1, 1, 1, 1)
    ti = torch.arange(t).view(1, 1, t, 1, 1)
    return src[ni, ti, ys, xs].unsqueeze(3)


@torch.no_grad()
def recognition_accuracy(
    recognizer: nn.Module, frames: Tensor, corners: Tensor, labels: Tensor, batch_size: int = 2048
) -> dict:
    """Classify each digit's window in ``frames`` ``(N, T, 1, S, S)``.

    Args:
        corners: ``(N, D, T, 2)`` top-left corners of the D digits in those frames.
        labels: ``(N, D)`` their classes.

    Returns:
        ``{"per_frame": [accuracy over the N*D digits at each t], "accuracy": mean over frames,
        "all_digits_last": fraction of sequences whose D digits are all right at the last frame}``.
    """
    if labels.shape != corners.shape[:2]:
        raise ValueError(
            f"recognition_accuracy: expected labels (N, D) = {tuple(corners.shape[:2])}, got {tuple(labels.shape)}"
        )
    crops = crop_digits(frames.float(), corners)
    n, d, t = crops.shape[:3]
    flat = crops.reshape(-1, 1, DIGIT, DIGIT).clamp(0, 1)
    pred = torch.cat([recognizer(flat[i : i + batch_size]).argmax(1) for i in range(0, len(flat), batch_size)])
    right = (pred.view(n, d, t) == labels.view(n, d, 1)).float()
    per_frame = right.mean(dim=(0, 1))
    return {
        "per_frame": [float(v) for v in per_frame],
        "accuracy": float(per_frame.mean()),
        "all_digits_last": float(right[:, :, -1].all(dim=1).float().mean()),
    }
