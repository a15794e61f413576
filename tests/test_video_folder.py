"""VideoFolder and frame prediction on the user's own videos: small videos written here
with OpenCV (coloured shapes moving on a textured background, .mp4 and .avi, plus frame arrays
and one unreadable file), their splits and cache, and a colour training run with evaluate and
predict end to end."""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import run_script
from PIL import Image

import convlstm_vp.data.video_folder as vf
from convlstm_vp.data import VideoFolder
from convlstm_vp.data.video_folder import fit_frame, iter_frames

ROOT = Path(__file__).resolve().parents[1]
FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}


def shapes_video(path: Path, frames: int = 40, size: tuple[int, int] = (48, 64), seed: int = 0) -> np.ndarray:
    """Write a video of a red square and a green disc moving over a striped, noisy background to
    ``path`` (.mp4 or .avi; .npy saves the RGB array itself); returns the RGB frames ``(T, H, W, 3)``."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    background = np.stack([60 + 40 * np.sin(xx / 3.0), 80 + 30 * np.cos(yy / 4.0), 120 + 0 * xx], -1)
    background = (background + rng.normal(0, 5, background.shape)).clip(0, 255).astype(np.uint8)
    out = []
    for t in range(frames):
        f = background.copy()
        x0 = (4 + 2 * t) % (w - 12)
        f[10:22, x0 : x0 + 12] = (220, 30, 30)
        cv2.circle(f, (w - 10 - (3 * t) % (w - 20), 10 + t % (h - 20)), 6, (30, 220, 60), -1)
        out.append(f)
    rgb = np.stack(out)
    if path.suffix == ".npy":
        np.save(path, rgb)
        return rgb
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[path.suffix]), 10, (w, h))
    assert writer.isOpened(), path
    for f in rgb:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    return rgb


def clips_per_file(ds: VideoFolder) -> set[Path]:
    return {ds.clip_origin(i)[0] for i in range(len(ds))}


def test_single_video_splits_keep_their_blocks_and_shapes(tmp_path: Path):
    shapes_video(tmp_path / "cam.avi", frames=100)
    sets = {s: VideoFolder(tmp_path, s, 4, 4, size=(16, 16), channels=3) for s in ("train", "val", "test")}
    # the last 20% of frames are the test split; validation is the block just before it
    blocks = {s: [(seg.start, seg.stop) for seg in ds.segments] for s, ds in sets.items()}
    assert blocks == {"train": [(0, 72)], "val": [(72, 80)], "test": [(80, 100)]}
    for split, ds in sets.items():
        ((start, stop),) = blocks[split]
        for i in range(len(ds)):
            _, t = ds.clip_origin(i)
            assert start <= t and t + 8 <= stop  # no clip straddles a boundary
        item = ds[0]
        assert item.shape == (8, 3, 16, 16) and item.dtype == torch.float32
        assert 0 <= float(item.min()) and float(item.max()) <= 1
    assert len(sets["train"]) == 72 - 8 + 1  # stride 1 in training
    assert [sets["test"].clip_origin(i)[1] for i in range(len(sets["test"]))] == [
        80,
        84,
        88,
        92,
    ]  # stride output_frames
    last = VideoFolder(tmp_path, "test", 4, 4, size=(16, 16), channels=3, data_format="channels_last")[0]
    assert last.shape == (8, 16, 16, 3)
    grey = VideoFolder(tmp_path, "test", 4, 4, size=(16, 16), channels=1)[0]
    assert grey.shape == (8, 1, 16, 16)


def test_several_files_split_by_file_and_an_unreadable_one_is_named_once(tmp_path: Path):
    for i, name in enumerate(["a.mp4", "b.avi", "sub/c.mp4", "d.npy", "e.avi"]):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shapes_video(tmp_path / name, frames=24, seed=i)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 50)
    (tmp_path / "notes.txt").write_text("ignored: not a video")
    with pytest.warns(RuntimeWarning, match=r"skipped 1 unreadable file\(s\): broken.mp4") as caught:
        sets = {s: VideoFolder(tmp_path, s, 3, 3, size=(12, 12)) for s in ("train", "val", "test")}
    assert len([w for w in caught if "unreadable" in str(w.message)]) == 3  # one warning per dataset built
    files = {s: set(ds.files) for s, ds in sets.items()}
    assert [len(files[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert files["train"] | files["val"] | files["test"] == {
        tmp_path / n for n in ["a.mp4", "b.avi", "sub/c.mp4", "d.npy", "e.avi"]
    }
    assert not (files["train"] & files["test"]) and not (files["val"] & (files["train"] | files["test"]))
    assert all(clips_per_file(ds) == files[s] for s, ds in sets.items())
    assert sets["train"].skipped == [tmp_path / "broken.mp4"]
    # deterministic: the same folder gives the same split
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert set(VideoFolder(tmp_path, "test", 3, 3, size=(12, 12)).files) == files["test"]


def test_train_and_test_subfolders_are_the_splits(tmp_path: Path):
    for name in ("train/x.avi", "train/y.mp4", "train/z.avi", "test/t.mp4"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shapes_video(tmp_path / name, frames=16)
    test = VideoFolder(tmp_path, "test", 2, 2, size=(8, 8))
    assert test.files == [tmp_path / "test/t.mp4"]
    train, val = (VideoFolder(tmp_path, s, 2, 2, size=(8, 8)) for s in ("train", "val"))
    assert len(val.files) == 1 and len(train.files) == 2
    assert set(train.files) | set(val.files) == {tmp_path / "train" / n for n in ("x.avi", "y.mp4", "z.avi")}


def test_bad_folders_and_arguments_are_clear_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="video folder not found"):
        VideoFolder(tmp_path / "missing", "train")
    (tmp_path / "only.mp4").write_bytes(b"garbage")
    with (
        pytest.warns(RuntimeWarning, match="only.mp4"),
        pytest.raises(FileNotFoundError, match=rf"no readable video .* under {tmp_path}"),
    ):
        VideoFolder(tmp_path, "train")
    shapes_video(tmp_path / "short.avi", frames=12)
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="split 'test' has no clip of 20 frames"):
        VideoFolder(tmp_path, "test", 10, 10, size=(8, 8))
    for kwargs, message in (
        ({"split": "dev"}, "split must be one of"),
        ({"channels": 2}, "channels must be 1"),
        ({"size": (0, 8)}, "size must be"),
        ({"frame_step": 0}, "frame_step must be"),
    ):
        with pytest.raises(ValueError, match=message):
            VideoFolder(tmp_path, **kwargs)


def test_frames_are_decoded_once_and_again_only_when_the_file_or_options_change(tmp_path: Path, monkeypatch):
    shapes_video(tmp_path / "cam.mp4", frames=60)
    first = VideoFolder(tmp_path, "train", 4, 4, size=(16, 16), channels=3)
    assert list((tmp_path / ".cache").glob("cam-*.npy"))
    decoded = []
    real = vf._decode
    monkeypatch.setattr(vf, "_decode", lambda *a: decoded.append(a) or real(*a))
    again = VideoFolder(tmp_path, "train", 4, 4, size=(16, 16), channels=3)
    assert decoded == []  # the cache served it: no decoding
    assert torch.equal(first[5], again[5]) and isinstance(again._arrays[0], np.memmap)
    VideoFolder(tmp_path, "train", 4, 4, size=(16, 16), channels=1)  # another option: decoded again
    assert len(decoded) == 1
    shapes_video(tmp_path / "cam.mp4", frames=61, seed=3)  # the file changed (size and mtime)
    VideoFolder(tmp_path, "train", 4, 4, size=(16, 16), channels=3)
    assert len(decoded) == 2
    other = tmp_path / "elsewhere"
    VideoFolder(tmp_path, "train", 4, 4, size=(16, 16), cache_dir=other)
    assert len(decoded) == 3 and list(other.glob("cam-*.npy"))


def test_a_cache_that_cannot_be_written_is_its_own_error(tmp_path: Path):
    shapes_video(tmp_path / "cam.avi", frames=30)
    (tmp_path / "blocker").write_text("a file where the cache folder would go")
    with pytest.raises(vf.CacheError, match=r"cannot write the frame cache .*blocker.*set data.cache_dir"):
        VideoFolder(tmp_path, "train", 2, 2, size=(8, 8), cache_dir=tmp_path / "blocker" / "cache")


def test_fit_frame_keeps_the_aspect_ratio_by_centre_cropping():
    frame = np.zeros((20, 40, 3), np.float32)
    frame[:, :10] = 1.0  # white sides, which a centre crop of a 2:1 frame to a square cuts off
    frame[:, 30:] = 1.0
    frame[:, 10:30, 0] = 0.5  # a red middle
    out = fit_frame(frame, (10, 10), 3)
    assert out.shape == (10, 10, 3)
    np.testing.assert_allclose(out[..., 0], 0.5, atol=1e-6)
    np.testing.assert_allclose(out[..., 1:], 0.0, atol=1e-6)
    grey = fit_frame(frame, (10, 10), 1)
    np.testing.assert_allclose(grey, 0.299 * 0.5, atol=1e-6)  # luma
    tall = fit_frame(np.ones((40, 10, 1), np.float32), (8, 16), 3)  # grey to RGB, enlarged
    assert tall.shape == (8, 16, 3) and np.allclose(tall, 1.0)


def test_mp4_avi_and_arrays_read_in_colour(tmp_path: Path):
    rgb = shapes_video(tmp_path / "v.avi", frames=6)
    read = np.stack(list(iter_frames(tmp_path / "v.avi")))
    assert read.shape == (6, 48, 64, 3)
    # MJPG is lossy: the red square is still red (RGB order, not OpenCV's BGR)
    assert read[0, 12:20, 6:14, 0].mean() > 0.7 and read[0, 12:20, 6:14, 2].mean() < 0.3
    assert abs(read.mean() - rgb.mean() / 255) < 0.02
    np.savez(tmp_path / "z.npz", frames=rgb.transpose(0, 3, 1, 2))  # (T, C, H, W)
    np.testing.assert_allclose(np.stack(list(iter_frames(tmp_path / "z.npz"))), rgb / 255.0, atol=1e-6)


def _run(*args: str) -> subprocess.CompletedProcess:
    """A training, evaluate or predict script run in this process (see conftest.run_script)."""
    return run_script(*args)


def test_colour_training_evaluate_and_predict_end_to_end(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from convlstm_vp.train.checkpoint import load_checkpoint

    videos = tmp_path / "videos"
    videos.mkdir()
    shapes_video(videos / "cam.mp4", frames=80)
    run = tmp_path / "run"
    sets = [
        "data.root=" + str(videos),
        "data.channels=3",
        "data.size=[16,16]",
        "model.hidden_channels=[8,8]",
        "model.input_frames=4",
        "model.output_frames=4",
        "train.steps=4",
        "train.batch_size=4",
        "train.eval_every=2",
        "train.checkpoint_every=2",
        "train.num_threads=1",
        "train.progress=false",
        "train.precision=fp32",
        "train.quick_eval_every=2",
        "log.examples=2",
    ]
    _run(
        "scripts/train_moving_mnist.py",
        "--config",
        str(ROOT / "configs" / "video-folder.yaml"),
        "--run-dir",
        str(run),
        *[a for s in sets for a in ("--set", s)],
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["evaluated_on"]["split"] == "test" and "cam.mp4" in metrics["evaluated_on"]["what"]
    assert metrics["validation"]["split"] == "validation"
    ck = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ck["config"]["data"]["channels"] == 3
    assert ck["model"]["head.weight"].shape[0] == 81  # dynamic filter: 9x9 kernel logits
    assert any(
        v.dim() == 4 and v.shape[1] == 3 * 16 for v in ck["model"].values()
    )  # 3 colour channels x 4x4 patches in
    assert Image.open(run / "predictions.png").mode == "RGB"
    assert Image.open(run / "predictions.gif").convert("RGB").getextrema()  # readable
    acc = EventAccumulator(str(run), size_guidance={"images": 0})
    acc.Reload()
    strip = acc.Images("predictions/sequence_0")[-1]
    assert Image.open(__import__("io").BytesIO(strip.encoded_image_string)).mode == "RGB"
    assert {"val/mse", "test/mse", "val_quick/mse"} <= set(acc.Tags()["scalars"])

    out = tmp_path / "eval.json"
    res = _run("scripts/evaluate.py", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--json", str(out))
    ev = json.loads(out.read_text())
    assert abs(ev["mse"] - metrics["mse"]) <= 1e-6 * metrics["mse"]  # the same test clips as the end of training
    assert set(ev["baselines"]) == {"zeros", "copy_last", "mean_inputs"} and ev["channels"] == 3
    assert "copy_last" in res.stdout and "mean_inputs" in res.stdout
    other = tmp_path / "other"
    other.mkdir()
    shapes_video(other / "elsewhere.avi", frames=60, seed=5)
    ev2 = _run("scripts/evaluate.py", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--data", str(other))
    assert "elsewhere.avi" in ev2.stdout
    bad = run_script(
        "scripts/evaluate.py", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--digits", "3", ok=False
    )
    assert bad.returncode != 0 and "--digits apply to Moving MNIST checkpoints" in bad.stderr

    big = tmp_path / "big.mp4"
    shapes_video(big, frames=12, size=(90, 120))  # any size: brought to 16x16 as in training
    gif = tmp_path / "out.gif"
    _run(
        "scripts/predict.py",
        "--checkpoint",
        str(run / "checkpoints" / "best.pt"),
        "--input",
        str(big),
        "--output",
        str(gif),
        "--scale",
        "3",
    )
    img = Image.open(gif)
    assert img.size == (3 * (16 + 2 + 16), 3 * 16) and img.n_frames == 8
    # the left panel's first frame is the input's first frame fitted as in training, in colour
    shown = np.asarray(img.convert("RGB"), dtype=np.float32)[::3, ::3][:16, :16] / 255
    expected = fit_frame(next(iter_frames(big)), (16, 16), 3)
    assert np.abs(shown - expected).mean() < 0.03  # GIF palette rounding
    assert np.abs(shown[..., 0] - shown[..., 2]).mean() > 0.1  # not grey
    npy = tmp_path / "out.npy"
    _run(
        "scripts/predict.py",
        "--checkpoint",
        str(run / "checkpoints" / "best.pt"),
        "--input",
        str(big),
        "--output",
        str(npy),
    )
    assert np.load(npy).shape == (4, 3, 16, 16)


def test_config_errors_name_the_key_before_any_work(tmp_path: Path):
    from convlstm_vp.train.config import load_config
    from convlstm_vp.train.tasks.frames import DEFAULTS, FramePredictionTask

    shapes_video(tmp_path / "cam.avi", frames=40)
    base = str(ROOT / "configs" / "video-folder.yaml")
    cases = [
        (
            [f"data.root={tmp_path}", "motion_loss_weight=0.5"],
            "motion_loss_weight': the motion targets come from Moving MNIST's generator",
        ),
        ([f"data.root={tmp_path}", "data.dataset=youtube"], "data.dataset': expected one of"),
        ([f"data.root={tmp_path}", "data.size=[30]"], "data.size': expected [H, W] with positive integers"),
        ([f"data.root={tmp_path}", "data.channels=2"], "data.channels': expected 1 (grey) or 3 (RGB)"),
        (["data.dataset=moving_mnist", "data.channels=3"], "data.channels': Moving MNIST frames are 64x64 grey"),
        ([f"data.root={tmp_path / 'nowhere'}"], "video folder not found"),
    ]
    for sets, message in cases:
        cfg = load_config(base, DEFAULTS, sets)
        with pytest.raises((ValueError, FileNotFoundError)) as info:
            FramePredictionTask(cfg)
        assert message in str(info.value), str(info.value)


def test_unreadable_arrays_and_gifs_are_skipped_and_listed_while_another_file_reads(tmp_path: Path):
    """A truncated .npz (zipfile.BadZipFile inside numpy), a GIF declaring 65535x65535 pixels and
    float frames out of range are skipped and named, never fatal while a readable file remains;
    the hint for out-of-range frames is the training one (predict's --input-range is not a
    training option)."""
    import io
    import struct

    shapes_video(tmp_path / "good.npy", frames=24)
    buf = io.BytesIO()
    np.savez(buf, frames=np.zeros((12, 8, 8), np.uint8))
    (tmp_path / "cut.npz").write_bytes(buf.getvalue()[:150])
    screen = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0) + bytes(6)
    (tmp_path / "bomb.gif").write_bytes(
        screen + b"," + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00;"
    )
    np.save(tmp_path / "loud.npy", np.full((12, 8, 8), 7.0, np.float32))
    with pytest.warns(RuntimeWarning, match=r"skipped 3 unreadable file\(s\)") as caught:
        ds = VideoFolder(tmp_path, "train", 3, 3, size=(12, 12))
    message = str(caught[0].message)
    assert "bomb.gif" in message and "65535x65535" in message and "cut.npz (not a complete .npz file" in message
    assert "loud.npy" in message and "convert the file" in message and "--input-range" not in message
    assert ds.skipped == sorted(tmp_path / n for n in ("bomb.gif", "cut.npz", "loud.npy"))
    assert ds.files == [tmp_path / "good.npy"] and len(ds) > 0


def test_a_folder_of_only_unreadable_files_names_each(tmp_path: Path):
    (tmp_path / "a.npz").write_bytes(b"hello")
    (tmp_path / "b.npy").write_bytes(b"")
    with (
        pytest.warns(RuntimeWarning),
        pytest.raises(
            FileNotFoundError, match=r"unreadable: a\.npz \(not a complete \.npz.*b\.npy \(the file is empty"
        ),
    ):
        VideoFolder(tmp_path, "train", 3, 3, size=(12, 12))


def test_data_cache_dir_moves_the_frame_cache(tmp_path: Path):
    from convlstm_vp.train.config import load_config
    from convlstm_vp.train.tasks.frames import DEFAULTS, video_folder

    (tmp_path / "videos").mkdir()
    shapes_video(tmp_path / "videos" / "a.npy", frames=24)
    cfg = load_config(
        ROOT / "configs" / "tiny-moving-mnist.yaml",
        DEFAULTS,
        [
            "data.dataset=video_folder",
            f"data.root={tmp_path / 'videos'}",
            "data.size=[16,16]",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
    )
    video_folder(cfg, "train")
    assert list((tmp_path / "cache").glob("a-*.npy")) and not (tmp_path / "videos" / ".cache").exists()
