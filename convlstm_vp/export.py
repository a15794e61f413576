"""Export trained models to ONNX: ``convlstm-vp export --checkpoint C --output model.onnx``.

    convlstm-vp export --checkpoint runs/cpu-quick/checkpoints/best.pt --output forecast.onnx
    convlstm-vp export --checkpoint runs/cpu-quick/checkpoints/best.pt --form step --output s.onnx
    convlstm-vp export --checkpoint runs/deepconvlstm-tiny/checkpoints/best.pt --output sensors.onnx

The graph is traced by ``torch.onnx.export`` from the plain implementation: convolutions,
matrix products and element-wise gate arithmetic, standard ONNX operators only (opset 18), so
any ONNX runtime runs it. The batch axis is dynamic; every other size is fixed at export (the
recurrent loops are unrolled). What each input and output is, with its shape, is written into
the file's metadata (``metadata_props``: ``convlstm_vp.inputs``, ``convlstm_vp.outputs`` as
JSON, and the settings baked in) and in docs/deploy.md.

Forms (``--form``):

- encoder-forecaster ``forecast``: ``frames (B, input_frames, C, H, W) -> predictions
  (B, output_frames, C, H, W)``, the clip forecast of :meth:`EncoderForecaster.predict`.
- encoder-forecaster ``step``: ``(frame (B, C, H, W), h0, c0, h1, c1, ...) -> (predictions
  (B, horizon, C, H, W), h0_next, c0_next, ...)``, one step of
  :class:`~convlstm_vp.models.streaming.FrameStream`: the runtime holds the state (zeros at the
  start of a stream) and feeds one frame at a time; forecasts are meaningful from the
  ``input_frames``-th frame on.
- classifiers (``forecast`` is read as ``logits``): patch sequences ``(B, T, C, p, p)`` or
  sensor windows ``(B, T, C)`` (``T`` fixed: ``--length``, default the config's
  ``data.window``) ``-> logits (B, num_classes)``. The sensor model's inputs are z-scored
  channels: the training statistics are in the metadata (``convlstm_vp.normalisation``).

Needs the optional packages onnx, onnxscript and onnxruntime (``pip install
'convlstm_vp[export]'``); without them the command says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .models import DeepConvLSTM, EncoderForecaster, PatchSequenceClassifier
from .models.streaming import stream_step
from .nn.cell import set_implementation
from .nn.fast import IMPLEMENTATIONS

EXPORT_PACKAGES = ("onnx", "onnxruntime")  # what the export and its check import
INSTALL_HINT = "pip install 'convlstm_vp[export]' (or: pip install onnx onnxscript onnxruntime)"
OPSET = 18
FORMS = ("forecast", "step")
# the plain path with the rank-0 recurrence stepped as gates too, not the fused torch.lstm kernel
EXPORT_IMPLEMENTATION = dataclasses.replace(IMPLEMENTATIONS["plain"], torch_lstm=False)


class ExportUnavailable(ImportError):
    """The optional export packages are not installed."""


def require_export_packages() -> None:
    """Raise :class:`ExportUnavailable` naming what to install when an export package is missing."""
    missing = [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportUnavailable(f"ONNX export needs {', '.join(missing)}: {INSTALL_HINT}")


def onnx_session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU session for ``path`` on ``threads`` threads that sleep when idle (spinning
    threads cost more than they save on a shared machine)."""
    require_export_packages()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for tracing: eval mode, the plain implementation, no finiteness
    check (a data-dependent branch that a graph cannot hold)."""
    model = copy.deepcopy(model).eval()
    set_implementation(model, EXPORT_IMPLEMENTATION)
    model.check_finite = False
    return model


class _Forecast(nn.Module):
    def __init__(self, model: EncoderForecaster, filter_temperature: float, render: str) -> None:
        super().__init__()
        self.model, self.filter_temperature, self.render = (
            model,
            filter_temperature,
            render,
        )

    def forward(self, frames: Tensor) -> Tensor:
        return self.model.forecast(frames, filter_temperature=self.filter_temperature, render=self.render).frames


class _Step(nn.Module):
    def __init__(
        self,
        model: EncoderForecaster,
        horizon: int,
        filter_temperature: float,
        render: str,
    ) -> None:
        super().__init__()
        self.model, self.horizon, self.filter_temperature, self.warp = (
            model,
            horizon,
            filter_temperature,
            render == "warp",
        )

    def forward(self, frame: Tensor, *flat_state: Tensor) -> tuple[Tensor, ...]:
        state = list(zip(flat_state[0::2], flat_state[1::2]))
        forecast, new_state = stream_step(self.model, frame, state, self.horizon, self.filter_temperature, self.warp)
        return (forecast, *[t for hc in new_state for t in hc])


def _write(
    module: nn.Module,
    examples: tuple[Tensor, ...],
    path: Path,
    inputs: dict[str, list],
    outputs: dict[str, list],
    metadata: dict[str, Any],
) -> Path:
    """Trace ``module`` on ``examples`` into ``path`` with a dynamic batch axis (axis 0 of every
    input and output) and the metadata; ``inputs``/``outputs``: name -> shape (``"B"`` for the
    batch)."""
    require_export_packages()
    import onnx

    buf = io.BytesIO()
    axes = {name: {0: "B"} for name in [*inputs, *outputs]}
    with warnings.catch_warnings():  # the tracer's notes on Python-level shape checks
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            examples,
            buf,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    meta = {"convlstm_vp.inputs": inputs, "convlstm_vp.outputs": outputs, **metadata}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = (
            key,
            value if isinstance(value, str) else json.dumps(value),
        )
    proto.producer_name = "convlstm_vp"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def _settings(model: EncoderForecaster, filter_temperature: float, render: str) -> dict[str, Any]:
    return {
        "convlstm_vp.model": "EncoderForecaster",
        "convlstm_vp.settings": {
            "in_channels": model.in_channels,
            "hidden_channels": model.hidden_channels,
            "patch_size": model.patch_size,
            "input_frames": model.input_frames,
            "output_frames": model.output_frames,
            "head": model.head_type,
            "filter_temperature": filter_temperature,
            "render": render,
            "value_range": [0.0, 1.0],
        },
    }


def export_forecaster(
    model: EncoderForecaster,
    path: str | Path,
    frame_size: Sequence[int],
    *,
    form: str = "forecast",
    horizon: int | None = None,
    filter_temperature: float = 1.0,
    render: str = "filter",
) -> Path:
    """Export an encoder-forecaster (channels-first frames of ``frame_size`` ``(H, W)``) in one of
    :data:`FORMS` (module docstring) with the prediction-time settings baked in; returns
    ``path``."""
    if form not in FORMS:
        raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
    temperature = model.check_rendering(filter_temperature, render)
    m = exportable(model)
    c, (h, w), p = m.in_channels, frame_size, m.patch_size
    if h % p or w % p:
        raise ValueError(f"frame_size: expected H and W divisible by patch_size={p}, got {tuple(frame_size)}")
    meta = _settings(m, temperature, render)
    if form == "forecast":
        frames = torch.rand(2, m.input_frames, c, h, w)
        return _write(
            _Forecast(m, temperature, render),
            (frames,),
            path,
            {"frames": ["B", m.input_frames, c, h, w]},
            {"predictions": ["B", m.output_frames, c, h, w]},
            {**meta, "convlstm_vp.form": "forecast"},
        )
    k = m.output_frames if horizon is None else horizon
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= m.output_frames:
        raise ValueError(f"horizon: expected an int in [1, output_frames={m.output_frames}], got {horizon!r}")
    states = {f"{hc}{i}": ["B", n, h // p, w // p] for i, n in enumerate(m.hidden_channels) for hc in "hc"}
    examples = (
        torch.rand(2, c, h, w),
        *[torch.rand(*[2, *s[1:]]) for s in states.values()],
    )
    outputs = {
        "predictions": ["B", k, c, h, w],
        **{f"{name}_next": s for name, s in states.items()},
    }
    return _write(
        _Step(m, k, temperature, render),
        examples,
        path,
        {"frame": ["B", c, h, w], **states},
        outputs,
        {**meta, "convlstm_vp.form": "step", "convlstm_vp.horizon": str(k)},
    )


def export_classifier(
    model: PatchSequenceClassifier | DeepConvLSTM,
    path: str | Path,
    steps: int,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export a patch classifier (``(B, steps, C, p, p)``, channels first) or DeepConvLSTM
    (``(B, steps, C)``) as ``inputs -> logits``; ``metadata`` adds entries (classes, statistics)."""
    m = exportable(model)
    if isinstance(m, DeepConvLSTM):
        if steps < m.min_window:
            raise ValueError(f"length: DeepConvLSTM reads windows of at least {m.min_window} samples, got {steps}")
        shape, kind = [steps, m.in_channels], "DeepConvLSTM"
    elif isinstance(m, PatchSequenceClassifier):
        if m.data_format != "channels_first":
            raise ValueError("export: a channels_last patch classifier is not supported; export it channels_first")
        shape, kind = (
            [steps, m.in_channels, m.patch_size, m.patch_size],
            "PatchSequenceClassifier",
        )
    else:
        raise TypeError(
            f"export_classifier: expected a PatchSequenceClassifier or DeepConvLSTM, got {type(model).__name__}"
        )
    example = torch.rand(2, *shape)
    return _write(
        m,
        (example,),
        path,
        {"inputs": ["B", *shape]},
        {"logits": ["B", m.num_classes]},
        {"convlstm_vp.model": kind, "convlstm_vp.form": "logits", **(metadata or {})},
    )


def _load(checkpoint: str) -> tuple[str, nn.Module, dict, dict[str, Any]]:
    """``(kind, model, config, metadata)`` of a training checkpoint; kind: "frames", "sensors"
    or "patches"."""
    from .train.checkpoint import CheckpointError, load_checkpoint
    from .train.config import merge

    ck = load_checkpoint(checkpoint)
    cfg = ck["config"] if isinstance(ck["config"], dict) else {}
    model_cfg, data_cfg = cfg.get("model", {}), cfg.get("data", {})
    try:
        if "conv_mode" in model_cfg:
            from .train.classify import _sensor_model

            model, full, classes, standardizer = _sensor_model(ck)
            meta = {
                "convlstm_vp.classes": list(classes),
                "convlstm_vp.normalisation": dict(
                    standardizer.state_dict(),
                    formula="inputs = (x - mean) / std per channel",
                )
                if standardizer
                else None,
            }
            return "sensors", model, full, meta
        if "patch_size" in data_cfg and "input_frames" not in model_cfg:
            from .train.tasks.patch_classifier import DEFAULTS, NUM_CLASSES, build_model

            full = merge(DEFAULTS, cfg)
            model = build_model(full)
            model.load_state_dict(ck["model"])
            meta = {
                "convlstm_vp.classes": [str(k) for k in range(NUM_CLASSES)],
                "convlstm_vp.patches": {
                    "patch_size": full["data"]["patch_size"],
                    "order": full["data"]["order"],
                },
            }
            return "patches", model, full, meta
    except (ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{checkpoint}: its model could not be rebuilt: {exc}") from exc
    if "input_frames" in model_cfg and "patch_size" not in data_cfg:
        from .train.tasks.frames.inference import load_trained

        model, full = load_trained(checkpoint)
        return "frames", model, full, {}
    raise CheckpointError(
        f"{checkpoint}: not a frame-prediction (train frames), patch-classifier (train patches) "
        "or DeepConvLSTM (train sensors) checkpoint"
    )


def export_checkpoint(
    checkpoint: str,
    output: str | Path,
    *,
    form: str = "forecast",
    horizon: int | None = None,
    filter_temperature: float | None = None,
    render: str = "filter",
    length: int | None = None,
) -> Path:
    """Export the model of a training checkpoint to ``output`` (see the module docstring); the
    frame model's filter temperature defaults to its config's ``model.eval_filter_temperature``."""
    require_export_packages()
    kind, model, cfg, meta = _load(checkpoint)
    meta["convlstm_vp.checkpoint"] = str(checkpoint)
    if kind == "frames":
        t = cfg["model"]["eval_filter_temperature"] if filter_temperature is None else filter_temperature
        return export_forecaster(
            model,
            output,
            cfg["data"]["size"],
            form=form,
            horizon=horizon,
            filter_temperature=t,
            render=render,
        )
    if form != "forecast":
        raise ValueError(f"--form {form}: a {kind} classifier has one form (inputs -> logits)")
    if kind == "patches":
        steps = (28 // cfg["data"]["patch_size"]) ** 2
    else:
        steps = cfg["data"]["window"] if length is None else length
    return export_classifier(model, output, steps, meta)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> Path:
    from .train.checkpoint import CheckpointError
    from .train.cli import check_output_file, fail, positive_int

    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="best.pt or last.pt of a frames, patches or sensors training run",
    )
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument(
        "--form",
        choices=FORMS,
        default="forecast",
        help="encoder-forecaster: the whole clip forecast (default) or one streaming step",
    )
    p.add_argument(
        "--horizon",
        type=positive_int,
        default=None,
        help="--form step: frames forecast per step (default output_frames)",
    )
    p.add_argument(
        "--render",
        choices=["filter", "warp"],
        default="filter",
        help="dynamic-filter rendering (as predict)",
    )
    p.add_argument(
        "--filter-temperature",
        type=float,
        default=None,
        help="dynamic-filter kernel temperature baked in (default: the config's model.eval_filter_temperature)",
    )
    p.add_argument(
        "--length",
        type=positive_int,
        default=None,
        help="sensor model: window length T (default data.window)",
    )
    args = p.parse_args(argv)
    output = Path(args.output)
    if output.suffix.lower() != ".onnx":
        p.error(f"--output: expected a file ending in .onnx, got {args.output!r}")
    try:
        require_export_packages()
    except ExportUnavailable as exc:
        fail(str(exc))
    check_output_file(output, "--output")
    try:
        written = export_checkpoint(
            args.checkpoint,
            output,
            form=args.form,
            horizon=args.horizon,
            filter_temperature=args.filter_temperature,
            render=args.render,
            length=args.length,
        )
    except (CheckpointError, ValueError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {exc.filename or output}: {exc.strerror or exc}")
    print(f"wrote {written} ({written.stat().st_size / 1e6:.2f} MB)")
    return written
