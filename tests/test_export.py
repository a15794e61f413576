"""ONNX export checked against onnxruntime, and frame-by-frame streaming prediction.

Models are tiny and randomly initialised through the real constructors and training configs;
every comparison is fp32 at 1e-4.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from convlstm_vp import DeepConvLSTM, EncoderForecaster, PatchSequenceClassifier, export
from convlstm_vp.models.heads import apply_dynamic_filter, filter_by_taps
from convlstm_vp.models.streaming import zero_state
from convlstm_vp.train.checkpoint import save_checkpoint
from convlstm_vp.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


@pytest.fixture(autouse=True)
def one_thread():
    """Small graphs: one thread is fastest, on a shared machine by far."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _session(path: Path):
    return export.onnx_session(path, threads=1)


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _tiny_forecaster(head: str = "dynamic_filter") -> EncoderForecaster:
    torch.manual_seed(0)
    return EncoderForecaster(
        1,
        [4, 6],
        3,
        patch_size=4,
        input_frames=4,
        output_frames=3,
        head=head,
        filter_size=3,
    ).eval()


def _clip_forecast(model: EncoderForecaster, frames: torch.Tensor, **settings) -> torch.Tensor:
    """The clip forecast with the encoder run over all of ``frames`` (any length)."""
    whole = copy.copy(model)
    whole.input_frames = frames.shape[1]
    return whole.predict(frames, **settings)


def test_taps_filter_equals_the_grouped_convolution_filter():
    torch.manual_seed(1)
    frame, weights = torch.rand(3, 2, 16, 16), torch.randn(3, 25, 4, 4).softmax(1)
    torch.testing.assert_close(
        filter_by_taps(frame, weights),
        apply_dynamic_filter(frame, weights),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize("render", ["filter", "warp"])
def test_clip_forecast_export_equals_pytorch_for_any_batch(tmp_path: Path, render: str):
    model = _tiny_forecaster()
    path = export.export_forecaster(model, tmp_path / "f.onnx", (16, 16), filter_temperature=0.7, render=render)
    meta = _metadata(path)
    assert json.loads(meta["convlstm_vp.inputs"]) == {"frames": ["B", 4, 1, 16, 16]}
    assert json.loads(meta["convlstm_vp.outputs"]) == {"predictions": ["B", 3, 1, 16, 16]}
    assert json.loads(meta["convlstm_vp.settings"])["filter_temperature"] == 0.7
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Conv" in ops and not ops & {
        "LSTM",
        "Loop",
        "Scan",
    }  # unrolled convolutions and gates
    session = _session(path)
    for batch in (1, 3):  # traced at batch 2
        frames = torch.rand(batch, 4, 1, 16, 16)
        got = torch.from_numpy(session.run(None, {"frames": frames.numpy()})[0])
        want = model.predict(frames, filter_temperature=0.7, render=render)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=TOL)


@pytest.mark.parametrize("head", ["conv", "dynamic_filter"])
def test_streaming_step_export_over_30_frames_equals_the_clip_forecast_of_each_prefix(tmp_path: Path, head: str):
    model, horizon = _tiny_forecaster(head), 2
    path = export.export_forecaster(model, tmp_path / "s.onnx", (16, 16), form="step", horizon=horizon)
    inputs = json.loads(_metadata(path)["convlstm_vp.inputs"])
    assert inputs == {
        "frame": ["B", 1, 16, 16],
        "h0": ["B", 4, 4, 4],
        "c0": ["B", 4, 4, 4],
        "h1": ["B", 6, 4, 4],
        "c1": ["B", 6, 4, 4],
    }
    session = _session(path)
    frames = torch.rand(2, 30, 1, 16, 16)
    state = [t.numpy() for hc in zero_state(model, frames[:, 0]) for t in hc]
    stream = model.stream(horizon=horizon)
    worst_runtime, worst_stream = 0.0, 0.0
    for t in range(30):
        got, *state = session.run(None, dict(zip(inputs, [frames[:, t].numpy(), *state])))
        pushed = stream.push(frames[:, t])
        if t + 1 < model.input_frames:
            assert pushed is None
            continue
        want = _clip_forecast(model, frames[:, : t + 1])[:, :horizon]
        worst_runtime = max(worst_runtime, (torch.from_numpy(got) - want).abs().max().item())
        worst_stream = max(worst_stream, (pushed - want).abs().max().item())
    assert worst_runtime < TOL and worst_stream < TOL
    # the stream reads all past frames, not a window of the last input_frames
    window = model.predict(frames[:, 26:30])[:, :horizon]
    assert (pushed - window).abs().max() > 1e-3


def test_stream_memory_is_constant_and_frames_are_checked():
    model = _tiny_forecaster()
    stream = model.stream(horizon=3, filter_temperature=0.5, render="warp")
    frames = torch.rand(40, 1, 16, 16)  # unbatched frames
    sizes = []
    for frame in frames:
        out = stream.push(frame)
        sizes.append(sum(x.numel() for hc in stream.state for x in hc))
    assert out.shape == (3, 1, 16, 16) and len(set(sizes)) == 1
    torch.testing.assert_close(
        out,
        _clip_forecast(model, frames[None], filter_temperature=0.5, render="warp")[0],
        rtol=0,
        atol=TOL,
    )
    with pytest.raises(ValueError, match="holds frames of shape"):
        stream.push(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="horizon"):
        model.stream(horizon=4)
    with pytest.raises(ValueError, match="frame"):
        model.stream().push(torch.rand(1, 1, 15, 16))


@pytest.mark.parametrize("kind", ["rank0", "rank1", "patches"])
def test_classifier_exports_equal_pytorch(tmp_path: Path, kind: str):
    torch.manual_seed(0)
    if kind == "patches":
        model, shape = (
            PatchSequenceClassifier(1, [6], 3, 10, 7, head="pool"),
            (16, 1, 7, 7),
        )
    else:
        model = DeepConvLSTM(
            3,
            4,
            conv_filters=4,
            num_conv_layers=2,
            hidden_channels=6,
            recurrent=kind,
            conv_mode="per_channel" if kind == "rank1" else "mixed",
        )
        shape = (20, 3)
    model.eval()
    path = export.export_classifier(model, tmp_path / "c.onnx", shape[0])
    x = torch.randn(5, *shape)
    got = torch.from_numpy(_session(path).run(None, {"inputs": x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=0, atol=TOL)
    assert json.loads(_metadata(path)["convlstm_vp.outputs"]) == {"logits": ["B", model.num_classes]}


def _checkpoint(tmp_path: Path, kind: str) -> Path:
    """A training checkpoint of ``kind`` with the real config and model builder, untrained."""
    if kind == "frames":
        from convlstm_vp.train.tasks.frames.inference import DEFAULTS, build_model

        cfg = load_config(ROOT / "configs" / "tiny-moving-mnist.yaml", DEFAULTS, ["data.size=[16,16]"])
        model, state = build_model(cfg), None
    else:
        from convlstm_vp.train.tasks.sensors import DEFAULTS, build_model

        cfg = load_config(ROOT / "configs" / "deepconvlstm-tiny.yaml", DEFAULTS)
        model = build_model(cfg, 3, 2)
        state = {
            "kind": "sensors",
            "classes": ["a", "b"],
            "in_channels": 3,
            "standardizer": {"mean": [0.5, 1.0, -2.0], "std": [1.0, 2.0, 4.0]},
        }
    path = tmp_path / f"{kind}.pt"
    save_checkpoint(
        path,
        {"model": model.state_dict(), "config": cfg, "step": 0, "task_state": state},
    )
    return path


def test_export_command_writes_the_checkpoints_model_with_its_statistics(tmp_path: Path, capsys):
    from convlstm_vp.cli import main

    sensors = _checkpoint(tmp_path, "sensors")
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(sensors),
                "--output",
                str(tmp_path / "s.onnx"),
                "--length",
                "30",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    meta = _metadata(tmp_path / "s.onnx")
    assert json.loads(meta["convlstm_vp.normalisation"])["std"] == [1.0, 2.0, 4.0]
    assert json.loads(meta["convlstm_vp.classes"]) == ["a", "b"]
    assert json.loads(meta["convlstm_vp.inputs"]) == {"inputs": ["B", 30, 3]}
    frames = _checkpoint(tmp_path, "frames")
    export.main(
        [
            "--checkpoint",
            str(frames),
            "--output",
            str(tmp_path / "f.onnx"),
            "--form",
            "step",
            "--horizon",
            "2",
        ]
    )
    assert json.loads(_metadata(tmp_path / "f.onnx")["convlstm_vp.outputs"])["predictions"] == ["B", 2, 1, 16, 16]


def _one_line_error(capsys, argv: list[str], module=export) -> str:
    with pytest.raises(SystemExit) as exc:
        module.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_export_errors_are_one_line(tmp_path: Path, capsys, monkeypatch):
    not_a_model = tmp_path / "notes.pt"
    not_a_model.write_bytes(b"not a checkpoint")
    err = _one_line_error(capsys, ["--checkpoint", str(not_a_model), "--output", str(tmp_path / "m.onnx")])
    assert "notes.pt" in err and "checkpoint" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = _one_line_error(
        capsys,
        [
            "--checkpoint",
            str(_checkpoint(tmp_path, "sensors")),
            "--output",
            str(blocker / "m.onnx"),
        ],
    )
    assert "--output" in err and str(blocker) in err
    real = export.importlib.util.find_spec
    monkeypatch.setattr(
        export.importlib.util,
        "find_spec",
        lambda name: None if name == "onnxruntime" else real(name),
    )
    err = _one_line_error(capsys, ["--checkpoint", str(not_a_model), "--output", str(tmp_path / "m.onnx")])
    assert "onnxruntime" in err and "pip install" in err


def _video(path: Path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (24, 16), isColor=False)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (16, 24), dtype=np.uint8))
    writer.release()


def test_predict_stream_writes_each_frame_beside_its_forecast_and_reports_latency(tmp_path: Path, capsys):
    from convlstm_vp.train import predict

    checkpoint = _checkpoint(tmp_path, "frames")
    _video(tmp_path / "in.avi", 12)
    out = tmp_path / "out" / "stream.avi"
    predict.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(tmp_path / "in.avi"),
            "--output",
            str(out),
            "--stream",
            "--horizon",
            "2",
        ]
    )
    printed = capsys.readouterr().out
    assert "frame 12:" in printed and "frames/s" in printed and "warm-up 1/4" in printed
    video = cv2.VideoCapture(str(out))
    count, (ok, first) = 1, video.read()
    while video.read()[0]:
        count += 1
    assert ok and count == 12 and first.shape[:2] == (16, 34)  # two 16x16 frames and a 2-pixel gap
    _video(tmp_path / "short.avi", 3)
    err = _one_line_error(
        capsys,
        [
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(tmp_path / "short.avi"),
            "--output",
            str(tmp_path / "short_out.avi"),
            "--stream",
        ],
        module=predict,
    )
    assert "warm-up" in err and not (tmp_path / "short_out.avi").exists()
