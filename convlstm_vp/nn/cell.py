"""The one N-dimensional ConvLSTM cell (spatial rank 0, 1, 2 or 3).

Equations (Shi et al. 2015, gate order i, f, g, o as in ``torch.nn.LSTM``), with ``*`` the
input-to-state convolution (stride, padding, dilation as given) or the state-to-state
convolution (stride 1, "same"), and ``∘`` the Hadamard product::

    i  = σ(W_xi * x_t + W_hi * h_{t-1} + w_ci ∘ c_{t-1} + b_i)
    f  = σ(W_xf * x_t + W_hf * h_{t-1} + w_cf ∘ c_{t-1} + b_f)
    g  = act(W_xg * x_t + W_hg * h_{t-1} + b_g)
    c_t = f ∘ c_{t-1} + i ∘ g
    o  = σ(W_xo * x_t + W_ho * h_{t-1} + w_co ∘ c_t + b_o)
    h_t = o ∘ out_act(c_t)                [rank 0 with proj_size: h_t = W_hr (o ∘ out_act(c_t))]

``σ`` is ``recurrent_activation``, ``act`` is ``activation`` and ``out_act`` is
``output_activation`` (defaults to ``activation``). The peephole terms exist only with
``peephole=True``. At rank 0 the convolutions are matrix products and the cell equals
``torch.nn.LSTMCell``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .controls import LayerControls, RegularizerArg, get_regularizer
from .fast import (
    CompiledStep,
    Implementation,
    ImplementationArg,
    check_implementation,
    lstm_gates,
    resolve_implementation,
)
from .functional import (
    Activation,
    Initializer,
    PaddingArg,
    activation_name,
    check_dtype_device,
    check_finite,
    conv_nd,
    conv_output_size,
    expand,
    get_activation,
    get_initializer,
    normalize_padding,
    resolve_pads,
)
from .layout import check_data_format, describe_frame, frame_from_internal, frame_to_internal, user_frame_shape

State = tuple[Tensor, Tensor]


def check_sizes(spatial_dims: int, in_channels: int, hidden_channels: int, proj_size: int) -> None:
    """ValueError unless the rank is 0-3, the channel counts positive ints and ``proj_size`` a
    rank-0 projection smaller than ``hidden_channels`` (0: none)."""
    if spatial_dims not in (0, 1, 2, 3):
        raise ValueError(f"spatial_dims: expected 0, 1, 2 or 3, got {spatial_dims!r}")
    for what, v in (("in_channels", in_channels), ("hidden_channels", hidden_channels)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{what}: expected a positive int, got {v!r}")
    if not isinstance(proj_size, int) or proj_size < 0:
        raise ValueError(f"proj_size: expected an int >= 0, got {proj_size!r}")
    if proj_size and spatial_dims != 0:
        raise ValueError("proj_size: only supported at spatial_dims=0 (as in torch.nn.LSTM)")
    if proj_size >= hidden_channels and proj_size:
        raise ValueError(f"proj_size: must be smaller than hidden_channels={hidden_channels}, got {proj_size}")


def check_probability(what: str, p: float) -> None:
    """ValueError naming ``what`` unless ``p`` is a dropout probability in [0, 1)."""
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{what}: expected a probability in [0, 1), got {p!r}")


class ConvLSTMCell(LayerControls, nn.Module):
    """One ConvLSTM step at spatial rank ``spatial_dims`` (0 = plain LSTM cell).

    Args:
        in_channels: channels ``C`` of the input frame.
        hidden_channels: channels ``H`` of the hidden and cell state.
        kernel_size: input-to-state kernel (int or one int per spatial dim).
        spatial_dims: 0, 1, 2 or 3.
        stride, padding, dilation: of the input-to-state convolution (Keras semantics).
            ``padding`` is "valid", "same" (TF rule, also for even kernels and strides),
            an int, one int per dim, or explicit ``(lo, hi)`` pairs per dim.
        recurrent_kernel_size: state-to-state kernel (default: ``kernel_size``); always stride
            1, dilation 1, "same" padding.
        bias: learn ``bias_ih`` and ``bias_hh``.
        activation: candidate activation (name or callable).
        recurrent_activation: gate activation.
        output_activation: applied to ``c_t`` before the output gate (default ``activation``).
        unit_forget_bias: initialise the forget-gate part of ``bias_ih`` to 1.
        peephole: add the Hadamard peephole terms ``w_ci, w_cf, w_co``. Their shape is
            ``(H, *peephole_size)`` when ``peephole_size`` is given (Shi et al.: one weight per
            state element), else ``(H, 1, ...)`` (one weight per channel, any frame size).
        input_dropout: dropout on the input ``x`` (Keras's ``dropout``); one mask per sequence,
            training mode only.
        recurrent_dropout: dropout on ``h_{t-1}`` before the state-to-state convolution;
            one mask per sequence, training mode only.
        proj_size: rank 0 only: project ``h`` to this size with ``weight_hr`` (as torch.nn.LSTM).
        implementation: how the step is computed, never what: "auto" (default: "fused" on
            CPU, "plain" on CUDA and elsewhere), "plain" (the equations one operation
            at a time), "fused" (fused gate arithmetic, a C kernel for it on CPU, one
            convolution over ``[x, h]``, a matrix product for tiny input convolutions),
            "compiled" ("fused" through ``torch.compile``), "graphed" (the layer's or model's
            whole forward through ``torch.compile``, CUDA graphs on CUDA; a lone cell steps
            as "fused" without the C kernel), or an
            :class:`~convlstm_vp.nn.Implementation` (single paths, for tests and benchmarks).
        kernel_initializer, recurrent_initializer, bias_initializer, peephole_initializer:
            names (``glorot_uniform``, ``orthogonal``, ``zeros``, ``lstm_uniform``, ...) or
            callables that fill a tensor in place.
        kernel_regularizer, recurrent_regularizer, bias_regularizer: weight penalties on
            ``weight_ih`` (and ``weight_hr``), ``weight_hh``, and each of ``bias_ih`` /
            ``bias_hh``: ``L1``/``L2``/``L1L2`` objects, "l1"/"l2"/"l1_l2" (factor 0.01),
            ``{"l1": a, "l2": b}`` or a callable ``weight -> scalar``; summed by
            :func:`convlstm_vp.regularization_loss`.
        name: optional name, shown in ``repr`` and used by :meth:`tag` for TensorBoard tags.
        trainable: False creates the cell frozen (see :meth:`freeze`).
        store_gradients: keep the last backward's gradients for :meth:`get_gradients`.
        grad_scale: multiplies the gradient sent back to ``x`` (-1 reverses it); identity
            forward, the cell's own weight gradients are unchanged.
        check_finite: raise :class:`~convlstm_vp.nn.NonFiniteInputError` (a ``ValueError``)
            when ``x`` or ``state`` holds NaN/Inf (one ``isfinite().all()`` per call; False
            skips it).

    Shapes (channels-first; ``data_format="channels_last"`` moves ``C``/``H`` last):
        x: ``(B, C, *spatial)`` or unbatched ``(C, *spatial)``.
        state: ``(h, c)`` each ``(B, H, *spatial_out)``; ``None`` means zeros.
        returns ``(h, c)`` with ``spatial_out`` the input convolution's output size.

    Dropout masks are drawn at the first step after :meth:`reset_dropout_masks` and reused
    until the next reset; :class:`ConvLSTM` resets them at the start of every sequence.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int | Sequence[int] = 3,
        *,
        spatial_dims: int = 2,
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = "same",
        dilation: int | Sequence[int] = 1,
        recurrent_kernel_size: int | Sequence[int] | None = None,
        bias: bool = True,
        activation: Activation = "tanh",
        recurrent_activation: Activation = "sigmoid",
        output_activation: Activation | None = None,
        unit_forget_bias: bool = True,
        peephole: bool = False,
        peephole_size: Sequence[int] | None = None,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        proj_size: int = 0,
        data_format: str = "channels_first",
        implementation: ImplementationArg = "auto",
        kernel_initializer: Initializer = "glorot_uniform",
        recurrent_initializer: Initializer = "orthogonal",
        bias_initializer: Initializer = "zeros",
        peephole_initializer: Initializer = "zeros",
        kernel_regularizer: RegularizerArg = None,
        recurrent_regularizer: RegularizerArg = None,
        bias_regularizer: RegularizerArg = None,
        name: str | None = None,
        trainable: bool = True,
        store_gradients: bool = False,
        grad_scale: float = 1.0,
        check_finite: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_sizes(spatial_dims, in_channels, hidden_channels, proj_size)
        check_probability("input_dropout", input_dropout)
        check_probability("recurrent_dropout", recurrent_dropout)
        self.data_format = check_data_format(data_format)
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.spatial_dims = spatial_dims
        self.proj_size = proj_size
        self.out_channels = proj_size or hidden_channels
        self._init_geometry(kernel_size, stride, padding, dilation, recurrent_kernel_size)
        self.use_bias = bias
        self.activation = activation
        self.recurrent_activation = recurrent_activation
        self.output_activation = output_activation
        self._act = get_activation(activation, "activation")
        self._rec_act = get_activation(recurrent_activation, "recurrent_activation")
        self._out_act = get_activation(
            activation if output_activation is None else output_activation, "output_activation"
        )
        self.unit_forget_bias = unit_forget_bias
        self.peephole = peephole
        self.input_dropout = float(input_dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.check_finite = check_finite
        self._compiled_fns: dict[str, CompiledStep] | None = None
        self.implementation = implementation  # validated by the property's setter
        self._init_fast_path_flags()
        self._init_parameters(peephole_size, {"device": device, "dtype": dtype})
        self._init = {
            "kernel": get_initializer(kernel_initializer, "kernel_initializer"),
            "recurrent": get_initializer(recurrent_initializer, "recurrent_initializer"),
            "bias": get_initializer(bias_initializer, "bias_initializer"),
            "peephole": get_initializer(peephole_initializer, "peephole_initializer"),
        }
        self._input_mask: Tensor | None = None
        self._recurrent_mask: Tensor | None = None
        self.reset_parameters()
        self.kernel_regularizer = get_regularizer(kernel_regularizer, "kernel_regularizer")
        self.recurrent_regularizer = get_regularizer(recurrent_regularizer, "recurrent_regularizer")
        self.bias_regularizer = get_regularizer(bias_regularizer, "bias_regularizer")
        regs = {"weight_ih": self.kernel_regularizer, "weight_hh": self.recurrent_regularizer}
        if proj_size:
            regs["weight_hr"] = self.kernel_regularizer
        if bias:
            regs.update(bias_ih=self.bias_regularizer, bias_hh=self.bias_regularizer)
        self._init_controls(
            name=name, trainable=trainable, store_gradients=store_gradients, grad_scale=grad_scale, regularizers=regs
        )

    def _init_geometry(self, kernel_size, stride, padding, dilation, recurrent_kernel_size) -> None:
        """Kernel, stride, padding and dilation per spatial dim, and the per-step convolution
        arguments resolved once (no padding arithmetic inside the time loop)."""
        n = self.spatial_dims
        self.kernel_size = expand(kernel_size, n, "kernel_size") if n else ()
        self.stride = expand(stride, n, "stride") if n else ()
        self.dilation = expand(dilation, n, "dilation") if n else ()
        self.padding = normalize_padding(padding, n) if n else "valid"
        rk = kernel_size if recurrent_kernel_size is None else recurrent_kernel_size
        self.recurrent_kernel_size = expand(rk, n, "recurrent_kernel_size") if n else ()
        # state-to-state: stride 1, dilation 1, "same" (the pads do not depend on the frame size)
        self._hh_pads = tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in self.recurrent_kernel_size)
        self._hh_padding = tuple(lo for lo, _ in self._hh_pads) if all(lo == hi for lo, hi in self._hh_pads) else None
        self._ih_pads_cache: dict[tuple[int, ...], tuple[tuple[int, int], ...]] = {}
        self._conv_fn = (None, F.conv1d, F.conv2d, F.conv3d)[n]

    def _init_fast_path_flags(self) -> None:
        """Which shortcuts the fused paths may take for this cell's configuration."""
        n = self.spatial_dims
        self._standard_gates = (
            activation_name(self.activation) == "tanh"
            and activation_name(self.recurrent_activation) == "sigmoid"
            and (self.output_activation is None or activation_name(self.output_activation) == "tanh")
            and not self.peephole
        )
        # unfold + matrix product instead of a convolution with very few input channels
        self._matmul_ok = (
            n > 0 and all(v == 1 for v in self.dilation) and self.in_channels * math.prod(self.kernel_size) <= 32
        )
        # one convolution over [x, h]: both convolutions must see the same frame with the same pads
        self._concat_ok = n == 0 or (
            all(v == 1 for v in self.stride)
            and all(v == 1 for v in self.dilation)
            and self.kernel_size == self.recurrent_kernel_size
            and self._hh_padding is not None
            and self.padding in ("same", self._hh_pads)
        )

    def _init_parameters(self, peephole_size: Sequence[int] | None, factory: dict[str, Any]) -> None:
        """Create (uninitialised) ``weight_ih``, ``weight_hh``, biases, peepholes and ``weight_hr``."""
        n, hidden, g = self.spatial_dims, self.hidden_channels, 4 * self.hidden_channels
        self.weight_ih = nn.Parameter(torch.empty(g, self.in_channels, *self.kernel_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(g, self.out_channels, *self.recurrent_kernel_size, **factory))
        if self.use_bias:
            self.bias_ih = nn.Parameter(torch.empty(g, **factory))
            self.bias_hh = nn.Parameter(torch.empty(g, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.peephole_size = None
        if self.peephole:
            if peephole_size is not None:
                pshape = tuple(expand(tuple(peephole_size), n, "peephole_size")) if n else ()
            else:
                pshape = (1,) * n
            self.peephole_size = pshape
            self.weight_ci = nn.Parameter(torch.empty(hidden, *pshape, **factory))
            self.weight_cf = nn.Parameter(torch.empty(hidden, *pshape, **factory))
            self.weight_co = nn.Parameter(torch.empty(hidden, *pshape, **factory))
        if self.proj_size:
            self.weight_hr = nn.Parameter(torch.empty(self.proj_size, hidden, **factory))

    # ------------------------------------------------------------------ parameters
    @torch.no_grad()
    def reset_parameters(self) -> None:
        self._init["kernel"](self.weight_ih)
        self._init["recurrent"](self.weight_hh)
        if self.proj_size:
            self._init["kernel"](self.weight_hr)
        if self.bias_ih is not None:
            self._init["bias"](self.bias_ih)
            self._init["bias"](self.bias_hh)
            if self.unit_forget_bias:
                h = self.hidden_channels
                self.bias_ih[h : 2 * h].fill_(1.0)
                self.bias_hh[h : 2 * h].fill_(0.0)
        if self.peephole:
            for w in (self.weight_ci, self.weight_cf, self.weight_co):
                self._init["peephole"](w)

    def is_plain_lstm(self) -> bool:
        """True when the cell computes exactly ``torch.nn.LSTM``'s equations (rank 0 fast path)."""
        return (
            self.spatial_dims == 0
            and activation_name(self.activation) == "tanh"
            and activation_name(self.recurrent_activation) == "sigmoid"
            and (self.output_activation is None or activation_name(self.output_activation) == "tanh")
            and not self.peephole
            and self.input_dropout == 0.0
            and self.recurrent_dropout == 0.0
        )

    def flat_weights(self) -> list[Tensor]:
        """Weights in ``torch.lstm``'s order: w_ih, w_hh, [b_ih, b_hh], [w_hr]."""
        ws = [self.weight_ih, self.weight_hh]
        if self.bias_ih is not None:
            ws += [self.bias_ih, self.bias_hh]
        if self.proj_size:
            ws.append(self.weight_hr)
        return ws

    # ------------------------------------------------------------------ shapes
    def output_spatial_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Spatial size of the state for an input of spatial size ``spatial``."""
        pads = resolve_pads(self.padding, spatial, self.kernel_size, self.stride, self.dilation)
        out = tuple(
            conv_output_size(s, p, k, st, d)
            for s, p, k, st, d in zip(spatial, pads, self.kernel_size, self.stride, self.dilation)
        )
        if any(o <= 0 for o in out):
            raise ValueError(
                f"kernel_size={self.kernel_size} with dilation={self.dilation} and padding="
                f"{self.padding!r} is larger than the input's spatial size {tuple(spatial)}"
            )
        if self.peephole and any(v != 1 for v in self.peephole_size) and out != self.peephole_size:
            raise ValueError(
                f"peephole_size={self.peephole_size} must equal the state's spatial size {out} "
                f"for an input of spatial size {tuple(spatial)}"
            )
        return out

    def initial_state(self, batch: int, spatial_out: Sequence[int], device=None, dtype=None) -> State:
        """Zero state ``(h, c)`` for ``batch`` sequences, internal channels-first layout."""
        h = torch.zeros(batch, self.out_channels, *spatial_out, device=device, dtype=dtype)
        c = torch.zeros(batch, self.hidden_channels, *spatial_out, device=device, dtype=dtype)
        return h, c

    # ------------------------------------------------------------------ dropout masks
    def reset_dropout_masks(self) -> None:
        """Forget the current dropout masks; the next step draws new ones."""
        self._input_mask = None
        self._recurrent_mask = None

    def _mask(self, current: Tensor | None, like: Tensor, p: float) -> Tensor:
        if current is not None and current.shape == like.shape and current.device == like.device:
            return current
        return F.dropout(torch.ones_like(like), p, training=True)

    # ------------------------------------------------------------------ computation
    def _ih_pads(self, spatial: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """Input-convolution pads for a frame of size ``spatial``, resolved once per size."""
        key = tuple(spatial)
        if torch.compiler.is_compiling():
            # a cache filled while tracing would fail the compiled code's guards on the next call
            return resolve_pads(self.padding, key, self.kernel_size, self.stride, self.dilation)
        pads = self._ih_pads_cache.get(key)
        if pads is None:
            pads = resolve_pads(self.padding, key, self.kernel_size, self.stride, self.dilation)
            self._ih_pads_cache[key] = pads
        return pads

    def _bias(self) -> Tensor | None:
        return None if self.bias_ih is None else self.bias_ih + self.bias_hh

    def _input_conv(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """Input-to-state term of a batch of frames ``(N, C, *spatial)``: ``(N, 4H, *spatial_out)``."""
        if self.spatial_dims == 0:
            return F.linear(x, self.weight_ih, bias)
        if self._matmul_ok and self.paths(x.device.type).matmul_input:
            return self._input_matmul(x, bias)
        return conv_nd(x, self.weight_ih, bias, self._ih_pads(x.shape[2:]), self.stride, self.dilation)

    def _input_matmul(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """The input convolution as unfold + one matrix product, for very few input channels.

        ``(N, C, *spatial)`` → patches ``(N·prod(spatial_out), C·prod(kernel))`` → times
        ``weight_ih`` flattened to ``(4H, C·prod(kernel))``, returned as ``(N, 4H, *spatial_out)``.
        """
        n = self.spatial_dims
        flat: list[int] = []
        for lo, hi in reversed(self._ih_pads(x.shape[2:])):  # F.pad takes the last dimension first
            flat += [lo, hi]
        cols = F.pad(x, flat) if any(flat) else x
        for d, (k, st) in enumerate(zip(self.kernel_size, self.stride)):
            cols = cols.unfold(2 + d, k, st)  # (N, C, *spatial_out, *kernel)
        out_size = cols.shape[2 : 2 + n]
        cols = cols.permute(0, *range(2, 2 + n), 1, *range(2 + n, 2 + 2 * n)).reshape(-1, self.weight_ih[0].numel())
        w = self.weight_ih.reshape(self.weight_ih.shape[0], -1)
        out = cols @ w.t() if bias is None else torch.addmm(bias, cols, w.t())
        # in the state's layout: the gate arithmetic is fastest when gates and state agree (the
        # matrix product's rows are already channels-last)
        out = out.view(x.shape[0], *out_size, w.shape[0]).movedim(-1, 1)
        return out if self._channels_last(x.device.type) else out.contiguous()

    def _hh_conv(self, h: Tensor) -> Tensor:
        """State-to-state term (stride 1, "same"), no bias."""
        if self.spatial_dims == 0:
            return F.linear(h, self.weight_hh)
        if self._hh_padding is not None:
            return self._conv_fn(h, self.weight_hh, None, 1, self._hh_padding)
        return conv_nd(h, self.weight_hh, None, self._hh_pads)

    def input_transform(self, x: Tensor) -> Tensor:
        """Input-to-state convolution of a whole sequence at once, biases included.

        Args:
            x: ``(B, T, C, *spatial)`` internal layout.
        Returns:
            ``(B, T, 4H, *spatial_out)``.
        """
        b, t = x.shape[:2]
        if self.training and self.input_dropout > 0:
            self._input_mask = self._mask(self._input_mask, x[:, 0], self.input_dropout)
            x = x * self._input_mask.unsqueeze(1)
        out = self._input_conv(x.reshape(b * t, *x.shape[2:]), self._bias())
        return out.reshape(b, t, *out.shape[1:])

    def _recurrent_dropout(self, h: Tensor) -> Tensor:
        if self.training and self.recurrent_dropout > 0:
            self._recurrent_mask = self._mask(self._recurrent_mask, h, self.recurrent_dropout)
            h = h * self._recurrent_mask
        return h

    def recurrent_step(self, xg: Tensor, state: State) -> State:
        """One step given the precomputed input term ``xg`` ``(B, 4H, *spatial_out)``."""
        h, c = state
        return self._run("recurrent", xg, self._recurrent_dropout(h), c)

    def step(self, x: Tensor, state: State) -> State:
        """One step from the raw input, internal layout, no shape checks (for model loops).

        Args:
            x: ``(B, C, *spatial)`` channels-first frame.
            state: ``(h, c)`` each ``(B, H, *spatial_out)`` (e.g. from :meth:`initial_state`).
        Returns:
            ``(h, c)``. With the fused paths and a "same"/stride-1 cell the two convolutions run
            as one over ``[x, h]``; the input dropout mask is the one :meth:`input_transform` uses.
        """
        h, c = state
        if self.training and self.input_dropout > 0:
            self._input_mask = self._mask(self._input_mask, x, self.input_dropout)
            x = x * self._input_mask
        return self._run("step", x, self._recurrent_dropout(h), c)

    def first_step(self, a: Tensor, c: Tensor, batched: bool) -> State:
        """The step from a zero ``h``: no state-to-state convolution (its result is zero).

        ``a`` is the precomputed input term ``xg`` (``batched=True``) or the raw frame ``x``.
        ``c`` is the initial cell state (zeros from :meth:`initial_state`).
        """
        if not batched and self.training and self.input_dropout > 0:
            self._input_mask = self._mask(self._input_mask, a, self.input_dropout)
            a = a * self._input_mask
        return self._run("first_recurrent" if batched else "first_step", a, None, c)

    _CORES = {
        "recurrent": "_recurrent_core",
        "step": "_step_core",
        "first_recurrent": "_first_recurrent_core",
        "first_step": "_first_step_core",
    }

    def paths(self, device_type: str) -> Implementation:
        """The computation paths this cell takes on a device of type ``device_type``."""
        if torch.compiler.is_compiling():  # no cache filled while tracing (see _ih_pads)
            return resolve_implementation(self.implementation, device_type)
        impl = self._paths_cache.get(device_type)
        if impl is None:
            impl = self._paths_cache[device_type] = resolve_implementation(self.implementation, device_type)
        return impl

    @property
    def implementation(self) -> ImplementationArg:
        """The ``implementation`` argument; assigning a new one switches the paths."""
        return self._implementation

    @implementation.setter
    def implementation(self, value: ImplementationArg) -> None:
        self._implementation = check_implementation(value)
        self._paths_cache: dict[str, Implementation] = {}
        self._compiled_fns = None

    def _run(self, which: str, a: Tensor, h: Tensor | None, c: Tensor) -> State:
        if not self.paths(a.device.type).compile:
            return getattr(self, self._CORES[which])(a, h, c)
        if self._compiled_fns is None:
            what = f"ConvLSTMCell(spatial_dims={self.spatial_dims})"
            self._compiled_fns = {
                k: CompiledStep(getattr(self, name), f"{what} {k.replace('_', ' ')}") for k, name in self._CORES.items()
            }
        return self._compiled_fns[which](a, h, c)

    def _channels_last(self, device_type: str) -> bool:
        return self.spatial_dims >= 2 and device_type == "cpu" and self.paths("cpu").channels_last

    def _layout(self, *ts: Tensor | None) -> tuple[Tensor | None, ...]:
        """``ts`` in the channels-last format where the paths step in it (``channels_last``:
        CPU, 2-D/3-D cells), else unchanged; a tensor already in it is not copied."""
        if not self._channels_last(next(t for t in ts if t is not None).device.type):
            return ts
        fmt = torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d
        return tuple(None if t is None else t.contiguous(memory_format=fmt) for t in ts)

    def _first_recurrent_core(self, xg: Tensor, h: None, c: Tensor) -> State:
        xg, c = self._layout(xg, c)
        return self._update(xg, c)

    def _first_step_core(self, x: Tensor, h: None, c: Tensor) -> State:
        x, c = self._layout(x, c)
        return self._update(self._input_conv(x, self._bias()), c)

    def _recurrent_core(self, xg: Tensor, h: Tensor, c: Tensor) -> State:
        if self.spatial_dims == 0 and xg.dim() == 2:
            return self._update(torch.addmm(xg, h, self.weight_hh.t()), c)
        xg, h, c = self._layout(xg, h, c)
        return self._update(xg, c, self._hh_conv(h))

    def _step_core(self, x: Tensor, h: Tensor, c: Tensor) -> State:
        bias = self._bias()
        paths = self.paths(x.device.type)
        x, h, c = self._layout(x, h, c)
        if paths.fused_conv and self._concat_ok and not (paths.matmul_input and self._matmul_ok):
            w = torch.cat([self.weight_ih, self.weight_hh], dim=1)
            xh = torch.cat([x, h], dim=1)
            if self.spatial_dims == 0:
                gates = F.linear(xh, w, bias)
            else:
                gates = self._conv_fn(xh, w, bias, 1, self._hh_padding)
        else:
            return self._update(self._input_conv(x, bias), c, self._hh_conv(h))
        return self._update(gates, c)

    def _update(self, gates: Tensor, c: Tensor, other: Tensor | None = None) -> State:
        """Gate arithmetic: ``(h_t, c_t)`` from the pre-activations ``gates (+ other)`` and ``c_{t-1}``."""
        paths = self.paths(gates.device.type)
        if paths.fused_gates and self._standard_gates:
            h, c = lstm_gates(gates, c, paths.native_gates, other)
        else:
            if other is not None:
                gates = gates + other
            i, f, g, o = gates.chunk(4, dim=1)
            if self.peephole:
                i = i + self.weight_ci * c
                f = f + self.weight_cf * c
            i = self._rec_act(i)
            f = self._rec_act(f)
            g = self._act(g)
            c = f * c + i * g
            if self.peephole:
                o = o + self.weight_co * c
            h = self._rec_act(o) * self._out_act(c)
        if self.proj_size:
            h = F.linear(h, self.weight_hr)
        return h, c

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_compiled_fns"] = None  # compiled code is rebuilt on first use, never copied
        return state

    def forward(self, x: Tensor, state: State | None = None) -> State:
        """One time step.

        Args:
            x: ``(B, C, *spatial)`` (or ``(B, *spatial, C)`` with channels_last), or unbatched.
            state: ``(h, c)`` in the same layout, or ``None`` for zeros.
        Returns:
            ``(h, c)`` in the same layout as ``x``.
        """
        n = self.spatial_dims
        unbatched = self.check_input(x)
        self.check_state_tuple(state, x.dim(), unbatched)
        given = tuple(x.shape)
        if unbatched:
            x = x.unsqueeze(0)
            if state is not None:
                state = (state[0].unsqueeze(0), state[1].unsqueeze(0))
        x = frame_to_internal(x, n, self.data_format)
        self.check_input_channels(x, given)
        self.check_values(x, state)
        x = self._controls_before_forward(x)
        spatial_out = self.output_spatial_size(x.shape[2:])
        if state is None:
            hc = self.initial_state(x.shape[0], spatial_out, x.device, x.dtype)
        else:
            hc = (frame_to_internal(state[0], n, self.data_format), frame_to_internal(state[1], n, self.data_format))
            self.check_hidden_size(hc, x.shape[0], spatial_out, unbatched)
        h, c = self.step(x, hc)
        if self._channels_last(h.device.type):  # callers get the default layout back
            h, c = h.contiguous(), c.contiguous()
        h = frame_from_internal(h, n, self.data_format)
        c = frame_from_internal(c, n, self.data_format)
        if unbatched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c

    # ------------------------------------------------------------------ checks of forward's arguments
    def _expected_input(self, batched: bool = True) -> str:
        return describe_frame(self.spatial_dims, self.data_format, batched, channel=f"C={self.in_channels}")

    def check_input(self, x: Tensor) -> bool:
        """TypeError/ValueError unless ``x`` is a tensor of the input's rank (batched or not);
        returns whether it is unbatched."""
        n = self.spatial_dims
        if not isinstance(x, Tensor):
            raise TypeError(f"ConvLSTMCell expects a torch.Tensor input, got {type(x).__name__}")
        if x.dim() not in (n + 1, n + 2):
            raise ValueError(
                f"ConvLSTMCell(spatial_dims={n}, data_format={self.data_format!r}) expects input "
                f"{self._expected_input()} or unbatched {self._expected_input(False)}, got shape {tuple(x.shape)}"
            )
        return x.dim() == n + 1

    def check_state_tuple(self, state: State | None, rank: int, unbatched: bool) -> None:
        """ValueError unless ``state`` is None or ``(h, c)``, two tensors of the input's rank."""
        if state is None:
            return
        if not (
            isinstance(state, (tuple, list))
            and len(state) == 2
            and all(isinstance(t, Tensor) and t.dim() == rank for t in state)
        ):
            got = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in state]
            raise ValueError(
                f"ConvLSTMCell expects state (h, c), each {self._state_layout(unbatched)} "
                f"(data_format={self.data_format!r}), got {got}"
            )

    def check_input_channels(self, x: Tensor, given: tuple[int, ...]) -> None:
        """ValueError unless the batched, channels-first ``x`` has ``in_channels`` channels and a
        floating-point dtype (``given``: its shape as the caller passed it)."""
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"ConvLSTMCell expects input {self._expected_input()} or unbatched {self._expected_input(False)} "
                f"(data_format={self.data_format!r}), got shape {given} with {x.shape[1]} channels"
            )
        if not x.is_floating_point():
            raise TypeError(f"ConvLSTMCell expects a floating-point input, got dtype {x.dtype}")

    def check_values(self, x: Tensor, state: State | None) -> None:
        """The input and state have the weights' dtype and device, and (``check_finite``) no NaN/Inf."""
        check_dtype_device(x, self.weight_ih, "input x", "ConvLSTMCell")
        if state is not None:
            check_dtype_device(state[0], self.weight_hh, "state h", "ConvLSTMCell")
            check_dtype_device(state[1], self.weight_hh, "state c", "ConvLSTMCell")
        if self.check_finite:
            owner = f"ConvLSTMCell(spatial_dims={self.spatial_dims}) (check_finite=True)"
            check_finite(x, "input x", owner)
            if state is not None:
                check_finite(state[0], "state h", owner)
                check_finite(state[1], "state c", owner)

    def check_hidden_size(self, hc: State, batch: int, spatial_out: tuple[int, ...], unbatched: bool) -> None:
        """ValueError unless the internal-layout state ``hc`` has ``h`` ``(B, out_channels,
        *spatial_out)`` and ``c`` ``(B, hidden_channels, *spatial_out)``; the message gives the
        shapes in the caller's layout."""
        want_h = (batch, self.out_channels, *spatial_out)
        want_c = (batch, self.hidden_channels, *spatial_out)
        if tuple(hc[0].shape) == want_h and tuple(hc[1].shape) == want_c:
            return
        n, fmt, batched = self.spatial_dims, self.data_format, not unbatched
        h_user, c_user = (user_frame_shape(t, n, fmt, batched) for t in (want_h, want_c))
        got_h, got_c = (user_frame_shape(tuple(t.shape), n, fmt, batched) for t in hc)
        raise ValueError(
            f"ConvLSTMCell expects state (h, c), each {self._state_layout(unbatched)}, with h {h_user} and "
            f"c {c_user} (data_format={fmt!r}), got {got_h} and {got_c}"
        )

    def _state_layout(self, unbatched: bool) -> str:
        return describe_frame(self.spatial_dims, self.data_format, batched=not unbatched, channel="hidden")

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.hidden_channels}"
        if self.name:
            s = f"name={self.name!r}, " + s
        if self.spatial_dims:
            s += f", kernel_size={self.kernel_size}"
        s += f", spatial_dims={self.spatial_dims}"
        if self.spatial_dims:
            if any(v != 1 for v in self.stride):
                s += f", stride={self.stride}"
            s += f", padding={self.padding!r}"
            if any(v != 1 for v in self.dilation):
                s += f", dilation={self.dilation}"
        if not self.use_bias:
            s += ", bias=False"
        if activation_name(self.activation) != "tanh":
            s += f", activation={activation_name(self.activation)!r}"
        if activation_name(self.recurrent_activation) != "sigmoid":
            s += f", recurrent_activation={activation_name(self.recurrent_activation)!r}"
        if self.output_activation is not None:
            s += f", output_activation={activation_name(self.output_activation)!r}"
        if self.peephole:
            s += f", peephole=True, peephole_size={self.peephole_size}"
        if self.input_dropout:
            s += f", input_dropout={self.input_dropout}"
        if self.recurrent_dropout:
            s += f", recurrent_dropout={self.recurrent_dropout}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.data_format != "channels_first":
            s += f", data_format={self.data_format!r}"
        if self.implementation != "auto":
            s += f", implementation={self.implementation!r}"
        for what in ("kernel", "recurrent", "bias"):
            reg = getattr(self, f"{what}_regularizer")
            if reg is not None:
                s += f", {what}_regularizer={reg!r}"
        controls = self._controls_repr()
        return s + (", " + controls if controls else "")


def set_implementation(module: nn.Module, implementation: ImplementationArg) -> nn.Module:
    """Set ``implementation`` on every :class:`ConvLSTMCell` in ``module`` (a layer, a model);
    see :class:`ConvLSTMCell`. Returns ``module``. Whole-forward compiled code
    (``"graphed"``) held by the modules is dropped and rebuilt on the next call."""
    check_implementation(implementation)
    for m in module.modules():
        if isinstance(m, ConvLSTMCell):
            m.implementation = implementation
        if getattr(m, "_compiled_forward", None) is not None:
            m._compiled_forward = None
    return module
