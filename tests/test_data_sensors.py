"""Sensor data: sliding windows, train-only normalisation, the OPPORTUNITY reader, aeon datasets."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convlstm_vp.data.opportunity import (
    BODY_WORN_CHANNELS,
    COLUMN_NAMES,
    GESTURE_CLASSES,
    OPPORTUNITY_SPLITS,
    read_opportunity_file,
)
from convlstm_vp.data.sensors import (
    BasicMotions,
    Daphnet,
    Opportunity,
    Standardizer,
    interpolate_nans,
    sliding_windows,
)

# ---------------------------------------------------------------------------- sliding windows


def _ramp(n: int, c: int = 2) -> np.ndarray:
    """(n, c) data whose value encodes (time, channel): 10 * t + channel."""
    return (10 * np.arange(n)[:, None] + np.arange(c)[None, :]).astype(np.float32)


def test_windows_shapes_starts_and_last_label():
    data, labels = _ramp(10), np.arange(10)
    windows, window_labels = sliding_windows(data, labels, window=4, step=3)
    # starts 0, 3, 6; a start at 9 would run past the end.
    assert windows.shape == (3, 4, 2) and windows.dtype == np.float32
    np.testing.assert_array_equal(windows[:, 0, 0], [0, 30, 60])
    np.testing.assert_array_equal(windows[1], data[3:7])
    np.testing.assert_array_equal(window_labels, [3, 6, 9])
    assert window_labels.dtype == np.int64


def test_windows_exact_fit_and_short_recording():
    windows, labels = sliding_windows(_ramp(24, 3), np.zeros(24), window=24, step=12)
    assert windows.shape == (1, 24, 3) and labels.shape == (1,)
    windows, labels = sliding_windows(_ramp(23, 3), np.zeros(23), window=24, step=12)
    assert windows.shape == (0, 24, 3) and labels.shape == (0,)
    windows, labels = sliding_windows(_ramp(0, 3), np.zeros(0), window=24, step=12)
    assert windows.shape == (0, 24, 3)


def test_windows_step_larger_than_window_skips_samples():
    windows, labels = sliding_windows(_ramp(20), np.arange(20), window=3, step=7)
    # starts 0, 7, 14 (14 + 3 <= 20); samples 3-6 and 10-13 are in no window.
    np.testing.assert_array_equal(windows[:, :, 0] / 10, [[0, 1, 2], [7, 8, 9], [14, 15, 16]])
    np.testing.assert_array_equal(labels, [2, 9, 16])


def test_label_last_versus_majority():
    labels = np.array([0, 0, 0, 5, 2, 2, 1, 1, 1, 3, 3, 3])
    _, last = sliding_windows(_ramp(12), labels, window=4, step=4, label_mode="last")
    _, majority = sliding_windows(_ramp(12), labels, window=4, step=4, label_mode="majority")
    np.testing.assert_array_equal(last, [5, 1, 3])
    # [0,0,0,5] -> 0; [2,2,1,1] tie -> smaller label 1; [1,3,3,3] -> 3.
    np.testing.assert_array_equal(majority, [0, 1, 3])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(data=np.zeros(5), labels=np.zeros(5)), r"\(N, C\)"),
        (dict(data=np.zeros((5, 2)), labels=np.zeros(4)), r"labels must be \(N,\)"),
        (dict(data=np.zeros((5, 2)), labels=np.zeros(5), window=0), "window"),
        (dict(data=np.zeros((5, 2)), labels=np.zeros(5), step=0), "step"),
        (dict(data=np.zeros((5, 2)), labels=np.zeros(5), label_mode="first"), "label_mode"),
        (dict(data=np.zeros((5, 2)), labels=-np.ones(5)), "non-negative"),
    ],
)
def test_windows_reject_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sliding_windows(**kwargs)


def test_interpolate_nans_linear_edges_and_empty_channel():
    data = np.array(
        [
            [np.nan, 1.0, np.nan],
            [2.0, np.nan, np.nan],
            [np.nan, np.nan, np.nan],
            [8.0, 7.0, np.nan],
            [np.nan, 9.0, np.nan],
        ]
    )
    original = data.copy()
    filled = interpolate_nans(data)
    np.testing.assert_allclose(filled[:, 0], [2, 2, 5, 8, 8])  # edges held, middle linear
    np.testing.assert_allclose(filled[:, 1], [1, 3, 5, 7, 9])
    np.testing.assert_array_equal(filled[:, 2], 0)  # all-NaN channel -> 0
    np.testing.assert_array_equal(data, original)  # input left untouched (NaNs included)


# ---------------------------------------------------------------------------- normalisation


def test_standardizer_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    train = rng.normal([1.0, -3.0, 0.0], [2.0, 0.5, 0.0], size=(500, 3))
    test = rng.normal(50.0, 10.0, size=(100, 3))
    standardizer = Standardizer().fit(train)
    np.testing.assert_allclose(standardizer.mean, train.mean(0))
    np.testing.assert_allclose(standardizer.std[:2], train.std(0)[:2])
    assert standardizer.std[2] == 1.0  # constant channel is not divided by 0
    out = standardizer.transform(test)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (test - train.mean(0)) / standardizer.std, rtol=1e-5)
    # Test data far from the training distribution stays far: nothing was fitted on it.
    assert out[:, 0].mean() > 10
    restored = Standardizer.from_state_dict(standardizer.state_dict())
    np.testing.assert_allclose(restored.transform(test), out)
    with pytest.raises(ValueError, match="C=3"):
        standardizer.transform(np.zeros((4, 2)))
    with pytest.raises(RuntimeError, match="not fitted"):
        Standardizer().transform(test)


def test_standardizer_pools_recordings_by_sample():
    a, b = np.zeros((10, 1)), np.full((30, 1), 4.0)
    standardizer = Standardizer().fit([a, b])
    assert standardizer.mean[0] == pytest.approx(3.0)  # (10 * 0 + 30 * 4) / 40


# ---------------------------------------------------------------------------- OPPORTUNITY

_GESTURE_CODES = [code for code, _ in GESTURE_CLASSES]


def _write_dat(path: Path, rows: int, seed: int, offset: float = 0.0) -> np.ndarray:
    """Write a .dat file in the dataset's format; sensor value = 1000 * column + row + offset.

    Returns the (rows, 250) table with NaNs as written.
    """
    rng = np.random.default_rng(seed)
    table = 1000.0 * np.arange(250)[None, :] + np.arange(rows)[:, None] + offset
    table[:, 0] = np.arange(rows) * 33  # time in ms
    table[:, 243] = rng.choice([0, 1, 2, 4, 5], size=rows)  # Locomotion
    table[:, 244:249] = rng.integers(0, 3, size=(rows, 5))  # other label tracks
    table[:, 249] = np.repeat(rng.choice(_GESTURE_CODES, size=rows // 10 + 1), 10)[:rows]
    table[5:9, 2] = np.nan  # gap inside a body channel
    table[:3, 40] = np.nan  # leading gap
    table[-2:, 60] = np.nan  # trailing gap
    table[:, 120] = np.nan  # a shoe channel that never reports
    table[::7, 200] = np.nan  # ambient channel, not selected
    lines = [" ".join("NaN" if np.isnan(v) else f"{v:.0f}" for v in row) for row in table]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return table


@pytest.fixture(scope="module")
def opportunity_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    folder = root / "OpportunityUCIDataset" / "dataset"
    _write_dat(folder / "S1-ADL1.dat", rows=300, seed=1)
    _write_dat(folder / "S1-Drill.dat", rows=200, seed=2, offset=100.0)
    _write_dat(folder / "S2-ADL4.dat", rows=150, seed=3, offset=5000.0)
    return root


def test_body_worn_channels_match_the_published_column_ranges():
    # 1-based columns 2-46, 51-59, 64-72, 77-85, 90-98, 103-134 of column_names.txt.
    ranges = [(2, 46), (51, 59), (64, 72), (77, 85), (90, 98), (103, 134)]
    expected = [c - 1 for lo, hi in ranges for c in range(lo, hi + 1)]
    assert list(BODY_WORN_CHANNELS) == expected and len(expected) == 113
    names = [COLUMN_NAMES[i] for i in BODY_WORN_CHANNELS]
    assert not any("Quaternion" in n for n in names)
    assert names[0] == "Accelerometer RKN^ accX"
    assert names[-1] == "InertialMeasurementUnit R-SHOE Compass"
    assert COLUMN_NAMES[243] == "Locomotion" and COLUMN_NAMES[249] == "ML_Both_Arms"
    assert len(GESTURE_CLASSES) == 18 and len(set(_GESTURE_CODES)) == 18


def test_read_opportunity_file_selects_channels_interpolates_and_maps_labels(opportunity_root):
    path = opportunity_root / "OpportunityUCIDataset" / "dataset" / "S1-ADL1.dat"
    table = np.loadtxt(path)
    data, labels = read_opportunity_file(path, "gestures")
    assert data.shape == (300, 113) and data.dtype == np.float32
    assert not np.isnan(data).any()
    rows = np.arange(300)
    for k, column in enumerate(BODY_WORN_CHANNELS):
        if column == 120:
            np.testing.assert_array_equal(data[:, k], 0)  # all-NaN channel
        else:  # values are linear in the row, so interpolation and edge-holding are exact
            expected = 1000.0 * column + rows
            if column == 40:
                expected[:3] = expected[3]
            if column == 60:
                expected[-2:] = expected[-3]
            np.testing.assert_array_equal(data[:, k], expected)
    # Labels: code -> index, Null is 0, and the column used is ML_Both_Arms.
    np.testing.assert_array_equal(np.array(_GESTURE_CODES)[labels], table[:, 249])
    _, locomotion = read_opportunity_file(path, "locomotion")
    np.testing.assert_array_equal(np.array([0, 1, 2, 4, 5])[locomotion], table[:, 243])


def test_read_opportunity_file_rejects_wrong_format(tmp_path):
    bad = tmp_path / "S1-ADL1.dat"
    bad.write_text("1 2 3\n4 5 6\n")
    with pytest.raises(ValueError, match="250"):
        read_opportunity_file(bad)
    table = np.zeros((3, 250))
    table[1, 249] = 123456
    bad.write_text("\n".join(" ".join(f"{v:.0f}" for v in row) for row in table))
    with pytest.raises(ValueError, match="123456"):
        read_opportunity_file(bad)


def test_read_opportunity_file_names_the_file_and_line_of_corrupt_values(tmp_path):
    path = tmp_path / "S1-ADL1.dat"
    path.write_bytes(bytes(range(256)) * 8)  # a binary file
    with pytest.raises(ValueError, match=r"S1-ADL1.dat: not an OPPORTUNITY .dat text table"):
        read_opportunity_file(path)
    good = _write_dat(tmp_path / "ok.dat", 12, 0)
    for row, col, value, message in (
        (4, 2, "inf", r"line 5: sensor column 3 .* holds inf; expected a finite float32"),
        (6, 40, "1e300", r"line 7: sensor column 41 .* holds 1e\+300"),
        (3, 249, f"{good[3, 249] + 0.5}", r"line 4: label column 250 .* holds .*\.5; expected an integer label code"),
    ):
        table = good.copy()
        cells = [["NaN" if np.isnan(v) else f"{v:.0f}" for v in r] for r in table]
        cells[row][col] = value
        path.write_text("\n".join(" ".join(r) for r in cells) + "\n")
        with pytest.raises(ValueError, match=message):
            read_opportunity_file(path)


def test_opportunity_dataset_windows_and_train_statistics(opportunity_root):
    train = Opportunity(opportunity_root, "train", files=["S1-ADL1.dat", "S1-Drill.dat"])
    # 300 rows -> (300 - 24) // 12 + 1 = 24 windows, 200 rows -> 15; none crosses files.
    assert len(train) == 24 + 15 and train.num_channels == 113 and train.num_classes == 18
    window, label = train[0]
    assert window.shape == (24, 113) and window.dtype == torch.float32 and isinstance(label, int)
    assert train.windows.shape == (39, 24, 113)
    # Statistics come from the two training recordings only.
    pooled = np.concatenate([read_opportunity_file(p)[0] for p in train.files]).astype(np.float64)
    np.testing.assert_allclose(train.standardizer.mean, pooled.mean(0), rtol=1e-6)

    test = Opportunity(opportunity_root, "test", files=["S2-ADL4.dat"], standardizer=train.standardizer)
    assert test.standardizer is train.standardizer
    assert len(test) == (150 - 24) // 12 + 1
    # The test file is offset by +5000 and not used for fitting: its mean is far from 0.
    assert test.windows[..., 5].mean() > 10
    raw = Opportunity(opportunity_root, "test", files=["S2-ADL4.dat"], normalize=False)
    assert raw.standardizer is None
    np.testing.assert_array_equal(raw.windows[1, :, 0].numpy(), 1000.0 + 5000.0 + np.arange(12, 36))
    # Labels follow the last sample of each window.
    codes = np.loadtxt(opportunity_root / "OpportunityUCIDataset/dataset/S2-ADL4.dat", usecols=249)
    np.testing.assert_array_equal(np.array(_GESTURE_CODES)[raw.labels.numpy()], codes[np.arange(len(raw)) * 12 + 23])


def test_opportunity_standard_split_names_first_missing_file(opportunity_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"S1-ADL2\.dat.*UCI Machine Learning Repository"):
        Opportunity(opportunity_root, "train")
    # The test split needs training statistics: without a standardizer it reads the train files.
    with pytest.raises(FileNotFoundError, match=r"S1-ADL2\.dat"):
        Opportunity(opportunity_root, "test", files=["S2-ADL4.dat"])
    with pytest.raises(FileNotFoundError, match=r"OpportunityUCIDataset.dataset.S2-ADL4\.dat"):
        Opportunity(tmp_path, "test")
    assert OPPORTUNITY_SPLITS["train"][:6] == tuple([f"S1-ADL{i}.dat" for i in range(1, 6)] + ["S1-Drill.dat"])
    assert len(OPPORTUNITY_SPLITS["train"]) == 14
    assert set(OPPORTUNITY_SPLITS["test"]) == {"S2-ADL4.dat", "S2-ADL5.dat", "S3-ADL4.dat", "S3-ADL5.dat"}


# ---------------------------------------------------------------------------- embedded datasets


def test_basic_motions_real_data_shapes_classes_and_train_statistics():
    train, test = BasicMotions("train"), BasicMotions("test")
    assert len(train) == 40 and len(test) == 40
    window, label = test[0]
    assert window.shape == (100, 6) and window.dtype == torch.float32
    assert 0 <= label < 4 and train.classes == ("badminton", "running", "standing", "walking")
    assert train.class_counts().tolist() == [10, 10, 10, 10]
    assert test.class_counts().tolist() == [10, 10, 10, 10]
    flat = train.windows.reshape(-1, 6)
    torch.testing.assert_close(flat.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    np.testing.assert_allclose(test.standardizer.mean, train.standardizer.mean)
    assert not torch.allclose(test.windows.reshape(-1, 6).mean(0), torch.zeros(6), atol=1e-4)
    # Real recordings: running moves far more than standing.
    raw = BasicMotions("train", normalize=False)
    energy = [raw.windows[raw.labels == k].std().item() for k in range(4)]
    assert energy[1] > 5 * energy[2]


def test_daphnet_time_split_windows():
    train, test = Daphnet("train", window=64, step=32), Daphnet("test", window=64, step=32)
    assert train.boundary == round(0.7 * 7040) == test.boundary
    assert len(train) == (train.boundary - 64) // 32 + 1
    assert len(test) == (7040 - test.boundary - 64) // 32 + 1
    assert train[0][0].shape == (64, 9) and train.windows.dtype == torch.float32
    np.testing.assert_allclose(test.standardizer.mean, train.standardizer.mean)
    torch.testing.assert_close(train.windows[:, :32].reshape(-1, 9).mean(0), torch.zeros(9), atol=0.2, rtol=0)
    # No window crosses the boundary: the first test window starts at the boundary sample.
    raw = Daphnet("test", window=64, step=32, normalize=False)
    everything = Daphnet("train", window=1, step=1, train_fraction=0.999, normalize=False)
    np.testing.assert_array_equal(raw.windows[0, 0], everything.windows[train.boundary, 0])
    assert set(train.labels.tolist()) <= {0, 1} and train.num_classes == 2


def test_shipped_datasets_without_aeon_name_the_package_and_the_alternative(monkeypatch):
    # sys.modules entries set to None make the import fail as if the package were not installed
    monkeypatch.setitem(sys.modules, "aeon", None)
    monkeypatch.setitem(sys.modules, "aeon.datasets", None)
    for make in (lambda: BasicMotions("train"), lambda: Daphnet("train")):
        with pytest.raises(ModuleNotFoundError, match=r"pip install 'aeon>=1.0'.*root="):
            make()
