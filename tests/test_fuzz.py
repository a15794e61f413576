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
        return ([torch.zeros(s, dtype=case.layer_dtype) for s in h_shape], [torch.zeros(s, dtype=case.layer_dtype) for s in c_shape])
    return torch.zeros(h_shape, dtype=case.layer_dtype), torch.zeros(c_shape, dtype=case.layer_dtype)


def run_case(case: Case, seed: int) -> str:
    """"ok", "rejected" or raises AssertionError describing what went wrong."""
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
    for t in (out if isinstance(out, list) else [out]):
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
