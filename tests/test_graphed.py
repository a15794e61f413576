"""implementation="graphed", the GPU path: a module's whole forward through torch.compile (CUDA
graphs on CUDA). On the CPU the compiled code (without CUDA graphs) is checked against the plain
equations, forward and backward; with a CUDA device the CUDA-graph replays are checked too."""

from __future__ import annotations

import copy
import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from convlstm_vp import ConvLSTM, EncoderForecaster
from convlstm_vp.nn import IMPLEMENTATIONS, set_implementation
from convlstm_vp.nn.fast import AUTO_ON_CPU, cpu_kind, resolve_implementation

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()


def _forecaster(device: str = "cpu") -> EncoderForecaster:
    torch.manual_seed(0)
    return EncoderForecaster(
        1, [6], 3, patch_size=4, input_frames=3, output_frames=3, head="dynamic_filter", filter_size=3
    ).to(device)


def _forecast_and_grads(model: EncoderForecaster, impl: str, x, y, teacher_forcing):
    set_implementation(model, impl)
    model.zero_grad(set_to_none=True)
    out = model.forecast(x, y, teacher_forcing=teacher_forcing, encoder_predictions=True, offsets=True)
    (out.frames.square().sum() + out.encoder_frames.sum() + out.offsets.square().sum()).backward()
    return [t.detach().clone() for t in out], {n: p.grad.clone() for n, p in model.named_parameters()}


def test_auto_is_plain_on_cuda_until_graphed_is_measured_there():
    # "graphed" has not been measured on a GPU: auto takes the last path measured fastest there
    assert resolve_implementation("auto", "cuda") == IMPLEMENTATIONS["plain"]
    assert resolve_implementation("graphed", "cuda") == IMPLEMENTATIONS["graphed"]  # one word away
    assert resolve_implementation("auto", "cpu") == AUTO_ON_CPU[cpu_kind()]  # "fused", per CPU kind
    assert resolve_implementation("auto", "mps") == IMPLEMENTATIONS["plain"]
    graphed = IMPLEMENTATIONS["graphed"]
    assert graphed.whole_forward and graphed.cuda_graphs and not graphed.compile


def test_graphed_forecaster_equals_plain_forward_and_backward():
    teacher_forcing = 1.0  # every coin feeds the true frame: the same frames on both paths
    model = _forecaster()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 1, 16, 16, generator=g), torch.rand(2, 3, 1, 16, 16, generator=g)
    ref_out, ref_grads = _forecast_and_grads(model, "plain", x, y, teacher_forcing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed compile warns and runs eagerly: that would pass unnoticed
        out, grads = _forecast_and_grads(model, "graphed", x, y, teacher_forcing)
    assert model._compiled_forward is not None and model._compiled_forward.step.compiled is not None
    assert model._compiled_forward.step.failed is None
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    # the probability is passed as a tensor: a new value every training step compiles nothing new
    compiles = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    model.zero_grad(set_to_none=True)
    model.forecast(x, y, teacher_forcing=0.5, encoder_predictions=True, offsets=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiles


def test_graphed_layer_equals_plain_and_falls_back_where_it_must():
    torch.manual_seed(0)
    layer = ConvLSTM(2, [4, 5], 3, num_layers=2, return_all_layers=True)
    x = torch.randn(2, 4, 2, 6, 6, requires_grad=True)
    h0 = ([torch.randn(2, 4, 6, 6), torch.randn(2, 5, 6, 6)], [torch.randn(2, 4, 6, 6), torch.randn(2, 5, 6, 6)])

    def run(impl):
        set_implementation(layer, impl)
        layer.zero_grad(set_to_none=True)
        x.grad = None
        outs, (h, c) = layer(x, h0)
        (sum(o.square().sum() for o in outs) + sum(t.sum() for t in h) + sum(t.sum() for t in c)).backward()
        return [o.detach() for o in outs] + [t.detach() for t in (*h, *c)], [x.grad.clone()] + [
            p.grad.clone() for p in layer.parameters()
        ]

    ref, ref_g = run("plain")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, got_g = run("graphed")
    assert layer._compiled_forward is not None and layer._compiled_forward.step.failed is None
    for a, b in zip(got + got_g, ref + ref_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # first derivatives only: create_graph=True gets an error naming the fix, never a wrong number
    outs, _ = layer(x, h0)
    with pytest.raises(RuntimeError, match="first derivatives only.*implementation='fused'"):
        torch.autograd.grad(outs[-1].square().sum(), x, create_graph=True)
    # per-step dropout masks and lengths are eager-only: those calls step as usual
    assert not layer._compiles_whole_forward(x, torch.tensor([4, 3]))
    drop = ConvLSTM(2, 4, 3, recurrent_dropout=0.2, implementation="graphed")
    assert not drop._compiles_whole_forward(x, None)
    # compiled code is never copied or pickled with the model; a copy compiles its own
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone._compiled_forward is None
    set_implementation(layer, "graphed")
    assert layer._compiled_forward is None  # switching implementation drops it


def test_training_with_graphed_on_cpu(tmp_path):
    """The training loop with the GPU path (on the CPU: compiled without CUDA graphs): it trains,
    the compiled code runs (no fallback warning), and metrics.json is scored as evaluate does."""
    from convlstm_vp.train.config import load_config
    from convlstm_vp.train.loop import fit
    from convlstm_vp.train.tasks.frames import DEFAULTS, FramePredictionTask

    cfg = load_config(
        ROOT / "configs" / "tiny-moving-mnist.yaml",
        DEFAULTS,
        [
            "train.num_threads=1",
            "model.hidden_channels=[6]",
            "model.input_frames=2",
            "model.output_frames=2",
            "train.steps=4",
            "train.eval_every=4",
            "train.checkpoint_every=4",
            "train.implementation=graphed",
            "data.final_eval_sequences=8",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = fit(FramePredictionTask(cfg), cfg, tmp_path / "run")
    assert result["step"] == 4 and result["skipped_steps"] == 0
    assert torch.isfinite(torch.tensor(result["mse"]))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["mse"] == result["mse"]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["implementation"] == "graphed"


# ---------------------------------------------------------------- on a CUDA device (scripts/gpu_check.sh)
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run by scripts/gpu_check.sh on a GPU machine)")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graphs_equal_plain_and_keep_outputs(precision):
    model = _forecaster("cuda")
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 3, 1, 16, 16, generator=g).cuda(), torch.rand(4, 3, 1, 16, 16, generator=g).cuda()
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cuda", enabled=False)
    tol = 1e-4 if precision == "fp32" else 3e-2
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = precision != "fp32", precision != "fp32"
    try:
        with ctx:
            ref_out, ref_grads = _forecast_and_grads(model, "plain", x, y, 1.0)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                for _ in range(4):  # compile, warm up, record, replay
                    out, grads = _forecast_and_grads(model, "graphed", x, y, 1.0)
        assert model._compiled_forward.step.failed is None
        for a, b in zip(out, ref_out):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=tol, atol=tol, msg=name)
        # outputs are copies: a prediction kept from one call survives the next (CUDA graphs
        # replay into the same memory)
        model.eval()
        with torch.no_grad(), ctx:
            first = model.predict(x)
            kept = first.clone()
            for _ in range(3):
                model.predict(x.flip(0))
        torch.testing.assert_close(first, kept, rtol=0, atol=0)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False


def test_prefetching_the_next_batch_changes_no_number(tmp_path, monkeypatch):
    """On CUDA fit() builds batch step+1 while the GPU runs step (train_batch depends on the step
    only): forced on here on the CPU, every batch is built once, in order, and the run ends with
    the weights of a run without it."""
    from convlstm_vp.train import loop
    from convlstm_vp.train.checkpoint import load_checkpoint
    from convlstm_vp.train.config import load_config
    from convlstm_vp.train.tasks.frames import DEFAULTS, FramePredictionTask

    cfg = load_config(ROOT / "configs" / "tiny-moving-mnist.yaml", DEFAULTS, ["train.num_threads=1", "train.steps=5"])
    from torch.optim.optimizer import register_optimizer_step_post_hook

    weights, events = {}, {}
    for prefetch in (False, True):
        monkeypatch.setattr(loop, "_prefetches", lambda device, on=prefetch: on)
        task = FramePredictionTask(cfg)
        seen = events[prefetch] = []
        build = task.train_batch
        monkeypatch.setattr(
            task,
            "train_batch",
            lambda step, rank, world, build=build, seen=seen: seen.append(step) or build(step, rank, world),
        )
        hook = register_optimizer_step_post_hook(lambda *a, seen=seen: seen.append("update"))
        try:
            loop.fit(task, cfg, tmp_path / str(prefetch))
        finally:
            hook.remove()
        weights[prefetch] = load_checkpoint(tmp_path / str(prefetch) / "checkpoints" / "last.pt")["model"]
    # batch 0 twice: the model check, then step 0; with prefetching each next batch comes before
    # the update of the step before it
    assert events[False] == [0, 0, "update", 1, "update", 2, "update", 3, "update", 4, "update"]
    assert events[True] == [0, 0, 1, "update", 2, "update", 3, "update", 4, "update", "update"]
    for k, w in weights[False].items():
        torch.testing.assert_close(weights[True][k], w, rtol=0, atol=0, msg=k)


def _job_of(config: Path) -> str:
    name = config.stem
    if name.startswith("deepconvlstm"):
        return "sensors"
    if "patch-completion" in name:
        return "patch_completion"
    if "patch-classifier" in name:
        return "patch_classifier"
    return "frames"


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_builds_its_model(config):
    """Each file in configs/ names only known keys with valid values for its job (the GPU
    configs cannot be run here, so this is where a typo in them shows), and builds its model."""
    import importlib

    from convlstm_vp.train.config import load_config

    module = importlib.import_module(f"convlstm_vp.train.tasks.{_job_of(config)}")
    cfg = load_config(config, module.DEFAULTS)
    assert cfg["name"] == config.stem
    if _job_of(config) == "frames":
        from convlstm_vp.train.tasks.frames import build_model

        model = build_model(cfg)
        assert sum(p.numel() for p in model.parameters()) > 0
        if config.stem.startswith("gpu-"):  # the GPU recipes name the GPU path ("auto" is plain on CUDA)
            assert cfg["train"]["implementation"] == "graphed" and cfg["train"]["device"] == "cuda"
            assert resolve_implementation(cfg["train"]["implementation"], "cuda") == IMPLEMENTATIONS["graphed"]
