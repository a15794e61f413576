"""Input validation: NaN/Inf inputs, wrong shapes and dtypes, and invalid configs fail fast with
messages that name the input, the shape or the config key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from convlstm_vp import ConvLSTM, ConvLSTMCell
from convlstm_vp.models.encoder_forecaster import EncoderForecaster
from convlstm_vp.nn import NonFiniteInputError
from convlstm_vp.train.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def _poison(x: torch.Tensor, value: float, index: int = 3) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[index] = value
    return x


# ----------------------------------------------------------------------------- NaN / Inf inputs
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("spatial_dims, spatial", [(0, ()), (1, (6,)), (2, (5, 4)), (3, (3, 4, 2))])
def test_convlstm_rejects_non_finite_input(spatial_dims: int, spatial: tuple, value: float) -> None:
    layer = ConvLSTM(2, 3, 3, spatial_dims=spatial_dims)
    x = torch.randn(2, 4, 2, *spatial)
    layer(x)  # finite input is fine
    with pytest.raises(ValueError, match=r"input x of shape \(2, 4, 2") as info:
        layer(_poison(x, value))
    assert isinstance(info.value, NonFiniteInputError)
    assert ("1 NaN" if value != value else "1 Inf") in str(info.value)


def test_convlstm_rejects_non_finite_state_and_the_check_can_be_switched_off() -> None:
    layer = ConvLSTM(2, 3, 3, num_layers=2, spatial_dims=2)
    x = torch.randn(2, 4, 2, 5, 5)
    h0, c0 = torch.zeros(2, 2, 3, 5, 5), torch.zeros(2, 2, 3, 5, 5)
    layer(x, (h0, c0))
    with pytest.raises(ValueError, match="state c_0"):
        layer(x, (h0, _poison(c0, float("nan"))))
    with pytest.raises(ValueError, match=r"state h_0\[1\]"):  # per-layer lists name the entry
        layer(x, ([h0[0], _poison(h0[1], float("inf"))], [c0[0], c0[1]]))
    layer.check_finite = False
    out, _ = layer(_poison(x, float("nan")))
    assert torch.isnan(out).any()  # without the check the NaN flows through
    quiet = ConvLSTM(2, 3, 3, spatial_dims=2, check_finite=False)
    assert torch.isnan(quiet(_poison(x, float("nan")))[0]).any()


def test_convlstm_cell_rejects_non_finite_input_and_state() -> None:
    cell = ConvLSTMCell(2, 3, 3, spatial_dims=2)
    x = torch.randn(2, 2, 5, 5)
    h, c = cell(x)
    with pytest.raises(ValueError, match="input x"):
        cell(_poison(x, float("nan")))
    with pytest.raises(ValueError, match="state h"):
        cell(x, (_poison(h, float("inf")), c))
    with pytest.raises(ValueError, match="state c"):
        cell(x, (h, _poison(c, float("nan"))))
    off = ConvLSTMCell(2, 3, 3, spatial_dims=2, check_finite=False)
    assert torch.isnan(off(_poison(x, float("nan")))[0]).any()


def test_encoder_forecaster_rejects_non_finite_frames_and_targets() -> None:
    model = EncoderForecaster(1, [4], 3, patch_size=2, input_frames=3, output_frames=2)
    frames, targets = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 2, 1, 8, 8)
    model(frames, targets, teacher_forcing=0.5)
    with pytest.raises(ValueError, match=r"EncoderForecaster.*frames of shape \(2, 3, 1, 8, 8\)"):
        model(_poison(frames, float("nan")))
    with pytest.raises(ValueError, match=r"targets of shape \(2, 2, 1, 8, 8\)"):
        model(frames, _poison(targets, float("inf")), teacher_forcing=0.5)
    with pytest.raises(TypeError, match="floating-point"):
        model(frames.to(torch.uint8))


# ----------------------------------------------------------------------------- shapes
def test_kernel_larger_than_the_input_with_valid_padding_names_kernel_and_shape() -> None:
    layer = ConvLSTM(1, 4, 5, spatial_dims=2, padding="valid")
    with pytest.raises(ValueError, match=r"kernel_size=\(5, 5\).*'valid'.*spatial size \(3, 3\)"):
        layer(torch.randn(2, 3, 1, 3, 3))
    cell = ConvLSTMCell(1, 4, (2, 7), spatial_dims=2, padding="valid")
    with pytest.raises(ValueError, match=r"spatial size \(4, 6\)"):
        cell(torch.randn(1, 1, 4, 6))
    layer(torch.randn(2, 3, 1, 5, 5))  # exactly the kernel's size gives a 1x1 state


def test_wrong_channel_count_names_the_expected_layout() -> None:
    layer = ConvLSTM(3, 4, 3, spatial_dims=2, data_format="channels_last")
    with pytest.raises(ValueError, match=r"\(B, T, H, W, C\) with C=3.*got shape \(2, 5, 8, 8, 2\)"):
        layer(torch.randn(2, 5, 8, 8, 2))


# ----------------------------------------------------------------------------- configs
def _mm_config(*overrides: str) -> dict:
    from convlstm_vp.train.tasks.frames import DEFAULTS

    return load_config(ROOT / "configs" / "tiny-moving-mnist.yaml", DEFAULTS, list(overrides))


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.hiden_channels=[4]", r"unknown config key 'model.hiden_channels'.*hidden_channels"),
        ("train.stepz=3", r"unknown config key 'train.stepz'"),
        ("model.hidden_channels=[8, -4]", r"'model.hidden_channels'.*sizes"),
        ("model.patch_size=-2", r"'model.patch_size'.*>= 0"),
        ("data.num_digits=-1", r"'data.num_digits'"),
        ("train.batch_size=0", r"'train.batch_size'.*positive"),
        ("train.lr=-0.1", r"'train.lr'.*>= 0"),
        ("train.nan_policy=ignore", r"'train.nan_policy'.*stop"),
        ("model.kernel_size=three", r"'model.kernel_size'.*integer"),
        ("seed=-1", r"'seed'"),
        ("train.lr=.inf", r"'train.lr'.*finite"),
        ("train.lr=.nan", r"'train.lr'.*finite"),
        ("data.eval_batch_size=0", r"'data.eval_batch_size'.*positive"),
        ("data.final_eval_sequences=0", r"'data.final_eval_sequences'.*positive"),
    ],
)
def test_invalid_config_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _mm_config(override)


def test_scientific_notation_is_a_number_in_overrides_and_files(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-4 (no dot) as a string; a float key takes it as the number it spells
    assert _mm_config("train.lr=1e-4")["train"]["lr"] == 1e-4
    assert _mm_config("train.weight_decay=5E-3")["train"]["weight_decay"] == 5e-3
    from convlstm_vp.train.tasks.frames import DEFAULTS

    cfg = tmp_path / "sci.yaml"
    cfg.write_text("train:\n  lr: 5e-4\n")
    assert load_config(cfg, DEFAULTS)["train"]["lr"] == 5e-4
    with pytest.raises(ConfigError, match="'train.lr'.*expected a number.*'5e-4x'"):
        _mm_config("train.lr=5e-4x")


def test_an_empty_config_file_is_an_error_not_the_defaults(tmp_path: Path) -> None:
    from convlstm_vp.train.tasks.frames import DEFAULTS

    for text in ("", "# only a comment\n"):
        (tmp_path / "empty.yaml").write_text(text)
        with pytest.raises(ConfigError, match=r"empty.yaml is empty: expected a YAML mapping"):
            load_config(tmp_path / "empty.yaml", DEFAULTS)


def _run_cli(tmp_path: Path, capsys, script_defaults, make_task, config: str, *overrides: str) -> str:
    from convlstm_vp.train.cli import run_training

    argv = ["--config", str(ROOT / "configs" / config), "--run-dir", str(tmp_path / "run")]
    for o in ("train.num_threads=1", "train.progress=false") + overrides:
        argv += ["--set", o]
    with pytest.raises(SystemExit) as info:
        run_training(argv, "test", script_defaults, make_task)
    assert info.value.code == 2
    assert not (tmp_path / "run").exists()  # failed before writing anything
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        # the model is built and batch 0 is run through it before training starts
        ("model.hidden_channels=[0]", r"config key 'model.hidden_channels'.*building the model"),
        ("model.kernel_size=0", r"config key 'model.kernel_size'.*>= 1"),
        ("model.patch_size=5", r"config key 'model.patch_size'.*batch 0.*\(4, 4, 1, 64, 64\)"),
        ("model.scheduled_sampling=[1.0, 0.5]", r"config key 'model.scheduled_sampling'"),
        ("loss=hinge", r"config key 'loss'"),
    ],
)
def test_training_script_fails_fast_on_a_model_that_does_not_fit(
    tmp_path: Path, capsys, override: str, message: str
) -> None:
    from convlstm_vp.train.tasks.frames import DEFAULTS, MovingMNISTTask

    err = _run_cli(
        tmp_path, capsys, DEFAULTS, MovingMNISTTask, "tiny-moving-mnist.yaml", override, "train.batch_size=4"
    )
    assert err.startswith("error: ") and "Traceback" not in err
    import re

    assert re.search(message, err), err


def test_sensor_script_rejects_a_temporal_kernel_longer_than_the_window(tmp_path: Path, capsys) -> None:
    """DeepConvLSTM's temporal convolutions are "valid": 2 layers of kernel 60 need 119 samples."""
    from convlstm_vp.train.tasks.sensors import DEFAULTS, SensorTask

    err = _run_cli(tmp_path, capsys, DEFAULTS, SensorTask, "deepconvlstm-tiny.yaml", "model.conv_kernel=60")
    # the task checks every series against the model before building it (series may
    # differ in length, so the shortest one is named)
    assert "'model.conv_kernel'" in err and "training item 0 has 100 samples" in err and "= 119" in err


def test_dtype_mismatch_is_a_type_error_naming_both_dtypes() -> None:
    layer = ConvLSTM(2, 3, 3, spatial_dims=2)
    x = torch.randn(2, 4, 2, 5, 5)
    with pytest.raises(TypeError, match=r"input x has dtype torch.float64 but the parameters have dtype torch.float32"):
        layer(x.double())
    h0 = torch.zeros(1, 2, 3, 5, 5, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"state h_0 of layer 0 direction 0 has dtype torch.float64"):
        layer(x, (h0, h0.float()))
    cell = ConvLSTMCell(2, 3, 3, spatial_dims=2).double()
    with pytest.raises(TypeError, match=r"ConvLSTMCell: input x has dtype torch.float32"):
        cell(x[:, 0])
    assert cell(x[:, 0].double())[0].dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision is the exception
        out, _ = layer(x.bfloat16())
    assert out.shape == (2, 4, 3, 5, 5)


def test_models_name_their_own_input_when_it_holds_nan():
    from convlstm_vp.models import DeepConvLSTM, PatchSequenceClassifier

    dcl = DeepConvLSTM(6, 3, conv_filters=4, num_conv_layers=2, hidden_channels=5)
    windows = torch.rand(2, 24, 6)
    windows[1, 3, 2] = float("nan")
    with pytest.raises(NonFiniteInputError, match=r"DeepConvLSTM .*windows of shape \(2, 24, 6\) holds 1 NaN"):
        dcl(windows)
    assert torch.isnan(
        DeepConvLSTM(6, 3, conv_filters=4, num_conv_layers=2, hidden_channels=5, check_finite=False)(windows)
    ).any()
    psc = PatchSequenceClassifier(1, [4])
    patches = torch.rand(2, 16, 1, 7, 7)
    patches[0, 5, 0, 1, 1] = float("inf")
    with pytest.raises(
        NonFiniteInputError,
        match=r"PatchSequenceClassifier .*patch sequence x of shape \(2, 16, 1, 7, 7\) holds 0 NaN and 1 Inf",
    ):
        psc(patches)
