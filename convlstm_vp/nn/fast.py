"""The computation paths of the ConvLSTM cell and sequence layer, and the one switch over them.

Every path computes the same numbers as the plain equations (within the rounding of the dtype in
use); ``tests/test_fast_paths.py`` checks each one. Callers choose with one argument,
``implementation`` (:class:`Implementation`, :func:`resolve_implementation`):

- ``"plain"``: the equations one operation at a time; the input convolution of all steps as
  one batched call, then per step the state convolution and the gate arithmetic.
- ``"fused"``: the fast paths below, all on.
- ``"compiled"``: ``"fused"`` with each cell step run through ``torch.compile``.
- ``"graphed"``: the GPU path. A module's whole forward (an :class:`~convlstm_vp.nn.ConvLSTM`
  stack, or an encoder-forecaster's encoder, forecaster loop and head together) runs through
  ``torch.compile``: the gate arithmetic of every step fused forward and backward, the
  encoder's input convolutions over all frames in one call, and on CUDA the compiled forward
  and backward replayed as CUDA graphs (``mode="reduce-overhead"``), so a step costs a few
  graph launches instead of thousands of kernel launches. The first call of each shape
  compiles (tens of seconds).
- ``"auto"`` (default): per device: on a CPU what ``scripts/benchmark.py`` measured fastest on
  its kind (:data:`AUTO_ON_CPU`: ``"fused"``, with channels-last steps on AVX512-BF16 CPUs
  without AMX), ``"plain"`` on CUDA (the last path measured fastest there;
  ``"graphed"`` is chosen by name until ``scripts/gpu_check.sh`` has measured it ahead) and
  elsewhere (docs/performance.md).

The fast paths:

- :func:`lstm_gates`: the gate arithmetic fused. On CPU it is one compiled C loop forward and
  one backward (:mod:`convlstm_vp.nn.native`), the input and state convolution outputs summed
  inside in float32. Otherwise it is a few torch operations: one sigmoid over all four gate
  slices (``tanh(x) = 2σ(2x) − 1``), ``c_t`` from one ``addcmul``, one custom autograd node with
  a hand-written backward instead of about twenty, and without autograd (eval /
  ``torch.no_grad``) in-place activations on the gate buffer. Either way the state arithmetic
  runs in float32 when the gates come from a bfloat16/float16 (autocast) convolution, so a
  float32 ``c`` stays float32.
- Per-step work in :class:`~convlstm_vp.nn.ConvLSTMCell`: one convolution over ``[x, h]``
  (``fused_conv``), unfold + matrix product for input convolutions with very few inputs
  (``matmul_input``); in :class:`~convlstm_vp.nn.ConvLSTM`: the input convolution per step on
  CPU instead of batched over time (``batch_input_conv``), no state convolution from a zero
  state (``skip_zero_state``), rank-0 layers through the fused ``torch.lstm`` kernel
  (``torch_lstm``).
"""

from __future__ import annotations

import functools
import os
import shutil
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from . import native


@dataclass(frozen=True)
class Implementation:
    """Which computation paths a cell and a layer take; every choice gives the same numbers.

    Users pick one of the named sets (``implementation="auto" | "plain" | "fused" |
    "compiled"``); single fields are for tests and the benchmark, which compare one path at a
    time.

    Attributes:
        fused_gates: gate arithmetic through :func:`lstm_gates` (sigmoid/tanh cells without
            peepholes); False runs the equations one operation at a time.
        native_gates: with ``fused_gates`` on CPU, the compiled C loop of :mod:`.native`.
        fused_conv: a cell stepped with a raw input computes both convolutions as one over
            ``[x, h]`` (stride 1, dilation 1, "same" padding and equal kernels).
        matmul_input: the input convolution as unfold + one matrix product when it has very
            few inputs per output (``in_channels · prod(kernel_size) <= 32``, dilation 1).
        batch_input_conv: the layer computes the input convolution of all ``T`` steps in one
            call (True) or each frame with its step (False); None: per step on CPU for rank 1-3
            cells whose step is one ``[x, h]`` convolution or a small matrix product, batched
            otherwise.
        skip_zero_state: the first step from a zero state skips the state convolution.
        torch_lstm: rank-0 layers of plain LSTM cells run the fused ``torch.lstm`` kernel.
        compile: each cell step runs through ``torch.compile`` (eager, after one
            ``RuntimeWarning``, where compiling is impossible).
        whole_forward: a module's whole forward (layer stack, encoder-forecaster) runs through
            ``torch.compile`` as one graph (:class:`CompiledForward`); cells inside it run
            their steps as written (no per-step compile).
        cuda_graphs: with ``whole_forward`` on CUDA, the compiled code is replayed as CUDA
            graphs (``torch.compile(mode="reduce-overhead")``); no effect elsewhere.
        channels_last: on CPU, 2-D and 3-D cells step in the channels-last memory format
            (frames, states, convolution outputs and the C gate kernel, which reads that
            layout too), so that oneDNN's convolutions read and write their native layout with
            no reorders between the steps; outputs keep that layout (values unchanged).
    """

    fused_gates: bool = True
    native_gates: bool = True
    fused_conv: bool = True
    matmul_input: bool = True
    batch_input_conv: bool | None = None
    skip_zero_state: bool = True
    torch_lstm: bool = True
    compile: bool = False
    whole_forward: bool = False
    cuda_graphs: bool = False
    channels_last: bool = False


IMPLEMENTATIONS: dict[str, Implementation] = {
    "plain": Implementation(
        fused_gates=False,
        native_gates=False,
        fused_conv=False,
        matmul_input=False,
        batch_input_conv=True,
        skip_zero_state=False,
    ),
    "fused": Implementation(),
    "compiled": Implementation(compile=True),
    # the GPU path: the C gate loop is CPU-only, and under compilation the gates are plain
    # operations that inductor fuses; the encoder's input convolutions batched over all frames
    "graphed": Implementation(native_gates=False, batch_input_conv=True, whole_forward=True, cuda_graphs=True),
}
ImplementationArg = str | Implementation

# "auto" on a CPU, per kind (cpu_kind), as scripts/benchmark.py measured on each (docs/performance.md,
# "auto on the CPU", names the machines). No compiling path: "graphed" and "compiled" compile for
# minutes on a CPU, longer than short jobs run, and measured no faster there.
AUTO_ON_CPU: dict[str, Implementation] = {
    "amx": IMPLEMENTATIONS["fused"],
    "avx512_bf16": replace(IMPLEMENTATIONS["fused"], channels_last=True),
    "avx512": IMPLEMENTATIONS["fused"],
    "avx2": IMPLEMENTATIONS["fused"],
    "other": IMPLEMENTATIONS["fused"],
}


def check_implementation(value: ImplementationArg) -> ImplementationArg:
    """``value`` if it names an implementation ("auto" or a key of :data:`IMPLEMENTATIONS`) or is one."""
    if isinstance(value, Implementation) or (isinstance(value, str) and (value == "auto" or value in IMPLEMENTATIONS)):
        return value
    raise ValueError(
        f"implementation: expected 'auto', {', '.join(repr(k) for k in IMPLEMENTATIONS)} or an Implementation, got {value!r}"
    )


#: what "auto" is on CUDA: "plain", the path last measured fastest there (docs/performance.md, "On a
#: GPU"), until scripts/gpu_check.sh has measured "graphed" ahead of it on a GPU
CUDA_AUTO = "plain"


def resolve_implementation(value: ImplementationArg, device_type: str) -> Implementation:
    """The paths that ``value`` means on a device of type ``device_type`` ("cpu", "cuda", ...).

    "auto" is, on a CPU, what measured fastest on its kind (:data:`AUTO_ON_CPU`), "plain" on
    CUDA (:data:`CUDA_AUTO`) and elsewhere (docs/performance.md); "graphed" is chosen by name.
    """
    if isinstance(value, Implementation):
        return value
    if value == "auto" and device_type == "cpu":
        return AUTO_ON_CPU[cpu_kind()]
    if value == "auto":
        value = CUDA_AUTO if device_type == "cuda" else "plain"
    return IMPLEMENTATIONS[value]


@functools.cache  # the CPU does not change within a process; asked on every layer call under autocast
def cpu_bf16_supported() -> bool:
    """Whether torch's oneDNN has bfloat16 primitives on this CPU (AVX-512 or newer), as torch
    itself checks. Without them (an AVX2-only CPU) bfloat16 autocast is emulated by slow
    fallbacks, and ``torch.lstm`` under bfloat16 autocast fails to build its oneDNN primitive.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU has bfloat16 arithmetic instructions (``avx512_bf16`` or ``amx_bf16``),
    so that bfloat16 autocast is faster than float32 (``precision: auto``).

    oneDNN also runs bfloat16 on AVX-512 CPUs without them (Skylake to Ice Lake servers), by
    converting to float32: there the Moving MNIST training step measured 2.2x slower in bfloat16
    than in float32 (docs/results/2026-11-29-gpu-path.md), and on an AVX2-only CPU 16x slower.
    The flags are read from ``/proc/cpuinfo``; where it cannot be read (not Linux), oneDNN's
    own check (:func:`cpu_bf16_supported`) decides.
    """
    flags = _cpu_flags()
    if flags is None:
        return cpu_bf16_supported()
    return cpu_bf16_supported() and ("avx512_bf16" in flags or "amx_bf16" in flags)


def _cpu_flags() -> frozenset[str] | None:
    """The instruction-set flags of ``/proc/cpuinfo``, None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), None)
    except OSError:
        return None
    return None if flags is None else frozenset(flags)


CPU_KINDS = ("amx", "avx512_bf16", "avx512", "avx2", "other")


@functools.cache
def cpu_kind() -> str:
    """The kind of CPU for the speed choices (:data:`CPU_KINDS`): ``"amx"`` (bfloat16 matrix
    units, ``amx_bf16``), ``"avx512_bf16"`` (bfloat16 vector instructions, no AMX),
    ``"avx512"`` (AVX-512 without bfloat16), ``"avx2"``, or ``"other"`` (anything else, or
    flags that cannot be read)."""
    flags = _cpu_flags() or frozenset()
    for kind, flag in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return kind
    return "other"


def cpu_bf16_autocast_emulated(device_type: str) -> bool:
    """True inside a CPU bfloat16 autocast region on a CPU without oneDNN bfloat16 primitives."""
    return (
        device_type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and not cpu_bf16_supported()
    )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """bfloat16/float16 state arithmetic runs in float32; float32/float64 as they are."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _gates_forward(gates: Tensor, c: Tensor, cdt: torch.dtype, inplace: bool) -> tuple[Tensor, ...]:
    """Activations, ``c_t``, ``tanh(c_t)`` and ``h_t`` in ``cdt``.

    ``tanh(x) = 2·σ(2x) − 1`` lets one sigmoid cover all four gate slices (the candidate slice is
    scaled by 2 first) and gives ``tanh(c_t)`` from a sigmoid too: on CPU ``torch.tanh`` costs
    several times a sigmoid. The absolute difference to ``torch.tanh`` is below 1e-6 (float32).
    """
    hsz = c.shape[1]
    act = gates if (inplace and gates.dtype == cdt) else gates.to(cdt, copy=True)
    cand = act[:, 2 * hsz : 3 * hsz]
    cand.mul_(2.0)
    act.sigmoid_()
    cand.mul_(2.0).sub_(1.0)  # tanh(g)
    i, f, g, o = act.chunk(4, dim=1)
    c_prev = c.to(cdt)
    c_new = torch.addcmul(f * c_prev, i, g)
    tanh_c = torch.sigmoid(c_new * 2.0).mul_(2.0).sub_(1.0)
    return act, c_prev, c_new, tanh_c, o * tanh_c


class _LSTMGates(torch.autograd.Function):
    """Gate arithmetic with a hand-written backward: saves the activations, not every temporary.

    The backward is differentiable too: under ``create_graph=True`` (gradient penalties, Hessian
    products, meta-learning) it recomputes the gate equations from the saved inputs with
    differentiable operations, so second derivatives are exact on this path as on the plain one.
    """

    @staticmethod
    def forward(
        ctx: Any,
        gates: Tensor,
        other: Tensor | None,
        c: Tensor,
        use_native: bool,  # type: ignore[override]
    ) -> tuple[Tensor, Tensor]:
        ctx.dtypes = (gates.dtype, None if other is None else other.dtype, c.dtype)
        ctx.native = use_native and native.usable(gates, c, other)
        # the inputs too (references, no copies), for a differentiable backward under create_graph
        inputs = (gates, other, c)
        if ctx.native:  # one C loop (convlstm_vp.nn.native); float32 state, float32/bfloat16 gates
            h, c_new, act, tanh_c = native.forward(gates, c, save=True, other=other)
            ctx.save_for_backward(act, c, tanh_c, *inputs)
            return h, c_new
        if other is not None:
            gates = gates + other
        out_dtype = torch.promote_types(gates.dtype, c.dtype)
        act, c_prev, c_new, tanh_c, h = _gates_forward(gates, c, _compute_dtype(out_dtype), inplace=False)
        ctx.save_for_backward(act, c_prev, tanh_c, *inputs)
        return h.to(out_dtype), c_new.to(out_dtype)

    @staticmethod
    def backward(
        ctx: Any,
        dh: Tensor,
        dc: Tensor,  # type: ignore[override]
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable too
            return _LSTMGates._differentiable_backward(ctx, dh, dc)
        return _LSTMGates._fast_backward(ctx, dh, dc)

    @staticmethod
    def _differentiable_backward(
        ctx: Any, dh: Tensor, dc: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        """The gradients as differentiable functions of the saved inputs and of ``dh``, ``dc``."""
        gates, other, c = ctx.saved_tensors[3:]
        wrt = [t for t in (gates, other, c) if t is not None and t.requires_grad]
        h, c_new = _gates_formula(gates if other is None else gates + other, c)
        found = iter(torch.autograd.grad((h, c_new), wrt, (dh, dc), create_graph=True, allow_unused=True))
        return tuple(next(found) if (t is not None and t.requires_grad) else None for t in (gates, other, c)) + (None,)  # type: ignore[return-value]

    @staticmethod
    def _fast_backward(ctx: Any, dh: Tensor, dc: Tensor) -> tuple[Tensor, Tensor | None, Tensor, None]:
        act, c_prev, tanh_c = ctx.saved_tensors[:3]
        g_dtype, o_dtype, c_dtype = ctx.dtypes
        if ctx.native:
            dgates, dc_prev = native.backward(act, c_prev, tanh_c, dh, dc, g_dtype)
            return dgates, (None if o_dtype is None else dgates.to(o_dtype)), dc_prev, None
        cdt = act.dtype
        hsz = c_prev.shape[1]
        i, f, g, o = act.chunk(4, dim=1)
        dh = dh.to(cdt)
        dc = dc.to(cdt)
        # dL/dc_t = dc + dh · o · (1 − tanh²(c_t))
        dct = torch.addcmul(dc, dh, torch.mul(tanh_c, tanh_c).neg_().add_(1.0).mul_(o))
        # activation derivatives: σ' = s(1 − s) on i, f, o; tanh' = 1 − g² on the candidate
        deriv = torch.addcmul(act, act, act, value=-1.0)
        torch.addcmul(torch.ones((), dtype=cdt, device=act.device), g, g, value=-1.0, out=deriv[:, 2 * hsz : 3 * hsz])
        dgates = torch.empty_like(act)
        di, df, dg, do = dgates.chunk(4, dim=1)
        torch.mul(dct, g, out=di)
        torch.mul(dct, c_prev, out=df)
        torch.mul(dct, i, out=dg)
        torch.mul(dh, tanh_c, out=do)
        dgates.mul_(deriv)
        d_other = None if o_dtype is None else dgates.to(o_dtype)
        return dgates.to(g_dtype), d_other, (dct * f).to(c_dtype), None


def _gates_formula(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The gate equations as plain operations (tanh written as a sigmoid), for torch.compile."""
    out_dtype = torch.promote_types(gates.dtype, c.dtype)
    cdt = _compute_dtype(out_dtype)
    i, f, g, o = gates.to(cdt).chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c.to(cdt) + torch.sigmoid(i) * (2.0 * torch.sigmoid(2.0 * g) - 1.0)
    h = torch.sigmoid(o) * (2.0 * torch.sigmoid(2.0 * c_new) - 1.0)
    return h.to(out_dtype), c_new.to(out_dtype)


def lstm_gates(gates: Tensor, c: Tensor, use_native: bool = True, other: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(h_t, c_t)`` from the pre-activation gates and ``c_{t-1}`` (sigmoid/tanh LSTM).

    Args:
        gates: ``(B, 4H, *spatial)`` pre-activations in the order i, f, g, o. Without autograd
            a float32 buffer is overwritten (it must not be needed afterwards).
        c: ``(B, H, *spatial)`` cell state.
        use_native: on CPU, with a float32 ``c`` and float32/bfloat16 contiguous tensors, run
            the compiled C kernel of :mod:`convlstm_vp.nn.native` (built on first use; without
            a C compiler the torch-operations path runs, after one ``RuntimeWarning``).
        other: a second pre-activation term of the same shape (the state convolution), added
            to ``gates`` in float32 inside the kernel instead of by a separate addition.
    Returns:
        ``h_t = σ(o) ∘ tanh(c_t)`` and ``c_t = σ(f) ∘ c + σ(i) ∘ tanh(g)`` in the promoted dtype
        of ``gates`` and ``c`` (float32 when the gates come from a bfloat16 convolution and ``c``
        is float32); bfloat16/float16 inputs are computed in float32.

    With autograd, one custom backward node replaces about twenty autograd nodes; under
    ``create_graph=True`` its backward is itself differentiable (second derivatives are exact).
    """
    if torch.compiler.is_compiling():
        # inside torch.compile: plain differentiable operations, which inductor fuses forward and
        # backward (a ctypes call or a custom autograd node would only break the graph)
        return _gates_formula(gates if other is None else gates + other, c)
    if torch.is_grad_enabled() and (
        gates.requires_grad or c.requires_grad or (other is not None and other.requires_grad)
    ):
        return _LSTMGates.apply(gates, other, c, use_native)
    if use_native and native.usable(gates, c, other):
        h, c_new, _, _ = native.forward(gates, c, save=False, other=other)
        return h, c_new
    if other is not None:
        gates = gates.add_(other) if gates.dtype == torch.promote_types(gates.dtype, other.dtype) else gates + other
    out_dtype = torch.promote_types(gates.dtype, c.dtype)
    *_, c_new, _, h = _gates_forward(gates, c, _compute_dtype(out_dtype), inplace=True)
    return h.to(out_dtype), c_new.to(out_dtype)


# ---------------------------------------------------------------------------- torch.compile
def compile_unavailable_reason(device_type: str = "cpu") -> str | None:
    """Why ``torch.compile`` cannot run here, or None when it should work.

    The CPU backend (inductor C++ code generation) needs a C++ compiler; ``CXX`` or one of
    ``c++``/``g++``/``clang++`` on ``PATH``.
    """
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device_type == "cpu":
        cxx = os.environ.get("CXX")
        if not ((cxx and shutil.which(cxx)) or any(shutil.which(c) for c in ("c++", "g++", "clang++"))):
            return "the CPU backend of torch.compile needs a C++ compiler (set CXX or install g++/clang++)"
    return None


def _own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a bound method) with a private copy of its code object.

    ``torch.compile`` keeps its cache, and its recompile limit, per code object; every cell of a
    model shares ``_step_core``'s code, so without a copy a few cells times train/eval times
    frame sizes exhaust the limit and the later cells silently run eagerly.
    """
    if not isinstance(fn, types.MethodType):
        return fn
    f = fn.__func__
    g = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    return types.MethodType(g, fn.__self__)


class CompiledStep:
    """A cell's per-step function run through ``torch.compile``, eager if compiling fails.

    The first call compiles (seconds to minutes); an error while compiling or running the
    compiled code warns once and switches this step back to the eager function for good, so a
    machine without a working compiler still trains, only without the speed-up.
    """

    def __init__(self, fn: Callable[..., Any], what: str, **compile_kwargs: Any) -> None:
        self.eager = _own_code(fn)
        self.what = what
        self.compile_kwargs = compile_kwargs
        self.compiled: Callable[..., Any] | None = None
        self.failed: str | None = None

    def __call__(self, *args: Any) -> Any:
        if self.failed is None:
            if self.compiled is None:
                device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
                reason = compile_unavailable_reason(device)
                if reason is not None:
                    self._fail(reason)
                    return self.eager(*args)
                self.compiled = torch.compile(self.eager, **self.compile_kwargs)
            try:
                return self.compiled(*args)
            except Exception as exc:  # compile errors surface at the first call
                self._fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return self.eager(*args)

    def _fail(self, reason: str) -> None:
        self.failed = reason
        warnings.warn(
            f"torch.compile of {self.what} is unavailable ({reason}); running it eagerly", RuntimeWarning, stacklevel=3
        )


class CompiledForward:
    """A module's whole forward through ``torch.compile`` (:attr:`Implementation.whole_forward`).

    ``fn`` takes tensors (and fixed Python settings) and returns a tensor or a tuple/list/
    NamedTuple of tensors and ``None``. Shapes are compiled statically (``dynamic=False``): a new
    batch size or frame size compiles once more. With ``cuda_graphs`` on CUDA the compiled code
    runs as CUDA graphs (``mode="reduce-overhead"``); their outputs live in memory that the next
    call overwrites, so the outputs are returned as copies, which callers may keep across calls
    (an evaluation collecting predictions batch by batch). A training step must call
    ``backward`` before the next training forward (as every training loop does), or CUDA graph
    trees keep both steps' memory.

    Where compiling fails, a ``RuntimeWarning`` says why and ``fn`` runs eagerly from then on
    (:class:`CompiledStep`). Random numbers drawn inside (dropout, scheduled-sampling coins)
    come from inductor's generator: reproducible for a seed, but not the eager path's numbers.
    """

    def __init__(self, fn: Callable[..., Any], what: str, cuda_graphs: bool) -> None:
        self.cuda_graphs = cuda_graphs
        kwargs: dict[str, Any] = {"dynamic": False}
        if cuda_graphs:
            kwargs["mode"] = "reduce-overhead"
        self.step = CompiledStep(fn, what, **kwargs)

    def __call__(self, *args: Any) -> Any:
        out = self.step(*args)
        if self.step.failed is not None:  # ran eagerly: nothing to guard
            return out
        copy = self.cuda_graphs and any(isinstance(a, Tensor) and a.is_cuda for a in args)
        return _map_tensors(
            out, lambda t: _FirstOrderOnly.apply(t, copy) if t.requires_grad else (t.clone() if copy else t)
        )


def _map_tensors(out: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(out, Tensor):
        return fn(out)
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # a NamedTuple
        return type(out)(*(_map_tensors(o, fn) for o in out))
    if isinstance(out, (tuple, list)):
        return type(out)(_map_tensors(o, fn) for o in out)
    return out


class _FirstOrderOnly(torch.autograd.Function):
    """Identity (or a copy) on a compiled forward's output whose backward refuses
    ``create_graph=True`` with an error that names the fix: compiled code has first derivatives
    only (torch.compile's own error would not say which switch to turn)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, copy: bool) -> Tensor:  # type: ignore[override]
        return t.clone() if copy else t.view_as(t)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        if torch.is_grad_enabled():
            raise RuntimeError(
                "implementation 'graphed' (the GPU path) computes first derivatives only; for "
                "create_graph=True (gradient penalties, Hessian-vector products) use implementation='fused' "
                "or 'plain' (convlstm_vp.nn.set_implementation(model, 'fused'))"
            )
        return grad, None
