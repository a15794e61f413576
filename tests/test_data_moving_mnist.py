"""Moving MNIST: generator geometry, determinism, layouts, standard test file, DataLoader workers."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import torch
from einops import rearrange
from torch.utils.data import DataLoader

from convlstm_vp.data import MovingMNIST, load_digits, moving_mnist_batch, render_moving_mnist
from convlstm_vp.data.moving_mnist import DEFAULT_SPEED, bouncing_trajectories, standard_test_file


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """An empty data root: digits come from the embedded source, no standard file."""
    return tmp_path_factory.mktemp("mm_root")


def _fold(p: np.ndarray, limit: float) -> np.ndarray:
    """Reflect coordinates that left [0, limit] back inside (at most one bounce per step)."""
    p = np.where(p < 0, -p, p)
    return np.where(p > limit, 2 * limit - p, p)


def test_bounce_keeps_speed_and_reflects_at_walls():
    positions, velocities = bouncing_trajectories(300, 60, 2, image_size=64, digit_size=28, rng=1)
    limit = 36.0
    assert positions.shape == velocities.shape == (300, 2, 60, 2)
    assert positions.min() >= 0.0 and positions.max() <= limit
    assert np.allclose(np.linalg.norm(velocities, axis=-1), DEFAULT_SPEED)
    # Each step moves by the current velocity, reflected at the walls.
    assert np.allclose(positions[:, :, 1:], _fold(positions[:, :, :-1] + velocities[:, :, :-1], limit))
    flips = np.sign(velocities[:, :, 1:]) != np.sign(velocities[:, :, :-1])
    assert flips.any(axis=(1, 2, 3)).mean() > 0.5  # most sequences bounce at least once
    straight = ~flips.any(axis=-1)
    step = positions[:, :, 1:] - positions[:, :, :-1]
    assert np.allclose(np.linalg.norm(step, axis=-1)[straight], DEFAULT_SPEED)
    # Directions are spread over the circle, not a few fixed angles.
    angles = np.arctan2(velocities[:, :, 0, 0], velocities[:, :, 0, 1])
    assert np.histogram(angles, bins=8, range=(-np.pi, np.pi))[0].min() > 40


def test_digits_stay_inside_the_canvas():
    solid = np.full((1, 28, 28), 255, dtype=np.uint8)
    frames, corners, ids = render_moving_mnist(solid, 200, 30, 1, 64, rng=3, return_trajectories=True)
    assert frames.shape == (200, 30, 64, 64) and frames.dtype == np.uint8
    assert corners.min() >= 0 and corners.max() <= 64 - 28
    # A digit cropped at a wall would show fewer than 28 * 28 pixels.
    assert ((frames == 255).sum(axis=(2, 3)) == 28 * 28).all()
    # The frame at t shows the digit exactly at its recorded corner.
    y, x = corners[5, 0, 7]
    assert (frames[5, 7, y : y + 28, x : x + 28] == 255).all()


def test_overlapping_digits_combine_with_max():
    pool = np.random.default_rng(0).integers(1, 256, size=(5, 28, 28), dtype=np.uint8)
    frames, corners, ids = render_moving_mnist(pool, 40, 20, 3, 64, rng=4, return_trajectories=True)
    expected = np.zeros_like(frames)
    overlapping_frames = 0
    for n in range(40):
        for t in range(20):
            count = np.zeros((64, 64), dtype=int)
            for d in range(3):
                y, x = corners[n, d, t]
                window = expected[n, t, y : y + 28, x : x + 28]
                window[...] = np.maximum(window, pool[ids[n, d]])
                count[y : y + 28, x : x + 28] += 1
            overlapping_frames += int((count > 1).any())
    assert overlapping_frames > 20  # the check below covers real overlaps
    assert np.array_equal(frames, expected)


def test_items_have_documented_shape_dtype_and_range(root):
    dataset = MovingMNIST(root, "train", length=4)
    item = dataset[0]
    assert item.shape == (20, 1, 64, 64) and item.dtype == torch.float32
    assert item.min() >= 0.0 and item.max() <= 1.0 and item.max() > 0.5
    # Two digits of about 150 lit pixels each are visible in every frame.
    assert ((item > 0).sum(dim=(1, 2, 3)) > 100).all()
    last = MovingMNIST(root, "train", length=4, data_format="channels_last")[0]
    assert last.shape == (20, 64, 64, 1)
    assert torch.equal(last, rearrange(item, "t c h w -> t h w c"))
    small = MovingMNIST(root, "train", num_digits=3, num_frames=7, image_size=48, length=2)[1]
    assert small.shape == (7, 1, 48, 48)
    assert MovingMNIST(root, "train", transform=lambda x: x * 2, length=1)[0].max() > 1.0
    with pytest.raises(IndexError):
        dataset[4]


def test_determinism_by_seed_and_epoch(root):
    a = MovingMNIST(root, "train", length=8, seed=5)
    b = MovingMNIST(root, "train", length=8, seed=5)
    c = MovingMNIST(root, "train", length=8, seed=6)
    assert torch.equal(a[3], b[3])
    assert not torch.equal(a[3], c[3])
    assert not torch.equal(a[3], a[4])
    epoch0 = a[3]
    a.set_epoch(1)
    assert not torch.equal(a[3], epoch0)  # training items change every epoch
    b.set_epoch(1)
    assert torch.equal(a[3], b[3])
    test = MovingMNIST(root, "test", length=8, seed=5)
    first = test[2]
    test.set_epoch(7)
    assert torch.equal(test[2], first)  # the test set is fixed
    assert test.digits.split == "test" and len(test.digits) == 1000


def test_batch_generation(root):
    rng = np.random.default_rng(0)
    first = moving_mnist_batch(4, root=root, rng=rng)
    second = moving_mnist_batch(4, root=root, rng=rng)
    assert first.shape == (4, 20, 1, 64, 64) and first.dtype == torch.float32
    assert not torch.equal(first, second)
    assert torch.equal(first, moving_mnist_batch(4, root=root, rng=np.random.default_rng(0)))
    dataset = MovingMNIST(root, "train", num_frames=10, data_format="channels_last")
    batch = dataset.generate_batch(3)
    assert batch.shape == (3, 10, 64, 64, 1) and not torch.equal(batch, dataset.generate_batch(3))


def test_generation_is_fast_enough():
    """The floor: 20,000 frames/s on one core (the benchmark script reports the figure)."""
    torch.set_num_threads(1)
    pool = load_digits(split="train", source="embedded")
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        moving_mnist_batch(64, digits=pool, rng=rng)
        rates.append(64 * 20 / (time.perf_counter() - start))
    assert max(rates) >= 20_000


def _write_standard(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def test_standard_file_is_loaded_for_test(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, size=(20, 5, 64, 64), dtype=np.uint8)
    _write_standard(standard_test_file(tmp_path), array)
    dataset = MovingMNIST(tmp_path, "test")
    assert dataset.standard_path == standard_test_file(tmp_path)
    assert len(dataset) == 5  # capped at the sequences in the file
    for i in (0, 4):
        expected = torch.from_numpy(array[:, i].astype(np.float32) / 255)
        assert torch.allclose(dataset[i][:, 0], expected)
    assert dataset[0].dtype == torch.float32 and dataset[-1].shape == (20, 1, 64, 64)
    assert MovingMNIST(tmp_path, "test", num_frames=10)[1].shape == (10, 1, 64, 64)
    assert MovingMNIST(tmp_path, "test", data_format="channels_last")[1].shape == (20, 64, 64, 1)
    # Forbid the file: the set is generated from the test digits instead.
    generated = MovingMNIST(tmp_path, "test", standard_file=False, length=3)
    assert generated.standard_path is None and len(generated) == 3
    # A request the file cannot serve falls back to generation unless the file is required.
    assert MovingMNIST(tmp_path, "test", num_digits=3, length=2).standard_path is None
    with pytest.raises(ValueError, match="num_frames=30"):
        MovingMNIST(tmp_path, "test", num_frames=30, standard_file=True)
    # Through workers (the memory map is reopened in each process).
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    stacked = torch.cat(list(loader))
    assert torch.allclose(stacked[:, :, 0], torch.from_numpy(array.astype(np.float32) / 255).transpose(0, 1))


def test_standard_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        MovingMNIST(tmp_path, "test", standard_file=True)
    assert str(standard_test_file(tmp_path)) in str(info.value)
    assert "mnist_test_seq.npy" in str(info.value) and "toronto" in str(info.value)
    with pytest.raises(ValueError, match="split='test'"):
        MovingMNIST(tmp_path, "train", standard_file=True)
    _write_standard(standard_test_file(tmp_path), np.zeros((5, 20, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(T, N, S, S\)"):
        MovingMNIST(tmp_path, "test")


def test_missing_mnist_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST/raw"):
        MovingMNIST(tmp_path, "train", source="mnist")


def _hashes(batch: torch.Tensor) -> list[str]:
    return [hashlib.sha1(seq.numpy().tobytes()).hexdigest() for seq in batch]


def test_dataloader_workers_give_distinct_reproducible_sequences(root):
    dataset = MovingMNIST(root, "train", length=24, seed=11)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, shuffle=False)
    epoch0 = torch.cat(list(loader))
    assert epoch0.shape == (24, 20, 1, 64, 64)
    hashes = _hashes(epoch0)
    assert len(set(hashes)) == 24  # no sequence repeated across workers
    assert torch.equal(epoch0[13], dataset[13])  # same items as in the main process
    dataset.set_epoch(1)
    epoch1 = torch.cat(list(loader))
    assert set(_hashes(epoch1)).isdisjoint(hashes)
