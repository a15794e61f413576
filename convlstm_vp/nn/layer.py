"""``ConvLSTM``: the sequence layer over :class:`ConvLSTMCell` (stacks, directions, layouts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import fast
from .cell import ConvLSTMCell, set_implementation
from .controls import LayerControls
from .fast import CompiledForward, Implementation, ImplementationArg
from .functional import check_dtype_device, check_finite
from .layout import (
    check_data_format,
    describe_frame,
    describe_sequence,
    sequence_from_internal,
    sequence_to_internal,
    user_frame_shape,
)

StateArg = tuple[Tensor, Tensor] | tuple[Sequence[Tensor], Sequence[Tensor]] | None


def _per_layer(value: Any, num_layers: int, what: str) -> list[Any]:
    """A ``list`` gives one value per layer; anything else (int, tuple, str) is shared."""
    if isinstance(value, list):
        if len(value) != num_layers:
            raise ValueError(
                f"{what}: a list gives one value per layer; expected {num_layers} values, got {len(value)}"
            )
        return list(value)
    return [value] * num_layers


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse ``(B, T, ...)`` along time, each sequence within its own length."""
    if lengths is None:
        return x.flip(1)
    b, t = x.shape[:2]
    steps = torch.arange(t, device=x.device).unsqueeze(0)
    lens = lengths.to(x.device).unsqueeze(1)
    idx = torch.where(steps < lens, lens - 1 - steps, steps)
    return x[torch.arange(b, device=x.device).unsqueeze(1), idx]


def _lstm_by_length_segments(
    x: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor, weights: list[Tensor], has_bias: bool, train: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM direction over ``x`` ``(B, T, C)`` whose sequence ``i`` ends at ``lengths[i]``:
    ``(output (B, T, H_out) with zeros past each length, h_n (B, H_out), c_n (B, H))``.

    The sequences sorted longest first, ``torch.lstm``'s fused kernel runs once per stretch of
    time between two distinct lengths, over the sequences still running (a prefix of the sorted
    batch), from the states the previous stretch left: as many kernel calls as distinct lengths,
    each over many steps. (A ``PackedSequence`` runs on the CPU through a step loop whose
    backward fills a zero gradient of the whole input at every step.)"""
    b, t = x.shape[:2]
    lengths = lengths.to("cpu")
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lens = lengths[order].tolist()
    dev_order = order.to(x.device)
    xs = x[dev_order]
    h, c = h0[dev_order].unsqueeze(0), c0[dev_order].unsqueeze(0)
    outs, done_h, done_c = [], [], []
    start = 0
    for end in sorted(set(sorted_lens)):
        running = sum(1 for n in sorted_lens if n >= end)  # the first `running` sequences
        seg, h, c = torch.lstm(xs[:running, start:end], (h, c), weights, has_bias, 1, 0.0, train, False, True)
        outs.append(F.pad(seg, (0, 0, 0, 0, 0, b - running)))
        finishing = sum(1 for n in sorted_lens if n == end)  # the last of the running ones
        done_h.append(h[0, running - finishing :])
        done_c.append(c[0, running - finishing :])
        h, c = h[:, : running - finishing], c[:, : running - finishing]
        start = end
    out = torch.cat(outs, dim=1)
    out = F.pad(out, (0, 0, 0, t - start))
    inverse = torch.argsort(dev_order)
    return out[inverse], torch.cat(done_h[::-1])[inverse], torch.cat(done_c[::-1])[inverse]


class ConvLSTM(LayerControls, nn.Module):
    """A stack of ConvLSTM layers run over a sequence, shaped like ``torch.nn.LSTM``.

    Args:
        in_channels: input channels ``C``.
        hidden_channels: hidden channels ``H``; a list gives one value per layer.
        kernel_size: input-to-state kernel; a list gives one kernel per layer (a tuple is
            one size per spatial dimension). The same rule holds for ``stride``, ``padding``,
            ``dilation`` and ``recurrent_kernel_size``.
        num_layers: number of stacked layers (taken from a list ``hidden_channels`` if given).
        spatial_dims: 0 (plain LSTM), 1, 2 or 3.
        batch_first: ``(B, T, ...)`` if True, else ``(T, B, ...)``.
        data_format: "channels_first" ``(B, T, C, *spatial)`` or "channels_last"
            ``(B, T, *spatial, C)``; states follow the same channel position.
        bidirectional: run a second, backward direction; outputs are concatenated on channels.
        proj_size: rank 0 only, as in ``torch.nn.LSTM``.
        dropout: dropout on the outputs of every layer but the last (as ``torch.nn.LSTM``).
        input_dropout, recurrent_dropout: the cell's per-sequence dropout masks (Keras
            ``dropout`` / ``recurrent_dropout``).
        return_sequences: return every step (True) or only the last valid one.
        return_all_layers: return a list with the output sequence of every layer.
        stateful: carry the final state into the next call (detached); ``reset_state()``
            forgets it.
        go_backwards: process the sequence backwards and return the reversed sequence (Keras).
        implementation: how the layer computes, never what (the same numbers either way):
            "auto" (default) picks per device: "fused" on CPU (stepping in channels-last
            memory on AVX512-BF16 CPUs without AMX), "plain" on CUDA (until
            "graphed" is measured ahead there) and elsewhere; "plain" runs the equations one
            operation at a time with the input convolution of all steps batched; "fused" the
            fast paths (fused gate arithmetic, a C kernel for it on CPU, one ``[x, h]``
            convolution per step, no state convolution from a zero state, ``torch.lstm`` at
            rank 0); "compiled" is "fused" with every cell
            step through ``torch.compile`` (eager, after a ``RuntimeWarning``, where compiling
            is impossible); "graphed" runs the whole stack through ``torch.compile`` as one
            graph, replayed as CUDA graphs on CUDA (convolutional cells without
            ``input_dropout``/``recurrent_dropout`` and calls without ``lengths``; others step
            as "fused"); the first call of a shape compiles; first derivatives only. An
            :class:`~convlstm_vp.nn.Implementation` picks single paths (tests, benchmarks).
            Rank-0 layers of plain LSTM cells always use ``torch.lstm`` (oneDNN / cuDNN) except
            under an :class:`Implementation` with ``torch_lstm=False``.
        name: optional layer name, shown in ``repr``; :meth:`tag` builds TensorBoard tags
            from it (``layer.tag("grad_norm")`` → ``"encoder/grad_norm"``).
        trainable: False creates the layer frozen; :meth:`freeze` / :meth:`unfreeze` (or
            assigning ``layer.trainable``) switch later. A frozen layer's weights get no
            gradient and stay bit-identical under optimizer steps; gradients still flow
            through it to earlier layers.
        store_gradients: after every backward pass keep a copy of each parameter's gradient;
            :meth:`get_gradients` returns them by parameter name (they survive
            ``optimizer.zero_grad()``).
        grad_scale: multiplies the gradient that the layer sends back to its input ``x``
            (1 by default, -1 = gradient reversal); the forward pass and the layer's own
            weight gradients are unchanged. Applies to the fused rank-0 path too.
        check_finite: raise :class:`~convlstm_vp.nn.NonFiniteInputError` (a ``ValueError``)
            when ``x`` or the given state holds NaN/Inf. Costs one ``isfinite().all()`` per call
            (a host sync on GPU); pass False (or set ``layer.check_finite = False``) to skip it.
        **cell_kwargs: passed to every :class:`ConvLSTMCell` (``activation``, ``peephole``,
            ``bias``, ``unit_forget_bias``, initializers, ``kernel_regularizer``,
            ``recurrent_regularizer``, ``bias_regularizer``, ...). Regularizers are summed by
            :func:`convlstm_vp.regularization_loss` (or ``layer.regularization_loss()``).

    Dropout (``dropout``, ``input_dropout``, ``recurrent_dropout``) is active only in training
    mode: it follows ``module.train()`` / ``module.eval()``.

    Call ``layer(x, state=None, lengths=None)`` → ``output, (h_n, c_n)``:
        x: ``(B, T, C, *spatial)`` in the configured layout, unbatched ``(T, C, *spatial)``, or
            at rank 0 a ``PackedSequence``.
        state: ``(h_0, c_0)`` each ``(num_layers * num_directions, B, H, *spatial_out)``.
        lengths: ``(B,)`` valid lengths; steps past a length give zero outputs and do not
            change the state.
        output: ``(B, T, num_directions * H_out, *spatial_out)`` (or the last step
            ``(B, num_directions * H_out, *spatial_out)`` with ``return_sequences=False``).
        h_n, c_n: ``(num_layers * num_directions, B, H, *spatial_out)``; when layers differ in
            hidden size or spatial size they are lists with one ``(B, H_l, *spatial_l)`` each.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int | list[int],
        kernel_size: int | Sequence[int] | list = 3,
        num_layers: int | None = None,
        *,
        spatial_dims: int = 2,
        batch_first: bool = True,
        data_format: str = "channels_first",
        bidirectional: bool = False,
        proj_size: int = 0,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        return_sequences: bool = True,
        return_all_layers: bool = False,
        stateful: bool = False,
        go_backwards: bool = False,
        stride: Any = 1,
        padding: Any = "same",
        dilation: Any = 1,
        recurrent_kernel_size: Any = None,
        implementation: ImplementationArg = "auto",
        name: str | None = None,
        trainable: bool = True,
        store_gradients: bool = False,
        grad_scale: float = 1.0,
        check_finite: bool = True,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(hidden_channels, list):
            if num_layers is not None and num_layers != len(hidden_channels):
                raise ValueError(
                    f"num_layers={num_layers} disagrees with hidden_channels={hidden_channels} "
                    f"({len(hidden_channels)} layers)"
                )
            num_layers = len(hidden_channels)
        num_layers = 1 if num_layers is None else num_layers
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers: expected an int >= 1, got {num_layers!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        if "data_format" in cell_kwargs:
            raise TypeError("data_format is the layer's own argument")
        if spatial_dims not in (0, 1, 2, 3):
            raise ValueError(f"spatial_dims: expected 0, 1, 2 or 3, got {spatial_dims!r}")
        self.in_channels = in_channels
        self.num_layers = num_layers
        self.spatial_dims = spatial_dims
        self.batch_first = batch_first
        self.data_format = check_data_format(data_format)
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.proj_size = proj_size
        self.dropout = float(dropout)
        self.return_sequences = return_sequences
        self.return_all_layers = return_all_layers
        self.stateful = stateful
        self.go_backwards = go_backwards
        self.check_finite = check_finite
        hidden = _per_layer(hidden_channels, num_layers, "hidden_channels")
        kernels = _per_layer(kernel_size, num_layers, "kernel_size")
        strides = _per_layer(stride, num_layers, "stride")
        paddings = _per_layer(padding, num_layers, "padding")
        dilations = _per_layer(dilation, num_layers, "dilation")
        rkernels = _per_layer(recurrent_kernel_size, num_layers, "recurrent_kernel_size")
        self.hidden_channels = hidden
        cells = []
        layer_in = in_channels
        for l in range(num_layers):
            for _ in range(self.num_directions):
                cells.append(
                    ConvLSTMCell(
                        layer_in,
                        hidden[l],
                        kernels[l],
                        spatial_dims=spatial_dims,
                        stride=strides[l],
                        padding=paddings[l],
                        dilation=dilations[l],
                        recurrent_kernel_size=rkernels[l],
                        input_dropout=input_dropout,
                        recurrent_dropout=recurrent_dropout,
                        proj_size=proj_size,
                        implementation=implementation,
                        **cell_kwargs,
                    )
                )
            layer_in = (proj_size or hidden[l]) * self.num_directions
        self.cells = nn.ModuleList(cells)
        self.out_channels = layer_in
        self._state: tuple[Any, Any] | None = None
        self._compiled_forward: CompiledForward | None = None
        self._init_controls(name=name, trainable=trainable, store_gradients=store_gradients, grad_scale=grad_scale)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_compiled_forward"] = None  # compiled code is rebuilt on first use, never copied
        return state

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_torch_lstm(cls, lstm: nn.LSTM) -> ConvLSTM:
        """The rank-0 layer that computes exactly what ``lstm`` computes (weights copied)."""
        if not isinstance(lstm, nn.LSTM):
            raise TypeError(f"from_torch_lstm expects a torch.nn.LSTM, got {type(lstm).__name__}")
        p = next(lstm.parameters())
        layer = cls(
            lstm.input_size,
            lstm.hidden_size,
            num_layers=lstm.num_layers,
            spatial_dims=0,
            batch_first=lstm.batch_first,
            bidirectional=lstm.bidirectional,
            proj_size=lstm.proj_size,
            dropout=lstm.dropout,
            bias=lstm.bias,
            device=p.device,
            dtype=p.dtype,
        )
        layer.load_torch_lstm_weights(lstm)
        return layer

    @torch.no_grad()
    def load_torch_lstm_weights(self, lstm: nn.LSTM) -> None:
        """Copy the weights of a ``torch.nn.LSTM`` of matching shape into this rank-0 layer."""
        if self.spatial_dims != 0:
            raise ValueError("load_torch_lstm_weights needs spatial_dims=0")
        for l in range(self.num_layers):
            for d in range(self.num_directions):
                sfx = f"_l{l}" + ("_reverse" if d else "")
                cell = self.cells[l * self.num_directions + d]
                names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if lstm.bias else [])
                names += ["weight_hr"] if lstm.proj_size else []
                for n in names:
                    src = getattr(lstm, n + sfx)
                    dst = getattr(cell, n)
                    if src.shape != dst.shape:
                        raise ValueError(f"{n}{sfx}: expected shape {tuple(dst.shape)}, got {tuple(src.shape)}")
                    dst.copy_(src)

    @property
    def implementation(self) -> ImplementationArg:
        """The cells' ``implementation``; assigning one sets it on every cell."""
        return self.cells[0].implementation

    @implementation.setter
    def implementation(self, value: ImplementationArg) -> None:
        set_implementation(self, value)

    # ------------------------------------------------------------------ state
    def reset_state(self) -> None:
        """Forget the state carried between calls by a stateful layer."""
        self._state = None

    def reset_parameters(self) -> None:
        for cell in self.cells:
            cell.reset_parameters()

    # ------------------------------------------------------------------ forward
    def _expected(self, batched: bool = True) -> str:
        return describe_sequence(self.spatial_dims, self.batch_first, self.data_format, batched)

    def _layout_msg(self) -> str:
        return (
            f"ConvLSTM(spatial_dims={self.spatial_dims}, batch_first={self.batch_first}, "
            f"data_format={self.data_format!r})"
        )

    def _input_to_internal(self, x: Tensor) -> tuple[Tensor, bool]:
        n = self.spatial_dims
        if not isinstance(x, Tensor):
            raise TypeError(f"{self._layout_msg()} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (n + 2, n + 3):
            raise ValueError(
                f"{self._layout_msg()} expects input {self._expected()} or unbatched "
                f"{self._expected(False)} with C={self.in_channels}, got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{self._layout_msg()} expects a floating-point input, got dtype {x.dtype}")
        unbatched = x.dim() == n + 2
        given = tuple(x.shape)
        if unbatched:
            x = x.unsqueeze(0 if self.batch_first else 1)
        x = sequence_to_internal(x, n, self.batch_first, self.data_format)
        if x.shape[2] != self.in_channels:
            expected = self._expected(not unbatched)
            raise ValueError(
                f"{self._layout_msg()} expects input {expected} with C={self.in_channels} "
                f"channels, got shape {given} (C={x.shape[2]} in that layout)"
            )
        if x.shape[1] == 0:
            raise ValueError(f"{self._layout_msg()} got an empty sequence (T=0)")
        check_dtype_device(x, self.cells[0].weight_ih, "input x", self._layout_msg())
        return x, unbatched

    def output_spatial_sizes(self, spatial: Sequence[int]) -> list[tuple[int, ...]]:
        """Spatial size of every layer's state for an input of spatial size ``spatial``.

        Raises ``ValueError`` naming the layer, its kernel and the size it receives when a
        kernel does not fit (e.g. larger than the input with ``padding="valid"``).
        """
        sizes = []
        spatial = tuple(int(v) for v in spatial)
        for l in range(self.num_layers):
            if self.spatial_dims:
                try:
                    spatial = self.cells[l * self.num_directions].output_spatial_size(spatial)
                except ValueError as exc:
                    where = f"layer {l} (input spatial size {spatial}): " if self.num_layers > 1 else ""
                    raise ValueError(f"{self._layout_msg()}: {where}{exc}") from None
            sizes.append(spatial)
        return sizes

    def _check_finite(self, x: Tensor, state: StateArg) -> None:
        owner = f"{self._layout_msg()} (check_finite=True)"
        check_finite(x, "input x", owner)
        if isinstance(state, (tuple, list)) and len(state) == 2:
            for name, part in zip(("h_0", "c_0"), state):
                parts = part if isinstance(part, (list, tuple)) else [part]
                for i, t in enumerate(parts):
                    if isinstance(t, Tensor):
                        check_finite(t, f"state {name}" + (f"[{i}]" if len(parts) > 1 else ""), owner)

    def _state_to_internal(self, t: Tensor) -> Tensor:
        """``(N, B, *spatial, H)`` → ``(N, B, H, *spatial)`` for channels_last states."""
        if self.data_format == "channels_first" or self.spatial_dims == 0:
            return t
        return t.movedim(-1, 2)

    def _state_from_internal(self, t: Tensor) -> Tensor:
        if self.data_format == "channels_first" or self.spatial_dims == 0:
            return t
        return t.movedim(2, -1)

    def _state_layout(self, unbatched: bool, per_cell: bool = False) -> str:
        """Human-readable state layout, e.g. ``"(num_layers * num_directions, B, H, H_out, W_out)"``."""
        lead = [] if per_cell else ["num_layers * num_directions"]
        return describe_frame(self.spatial_dims, self.data_format, not unbatched, "hidden", lead, "_out")

    def _user_shape(self, internal: tuple[int, ...], unbatched: bool) -> tuple[int, ...]:
        """A per-cell state shape ``(B, H, *spatial)`` written in the user's layout."""
        return user_frame_shape(internal, self.spatial_dims, self.data_format, not unbatched)

    def _initial_states(self, state: StateArg, x: Tensor, unbatched: bool) -> list[tuple[Tensor, Tensor] | None]:
        """One ``(h, c)`` (internal layout) or None per cell."""
        n_cells = len(self.cells)
        if state is None:
            if self.stateful and self._state is not None:
                hs, cs = self._state
                if hs[0].shape[0] != x.shape[0]:
                    raise ValueError(
                        f"stateful ConvLSTM carries a state for batch size {hs[0].shape[0]}, got a batch "
                        f"of {x.shape[0]}; call reset_state() to start new sequences"
                    )
                return list(zip(hs, cs))
            return [None] * n_cells
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise ValueError("state: expected a tuple (h_0, c_0)")
        h0, c0 = state
        state_dims = self.spatial_dims + (2 if unbatched else 3)  # (N, [B,] H, *spatial)
        state_layout = self._state_layout(unbatched)
        if isinstance(h0, Tensor) and isinstance(c0, Tensor):
            if h0.dim() != state_dims or c0.dim() != state_dims:
                raise ValueError(
                    f"state: expected h_0 and c_0 of shape {state_layout} "
                    f"(data_format={self.data_format!r}), got {tuple(h0.shape)} and {tuple(c0.shape)}"
                )
            if unbatched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            h_list = list(self._state_to_internal(h0).unbind(0))
            c_list = list(self._state_to_internal(c0).unbind(0))
        elif isinstance(h0, Sequence) and isinstance(c0, Sequence):
            if any(not isinstance(t, Tensor) or t.dim() != state_dims - 1 for t in [*h0, *c0]):
                raise ValueError(
                    f"state: expected h_0 and c_0 as tensors {state_layout} or as lists with one "
                    f"{self._state_layout(unbatched, per_cell=True)} per layer and direction "
                    f"(data_format={self.data_format!r})"
                )
            h_list = [self._state_to_internal(h.unsqueeze(0))[0] for h in h0]
            c_list = [self._state_to_internal(c.unsqueeze(0))[0] for c in c0]
            if unbatched:
                h_list = [h.unsqueeze(0) for h in h_list]
                c_list = [c.unsqueeze(0) for c in c_list]
        else:
            raise ValueError(f"state: expected a tuple (h_0, c_0) of tensors {state_layout}")
        if len(h_list) != n_cells or len(c_list) != n_cells:
            raise ValueError(
                f"state: expected h_0 and c_0 {state_layout} with num_layers * num_directions = {n_cells} "
                f"entries on the first axis, got {len(h_list)} and {len(c_list)}"
            )
        # check shapes against what each cell will produce
        spatial = x.shape[3:]
        out = []
        for l in range(self.num_layers):
            cell = self.cells[l * self.num_directions]
            spatial = cell.output_spatial_size(spatial) if self.spatial_dims else ()
            for d in range(self.num_directions):
                k = l * self.num_directions + d
                h, c = h_list[k], c_list[k]
                check_dtype_device(h, cell.weight_hh, f"state h_0 of layer {l} direction {d}", self._layout_msg())
                check_dtype_device(c, cell.weight_hh, f"state c_0 of layer {l} direction {d}", self._layout_msg())
                want_h = (x.shape[0], cell.out_channels, *spatial)
                want_c = (x.shape[0], cell.hidden_channels, *spatial)
                if tuple(h.shape) != want_h or tuple(c.shape) != want_c:
                    raise ValueError(
                        f"state of layer {l} direction {d}: expected h {self._user_shape(want_h, unbatched)} and "
                        f"c {self._user_shape(want_c, unbatched)} in the layout "
                        f"{self._state_layout(unbatched, per_cell=True)} (data_format={self.data_format!r}), "
                        f"got {self._user_shape(tuple(h.shape), unbatched)} and "
                        f"{self._user_shape(tuple(c.shape), unbatched)}"
                    )
                out.append((h, c))
        return out

    def forward(
        self,
        x: Tensor | PackedSequence,
        state: StateArg = None,
        lengths: Tensor | Sequence[int] | None = None,
    ) -> tuple[Any, tuple[Any, Any]]:
        packed_info = None
        if isinstance(x, PackedSequence):
            if self.spatial_dims != 0:
                raise ValueError("PackedSequence input is supported at spatial_dims=0 only; use lengths=")
            packed_info = x
            x, lengths = pad_packed_sequence(x, batch_first=self.batch_first)
        x, unbatched = self._input_to_internal(x)
        self.output_spatial_sizes(x.shape[3:])  # a kernel larger than a valid-padded input fails here
        if self.check_finite:
            self._check_finite(x, state)
        x = self._controls_before_forward(x)  # identity; scales the input gradient by grad_scale
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.long)
            if lengths.dim() != 1 or lengths.shape[0] != x.shape[0]:
                raise ValueError(f"lengths: expected shape ({x.shape[0]},), got {tuple(lengths.shape)}")
            if (lengths < 1).any() or (lengths > x.shape[1]).any():
                raise ValueError(f"lengths: every length must be in [1, T={x.shape[1]}], got {lengths.tolist()}")
            if bool((lengths == x.shape[1]).all()):
                lengths = None
        init = self._initial_states(state, x, unbatched)
        if self.go_backwards:
            x = reverse_padded(x, lengths)

        if self._compiles_whole_forward(x, lengths):
            if self._compiled_forward is None:
                self._compiled_forward = CompiledForward(
                    self._run_layers, f"{self.tag()} forward", self.cells[0].paths(x.device.type).cuda_graphs
                )
            layer_outputs, hs, cs = self._compiled_forward(x, init)
        else:
            layer_outputs, hs, cs = self._run_layers(x, init, lengths)

        if self.stateful:
            self._state = ([h.detach() for h in hs], [c.detach() for c in cs])

        h_n, c_n = self._pack_states(hs, cs, unbatched)
        output: Any
        if self.return_all_layers:
            output = [self._format_output(o, lengths, unbatched, None) for o in layer_outputs]
        else:
            output = self._format_output(layer_outputs[-1], lengths, unbatched, packed_info)
        return output, (h_n, c_n)

    def _compiles_whole_forward(self, x: Tensor, lengths: Tensor | None) -> bool:
        """Whether this call runs :meth:`_run_layers` through :class:`CompiledForward`
        (``implementation`` "graphed"): convolutional cells without per-step dropout masks (they
        are module state that the eager steps keep), fixed lengths, and not already inside a
        compiled region (an encoder-forecaster compiles its layers with it)."""
        return (
            self.cells[0].paths(x.device.type).whole_forward
            and self.spatial_dims > 0
            and lengths is None
            and not torch.compiler.is_compiling()
            and all(c.input_dropout == 0 and c.recurrent_dropout == 0 for c in self.cells)
        )

    def _run_layers(
        self, x: Tensor, init: Sequence[tuple[Tensor, Tensor] | None], lengths: Tensor | None = None
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Every layer over ``x`` ``(B, T, C, *spatial)`` (internal layout, already reversed for
        ``go_backwards``): each layer's output sequence and the final ``h`` and ``c`` of every cell."""
        layer_input = x
        layer_outputs: list[Tensor] = []
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        for l in range(self.num_layers):
            cells = self.cells[l * self.num_directions : (l + 1) * self.num_directions]
            layer_init = init[l * self.num_directions : (l + 1) * self.num_directions]
            # only the last step of the top layer is needed: skip collecting the sequence
            last_only = (
                l == self.num_layers - 1
                and not self.return_sequences
                and not self.return_all_layers
                and lengths is None
            )
            out, h_l, c_l = self._run_layer(cells, layer_input, layer_init, lengths, last_only)
            hs += h_l
            cs += c_l
            layer_outputs.append(out)
            if l < self.num_layers - 1 and self.dropout > 0 and self.training:
                out = F.dropout(out, self.dropout, training=True)
            layer_input = out
        return layer_outputs, hs, cs

    def _format_output(
        self, out: Tensor, lengths: Tensor | None, unbatched: bool, packed: PackedSequence | None
    ) -> Any:
        n = self.spatial_dims
        if not self.return_sequences:
            if lengths is None:
                last = out[:, -1]
            else:
                last = out[torch.arange(out.shape[0], device=out.device), lengths.to(out.device) - 1]
            if self.bidirectional:
                # the backward direction ends at the first step
                hsize = out.shape[2] // 2
                last = torch.cat([last[:, :hsize], out[:, 0, hsize:]], dim=1)
            if self.data_format == "channels_last" and n:
                last = last.movedim(1, -1)
            return last.squeeze(0) if unbatched else last
        if packed is not None:
            # keep the input's batch order so that ``output.data`` lines up with ``x.data``
            lens = lengths.cpu() if lengths is not None else torch.full((out.shape[0],), out.shape[1])
            if packed.sorted_indices is not None:
                out, lens = out[packed.sorted_indices.to(out.device)], lens[packed.sorted_indices.cpu()]
            p = pack_padded_sequence(out, lens, batch_first=True, enforce_sorted=True)
            return PackedSequence(p.data, p.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        y = sequence_from_internal(out, n, self.batch_first, self.data_format)
        return y.squeeze(0 if self.batch_first else 1) if unbatched else y

    def _pack_states(self, hs: list[Tensor], cs: list[Tensor], unbatched: bool) -> tuple[Any, Any]:
        def fmt(t: Tensor) -> Tensor:
            t = self._state_from_internal(t.unsqueeze(0))[0]
            return t.squeeze(0) if unbatched else t

        if len({tuple(h.shape) for h in hs}) == 1 and len({tuple(c.shape) for c in cs}) == 1:
            h_n = self._state_from_internal(torch.stack(hs))
            c_n = self._state_from_internal(torch.stack(cs))
            if unbatched:
                h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
            return h_n, c_n
        return [fmt(h) for h in hs], [fmt(c) for c in cs]

    # ------------------------------------------------------------------ one layer
    def _run_layer(
        self,
        cells: Sequence[ConvLSTMCell],
        x: Tensor,
        init: Sequence[tuple[Tensor, Tensor] | None],
        lengths: Tensor | None,
        last_only: bool = False,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Run the directions of one layer over ``x`` ``(B, T, C, *spatial)``.

        ``last_only`` (no lengths): the output holds one step, each direction's final ``h``.
        """
        paths = cells[0].paths(x.device.type)
        # torch.lstm has no oneDNN primitive for bfloat16 autocast on CPUs without native
        # bfloat16: there the step loop (the same equations) runs instead
        if (
            paths.torch_lstm
            and all(c.is_plain_lstm() for c in cells)
            and not fast.cpu_bf16_autocast_emulated(x.device.type)
        ):
            return self._run_fused(cells, x, init, lengths)
        outs, hs, cs = [], [], []
        for d, cell in enumerate(cells):
            seq = x if d == 0 else reverse_padded(x, lengths)
            out, (h, c) = self._run_cell(cell, seq, init[d], lengths, last_only)
            outs.append(out if d == 0 else reverse_padded(out, lengths))
            hs.append(h)
            cs.append(c)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)), hs, cs

    @staticmethod
    def _batches_input(cell: ConvLSTMCell, paths: Implementation, device_type: str) -> bool:
        """Whether to compute the input convolution of all steps in one call (``batch_input_conv``)."""
        if paths.batch_input_conv is None:
            # CPU, rank >= 1, and the per-step convolution is one [x, h] convolution or a small
            # input matrix product: step frame by frame (measured faster by scripts/benchmark.py,
            # and no (B, T, 4H, ...) buffer, whose allocation page-faults on every call).
            # Elsewhere (GPU, rank 0, strided cells) one batched convolution over all steps.
            per_step = (
                device_type == "cpu"
                and cell.spatial_dims > 0
                and ((paths.fused_conv and cell._concat_ok) or (paths.matmul_input and cell._matmul_ok))
            )
            return not per_step
        return paths.batch_input_conv

    def _run_cell(
        self,
        cell: ConvLSTMCell,
        x: Tensor,
        state: tuple[Tensor, Tensor] | None,
        lengths: Tensor | None,
        last_only: bool = False,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        cell.reset_dropout_masks()
        b, t = x.shape[:2]
        zero_state = state is None
        if state is None:
            spatial = cell.output_spatial_size(x.shape[3:]) if cell.spatial_dims else ()
            # the state keeps the input's dtype: float32 under autocast, so c accumulates in float32
            state = cell.initial_state(b, spatial, x.device, x.dtype)
        paths = cell.paths(x.device.type)
        batched = self._batches_input(cell, paths, x.device.type)
        if batched:
            inputs, step_fn = cell.input_transform(x).unbind(1), cell.recurrent_step
        else:
            inputs, step_fn = x.unbind(1), cell.step
        h, c = state
        outs = []
        valid = None
        if lengths is not None:
            view = (b,) + (1,) * (h.dim() - 1)
            valid = torch.arange(t, device=x.device).unsqueeze(1) < lengths.to(x.device).unsqueeze(0)
            valid = valid.reshape(t, *view)
        for step in range(t):
            if step == 0 and zero_state and paths.skip_zero_state:
                h_new, c_new = cell.first_step(inputs[0], c, batched)  # h_0 = 0: no recurrent conv
            else:
                h_new, c_new = step_fn(inputs[step], (h, c))
            if valid is None:
                h, c = h_new, c_new
                if not last_only:
                    outs.append(h)
            else:
                m = valid[step]
                h = torch.where(m, h_new, h)
                c = torch.where(m, c_new, c)
                outs.append(h_new * m)
        if paths.channels_last:  # the default layout between layers and for callers
            h, c, outs = h.contiguous(), c.contiguous(), [o.contiguous() for o in outs]
        if last_only and valid is None:
            return h.unsqueeze(1), (h, c)
        return torch.stack(outs, dim=1), (h, c)

    def _run_fused(
        self,
        cells: Sequence[ConvLSTMCell],
        x: Tensor,
        init: Sequence[tuple[Tensor, Tensor] | None],
        lengths: Tensor | None,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Rank-0 layer through the fused ``torch.lstm`` kernel (one layer, 1 or 2 directions)."""
        b, t = x.shape[:2]
        cell0 = cells[0]
        if any(s is None for s in init):
            h0 = x.new_zeros(len(cells), b, cell0.out_channels)
            c0 = x.new_zeros(len(cells), b, cell0.hidden_channels)
        else:
            h0 = torch.stack([s[0] for s in init])  # type: ignore[index]
            c0 = torch.stack([s[1] for s in init])  # type: ignore[index]
        has_bias = cell0.bias_ih is not None
        if lengths is None:
            weights = [w for cell in cells for w in cell.flat_weights()]
            bidir = len(cells) == 2
            out, h, c = torch.lstm(x, (h0, c0), weights, has_bias, 1, 0.0, self.training, bidir, True)
            return out, list(h.unbind(0)), list(c.unbind(0))
        outs, hs, cs = [], [], []
        for d, cell in enumerate(cells):
            seq = x if d == 0 else reverse_padded(x, lengths)
            out, h, c = _lstm_by_length_segments(
                seq, lengths, h0[d], c0[d], cell.flat_weights(), has_bias, self.training
            )
            outs.append(out if d == 0 else reverse_padded(out, lengths))
            hs.append(h)
            cs.append(c)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)), hs, cs

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.hidden_channels if len(set(self.hidden_channels)) > 1 else self.hidden_channels[0]}"
        s += f", num_layers={self.num_layers}, spatial_dims={self.spatial_dims}"
        if self.name:
            s = f"name={self.name!r}, " + s
        if not self.batch_first:
            s += ", batch_first=False"
        if self.data_format != "channels_first":
            s += f", data_format={self.data_format!r}"
        for flag in ("bidirectional", "stateful", "go_backwards", "return_all_layers"):
            if getattr(self, flag):
                s += f", {flag}=True"
        if not self.return_sequences:
            s += ", return_sequences=False"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.implementation != "auto":
            s += f", implementation={self.implementation!r}"
        controls = self._controls_repr()
        return s + (", " + controls if controls else "")


class _FixedRank(ConvLSTM):
    """:class:`ConvLSTM` with ``spatial_dims`` fixed by the subclass (as Keras's ConvLSTM1D/2D/3D)."""

    rank = 2

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int | list[int],
        kernel_size: int | Sequence[int] | list = 3,
        num_layers: int | None = None,
        **kwargs: Any,
    ) -> None:
        if "spatial_dims" in kwargs:
            raise TypeError(f"{type(self).__name__} fixes spatial_dims={self.rank}; use ConvLSTM to choose it")
        super().__init__(in_channels, hidden_channels, kernel_size, num_layers, spatial_dims=self.rank, **kwargs)


class ConvLSTM1d(_FixedRank):
    """ConvLSTM over sequences of 1-D signals ``(B, T, C, L)``: ``ConvLSTM(..., spatial_dims=1)``
    (Keras ``ConvLSTM1D``). Arguments and call as :class:`ConvLSTM`."""

    rank = 1


class ConvLSTM2d(_FixedRank):
    """ConvLSTM over sequences of frames ``(B, T, C, H, W)``: ``ConvLSTM(..., spatial_dims=2)``
    (Keras ``ConvLSTM2D``). Arguments and call as :class:`ConvLSTM`."""

    rank = 2


class ConvLSTM3d(_FixedRank):
    """ConvLSTM over sequences of volumes ``(B, T, C, D, H, W)``: ``ConvLSTM(..., spatial_dims=3)``
    (Keras ``ConvLSTM3D``). Arguments and call as :class:`ConvLSTM`."""

    rank = 3
