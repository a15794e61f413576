"""MNIST-patch demo: PatchSequenceClassifier, the patch data path, and both scripts end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convlstm_vp import ConvLSTM, PatchSequenceClassifier
from convlstm_vp.data import MNISTPatchSequences, load_digits, unpatchify
from convlstm_vp.train.checkpoint import load_checkpoint
from convlstm_vp.train.config import load_config
from convlstm_vp.train.tasks.digit_images import captioned_tiles
from convlstm_vp.train.tasks.patch_classifier import DEFAULTS as CLASSIFIER_DEFAULTS
from convlstm_vp.train.tasks.patch_classifier import PatchClassifierTask
from convlstm_vp.train.tasks.patch_completion import DEFAULTS as COMPLETION_DEFAULTS
from convlstm_vp.train.tasks.patch_completion import PatchCompletionTask
from convlstm_vp.train.tasks.patch_data import load_test_patches, random_affine, subset_indices

ROOT = Path(__file__).resolve().parents[1]
TINY_CLASSIFIER = ROOT / "configs" / "tiny-patch-classifier.yaml"
TINY_COMPLETION = ROOT / "configs" / "tiny-patch-completion.yaml"


def _tiny_classifier_cfg(*overrides: str) -> dict:
    return load_config(TINY_CLASSIFIER, CLASSIFIER_DEFAULTS, list(overrides))


# ---------------------------------------------------------------- model
def test_classifier_shapes_layouts_and_every_parameter_used():
    torch.manual_seed(0)
    model = PatchSequenceClassifier(1, [6, 5], 3, num_classes=10, patch_size=7)
    assert isinstance(model.convlstm, ConvLSTM) and model.convlstm.spatial_dims == 2
    x = torch.rand(3, 16, 1, 7, 7)
    logits = model(x)
    assert logits.shape == (3, 10)
    torch.testing.assert_close(model(x[1]), logits[1])  # unbatched (T, C, p, p)
    assert model(x[:, :5]).shape == (3, 10)  # any sequence length
    last = PatchSequenceClassifier(1, [6, 5], 3, num_classes=10, patch_size=7, data_format="channels_last")
    last.load_state_dict(model.state_dict())
    torch.testing.assert_close(last(rearrange(x, "b t c h w -> b t h w c")), logits)
    logits.sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unused == []
    pooled = PatchSequenceClassifier(1, [4], 3, num_classes=3, patch_size=7, head="pool")
    assert pooled.fc.in_features == 4 and pooled(x).shape == (3, 3)
    both = PatchSequenceClassifier(1, [4], 3, patch_size=7, bidirectional=True).eval()
    assert both.fc.in_features == 2 * 4 * 7 * 7 and both(x).shape == (3, 10)


def test_classifier_rejects_bad_input_naming_the_expected_shape():
    model = PatchSequenceClassifier(1, [4], 3, patch_size=7)
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\).*C=1, H=W=patch_size=7.*got \(2, 16, 1, 8, 8\)"):
        model(torch.rand(2, 16, 1, 8, 8))
    with pytest.raises(ValueError, match=r"got \(16, 49\)"):
        model(torch.rand(16, 49))
    with pytest.raises(ValueError, match="head"):
        PatchSequenceClassifier(1, [4], head="mean")
    with pytest.raises(ValueError, match="hidden_channels"):
        PatchSequenceClassifier(1, [])


def test_classifier_reads_the_patches_in_sequence_order():
    """Reversing the patch order changes the logits: the model is a sequence model, not a bag of patches."""
    torch.manual_seed(0)
    model = PatchSequenceClassifier(1, [4], 3).eval()
    x = torch.rand(2, 16, 1, 7, 7)
    assert not torch.allclose(model(x), model(x.flip(1)))


# ---------------------------------------------------------------- data path
@pytest.mark.parametrize("order", ["raster", "snake"])
def test_patch_order_round_trip_through_the_data_path(order):
    """Training batches equal the dataset's items, and unpatchify gives back the digits."""
    cfg = _tiny_classifier_cfg(f"data.order={order}", "data.max_shift=0")
    task = PatchClassifierTask(cfg)
    batch, labels = task.train_batch(step=3, rank=0, world=1)
    assert batch.shape == (8, 16, 1, 7, 7) and batch.dtype == torch.float32
    # every digit of the batch is a dataset item of the pool: find it by its pixels
    dataset = MNISTPatchSequences("datasets", "train", 7, order, "embedded")
    pool = task.pool.indices  # 256 evenly spaced train digits less the validation digits
    val = task.pool.val_indices  # 10% of each class of them, held out
    assert len(pool) + len(val) == 256 and not set(pool.tolist()) & set(val.tolist())
    assert (
        20 <= len(val) <= 30
        and len(set(task.pool.labels.tolist())) == 10
        and len(set(task.pool.val_labels.tolist())) == 10
    )
    images = torch.from_numpy(load_digits("datasets", "train", "embedded").images[pool].astype(np.float32) / 255.0)
    reassembled = unpatchify(batch, 28, order)  # (8, 1, 28, 28)
    for k in range(batch.shape[0]):
        matches = [int(pool[i]) for i in range(len(pool)) if torch.equal(images[i], reassembled[k, 0])]
        assert len(matches) >= 1
        item, label = dataset[matches[0]]
        assert torch.equal(item, batch[k]) and label == int(labels[k])
    # the validation set is the held-out train digits' items, in order
    val_patches, val_labels = task.val_set()
    for i in (0, len(val) - 1):
        item, label = dataset[int(val[i])]
        assert torch.equal(val_patches[i], item) and int(val_labels[i]) == label
    # the test set is the test split's items (64 evenly spaced ones), in order
    patches, test_labels = load_test_patches(cfg["data"])
    test_set = MNISTPatchSequences("datasets", "test", 7, order, "embedded")
    assert patches.shape == (64, 16, 1, 7, 7) and len(set(test_labels.tolist())) == 10
    chosen = subset_indices(len(test_set), 64)
    for i in (0, 17, 63):
        item, label = test_set[int(chosen[i])]
        assert torch.equal(patches[i], item) and int(test_labels[i]) == label
    # the misclassified-digit picture shows the reassembled digit (2x nearest upscaling)
    tile = captioned_tiles(unpatchify(patches[:1], 28, order), ["x"])
    torch.testing.assert_close(tile[0, 0, :56:2, :56:2], unpatchify(patches[0], 28, order)[0])


def test_training_batches_are_pure_functions_of_seed_step_rank_and_shifts_keep_the_digit():
    task = PatchClassifierTask(_tiny_classifier_cfg("data.max_shift=2"))
    a, la = task.train_batch(5, 0, 1)
    b, lb = task.train_batch(5, 0, 1)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(task.train_batch(6, 0, 1)[0], a)
    # a shift moves a digit; digits with an empty 2-pixel border lose nothing
    digits = load_digits("datasets", "train", "embedded").images[subset_indices(4000, 64)]
    shifted = random_affine(digits, np.random.default_rng(0), max_shift=2)
    assert shifted.shape == digits.shape and shifted.dtype == digits.dtype
    inner = np.zeros((28, 28), bool)
    inner[2:-2, 2:-2] = True
    framed = [i for i in range(64) if not digits[i][~inner].any()]
    assert len(framed) > 32
    mass = lambda a: a.reshape(len(a), -1).sum(1, dtype=np.int64)  # noqa: E731
    assert np.array_equal(mass(shifted[framed]), mass(digits[framed]))
    assert (mass(shifted) <= mass(digits)).all()
    moved = [i for i in framed if not np.array_equal(shifted[i], digits[i])]
    assert len(moved) > len(framed) // 2
    for i in moved[:8]:  # each equals its digit rolled by some offset in [-2, 2]^2 (nothing wraps)
        assert any(
            np.array_equal(np.roll(digits[i], (dy, dx), axis=(0, 1)), shifted[i])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )
    # rotation and zoom keep the ink roughly, and are drawn from the same seeded stream
    turned = random_affine(digits, np.random.default_rng(1), max_shift=1, max_rotation=10.0, max_scale=0.1)
    assert np.array_equal(turned, random_affine(digits, np.random.default_rng(1), 1, 10.0, 0.1))
    assert not np.array_equal(turned, random_affine(digits, np.random.default_rng(1), max_shift=1))
    ratio = mass(turned[framed]) / mass(digits[framed])
    assert ((ratio > 0.75) & (ratio < 1.3)).all()


def test_bad_data_config_names_the_key():
    from convlstm_vp.train.config import ConfigError

    with pytest.raises(ConfigError, match="data.order"):
        PatchClassifierTask(_tiny_classifier_cfg("data.order=spiral"))
    with pytest.raises(ConfigError, match="data.patch_size"):
        PatchClassifierTask(_tiny_classifier_cfg("data.patch_size=5"))
    cfg = load_config(TINY_COMPLETION, COMPLETION_DEFAULTS, ["model.output_frames=7"])
    with pytest.raises(ConfigError, match="input_frames.*output_frames.*16 patches"):
        PatchCompletionTask(cfg)


# ---------------------------------------------------------------- learning
@pytest.fixture
def one_thread():
    """One intra-op thread: on 2 shared cores, 2 threads per process oversubscribe and crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_classifier_overfits_a_tiny_batch(one_thread):
    torch.manual_seed(0)
    dataset = MNISTPatchSequences("datasets", "train", 7, "raster", "embedded")
    chosen = [int(i) for i in subset_indices(len(dataset), 32)]
    x = torch.stack([dataset[i][0] for i in chosen])
    y = torch.tensor([dataset[i][1] for i in chosen])
    assert len(set(y.tolist())) == 10
    model = PatchSequenceClassifier(1, [16], 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert first > 2.0  # about log(10) at the start
    assert float(F.cross_entropy(logits, y)) < 0.05
    assert bool((logits.argmax(1) == y).all())


# ---------------------------------------------------------------- scripts
def _tb_tags(run_dir: Path) -> dict:
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc.Tags()


def test_scripts_run_end_to_end_on_tiny_configs(tmp_path: Path):
    runs = {
        "classifier": ("scripts/train_patch_classifier.py", TINY_CLASSIFIER),
        "completion": ("scripts/complete_patches.py", TINY_COMPLETION),
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, script, "--config", str(config), "--run-dir", str(tmp_path / name)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, (script, config) in runs.items()
    }  # the two runs share the two cores
    out = {}
    for name, proc in procs.items():
        out[name] = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, out[name]

    run = tmp_path / "classifier"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["step"] == 4
    recall = metrics["per_class_recall"]
    assert len(recall) == 10 and all(0.0 <= r <= 1.0 for r in recall)
    assert "test accuracy:" in out["classifier"] and "per-class recall: 0:" in out["classifier"]
    assert f"{metrics['accuracy']:.4f}" in out["classifier"]
    for ckpt in ("last.pt", "best.pt"):
        state = load_checkpoint(run / "checkpoints" / ckpt)
        assert "convlstm.cells.0.weight_ih" in state["model"] and "fc.weight" in state["model"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    assert Image.open(run / "confusion_matrix.png").size[0] > 100
    grid = Image.open(run / "misclassified.png")
    assert grid.size[0] >= 56 and grid.size[1] >= 56
    tags = _tb_tags(run)
    assert {
        "train/loss",
        "train/accuracy",
        "val/accuracy",
        "val/loss",
        "val_per_class/recall_9",
        "test/accuracy",
        "test_per_class/recall_9",
    } <= set(tags["scalars"])
    assert {"val/confusion_matrix", "val/misclassified", "test/confusion_matrix", "test/misclassified"} <= set(
        tags["images"]
    )

    run = tmp_path / "completion"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"mse", "mae", "ssim", "psnr", "bce"} <= set(metrics) and metrics["mse"] > 0
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    picture = Image.open(run / "completions.png")
    # 4 examples as rows of (input, predicted, truth): 3 tiles of 56 + caption 14 per row
    assert picture.size == (3 * 56 + 4 * 2, 4 * (56 + 14) + 5 * 2)
    assert f"reassembled digits: {run / 'completions.png'}" in out["completion"]
    tags = _tb_tags(run)
    assert {"val/completions", "test/completions"} <= set(tags["images"]) and {
        "train/loss",
        "val/mse",
        "test/mse",
    } <= set(tags["scalars"])


def test_subset_indices_are_evenly_spaced_and_cover_every_class():
    assert subset_indices(10, 0).tolist() == list(range(10))
    assert subset_indices(9, 3).tolist() == [0, 4, 8]
    labels = load_digits("datasets", "test", "embedded").labels  # sorted by class
    assert sorted(set(labels[subset_indices(len(labels), 20)].tolist())) == list(range(10))
    with pytest.raises(ValueError, match="12 of 10"):
        subset_indices(10, 12)
