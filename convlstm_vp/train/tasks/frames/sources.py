"""Where the frames come from: one source class per ``data.dataset``, registered by name.

A source gives the frame task everything it reads from the data: checks of its ``data.*`` keys
(before any work), the training batch of a step (a function of a seeded generator only, so that
a resumed run sees the same batches), the fixed validation set and the test set, each with a
description that ``metrics.json`` records. Adding a source is one subclass of
:class:`FrameSource` decorated with ``@register_source("name")`` (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ....data import MovingMNIST, VideoFolder, load_digits, moving_mnist_batch
from ....data.moving_mnist import frames_to_tensor, motion_targets, render_moving_mnist

SOURCES: dict[str, type[FrameSource]] = {}


def register_source(name: str):
    """Class decorator: make ``cls`` the frame source of ``data.dataset: name``."""

    def register(cls: type[FrameSource]) -> type[FrameSource]:
        cls.name = name
        SOURCES[name] = cls
        return cls

    return register


def source_class(cfg: dict) -> type[FrameSource]:
    """The source registered for ``cfg``'s ``data.dataset``; ValueError naming the key otherwise."""
    name = cfg["data"]["dataset"]
    if name not in SOURCES:
        raise ValueError(f"config key 'data.dataset': expected one of {tuple(SOURCES)}, got {name!r}")
    return SOURCES[name]


class FrameSource:
    """The frames of one ``data.dataset``, in ``(N, T, C, H, W)`` in [0, 1] with
    ``T = model.input_frames + model.output_frames``.

    Subclasses implement :meth:`train_batch`, :meth:`validation_set` and :meth:`test_set`, and
    may extend :meth:`check_config`. ``has_motion``: the source knows the true motion of its
    content (``motion_loss_weight``, ``evaluate.py --motion``).
    """

    name: ClassVar[str] = ""
    has_motion: ClassVar[bool] = False

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.frames = cfg["model"]["input_frames"] + cfg["model"]["output_frames"]

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        """ValueError naming the ``data.*`` key that does not fit (before any work)."""
        d = cfg["data"]
        size = d["size"]
        if not (len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise ValueError(f"config key 'data.size': expected [H, W] with positive integers, got {size!r}")
        if d["channels"] not in (1, 3):
            raise ValueError(f"config key 'data.channels': expected 1 (grey) or 3 (RGB), got {d['channels']!r}")
        if d["frame_step"] < 1:
            raise ValueError(f"config key 'data.frame_step': expected an integer >= 1, got {d['frame_step']!r}")
        # a size that model.patch_size does not divide is left to fit()'s check of batch 0, which names both
        if cfg["motion_loss_weight"] > 0 and not cls.has_motion:
            raise ValueError(
                "config key 'motion_loss_weight': the motion targets come from Moving MNIST's generator (the "
                f"digits' true motion), which data.dataset {cls.name!r} does not have; set it to 0"
            )

    def train_batch(self, rng: np.random.Generator, batch_size: int) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """``batch_size`` training sequences drawn with ``rng`` (with ``motion_loss_weight`` > 0
        also the true motion ``(offsets, weights)``)."""
        raise NotImplementedError

    def validation_set(self) -> tuple[Tensor, dict]:
        """The fixed validation sequences and their description ``{"split": "validation", ...}``."""
        raise NotImplementedError

    @classmethod
    def test_set(
        cls, cfg: dict, root: str | None = None, sequences: int | None = None, **options: Any
    ) -> tuple[Tensor, dict]:
        """The first ``sequences`` (default ``data.final_eval_sequences``) test sequences of
        ``cfg``'s data (``root`` overrides ``data.root``) and the ``evaluated_on`` entry naming
        them. A class method: ``evaluate.py`` scores a checkpoint without the training data."""
        raise NotImplementedError


@register_source("moving_mnist")
class MovingMNISTSource(FrameSource):
    """Moving MNIST generated on the fly: training batches from the train digit pool, the
    validation set from the train digits with its own seeds (MovingMNIST split "val"), the
    test set from the held-out test digits or the standard file."""

    has_motion = True

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        d = cfg["data"]
        self.digits = load_digits(d["root"], "train", d["source"])

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        super().check_config(cfg)
        d = cfg["data"]
        for key, value, fixed in (
            ("size", list(d["size"]), [64, 64]),
            ("channels", d["channels"], 1),
            ("frame_step", d["frame_step"], 1),
        ):
            if value != fixed:
                raise ValueError(
                    f"config key 'data.{key}': Moving MNIST frames are 64x64 grey, generated frame by frame "
                    f"(expected {fixed}); it applies to data.dataset 'video_folder', got {value!r}"
                )

    def train_batch(self, rng: np.random.Generator, batch_size: int) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Generated sequences; with ``motion_loss_weight`` > 0 also the true motion of
        :func:`~convlstm_vp.data.moving_mnist.motion_targets` (the same frames either way: the
        generator draws the same numbers)."""
        n = self.cfg["data"]["num_digits"]
        if self.cfg["motion_loss_weight"] == 0:
            return moving_mnist_batch(batch_size, digits=self.digits, num_digits=n, num_frames=self.frames, rng=rng)
        pool = self.digits.images
        frames, corners, ids = render_moving_mnist(pool, batch_size, self.frames, n, rng=rng, return_trajectories=True)
        offsets, weights = motion_targets(pool, corners, ids, frames.shape[-1], self.cfg["model"]["patch_size"])
        return frames_to_tensor(frames), torch.from_numpy(offsets), torch.from_numpy(weights)

    def validation_set(self) -> tuple[Tensor, dict]:
        d = self.cfg["data"]
        ds = MovingMNIST(
            d["root"],
            "val",
            num_digits=d["num_digits"],
            num_frames=self.frames,
            length=d["val_sequences"],
            source=d["source"],
        )
        n = d["val_sequences"]
        return torch.stack([ds[i] for i in range(len(ds))]), {
            "split": "validation",
            "sequences": n,
            "what": f"{n} validation sequences generated from the train digits (MovingMNIST split 'val')",
        }

    @classmethod
    def test_set(
        cls, cfg: dict, root: str | None = None, sequences: int | None = None, **options: Any
    ) -> tuple[Tensor, dict]:
        """``options`` override the keyword arguments of :class:`~convlstm_vp.data.MovingMNIST`
        (``num_digits``, ``seed``, ``standard_file``)."""
        d, m = cfg["data"], cfg["model"]
        n = d["final_eval_sequences"] if sequences is None else sequences
        frames = m["input_frames"] + m["output_frames"]
        kw = {"num_digits": d["num_digits"], "seed": d["test_seed"], **options}
        ds = MovingMNIST(root or d["root"], "test", num_frames=frames, length=n, source=d["source"], **kw)
        seqs = torch.stack([ds[i] for i in range(len(ds))])
        if seqs.shape[1] < frames:
            raise ValueError(f"test sequences have {seqs.shape[1]} frames; the model needs {frames}")
        seqs = seqs[:, :frames]
        test_set = str(ds.standard_path) if ds.standard_path else f"generated (seed {kw['seed']}, test digits)"
        return seqs, {
            "split": "test",
            "test_set": test_set,
            "sequences": int(seqs.shape[0]),
            "what": f"test set {test_set}, first {int(seqs.shape[0])} sequences",
        }


@register_source("video_folder")
class VideoFolderSource(FrameSource):
    """A folder of the user's videos (:class:`~convlstm_vp.data.VideoFolder`): training clips
    drawn with replacement from its training split, validation and test clips from its own splits."""

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.clips = video_folder(cfg, "train")

    def train_batch(self, rng: np.random.Generator, batch_size: int) -> Tensor:
        return self.clips.clips(rng.integers(len(self.clips), size=batch_size))

    def validation_set(self) -> tuple[Tensor, dict]:
        d = self.cfg["data"]
        ds = video_folder(self.cfg, "val")
        seqs = ds.clips(range(min(len(ds), d["val_sequences"])))
        n = int(seqs.shape[0])
        return seqs, {
            "split": "validation",
            "sequences": n,
            "what": f"{n} clips of the validation split of {d['root']} (carved from the training videos)",
        }

    @classmethod
    def test_set(
        cls, cfg: dict, root: str | None = None, sequences: int | None = None, **options: Any
    ) -> tuple[Tensor, dict]:
        n = cfg["data"]["final_eval_sequences"] if sequences is None else sequences
        ds = video_folder(cfg, "test", root)
        seqs = ds.clips(range(min(n, len(ds))))
        test_set = f"{ds.root} test split"
        files = ", ".join(str(f.relative_to(ds.root)) for f in ds.files)
        what = f"{test_set}, first {seqs.shape[0]} of {len(ds)} clips ({files})"
        return seqs, {"split": "test", "test_set": test_set, "sequences": int(seqs.shape[0]), "what": what}


def video_folder(cfg: dict, split: str, root: str | None = None) -> VideoFolder:
    """The ``split`` of the video folder ``root`` (default ``data.root``) with ``cfg``'s clip
    length, frame size, channels and frame step."""
    d, m = cfg["data"], cfg["model"]
    return VideoFolder(
        root or d["root"],
        split,
        m["input_frames"],
        m["output_frames"],
        size=tuple(d["size"]),
        channels=d["channels"],
        frame_step=d["frame_step"],
        cache_dir=d["cache_dir"],
    )


def check_frame_data(cfg: dict) -> None:
    """ValueError naming the ``data.*`` key that does not fit ``data.dataset`` (before any work)."""
    source_class(cfg).check_config(cfg)


def test_sequences(
    cfg: dict, root: str | None = None, sequences: int | None = None, **options: Any
) -> tuple[Tensor, dict]:
    """The test sequences ``(N, T, C, H, W)`` of ``cfg``'s data and the ``evaluated_on`` entry
    naming them (:meth:`FrameSource.test_set` of ``data.dataset``'s source). The end of training
    and ``evaluate.py`` share it, so they score the same set."""
    return source_class(cfg).test_set(cfg, root, sequences, **options)
