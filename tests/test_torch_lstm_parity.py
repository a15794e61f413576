"""Rank 0: ConvLSTM.from_torch_lstm computes what torch.nn.LSTM computes, forward and backward."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from convlstm_vp import ConvLSTM
from convlstm_vp.nn import Implementation

TOL = 1e-5
IN, HID, T, B = 3, 5, 6, 3


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    err = (a - b).abs().max().item()
    assert err <= TOL, f"{what}: max abs difference {err}"


def _pair(num_layers: int, bidirectional: bool, proj_size: int, batch_first: bool, fused: bool, bias: bool = True):
    torch.manual_seed(num_layers * 100 + bidirectional * 10 + proj_size + batch_first)
    lstm = nn.LSTM(
        IN,
        HID,
        num_layers=num_layers,
        bidirectional=bidirectional,
        proj_size=proj_size,
        batch_first=batch_first,
        bias=bias,
    )
    layer = ConvLSTM.from_torch_lstm(lstm)
    layer.implementation = Implementation(torch_lstm=fused)
    return lstm, layer


def _grads_match(lstm: nn.LSTM, layer: ConvLSTM) -> None:
    nd = 2 if lstm.bidirectional else 1
    for l, d in itertools.product(range(lstm.num_layers), range(nd)):
        sfx = f"_l{l}" + ("_reverse" if d else "")
        cell = layer.cells[l * nd + d]
        for name, p in cell.named_parameters():
            ref = getattr(lstm, name + sfx).grad
            assert p.grad is not None, f"{name}{sfx}: no gradient"
            _close(p.grad, ref, f"grad {name}{sfx}")


CASES = list(itertools.product([1, 2], [False, True], [0, 2], [True, False], [True, False]))


@pytest.mark.parametrize("num_layers,bidirectional,proj_size,batch_first,fused", CASES)
def test_outputs_states_and_gradients_match(num_layers, bidirectional, proj_size, batch_first, fused):
    lstm, layer = _pair(num_layers, bidirectional, proj_size, batch_first, fused)
    shape = (B, T, IN) if batch_first else (T, B, IN)
    x1 = torch.randn(shape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    nd = 2 if bidirectional else 1
    out_h = proj_size or HID
    h0 = torch.randn(num_layers * nd, B, out_h)
    c0 = torch.randn(num_layers * nd, B, HID)
    y1, (h1, c1) = lstm(x1, (h0, c0))
    y2, (h2, c2) = layer(x2, (h0, c0))
    _close(y2, y1, "output")
    _close(h2, h1, "h_n")
    _close(c2, c1, "c_n")
    w = torch.randn_like(y1)
    ((y1 * w).sum() + h1.sum() + 0.5 * c1.sum()).backward()
    ((y2 * w).sum() + h2.sum() + 0.5 * c2.sum()).backward()
    _close(x2.grad, x1.grad, "input gradient")
    _grads_match(lstm, layer)


@pytest.mark.parametrize(
    "bidirectional,proj_size,batch_first,fused",
    list(itertools.product([False, True], [0, 2], [True, False], [True, False])),
)
def test_packed_sequence_matches(bidirectional, proj_size, batch_first, fused):
    lstm, layer = _pair(2, bidirectional, proj_size, batch_first, fused)
    lengths = torch.tensor([4, T, 2])  # unsorted on purpose
    shape = (B, T, IN) if batch_first else (T, B, IN)
    x = torch.randn(shape)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    p1 = pack_padded_sequence(x1, lengths, batch_first=batch_first, enforce_sorted=False)
    p2 = pack_padded_sequence(x2, lengths, batch_first=batch_first, enforce_sorted=False)
    y1, (h1, c1) = lstm(p1)
    y2, (h2, c2) = layer(p2)
    assert isinstance(y2, type(y1))
    assert torch.equal(y2.batch_sizes, y1.batch_sizes)
    assert torch.equal(y2.sorted_indices, y1.sorted_indices)
    _close(y2.data, y1.data, "packed output data")
    _close(h2, h1, "h_n")
    _close(c2, c1, "c_n")
    (y1.data.sum() + h1.sum()).backward()
    (y2.data.sum() + h2.sum()).backward()
    _close(x2.grad, x1.grad, "input gradient")
    _grads_match(lstm, layer)


def test_packed_sorted_input_keeps_batch_order():
    lstm, layer = _pair(1, True, 0, True, False)
    x = torch.randn(B, T, IN)
    p = pack_padded_sequence(x, torch.tensor([T, 3, 3]), batch_first=True)  # enforce_sorted=True, ties
    y1, _ = lstm(p)
    y2, _ = layer(p)
    assert y2.sorted_indices is None
    _close(y2.data, y1.data, "packed output data")


@pytest.mark.parametrize(
    "num_layers,bidirectional,proj_size,fused", list(itertools.product([1, 2], [False, True], [0, 2], [True, False]))
)
def test_unbatched_input_matches(num_layers, bidirectional, proj_size, fused):
    lstm, layer = _pair(num_layers, bidirectional, proj_size, True, fused)
    x = torch.randn(T, IN)
    nd = 2 if bidirectional else 1
    h0 = torch.randn(num_layers * nd, proj_size or HID)
    c0 = torch.randn(num_layers * nd, HID)
    y1, (h1, c1) = lstm(x, (h0, c0))
    y2, (h2, c2) = layer(x, (h0, c0))
    _close(y2, y1, "output")
    _close(h2, h1, "h_n")
    _close(c2, c1, "c_n")
    y1b, _ = lstm(x)
    y2b, _ = layer(x)
    _close(y2b, y1b, "output with zero initial state")


@pytest.mark.parametrize("fused", [True, False])
def test_without_bias_matches(fused):
    lstm, layer = _pair(2, True, 0, True, fused, bias=False)
    assert layer.cells[0].bias_ih is None
    x = torch.randn(B, T, IN)
    y1, (h1, _) = lstm(x)
    y2, (h2, _) = layer(x)
    _close(y2, y1, "output")
    _close(h2, h1, "h_n")


def test_weights_are_copied_not_shared():
    lstm, layer = _pair(1, False, 0, True, True)
    with torch.no_grad():
        lstm.weight_ih_l0.zero_()
    assert layer.cells[0].weight_ih.abs().sum() > 0


def test_fused_and_step_loop_agree_with_lengths():
    torch.manual_seed(3)
    a = ConvLSTM(IN, HID, num_layers=2, spatial_dims=0, bidirectional=True, implementation="fused")
    b = ConvLSTM(
        IN, HID, num_layers=2, spatial_dims=0, bidirectional=True, implementation=Implementation(torch_lstm=False)
    )
    b.load_state_dict(a.state_dict())
    x = torch.randn(B, T, IN)
    lengths = [T, 1, 4]
    ya, (ha, ca) = a(x, lengths=lengths)
    yb, (hb, cb) = b(x, lengths=lengths)
    _close(ya, yb, "output")
    _close(ha, hb, "h_n")
    _close(ca, cb, "c_n")


def test_from_torch_lstm_rejects_other_modules():
    with pytest.raises(TypeError, match="torch.nn.LSTM"):
        ConvLSTM.from_torch_lstm(nn.GRU(3, 4))
