"""The digit-recognition check of predicted Moving MNIST frames (scripts/evaluate.py --recognition)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlstm_vp.data import MovingMNIST, load_digits, render_moving_mnist
from convlstm_vp.data.moving_mnist import frames_to_tensor
from convlstm_vp.train.recognition import DigitRecognizer, crop_digits, recognition_accuracy, train_digit_recognizer


def test_crop_digits_finds_each_digit_where_the_generator_put_it():
    pool = load_digits("datasets", "test", "embedded")
    frames, corners, ids = render_moving_mnist(pool.images, 3, 6, 2, rng=1, return_trajectories=True)
    crops = crop_digits(frames_to_tensor(frames), torch.from_numpy(corners))
    assert crops.shape == (3, 2, 6, 1, 28, 28)
    # frames are the max of the pasted digits, so a digit's window is at least the digit itself
    digit = torch.from_numpy(pool.images[ids]).float().div(255)  # (3, 2, 28, 28)
    assert (crops[:, :, :, 0] >= digit[:, :, None] - 1e-6).all()
    # with one digit the window holds all of the frame's ink, and nothing else
    one, c1, i1 = render_moving_mnist(pool.images, 2, 5, 1, rng=2, return_trajectories=True)
    crops1 = crop_digits(frames_to_tensor(one), torch.from_numpy(c1))
    torch.testing.assert_close(
        crops1[:, 0, :, 0], torch.from_numpy(pool.images[i1[:, 0]]).float().div(255)[:, None].expand(-1, 5, -1, -1)
    )
    with pytest.raises(ValueError, match="corners must lie in"):
        crop_digits(frames_to_tensor(one), torch.from_numpy(c1) + 64)
    with pytest.raises(ValueError, match=r"expected frames \(N, T, 1, S, S\)"):
        crop_digits(frames_to_tensor(one), torch.from_numpy(c1)[:, :, :3])


def test_dataset_trajectories_match_its_frames(tmp_path):
    ds = MovingMNIST("datasets", "test", num_digits=2, num_frames=8, length=4, source="embedded", standard_file=False)
    pool = load_digits("datasets", "test", "embedded")
    for i in range(4):
        corners, labels = ds.trajectories(i)
        assert corners.shape == (2, 8, 2) and labels.shape == (2,)
        frames = ds[i][None]
        crops = crop_digits(frames, torch.from_numpy(corners)[None])[0]
        # each window holds a digit of that label: some pool digit of the label fits under it
        for d in range(2):
            cand = torch.from_numpy(pool.images[pool.labels == labels[d]]).float().div(255)
            fits = (crops[d, :, 0][:, None] >= cand[None] - 1e-6).all(dim=(-1, -2)).all(dim=0)
            assert fits.any()
    with pytest.raises(IndexError):
        ds.trajectories(4)
    # the true motion per cell: each target is a corner step of one of the digits, backwards
    offsets, weights = ds.motion(1)
    assert offsets.shape == (7, 2, 16, 16) and weights.shape == (7, 1, 16, 16) and weights.sum() > 0
    corners, _ = ds.trajectories(1)
    steps = corners[:, :-1] - corners[:, 1:]  # (D, T-1, 2)
    for t, y, x in np.argwhere(weights[:, 0] > 0):
        assert any((offsets[t, :, y, x] == steps[d, t]).all() for d in range(2))
    with pytest.raises(IndexError):
        ds.motion(-1)
    # the standard file stores frames only
    root = tmp_path / "data"
    (root / "moving_mnist").mkdir(parents=True)
    np.save(root / "moving_mnist" / "mnist_test_seq.npy", np.zeros((20, 3, 64, 64), np.uint8))
    std = MovingMNIST(root, "test", length=3, standard_file=True)
    with pytest.raises(ValueError, match="has no trajectories"):
        std.trajectories(0)
    with pytest.raises(ValueError, match="motion: the standard test file"):
        std.motion(0)


def test_recognizer_reads_true_frames_and_not_blank_ones():
    train = load_digits("datasets", "train", "embedded")
    rec = train_digit_recognizer(train.images[:2000], train.labels[:2000], epochs=4, lr=4e-3)
    assert not rec.training
    ds = MovingMNIST("datasets", "test", num_digits=2, num_frames=6, length=40, source="embedded", standard_file=False)
    frames = torch.stack([ds[i] for i in range(len(ds))])
    tracks = [ds.trajectories(i) for i in range(len(ds))]
    corners = torch.stack([torch.from_numpy(c) for c, _ in tracks])
    labels = torch.stack([torch.from_numpy(l) for _, l in tracks])
    truth = recognition_accuracy(rec, frames, corners, labels)
    blank = recognition_accuracy(rec, torch.zeros_like(frames), corners, labels)
    assert len(truth["per_frame"]) == 6
    # blank windows get one class for all digits: the share of that label, far below the truth
    assert truth["accuracy"] > blank["accuracy"] + 0.25
    assert blank["all_digits_last"] <= 0.25
    assert truth["all_digits_last"] <= truth["per_frame"][-1] + 1e-9
    # seeded: the same digits give the same classifier
    again = train_digit_recognizer(train.images[:300], train.labels[:300], epochs=1)
    once = train_digit_recognizer(train.images[:300], train.labels[:300], epochs=1)
    for a, b in zip(again.parameters(), once.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"expected labels \(N, D\)"):
        recognition_accuracy(rec, frames, corners, labels[:, :1])


def test_recognizer_input_checks():
    with pytest.raises(ValueError, match=r"expected digits \(N, 1, 28, 28\)"):
        DigitRecognizer()(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="expected uint8 digits"):
        train_digit_recognizer(np.zeros((4, 28, 28), np.float32), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="labels in 0..9"):
        train_digit_recognizer(np.zeros((4, 28, 28), np.uint8), np.full(4, 12))
