"""Fuzzing ``ConvLSTM``: random ranks, shapes, dtypes, layouts and options.

Every case must end in one of two ways: the output and state shapes the documented formula
gives, or a ``ValueError``/``TypeError``. Any other exception, or a shape other than the
formula's, fails. Cases built to be valid (float input of the layer's dtype, sizes that fit)
must run. Seeded, a few hundred cases, a few seconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from convlstm_vp import ConvLSTM

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
OTHER_DTYPES = [torch.int64, torch.int32, torch.uint8, torch.bool]


@dataclass
class Case:
    kwargs: dict[str, Any]
    shape: tuple[int, ...]
    dtype: torch.dtype
    layer_dtype: torch.dtype
    training: bool
    lengths: list[int] | None = None
    with_state: bool = False
    faults: list[str] = field(default_factory=list)  # what was made invalid on purpose

    def __repr__(self) -> str:
        return (
            f"Case(kwargs={self.kwargs}, shape={self.shape}, dtype={self.dtype}, layer_dtype={self.layer_dtype}, "
            f"training={self.training}, lengths={self.lengths}, with_state={self.with_state}, faults={self.faults})"
        )


def _per_dim(rng: random.Random, n: int, lo: int, hi: int) -> Any:
    if n and rng.random() < 0.3:
        return tuple(rng.randint(lo, hi) for _ in range(n))
    return rng.randint(lo, hi)


def make_case(rng: random.Random) -> Case:
    n = rng.choice([0, 1, 2, 3])
    layers = rng.randint(1, 3)
    c_in = rng.randint(1, 3)
    faults: list[str] = []
    kw: dict[str, Any] = {"spatial_dims": n, "num_layers": layers}
    if rng.random() < 0.4:
        kw["hidden_channels"] = [rng.randint(1, 4) for _ in range(layers)]
    else:
        kw["hidden_channels"] = rng.randint(1, 4)
    if n:
        kw["kernel_size"] = _per_dim(rng, n, 1, 4)
        kw["stride"] = _per_dim(rng, n, 1, 2)
        kw["dilation"] = _per_dim(rng, n, 1, 2)
        kw["padding"] = rng.choice(["same", "valid", rng.randint(0, 2)])
    kw["batch_first"] = rng.random() < 0.6
    kw["data_format"] = rng.choice(["channels_first", "channels_last"])
    kw["bidirectional"] = rng.random() < 0.3
    kw["return_sequences"] = rng.random() < 0.7
    kw["return_all_layers"] = rng.random() < 0.2
    kw["go_backwards"] = rng.random() < 0.2
    kw["dropout"] = rng.choice([0.0, 0.0, 0.3])
    kw["recurrent_dropout"] = rng.choice([0.0, 0.0, 0.2])
    kw["peephole"] = rng.random() < 0.2
    if n == 0 and rng.random() < 0.3:
        smallest = min(kw["hidden_channels"]) if isinstance(kw["hidden_channels"], list) else kw["hidden_channels"]
        if smallest > 1:
            kw["proj_size"] = rng.randint(1, smallest - 1)
    kw["implementation"] = "fused" if rng.random() < 0.7 else "plain"
    # deliberate faults in the constructor arguments
    if rng.random() < 0.08:
        faults.append("bad hidden_channels")
        kw["hidden_channels"] = rng.choice([0, -2, 2.5, "4", [3] * (layers + 1)])
    if n and rng.random() < 0.06:
        faults.append("bad kernel_size")
        kw["kernel_size"] = rng.choice([0, -1, (3,) * (n + 1), 1.5])
    if rng.random() < 0.04:
        faults.append("bad spatial_dims")
        kw["spatial_dims"] = rng.choice([4, -1])
    if rng.random() < 0.04:
        faults.append("bad dropout")
        kw["dropout"] = rng.choice([1.0, -0.1])
    if rng.random() < 0.04:
        faults.append("bad data_format")
        kw["data_format"] = "nhwc"
    if n and rng.random() < 0.03:
        faults.append("proj_size at rank > 0")
        kw["proj_size"] = 1

    batched = rng.random() < 0.85
    b, t = rng.randint(1, 3), rng.randint(1, 4)
    spatial = [rng.randint(1, 7 if n < 3 else 5) for _ in range(n)]
    channels = c_in
    if rng.random() < 0.06:
        faults.append("wrong channel count")
        channels = c_in + rng.randint(1, 2)
    feat = [channels, *spatial] if kw["data_format"] == "channels_first" else [*spatial, channels]
    shape = ([b, t] if kw["batch_first"] else [t, b]) if batched else [t]
    shape = shape + feat
    if rng.random() < 0.05:
        faults.append("wrong tensor rank")
        shape = shape + [2] if rng.random() < 0.5 else shape[:-1]
    if rng.random() < 0.03:
        faults.append("empty sequence")
        shape[(1 if kw["batch_first"] else 0) if batched else 0] = 0

    layer_dtype = rng.choice([torch.float32, torch.float32, torch.float64])
    dtype = layer_dtype
    if rng.random() < 0.15:
        faults.append("input dtype")
        dtype = rng.choice([d for d in FLOAT_DTYPES + OTHER_DTYPES if d != layer_dtype])

    lengths = None
    if batched and rng.random() < 0.2:
        lengths = [rng.randint(1, max(t, 1)) for _ in range(b)]
        if rng.random() < 0.2:
            faults.append("bad lengths")
            lengths = rng.choice([[t + 1] * b, [0] * b, [1] * (b + 1)])
    with_state = rng.random() < 0.25
    kw["in_channels"] = c_in
    return Case(kw, tuple(shape), dtype, layer_dtype, rng.random() < 0.5, lengths, with_state, faults)


def _conv_out(size: int, k: int, s: int, d: int, padding: Any) -> int:
    if padding == "same":
        return -(-size // s)
    p = 0 if padding == "valid" else padding
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _dims(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, tuple) else (v,) * n


def expected_shapes(case: Case) -> tuple[Any, Any, Any] | None:
    """(output shape(s), h_n shape(s), c_n shape(s)) from the documented formulas, or None when
    a kernel does not fit its input (then a ValueError is the right answer)."""
    kw = case.kwargs
    n, layers = kw["spatial_dims"], kw["num_layers"]
    hidden = kw["hidden_channels"] if isinstance(kw["hidden_channels"], list) else [kw["hidden_channels"]] * layers
    dirs = 2 if kw["bidirectional"] else 1
    proj = kw.get("proj_size", 0)
    batched = len(case.shape) == n + 3
    if batched:
        b, t = case.shape[:2] if kw["batch_first"] else case.shape[1::-1]
    else:
        b, t = None, case.shape[0]
    cl = kw["data_format"] == "channels_last"
    sp = list(case.shape[-n - 1 : -1] if cl else case.shape[len(case.shape) - n :]) if n else []
    spatial, per_layer = sp, []
    for _ in range(layers):
        if n:
            k, s, d = _dims(kw["kernel_size"], n), _dims(kw["stride"], n), _dims(kw["dilation"], n)
            spatial = [_conv_out(spatial[i], k[i], s[i], d[i], kw["padding"]) for i in range(n)]
            if any(v <= 0 for v in spatial):
                return None
        per_layer.append(list(spatial))

    def feature(c: int, sp_: list[int]) -> list[int]:
        return [*sp_, c] if cl and n else [c, *sp_]

    def seq(c: int, sp_: list[int]) -> tuple[int, ...]:
        lead = ([b, t] if kw["batch_first"] else [t, b]) if batched else [t]
        if not kw["return_sequences"]:
            lead = [b] if batched else []
        return tuple(lead + feature(c, sp_))

    out_c = [dirs * (proj or h) for h in hidden]
    outputs: Any = [seq(out_c[l], per_layer[l]) for l in range(layers)]
    output = outputs if kw["return_all_layers"] else outputs[-1]
    h_cells = [(proj or hidden[l], per_layer[l]) for l in range(layers) for _ in range(dirs)]
    c_cells = [(hidden[l], per_layer[l]) for l in range(layers) for _ in range(dirs)]

    def states(cells: list) -> Any:
        same_h = len({(c, tuple(s)) for c, s in h_cells}) == 1 and len({(c, tuple(s)) for c, s in c_cells}) == 1
        if same_h:
            c, s = cells[0]
            return tuple([len(cells)] + ([b] if batched else []) + feature(c, s))
        return [tuple(([b] if batched else []) + feature(c, s)) for c, s in cells]

    return output, states(h_cells), states(c_cells)


def _shape_of(x: Any) -> Any:
    return [tuple(v.shape) for v in x] if isinstance(x, list) else tuple(x.shape)


def _make_input(case: Case, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(case.shape, generator=gen, dtype=torch.float64)
    if case.dtype == torch.bool:
        return x > 0
    if not case.dtype.is_floating_point:
        return (x * 3).round().to(case.dtype) if case.dtype != torch.uint8 else (x.abs() * 3).round().to(case.dtype)
    return x.to(case.dtype)


def _state_for(layer: ConvLSTM, case: Case, expected: Any) -> Any:
    """Zeros of the documented initial-state shape (the final-state shape without time)."""
    if expected is None:
        return None
    _, h_shape, c_shape = expected
    if isinstance(h_shape, list):
        return (
            [torch.zeros(s, dtype=case.layer_dtype) for s in h_shape],
            [torch.zeros(s, dtype=case.layer_dtype) for s in c_shape],
        )
    return torch.zeros(h_shape, dtype=case.layer_dtype), torch.zeros(c_shape, dtype=case.layer_dtype)


def run_case(case: Case, seed: int) -> str:
    """ "ok", "rejected" or raises AssertionError describing what went wrong."""
    torch.manual_seed(seed)
    kwargs = dict(case.kwargs)
    c_in = kwargs.pop("in_channels")
    hidden = kwargs.pop("hidden_channels")
    try:
        layer = ConvLSTM(c_in, hidden, **kwargs).to(case.layer_dtype)
    except (ValueError, TypeError):
        return "rejected"
    except Exception as exc:  # noqa: BLE001 - the point of the test
        raise AssertionError(f"constructor raised {type(exc).__name__}: {exc}\n{case!r}") from exc
    layer.train(case.training)
    gen = torch.Generator().manual_seed(seed)
    x = _make_input(case, gen)
    expected = expected_shapes(case) if not case.faults else None
    state = _state_for(layer, case, expected) if case.with_state else None
    try:
        out, (h_n, c_n) = layer(x, state, lengths=case.lengths)
    except (ValueError, TypeError) as exc:
        if not case.faults and expected is not None:
            raise AssertionError(f"a valid case was rejected: {type(exc).__name__}: {exc}\n{case!r}") from exc
        return "rejected"
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"forward raised {type(exc).__name__}: {exc}\n{case!r}") from exc
    if case.faults:
        if "input dtype" in case.faults and case.dtype.is_floating_point:
            # a float input of another precision may be accepted: then it must still be right
            exp = expected_shapes(case)
            assert exp is not None and _shape_of(out) == _shape_of_expected(exp[0]), case
            return "ok"
        raise AssertionError(f"accepted an invalid case ({case.faults}); output {_shape_of(out)}\n{case!r}")
    assert expected is not None, f"accepted a kernel that does not fit: output {_shape_of(out)}\n{case!r}"
    exp_out, exp_h, exp_c = expected
    assert _shape_of(out) == _shape_of_expected(exp_out), f"output {_shape_of(out)} != {exp_out}\n{case!r}"
    assert _shape_of(h_n) == _shape_of_expected(exp_h), f"h_n {_shape_of(h_n)} != {exp_h}\n{case!r}"
    assert _shape_of(c_n) == _shape_of_expected(exp_c), f"c_n {_shape_of(c_n)} != {exp_c}\n{case!r}"
    for t in out if isinstance(out, list) else [out]:
        assert t.dtype == case.layer_dtype and torch.isfinite(t).all(), case
    return "ok"


def _shape_of_expected(e: Any) -> Any:
    return [tuple(v) for v in e] if isinstance(e, list) else tuple(e)


CHUNKS, PER_CHUNK = 5, 50


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_fuzz_convlstm(chunk: int) -> None:
    outcomes = {"ok": 0, "rejected": 0}
    for i in range(PER_CHUNK):
        seed = 1000 * chunk + i
        case = make_case(random.Random(seed))
        outcomes[run_case(case, seed)] += 1
    # the generator is tuned so that most cases are valid and some are not
    assert outcomes["ok"] >= PER_CHUNK // 3, outcomes
    assert outcomes["rejected"] >= 1, outcomes


# ============================================================================ the input corpus
# Malformed user files, configs, checkpoints and arguments, generated here (no binary fixtures in
# the repository), each run through every command that reads such a file, in-process through
# ``convlstm_vp.cli.main``. Every case must end with exit status 2 and, for a file, one line on
# stderr that names it: never a traceback, never exit 0 (a NaN-weight checkpoint must not write
# NaN frames). ``ARG_CASES`` are argument errors found before any work.

import io as _io
import json as _json
import struct as _struct
import zipfile as _zipfile

import numpy as _np

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY_FRAMES = ROOT / "configs" / "tiny-moving-mnist.yaml"


def _npy_bytes(arr: _np.ndarray) -> bytes:
    buf = _io.BytesIO()
    _np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _huge_npy_header(shape=(10**9, 64, 64)) -> bytes:
    """An .npy of a few hundred bytes whose header declares ``shape`` float32 (terabytes)."""
    from numpy.lib import format as npy

    buf = _io.BytesIO()
    npy.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(64)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = _io.BytesIO()
    with _zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _gif_declaring(width: int, height: int) -> bytes:
    """A GIF of a few dozen bytes whose screen and image declare ``width`` x ``height`` pixels."""
    screen = b"GIF89a" + _struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"," + _struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b";"


def _good_series_npz(n: int = 6) -> bytes:
    rng = _np.random.default_rng(0)
    buf = _io.BytesIO()
    _np.savez(buf, X=rng.standard_normal((n, 16, 3)).astype(_np.float32), y=_np.array(["a", "b"] * (n // 2)))
    return buf.getvalue()


def _good_frames_npz() -> bytes:
    buf = _io.BytesIO()
    _np.savez(buf, frames=(_np.random.default_rng(0).random((12, 16, 16)) * 255).astype(_np.uint8))
    return buf.getvalue()


# name: (file name, bytes, kinds of command that read it: frames / series / digits)
def _bad_files() -> dict[str, tuple[str, bytes, tuple[str, ...]]]:
    series_npz, frames_npz = _good_series_npz(), _good_frames_npz()
    frames_f = _np.random.default_rng(1).random((12, 16, 16)).astype(_np.float32)
    with_nan = frames_f.copy()
    with_nan[3, 4, 5] = _np.nan
    return {
        "npz-truncated-frames": ("clip.npz", frames_npz[: len(frames_npz) // 2], ("frames",)),
        "npz-truncated-series": ("cases.npz", series_npz[: len(series_npz) // 2], ("series", "digits")),
        "npz-5-bytes": ("five.npz", b"hello", ("frames", "series", "digits")),
        "npz-empty": ("empty.npz", b"", ("frames", "series", "digits")),
        "npz-huge-declared": (
            "huge.npz",
            _zip({"X.npy": _huge_npy_header(), "y.npy": _npy_bytes(_np.arange(2))}),
            ("series", "digits"),
        ),
        "npz-huge-declared-frames": ("hugeframes.npz", _zip({"frames.npy": _huge_npy_header()}), ("frames",)),
        "npz-pickled": (
            "pickled.npz",
            _zip({"X.npy": _npy_bytes(_np.array([{"a": 1}], dtype=object))}),
            ("frames", "series", "digits"),
        ),
        "npz-bad-crc": (
            "crc.npz",
            series_npz.replace(b"\x00\x00\x80?", b"\x00\x00\x80@", 1)
            if b"\x00\x00\x80?" in series_npz
            else series_npz[:-30] + bytes(30),
            ("series",),
        ),
        "npz-zero-cases": (
            "zero.npz",
            _zip(
                {"X.npy": _npy_bytes(_np.zeros((0, 16, 3), _np.float32)), "y.npy": _npy_bytes(_np.zeros(0, _np.int64))}
            ),
            ("series", "digits"),
        ),
        "npz-not-a-zip-text": ("text.npz", b"X = [1, 2, 3]\n", ("series", "digits")),
        "npy-huge-declared": ("huge.npy", _huge_npy_header(), ("frames",)),
        "npy-truncated": ("cut.npy", _npy_bytes(frames_f)[:200], ("frames",)),
        "npy-empty": ("empty.npy", b"", ("frames",)),
        "npy-pickled": ("objects.npy", _npy_bytes(_np.array([None, 1], dtype=object)), ("frames",)),
        "npy-wrong-dtype": ("complex.npy", _npy_bytes(frames_f.astype(_np.complex64)), ("frames",)),
        "npy-strings": ("strings.npy", _npy_bytes(_np.array([["a"] * 4] * 4)), ("frames",)),
        "npy-nan-frames": ("nan.npy", _npy_bytes(with_nan), ("frames",)),
        "npy-out-of-range": ("range.npy", _npy_bytes(frames_f * 7), ("frames",)),
        "npy-zero-frames": ("none.npy", _npy_bytes(_np.zeros((0, 16, 16), _np.uint8)), ("frames",)),
        "npy-garbage": ("noise.npy", bytes(range(256)) * 4, ("frames",)),
        "gif-huge-declared": ("huge.gif", _gif_declaring(65535, 65535), ("frames",)),
        "gif-truncated": ("cut.gif", _gif_declaring(16, 16)[:20], ("frames",)),
        "gif-empty": ("empty.gif", b"", ("frames",)),
        "gif-garbage": ("noise.gif", b"GIF89a" + bytes(range(200)), ("frames",)),
        "mp4-garbage": ("noise.mp4", bytes(range(256)) * 8, ("frames",)),
        "mp4-empty": ("empty.mp4", b"", ("frames",)),
        "ts-non-utf8": ("cases.ts", b"@problemName x\n@classLabel true a b\n@data\n\xff\xfe1,2,3:a\n", ("series",)),
        "ts-empty": ("none.ts", b"", ("series",)),
        "ts-no-data": ("nodata.ts", b"@problemName x\n@classLabel true a b\n", ("series",)),
        "ts-not-numbers": ("words.ts", b"@classLabel true a b\n@data\n1,x,3:a\n", ("series",)),
    }


def _write_checkpoints(folder) -> dict:
    """Small untrained checkpoints of each kind, and broken ones: {name: path}."""
    import copy

    import torch

    from convlstm_vp.train.checkpoint import save_checkpoint
    from convlstm_vp.train.config import load_config, merge
    from convlstm_vp.train.tasks import frames as moving_mnist
    from convlstm_vp.train.tasks import patch_classifier, sensors

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    frames_cfg = load_config(
        TINY_FRAMES,
        moving_mnist.DEFAULTS,
        [
            "model.hidden_channels=[4]",
            "model.head=conv",
            "data.dataset=video_folder",
            "data.size=[16,16]",
            f"data.root={folder / 'videos'}",
        ],
    )
    frames_model = moving_mnist.build_model(frames_cfg)
    sensor_cfg = merge(
        sensors.DEFAULTS,
        {
            "data": {"dataset": "cases.npz", "window": 16},
            "model": {
                "conv_filters": 4,
                "conv_kernel": 3,
                "num_conv_layers": 2,
                "hidden_channels": 4,
                "lstm_layers": 1,
            },
        },
    )
    sensor_model = sensors.build_model(sensor_cfg, 3, 2)
    patch_cfg = merge(patch_classifier.DEFAULTS, {"model": {"hidden_channels": [4]}})
    patch_model = patch_classifier.build_model(patch_cfg)
    state = {"kind": "sensors", "classes": ["a", "b"], "in_channels": 3, "standardizer": None}
    for name, model, cfg, extra in (
        ("frames", frames_model, frames_cfg, {}),
        ("sensors", sensor_model, sensor_cfg, {"task_state": state}),
        ("patches", patch_model, patch_cfg, {}),
    ):
        out[name] = folder / f"{name}.pt"
        save_checkpoint(out[name], {"model": model.state_dict(), "step": 0, "config": cfg, **extra})
    mm_cfg = load_config(TINY_FRAMES, moving_mnist.DEFAULTS, ["model.hidden_channels=[4]"])
    out["moving-mnist"] = folder / "moving-mnist.pt"
    save_checkpoint(
        out["moving-mnist"], {"model": moving_mnist.build_model(mm_cfg).state_dict(), "step": 0, "config": mm_cfg}
    )
    nan_sd = copy.deepcopy(frames_model.state_dict())
    next(t for t in nan_sd.values() if t.is_floating_point()).view(-1)[0] = float("nan")
    out["nan-weights"] = folder / "nan.pt"
    save_checkpoint(out["nan-weights"], {"model": nan_sd, "step": 0, "config": frames_cfg})
    out["config-string"] = folder / "cfgstr.pt"
    save_checkpoint(out["config-string"], {"model": frames_model.state_dict(), "step": 0, "config": "oops"})
    good = out["frames"].read_bytes()
    for name, data in (("truncated", good[: len(good) // 3]), ("empty", b""), ("garbage", bytes(range(256)) * 16)):
        out[name] = folder / f"{name}.pt"
        out[name].write_bytes(data)
    out["nan-weights-sensors"] = folder / "nansensors.pt"
    sd = copy.deepcopy(sensor_model.state_dict())
    next(iter(sd.values())).view(-1)[0] = float("inf")
    save_checkpoint(out["nan-weights-sensors"], {"model": sd, "step": 0, "config": sensor_cfg, "task_state": state})
    del torch
    return out


BAD_CSVS = {
    "non-utf8": b"a,b,c,label\n1,2,3,x\n\xff\xfe,2,3,y\n",
    "empty": b"",
    "not-numbers": b"a,b,c,label\n1,two,3,x\n",
    "ragged": b"a,b,c,label\n1,2\n",
    "binary": bytes(range(256)) * 4,
}
BAD_CONFIGS = {
    "yaml-non-utf8": b"name: x\nseed: \xff\xfe\n",
    "yaml-syntax": b"name: x\ntrain: {steps: 3\n  lr: [\n",
    "yaml-a-list": b"- 1\n- 2\n",
    "yaml-a-string": b"just words\n",
    "yaml-empty": b"",
    "yaml-train-not-a-mapping": b"train: 5\n",
    "yaml-unknown-key": b"trian: {steps: 3}\n",
    "yaml-nan-lr": b"train: {lr: .nan}\n",
    "yaml-python-tag": b"train: !!python/object/apply:os.system ['true']\n",
}
NULL_SETS = [
    "name=",
    "name=null",
    "train.steps=null",
    "train.lr=null",
    "seed=null",
    "train.deterministic=null",
    "train.precision=null",
    "train.num_threads=null",
    "train.batch_size=~",
    "train=null",
]


def _corpus(tmp) -> list[tuple[str, list[str], str, bool]]:
    """Every case: (id, argv of convlstm_vp.cli.main, text stderr must name, whether one line)."""
    cks = _write_checkpoints(tmp / "ck")
    cases = []
    out = tmp / "out"
    for name, (fname, data, kinds) in _bad_files().items():
        folder = tmp / "files" / name
        folder.mkdir(parents=True)
        path = folder / fname
        path.write_bytes(data)
        if "frames" in kinds:
            cases.append(
                (
                    f"predict-{name}",
                    [
                        "predict",
                        "--checkpoint",
                        str(cks["frames"]),
                        "--input",
                        str(path),
                        "--output",
                        str(out / f"{name}.gif"),
                    ],
                    fname,
                    True,
                )
            )
            cases.append(
                (
                    f"evaluate-{name}",
                    ["evaluate", "--checkpoint", str(cks["frames"]), "--data", str(folder)],
                    fname,
                    True,
                )
            )
            cases.append(
                (
                    f"train-frames-{name}",
                    [
                        "train",
                        "frames",
                        "--config",
                        str(TINY_FRAMES),
                        "--run-dir",
                        str(tmp / "runs" / name),
                        "--set",
                        "data.dataset=video_folder",
                        "--set",
                        f"data.root={folder}",
                        "--set",
                        "data.size=[16,16]",
                    ],
                    fname,
                    True,
                )
            )
        if "series" in kinds:
            cases.append(
                (
                    f"classify-sensors-{name}",
                    ["classify", "--checkpoint", str(cks["sensors"]), "--data", str(path), "--output", str(out / name)],
                    fname,
                    True,
                )
            )
            cases.append(
                (
                    f"train-sensors-{name}",
                    [
                        "train",
                        "sensors",
                        "--run-dir",
                        str(tmp / "runs" / name),
                        "--set",
                        f"data.dataset={path}",
                        "--set",
                        "data.window=8",
                    ],
                    fname,
                    True,
                )
            )
        if "digits" in kinds:
            cases.append(
                (
                    f"classify-patches-{name}",
                    ["classify", "--checkpoint", str(cks["patches"]), "--data", str(path), "--output", str(out / name)],
                    fname,
                    True,
                )
            )
    for name, data in BAD_CSVS.items():
        folder = tmp / "csv" / name
        for split in ("train", "test"):  # a folder of recordings: classify reads it, training its train/ test/
            (folder / split).mkdir(parents=True)
            (folder / split / "rec.csv").write_bytes(data)
            (folder / "rec.csv").write_bytes(data)
        cases.append(
            (
                f"classify-sensors-csv-{name}",
                [
                    "classify",
                    "--checkpoint",
                    str(cks["sensors"]),
                    "--data",
                    str(folder),
                    "--output",
                    str(out / f"csv-{name}"),
                ],
                "rec.csv",
                True,
            )
        )
        cases.append(
            (
                f"train-sensors-csv-{name}",
                [
                    "train",
                    "sensors",
                    "--run-dir",
                    str(tmp / "runs" / f"csv-{name}"),
                    "--set",
                    f"data.dataset={folder}",
                    "--set",
                    "data.window=8",
                ],
                "rec.csv",
                True,
            )
        )
        cases.append(
            (
                f"train-sensors-daphnet-{name}",
                [
                    "train",
                    "sensors",
                    "--run-dir",
                    str(tmp / "runs" / f"d-{name}"),
                    "--set",
                    "data.dataset=daphnet",
                    "--set",
                    f"data.root={folder / 'rec.csv'}",
                ],
                "rec.csv",
                True,
            )
        )
    clip = tmp / "clip.npy"
    _np.save(clip, (_np.random.default_rng(0).random((12, 16, 16)) * 255).astype(_np.uint8))
    for name in ("nan-weights", "config-string", "truncated", "empty", "garbage"):
        ck = cks[name]
        cases.append(
            (
                f"predict-ckpt-{name}",
                ["predict", "--checkpoint", str(ck), "--input", str(clip), "--output", str(out / f"ck-{name}.npy")],
                ck.name,
                True,
            )
        )
        cases.append(
            (f"evaluate-ckpt-{name}", ["evaluate", "--checkpoint", str(ck), "--data", str(tmp / "ck")], ck.name, True)
        )
        cases.append(
            (
                f"classify-ckpt-{name}",
                ["classify", "--checkpoint", str(ck), "--data", str(clip), "--output", str(out / f"ck-{name}")],
                ck.name,
                True,
            )
        )
    ck = cks["nan-weights-sensors"]
    good_cases = tmp / "good.npz"
    good_cases.write_bytes(_good_series_npz())
    cases.append(
        (
            "classify-ckpt-nan-weights-sensors",
            ["classify", "--checkpoint", str(ck), "--data", str(good_cases), "--output", str(out / "nan-sensors")],
            ck.name,
            True,
        )
    )
    for name, data in BAD_CONFIGS.items():
        cfg = tmp / "configs" / f"{name}.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_bytes(data)
        for job in ("frames", "sensors", "patches"):
            cases.append(
                (
                    f"train-{job}-{name}",
                    ["train", job, "--config", str(cfg), "--run-dir", str(tmp / "runs" / f"{job}-{name}")],
                    cfg.name,
                    True,
                )
            )
    for item in NULL_SETS:
        key = item.split("=")[0]
        cases.append(
            (
                f"train-frames-set-{item}",
                [
                    "train",
                    "frames",
                    "--config",
                    str(TINY_FRAMES),
                    "--run-dir",
                    str(tmp / "runs" / "nulls"),
                    "--set",
                    item,
                ],
                key,
                True,
            )
        )
    folder_out = tmp / "a-folder.gif"
    folder_out.mkdir()
    a_file = tmp / "a-file"
    a_file.write_text("x")
    predict = ["predict", "--checkpoint", str(cks["frames"]), "--input", str(clip)]
    for name, extra, named in (
        ("fps-0", ["--fps", "0", "--output", str(out / "o.mp4")], "--fps"),
        ("fps-nan", ["--fps", "nan", "--output", str(out / "o.gif")], "--fps"),
        ("fps-negative", ["--fps", "-5", "--output", str(out / "o.gif")], "--fps"),
        ("fps-inf", ["--fps", "inf", "--output", str(out / "o.gif")], "--fps"),
        ("scale-huge", ["--scale", "100000", "--output", str(out / "o.gif")], "--scale"),
        ("temperature-nan", ["--filter-temperature", "nan", "--output", str(out / "o.gif")], "--filter-temperature"),
        ("output-a-folder", ["--output", str(folder_out)], str(folder_out)),
        ("output-under-a-file", ["--output", str(a_file / "o.gif")], str(a_file)),
    ):
        cases.append((f"predict-{name}", predict + extra, named, named.startswith("/")))
    cases.append(
        ("evaluate-json-a-folder", ["evaluate", "--checkpoint", str(cks["frames"]), "--json", str(tmp)], str(tmp), True)
    )
    cases.append(
        (
            "evaluate-json-under-a-file",
            ["evaluate", "--checkpoint", str(cks["frames"]), "--json", str(a_file / "x.json")],
            str(a_file),
            True,
        )
    )
    # a Moving MNIST checkpoint given --data (video folders only): a usage error, status 2
    cases.append(
        (
            "evaluate-data-on-moving-mnist",
            ["evaluate", "--checkpoint", str(cks["moving-mnist"]), "--data", str(tmp / "ck")],
            "--data",
            True,
        )
    )
    cases.append(
        (
            "classify-output-a-file",
            ["classify", "--checkpoint", str(cks["sensors"]), "--data", str(good_cases), "--output", str(a_file)],
            str(a_file),
            True,
        )
    )
    return cases


def run_cli(argv: list[str], capsys) -> tuple[object, str, BaseException | None]:
    """``convlstm_vp.cli.main(argv)`` in-process: (exit status, stderr, an escaped exception)."""
    import warnings

    from convlstm_vp.cli import main

    capsys.readouterr()
    code, escaped = None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:  # a traceback for a user
            escaped = exc
    return code, capsys.readouterr().err, escaped


def _outcome(case, code, err, escaped) -> str | None:
    """None when the case ended as promised, else a one-word kind and what happened."""
    _, _, named, one_line = case
    if escaped is not None:
        return f"TRACEBACK {type(escaped).__name__}: {str(escaped)[:200]}"
    if code != 2:
        return f"STATUS {code!r}: {err.strip()[-300:]}"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if one_line and len(lines) != 1:
        return f"LINES {len(lines)}: {err.strip()[-400:]}"
    if named not in err:
        return f"UNNAMED {named!r} not in {err.strip()[-300:]!r}"
    return None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus")
    return tmp, _corpus(tmp)


def test_every_malformed_input_is_one_line_and_exit_status_2(corpus, capsys) -> None:
    tmp, cases = corpus
    failures = {}
    for case in cases:
        code, err, escaped = run_cli(case[1], capsys)
        problem = _outcome(case, code, err, escaped)
        if problem is not None:
            failures[case[0]] = problem
    outputs = list((tmp / "out").rglob("*")) if (tmp / "out").exists() else []
    report = _json.dumps(failures, indent=1)
    tracebacks = sum(v.startswith("TRACEBACK") for v in failures.values())
    print(f"corpus: {len(cases)} cases, {len(failures)} failures, {tracebacks} tracebacks")
    assert not failures, f"{len(failures)} of {len(cases)} cases ({tracebacks} tracebacks):\n{report}"
    assert not [p for p in outputs if p.is_file()], f"a failed command wrote {outputs}"
    assert len(cases) >= 120
