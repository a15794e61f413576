"""Where and at which precision a job runs: ``train.device`` and ``train.precision`` resolved for
the machine, the training autocast and the one autocast every evaluation and benchmark uses."""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from ..nn.fast import cpu_bf16_native
from .config import ConfigError


def resolve_precision(device: torch.device, precision: str) -> str:
    """``train.precision`` as it runs on ``device``: ``auto`` is bf16 where the device computes
    bfloat16 natively (a CUDA GPU that supports it; a CPU with AVX512_BF16 or AMX instructions,
    see :func:`convlstm_vp.nn.fast.cpu_bf16_native`) and fp32 elsewhere; other values as given.
    An explicit bf16 on a CPU that only emulates it warns: it runs, several times slower."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_bf16_native() else "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        warnings.warn(
            "train.precision=bf16 on a CPU without native bfloat16 (no AVX512_BF16/AMX instructions): autocast "
            "emulates it, 2x (AVX-512) to 16x (AVX2) slower than fp32 in the ConvLSTM training steps measured on "
            "such CPUs; use train.precision=auto (fp32 here) or fp32",
            RuntimeWarning,
            stacklevel=2,
        )
    return precision


def training_precision(device: torch.device, precision: str) -> tuple[Any, bool, str]:
    """``train.precision`` on ``device``: the forward pass's autocast context (a no-op for fp32),
    whether fp16 needs a gradient scaler, and the precision that runs (:func:`resolve_precision`);
    fp16 off CUDA is a config error."""
    precision = resolve_precision(device, precision)
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("config key 'train.precision': fp16 needs a CUDA device; use bf16 on CPU")
    if precision == "fp32":
        return nullcontext(), False, precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), precision == "fp16", precision


def eval_autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast a model runs under at a resolved ``precision`` on ``device`` outside the
    training step (evaluation, prediction, the benchmark's cases): bf16 autocast for "bf16";
    otherwise autocast switched off, so that an autocast around the call does not reach the
    model (fp16 training evaluates in fp32, whose range its scores need)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def resolve_device(choice: str, index: int = 0, what: str = "device") -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``; ValueError naming ``what`` when
    CUDA is asked for and absent."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError(f"{what} is 'cuda' but no CUDA device is available")
        return torch.device("cuda", index)
    return torch.device("cpu")
