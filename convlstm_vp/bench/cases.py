"""The benchmark's configurations and cases (what is timed, at which shapes and precisions), and the
analytic FLOP counts (see :mod:`convlstm_vp.bench.run` for the definitions)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.deepconvlstm import DeepConvLSTM
from ..models.encoder_forecaster import EncoderForecaster
from ..models.patch_classifier import PatchSequenceClassifier
from ..nn import IMPLEMENTATIONS, ConvLSTM, Implementation
from ..train.precision import resolve_precision
from .reference import FirstOutput, LastStep, ReferenceEncoderForecaster, ReferencePatchClassifier, ReferenceStack

CONFIGS = ("moving_mnist", "patch", "deepconvlstm", "layer", "openstl")


# ============================================================================ FLOPs
def conv_flops(batch: int, spatial_out: int, c_in: int, c_out: int, kernel_elems: int) -> int:
    return 2 * batch * spatial_out * c_out * c_in * kernel_elems


def convlstm_flops(batch: int, steps: int, spatial: int, c_in: int, hidden: list[int], kernel_elems: int) -> int:
    """Forward FLOPs of a ConvLSTM stack ("same" padding, stride 1) over ``steps`` steps."""
    total, c = 0, c_in
    for h in hidden:
        total += steps * (
            conv_flops(batch, spatial, c, 4 * h, kernel_elems) + conv_flops(batch, spatial, h, 4 * h, kernel_elems)
        )
        c = h
    return total


def lstm_flops(batch: int, steps: int, features: int, hidden: int, layers: int) -> int:
    total, f = 0, features
    for _ in range(layers):
        total += steps * 2 * batch * 4 * hidden * (f + hidden)
        f = hidden
    return total


# ============================================================================ cases
@dataclass
class Case:
    name: str
    impl: str  # project | reference | torch.nn.LSTM | keras
    precision: str  # fp32 | bf16 | fp16
    build: Callable[[], nn.Module]
    role: str = ""  # "project" / "reference" / "baseline": the rows that floors compare
    note: str = ""
    model: nn.Module | None = None
    results: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Config:
    name: str
    description: str
    batch: int
    make_inputs: Callable[[torch.device], tuple[Tensor, Tensor]]
    loss: Callable[[Tensor, Tensor], Tensor]
    flops_fwd: int
    cases: list[Case]
    shapes: dict[str, Any]


def _frame_loss(pred: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy(pred.float().clamp(1e-6, 1 - 1e-6), target)


def _class_loss(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), target)


def _mse(pred: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(pred.float(), target)


PRECISIONS = ("fp32", "bf16")  # the autocast precisions benchmarked (fp16 training is CUDA-only and not timed)


def _seeded(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return fn()

    return build


def _defaults(module: str, fallback: dict) -> dict:
    """A training task's DEFAULTS (model + batch size), or ``fallback`` when it cannot be imported."""
    try:
        mod = __import__(f"convlstm_vp.train.tasks.{module}", fromlist=["DEFAULTS"])
        return mod.DEFAULTS
    except Exception:
        return fallback


def _model_cases(
    device: torch.device,
    reference: Callable[[], nn.Module],
    project: Callable[..., Callable[[], nn.Module]],
    variants: bool = True,
) -> list[Case]:
    """Reference fp32/bf16, the project in every precision (``implementation="auto"``) and with
    single paths switched: on CPU the fast paths one at a time (``variants``), on CUDA the
    eager and compiled alternatives to "graphed", the path "auto" takes there."""
    cases = [
        Case("reference fp32", "reference", "fp32", reference, role="reference"),
        Case("reference bf16", "reference", "bf16", reference),
    ]
    # the floors compare the project at the training default: precision auto (bf16 where the
    # device computes it natively), implementation auto
    main = resolve_precision(device, "auto")
    auto_note = "graphed, compiles" if device.type == "cuda" else ""
    # on CUDA each project row compiles: the training default's precision only
    for prec in [main] if device.type == "cuda" else PRECISIONS:
        cases.append(
            Case(f"project {prec}", "project", prec, project(), role="project" if prec == main else "", note=auto_note)
        )
    if device.type == "cuda":
        # every compiled row compiles the whole model once more: the large OpenSTL model
        # (variants=False) gets the eager comparison only
        alternatives = [
            ("bf16", "graphed without CUDA graphs", replace(IMPLEMENTATIONS["graphed"], cuda_graphs=False)),
            ("bf16", "compiled (per cell step)", "compiled"),
            ("bf16", "plain (eager)", "plain"),
            ("fp32", "plain (eager)", "plain"),
        ]
        for prec, what, impl in alternatives if variants else alternatives[2:3]:
            note = f"implementation={impl!r}" + (", compiles" if impl != "plain" else "")
            cases.append(Case(f"project {prec}, {what}", "project", prec, project(implementation=impl), note=note))
        return cases
    if not variants:
        return cases
    for prec, what, kw in (
        ("bf16", "channels-last steps", {"implementation": Implementation(channels_last=True)}),
        ("fp32", "channels-last steps", {"implementation": Implementation(channels_last=True)}),
        ("bf16", "torch-op gates", {"implementation": Implementation(native_gates=False)}),
        ("bf16", "batched input conv", {"implementation": Implementation(batch_input_conv=True)}),
        ("bf16", "per-step input conv", {"implementation": Implementation(batch_input_conv=False)}),
        ("fp32", "implementation fused", {"implementation": "fused"}),
        ("fp32", "implementation plain", {"implementation": "plain"}),
    ):
        note = ", ".join(f"{k}={v!r}" for k, v in kw.items())
        cases.append(Case(f"project {prec}, {what}", "project", prec, project(**kw), note=note))
    return cases


def _encoder_forecaster_config(
    name: str,
    description: str,
    device: torch.device,
    hidden: list[int],
    k: int,
    p: int,
    tin: int,
    tout: int,
    b: int,
    size: int,
    loss: Callable,
    variants: bool,
) -> Config:
    s = (size // p) ** 2
    flops = convlstm_flops(b, tin + tout, s, p * p, hidden, k * k) + tout * conv_flops(b, s, sum(hidden), p * p, 1)

    def inputs(dev: torch.device) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(1)
        return torch.rand(b, tin, 1, size, size, generator=g).to(dev), torch.rand(
            b, tout, 1, size, size, generator=g
        ).to(dev)

    def project(**kw: Any) -> Callable[[], nn.Module]:
        return _seeded(
            lambda: EncoderForecaster(1, hidden, k, patch_size=p, input_frames=tin, output_frames=tout, **kw)
        )

    cases = _model_cases(device, _seeded(lambda: ReferenceEncoderForecaster(hidden, k, p, tout)), project, variants)
    return Config(
        name,
        description,
        b,
        inputs,
        loss,
        flops,
        cases,
        {
            "hidden": hidden,
            "kernel": k,
            "patch": p,
            "frames": f"{tin}+{tout}",
            "batch": b,
            "frame": f"{p * p}x{size // p}x{size // p}",
        },
    )


def moving_mnist_config(device: torch.device, quick: bool) -> Config:
    d = _defaults(
        "frames",
        {
            "model": {
                "hidden_channels": [64, 64, 64],
                "kernel_size": 3,
                "patch_size": 4,
                "input_frames": 10,
                "output_frames": 10,
            },
            "train": {"batch_size": 16},
        },
    )
    m = d["model"]
    hidden, k, p = list(m["hidden_channels"]), m["kernel_size"], m["patch_size"]
    tin, tout, b, size = m["input_frames"], m["output_frames"], d["train"]["batch_size"], 64
    if quick:
        hidden, tin, tout, b, size = [8, 8], 3, 3, 2, 16
    return _encoder_forecaster_config(
        "moving_mnist",
        "Moving MNIST encoder-forecaster (default training config)",
        device,
        hidden,
        k,
        p,
        tin,
        tout,
        b,
        size,
        _frame_loss,
        variants=True,
    )


def openstl_config(device: torch.device, quick: bool) -> Config:
    hidden, k, p, tin, tout, b, size = [128] * 4, 5, 4, 10, 10, 16, 64
    if quick:
        hidden, tin, tout, b, size = [8, 8], 2, 2, 2, 16
    return _encoder_forecaster_config(
        "openstl",
        "OpenSTL ConvLSTM-S shapes (4x128, kernel 5)",
        device,
        hidden,
        k,
        p,
        tin,
        tout,
        b,
        size,
        _mse,
        variants=False,
    )


def patch_config(device: torch.device, quick: bool) -> Config:
    d = _defaults(
        "patch_classifier",
        {"model": {"hidden_channels": [32], "kernel_size": 3, "head": "flatten"}, "train": {"batch_size": 64}},
    )
    m = d["model"]
    hidden, k, head, b, p, t = (
        list(m["hidden_channels"]),
        m["kernel_size"],
        m.get("head", "flatten"),
        d["train"]["batch_size"],
        7,
        16,
    )
    if quick:
        hidden, b, t = [8], 4, 4
    flops = convlstm_flops(b, t, p * p, 1, hidden, k * k) + 2 * b * 10 * hidden[-1] * p * p

    def inputs(dev: torch.device) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(2)
        return torch.rand(b, t, 1, p, p, generator=g).to(dev), torch.randint(0, 10, (b,), generator=g).to(dev)

    def project(**kw: Any) -> Callable[[], nn.Module]:
        return _seeded(lambda: PatchSequenceClassifier(1, hidden, k, num_classes=10, patch_size=p, head=head, **kw))

    cases = _model_cases(device, _seeded(lambda: ReferencePatchClassifier(hidden, k, p)), project)
    return Config(
        "patch",
        "7x7 patch classifier (16 steps of 1x7x7 patches)",
        b,
        inputs,
        _class_loss,
        flops,
        cases,
        {"hidden": hidden, "kernel": k, "steps": t, "patch": f"1x{p}x{p}", "batch": b, "head": head},
    )


def deepconvlstm_config(device: torch.device, quick: bool) -> Config:
    channels, filters, hidden, layers, b, steps = 113, 64, 128, 2, 100, 8
    if quick:
        channels, filters, hidden, b, steps = 5, 4, 8, 4, 4
    features = filters * channels  # per_channel mode, as in the paper
    flops = lstm_flops(b, steps, features, hidden, layers)

    def inputs(dev: torch.device) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(3)
        return torch.randn(b, steps, features, generator=g).to(dev), torch.randn(b, hidden, generator=g).to(dev)

    def torch_lstm() -> nn.Module:
        return LastStep(nn.LSTM(features, hidden, layers, dropout=0.5, batch_first=True))

    def project_layer() -> nn.Module:
        return _rank0_layer(nn.LSTM(features, hidden, layers, dropout=0.5, batch_first=True))

    cases = [
        Case("torch.nn.LSTM fp32", "torch.nn.LSTM", "fp32", _seeded(torch_lstm), role="baseline"),
        Case("project rank-0 layer fp32", "project", "fp32", _seeded(project_layer), role="project"),
    ]
    for prec in PRECISIONS[1:]:
        cases.append(Case(f"torch.nn.LSTM {prec}", "torch.nn.LSTM", prec, _seeded(torch_lstm)))
        cases.append(Case(f"project rank-0 layer {prec}", "project", prec, _seeded(project_layer)))
    return Config(
        "deepconvlstm",
        "DeepConvLSTM recurrence: rank-0 layer vs torch.nn.LSTM (OPPORTUNITY shapes)",
        b,
        inputs,
        _mse,
        flops,
        cases,
        {"features": features, "hidden": hidden, "layers": layers, "steps": steps, "batch": b, "dropout": 0.5},
    )


def _rank0_layer(lstm: nn.LSTM) -> nn.Module:
    """The project's rank-0 ConvLSTM with ``lstm``'s weights, dropout 0.5 between layers, last step."""
    layer = ConvLSTM(
        lstm.input_size,
        lstm.hidden_size,
        num_layers=lstm.num_layers,
        spatial_dims=0,
        dropout=lstm.dropout,
        return_sequences=False,
    )
    layer.load_torch_lstm_weights(lstm)
    return FirstOutput(layer)


def deepconvlstm_model_config(device: torch.device, quick: bool) -> Config:
    channels, b, window = 113, 100, 24
    if quick:
        channels, b = 5, 4
    kw = (
        {"conv_mode": "per_channel"}
        if not quick
        else {"conv_mode": "per_channel", "conv_filters": 4, "hidden_channels": 8}
    )
    filters, hidden = kw.get("conv_filters", 64), kw.get("hidden_channels", 128)
    steps = window - 4 * 4
    conv = 0
    t, c_in = window, 1
    for _ in range(4):
        t -= 4
        conv += conv_flops(b, t * channels, c_in, filters, 5)
        c_in = filters
    flops = conv + lstm_flops(b, steps, filters * channels, hidden, 2) + 2 * b * 18 * hidden

    def inputs(dev: torch.device) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(4)
        return torch.randn(b, window, channels, generator=g).to(dev), torch.randint(0, 18, (b,), generator=g).to(dev)

    cases = [Case(f"project {p}", "project", p, _seeded(lambda: DeepConvLSTM(channels, 18, **kw))) for p in PRECISIONS]
    return Config(
        "deepconvlstm_model",
        "DeepConvLSTM, whole model (per_channel, rank 0, OPPORTUNITY shapes)",
        b,
        inputs,
        _class_loss,
        flops,
        cases,
        {"channels": channels, "window": window, "batch": b, **kw},
    )


def layer_config(device: torch.device, quick: bool) -> Config:
    b, t, c, h, size, k = 8, 20, 16, 64, 16, 5
    if quick:
        b, t, c, h, size, k = 2, 3, 4, 8, 8, 3
    flops = convlstm_flops(b, t, size * size, c, [h], k * k)

    def inputs(dev: torch.device) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(5)
        return torch.randn(b, t, c, size, size, generator=g).to(dev), torch.randn(b, t, h, size, size, generator=g).to(
            dev
        )

    project = _seeded(lambda: FirstOutput(ConvLSTM(c, h, k)))
    reference = _seeded(lambda: ReferenceStack(c, [h], k))
    cases = [
        Case("reference fp32", "reference", "fp32", reference, role="reference"),
        Case("reference bf16", "reference", "bf16", reference),
    ]
    for prec in PRECISIONS:
        cases.append(Case(f"project {prec}", "project", prec, project))
    keras_case = _keras_case(c, h, k, t, size)
    if keras_case is not None:
        cases.append(keras_case)
    return Config(
        "layer",
        "one ConvLSTM2D layer (the reference measurement shapes)",
        b,
        inputs,
        _mse,
        flops,
        cases,
        {"batch": b, "steps": t, "input": f"{c}x{size}x{size}", "hidden": h, "kernel": k},
    )


KERAS_STATUS: dict[str, str] = {}


def _keras_case(c: int, h: int, k: int, t: int, size: int) -> Case | None:
    """Keras 3 ConvLSTM2D on the torch backend, channels-first, when keras is importable."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras  # noqa: F401
    except Exception as exc:  # not installed: optional
        KERAS_STATUS["keras"] = f"skipped: keras not importable ({type(exc).__name__}: {exc})"
        return None
    if keras.backend.backend() != "torch":
        KERAS_STATUS["keras"] = f"skipped: keras backend is {keras.backend.backend()!r}, not torch"
        return None
    KERAS_STATUS["keras"] = f"keras {keras.__version__}, torch backend"

    class KerasLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = keras.layers.ConvLSTM2D(
                h, k, padding="same", return_sequences=True, data_format="channels_first"
            )
            self.layer.build((None, t, c, size, size))

        def forward(self, x: Tensor) -> Tensor:
            return self.layer(x)

    return Case("keras ConvLSTM2D fp32", "keras", "fp32", _seeded(KerasLayer))


BUILDERS = {
    "moving_mnist": moving_mnist_config,
    "patch": patch_config,
    "deepconvlstm": deepconvlstm_config,
    "deepconvlstm_model": deepconvlstm_model_config,
    "layer": layer_config,
    "openstl": openstl_config,
}
