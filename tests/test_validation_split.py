"""Validation splits: best.pt and early stopping are chosen on data held out of the training set;
the test split is read only by the final test."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from convlstm_vp.data import MovingMNIST, load_digits, stratified_split
from convlstm_vp.train.checkpoint import load_checkpoint
from convlstm_vp.train.config import ConfigError, load_config
from convlstm_vp.train.loop import fit
from convlstm_vp.train.tasks import frames as mm

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny-moving-mnist.yaml"
TINY = [
    "train.num_threads=1",
    "train.precision=fp32",
    "train.device=cpu",
    "train.progress=false",
    "model.hidden_channels=[4]",
    "model.input_frames=4",
    "model.output_frames=4",
    "data.val_sequences=4",
    "data.final_eval_sequences=4",
    "data.eval_batch_size=4",
    "log.examples=1",
    "train.batch_size=2",
    "data.source=embedded",
]


def _cfg(*overrides: str) -> dict:
    return load_config(CONFIG, mm.DEFAULTS, TINY + list(overrides))


# ----------------------------------------------------------------------------- the split helper
def test_stratified_split_holds_out_each_class_in_proportion_and_is_seeded():
    labels = np.repeat(np.arange(4), [10, 20, 1, 3])
    train, val = stratified_split(labels, 0.2, seed=0)
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(labels.size))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # items keep their order
    # 2 of 10, 4 of 20, the single item of class 2 stays in training, 1 of 3 (at least one)
    assert np.bincount(labels[val], minlength=4).tolist() == [2, 4, 0, 1]
    again = stratified_split(labels, 0.2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, val), again))
    other = stratified_split(labels, 0.2, seed=1)[1]
    assert not np.array_equal(val, other)
    with pytest.raises(ValueError, match="no class has two items"):
        stratified_split(np.arange(5), 0.2)
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(labels, 1.0)


def test_val_fraction_is_checked_before_any_work():
    from convlstm_vp.train.tasks.patch_classifier import DEFAULTS, PatchClassifierTask
    from convlstm_vp.train.tasks.sensors import DEFAULTS as SENSOR_DEFAULTS
    from convlstm_vp.train.tasks.sensors import SensorTask

    for bad in ("0", "0.7", "-0.1"):
        with pytest.raises(ConfigError, match=r"data\.val_fraction.*\(0, 0\.5\]"):
            PatchClassifierTask(load_config(None, DEFAULTS, [f"data.val_fraction={bad}", "data.source=embedded"]))
        with pytest.raises(ConfigError, match=r"data\.val_fraction"):
            SensorTask(load_config(None, SENSOR_DEFAULTS, [f"data.val_fraction={bad}"]))
    with pytest.raises(ConfigError, match=r"data\.val_fraction.*expected a number"):
        load_config(None, DEFAULTS, ["data.val_fraction=true"])


def test_renamed_config_keys_say_their_new_name():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'data\.eval_sequences'; it is now 'data\.val_sequences'"
    ):
        load_config(CONFIG, mm.DEFAULTS, ["data.eval_sequences=4"])
    from convlstm_vp.train.tasks.patch_classifier import DEFAULTS

    with pytest.raises(ConfigError, match=r"'data\.eval_size'; it is now 'data\.test_size'"):
        load_config(None, DEFAULTS, ["data.eval_size=4"])


# ----------------------------------------------------------------------------- Moving MNIST
def test_moving_mnist_validation_sequences_come_from_train_digits_with_their_own_seeds():
    val = MovingMNIST("datasets", "val", num_frames=8, length=6, source="embedded")
    test = MovingMNIST("datasets", "test", num_frames=8, length=6, source="embedded", standard_file=False)
    assert val.digits.split == "train" and test.digits.split == "test"
    again = MovingMNIST("datasets", "val", num_frames=8, length=6, source="embedded")
    assert all(torch.equal(val[i], again[i]) for i in range(6))  # a fixed set
    assert not any(torch.equal(val[i], test[i]) for i in range(6))
    # every validation digit is a train digit
    train_pool = load_digits("datasets", "train", "embedded")
    corners, labels = val.trajectories(0)
    assert labels.tolist() == [int(train_pool.labels[i]) for i in _ids(val, 0)]
    # and no validation sequence is a training batch's (the training stream seeds (seed, step, rank))
    task = mm.MovingMNISTTask(_cfg())
    batches = torch.cat([task.train_batch(step, 0, 1) for step in range(8)])
    for i in range(6):
        assert not any(torch.equal(val[i], b) for b in batches)


def _ids(ds: MovingMNIST, index: int) -> list[int]:
    _, ids = ds._tracks(index, "ids")
    return ids[0].tolist()


class _Recording(mm.MovingMNISTTask):
    """Records the order of evaluations, tests and Moving MNIST sets built."""

    events: list = []

    def evaluate(self, model, logger, step):
        self.events.append(("evaluate", step))
        return super().evaluate(model, logger, step)

    def test(self, model, logger, step, run_dir):
        self.events.append(("test", step))
        return super().test(model, logger, step, run_dir)


def test_training_selects_on_validation_and_reads_the_test_split_only_in_the_final_test(tmp_path, monkeypatch):
    built = _Recording.events = []

    class Spy(MovingMNIST):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(("set", self.split))

    monkeypatch.setattr(mm.sources, "MovingMNIST", Spy)
    cfg = _cfg("train.steps=6", "train.eval_every=2", "train.quick_eval_every=1", "data.quick_eval_sequences=2")
    metrics = fit(_Recording(cfg), cfg, tmp_path)
    tests = [i for i, e in enumerate(built) if e == ("set", "test")]
    assert len(tests) == 1 and built[tests[0] - 1][0] == "test"  # built once, inside the final test
    assert all(e != ("set", "test") for e in built[: tests[0]])
    assert [e for e in built if e[0] == "evaluate"] == [("evaluate", 2), ("evaluate", 4), ("evaluate", 6)]
    assert ("set", "val") in built[: tests[0]]

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["evaluated_on"]["split"] == "test" and saved["evaluated_on"]["checkpoint"] == "best.pt"
    v = saved["validation"]
    assert v["split"] == "validation" and v["sequences"] == 4 and v["best_metric"] == "mse"
    # best.pt is the step with the lowest validation MSE (TensorBoard val/mse)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    val_mse = {e.step: e.value for e in acc.Scalars("val/mse")}
    assert sorted(val_mse) == [2, 4, 6] and len(acc.Scalars("val_quick/mse")) == 6
    best = min(val_mse, key=val_mse.get)
    assert v["best_step"] == best == load_checkpoint(tmp_path / "checkpoints" / "best.pt")["step"]
    assert saved["evaluated_on"]["checkpoint_step"] == best
    assert abs(v["metrics"]["mse"] - val_mse[best]) < 1e-3 * val_mse[best]
    assert [e.step for e in acc.Scalars("test/mse")] == [6] and abs(
        acc.Scalars("test/mse")[0].value - saved["mse"]
    ) < 1e-3 * saved["mse"]
    assert metrics["mse"] == saved["mse"] and saved["stopped_early"] is False and saved["step"] == 6


# ----------------------------------------------------------------------------- early stopping
class _Scripted(mm.MovingMNISTTask):
    """Validation MSE follows a script (by evaluation step); it may SIGTERM itself at one step."""

    script = {1: 5.0, 2: 4.0, 3: 4.5, 4: 4.2, 5: 4.1, 6: 3.0, 7: 9.0, 8: 9.0}
    term_at: int | None = None

    def evaluate(self, model, logger, step):
        return {"mse": self.script[step]}

    def training_step(self, model, batch, step):
        if step == self.term_at and torch.is_grad_enabled():
            os.kill(os.getpid(), signal.SIGTERM)
        return super().training_step(model, batch, step)


def test_patience_stops_after_that_many_evaluations_without_a_better_validation_score(tmp_path):
    cfg = _cfg("train.steps=8", "train.eval_every=1", "train.patience=3", "train.schedule=constant")
    fit(_Scripted(cfg), cfg, tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    # best at step 2 (4.0); steps 3, 4, 5 are not better: stop at 5, before the better step 6
    assert saved["stopped_early"] is True and saved["step"] == 5 and saved["validation"]["best_step"] == 2
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["step"] == 5
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "best.pt")["step"] == 2
    last = (tmp_path / "a" / "checkpoints" / "last.pt").read_bytes()
    # resuming a run that stopped early does not train on
    fit(_Scripted(cfg), cfg, tmp_path / "a", resume=True)
    assert (tmp_path / "a" / "checkpoints" / "last.pt").read_bytes() == last
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["step"] == 5

    # the count survives an interruption: stopped by SIGTERM after step 3, resumed, same end
    task = _Scripted(cfg)
    task.term_at = 3
    with pytest.raises(SystemExit):
        fit(task, cfg, tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["since_best"] == 2
    fit(_Scripted(cfg), cfg, tmp_path / "b", resume=True)
    resumed = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert resumed["step"] == 5 and resumed["validation"]["best_step"] == 2 and resumed["stopped_early"] is True
    for key in ("mse", "ssim"):
        assert resumed[key] == saved[key]

    # patience 0 (the default) trains every step
    cfg = _cfg("train.steps=8", "train.eval_every=1", "train.schedule=constant")
    fit(_Scripted(cfg), cfg, tmp_path / "c")
    saved = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert saved["step"] == 8 and saved["stopped_early"] is False and saved["validation"]["best_step"] == 6
