"""ConvLSTMCell: equations, shapes, options, initializers, errors and gradients (ranks 0-3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from convlstm_vp import ConvLSTM, ConvLSTMCell

SPATIAL = {0: (), 1: (7,), 2: (5, 6), 3: (3, 4, 5)}


def _seq(b: int, t: int, c: int, spatial: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    return torch.randn(b, t, c, *spatial, dtype=dtype)


# ---------------------------------------------------------------- stepping == whole sequence
@pytest.mark.parametrize("rank", [0, 1, 2, 3])
@pytest.mark.parametrize("peephole", [False, True])
def test_stepping_cell_equals_layer(rank, peephole):
    torch.manual_seed(rank)
    kw = {} if rank == 0 else {"stride": 2, "padding": "same", "kernel_size": 2}
    layer = ConvLSTM(2, 3, spatial_dims=rank, peephole=peephole, peephole_initializer="normal", **kw)
    x = _seq(2, 4, 2, SPATIAL[rank])
    y, (h_n, c_n) = layer(x)
    cell = layer.cells[0]
    state = None
    for t in range(x.shape[1]):
        state = cell(x[:, t], state)
        torch.testing.assert_close(state[0], y[:, t], rtol=0, atol=1e-6)
    torch.testing.assert_close(state[0], h_n[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(state[1], c_n[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_stepping_cell_channels_last_equals_channels_first(rank):
    torch.manual_seed(10 + rank)
    cf = ConvLSTMCell(2, 3, 3, spatial_dims=rank)
    cl = ConvLSTMCell(2, 3, 3, spatial_dims=rank, data_format="channels_last")
    cl.load_state_dict(cf.state_dict())
    x = torch.randn(2, 2, *SPATIAL[rank])
    s_cf = s_cl = None
    for _ in range(3):
        s_cf = cf(x, s_cf)
        s_cl = cl(x.movedim(1, -1), s_cl)
        torch.testing.assert_close(s_cl[0], s_cf[0].movedim(1, -1), rtol=0, atol=1e-6)
        torch.testing.assert_close(s_cl[1], s_cf[1].movedim(1, -1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("rank", [0, 2])
def test_unbatched_cell_equals_batch_of_one(rank):
    cell = ConvLSTMCell(2, 3, spatial_dims=rank)
    x = torch.randn(2, *SPATIAL[rank])
    h, c = cell(x)
    hb, cb = cell(x.unsqueeze(0))
    assert h.shape == hb.shape[1:]
    torch.testing.assert_close(h, hb[0])
    h2, c2 = cell(x, (h, c))
    hb2, _ = cell(x.unsqueeze(0), (hb, cb))
    torch.testing.assert_close(h2, hb2[0])


# ---------------------------------------------------------------- Shi et al. reference
def _shi_reference(cell: ConvLSTMCell, x: torch.Tensor, act=torch.tanh, rec=torch.sigmoid, out_act=None):
    """Hand-written Shi et al. (2015) ConvLSTM, odd kernels, per-element peepholes, (B, T, C, H, W)."""
    out_act = out_act or act
    hid = cell.hidden_channels
    wx = [cell.weight_ih[k * hid : (k + 1) * hid] for k in range(4)]
    wh = [cell.weight_hh[k * hid : (k + 1) * hid] for k in range(4)]
    b = [cell.bias_ih[k * hid : (k + 1) * hid] + cell.bias_hh[k * hid : (k + 1) * hid] for k in range(4)]
    px = cell.kernel_size[0] // 2
    ph = cell.recurrent_kernel_size[0] // 2
    bsz, steps = x.shape[:2]
    h = x.new_zeros(bsz, hid, *x.shape[3:])
    c = torch.zeros_like(h)
    hs = []
    for t in range(steps):
        xt = x[:, t]

        def conv(k: int) -> torch.Tensor:
            return F.conv2d(xt, wx[k], b[k], padding=px) + F.conv2d(h, wh[k], padding=ph)

        i = rec(conv(0) + cell.weight_ci * c)
        f = rec(conv(1) + cell.weight_cf * c)
        c = f * c + i * act(conv(2))
        o = rec(conv(3) + cell.weight_co * c)
        h = o * out_act(c)
        hs.append(h)
    return torch.stack(hs, 1), c


def test_peephole_equations_match_shi_reference():
    torch.manual_seed(0)
    size = (4, 5)
    layer = ConvLSTM(
        2,
        3,
        3,
        spatial_dims=2,
        peephole=True,
        peephole_size=size,
        recurrent_kernel_size=5,
        peephole_initializer="normal",
        bias_initializer="normal",
    )
    cell = layer.cells[0]
    with torch.no_grad():
        for w in (cell.weight_ci, cell.weight_cf, cell.weight_co):
            w.mul_(10)  # make the peephole terms matter
    assert cell.weight_ci.shape == (3, *size)
    x = _seq(2, 4, 2, size)
    y, (_, c_n) = layer(x)
    ref_y, ref_c = _shi_reference(cell, x)
    torch.testing.assert_close(y, ref_y, rtol=0, atol=1e-5)
    torch.testing.assert_close(c_n[0], ref_c, rtol=0, atol=1e-5)
    # the peepholes do change the result
    plain = ConvLSTM(2, 3, 3, spatial_dims=2, recurrent_kernel_size=5)
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if "weight_c" not in k})
    assert (plain(x)[0] - y).abs().max() > 1e-3


def test_peephole_per_channel_works_for_any_frame_size():
    cell = ConvLSTMCell(2, 3, spatial_dims=2, peephole=True)
    assert cell.weight_co.shape == (3, 1, 1)
    for size in [(4, 4), (6, 3)]:
        h, _ = cell(torch.randn(1, 2, *size))
        assert h.shape == (1, 3, *size)
    sized = ConvLSTMCell(2, 3, spatial_dims=2, peephole=True, peephole_size=(4, 4))
    with pytest.raises(ValueError, match=r"peephole_size=\(4, 4\)"):
        sized(torch.randn(1, 2, 5, 5))


@pytest.mark.parametrize(
    "kwargs,act,rec,out_act",
    [
        ({}, torch.tanh, torch.sigmoid, None),
        ({"activation": "relu"}, torch.relu, torch.sigmoid, None),
        ({"recurrent_activation": "hard_sigmoid"}, torch.tanh, lambda v: torch.clamp((v + 3) / 6, 0, 1), None),
        ({"output_activation": "identity"}, torch.tanh, torch.sigmoid, lambda v: v),
        ({"activation": torch.sin, "output_activation": torch.cos}, torch.sin, torch.sigmoid, torch.cos),
    ],
)
def test_activation_options_follow_the_equations(kwargs, act, rec, out_act):
    torch.manual_seed(1)
    layer = ConvLSTM(
        2,
        3,
        3,
        spatial_dims=2,
        peephole=True,
        peephole_size=(4, 4),
        peephole_initializer="normal",
        bias_initializer="normal",
        **kwargs,
    )
    x = 2 * _seq(2, 3, 2, (4, 4))
    y, _ = layer(x)
    ref, _ = _shi_reference(layer.cells[0], x, act=act, rec=rec, out_act=out_act)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5)
    if kwargs:
        default, _ = _shi_reference(layer.cells[0], x)
        assert (y - default).abs().max() > 1e-3, "the option did not change the result"


def test_unknown_activation_name_is_rejected():
    with pytest.raises(ValueError, match="activation"):
        ConvLSTMCell(2, 3, activation="not_an_activation")


def test_rank0_cell_equals_torch_lstm_cell():
    torch.manual_seed(2)
    ref = torch.nn.LSTMCell(3, 4)
    cell = ConvLSTMCell(3, 4, spatial_dims=0)
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, n).copy_(getattr(ref, n))
    x = torch.randn(2, 3)
    s = (torch.randn(2, 4), torch.randn(2, 4))
    for a, b in zip(cell(x, s), ref(x, s)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- output shapes (Keras rules)
def _keras_out(size: int, k: int, s: int, d: int, padding) -> int:
    if padding == "same":
        return math.ceil(size / s)
    lo, hi = (0, 0) if padding == "valid" else padding
    return (size + lo + hi - d * (k - 1) - 1) // s + 1


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize(
    "kernel,stride,dilation,padding",
    [
        (3, 1, 1, "valid"),
        (3, 1, 1, "same"),
        (2, 1, 1, "same"),
        (4, 2, 1, "same"),
        (3, 2, 1, "same"),
        (3, 2, 1, "valid"),
        (3, 1, 2, "same"),
        (3, 1, 2, "valid"),
        (2, 2, 2, "same"),
        (3, 1, 1, (2, 0)),
        (3, 2, 1, (0, 1)),
    ],
)
def test_output_shapes_follow_keras(rank, kernel, stride, dilation, padding):
    sizes = (7, 8, 9)[:rank]
    pad_arg = tuple([padding] * rank) if isinstance(padding, tuple) else padding
    layer = ConvLSTM(2, 3, kernel, spatial_dims=rank, stride=stride, dilation=dilation, padding=pad_arg)
    y, (h_n, c_n) = layer(torch.randn(2, 3, 2, *sizes))
    want = tuple(_keras_out(s, kernel, stride, dilation, padding) for s in sizes)
    assert y.shape == (2, 3, 3, *want)
    assert h_n.shape == c_n.shape == (1, 2, 3, *want)
    assert layer.cells[0].output_spatial_size(sizes) == want


def test_same_padding_puts_the_extra_pad_on_the_high_side():
    """TensorFlow's rule for even kernels: an even kernel's extra padding goes after the data."""
    torch.manual_seed(4)
    cell = ConvLSTMCell(1, 2, 2, spatial_dims=2, padding="same", bias=False)
    x = torch.randn(1, 1, 1, 5, 5)
    got = cell.input_transform(x)[:, 0]
    ref = F.conv2d(F.pad(x[:, 0], (0, 1, 0, 1)), cell.weight_ih)
    torch.testing.assert_close(got, ref)
    odd = ConvLSTMCell(1, 2, 3, spatial_dims=1, padding="same", stride=2, bias=False)
    x1 = torch.randn(1, 1, 1, 6)  # ceil(6/2)=3 outputs need 1 pad in total: (0, 1)
    got1 = odd.input_transform(x1)[:, 0]
    ref1 = F.conv1d(F.pad(x1[:, 0], (0, 1)), odd.weight_ih, stride=2)
    torch.testing.assert_close(got1, ref1)


def test_explicit_per_side_padding_forms():
    x = torch.randn(1, 1, 5, 6)
    a = ConvLSTMCell(1, 2, 3, spatial_dims=2, padding=((1, 0), (0, 2)), bias=False)
    b = ConvLSTMCell(1, 2, 3, spatial_dims=2, padding=(1, 0, 0, 2), bias=False)
    b.load_state_dict(a.state_dict())
    assert a(x)[0].shape == (1, 2, 4, 6)
    torch.testing.assert_close(a(x)[0], b(x)[0])
    ref = F.conv2d(F.pad(x, (0, 2, 1, 0)), a.weight_ih)
    torch.testing.assert_close(a.input_transform(x.unsqueeze(1))[:, 0], ref)
    with pytest.raises(ValueError, match="padding"):
        ConvLSTMCell(1, 2, 3, spatial_dims=2, padding=(1, 2, 3))
    with pytest.raises(ValueError, match="padding"):
        ConvLSTMCell(1, 2, 3, spatial_dims=2, padding="full")


def test_kernel_larger_than_input_is_an_error():
    cell = ConvLSTMCell(1, 2, 5, spatial_dims=2, padding="valid")
    with pytest.raises(ValueError, match=r"kernel_size=\(5, 5\)"):
        cell(torch.randn(1, 1, 3, 3))


# ---------------------------------------------------------------- gradients
def test_gradcheck_rank0_peephole():
    torch.manual_seed(5)
    layer = ConvLSTM(2, 3, spatial_dims=0, peephole=True, peephole_initializer="normal", dtype=torch.float64)
    assert not layer.cells[0].is_plain_lstm()
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    params = tuple(layer.parameters())
    assert torch.autograd.gradcheck(lambda x, h, c, *p: layer(x, (h, c))[0], (x, h0, c0, *params))


def test_gradcheck_rank0_fused():
    torch.manual_seed(6)
    layer = ConvLSTM(2, 3, spatial_dims=0, bidirectional=True, dtype=torch.float64)
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x)[0], (x, *layer.parameters()))


def test_gradcheck_rank2_peephole():
    torch.manual_seed(7)
    layer = ConvLSTM(
        1,
        2,
        3,
        spatial_dims=2,
        peephole=True,
        peephole_initializer="normal",
        stride=2,
        recurrent_kernel_size=2,
        dtype=torch.float64,
    )
    x = torch.randn(1, 2, 1, 4, 3, dtype=torch.float64, requires_grad=True)
    params = tuple(layer.parameters())
    assert len(params) == 7  # weight_ih, weight_hh, bias_ih, bias_hh, three peephole weights
    # fast mode checks a random projection of the full Jacobian of every input at once
    assert torch.autograd.gradcheck(lambda x, *p: layer(x)[0], (x, *params), fast_mode=True)


# ---------------------------------------------------------------- initialization
def test_unit_forget_bias():
    h = 4
    on = ConvLSTMCell(2, h, spatial_dims=1)
    total = on.bias_ih + on.bias_hh
    assert torch.equal(total[h : 2 * h], torch.ones(h))
    assert torch.equal(total[:h], torch.zeros(h)) and torch.equal(total[2 * h :], torch.zeros(2 * h))
    off = ConvLSTMCell(2, h, spatial_dims=1, unit_forget_bias=False)
    assert torch.equal(off.bias_ih + off.bias_hh, torch.zeros(4 * h))
    ones = ConvLSTMCell(2, h, spatial_dims=1, unit_forget_bias=False, bias_initializer="ones")
    assert torch.equal(ones.bias_ih, torch.ones(4 * h))
    nobias = ConvLSTMCell(2, h, spatial_dims=1, bias=False)
    assert nobias.bias_ih is None and nobias.bias_hh is None
    assert [n for n, _ in nobias.named_parameters()] == ["weight_ih", "weight_hh"]


def test_initializers_by_name_and_callable():
    torch.manual_seed(8)
    cell = ConvLSTMCell(
        3,
        4,
        3,
        spatial_dims=2,
        kernel_initializer="zeros",
        recurrent_initializer="orthogonal",
        bias_initializer=lambda t: torch.nn.init.constant_(t, 0.25),
        unit_forget_bias=False,
    )
    assert torch.count_nonzero(cell.weight_ih) == 0
    w = cell.weight_hh.reshape(16, -1)  # (4H, H * k * k) has orthonormal rows
    torch.testing.assert_close(w @ w.t(), torch.eye(16), rtol=0, atol=1e-5)
    assert torch.equal(cell.bias_ih, torch.full((16,), 0.25))
    glorot = ConvLSTMCell(3, 4, 3, spatial_dims=2)
    bound = math.sqrt(6 / (3 * 9 + 16 * 9))
    assert glorot.weight_ih.abs().max() <= bound and glorot.weight_ih.abs().max() > 0.5 * bound
    lstm = ConvLSTMCell(
        3, 4, spatial_dims=0, kernel_initializer="lstm_uniform", unit_forget_bias=False, bias_initializer="lstm_uniform"
    )
    assert lstm.weight_ih.abs().max() <= 0.5 and lstm.bias_ih.abs().max() <= 0.5
    calls = []
    ConvLSTMCell(3, 4, spatial_dims=1, recurrent_initializer=lambda t: calls.append(tuple(t.shape)))
    assert calls == [(16, 4, 3)]
    with pytest.raises(ValueError, match="kernel_initializer"):
        ConvLSTMCell(3, 4, kernel_initializer="nope")


# ---------------------------------------------------------------- errors
def test_cell_errors_name_shape_and_layout():
    cell = ConvLSTMCell(2, 3, spatial_dims=2)
    with pytest.raises(ValueError, match=r"channels_first.*\(B, C=2, H, W\).*got shape \(2, 4\)"):
        cell(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"\(B, C=2, H, W\).*got shape \(1, 5, 4, 4\)"):
        cell(torch.randn(1, 5, 4, 4))
    cl = ConvLSTMCell(2, 3, spatial_dims=2, data_format="channels_last")
    with pytest.raises(ValueError, match=r"\(B, H, W, C=2\).*channels_last"):
        cl(torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"h \(1, 3, 4, 4\) and c \(1, 3, 4, 4\)"):
        cell(torch.randn(1, 2, 4, 4), (torch.zeros(1, 3, 4, 5), torch.zeros(1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"h \(1, 4, 4, 3\).*channels_last"):
        cl(torch.randn(1, 4, 4, 2), (torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"\(B, hidden, H, W\)"):
        cell(torch.randn(1, 2, 4, 4), (torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)))
    with pytest.raises(ValueError, match="spatial_dims"):
        ConvLSTMCell(2, 3, spatial_dims=4)
    with pytest.raises(ValueError, match="proj_size"):
        ConvLSTMCell(2, 3, spatial_dims=2, proj_size=2)
    with pytest.raises(ValueError, match="dropout"):
        ConvLSTMCell(2, 3, input_dropout=1.0)
