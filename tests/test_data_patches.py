"""MNIST patch sequences: patchify/unpatchify round trip, patch order, dataset items, workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from convlstm_vp.data import MNISTPatchSequences, patchify, unpatchify
from convlstm_vp.data.mnist_patches import patch_order


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("patch_root")


def test_patch_order():
    assert patch_order(4, 4, "raster").tolist() == list(range(16))
    assert patch_order(3, 3, "snake").tolist() == [0, 1, 2, 5, 4, 3, 6, 7, 8]
    with pytest.raises(ValueError, match="order"):
        patch_order(4, 4, "spiral")


@pytest.mark.parametrize("order", ["raster", "snake"])
def test_patches_are_the_right_blocks(order):
    image = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 28, 28)
    patches = patchify(image, 7, order)
    assert patches.shape == (16, 1, 7, 7)
    assert torch.equal(patches[0, 0], image[0, :7, :7])
    # Positions 4 and 7 are the ends of the second grid row, in reverse for snake order.
    first, last = (0, 3) if order == "raster" else (3, 0)
    assert torch.equal(patches[4, 0], image[0, 7:14, 7 * first : 7 * first + 7])
    assert torch.equal(patches[7, 0], image[0, 7:14, 7 * last : 7 * last + 7])


@pytest.mark.parametrize("order", ["raster", "snake"])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_round_trip_is_exact(order, data_format):
    images = torch.rand(2, 5, 3, 28, 28)  # extra leading axes and 3 channels
    if data_format == "channels_last":
        images = images.movedim(-3, -1)
    patches = patchify(images, 7, order, data_format)
    expected = (2, 5, 16, 3, 7, 7) if data_format == "channels_first" else (2, 5, 16, 7, 7, 3)
    assert patches.shape == expected
    assert torch.equal(unpatchify(patches, 28, order, data_format), images)
    assert torch.equal(unpatchify(patches, order=order, data_format=data_format), images)
    # numpy arrays work the same way, and non-square images with an explicit size.
    array = np.random.default_rng(0).random((1, 28, 42))
    patches_np = patchify(array, 14, order)
    assert isinstance(patches_np, np.ndarray) and patches_np.shape == (6, 1, 14, 14)
    assert np.array_equal(unpatchify(patches_np, (28, 42), order), array)


def test_wrong_sizes_are_rejected():
    with pytest.raises(ValueError, match="divisible by patch_size=5"):
        patchify(torch.zeros(1, 28, 28), 5)
    with pytest.raises(ValueError, match="needs 16 patches, got 9"):
        unpatchify(torch.zeros(9, 1, 7, 7), 28)
    with pytest.raises(ValueError, match="square grid"):
        unpatchify(torch.zeros(6, 1, 7, 7))


@pytest.mark.parametrize("order", ["raster", "snake"])
def test_dataset_items_reassemble_to_the_digit(root, order):
    dataset = MNISTPatchSequences(root, "test", order=order)
    assert len(dataset) == 1000 and dataset.num_patches == 16
    for index in (0, 517, 999):
        patches, label = dataset[index]
        assert patches.shape == (16, 1, 7, 7) and patches.dtype == torch.float32
        assert 0.0 <= patches.min() and patches.max() <= 1.0
        assert isinstance(label, int) and label == dataset.digits.labels[index]
        digit = torch.from_numpy(dataset.digits.images[index].astype(np.float32) / 255)
        assert torch.equal(unpatchify(patches, 28, order)[0], digit)


def test_dataset_options(root):
    last, _ = MNISTPatchSequences(root, "train", data_format="channels_last")[3]
    first, _ = MNISTPatchSequences(root, "train")[3]
    assert last.shape == (16, 7, 7, 1) and torch.equal(last[..., 0], first[:, 0])
    big, _ = MNISTPatchSequences(root, "train", patch_size=14)[3]
    assert big.shape == (4, 1, 14, 14)
    dataset = MNISTPatchSequences(root, "train", transform=lambda x: x - 0.5, target_transform=lambda y: y + 10)
    shifted, label = dataset[3]
    assert torch.allclose(shifted, first - 0.5) and label >= 10
    with pytest.raises(ValueError, match="patch_size=5"):
        MNISTPatchSequences(root, "train", patch_size=5)
    with pytest.raises(FileNotFoundError, match="MNIST/raw"):
        MNISTPatchSequences(root, "train", source="mnist")


def test_dataloader_with_workers(root):
    dataset = MNISTPatchSequences(root, "train", order="snake")
    loader = DataLoader(Subset(dataset, range(40)), batch_size=8, num_workers=2)
    patches, labels = map(torch.cat, zip(*loader))
    assert patches.shape == (40, 16, 1, 7, 7)
    assert torch.equal(labels, torch.tensor(dataset.digits.labels[:40]))
    assert torch.equal(patches[17], dataset[17][0])
