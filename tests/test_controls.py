"""Layer training controls: name/tags, regularizers, freezing, stored gradients, grad_scale, training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import convlstm_vp
from convlstm_vp import L1, L1L2, L2, ConvLSTM, ConvLSTMCell, regularization_loss
from convlstm_vp.nn import Implementation

SPATIAL = {0: (), 2: (4, 4)}


class Stack(nn.Module):
    """Two ConvLSTM layers and a head: ``first`` → ``second`` → mean."""

    def __init__(self, rank: int, fused: bool = True, **second_kwargs) -> None:
        super().__init__()
        self.first = ConvLSTM(2, 3, spatial_dims=rank, implementation=Implementation(torch_lstm=fused), name="first")
        self.second = ConvLSTM(
            3, 4, spatial_dims=rank, implementation=Implementation(torch_lstm=fused), name="second", **second_kwargs
        )
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.second(self.first(x)[0])
        feats = y.mean(dim=tuple(range(3, y.dim()))) if y.dim() > 3 else y
        return self.head(feats).pow(2).mean()


def _x(rank: int, b: int = 2, t: int = 3, c: int = 2) -> torch.Tensor:
    return torch.randn(b, t, c, *SPATIAL[rank])


# ---------------------------------------------------------------- name
def test_name_in_repr_and_tags():
    layer = ConvLSTM(2, 3, name="encoder")
    assert "name='encoder'" in repr(layer)
    assert layer.tag("grad", "weight_ih") == "encoder/grad/weight_ih"
    assert layer.tag() == "encoder"
    assert ConvLSTM(2, 3).tag("loss") == "ConvLSTM/loss"
    cell = ConvLSTMCell(2, 3, name="c0")
    assert "name='c0'" in repr(cell) and cell.tag("h") == "c0/h"
    with pytest.raises(ValueError, match="name"):
        ConvLSTM(2, 3, name=3)


# ---------------------------------------------------------------- regularizers
def test_regularizer_objects_compute_their_formulas():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    assert L1(0.1)(w).item() == pytest.approx(0.1 * 3.5)
    assert L2(0.2)(w).item() == pytest.approx(0.2 * 5.25)
    assert L1L2(l1=0.1, l2=0.2)(w).item() == pytest.approx(0.1 * 3.5 + 0.2 * 5.25)
    assert L1L2()(w).item() == 0
    with pytest.raises(ValueError, match="l2"):
        L2(-1.0)


def _hand_penalty(cell: ConvLSTMCell, kernel, recurrent, bias) -> torch.Tensor:
    total = torch.zeros(())
    total = total + kernel(cell.weight_ih) + recurrent(cell.weight_hh)
    if cell.proj_size:
        total = total + kernel(cell.weight_hr)
    return total + bias(cell.bias_ih) + bias(cell.bias_hh)


def test_regularization_loss_equals_hand_computed_sum():
    torch.manual_seed(0)

    def l1(a):
        return lambda w: a * w.abs().sum()

    def l2(a):
        return lambda w: a * (w * w).sum()

    layer = ConvLSTM(
        2,
        3,
        spatial_dims=2,
        num_layers=2,
        bidirectional=True,
        bias_initializer="normal",
        kernel_regularizer=L1(0.1),
        recurrent_regularizer="l2",
        bias_regularizer={"l1": 0.2, "l2": 0.3},
    )
    other = ConvLSTM(6, 2, spatial_dims=2, kernel_regularizer=lambda w: w.norm())
    model = nn.Sequential(layer, nn.Linear(3, 3), other)
    want = sum(_hand_penalty(c, l1(0.1), l2(0.01), lambda w: l1(0.2)(w) + l2(0.3)(w)) for c in layer.cells)
    want = want + other.cells[0].weight_ih.norm()
    got = regularization_loss(model)
    assert got.dim() == 0
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(layer.regularization_loss() + other.regularization_loss(), want)
    assert convlstm_vp.regularization_loss is regularization_loss
    # the penalty is differentiable: d/dw of 0.1 * |w| is 0.1 * sign(w)
    got.backward()
    w = layer.cells[0].weight_ih
    torch.testing.assert_close(w.grad, 0.1 * w.sign())


def test_regularizers_by_name_and_on_the_projection():
    torch.manual_seed(1)
    layer = ConvLSTM(3, 5, spatial_dims=0, proj_size=2, kernel_regularizer="l1", bias_regularizer="l1_l2")
    cell = layer.cells[0]
    want = 0.01 * (cell.weight_ih.abs().sum() + cell.weight_hr.abs().sum())
    for b in (cell.bias_ih, cell.bias_hh):
        want = want + 0.01 * b.abs().sum() + 0.01 * b.square().sum()
    torch.testing.assert_close(regularization_loss(layer), want)
    assert "kernel_regularizer=L1(l1=0.01)" in repr(layer)


def test_regularization_loss_is_zero_without_regularizers_and_counts_frozen_layers():
    model = nn.Sequential(ConvLSTM(2, 3, spatial_dims=1), nn.Linear(2, 2))
    zero = regularization_loss(model)
    assert zero.dim() == 0 and zero.item() == 0.0 and zero.dtype == torch.float32
    assert regularization_loss(nn.ReLU()).item() == 0.0
    frozen = ConvLSTM(2, 3, spatial_dims=1, recurrent_regularizer=L2(1.0), trainable=False)
    torch.testing.assert_close(regularization_loss(frozen), frozen.cells[0].weight_hh.square().sum())


def test_bad_regularizers_are_rejected():
    with pytest.raises(ValueError, match="kernel_regularizer"):
        ConvLSTMCell(2, 3, kernel_regularizer="l3")
    with pytest.raises(ValueError, match="bias_regularizer"):
        ConvLSTMCell(2, 3, bias_regularizer={"l3": 1.0})
    cell = ConvLSTMCell(2, 3, recurrent_regularizer=lambda w: w.abs())
    with pytest.raises(ValueError, match=r"scalar tensor of shape \(\)"):
        regularization_loss(cell)


# ---------------------------------------------------------------- trainable / freeze
@pytest.mark.parametrize("rank,fused", [(0, True), (0, False), (2, False)])
def test_frozen_layer_weights_are_bit_identical_while_gradients_flow_through(rank, fused):
    torch.manual_seed(2)
    model = Stack(rank, fused=fused, trainable=False)
    assert not model.second.trainable and model.first.trainable
    assert all(not p.requires_grad for p in model.second.parameters())
    before = {k: v.clone() for k, v in model.second.state_dict().items()}
    first_before = {k: v.clone() for k, v in model.first.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    x = _x(rank).requires_grad_(True)
    for _ in range(2):
        opt.zero_grad()
        model(x).backward()
        first_grads = [p.grad for p in model.first.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in first_grads), "no gradient reached the first layer"
        assert all(p.grad is None for p in model.second.parameters())
        opt.step()
    assert x.grad.abs().sum() > 0
    for k, v in model.second.state_dict().items():
        assert torch.equal(v, before[k]), f"frozen {k} changed"
    assert any(not torch.equal(v, first_before[k]) for k, v in model.first.state_dict().items())


def test_freeze_drops_leftover_gradients_and_unfreeze_trains_again():
    torch.manual_seed(3)
    model = Stack(2, fused=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(_x(2)).backward()
    model.second.freeze()  # a gradient computed before freezing must not be applied
    before = {k: v.clone() for k, v in model.second.state_dict().items()}
    opt.step()
    assert all(torch.equal(v, before[k]) for k, v in model.second.state_dict().items())
    model.second.trainable = True
    assert model.second.trainable and all(p.requires_grad for p in model.second.parameters())
    opt.zero_grad()
    model(_x(2)).backward()
    opt.step()
    assert any(not torch.equal(v, before[k]) for k, v in model.second.state_dict().items())
    assert "trainable=False" in repr(ConvLSTM(2, 3, trainable=False))
    cell = ConvLSTMCell(2, 3, trainable=False)
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    cell(x)[0].sum().backward()
    assert x.grad.abs().sum() > 0 and cell.weight_ih.grad is None


# ---------------------------------------------------------------- store_gradients
@pytest.mark.parametrize("rank,fused,set_to_none", [(0, True, True), (0, False, False), (2, False, False)])
def test_stored_gradients_survive_zero_grad(rank, fused, set_to_none):
    torch.manual_seed(4)
    model = Stack(rank, fused=fused, store_gradients=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = _x(rank)
    model(x).backward()
    stored = model.second.get_gradients()
    names = [n for n, _ in model.second.named_parameters()]
    assert sorted(stored) == sorted(names) and "cells.0.weight_ih" in stored
    for n, p in model.second.named_parameters():
        assert torch.equal(stored[n], p.grad)
    opt.step()
    opt.zero_grad(set_to_none=set_to_none)
    for p in model.second.parameters():
        assert p.grad is None if set_to_none else torch.count_nonzero(p.grad) == 0
    kept = model.second.get_gradients()
    for n in names:
        assert torch.equal(kept[n], stored[n])
    # the next backward replaces them (it does not add to them)
    model(2 * _x(rank)).backward()
    new = model.second.get_gradients()
    for n, p in model.second.named_parameters():
        assert torch.equal(new[n], p.grad)
    assert any(not torch.equal(new[n], stored[n]) for n in names)
    with pytest.raises(RuntimeError, match="store_gradients=True"):
        model.first.get_gradients()


def test_stored_gradients_follow_freeze_copy_and_the_cell():
    torch.manual_seed(5)
    layer = ConvLSTM(2, 3, spatial_dims=1, store_gradients=True)
    x = torch.randn(2, 3, 2, 5)
    layer(x)[0].sum().backward()
    assert len(layer.get_gradients()) == 4
    layer.cells[0].weight_hh.requires_grad_(False)
    layer.zero_grad()
    layer(x)[0].sum().backward()
    twin = copy.deepcopy(layer)
    twin.zero_grad()
    twin(x)[0].mean().backward()
    for n, p in twin.named_parameters():
        if p.requires_grad:
            assert torch.equal(twin.get_gradients()[n], p.grad)
    layer.freeze()
    assert layer.get_gradients() == {}
    layer.unfreeze()
    layer(x)[0].sum().backward()
    assert sorted(layer.get_gradients()) == sorted(n for n, _ in layer.named_parameters())
    cell = ConvLSTMCell(2, 3, spatial_dims=0, store_gradients=True)
    cell(torch.randn(4, 2))[0].sum().backward()
    assert torch.equal(cell.get_gradients()["weight_ih"], cell.weight_ih.grad)
    late = ConvLSTM(2, 3, spatial_dims=0)
    late.store_gradients = True  # switched on after construction
    late(torch.randn(2, 3, 2))[0].sum().backward()
    assert torch.equal(late.get_gradients()["cells.0.weight_hh"], late.cells[0].weight_hh.grad)


# ---------------------------------------------------------------- grad_scale
def _input_and_weight_grads(layer: nn.Module, x: torch.Tensor, w: torch.Tensor):
    x = x.clone().requires_grad_(True)
    layer.zero_grad()
    y = layer(x)[0]
    (y * w).sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


@pytest.mark.parametrize(
    "rank,fused,bidirectional", [(0, True, False), (0, True, True), (0, False, False), (2, False, True)]
)
@pytest.mark.parametrize("scale", [0.5, -1.0])
def test_grad_scale_scales_only_the_input_gradient(rank, fused, bidirectional, scale):
    torch.manual_seed(6)
    base = ConvLSTM(
        2,
        3,
        spatial_dims=rank,
        num_layers=2,
        bidirectional=bidirectional,
        implementation=Implementation(torch_lstm=fused),
    )
    scaled = ConvLSTM(
        2,
        3,
        spatial_dims=rank,
        num_layers=2,
        bidirectional=bidirectional,
        implementation=Implementation(torch_lstm=fused),
        grad_scale=scale,
    )
    scaled.load_state_dict(base.state_dict())
    assert base.cells[0].is_plain_lstm() == (rank == 0)
    x = _x(rank)
    w = torch.randn(base(x)[0].shape)
    y0, gx0, gw0 = _input_and_weight_grads(base, x, w)
    y1, gx1, gw1 = _input_and_weight_grads(scaled, x, w)
    assert torch.equal(y1, y0), "grad_scale must not change the forward pass"
    assert gx0.abs().sum() > 0
    torch.testing.assert_close(gx1, scale * gx0, rtol=0, atol=1e-7)
    for n in gw0:
        assert torch.equal(gw1[n], gw0[n]), f"{n}: the layer's own gradient changed"
    assert f"grad_scale={scale}" in repr(scaled)


def test_gradient_reversal_negates_earlier_layer_gradients():
    torch.manual_seed(7)
    plain = Stack(2, fused=False)
    reversed_ = Stack(2, fused=False, grad_scale=-1.0)
    reversed_.load_state_dict(plain.state_dict())
    x = _x(2)
    plain(x).backward()
    reversed_(x).backward()
    for (n, a), (_, b) in zip(plain.first.named_parameters(), reversed_.first.named_parameters()):
        torch.testing.assert_close(b.grad, -a.grad, rtol=0, atol=1e-7, msg=n)
    for (n, a), (_, b) in zip(plain.second.named_parameters(), reversed_.second.named_parameters()):
        assert torch.equal(b.grad, a.grad), n


def test_grad_scale_on_the_cell_and_with_packed_input():
    torch.manual_seed(8)
    cell = ConvLSTMCell(2, 3, spatial_dims=2, grad_scale=0.25)
    ref = ConvLSTMCell(2, 3, spatial_dims=2)
    ref.load_state_dict(cell.state_dict())
    x = torch.randn(1, 2, 4, 4)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    cell(xa)[0].sum().backward()
    ref(xb)[0].sum().backward()
    torch.testing.assert_close(xa.grad, 0.25 * xb.grad, rtol=0, atol=1e-7)
    assert torch.equal(cell.weight_hh.grad, ref.weight_hh.grad)
    layer = ConvLSTM(2, 3, spatial_dims=0, grad_scale=0.5)
    base = ConvLSTM(2, 3, spatial_dims=0)
    base.load_state_dict(layer.state_dict())
    data = torch.randn(2, 4, 2)
    grads = []
    for m in (layer, base):
        d = data.clone().requires_grad_(True)
        out, _ = m(pack_padded_sequence(d, torch.tensor([4, 2]), batch_first=True))
        out.data.sum().backward()
        grads.append(d.grad)
    torch.testing.assert_close(grads[0], 0.5 * grads[1], rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="grad_scale"):
        ConvLSTM(2, 3, grad_scale=float("nan"))


# ---------------------------------------------------------------- training follows train()/eval()
@pytest.mark.parametrize(
    "kwargs", [{"input_dropout": 0.5}, {"recurrent_dropout": 0.5}, {"dropout": 0.5, "num_layers": 2}]
)
def test_dropout_follows_train_and_eval(kwargs):
    torch.manual_seed(9)
    layer = ConvLSTM(2, 4, spatial_dims=0, **kwargs)
    plain = ConvLSTM(2, 4, spatial_dims=0, num_layers=layer.num_layers)
    plain.load_state_dict(layer.state_dict())
    x = _x(0, b=3, t=4)
    assert layer.training
    a, b = layer(x)[0], layer(x)[0]
    assert (a - b).abs().max() > 1e-4 and (a - plain(x)[0]).abs().max() > 1e-4
    layer.eval()
    assert not layer.training and all(not c.training for c in layer.cells)
    torch.testing.assert_close(layer(x)[0], plain(x)[0], rtol=0, atol=1e-6)
    layer.train()
    assert (layer(x)[0] - plain(x)[0]).abs().max() > 1e-4
