"""A native (C) kernel for the LSTM gate arithmetic on CPU, built on first use.

On CPU the gate arithmetic of a small ConvLSTM step (``B·4H·prod(spatial)`` of a few hundred
thousand values) costs about as much as its convolution when written as torch operations: some
twenty passes over memory and as many operator dispatches, forward and backward. This module
compiles one loop for the forward and one for the backward (vectorised ``expf``), loads it with
``ctypes`` and calls it on the tensors' memory. It is used by
:func:`convlstm_vp.nn.fast.lstm_gates` when

- the tensors are on the CPU, all dense in one memory format (the default, or channels-last for
  2-D/3-D states, :func:`layout`), ``c`` is float32 and the gates are float32 or bfloat16
  (autocast), and
- a C compiler is found (``CC``, ``cc``, ``gcc`` or ``clang``) and the build succeeds.

Anything else, or ``CONVLSTM_VP_NATIVE=0`` in the environment, uses the torch-operations path;
both compute the same values (float32 rounding apart). The library is cached under
``$CONVLSTM_VP_CACHE`` (default ``~/.cache/convlstm_vp``), keyed by the source, the flags and the
compiler, so the build (about a second) happens once per machine.

The build uses ``-ffast-math`` for the vectorised exponential, but compiles and links in two
steps so that the library does not switch the process to flush-denormals-to-zero mode.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t b) {
    uint32_t u = ((uint32_t)b) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, NaN stays NaN */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
/* Keep expf's argument where it cannot overflow (|x| <= 80: the sigmoid is 1 - 2e-35 or 2e-35
   there, float32's own rounding of the exact value): the vectorised expf of -ffast-math gave NaN
   beyond. fminf/fmaxf keep the loop vectorised but drop NaN, so a NaN input (found from its bits,
   which -ffast-math cannot assume away) is passed on unchanged. */
static inline float sigm(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    float xc = fminf(fmaxf(x, -80.0f), 80.0f);
    xc = (u & 0x7fffffffu) > 0x7f800000u ? x : xc;
    return 1.0f / (1.0f + expf(-xc));
}

#define AS_F32(x) (x)
#define AS_BF16(x) bf16_to_f32(x)
#define PLUS_NONE(k) 0.0f
#define PLUS_F32(k) e[k]
#define PLUS_BF16(k) bf16_to_f32(e[k])

/* Pre-activations g (+ e when given), (i, f, g, o) blocks of hs per batch row; state c.
   tanh(x) = 2 sigmoid(2x) - 1. act (i, f, tanh g, o) and tanh(c_t) are stored when save != 0. */
#define FORWARD(NAME, GT, LOAD, PLUS)                                                          \
void NAME(const GT *g, const GT *e, const float *c, float *act, float *c_new, float *tanh_c,   \
          float *h, long batch, long hs, int save, int threads) {                              \
    (void)e;                                                                                   \
    _Pragma("omp parallel for num_threads(threads) if (threads > 1 && batch * hs >= 32768)")   \
    for (long b = 0; b < batch; b++) {                                                         \
        const long go = b * 4 * hs, so = b * hs;                                               \
        _Pragma("omp simd")                                                                    \
        for (long j = 0; j < hs; j++) {                                                        \
            float i = sigm(LOAD(g[go + j]) + PLUS(go + j));                                    \
            float f = sigm(LOAD(g[go + hs + j]) + PLUS(go + hs + j));                          \
            float gg = 2.0f * sigm(2.0f * (LOAD(g[go + 2 * hs + j]) + PLUS(go + 2 * hs + j))) - 1.0f; \
            float o = sigm(LOAD(g[go + 3 * hs + j]) + PLUS(go + 3 * hs + j));                  \
            float cv = f * c[so + j] + i * gg;                                                 \
            float t = 2.0f * sigm(2.0f * cv) - 1.0f;                                           \
            c_new[so + j] = cv;                                                                \
            h[so + j] = o * t;                                                                 \
            if (save) {                                                                        \
                act[go + j] = i; act[go + hs + j] = f;                                         \
                act[go + 2 * hs + j] = gg; act[go + 3 * hs + j] = o;                           \
                tanh_c[so + j] = t;                                                            \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}

FORWARD(lstm_forward_f32, float, AS_F32, PLUS_NONE)
FORWARD(lstm_forward_f32_sum, float, AS_F32, PLUS_F32)
FORWARD(lstm_forward_bf16, uint16_t, AS_BF16, PLUS_NONE)
FORWARD(lstm_forward_bf16_sum, uint16_t, AS_BF16, PLUS_BF16)

#define STORE_F32(x) (x)
#define STORE_BF16(x) f32_to_bf16(x)

/* dL/dc_t = dc + dh o (1 - tanh^2 c_t); gate gradients times the activation derivatives. */
#define BACKWARD(NAME, DT, STORE)                                                              \
void NAME(const float *act, const float *c_prev, const float *tanh_c, const float *dh,         \
          const float *dc, DT *dgates, float *dc_prev, long batch, long hs, int threads) {     \
    _Pragma("omp parallel for num_threads(threads) if (threads > 1 && batch * hs >= 32768)")   \
    for (long b = 0; b < batch; b++) {                                                         \
        const long go = b * 4 * hs, so = b * hs;                                               \
        _Pragma("omp simd")                                                                    \
        for (long j = 0; j < hs; j++) {                                                        \
            float i = act[go + j], f = act[go + hs + j], g = act[go + 2 * hs + j];             \
            float o = act[go + 3 * hs + j], t = tanh_c[so + j], dhv = dh[so + j];              \
            float dct = dc[so + j] + dhv * o * (1.0f - t * t);                                 \
            dgates[go + j] = STORE(dct * g * i * (1.0f - i));                                  \
            dgates[go + hs + j] = STORE(dct * c_prev[so + j] * f * (1.0f - f));                \
            dgates[go + 2 * hs + j] = STORE(dct * i * (1.0f - g * g));                         \
            dgates[go + 3 * hs + j] = STORE(dhv * t * o * (1.0f - o));                         \
            dc_prev[so + j] = dct * f;                                                         \
        }                                                                                      \
    }                                                                                          \
}

BACKWARD(lstm_backward_f32, float, STORE_F32)
BACKWARD(lstm_backward_bf16, uint16_t, STORE_BF16)
"""

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_reason: str | None = None  # why the kernel is unavailable, once known
_warned = False


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc and shutil.which(cc):
        return shutil.which(cc)
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cache_dir() -> Path:
    root = os.environ.get("CONVLSTM_VP_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "convlstm_vp"


def _build(cc: str) -> Path:
    """Compile (or find in the cache) the shared library; raises on failure."""
    base = ["-O3", "-march=native", "-fPIC"]
    key = hashlib.sha256("\0".join([SOURCE, cc, *base, platform.machine(), platform.node()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"lstm_gates_{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, obj, lib = Path(tmp) / "gates.c", Path(tmp) / "gates.o", Path(tmp) / "gates.so"
        src.write_text(SOURCE)
        errors = []
        for openmp in (["-fopenmp"], ["-fopenmp-simd"]):
            # compile with -ffast-math (vectorised expf) but link without it: no crtfastmath.o, so
            # loading the library does not change the process's floating-point mode
            steps = [
                [cc, *base, "-ffast-math", *openmp, "-c", str(src), "-o", str(obj)],
                [cc, "-shared", *openmp, str(obj), "-o", str(lib), "-lm"],
            ]
            try:
                for cmd in steps:
                    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
                break
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
                errors.append(getattr(exc, "stderr", None) or str(exc))
        else:
            raise RuntimeError("compiling the gate kernel failed: " + " | ".join(e.strip()[:300] for e in errors))
        os.replace(lib, target)  # atomic: a concurrent build writes the same file
    return target


def load() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (see :func:`unavailable_reason`)."""
    global _lib, _reason
    if _lib is not None or _reason is not None:
        return _lib
    with _lock:
        if _lib is not None or _reason is not None:
            return _lib
        if os.environ.get("CONVLSTM_VP_NATIVE", "1") == "0":
            _reason = "switched off by CONVLSTM_VP_NATIVE=0"
            return None
        cc = _compiler()
        if cc is None:
            _reason = "no C compiler found (set CC or install cc/gcc/clang)"
            return None
        try:
            lib = ctypes.CDLL(str(_build(cc)))
            p, n, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
            for name in ("lstm_forward_f32", "lstm_forward_f32_sum", "lstm_forward_bf16", "lstm_forward_bf16_sum"):
                getattr(lib, name).argtypes = [p] * 7 + [n, n, i, i]
                getattr(lib, name).restype = None
            for name in ("lstm_backward_f32", "lstm_backward_bf16"):
                getattr(lib, name).argtypes = [p] * 7 + [n, n, i]
                getattr(lib, name).restype = None
            _lib = lib
        except Exception as exc:  # any failure: the torch-operations path takes over
            _reason = f"{type(exc).__name__}: {exc}"
        return _lib


def unavailable_reason() -> str | None:
    """Why the native kernel is not used (None when it is available)."""
    load()
    return _reason


def reset() -> None:
    """Forget the loaded library and any failure, so the next use tries again (tests)."""
    global _lib, _reason, _warned
    with _lock:
        _lib, _reason, _warned = None, None, False


def usable(gates: Tensor, c: Tensor, other: Tensor | None = None) -> bool:
    """Whether :func:`forward` can take these tensors (else the torch path runs)."""
    global _warned
    if not (
        gates.device.type == "cpu"
        and c.device.type == "cpu"
        and c.numel() > 0  # an empty batch: nothing to loop over (the torch path returns empty tensors)
        and c.dtype == torch.float32
        and gates.dtype in (torch.float32, torch.bfloat16)
        and gates.dim() == c.dim()
        and gates.shape[0] == c.shape[0]
        and gates.shape[1] == 4 * c.shape[1]
        and gates.shape[2:] == c.shape[2:]
        and (
            other is None or (other.dtype == gates.dtype and other.shape == gates.shape and other.device.type == "cpu")
        )
        and layout(gates, c, other) is not None
    ):
        return False
    if load() is None:
        if not _warned:
            _warned = True
            warnings.warn(
                f"native LSTM gate kernel unavailable ({_reason}); using torch operations", RuntimeWarning, stacklevel=4
            )
        return False
    return True


def layout(gates: Tensor, c: Tensor, other: Tensor | None = None) -> torch.memory_format | None:
    """The memory format all of the tensors are dense in: ``torch.contiguous_format`` (rows
    ``(i, f, g, o)`` blocks of ``H·prod(spatial)`` per sequence) or channels-last (4-D/5-D; rows
    ``(i, f, g, o)`` blocks of ``H`` per pixel), None when they agree on neither."""
    tensors = [t for t in (gates, c, other) if t is not None]
    formats = [torch.contiguous_format]
    if c.dim() in (4, 5):
        formats.append(torch.channels_last if c.dim() == 4 else torch.channels_last_3d)
    return next((f for f in formats if all(t.is_contiguous(memory_format=f) for t in tensors)), None)


def _rows(c: Tensor, fmt: torch.memory_format) -> tuple[int, int]:
    """``(rows, values per gate block)`` of the kernels' loops for a state ``c`` in ``fmt``."""
    if fmt == torch.contiguous_format:
        return c.shape[0], c[0].numel()
    return c.numel() // c.shape[1], c.shape[1]


def forward(
    gates: Tensor, c: Tensor, save: bool, other: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(h, c_new, act, tanh_c)`` (float32) for the pre-activations ``gates (+ other)``;
    ``act``/``tanh_c`` only with ``save``."""
    lib = load()
    assert lib is not None
    fmt = layout(gates, c, other)
    assert fmt is not None
    batch, hs = _rows(c, fmt)
    h, c_new = torch.empty_like(c, memory_format=fmt), torch.empty_like(c, memory_format=fmt)
    act = torch.empty_like(gates, dtype=torch.float32, memory_format=fmt) if save else None
    tanh_c = torch.empty_like(c, memory_format=fmt) if save else None
    name = (
        "lstm_forward_" + ("bf16" if gates.dtype == torch.bfloat16 else "f32") + ("_sum" if other is not None else "")
    )
    getattr(lib, name)(
        gates.data_ptr(),
        other.data_ptr() if other is not None else None,
        c.data_ptr(),
        act.data_ptr() if save else None,
        c_new.data_ptr(),
        tanh_c.data_ptr() if save else None,
        h.data_ptr(),
        batch,
        hs,
        int(save),
        torch.get_num_threads(),
    )
    return h, c_new, act, tanh_c


def backward(
    act: Tensor, c_prev: Tensor, tanh_c: Tensor, dh: Tensor, dc: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``(dgates, dc_prev)``: gate gradients in ``dtype`` (float32 or bfloat16, rounded to
    nearest even), the state gradient in float32."""
    lib = load()
    assert lib is not None
    fmt = layout(act, c_prev)
    assert fmt is not None  # as the forward left them
    dh = dh.to(torch.float32).contiguous(memory_format=fmt)
    dc = dc.to(torch.float32).contiguous(memory_format=fmt)
    dgates = torch.empty_like(act, dtype=dtype, memory_format=fmt)
    dc_prev = torch.empty_like(c_prev, memory_format=fmt)
    fn = lib.lstm_backward_bf16 if dtype == torch.bfloat16 else lib.lstm_backward_f32
    fn(
        act.data_ptr(),
        c_prev.data_ptr(),
        tanh_c.data_ptr(),
        dh.data_ptr(),
        dc.data_ptr(),
        dgates.data_ptr(),
        dc_prev.data_ptr(),
        *_rows(c_prev, fmt),
        torch.get_num_threads(),
    )
    return dgates, dc_prev
