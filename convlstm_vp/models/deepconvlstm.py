"""DeepConvLSTM for activity recognition from wearable sensors (Ordóñez & Roggen 2016).

Reads top to bottom:

1. A window ``(B, T, C)`` of ``C`` sensor channels becomes a 2-D map for ``nn.Conv2d``:
   ``conv_mode="mixed"`` makes the sensors the input channels, ``(B, C, T, 1)``;
   ``conv_mode="per_channel"`` (the paper) makes every sensor its own column, ``(B, 1, T, C)``.
2. ``num_conv_layers`` convolutions over time only (kernel ``(conv_kernel, 1)``, "valid", ReLU,
   no pooling): each shortens the window by ``conv_kernel - 1`` samples (24 → 8 for the paper).
3. The recurrent part is the project's :class:`~convlstm_vp.nn.ConvLSTM` layer with
   ``lstm_layers`` layers of ``hidden_channels`` units:
   ``recurrent="rank0"`` (the paper) flattens filters x sensor columns into one feature vector
   per step and runs a plain LSTM (the fused ``torch.lstm`` path); ``recurrent="rank1"`` keeps
   the sensor columns as a 1-D spatial axis and runs a ConvLSTM1D whose gates are convolutions
   of size ``recurrent_kernel`` over the sensor axis.
4. Dropout on the features between layers — the convolutions' output that the recurrent part
   reads, between its layers and on its last step — then one linear layer on the last step gives
   the class logits.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..nn import ConvLSTM
from ..nn.functional import check_finite as _check_finite

ConvMode = Literal["mixed", "per_channel"]
Recurrent = Literal["rank0", "rank1"]


class DeepConvLSTM(nn.Module):
    """Convolutions over time, a 2-layer (Conv)LSTM, a linear layer on the last step.

    Args:
        in_channels: sensor channels ``C`` of a window (113 for OPPORTUNITY).
        num_classes: classes to score (18 gestures for OPPORTUNITY).
        conv_filters: filters of every temporal convolution (64).
        conv_kernel: length of the temporal kernel (5); the kernel is ``(conv_kernel, 1)``.
        num_conv_layers: number of temporal convolutions (4).
        hidden_channels: hidden units (rank 0) or channels (rank 1) of every recurrent layer (128).
        lstm_layers: number of recurrent layers (2).
        dropout: dropout probability on the features between layers (as ``torch.nn.LSTM``'s
            ``dropout``, here also between the convolutions and the recurrent part) and before
            the linear layer (0.5); not on the recurrent state.
        conv_mode: ``"mixed"``: the first convolution mixes all sensors (input channels ``C``),
            the recurrent part sees ``conv_filters`` features per step. ``"per_channel"``: every
            sensor is convolved on its own (input channel 1), the recurrent part sees
            ``conv_filters * C`` features per step, as in the paper.
        recurrent: ``"rank0"``: plain LSTM over the flattened features; ``"rank1"``: ConvLSTM1D
            over the sensor axis (``C`` columns in ``per_channel`` mode, 1 in ``mixed`` mode),
            followed by a linear layer on the ``hidden_channels * columns`` last-step features.
        recurrent_kernel: rank 1 only: kernel of the recurrent convolutions over the sensor
            axis ("same" padding).
        check_finite: raise :class:`~convlstm_vp.nn.NonFiniteInputError` (a ``ValueError``)
            naming the windows when ``x`` holds NaN/Inf.

    Shapes:
        x: ``(B, T, C)`` batch-first windows, or an unbatched ``(T, C)`` window, with
            ``T > num_conv_layers * (conv_kernel - 1)``.
        lengths: optional ``(B,)`` real lengths of zero-padded series, each ``>= min_window``.
        returns logits ``(B, num_classes)`` (``(num_classes,)`` for an unbatched window).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        conv_filters: int = 64,
        conv_kernel: int = 5,
        num_conv_layers: int = 4,
        hidden_channels: int = 128,
        lstm_layers: int = 2,
        dropout: float = 0.5,
        conv_mode: ConvMode = "mixed",
        recurrent: Recurrent = "rank0",
        recurrent_kernel: int = 3,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.check_finite = bool(check_finite)
        for what, v in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("conv_filters", conv_filters),
            ("conv_kernel", conv_kernel),
            ("hidden_channels", hidden_channels),
            ("lstm_layers", lstm_layers),
            ("recurrent_kernel", recurrent_kernel),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{what}: expected a positive int, got {v!r}")
        if not isinstance(num_conv_layers, int) or isinstance(num_conv_layers, bool) or num_conv_layers < 0:
            raise ValueError(f"num_conv_layers: expected an int >= 0, got {num_conv_layers!r}")
        if conv_mode not in ("mixed", "per_channel"):
            raise ValueError(f"conv_mode: expected 'mixed' or 'per_channel', got {conv_mode!r}")
        if recurrent not in ("rank0", "rank1"):
            raise ValueError(f"recurrent: expected 'rank0' or 'rank1', got {recurrent!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.conv_filters = conv_filters
        self.conv_kernel = conv_kernel
        self.num_conv_layers = num_conv_layers
        self.hidden_channels = hidden_channels
        self.lstm_layers = lstm_layers
        self.dropout = float(dropout)
        self.conv_mode = conv_mode
        self.recurrent = recurrent
        self.recurrent_kernel = recurrent_kernel

        # (B, C_in, T, S) maps: C_in = sensors and S = 1 ("mixed"), or C_in = 1 and S = sensors.
        conv_in = in_channels if conv_mode == "mixed" else 1
        self.columns = 1 if conv_mode == "mixed" else in_channels
        convs = []
        for _ in range(num_conv_layers):
            convs.append(nn.Conv2d(conv_in, conv_filters, kernel_size=(conv_kernel, 1)))
            conv_in = conv_filters
        self.convs = nn.ModuleList(convs)
        features = conv_in  # channels reaching the recurrent part per sensor column

        if recurrent == "rank0":
            self.lstm = ConvLSTM(
                features * self.columns,
                hidden_channels,
                num_layers=lstm_layers,
                spatial_dims=0,
                dropout=self.dropout,
                return_sequences=False,
                check_finite=False,
            )
            head_in = hidden_channels
        else:
            self.lstm = ConvLSTM(
                features,
                hidden_channels,
                recurrent_kernel,
                num_layers=lstm_layers,
                spatial_dims=1,
                padding="same",
                dropout=self.dropout,
                return_sequences=False,
                check_finite=False,
            )
            head_in = hidden_channels * self.columns
        self.classifier = nn.Linear(head_in, num_classes)

    @property
    def min_window(self) -> int:
        """The shortest window ``T`` the valid temporal convolutions accept."""
        return self.num_conv_layers * (self.conv_kernel - 1) + 1

    def output_steps(self, window: int) -> int:
        """Steps the recurrent part runs over for a window of ``window`` samples."""
        return window - self.num_conv_layers * (self.conv_kernel - 1)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(B, T, C)`` windows → ``(B, num_classes)`` logits (unbatched ``(T, C)`` → ``(num_classes,)``).

        ``lengths`` ``(B,)``: series of different lengths, zero-padded at the end to ``T``; series
        ``i`` is ``x[i, :lengths[i]]``. The valid convolutions look forward only, so their first
        ``lengths[i] - (min_window - 1)`` outputs read no padding, and the recurrent part stops
        there (its ``lengths=``): the logits equal those of each series run alone.
        """
        if x.dim() not in (2, 3) or x.shape[-1] != self.in_channels or x.shape[-2] < self.min_window:
            raise ValueError(
                f"DeepConvLSTM expects windows (B, T, C) or unbatched (T, C) with C={self.in_channels} "
                f"and T >= {self.min_window}, got shape {tuple(x.shape)}"
            )
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
            if (
                lengths.shape != (x.shape[0] if x.dim() == 3 else 1,)
                or bool((lengths < self.min_window).any())
                or bool((lengths > x.shape[-2]).any())
            ):
                raise ValueError(
                    f"DeepConvLSTM lengths: expected one length per series in [{self.min_window}, T={x.shape[-2]}], "
                    f"got {lengths.tolist()[:8]} for windows of shape {tuple(x.shape)}"
                )
            lengths = self.output_steps(lengths)  # type: ignore[assignment]
        if self.check_finite:  # here, on the windows, rather than inside on the convolved features
            _check_finite(x, "windows", "DeepConvLSTM (check_finite=True)")
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)
        if self.conv_mode == "mixed":
            z = rearrange(x, "b t c -> b c t 1")
        else:
            z = rearrange(x, "b t c -> b 1 t c")
        for conv in self.convs:
            z = F.relu(conv(z))  # (B, F, T', S)
        if self.recurrent == "rank0":
            seq = rearrange(z, "b f t s -> b t (f s)")
        else:
            seq = rearrange(z, "b f t s -> b t f s")
        seq = F.dropout(seq, self.dropout, self.training)
        last, _ = self.lstm(seq, lengths=lengths)  # (B, H) or (B, H, S): each series' last real step
        last = F.dropout(last.flatten(1), self.dropout, self.training)
        logits = self.classifier(last)
        return logits.squeeze(0) if unbatched else logits

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.num_classes}, hidden_channels={self.hidden_channels}, conv_mode={self.conv_mode!r}, "
            f"recurrent={self.recurrent!r}, dropout={self.dropout}"
        )
