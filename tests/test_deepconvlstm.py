"""DeepConvLSTM: parameter listing of the paper's model, shapes, the shared recurrent layer, training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convlstm_vp
from convlstm_vp import DeepConvLSTM


def _recurrent_input(model: DeepConvLSTM, x: torch.Tensor) -> torch.Tensor:
    """The sequence the recurrent part receives for input ``x`` (captured by a forward hook)."""
    seen: list[torch.Tensor] = []
    handle = model.lstm.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]


def test_mixed_parameter_listing_matches_the_paper_layout() -> None:
    model = DeepConvLSTM(67, 18)
    expected = []
    for c_in in (67, 64, 64, 64):
        expected += [(64, c_in, 5, 1), (64,)]
    expected += [(512, 64), (512, 128), (512,), (512,)]  # LSTM layer 1
    expected += [(512, 128), (512, 128), (512,), (512,)]  # LSTM layer 2
    expected += [(18, 128), (18,)]  # linear
    assert [tuple(p.shape) for p in model.parameters()] == expected


def test_per_channel_parameter_count_of_the_opportunity_model() -> None:
    model = DeepConvLSTM(113, 18, conv_mode="per_channel")
    assert sum(p.numel() for p in model.parameters()) == 3_965_778
    assert tuple(model.convs[0].weight.shape) == (64, 1, 5, 1)
    assert tuple(model.lstm.cells[0].weight_ih.shape) == (512, 64 * 113)


@pytest.mark.parametrize(
    "conv_mode, recurrent, features",
    [
        ("mixed", "rank0", (16,)),
        ("per_channel", "rank0", (16 * 7,)),
        ("mixed", "rank1", (16, 1)),
        ("per_channel", "rank1", (16, 7)),
    ],
)
def test_forward_shapes(conv_mode: str, recurrent: str, features: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = DeepConvLSTM(7, 5, conv_filters=16, hidden_channels=12, conv_mode=conv_mode, recurrent=recurrent)
    x = torch.randn(3, 24, 7)
    assert model(x).shape == (3, 5)
    # four valid convolutions with kernel 5 shorten 24 samples to 8 steps
    assert model.output_steps(24) == 8
    assert tuple(_recurrent_input(model, x).shape) == (3, 8, *features)
    model.eval()
    single = model(x[1])
    assert single.shape == (5,)
    torch.testing.assert_close(single, model(x)[1], rtol=1e-5, atol=1e-6)


def test_recurrent_part_is_the_project_convlstm_layer() -> None:
    rank0 = DeepConvLSTM(6, 4, conv_mode="per_channel")
    rank1 = DeepConvLSTM(6, 4, conv_mode="per_channel", recurrent="rank1", recurrent_kernel=3)
    for model, rank in ((rank0, 0), (rank1, 1)):
        assert isinstance(model.lstm, convlstm_vp.ConvLSTM)
        assert model.lstm.spatial_dims == rank
        assert model.lstm.num_layers == 2
        assert not any(isinstance(m, (nn.LSTM, nn.LSTMCell)) for m in model.modules())
    assert tuple(rank1.lstm.cells[0].weight_ih.shape) == (512, 64, 3)
    assert tuple(rank1.lstm.cells[0].weight_hh.shape) == (512, 128, 3)
    assert tuple(rank1.classifier.weight.shape) == (4, 128 * 6)


def test_rank0_recurrent_part_computes_torch_lstm() -> None:
    torch.manual_seed(1)
    model = DeepConvLSTM(5, 3, conv_filters=8, hidden_channels=10).eval()
    reference = nn.LSTM(8, 10, num_layers=2, batch_first=True)
    model.lstm.load_torch_lstm_weights(reference)
    seq = torch.randn(4, 9, 8)
    last, _ = model.lstm(seq)
    want, _ = reference(seq)
    torch.testing.assert_close(last, want[:, -1], rtol=1e-5, atol=1e-6)


def test_wrong_input_names_the_expected_shape() -> None:
    model = DeepConvLSTM(6, 4)
    with pytest.raises(ValueError, match=r"\(B, T, C\).*C=6.*T >= 17.*\(2, 24, 5\)"):
        model(torch.randn(2, 24, 5))
    with pytest.raises(ValueError, match=r"T >= 17"):
        model(torch.randn(2, 16, 6))
    with pytest.raises(ValueError, match="conv_mode"):
        DeepConvLSTM(6, 4, conv_mode="depthwise")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="recurrent"):
        DeepConvLSTM(6, 4, recurrent="rank2")  # type: ignore[arg-type]


def test_dropout_acts_in_training_only() -> None:
    torch.manual_seed(2)
    model = DeepConvLSTM(4, 3, conv_filters=8, hidden_channels=8, dropout=0.5)
    x = torch.randn(2, 20, 4)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("conv_mode, recurrent", [("mixed", "rank0"), ("per_channel", "rank1")])
def test_optimizer_steps_reduce_loss(conv_mode: str, recurrent: str) -> None:
    torch.manual_seed(3)
    model = DeepConvLSTM(
        3,
        2,
        conv_filters=8,
        conv_kernel=3,
        num_conv_layers=2,
        hidden_channels=16,
        dropout=0.0,
        conv_mode=conv_mode,
        recurrent=recurrent,
    )
    x = torch.randn(16, 10, 3)
    y = (x[:, :, 0].mean(1) > 0).long()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_argument_names_match_the_other_models() -> None:
    """in_channels / hidden_channels / num_classes as in EncoderForecaster and PatchSequenceClassifier;
    the old names are gone (TypeError), and the config's old key is an unknown key."""
    model = DeepConvLSTM(in_channels=5, num_classes=3, conv_filters=4, num_conv_layers=1, hidden_channels=6)
    assert model.in_channels == 5 and model.hidden_channels == 6 and model.num_classes == 3
    assert model.lstm.cells[0].hidden_channels == 6 and model.classifier.in_features == 6
    assert "hidden_channels=6" in repr(model)
    with pytest.raises(TypeError, match="lstm_hidden"):
        DeepConvLSTM(5, 3, lstm_hidden=6)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="num_channels"):
        DeepConvLSTM(num_channels=5, num_classes=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="hidden_channels: expected a positive int"):
        DeepConvLSTM(5, 3, hidden_channels=0)

    from convlstm_vp.train.config import ConfigError, merge
    from convlstm_vp.train.tasks.sensors import DEFAULTS

    assert merge(DEFAULTS, {"model": {"hidden_channels": 8}})["model"]["hidden_channels"] == 8
    with pytest.raises(ConfigError, match=r"unknown config key 'model.lstm_hidden'"):
        merge(DEFAULTS, {"model": {"lstm_hidden": 8}})


def test_dropout_is_on_the_features_between_layers_and_before_the_classifier() -> None:
    """``dropout`` means what torch.nn.LSTM's does (features between layers; here also between the
    convolutions and the LSTM, and before the linear layer), not dropout on the recurrent state."""
    model = DeepConvLSTM(4, 3, conv_filters=8, num_conv_layers=1, hidden_channels=8, lstm_layers=2, dropout=0.3)
    assert model.lstm.dropout == 0.3  # between the LSTM layers, as torch.nn.LSTM(dropout=)
    assert all(c.input_dropout == 0.0 and c.recurrent_dropout == 0.0 for c in model.lstm.cells)  # no cell/state dropout
    classifier = convlstm_vp.PatchSequenceClassifier(1, [4, 4], 3, num_classes=3, dropout=0.3)
    assert classifier.convlstm.dropout == 0.3 and classifier.drop.p == 0.3
    assert all(c.input_dropout == 0.0 and c.recurrent_dropout == 0.0 for c in classifier.convlstm.cells)


def test_the_three_models_are_importable_from_the_package() -> None:
    import convlstm_vp.models as models

    for name in ("EncoderForecaster", "PatchSequenceClassifier", "DeepConvLSTM", "Forecast"):
        assert getattr(convlstm_vp, name) is getattr(models, name)
        assert name in convlstm_vp.__all__ and name in models.__all__
    assert all(hasattr(convlstm_vp, n) for n in convlstm_vp.__all__)
    assert all(hasattr(models, n) for n in models.__all__)
