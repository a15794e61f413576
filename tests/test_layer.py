"""ConvLSTM sequence layer: layouts, directions, lengths, state handling, dropout and errors."""

from __future__ import annotations

import pytest
import torch

from convlstm_vp import ConvLSTM
from convlstm_vp.nn import Implementation

SPATIAL = {0: (), 1: (6,), 2: (4, 5), 3: (3, 3, 4)}


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def _twin(layer: ConvLSTM, **changes) -> ConvLSTM:
    """A layer with the same weights and arguments except ``changes``."""
    kw = dict(
        spatial_dims=layer.spatial_dims,
        batch_first=layer.batch_first,
        data_format=layer.data_format,
        bidirectional=layer.bidirectional,
        num_layers=layer.num_layers,
    )
    kw.update(changes)
    other = ConvLSTM(layer.in_channels, layer.hidden_channels, **kw)
    other.load_state_dict(layer.state_dict())
    return other


# ---------------------------------------------------------------- layouts
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_channels_last_gives_the_same_numbers(rank):
    torch.manual_seed(rank)
    cf = ConvLSTM(2, [3, 4], spatial_dims=rank, bidirectional=True)
    cl = _twin(cf, data_format="channels_last")
    x = torch.randn(2, 3, 2, *SPATIAL[rank])
    y, (h, c) = cf(x)
    y2, (h2, c2) = cl(x.movedim(2, -1))
    _close(y2, y.movedim(2, -1))
    for a, b in zip(h2 + c2, h + c):  # per-layer lists (hidden sizes differ)
        _close(a, b.movedim(1, -1))
    # a channels_last initial state is read channels_last
    h0 = [t.movedim(1, -1) for t in h]
    c0 = [t.movedim(1, -1) for t in c]
    y3, _ = cl(x.movedim(2, -1), (h0, c0))
    y4, _ = cf(x, (h, c))
    _close(y3, y4.movedim(2, -1))


@pytest.mark.parametrize("rank", [0, 2])
def test_batch_first_false_is_a_transpose(rank):
    torch.manual_seed(5)
    a = ConvLSTM(2, 3, spatial_dims=rank, num_layers=2)
    b = _twin(a, batch_first=False)
    x = torch.randn(2, 4, 2, *SPATIAL[rank])
    y, (h, _) = a(x)
    y2, (h2, _) = b(x.transpose(0, 1))
    _close(y2, y.transpose(0, 1))
    _close(h2, h)


@pytest.mark.parametrize("rank", [1, 2])
def test_unbatched_input_equals_batch_of_one(rank):
    layer = ConvLSTM(2, 3, spatial_dims=rank, num_layers=2)
    x = torch.randn(4, 2, *SPATIAL[rank])
    y, (h, c) = layer(x)
    yb, (hb, cb) = layer(x.unsqueeze(0))
    assert y.shape == yb.shape[1:] and h.shape == (2, 3, *SPATIAL[rank])
    _close(y, yb[0])
    _close(h, hb[:, 0])
    y2, _ = layer(x, (h, c))
    y2b, _ = layer(x.unsqueeze(0), (hb, cb))
    _close(y2, y2b[0])


# ---------------------------------------------------------------- directions and stacking
def test_bidirectional_backward_half_runs_on_the_reversed_sequence():
    torch.manual_seed(6)
    bi = ConvLSTM(2, 3, spatial_dims=2, bidirectional=True)
    x = torch.randn(2, 4, 2, 4, 4)
    y, (h, _) = bi(x)
    fwd = ConvLSTM(2, 3, spatial_dims=2)
    bwd = ConvLSTM(2, 3, spatial_dims=2)
    fwd.cells[0].load_state_dict(bi.cells[0].state_dict())
    bwd.cells[0].load_state_dict(bi.cells[1].state_dict())
    yf, (hf, _) = fwd(x)
    yb, (hb, _) = bwd(x.flip(1))
    _close(y[:, :, :3], yf)
    _close(y[:, :, 3:], yb.flip(1))
    _close(h, torch.cat([hf, hb]))


def test_stack_feeds_each_layer_the_previous_output_and_return_all_layers():
    torch.manual_seed(7)
    stack = ConvLSTM(2, [3, 4], kernel_size=[3, (1, 3)], spatial_dims=2, return_all_layers=True)
    assert stack.cells[1].kernel_size == (1, 3) and stack.cells[1].in_channels == 3
    x = torch.randn(2, 3, 2, 4, 5)
    outs, (h, c) = stack(x)
    assert isinstance(outs, list) and [o.shape[2] for o in outs] == [3, 4]
    assert isinstance(h, list) and [t.shape for t in h] == [(2, 3, 4, 5), (2, 4, 4, 5)]
    first = ConvLSTM(2, 3, spatial_dims=2)
    second = ConvLSTM(3, 4, (1, 3), spatial_dims=2)
    first.cells[0].load_state_dict(stack.cells[0].state_dict())
    second.cells[0].load_state_dict(stack.cells[1].state_dict())
    y1, _ = first(x)
    y2, (h2, _) = second(y1)
    _close(outs[0], y1)
    _close(outs[1], y2)
    _close(h[1], h2[0])
    stack.return_all_layers = False
    _close(stack(x)[0], outs[1])


def test_per_layer_strides_shrink_the_state():
    layer = ConvLSTM(1, [2, 2], spatial_dims=2, stride=[2, 1], padding=["same", "valid"])
    y, (h, _) = layer(torch.randn(1, 2, 1, 9, 8))
    assert y.shape == (1, 2, 2, 3, 2)  # ceil(9/2)=5 -> 5-2=3; ceil(8/2)=4 -> 4-2=2
    assert [t.shape for t in h] == [(1, 2, 5, 4), (1, 2, 3, 2)]
    with pytest.raises(ValueError, match="expected 2 values"):
        ConvLSTM(1, [2, 2], stride=[1, 2, 1])


# ---------------------------------------------------------------- state handling
@pytest.mark.parametrize("rank,fused", [(0, True), (0, False), (2, False)])
def test_stateful_carries_state_and_reset_state_forgets_it(rank, fused):
    torch.manual_seed(8)
    layer = ConvLSTM(
        2, 3, spatial_dims=rank, num_layers=2, stateful=True, implementation=Implementation(torch_lstm=fused)
    )
    x = torch.randn(2, 6, 2, *SPATIAL[rank])
    full = _twin(layer)
    y_full, (h_full, _) = full(x)
    y1, _ = layer(x[:, :3])
    y2, (h2, _) = layer(x[:, 3:])
    _close(torch.cat([y1, y2], 1), y_full, atol=1e-5)
    _close(h2, h_full, atol=1e-5)
    assert not h2.requires_grad or layer._state[0][0].grad_fn is None  # the carried state is detached
    layer.reset_state()
    y3, _ = layer(x[:, 3:])
    _close(y3, full(x[:, 3:])[0], atol=1e-5)
    assert (y3 - y2).abs().max() > 1e-4
    with pytest.raises(ValueError, match="reset_state"):
        layer(torch.randn(3, 2, 2, *SPATIAL[rank]))


def test_non_stateful_layer_does_not_carry_state():
    layer = ConvLSTM(2, 3, spatial_dims=1)
    x = torch.randn(1, 3, 2, 6)
    _close(layer(x)[0], layer(x)[0], atol=0)


def test_initial_state_is_used():
    torch.manual_seed(9)
    layer = ConvLSTM(2, 3, spatial_dims=2)
    x = torch.randn(2, 3, 2, 4, 4)
    h0, c0 = torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 3, 4, 4)
    y, _ = layer(x, (h0, c0))
    state = (h0[0], c0[0])
    for t in range(3):
        state = layer.cells[0](x[:, t], state)
        _close(y[:, t], state[0])
    _close(layer(x, (torch.zeros_like(h0), torch.zeros_like(c0)))[0], layer(x)[0])


# ---------------------------------------------------------------- lengths, go_backwards, last step
@pytest.mark.parametrize(
    "rank,fused,bidirectional",
    [(0, True, False), (0, True, True), (0, False, True), (2, False, False), (2, False, True)],
)
def test_lengths_equal_running_each_sequence_truncated(rank, fused, bidirectional):
    torch.manual_seed(10)
    layer = ConvLSTM(
        2,
        3,
        spatial_dims=rank,
        num_layers=2,
        bidirectional=bidirectional,
        implementation=Implementation(torch_lstm=fused),
    )
    x = torch.randn(3, 5, 2, *SPATIAL[rank])
    lengths = torch.tensor([2, 5, 3])
    y, (h, c) = layer(x, lengths=lengths)
    for i, n in enumerate(lengths.tolist()):
        yi, (hi, ci) = layer(x[i : i + 1, :n])
        _close(y[i : i + 1, :n], yi, atol=1e-5)
        assert torch.count_nonzero(y[i, n:]) == 0
        _close(h[:, i : i + 1], hi, atol=1e-5)
        _close(c[:, i : i + 1], ci, atol=1e-5)


def test_lengths_are_validated():
    layer = ConvLSTM(2, 3, spatial_dims=0)
    x = torch.randn(2, 4, 2)
    with pytest.raises(ValueError, match=r"lengths: expected shape \(2,\)"):
        layer(x, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match=r"\[1, T=4\]"):
        layer(x, lengths=[0, 4])


@pytest.mark.parametrize("rank", [0, 2])
def test_go_backwards_equals_running_on_the_flipped_sequence(rank):
    torch.manual_seed(11)
    fwd = ConvLSTM(2, 3, spatial_dims=rank, num_layers=2)
    back = _twin(fwd)
    back.go_backwards = True
    x = torch.randn(2, 4, 2, *SPATIAL[rank])
    y, (h, _) = back(x)
    yf, (hf, _) = fwd(x.flip(1))
    _close(y, yf)
    _close(h, hf)
    # with lengths each sequence is reversed within its own length
    lengths = torch.tensor([4, 2])
    yl, (hl, _) = back(x, lengths=lengths)
    y1, (h1, _) = fwd(x[1:, :2].flip(1))
    _close(yl[1:, :2], y1)
    _close(hl[:, 1:], h1)


@pytest.mark.parametrize(
    "rank,bidirectional,fused",
    [(0, False, True), (0, True, True), (0, True, False), (2, False, False), (2, True, False)],
)
def test_return_sequences_false_gives_the_last_valid_step(rank, bidirectional, fused):
    torch.manual_seed(12)
    seq = ConvLSTM(
        2, 3, spatial_dims=rank, bidirectional=bidirectional, implementation=Implementation(torch_lstm=fused)
    )
    last = _twin(seq, return_sequences=False)
    last.implementation = Implementation(torch_lstm=fused)
    x = torch.randn(3, 5, 2, *SPATIAL[rank])
    lengths = torch.tensor([5, 2, 4])
    y, (h, _) = seq(x, lengths=lengths)
    z, (hz, _) = last(x, lengths=lengths)
    assert z.shape == (3, 3 * (2 if bidirectional else 1), *SPATIAL[rank])
    idx = torch.arange(3)
    _close(z[:, :3], y[idx, lengths - 1, :3])
    _close(z[:, :3], h[0])  # the forward direction's final state
    if bidirectional:
        _close(z[:, 3:], y[:, 0, 3:])  # the backward direction ends at step 0
        _close(z[:, 3:], h[1])
    cl = _twin(seq, return_sequences=False, data_format="channels_last")
    if rank:
        _close(cl(x.movedim(2, -1), lengths=lengths)[0], z.movedim(1, -1))


# ---------------------------------------------------------------- dropout
def test_input_dropout_mask_is_constant_over_time_and_differs_between_sequences():
    torch.manual_seed(13)
    layer = ConvLSTM(4, 3, spatial_dims=1, input_dropout=0.5)
    x = torch.randn(4, 5, 4, 6, requires_grad=True)
    layer(x)[0].sum().backward()
    dead = x.grad == 0  # dropped input elements get no gradient at any step
    assert dead.any() and not dead.all()
    assert torch.equal(dead, dead[:, :1].expand_as(dead)), "the input mask changed over time"
    assert not torch.equal(dead[0, 0], dead[1, 0]), "every sequence should draw its own mask"
    frac = dead[:, 0].float().mean().item()
    assert 0.3 < frac < 0.7
    x.grad = None
    layer(x)[0].sum().backward()
    assert not torch.equal(x.grad == 0, dead), "a new call should draw new masks"
    layer.eval()
    x.grad = None
    y_eval = layer(x)[0]
    y_eval.sum().backward()
    assert not (x.grad == 0).any(), "dropout must be off in eval mode"
    plain = ConvLSTM(4, 3, spatial_dims=1)
    plain.load_state_dict(layer.state_dict())
    _close(y_eval, plain(x)[0], atol=0)


@pytest.mark.parametrize("rank", [0, 2])
def test_recurrent_dropout_mask_is_constant_over_time(rank):
    torch.manual_seed(14)
    layer = ConvLSTM(2, 6, spatial_dims=rank, recurrent_dropout=0.5, input_dropout=0.3)
    assert not layer.cells[0].is_plain_lstm()  # dropout forces the step loop at rank 0
    x = torch.randn(3, 5, 2, *SPATIAL[rank])
    y, _ = layer(x)
    # the cell keeps the masks of that sequence: stepping it again with them reproduces y
    cell = layer.cells[0]
    mask = cell._recurrent_mask
    assert mask is not None and set(mask.unique().tolist()) == {0.0, 2.0}
    assert not torch.equal(mask[0], mask[1])
    state = None
    for t in range(5):
        state = cell(x[:, t], state)
        _close(state[0], y[:, t])
    y2, _ = layer(x)
    assert (y2 - y).abs().max() > 1e-4, "a new sequence should draw new masks"
    layer.eval()
    plain = ConvLSTM(2, 6, spatial_dims=rank)
    plain.load_state_dict(layer.state_dict())
    _close(layer(x)[0], plain(x)[0], atol=1e-6)
    # stepping with per-step masks would differ from the layer: the check above can fail
    layer.train()
    y3, _ = layer(x)
    cell.reset_dropout_masks()
    state = None
    outs = []
    for t in range(5):
        state = cell(x[:, t], state)
        outs.append(state[0])
        cell.reset_dropout_masks()
    assert (torch.stack(outs, 1) - y3).abs().max() > 1e-4


def test_inter_layer_dropout_only_in_training():
    torch.manual_seed(15)
    layer = ConvLSTM(2, 4, spatial_dims=0, num_layers=2, dropout=0.5, return_all_layers=True)
    x = torch.randn(3, 4, 2)
    plain = _twin(layer, return_all_layers=True)
    (a1, a2), _ = layer(x)
    (b1, b2), _ = plain(x)
    _close(a1, b1, atol=1e-6)  # the first layer's own output is not dropped
    assert (a2 - b2).abs().max() > 1e-4
    layer.eval()
    (c1, c2), _ = layer(x)
    _close(c2, b2, atol=1e-6)


# ---------------------------------------------------------------- errors and repr
def test_layer_errors_name_shape_and_layout():
    layer = ConvLSTM(2, 3, spatial_dims=2)
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\).*C=2.*got shape \(2, 3, 4\)"):
        layer(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"channels_first.*\(B, T, C, H, W\) with C=2.*\(1, 3, 5, 4, 4\)"):
        layer(torch.randn(1, 3, 5, 4, 4))
    cl = ConvLSTM(2, 3, spatial_dims=2, data_format="channels_last")
    with pytest.raises(ValueError, match=r"channels_last.*\(B, T, H, W, C\) with C=2"):
        cl(torch.randn(1, 3, 2, 4, 4))  # channels-first data given to a channels_last layer
    tf = ConvLSTM(2, 3, spatial_dims=1, batch_first=False)
    with pytest.raises(ValueError, match=r"batch_first=False.*\(T, B, C, L\)"):
        tf(torch.randn(3, 2))
    x = torch.randn(2, 3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"expected h \(2, 3, 4, 4\).*\(B, hidden, H_out, W_out\)"):
        layer(x, (torch.zeros(1, 2, 3, 4, 5), torch.zeros(1, 2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"\(num_layers \* num_directions, B, hidden, H_out, W_out\)"):
        layer(x, (torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)))
    with pytest.raises(ValueError, match="num_layers \\* num_directions = 1"):
        layer(x, (torch.zeros(2, 2, 3, 4, 4), torch.zeros(2, 2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"expected h \(2, 4, 4, 3\).*channels_last"):
        cl(x.movedim(2, -1), (torch.zeros(1, 2, 3, 4, 4), torch.zeros(1, 2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"\(num_layers \* num_directions, B, H_out, W_out, hidden\)"):
        cl(x.movedim(2, -1), (torch.zeros(2, 4, 4, 3), torch.zeros(2, 4, 4, 3)))
    with pytest.raises(ValueError, match="PackedSequence"):
        from torch.nn.utils.rnn import pack_padded_sequence

        layer(pack_padded_sequence(torch.randn(1, 3, 2), torch.tensor([3]), batch_first=True))
    with pytest.raises(ValueError, match="num_layers"):
        ConvLSTM(2, [3, 4], num_layers=3)


def test_repr_lists_the_configuration():
    text = repr(ConvLSTM(2, 3, spatial_dims=1, num_layers=2, bidirectional=True, stateful=True, name="enc"))
    assert "name='enc'" in text and "bidirectional=True" in text and "stateful=True" in text
    assert "spatial_dims=1" in text and "kernel_size=(3,)" in text


@pytest.mark.parametrize("cls,rank", [("ConvLSTM1d", 1), ("ConvLSTM2d", 2), ("ConvLSTM3d", 3)])
def test_rank_classes_fix_spatial_dims_and_equal_convlstm(cls, rank):
    import convlstm_vp

    layer_cls = getattr(convlstm_vp, cls)
    torch.manual_seed(0)
    fixed = layer_cls(2, 3, 3, 2, data_format="channels_last")
    general = ConvLSTM(2, 3, 3, 2, spatial_dims=rank, data_format="channels_last")
    general.load_state_dict(fixed.state_dict())
    assert isinstance(fixed, ConvLSTM) and fixed.spatial_dims == rank and fixed.num_layers == 2
    x = torch.randn(2, 4, *([5] * rank), 2)
    torch.testing.assert_close(fixed(x)[0], general(x)[0], rtol=0, atol=0)
    with pytest.raises(TypeError, match=f"{cls} fixes spatial_dims={rank}"):
        layer_cls(2, 3, spatial_dims=0)


def test_no_two_modules_of_the_package_import_each_other():
    """Not even lazily inside a function (DESIGN.md): every relative import, at any depth."""
    import ast
    from pathlib import Path

    import convlstm_vp

    root = Path(convlstm_vp.__file__).parent
    modules = {
        p.relative_to(root.parent).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__"): p
        for p in root.rglob("*.py")
    }
    edges = set()
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    dep = full if full in modules else target
                    if dep in modules and dep != name:
                        edges.add((name, dep))
    mutual = sorted(
        (a, b)
        for a, b in edges
        if (b, a) in edges and a < b and not b.startswith(a + ".") and not a.startswith(b + ".")
    )
    assert not mutual, f"modules that import each other: {mutual}"
    assert not any(a.startswith("convlstm_vp.nn") and not b.startswith("convlstm_vp.nn") for a, b in edges), (
        "nn/ imports outside nn/"
    )


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_an_empty_batch_gives_an_empty_result_as_torch_lstm_does(rank):
    from convlstm_vp import ConvLSTMCell, EncoderForecaster

    for impl in ("fused", "plain"):
        layer = ConvLSTM(2, 3, 3, num_layers=2, spatial_dims=rank, bidirectional=True, implementation=impl)
        x = torch.randn(0, 4, 2, *([5] * rank), requires_grad=True)
        out, (h, c) = layer(x)
        assert out.shape == (0, 4, 6, *([5] * rank)) and h.shape == c.shape == (4, 0, 3, *([5] * rank))
        out.sum().backward()
        assert x.grad.shape == x.shape
        assert ConvLSTMCell(2, 3, 3, spatial_dims=rank, implementation=impl)(x[:, 0])[0].shape == (0, 3, *([5] * rank))
    for head in ("conv", "dynamic_filter"):
        m = EncoderForecaster(1, [4], 3, patch_size=4, input_frames=3, output_frames=2, head=head, filter_size=3)
        assert m(torch.rand(0, 3, 1, 16, 16)).shape == (0, 2, 1, 16, 16)
