"""Sequence classifier over image patches: a ConvLSTM2D stack reads the patches, a head scores.

Reads top to bottom:

1. Input: a digit cut into ``T`` square patches (``convlstm_vp.data.patchify``), one frame per
   step: ``(B, T, C, p, p)`` — ``(B, 16, 1, 7, 7)`` for a 28x28 MNIST digit with ``p = 7``.
2. A :class:`~convlstm_vp.nn.ConvLSTM` stack (rank 2, "same" padding) runs over the ``T``
   patches; every hidden state stays a ``p x p`` map, so the state can remember where in the
   patch each stroke was.
3. Head on the last step's hidden state of the top layer, ``(B, H, p, p)`` (with
   ``bidirectional=True`` also the backward direction's, ``(B, 2H, p, p)``):
   ``head="flatten"`` flattens it (``H·p·p`` features), ``head="pool"`` averages it over the
   ``p x p`` positions (``H`` features); dropout, then one linear layer gives the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from einops import rearrange
from torch import Tensor, nn

from ..nn import ConvLSTM
from ..nn.functional import check_finite as _check_finite
from ..nn.layout import check_data_format, describe_sequence, sequence_to_internal

Head = Literal["flatten", "pool"]
_HEADS = ("flatten", "pool")


class PatchSequenceClassifier(nn.Module):
    """ConvLSTM2D over a sequence of patches, a linear classifier on the last hidden state.

    Args:
        in_channels: channels ``C`` of a patch (1 for MNIST).
        hidden_channels: hidden channels per ConvLSTM layer (its length is the number of layers).
        kernel_size: kernel of every layer (int), or a list with one kernel per layer.
        num_classes: number of classes (10 for digits).
        patch_size: side ``p`` of a patch (7 for 16 patches of a 28x28 digit).
        data_format: ``"channels_first"`` ``(B, T, C, p, p)`` or ``"channels_last"``
            ``(B, T, p, p, C)``.
        dropout: dropout probability on the features between ConvLSTM layers (as
            ``torch.nn.LSTM``'s ``dropout``) and before the linear layer; not on the recurrent
            state (``recurrent_dropout`` in ``cell_kwargs`` is the cells' own).
        head: ``"flatten"`` (linear layer on ``H·p·p`` features) or ``"pool"`` (on ``H``
            features averaged over the patch positions).
        bidirectional: also read the patches last to first; the head then sees the forward
            direction's last state and the backward direction's state after the first patch
            (``2H`` channels), so early patches need not be remembered across the whole sequence.
        check_finite: raise :class:`~convlstm_vp.nn.NonFiniteInputError` (a ``ValueError``) naming
            the input when ``x`` holds NaN/Inf.
        **cell_kwargs: passed to every :class:`~convlstm_vp.nn.ConvLSTMCell` (``peephole``,
            ``recurrent_dropout``, activations, ...).

    ``forward(x) -> logits``:
        x: ``(B, T, C, p, p)`` (channels_first) or ``(B, T, p, p, C)``, any ``T >= 1``; an
            unbatched sequence ``(T, C, p, p)`` / ``(T, p, p, C)`` also works.
        logits: ``(B, num_classes)``, or ``(num_classes,)`` for an unbatched sequence.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden_channels: Sequence[int] = (48,),
        kernel_size: int | list[int] = 3,
        num_classes: int = 10,
        patch_size: int = 7,
        data_format: str = "channels_first",
        dropout: float = 0.0,
        head: Head = "flatten",
        bidirectional: bool = False,
        check_finite: bool = True,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        self.check_finite = bool(check_finite)
        hidden = list(hidden_channels)
        if not hidden or any(not isinstance(h, int) or h <= 0 for h in hidden):
            raise ValueError(f"hidden_channels: expected a non-empty list of positive ints, got {hidden_channels!r}")
        for what, v in (("in_channels", in_channels), ("num_classes", num_classes), ("patch_size", patch_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{what}: expected a positive int, got {v!r}")
        if head not in _HEADS:
            raise ValueError(f"head: expected one of {_HEADS}, got {head!r}")
        self.in_channels = in_channels
        self.hidden_channels = hidden
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.data_format = check_data_format(data_format)
        self.dropout = float(dropout)
        self.head = head
        self.bidirectional = bool(bidirectional)
        kernels = kernel_size if isinstance(kernel_size, list) else [kernel_size] * len(hidden)
        self.convlstm = ConvLSTM(
            in_channels,
            hidden,
            kernels,
            spatial_dims=2,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
            return_sequences=False,
            name="patches",
            check_finite=False,  # checked once in forward, naming the model's input
            **cell_kwargs,
        )
        features = self.convlstm.out_channels * (patch_size * patch_size if head == "flatten" else 1)
        self.drop = nn.Dropout(self.dropout)
        self.fc = nn.Linear(features, num_classes)

    def _to_internal(self, x: Tensor) -> tuple[Tensor, bool]:
        """Check ``x`` and return it as ``(B, T, C, p, p)`` plus whether it was unbatched."""
        expected = describe_sequence(2, True, self.data_format)
        detail = f"with C={self.in_channels}, H=W=patch_size={self.patch_size} (data_format={self.data_format!r})"
        if not isinstance(x, Tensor) or x.dim() not in (4, 5):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"PatchSequenceClassifier: expected {expected} or unbatched (T, ...) {detail}, got {shape}"
            )
        unbatched = x.dim() == 4
        batched = x.unsqueeze(0) if unbatched else x
        internal = sequence_to_internal(batched, 2, True, self.data_format)
        _, t, c, h, w = internal.shape
        if t < 1 or c != self.in_channels or h != self.patch_size or w != self.patch_size:
            raise ValueError(f"PatchSequenceClassifier: expected {expected} {detail}, got {tuple(x.shape)}")
        if self.check_finite:
            _check_finite(x, "patch sequence x", "PatchSequenceClassifier (check_finite=True)")
        return internal, unbatched

    def forward(self, x: Tensor) -> Tensor:
        internal, unbatched = self._to_internal(x)
        last, _ = self.convlstm(internal)  # (B, H, p, p), 2H channels when bidirectional
        if self.head == "flatten":
            feats = rearrange(last, "b h y x -> b (h y x)")
        else:
            feats = last.mean(dim=(2, 3))
        logits = self.fc(self.drop(feats))
        return logits[0] if unbatched else logits

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, hidden_channels={self.hidden_channels}, "
            f"num_classes={self.num_classes}, patch_size={self.patch_size}, "
            f"data_format={self.data_format!r}, dropout={self.dropout}, head={self.head!r}, "
            f"bidirectional={self.bidirectional}"
        )
