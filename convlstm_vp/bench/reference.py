"""The benchmark's reference models: the classic ConvLSTM (one convolution over the concatenated
``[x, h]`` per step, fp32, NCHW) rebuilt as the project's models, and small wrappers that give
``torch.nn.LSTM`` and a ConvLSTM layer the same one-tensor output."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models.encoder_forecaster import patchify, unpatchify


# ============================================================================ reference model
class ReferenceConvLSTMCell(nn.Module):
    """The classic ConvLSTM cell: one convolution over the concatenated ``[x, h]`` per step."""

    def __init__(self, in_channels: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel, padding=kernel // 2)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        i, f, g, o = self.conv(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ReferenceStack(nn.Module):
    """Stacked reference cells over ``(B, T, C, H, W)``; returns every step of the top layer."""

    def __init__(self, in_channels: int, hidden: list[int], kernel: int) -> None:
        super().__init__()
        chans = [in_channels] + hidden[:-1]
        self.cells = nn.ModuleList(ReferenceConvLSTMCell(c, h, kernel) for c, h in zip(chans, hidden))

    def zero_state(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        b, _, _, hh, ww = x.shape
        hs = [x.new_zeros(b, cell.hidden, hh, ww) for cell in self.cells]
        return hs, [t.clone() for t in hs]

    def run(self, x: Tensor, hs: list[Tensor], cs: list[Tensor]) -> Tensor:
        outs = []
        for t in range(x.shape[1]):
            inp = x[:, t]
            for layer, cell in enumerate(self.cells):
                hs[layer], cs[layer] = cell(inp, (hs[layer], cs[layer]))
                inp = hs[layer]
            outs.append(inp)
        return torch.stack(outs, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        hs, cs = self.zero_state(x)
        return self.run(x, hs, cs)


class ReferenceEncoderForecaster(nn.Module):
    """The encoder-forecaster of ``convlstm_vp.models`` rebuilt from reference cells."""

    def __init__(self, hidden: list[int], kernel: int, patch: int, output_frames: int) -> None:
        super().__init__()
        c = patch * patch
        self.patch, self.output_frames = patch, output_frames
        self.encoder = ReferenceStack(c, hidden, kernel)
        self.forecaster = ReferenceStack(c, hidden, kernel)
        self.head = nn.Conv2d(sum(hidden), c, 1)

    def forward(self, frames: Tensor) -> Tensor:
        xp = patchify(frames, self.patch)
        hs, cs = self.encoder.zero_state(xp)
        self.encoder.run(xp, hs, cs)
        frame, outs = xp[:, -1], []
        for _ in range(self.output_frames):
            inp = frame
            for layer, cell in enumerate(self.forecaster.cells):
                hs[layer], cs[layer] = cell(inp, (hs[layer], cs[layer]))
                inp = hs[layer]
            frame = torch.sigmoid(self.head(torch.cat(hs, dim=1)))
            outs.append(frame)
        return unpatchify(torch.stack(outs, dim=1), self.patch)


class ReferencePatchClassifier(nn.Module):
    """The patch classifier (flatten head) rebuilt from reference cells."""

    def __init__(self, hidden: list[int], kernel: int, patch: int, classes: int = 10) -> None:
        super().__init__()
        self.stack = ReferenceStack(1, hidden, kernel)
        self.fc = nn.Linear(hidden[-1] * patch * patch, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.stack(x)[:, -1].flatten(1))


class LastStep(nn.Module):
    """``torch.nn.LSTM`` returning its last output step, like ``ConvLSTM(return_sequences=False)``."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.lstm = lstm

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x)[0][:, -1]


class FirstOutput(nn.Module):
    """A ConvLSTM layer that returns only its output (drops the state)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)[0]
