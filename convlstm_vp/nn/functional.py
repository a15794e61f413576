"""Small building blocks shared by the ConvLSTM cell and layer.

Activation and initializer lookup by name, per-dimension argument expansion, and the
Keras-style padding arithmetic ("valid", "same", explicit numbers) for N-d convolutions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Activation = str | Callable[[Tensor], Tensor]
Initializer = str | Callable[[Tensor], object]
PaddingArg = str | int | Sequence[int] | Sequence[Sequence[int]]


def _hard_sigmoid(x: Tensor) -> Tensor:
    # Keras 3 definition: relu6(x + 3) / 6
    return F.relu6(x + 3.0) / 6.0


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "relu": torch.relu,
    "relu6": F.relu6,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "silu": F.silu,
    "swish": F.silu,
    "softsign": F.softsign,
    "softplus": F.softplus,
    "leaky_relu": F.leaky_relu,
    "hard_tanh": F.hardtanh,
    "linear": lambda x: x,
    "identity": lambda x: x,
}


def get_activation(spec: Activation | None, what: str) -> Callable[[Tensor], Tensor]:
    """Resolve an activation given by name or as a callable."""
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec.lower() in _ACTIVATIONS:
        return _ACTIVATIONS[spec.lower()]
    raise ValueError(f"{what}: expected a callable or one of {sorted(_ACTIVATIONS)}, got {spec!r}")


def activation_name(spec: Activation) -> str:
    return spec if isinstance(spec, str) else getattr(spec, "__name__", repr(spec))


def _lstm_uniform(t: Tensor) -> None:
    # torch.nn.LSTM's default: U(-1/sqrt(hidden), 1/sqrt(hidden)); hidden = rows / 4
    bound = 1.0 / math.sqrt(max(t.shape[0] // 4, 1))
    torch.nn.init.uniform_(t, -bound, bound)


_INITIALIZERS: dict[str, Callable[[Tensor], object]] = {
    "glorot_uniform": torch.nn.init.xavier_uniform_,
    "xavier_uniform": torch.nn.init.xavier_uniform_,
    "glorot_normal": torch.nn.init.xavier_normal_,
    "xavier_normal": torch.nn.init.xavier_normal_,
    "he_uniform": lambda t: torch.nn.init.kaiming_uniform_(t, nonlinearity="relu"),
    "he_normal": lambda t: torch.nn.init.kaiming_normal_(t, nonlinearity="relu"),
    "lecun_uniform": lambda t: torch.nn.init.kaiming_uniform_(t, nonlinearity="linear"),
    "lecun_normal": lambda t: torch.nn.init.kaiming_normal_(t, nonlinearity="linear"),
    "orthogonal": torch.nn.init.orthogonal_,
    "zeros": torch.nn.init.zeros_,
    "ones": torch.nn.init.ones_,
    "lstm_uniform": _lstm_uniform,
    "normal": lambda t: torch.nn.init.normal_(t, 0.0, 0.05),
    "uniform": lambda t: torch.nn.init.uniform_(t, -0.05, 0.05),
}


def get_initializer(spec: Initializer, what: str) -> Callable[[Tensor], object]:
    """Resolve an initializer given by name or as a callable that fills a tensor in place."""
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec.lower() in _INITIALIZERS:
        return _INITIALIZERS[spec.lower()]
    raise ValueError(f"{what}: expected a callable or one of {sorted(_INITIALIZERS)}, got {spec!r}")


def expand(value: int | Sequence[int], n: int, what: str, minimum: int = 1) -> tuple[int, ...]:
    """Expand an int or a length-``n`` sequence into an ``n``-tuple of ints >= ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{what}: expected an int or a sequence of {n} ints, got {value!r}")
    if isinstance(value, int):
        out = (value,) * n
    elif (
        isinstance(value, Sequence)
        and len(value) == n
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        out = tuple(value)
    else:
        raise ValueError(f"{what}: expected an int or a sequence of {n} ints, got {value!r}")
    if any(v < minimum for v in out):
        raise ValueError(f"{what}: every value must be >= {minimum}, got {value!r}")
    return out


def normalize_padding(padding: PaddingArg, n: int) -> str | tuple[tuple[int, int], ...]:
    """Return "valid", "same", or explicit ``((lo, hi), ...)`` pads per spatial dimension.

    Accepted forms: "valid", "same", an int (same pad on both sides of every dim), ``n`` ints
    (symmetric per dim), ``n`` pairs ``(lo, hi)``, or ``2n`` ints ``(lo_0, hi_0, lo_1, hi_1, ...)``.
    """
    if isinstance(padding, str):
        p = padding.lower()
        if p not in ("valid", "same"):
            raise ValueError(f"padding: expected 'valid', 'same' or numbers, got {padding!r}")
        return p
    if isinstance(padding, int) and not isinstance(padding, bool):
        pads = ((padding, padding),) * n
    elif isinstance(padding, Sequence):
        items = list(padding)
        if len(items) == n and all(isinstance(v, int) for v in items):
            pads = tuple((v, v) for v in items)
        elif len(items) == n and all(isinstance(v, Sequence) and len(v) == 2 for v in items):
            pads = tuple((int(a), int(b)) for a, b in items)
        elif len(items) == 2 * n and all(isinstance(v, int) for v in items):
            pads = tuple((items[2 * i], items[2 * i + 1]) for i in range(n))
        else:
            raise ValueError(
                f"padding: expected 'valid', 'same', an int, {n} ints, {n} (lo, hi) pairs or "
                f"{2 * n} ints for spatial_dims={n}, got {padding!r}"
            )
    else:
        raise ValueError(f"padding: expected 'valid', 'same' or numbers, got {padding!r}")
    if any(a < 0 or b < 0 for a, b in pads):
        raise ValueError(f"padding: pads must be >= 0, got {padding!r}")
    return pads


def same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow/Keras "same" pads: output = ceil(size / stride), extra pad on the high side."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def resolve_pads(
    padding: str | tuple[tuple[int, int], ...],
    sizes: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> tuple[tuple[int, int], ...]:
    if padding == "valid":
        return tuple((0, 0) for _ in sizes)
    if padding == "same":
        return tuple(same_pads(s, k, st, d) for s, k, st, d in zip(sizes, kernel, stride, dilation))
    return padding  # type: ignore[return-value]


def conv_output_size(size: int, pads: tuple[int, int], kernel: int, stride: int, dilation: int) -> int:
    return (size + pads[0] + pads[1] - dilation * (kernel - 1) - 1) // stride + 1


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv_nd(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    pads: tuple[tuple[int, int], ...],
    stride: Sequence[int] | int = 1,
    dilation: Sequence[int] | int = 1,
) -> Tensor:
    """N-d convolution (N = 1, 2, 3) with explicit, possibly asymmetric pads per dimension."""
    n = weight.dim() - 2
    if all(lo == hi for lo, hi in pads):
        return _CONV[n](x, weight, bias, stride, tuple(lo for lo, _ in pads), dilation)
    flat: list[int] = []
    for lo, hi in reversed(pads):  # F.pad takes the last dimension first
        flat += [lo, hi]
    return _CONV[n](F.pad(x, flat), weight, bias, stride, 0, dilation)


class NonFiniteInputError(ValueError):
    """An input tensor holds NaN or Inf values (raised when ``check_finite=True``)."""


def check_finite(x: Tensor, what: str, owner: str) -> None:
    """Raise :class:`NonFiniteInputError` naming ``what`` if ``x`` holds NaN or Inf.

    One reduction per call (a host sync on GPU): NaN or ±Inf anywhere makes ``x.sum()``
    non-finite, so a finite sum proves ``x`` finite; only a non-finite sum (or a finite tensor
    whose sum overflows) falls back to the element-wise ``isfinite``. ``owner`` names the module
    and how to switch the check off.
    """
    if x.is_floating_point() or x.is_complex():
        if not (bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())):
            n_nan = int(torch.isnan(x).sum())
            n_inf = int(torch.isinf(x).sum())
            raise NonFiniteInputError(
                f"{owner}: {what} of shape {tuple(x.shape)} holds {n_nan} NaN and {n_inf} Inf values; "
                f"clean the data (or pass check_finite=False to skip this check)"
            )


def check_dtype_device(x: Tensor, param: Tensor, what: str, owner: str) -> None:
    """``TypeError`` if ``x``'s dtype differs from the parameters' (outside ``torch.autocast``),
    ``ValueError`` if it is on another device: clear messages instead of torch's kernel errors."""
    if x.device != param.device:
        raise ValueError(f"{owner}: {what} is on {x.device} but the parameters are on {param.device}; move one of them")
    if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"{owner}: {what} has dtype {x.dtype} but the parameters have dtype {param.dtype}; convert the "
            f"input (x.to({param.dtype})) or the module (.to({x.dtype})), or run under torch.autocast"
        )
