"""Encoder-forecaster model, Moving MNIST training script, evaluate.py and predict.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convlstm_vp import ConvLSTM, EncoderForecaster, Forecast
from convlstm_vp.models.encoder_forecaster import apply_dynamic_filter, patchify, sample_displaced, unpatchify
from convlstm_vp.train.checkpoint import load_checkpoint
from convlstm_vp.train.metrics import FrameMetrics, frame_mse, frame_ssim
from convlstm_vp.train.tasks.frames import frame_loss, load_trained

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-moving-mnist.yaml"


def _run(script: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``script`` run in this process where it can be (conftest.run_script), asserting success."""
    return run_script(script, *args, cwd=cwd)


def _evaluate(ck: str, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """evaluate.py on 4 test sequences with ``--json out``: the run and the JSON it wrote."""
    res = _run("scripts/evaluate.py", "--checkpoint", ck, "--sequences", "4", "--json", str(out), *extra)
    return res, json.loads(out.read_text())


def test_patchify_round_trip_and_shape():
    x = torch.rand(2, 3, 1, 64, 64)
    p = patchify(x, 4)
    assert p.shape == (2, 3, 16, 16, 16)
    assert torch.equal(unpatchify(p, 4), x)
    # the pixel (y, x) = (5, 6) lands in patch (1, 1), channel 1*4 + 2
    assert p[0, 0, 1 * 4 + 2, 1, 1] == x[0, 0, 0, 5, 6]


def test_encoder_forecaster_shapes_and_layouts():
    torch.manual_seed(0)
    m = EncoderForecaster(1, [8, 6], [3, 5], patch_size=4, input_frames=5, output_frames=3)
    assert isinstance(m.encoder, ConvLSTM) and isinstance(m.forecaster, ConvLSTM)
    x = torch.rand(2, 5, 1, 32, 32)
    y = m(x)
    assert y.shape == (2, 3, 1, 32, 32)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0  # sigmoid output
    m_last = EncoderForecaster(
        1, [8, 6], [3, 5], patch_size=4, input_frames=5, output_frames=3, data_format="channels_last"
    )
    m_last.load_state_dict(m.state_dict())
    y_last = m_last(x.permute(0, 1, 3, 4, 2))
    assert y_last.shape == (2, 3, 32, 32, 1)
    torch.testing.assert_close(y_last.permute(0, 1, 4, 2, 3), y)
    # the encoder's one-step-ahead predictions of input frames 1..4 come from the same head
    y2, enc, off = m.forecast(x, encoder_predictions=True)
    torch.testing.assert_close(y2, y)
    assert enc.shape == (2, 4, 1, 32, 32) and off is None
    # every parameter is used: all get a gradient
    y.sum().backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unused == []


def test_encoder_forecaster_rejects_bad_input():
    m = EncoderForecaster(1, [4], 3, patch_size=4, input_frames=5, output_frames=3)
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\).*T=5"):
        m(torch.rand(2, 4, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible by patch_size=4"):
        m(torch.rand(2, 5, 1, 30, 32))
    # a between-layers dropout would reach the encoder only (the forecaster steps its cells)
    with pytest.raises(TypeError, match="no between-layers dropout.*input_dropout"):
        EncoderForecaster(1, [4, 4], 3, dropout=0.5)
    m = EncoderForecaster(1, [4, 4], 3, input_dropout=0.5, recurrent_dropout=0.5)
    assert all(
        c.input_dropout == 0.5 and c.recurrent_dropout == 0.5 for c in m.modules() if hasattr(c, "input_dropout")
    )


def test_forward_returns_the_frames_and_forecast_a_forecast():
    torch.manual_seed(0)
    m = EncoderForecaster(
        1, [4], 3, patch_size=4, input_frames=3, output_frames=4, head="dynamic_filter", filter_size=5
    )
    x = torch.rand(2, 3, 1, 16, 16)
    y = m(x)
    assert type(y) is torch.Tensor and y.shape == (2, 4, 1, 16, 16)
    out = m.forecast(x)
    assert isinstance(out, Forecast) and out._fields == ("frames", "encoder_frames", "offsets")
    assert torch.equal(out.frames, y) and out.encoder_frames is None and out.offsets is None
    out = m.forecast(x, encoder_predictions=True, offsets=True)
    assert out.encoder_frames.shape == (2, 2, 1, 16, 16) and out.offsets.shape == (2, 2 + 4, 2, 4, 4)
    out = m.forecast(x, offsets=True)
    assert out.encoder_frames is None and out.offsets.shape == (2, 4, 2, 4, 4)
    # predict: eval mode and no gradients inside, the module's mode restored after
    m.train()
    p = m.predict(x)
    assert m.training and not p.requires_grad and torch.equal(p, y)
    # the schedule and the prediction-time settings are arguments now, not constructor options or state
    for removed in ("scheduled_sampling", "filter_temperature", "motion_input"):
        with pytest.raises(TypeError):
            EncoderForecaster(1, [4], 3, **{removed: None})
    for gone in ("set_head", "set_filter_temperature", "teacher_forcing_probability"):
        assert not hasattr(m, gone)
    assert "sampling_updates" not in m.state_dict()


def test_teacher_forcing_feeds_the_true_previous_frames():
    torch.manual_seed(0)
    m = EncoderForecaster(1, [4], 3, patch_size=4, input_frames=3, output_frames=4)
    x, t = torch.rand(2, 3, 1, 16, 16), torch.rand(2, 4, 1, 16, 16)
    with torch.no_grad():
        y_tf = m(x, t, teacher_forcing=1.0)  # the forecaster's inputs are the true frames
        # the prediction at step k depends on the true frame k-1: changing it changes step k
        for k in range(1, 4):
            t2 = t.clone()
            t2[:, k - 1] = 0.0
            y2 = m(x, t2, teacher_forcing=1.0)
            torch.testing.assert_close(y2[:, :k], y_tf[:, :k])
            assert not torch.allclose(y_tf[:, k], y2[:, k])
        # teacher_forcing 0 (the number) ignores the targets; the same as without them
        torch.testing.assert_close(m(x, t), m(x))
        torch.testing.assert_close(m(x, t, 0.0), m(x))
        # a 0-dim tensor probability works too, without being read back: 1 and 0 as the numbers
        torch.testing.assert_close(m(x, t, torch.tensor(1.0, dtype=torch.float64)), y_tf)
        torch.testing.assert_close(m(x, t, torch.tensor(0.0)), m(x))
        # in between: each sequence and step draws its own coin from the torch RNG
        torch.manual_seed(1)
        mixed = m(x, t, 0.5)
        torch.manual_seed(1)
        torch.testing.assert_close(m(x, t, torch.tensor(0.5, dtype=torch.float64)), mixed)
    with pytest.raises(ValueError, match="teacher_forcing: feeding true frames needs targets"):
        m(x, teacher_forcing=0.5)
    for bad in (1.5, -0.1, True):
        with pytest.raises(ValueError, match="teacher_forcing: expected a probability"):
            m(x, t, bad)
    with pytest.raises(ValueError, match="0-dim tensor"):
        m(x, t, torch.tensor([0.5]))


@pytest.mark.parametrize("schedule", [(1.0, 0.0, 7), (0.9, 0.1, 3), (0.0, 1.0, 1000003), (1, 0, 4)])
def test_the_training_schedule_runs_from_start_to_end_over_its_steps(schedule):
    from convlstm_vp.train.tasks.frames import scheduled_sampling, teacher_forcing

    start, end, steps = schedule
    assert scheduled_sampling(schedule, 0) == start
    assert scheduled_sampling(schedule, steps) == scheduled_sampling(schedule, 10 * steps) == pytest.approx(end)
    assert scheduled_sampling(None, 0) == 0.0 and teacher_forcing(None, 5) == 0.0
    for n in [0, 1, 2, 3, 5, 6, 7, 8, 50, 333_333, 1_000_003, 2_000_000]:
        # the probability the model's counter gave after n training calls, as it computed it
        frac = (torch.tensor(n, dtype=torch.long).double() / float(steps)).clamp(max=1.0)
        old = start + (end - start) * frac
        assert scheduled_sampling(schedule, n) == old.item()
        tf = teacher_forcing(schedule, n)
        assert tf.dim() == 0 and tf.dtype == torch.float64 and tf.item() == old.item()


def test_the_training_task_takes_the_schedule_from_the_step(monkeypatch):
    """training_step(model, batch, step) hands the model the probability of that step."""
    from convlstm_vp.train.config import load_config
    from convlstm_vp.train.tasks.frames import DEFAULTS, MovingMNISTTask

    cfg = load_config(
        str(TINY), DEFAULTS, ["data.source=embedded", "model.scheduled_sampling=[1.0,0.2,4]", "encoder_loss_weight=1.0"]
    )
    task = MovingMNISTTask(cfg)
    torch.manual_seed(0)
    model = task.build_model()
    seen = []
    forecast = model.forecast
    monkeypatch.setattr(
        model, "forecast", lambda *a, **kw: seen.append(float(kw["teacher_forcing"])) or forecast(*a, **kw)
    )
    for step in (0, 1, 2, 4, 9):
        task.training_step(model, task.train_batch(step, 0, 1), step)
    assert seen == pytest.approx([1.0, 0.8, 0.6, 0.2, 0.2])
    # no schedule: the number 0, so the targets are not read at all
    plain = MovingMNISTTask(load_config(str(TINY), DEFAULTS, ["data.source=embedded"]))
    seen.clear()
    monkeypatch.setattr(model, "forecast", lambda *a, **kw: seen.append(kw["teacher_forcing"]) or forecast(*a, **kw))
    plain.training_step(model, plain.train_batch(0, 0, 1), 0)
    assert seen == [0.0] and isinstance(seen[0], float)


def test_apply_dynamic_filter_matches_a_direct_loop():
    torch.manual_seed(0)
    frame = torch.rand(2, 3, 8, 8)
    weights = torch.rand(2, 25, 4, 4)  # K = 5, one kernel per 2x2 block
    out = apply_dynamic_filter(frame, weights)
    padded = torch.nn.functional.pad(frame, (2, 2, 2, 2))
    ref = torch.zeros_like(frame)
    for y in range(8):
        for x in range(8):
            for k in range(25):
                dy, dx = k // 5 - 2, k % 5 - 2
                ref[:, :, y, x] += weights[:, k, y // 2, x // 2, None] * padded[:, :, y + 2 + dy, x + 2 + dx]
    torch.testing.assert_close(out, ref)
    # a one-hot kernel at offset (dy, dx) = (0, +1) shifts the frame left by one pixel, zero filled
    shift = torch.zeros(2, 9, 8, 8)
    shift[:, 5] = 1.0
    moved = apply_dynamic_filter(frame, shift)
    torch.testing.assert_close(moved[..., :-1], frame[..., 1:])
    assert (moved[..., -1] == 0).all()
    with pytest.raises(ValueError, match="odd K"):
        apply_dynamic_filter(frame, torch.rand(2, 16, 8, 8))


def test_dynamic_filter_head():
    torch.manual_seed(0)
    kw = dict(patch_size=4, input_frames=4, output_frames=3, head="dynamic_filter", filter_size=5)
    m = EncoderForecaster(1, [8, 6], 3, **kw)
    assert m.head.out_channels == 25 and m.output_activation == "identity"
    x = torch.rand(2, 4, 1, 16, 16)
    y, enc, _ = m.forecast(x, encoder_predictions=True)
    assert y.shape == (2, 3, 1, 16, 16) and enc.shape == (2, 3, 1, 16, 16)
    # outputs are convex combinations of the previous frame's pixels: in [0, 1], and an empty
    # frame stays exactly empty
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 + 1e-6
    assert (m(torch.zeros(2, 4, 1, 16, 16)) == 0).all()
    # kernels that select the centre tap (head weights 0, a large centre bias) copy the last frame
    copy = EncoderForecaster(1, [8, 6], 3, **kw)
    with torch.no_grad():
        copy.head.weight.zero_()
        copy.head.bias.fill_(-30.0)
        copy.head.bias[12] = 30.0
        torch.testing.assert_close(copy(x), x[:, -1:].expand(-1, 3, -1, -1, -1))
    m_last = EncoderForecaster(1, [8, 6], 3, data_format="channels_last", **kw)
    m_last.load_state_dict(m.state_dict())
    torch.testing.assert_close(m_last(x.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3), y)
    y.sum().backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unused == []
    with pytest.raises(ValueError, match="filter_size: expected an odd"):
        EncoderForecaster(1, [4], 3, head="dynamic_filter", filter_size=4)
    for removed in ("flow", "composite", "warp"):  # warp is a way to render, not a head to train
        with pytest.raises(ValueError, match=r"head: expected one of \('conv', 'dynamic_filter'\)"):
            EncoderForecaster(1, [4], 3, head=removed)


def test_sample_displaced_shifts_and_interpolates_bilinearly():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 10)
    d = torch.zeros(2, 2, 8, 10)
    d[:, 0], d[:, 1] = 2.0, -1.0  # out[y, x] = x[y + 2, x - 1]
    out = sample_displaced(x, d)
    torch.testing.assert_close(out[..., :-2, 1:], x[..., 2:, :-1])
    assert (
        float(out[..., -2:, :].abs().max()) < 1e-6 and float(out[..., :, 0].abs().max()) < 1e-6
    )  # off the frame reads 0
    d.zero_()
    d[:, 1] = 0.5  # half a pixel to the right: the mean of the two neighbours
    torch.testing.assert_close(sample_displaced(x, d)[..., :-1], 0.5 * (x[..., :-1] + x[..., 1:]))
    with pytest.raises(ValueError, match=r"expected displacement \(B, 2, H, W\)"):
        sample_displaced(x, d[:, :1])


def _two_tap_kernels(m: EncoderForecaster, taps: list[tuple[int, int]]) -> None:
    """Head weights 0 and equal large biases on ``taps`` ((dy, dx) each): every kernel splits
    its weight evenly between those source offsets."""
    k = m.filter_size
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.fill_(-60.0)
        for dy, dx in taps:
            m.head.bias[(dy + k // 2) * k + dx + k // 2] = 30.0


def test_render_warp_samples_the_source_once_so_blur_does_not_pile_up():
    torch.manual_seed(0)
    m = EncoderForecaster(
        1, [8, 6], 3, patch_size=4, input_frames=4, output_frames=4, filter_size=9, head="dynamic_filter"
    )
    x = torch.rand(2, 4, 1, 32, 32)
    # fresh weights: frames in range, gradients reach every parameter
    y, enc, off = m.forecast(x, encoder_predictions=True, offsets=True, render="warp")
    assert y.shape == (2, 4, 1, 32, 32) and enc.shape == (2, 3, 1, 32, 32) and off.shape == (2, 7, 2, 8, 8)
    assert float(y.detach().min()) >= 0.0 and float(y.detach().max()) <= 1.0 + 1e-6
    (y.sum() + enc.sum()).backward()
    assert [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
    # kernels reading half 2 px and half 3 px to the right: filtering mixes the two copies again at
    # every step (binomial blur), warping reads the last frame once, 2.5 px per step on
    _two_tap_kernels(m, [(0, 2), (0, 3)])
    with torch.no_grad():
        yw, _, ow = m.forecast(x, offsets=True, render="warp")
        yf = m(x)
    torch.testing.assert_close(m.predict(x, render="warp"), yw, rtol=0, atol=0)
    torch.testing.assert_close(m.predict(x), yf, rtol=0, atol=0)
    last = x[:, -1]
    torch.testing.assert_close(ow, torch.tensor([0.0, 2.5]).view(1, 1, 2, 1, 1).expand(2, 4, 2, 8, 8))
    torch.testing.assert_close(yw[:, 0], yf[:, 0])  # one step: the same two-pixel mix
    inner = slice(0, 32 - 4 * 3)  # columns whose sources stay on the frame for 4 steps
    for k in range(1, 5):
        d = torch.zeros(2, 2, 32, 32)
        d[:, 1] = 2.5 * k
        torch.testing.assert_close(yw[:, k - 1], sample_displaced(last, d), atol=1e-5, rtol=0)
    torch.testing.assert_close(yw[:, 1, ..., inner], last[..., 5 : 5 + 20])  # 2 steps: exactly 5 px, sharp
    binomial = 0.25 * last[..., 4 : 4 + 20] + 0.5 * last[..., 5 : 5 + 20] + 0.25 * last[..., 6 : 6 + 20]
    torch.testing.assert_close(yf[:, 1, ..., inner], binomial)


def test_render_warp_accumulates_the_kernels_displacement_as_the_removed_warp_head_did():
    """A hand computation of the warp rendering (what set_head("warp") computed): the first frame
    samples the last input at the kernels' mean offsets; each later one at those offsets plus the
    previous displacement filtered by the kernels."""

    torch.manual_seed(2)
    m = EncoderForecaster(
        1, [6], 3, patch_size=2, input_frames=3, output_frames=3, filter_size=3, head="dynamic_filter"
    ).eval()
    x = torch.rand(2, 3, 1, 8, 8)
    with torch.no_grad():
        got = m.predict(x, filter_temperature=0.7, render="warp")
        # the forecaster's hidden states do not depend on the rendering: read the kernels off them
        _, (h, c) = m.encoder(patchify(x, 2))
        state = [(h[0], c[0])]
        frame, source, disp = x[:, -1], x[:, -1], None
        taps = torch.tensor([-1.0, 0.0, 1.0])
        for k in range(3):
            state[0] = m.forecaster.cells[0].step(patchify(frame.unsqueeze(1), 2)[:, 0], state[0])
            kernels = torch.softmax(m.head(state[0][0]) / 0.7, dim=1)  # (B, 9, 4, 4)
            grid = kernels.view(2, 3, 3, 4, 4)
            mean = torch.stack(
                [(grid.sum(2) * taps.view(1, 3, 1, 1)).sum(1), (grid.sum(1) * taps.view(1, 3, 1, 1)).sum(1)], 1
            )
            new = mean.repeat_interleave(2, 2).repeat_interleave(2, 3)
            if disp is not None:
                new = new + apply_dynamic_filter(disp, kernels)
            frame, disp = sample_displaced(source, new), new
            torch.testing.assert_close(got[:, k], frame)
    assert not torch.allclose(got, m.predict(x, filter_temperature=0.7))


def test_render_warp_restarts_from_a_teacher_forced_frame():
    torch.manual_seed(0)
    m = EncoderForecaster(
        1, [8], 3, patch_size=4, input_frames=3, output_frames=4, head="dynamic_filter", filter_size=5
    )
    _two_tap_kernels(m, [(1, 0)])  # every pixel reads the one below: content moves up 1 px per step
    x, targets = torch.rand(2, 3, 1, 16, 16), torch.rand(2, 4, 1, 16, 16)
    y = m.forecast(x, targets, teacher_forcing=1.0, render="warp").frames
    torch.testing.assert_close(y[:, 0, ..., :-1, :], x[:, -1, ..., 1:, :])
    for k in range(1, 4):  # each step warps the true frame before it, not the drift since the inputs
        torch.testing.assert_close(y[:, k, ..., :-1, :], targets[:, k - 1, ..., 1:, :])
    y = m.predict(x, render="warp")  # free running: the inputs' last frame, moved k px
    torch.testing.assert_close(y[:, 3, ..., :-4, :], x[:, -1, ..., 4:, :])


def test_filter_temperature_divides_the_kernel_logits():
    torch.manual_seed(0)
    kw = dict(patch_size=4, input_frames=4, output_frames=3, head="dynamic_filter", filter_size=5)
    m = EncoderForecaster(1, [8, 6], 3, **kw).eval()
    x = torch.rand(2, 4, 1, 16, 16)
    # softmax((W h + b) / T) is the plain model with head weights and bias divided by T
    scaled = EncoderForecaster(1, [8, 6], 3, **kw).eval()
    scaled.load_state_dict(m.state_dict())
    with torch.no_grad():
        scaled.head.weight.div_(0.5)
        scaled.head.bias.div_(0.5)
        plain = m(x)
        torch.testing.assert_close(m.predict(x, filter_temperature=0.5), scaled(x))
        torch.testing.assert_close(m.forecast(x, filter_temperature=0.5).frames, scaled(x))
        assert not torch.allclose(m.predict(x, filter_temperature=0.5), plain)
        torch.testing.assert_close(m(x), plain)  # an argument, not state: nothing stays changed
    for bad in (0, -1.0, float("inf"), float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="filter_temperature: expected a finite number > 0"):
            m.predict(x, filter_temperature=bad)
    with pytest.raises(ValueError, match="render: expected one of"):
        m.predict(x, render="flow")


def test_conv_head_has_no_filter_temperature_or_warp_rendering():
    m = EncoderForecaster(1, [4], 3, patch_size=4, input_frames=3, output_frames=2)
    x = torch.rand(2, 3, 1, 16, 16)
    assert m.predict(x, filter_temperature=1.0, render="filter").shape == (2, 2, 1, 16, 16)
    with pytest.raises(ValueError, match="head='conv' has no filter kernels to sharpen, got 0.5"):
        m.predict(x, filter_temperature=0.5)
    with pytest.raises(ValueError, match="head='conv' has no filter kernels to sharpen"):
        m.forecast(x, filter_temperature=2)
    with pytest.raises(
        ValueError, match="render: head='conv' draws its frames; render='warp' needs head='dynamic_filter'"
    ):
        m.predict(x, render="warp")
    with pytest.raises(ValueError, match="offsets: head='conv' has no filter kernels"):
        m.forecast(x, offsets=True)


def test_motion_targets_move_each_frame_onto_the_next():
    from convlstm_vp.data import load_digits, motion_targets, render_moving_mnist

    pool = load_digits("datasets", "train", "embedded").images
    frames, corners, ids = render_moving_mnist(pool, 6, 12, 2, rng=3, return_trajectories=True)
    offsets, weights = motion_targets(pool, corners, ids, 64, 4)
    assert offsets.shape == (6, 11, 2, 16, 16) and weights.shape == (6, 11, 1, 16, 16)
    assert set(np.unique(weights)) <= {0.0, 1.0} and 0.05 < weights.mean() < 0.5
    # a target cell carries its digit's corner step, backwards: (corner[t-1] - corner[t])
    steps = corners[:, :, :-1] - corners[:, :, 1:]  # (N, D, T-1, 2)
    n, t, y, x = np.argwhere(weights[:, :, 0] > 0)[0]
    assert any((offsets[n, t, :, y, x] == steps[n, d, t]).all() for d in range(2))
    assert (offsets[np.broadcast_to(weights, offsets.shape) == 0] == 0).all()
    # reading frame t-1 through one-hot kernels at the target offsets gives frame t on the target
    # cells (up to ink of the other digit next to a cell), far closer than frame t-1 itself
    f = torch.from_numpy(frames).float() / 255
    off = torch.from_numpy(offsets).long() + 4
    moved_err = copy_err = 0.0
    for k in range(1, 12):
        kernels = torch.nn.functional.one_hot(off[:, k - 1, 0] * 9 + off[:, k - 1, 1], 81).permute(0, 3, 1, 2).float()
        moved = apply_dynamic_filter(f[:, k - 1 : k], kernels)[:, 0]
        mask = torch.from_numpy(weights[:, k - 1, 0]).repeat_interleave(4, 1).repeat_interleave(4, 2)
        moved_err += float(((moved - f[:, k]).abs() * mask).sum() / mask.sum())
        copy_err += float(((f[:, k - 1] - f[:, k]).abs() * mask).sum() / mask.sum())
    assert moved_err < 0.01 * copy_err
    # two copies of a digit on top of each other: no cell is owned by one of them
    same = np.repeat(corners[:1, :1], 2, axis=1)
    _, w_same = motion_targets(pool, same, np.repeat(ids[:1, :1], 2, axis=1), 64, 4)
    assert w_same.sum() == 0
    with pytest.raises(ValueError, match="cell_size must be a positive int dividing"):
        motion_targets(pool, corners, ids, 64, 5)
    with pytest.raises(ValueError, match=r"expected corners \(N, D, T, 2\)"):
        motion_targets(pool, corners[0], ids, 64, 4)


def _touched_cells_one_by_one(digits, corners, digit_ids, image_size, c):
    """Reference: draw every placed glyph's ink on its own canvas and pool it over the cells."""
    n, d, t, _ = corners.shape
    h, g = digits.shape[1], image_size // c
    out = np.zeros((n, d, t, g, g), dtype=bool)
    for i, j, k in np.ndindex(n, d, t):
        y, x = corners[i, j, k]
        canvas = np.zeros((image_size, image_size), dtype=bool)
        canvas[y : y + h, x : x + h] = digits[digit_ids[i, j]] > 0
        out[i, j, k] = canvas.reshape(g, c, g, c).any(axis=(1, 3))
    return out


@pytest.mark.parametrize("cell_size, glyph, size", [(4, 28, 64), (1, 5, 12), (2, 7, 16), (8, 28, 64), (3, 10, 24)])
def test_motion_targets_cells_equal_drawing_each_digit(cell_size, glyph, size):
    """The per-phase cell maps place every digit exactly where drawing its ink on a canvas does,
    at every corner the canvas allows (all phases within a cell, both edges)."""
    from convlstm_vp.data.moving_mnist import _touched_cells

    rng = np.random.default_rng(cell_size)
    pool = (rng.random((7, glyph, glyph)) < 0.15).astype(np.uint8) * 255
    pool[0] = 0  # a blank glyph touches nothing
    corners = rng.integers(0, size - glyph + 1, size=(5, 3, 9, 2))
    corners[0, 0, :2] = [[0, 0], [size - glyph, size - glyph]]
    ids = rng.integers(0, 7, size=(5, 3))
    ids[1, 1] = 0
    got = _touched_cells(pool, corners, ids, size, cell_size)
    ref = _touched_cells_one_by_one(pool, corners, ids, size, cell_size)
    assert got.shape == ref.shape and got.any()
    np.testing.assert_array_equal(got, ref)


def test_motion_targets_rejects_corners_off_the_canvas():
    from convlstm_vp.data import motion_targets

    pool = np.full((2, 28, 28), 255, dtype=np.uint8)
    corners = np.zeros((1, 1, 3, 2), dtype=np.int64)
    corners[0, 0, 2] = [37, 0]
    with pytest.raises(
        ValueError, match=r"corners must lie in \[0, 36\] for 28x28 digits on a 64x64 canvas, got values from 0 to 37"
    ):
        motion_targets(pool, corners, np.zeros((1, 1), dtype=np.int64), 64, 4)


def test_return_offsets_gives_the_kernels_mean_source_offset():
    torch.manual_seed(0)
    kw = dict(patch_size=4, input_frames=4, output_frames=3, head="dynamic_filter", filter_size=5)
    m = EncoderForecaster(1, [8, 6], 3, **kw)
    x = torch.rand(2, 4, 1, 16, 16)
    y, _, off = m.forecast(x, offsets=True)
    assert off.shape == (2, 3, 2, 4, 4) and torch.equal(y, m(x))
    y2, enc, off2 = m.forecast(x, encoder_predictions=True, offsets=True)
    assert enc.shape == (2, 3, 1, 16, 16) and off2.shape == (2, 6, 2, 4, 4)
    torch.testing.assert_close(off2[:, 3:], off)
    # kernels that all select the tap 2 rows up and 1 column right read (dy, dx) = (-2, +1)
    # and shift the frame by it
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.fill_(-30.0)
        m.head.bias[0 * 5 + 3] = 30.0
    y, _, off = m.forecast(x, offsets=True)
    torch.testing.assert_close(off, torch.tensor([-2.0, 1.0]).view(1, 1, 2, 1, 1).expand(2, 3, 2, 4, 4))
    torch.testing.assert_close(y[:, 0, :, 2:, :-1], x[:, -1, :, :-2, 1:])
    # the offsets are differentiable (a loss on them trains the head)
    m2 = EncoderForecaster(1, [8, 6], 3, **kw)
    m2.forecast(x, offsets=True).offsets.abs().sum().backward()
    assert m2.head.weight.grad.abs().sum() > 0


def test_motion_loss_trains_the_kernels_towards_the_true_motion(tmp_path: Path):
    from convlstm_vp.train.config import ConfigError
    from convlstm_vp.train.config import load_config as load
    from convlstm_vp.train.tasks.frames import DEFAULTS, MovingMNISTTask

    def load_config(path, overrides):
        return load(path, DEFAULTS, overrides)

    cfg = load_config(TINY, ["motion_loss_weight=1.0", "data.source=embedded"])
    task = MovingMNISTTask(cfg)
    frames, offsets, weights = task.train_batch(5, 0, 1)
    # the same frames as without the motion loss
    plain = MovingMNISTTask(load_config(TINY, ["data.source=embedded"]))
    assert torch.equal(frames, plain.train_batch(5, 0, 1))
    assert offsets.shape == (4, 7, 2, 16, 16) and weights.shape == (4, 7, 1, 16, 16)
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for step in range(40):
        loss, logs = task.training_step(model, task.train_batch(step % 3, 0, 1), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(logs["motion_loss"]))
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3])
    # the training script logs it
    run = tmp_path / "mo"
    _run(
        "scripts/train_moving_mnist.py", "--config", str(TINY), "--run-dir", str(run), "--set", "motion_loss_weight=0.5"
    )
    ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
    ea.Reload()
    assert [e.step for e in ea.Scalars("train/motion_loss")] == [2, 4, 6]
    with pytest.raises(ConfigError, match="motion_loss_weight"):
        load_config(TINY, ["motion_loss_weight=-1"])
    with pytest.raises(ValueError, match="motion_loss_weight.*head 'conv'"):
        MovingMNISTTask(load_config(TINY, ["motion_loss_weight=1", "model.head=conv"]))


@pytest.mark.parametrize("head", ["conv", "dynamic_filter"])
def test_few_training_steps_reduce_loss(head: str):
    torch.manual_seed(0)
    m = EncoderForecaster(1, [8], 3, patch_size=4, input_frames=3, output_frames=3, head=head, filter_size=9)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    from convlstm_vp.data import moving_mnist_batch

    batch = moving_mnist_batch(4, source="embedded", num_frames=6, image_size=32, rng=0)
    losses = []
    for _ in range(15):
        loss = frame_loss("bce", m(batch[:, :3]), batch[:, 3:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    # the dynamic filter starts from a blurred copy of the last frame, a much lower loss
    assert losses[-1] < (0.6 if head == "conv" else 0.9) * losses[0]


def test_loss_terms_and_their_config_checks():
    from convlstm_vp.train.config import ConfigError, merge
    from convlstm_vp.train.tasks.frames import DEFAULTS, MovingMNISTTask

    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 1, 16, 16), (torch.rand(2, 3, 1, 16, 16) > 0.7).float()
    bce = torch.nn.functional.binary_cross_entropy(pred, target)
    l1 = (pred - target).abs().mean()
    torch.testing.assert_close(frame_loss("bce+l1", pred, target, 3.0), bce + 3.0 * l1)
    torch.testing.assert_close(frame_loss("bce", pred, target), bce)
    # a NaN prediction gives a NaN loss (for the loop's nan_policy), not an exception
    pred_nan = pred.clone()
    pred_nan[0, 0, 0, 0, 0] = float("nan")
    assert torch.isnan(frame_loss("bce+l1", pred_nan, target))
    cfg = merge(DEFAULTS, {"loss": "bce+l1", "l1_weight": 2.0, "data": {"source": "embedded"}})
    task = MovingMNISTTask(cfg)
    torch.testing.assert_close(task._loss(pred, target), bce + 2.0 * l1)
    for key in ("l1_weight", "encoder_loss_weight"):
        with pytest.raises(ConfigError, match=key):
            merge(DEFAULTS, {key: -1.0})
    # removed options (no gain measured) are unknown keys
    for removed in (
        {"ssim_weight": 0.5},
        {"model": {"memory_format": "channels_last"}},
        {"model": {"motion_input": True}},
    ):
        with pytest.raises(ConfigError, match="unknown"):
            merge(DEFAULTS, removed)
    with pytest.raises(ValueError, match=r"config key 'model.scheduled_sampling'"):
        MovingMNISTTask(
            merge(DEFAULTS, {"model": {"scheduled_sampling": [1.0, 1.5, 10]}, "data": {"source": "embedded"}})
        )


def test_frame_metrics_definitions():
    zeros = torch.zeros(2, 3, 1, 16, 16)
    ones = torch.ones(2, 3, 1, 16, 16)
    assert torch.allclose(frame_mse(zeros, ones), torch.full((2, 3), 256.0))  # summed over pixels
    assert torch.allclose(frame_ssim(ones * 0.5, ones * 0.5), torch.ones(2, 3))
    fm = FrameMetrics()
    fm.update(zeros, ones * 0.5)
    r = fm.compute()
    assert r["mse"] == pytest.approx(64.0) and r["mae"] == pytest.approx(128.0)
    assert r["psnr"] == pytest.approx(10 * np.log10(1 / 0.25), rel=1e-4)
    assert len(r["per_frame"]["mse"]) == 3


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    _run("scripts/train_moving_mnist.py", "--config", str(TINY), "--run-dir", str(run))
    return run


def test_training_script_writes_checkpoints_logs_and_metrics(tiny_run: Path):
    for name in ("last.pt", "best.pt"):
        ck = load_checkpoint(tiny_run / "checkpoints" / name)
        assert {"model", "optimizer", "scheduler", "rng", "step", "config"} <= set(ck)
    assert load_checkpoint(tiny_run / "checkpoints" / "last.pt")["step"] == 6
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert {"mse", "mae", "ssim", "psnr"} <= set(metrics)
    # TensorBoard event files hold scalars, prediction images and GIF videos
    ea = EventAccumulator(str(tiny_run), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    assert {"train/loss", "train/lr", "train/elapsed_seconds", "val/mse", "val/ssim", "test/mse"} <= set(
        tags["scalars"]
    )
    assert [e.step for e in ea.Scalars("train/loss")] == [2, 4, 6]
    elapsed = [e.value for e in ea.Scalars("train/elapsed_seconds")]
    assert len(elapsed) == 3 and 0 < elapsed[0] <= elapsed[1] <= elapsed[2]
    # the task's per-step logs (0-dim tensors, read by the loop only when it logs) reach TensorBoard
    per_frame = ea.Scalars("train/mse_per_frame")
    assert [e.step for e in per_frame] == [2, 4, 6] and all(0 < e.value < 4096 for e in per_frame)
    assert "predictions/sequence_0" in tags["images"]
    gif = ea.Images("videos/sequence_0_truth_vs_prediction")[-1]
    assert gif.encoded_image_string[:6] in (b"GIF87a", b"GIF89a")
    png = ea.Images("predictions/sequence_0")[-1]
    assert png.encoded_image_string[:4] == b"\x89PNG"


def test_checkpoint_round_trip(tiny_run: Path):
    model, cfg = load_trained(str(tiny_run / "checkpoints" / "last.pt"))
    ck = load_checkpoint(tiny_run / "checkpoints" / "last.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck["model"][k]), k
    assert cfg["model"]["hidden_channels"] == [8, 8]


def test_evaluate_and_predict_end_to_end(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "eval.json"
    res = _run(
        "scripts/evaluate.py",
        "--checkpoint",
        str(tiny_run / "checkpoints" / "best.pt"),
        "--sequences",
        "6",
        "--json",
        str(out),
    )
    assert "copy_last" in res.stdout
    data = json.loads(out.read_text())
    assert {"mse", "mae", "ssim", "psnr", "per_frame"} <= set(data)
    assert len(data["per_frame"]["mse"]) == 4
    assert data["baselines"]["zeros"]["mse"] > 0
    # --digits 3: out-of-domain sequences have more ink, so the all-zeros baseline grows
    out3 = tmp_path / "eval3.json"
    _run(
        "scripts/evaluate.py",
        "--checkpoint",
        str(tiny_run / "checkpoints" / "best.pt"),
        "--sequences",
        "6",
        "--digits",
        "3",
        "--json",
        str(out3),
    )
    assert json.loads(out3.read_text())["baselines"]["zeros"]["mse"] > data["baselines"]["zeros"]["mse"]
    # --recognition: a digit classifier reads every digit window of the prediction and the truth
    outr = tmp_path / "evalr.json"
    res = _run(
        "scripts/evaluate.py",
        "--checkpoint",
        str(tiny_run / "checkpoints" / "best.pt"),
        "--sequences",
        "6",
        "--recognition",
        "--recognizer-epochs",
        "1",
        "--json",
        str(outr),
    )
    rec = json.loads(outr.read_text())["recognition"]
    assert set(rec) == {"model", "truth", "isolated_test_digits"} and len(rec["truth"]["per_frame"]) == 4
    assert 0 <= rec["isolated_test_digits"] <= 1
    assert all(0 <= v <= 1 for v in rec["model"]["per_frame"] + rec["truth"]["per_frame"])
    assert "all 2 digits right at the last frame" in res.stdout

    from convlstm_vp.data import moving_mnist_batch

    clip = (moving_mnist_batch(1, source="embedded", split="test", num_frames=9, rng=3)[0, :, 0].numpy() * 255).astype(
        np.uint8
    )
    np.save(tmp_path / "clip.npy", clip)
    for name in ("pred.gif", "pred.mp4"):
        _run(
            "scripts/predict.py",
            "--checkpoint",
            str(tiny_run / "checkpoints" / "best.pt"),
            "--input",
            str(tmp_path / "clip.npy"),
            "--output",
            str(tmp_path / name),
        )
        assert (tmp_path / name).stat().st_size > 1000
    from PIL import Image

    gif = Image.open(tmp_path / "pred.gif")
    assert gif.n_frames == 8 and gif.size[0] > 2 * 64  # input+truth | input+prediction side by side
    # a clip that is too short gives a clear error
    np.save(tmp_path / "short.npy", clip[:2])
    res = subprocess.run(
        [
            sys.executable,
            "scripts/predict.py",
            "--checkpoint",
            str(tiny_run / "checkpoints" / "best.pt"),
            "--input",
            str(tmp_path / "short.npy"),
            "--output",
            str(tmp_path / "x.gif"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "needs 4 context frames" in res.stderr


def test_motion_error_and_evaluate_motion(tiny_run: Path, tmp_path: Path):
    from convlstm_vp.train.tasks.frames import motion_error

    target = torch.zeros(2, 3, 2, 4, 4)
    target[:, :, 0] = 3.0
    weights = torch.zeros(2, 3, 1, 4, 4)
    weights[:, :, :, :2] = 1.0
    guess = target.clone()
    guess[:, 1, 1] = 1.0  # frame 2 wrong by 1 px in x on every cell
    guess[:, :, :, 2:] = 50.0  # cells without a target do not count
    mo = motion_error(guess, target, weights)
    assert mo["per_frame"] == pytest.approx([0.0, 0.5, 0.0])
    assert mo["mae_px"] == pytest.approx(0.5 / 3) and mo["no_motion_mae_px"] == pytest.approx(1.5)
    assert mo["no_motion_per_frame"] == pytest.approx([1.5] * 3)
    # evaluate.py --motion compares the kernels' offsets with the test digits' true motion
    out = tmp_path / "evalm.json"
    res = _run(
        "scripts/evaluate.py",
        "--checkpoint",
        str(tiny_run / "checkpoints" / "best.pt"),
        "--sequences",
        "6",
        "--motion",
        "--json",
        str(out),
    )
    data = json.loads(out.read_text())["motion"]
    assert len(data["per_frame"]) == 4 and data["no_motion_mae_px"] > 1.0
    assert 0 < data["mae_px"] < 10 and "true motion" in res.stdout


def test_evaluate_and_predict_filter_temperature(tiny_run: Path, tmp_path: Path):
    ck = str(tiny_run / "checkpoints" / "best.pt")
    runs = {}
    for t in ("1", "0.5"):
        res, runs[t] = _evaluate(ck, tmp_path / f"t{t}.json", "--filter-temperature", t)
        assert runs[t]["filter_temperature"] == float(t)
    assert "filter temperature 0.5" in res.stdout and runs["0.5"]["mse"] != runs["1"]["mse"]
    for script, extra in (
        ("scripts/evaluate.py", ["--sequences", "4"]),
        ("scripts/predict.py", ["--input", "x.npy", "--output", "x.gif"]),
    ):
        res = run_script(script, "--checkpoint", ck, "--filter-temperature", "0", *extra, ok=False)
        assert res.returncode == 2 and "--filter-temperature: expected a finite number > 0, got 0.0" in res.stderr


def test_eval_filter_temperature_sharpens_predictions_not_training(tiny_run: Path, tmp_path: Path):
    from convlstm_vp.train.config import load_config as load
    from convlstm_vp.train.tasks.frames import DEFAULTS, MovingMNISTTask

    run = tmp_path / "t0.5"
    _run(
        "scripts/train_moving_mnist.py",
        "--config",
        str(TINY),
        "--run-dir",
        str(run),
        "--set",
        "model.eval_filter_temperature=0.5",
    )
    # tiny_run: the same config with the default eval_filter_temperature, 1.0
    assert DEFAULTS["model"]["eval_filter_temperature"] == 1.0
    runs = {
        "1.0": json.loads((tiny_run / "metrics.json").read_text()),
        "0.5": json.loads((run / "metrics.json").read_text()),
    }
    assert runs["1.0"]["weights_sha256"] == runs["0.5"]["weights_sha256"]  # the same training ...
    assert runs["1.0"]["mse"] != runs["0.5"]["mse"]  # ... evaluated with other kernels
    ck = str(tmp_path / "t0.5" / "checkpoints" / "last.pt")
    model, cfg = load_trained(ck)
    assert cfg["model"]["eval_filter_temperature"] == 0.5 and not hasattr(model, "filter_temperature")
    for extra, expected in (([], 0.5), (["--filter-temperature", "1"], 1.0)):  # evaluate.py: the config's, unless told
        assert _evaluate(ck, tmp_path / f"ev{expected}.json", *extra)[1]["filter_temperature"] == expected
    for bad, match in (
        (["model.eval_filter_temperature=0"], "finite number > 0"),
        (["model.eval_filter_temperature=0.5", "model.head=conv"], "conv head has no filter kernels"),
    ):
        with pytest.raises(ValueError, match=match):
            MovingMNISTTask(load(TINY, DEFAULTS, ["data.source=embedded", *bad]))


def test_evaluate_and_predict_render_option(tiny_run: Path, tmp_path: Path):
    """--render warp renders a dynamic-filter checkpoint by warping with the same kernels."""
    ck = str(tiny_run / "checkpoints" / "best.pt")
    runs = {}
    for render in ("filter", "warp"):
        res, runs[render] = _evaluate(ck, tmp_path / f"{render}.json", "--render", render)
        assert runs[render]["render"] == render and runs[render]["head"] == "dynamic_filter"
    assert "rendered by warp" in res.stdout and runs["warp"]["mse"] != runs["filter"]["mse"]
    # the default is the filter, as trained
    assert _evaluate(ck, tmp_path / "default.json")[1]["mse"] == runs["filter"]["mse"]
    np.save(tmp_path / "in.npy", np.random.default_rng(0).random((6, 64, 64)).astype(np.float32))
    gif = tmp_path / "w.gif"
    _run(
        "scripts/predict.py",
        "--checkpoint",
        ck,
        "--input",
        str(tmp_path / "in.npy"),
        "--output",
        str(gif),
        "--render",
        "warp",
    )
    assert gif.stat().st_size > 0


def test_old_checkpoints_still_load(tiny_run: Path, tmp_path: Path):
    """An older checkpoint holds the scheduled-sampling counter and config keys of
    removed options; it loads (the counter and neutral keys dropped) and predicts as before."""
    from convlstm_vp.train.checkpoint import CheckpointError, save_checkpoint

    ck = load_checkpoint(tiny_run / "checkpoints" / "last.pt")
    model, _ = load_trained(str(tiny_run / "checkpoints" / "last.pt"))
    old = dict(ck, model={**ck["model"], "sampling_updates": torch.tensor(6)})
    old["config"] = {
        **ck["config"],
        "ssim_weight": 0.0,
        "model": {**ck["config"]["model"], "memory_format": "contiguous", "motion_input": False},
    }
    save_checkpoint(tmp_path / "old.pt", old)
    loaded, cfg = load_trained(str(tmp_path / "old.pt"))
    x = torch.rand(2, 4, 1, 64, 64)
    torch.testing.assert_close(loaded.predict(x), model.predict(x), rtol=0, atol=0)
    # trained with the removed warp head: the same parameters as the dynamic filter, a warning
    warp = dict(old, config={**old["config"], "model": {**old["config"]["model"], "head": "warp"}})
    save_checkpoint(tmp_path / "warp.pt", warp)
    with pytest.warns(UserWarning, match="removed head 'warp'.*render='warp'"):
        loaded, cfg = load_trained(str(tmp_path / "warp.pt"))
    assert cfg["model"]["head"] == "dynamic_filter"
    # a model that needed a removed option cannot be rebuilt: a clear error
    for change, match in (({"motion_input": True}, "model.motion_input"), ({"head": "composite"}, "'composite'")):
        bad = dict(old, config={**old["config"], "model": {**old["config"]["model"], **change}})
        save_checkpoint(tmp_path / "bad.pt", bad)
        with pytest.raises(CheckpointError, match=match):
            load_trained(str(tmp_path / "bad.pt"))


def test_evaluate_device_option(tiny_run: Path, tmp_path: Path):
    """--device cpu always works; --device cuda runs on the GPU (same metrics) or says none is there."""
    ck = str(tiny_run / "checkpoints" / "best.pt")
    on_cpu = tmp_path / "cpu.json"
    _run("scripts/evaluate.py", "--checkpoint", ck, "--sequences", "4", "--device", "cpu", "--json", str(on_cpu))
    args = [
        sys.executable,
        "scripts/evaluate.py",
        "--checkpoint",
        ck,
        "--sequences",
        "4",
        "--device",
        "cuda",
        "--json",
        str(tmp_path / "cuda.json"),
    ]
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if torch.cuda.is_available():
        assert res.returncode == 0, res.stdout + res.stderr
        a, b = (json.loads((tmp_path / f).read_text())["mse"] for f in ("cpu.json", "cuda.json"))
        assert abs(a - b) <= 0.02 * a  # cuDNN may use TF32 convolutions
    else:
        assert res.returncode != 0 and "no CUDA device" in res.stderr
        assert not (tmp_path / "cuda.json").exists()


def test_gpu_check_script_runs_end_to_end_on_a_tiny_config(tmp_path: Path):
    """scripts/gpu_check.sh (here its training, timeline and evaluation stages on a tiny config,
    on the CPU) writes its summary, the run's curve and the evaluation; a stage that the budget
    leaves no time for is reported, not run."""
    env = dict(
        os.environ,
        OUT=str(tmp_path / "out"),
        RUNS=str(tmp_path / "runs"),
        PY=sys.executable,
        CFG=str(TINY),
        EVAL_SEQ="8",
        QUICK_SET="--set train.num_threads=1 --set train.log_every=1",
        QUICK_AFTER="2",
        OPENSTL_CFG=str(TINY),
        SKIP="graphed,bench-openstl,bench-moving_mnist",
        # after the script's own --warmup/--steps, so these few win (argparse keeps the last)
        OPENSTL_SET="--set train.num_threads=1 --warmup 2 --steps 4",
    )
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        cwd=tmp_path,
        env={**env, "BUDGET_S": "600", "SKIP": env["SKIP"] + ",suite"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "quick: rc=0" in summary and "quick-eval: rc=0" in summary and "bench-openstl: skipped (SKIP)" in summary
    assert "openstl: rc=0" in summary and "gpu-openstl (fp32, auto): " in summary and "125,000 steps: " in summary
    assert json.loads((tmp_path / "out" / "quick-metrics.json").read_text())["step"] == 6
    assert json.loads((tmp_path / "out" / "quick-eval.json").read_text())["sequences"] == 8
    curve = (tmp_path / "out" / "quick-curve.csv").read_text().splitlines()
    assert curve[0] == "step,minutes,val/mse" and [row.split(",")[0] for row in curve[1:]] == ["3", "6"]
    timeline = json.loads((tmp_path / "out" / "quick-timeline.json").read_text())
    assert timeline["steps_per_second"] > 0 and timeline["clock"] == "train/elapsed_seconds"
    # a training stage cut by its limit: SIGTERM saves the run (checkpoint, events), which is still scored.
    # The quick stage gets BUDGET_S less the 60 s kept for its evaluation less the script's start-up
    # (several seconds on a busy machine), and a stage under 20 s is not run: 100 leaves it about 30 s.
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **env,
            "BUDGET_S": "100",
            "OUT": str(tmp_path / "out3"),
            "RUNS": str(tmp_path / "runs3"),
            "SKIP": env["SKIP"] + ",openstl,suite",
            "QUICK_SET": env["QUICK_SET"] + " --set train.steps=1000000",
        },
    )
    summary = (tmp_path / "out3" / "summary.txt").read_text()
    assert "quick: rc=124" in summary and "TIMED OUT" in summary and "quick-eval: rc=0" in summary, summary
    assert len((tmp_path / "out3" / "quick-curve.csv").read_text().splitlines()) > 2
    assert (tmp_path / "runs3" / "quick" / "checkpoints" / "last.pt").is_file()
    # no time left: the stages are reported as not run, and the script still ends cleanly
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        cwd=tmp_path,
        env={**env, "BUDGET_S": "5", "OUT": str(tmp_path / "out2")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = (tmp_path / "out2" / "summary.txt").read_text()
    assert "quick: not run" in summary and "suite: not run" in summary, summary


def test_train_implementation_compiled_runs_every_cell_step_through_torch_compile(tmp_path: Path, monkeypatch):
    """fit() with train.implementation=compiled hands each cell's step functions to torch.compile (here a
    recording stand-in that returns them unchanged) and trains to the eager run's weights."""
    from convlstm_vp.nn import ConvLSTMCell
    from convlstm_vp.train.config import load_config
    from convlstm_vp.train.loop import fit
    from convlstm_vp.train.tasks.frames import DEFAULTS, MovingMNISTTask

    compiled = []

    def recording_compile(fn, **kwargs):
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)
    sets = ["train.num_threads=1", "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2"]
    weights, models = {}, {}
    for flag, implementation in (("false", "fused"), ("true", "compiled")):
        cfg = load_config(str(TINY), DEFAULTS, sets + [f"train.implementation={implementation}"])
        task = MovingMNISTTask(cfg)
        built = []
        build = task.build_model
        monkeypatch.setattr(task, "build_model", lambda build=build: built.append(build()) or built[-1])
        fit(task, cfg, tmp_path / flag)
        models[flag] = built  # the trained model, which the final test loads best.pt into
        weights[flag] = load_checkpoint(tmp_path / flag / "checkpoints" / "last.pt")["model"]
    assert len(models["true"]) == 1
    cells = [m for model in models["true"] for m in model.modules() if isinstance(m, ConvLSTMCell)]
    assert cells and all(c.paths("cpu").compile for c in cells)
    assert not any(
        c.paths("cpu").compile for model in models["false"] for c in model.modules() if isinstance(c, ConvLSTMCell)
    )
    # every cell compiled its own step functions (training steps, validation, the final test)
    owners = {f.__self__ for f in compiled}
    assert owners == set(cells)
    assert weights["true"].keys() == weights["false"].keys()
    for k in weights["false"]:
        torch.testing.assert_close(weights["true"][k], weights["false"][k], rtol=0, atol=0, msg=k)


def test_predict_input_scale_follows_the_dtype_and_never_guesses(tmp_path: Path):
    from convlstm_vp.data.video_folder import iter_frames
    from convlstm_vp.train.predict import parse_range

    def read_frames(path, input_range=None):  # grey frames (T, H, W) as predict and VideoFolder read them
        return np.stack(list(iter_frames(path, input_range)))[..., 0]

    rng = np.random.default_rng(0)
    clip = rng.random((6, 16, 16)).astype(np.float32) * 0.9
    clip[0, 0, 0] = 1.0
    np.save(tmp_path / "f.npy", clip)
    np.testing.assert_allclose(read_frames(tmp_path / "f.npy"), clip)  # float in [0, 1]: as is
    u8 = (clip * 255).astype(np.uint8)
    np.save(tmp_path / "u8.npy", u8)
    np.testing.assert_allclose(read_frames(tmp_path / "u8.npy"), u8 / 255.0, atol=1e-6)
    # one pixel at 1.5 used to turn the clip into u8/255 (nearly black): now an error naming the range
    bright = clip.copy()
    bright[2, 3, 3] = 1.5
    np.save(tmp_path / "bright.npy", bright)
    with pytest.raises(
        ValueError, match=r"bright.npy: float32 frames must lie in \[0, 1\], got values in \[.*, 1.5\].*--input-range"
    ):
        read_frames(tmp_path / "bright.npy")
    # an explicit range maps linearly, and is checked too
    np.testing.assert_allclose(read_frames(tmp_path / "bright.npy", parse_range("0,1.5")), bright / 1.5, atol=1e-6)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1.2\]"):
        read_frames(tmp_path / "bright.npy", parse_range("0,1.2"))
    for text in ("1", "a,b", "3,1", "0,inf"):
        with pytest.raises(ValueError, match="--input-range"):
            parse_range(text)
    for bad in (np.nan, np.inf):
        broken = clip.copy()
        broken[1, 1, 1] = bad
        np.save(tmp_path / "nf.npy", broken)
        with pytest.raises(ValueError, match="nf.npy: frames hold NaN or Inf"):
            read_frames(tmp_path / "nf.npy")
    np.save(tmp_path / "u16.npy", (clip * 4000).astype(np.uint16))
    with pytest.raises(ValueError, match="uint16 frames have no known scale; pass --input-range"):
        read_frames(tmp_path / "u16.npy")
    np.testing.assert_allclose(
        read_frames(tmp_path / "u16.npy", (0.0, 4000.0)), (clip * 4000).astype(np.uint16) / 4000.0, atol=1e-6
    )
    np.save(tmp_path / "empty.npy", np.zeros((0, 16, 16), np.float32))
    with pytest.raises(ValueError, match="empty.npy: holds no frames"):
        read_frames(tmp_path / "empty.npy")
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="corrupt.npy: not a readable .npy array"):
        read_frames(tmp_path / "corrupt.npy")
    (tmp_path / "corrupt.gif").write_bytes(b"GIF89a\x00\x01")
    with pytest.raises(ValueError, match="corrupt.gif: not a readable GIF"):
        read_frames(tmp_path / "corrupt.gif")


def test_predict_and_evaluate_reject_bad_arguments_before_any_work(tiny_run: Path, tmp_path: Path):
    ck = str(tiny_run / "checkpoints" / "best.pt")
    np.save(tmp_path / "in.npy", np.random.default_rng(1).random((12, 32, 32)).astype(np.float32))
    cases = [
        (
            "scripts/predict.py",
            ["--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.txt")],
            "--output: expected a file ending in .gif",
        ),
        (
            "scripts/predict.py",
            ["--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.gif"), "--start", "-5"],
            "--start: expected an integer >= 0",
        ),
        (
            "scripts/predict.py",
            ["--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "in.npy" / "sub" / "o.gif")],
            "cannot create the output folder",
        ),
        ("scripts/evaluate.py", ["--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
        ("scripts/evaluate.py", ["--sequences", "0"], "--sequences: expected an integer >= 1, got 0"),
        (
            "scripts/evaluate.py",
            ["--json", str(tmp_path / "in.npy" / "e.json")],
            "--json: cannot create the output folder",
        ),
    ]
    for script, extra, message in cases:  # in this process: an uncaught exception fails the test
        res = run_script(script, "--checkpoint", ck, *extra, ok=False)
        assert res.returncode == 2, (script, extra, res.stdout, res.stderr)
        assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "o.txt").exists() and not (tmp_path / "o.gif").exists()
