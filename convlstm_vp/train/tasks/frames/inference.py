"""Using a trained frame-prediction model: build it from a config, load it from a checkpoint
(``load_trained``, older checkpoints upgraded), predict in batches and score it on sequences.
``evaluate.py``, ``predict.py``, the patch-completion task and the frame task use these."""

from __future__ import annotations

import torch
from torch import Tensor

from ....models.encoder_forecaster import EncoderForecaster
from ...checkpoint import CheckpointError, load_checkpoint
from ...config import merge
from ...metrics import FrameMetrics
from ...precision import eval_autocast, resolve_precision
from ...tb import TBLogger, prediction_strip, side_by_side, upscale
from .defaults import DEFAULTS


def build_model(cfg: dict) -> EncoderForecaster:
    m = {**DEFAULTS["model"], **cfg["model"]}  # other tasks (patch completion) reuse this with fewer keys
    channels = cfg.get("data", {}).get("channels", 1)
    return EncoderForecaster(
        channels,
        list(m["hidden_channels"]),
        m["kernel_size"],
        patch_size=m["patch_size"],
        input_frames=m["input_frames"],
        output_frames=m["output_frames"],
        head=m["head"],
        filter_size=m["filter_size"],
        output_activation=m["output_activation"],
        peephole=m["peephole"],
    )


@torch.no_grad()
def predict(
    model: EncoderForecaster,
    frames: Tensor,
    batch_size: int = 50,
    precision: str = "fp32",
    return_offsets: bool = False,
    *,
    filter_temperature: float = 1.0,
    render: str = "filter",
) -> Tensor | tuple[Tensor, Tensor]:
    """Predict ``(N, output_frames, C, H, W)`` from ``(N, input_frames, C, H, W)`` in batches, in
    eval mode (the model's mode is restored after); ``filter_temperature`` and ``render`` as in
    :meth:`EncoderForecaster.predict`. With ``return_offsets`` (dynamic filter) also the kernels'
    mean source offsets ``(N, output_frames, 2, H/p, W/p)`` (``EncoderForecaster.forecast``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    precision = resolve_precision(device, precision)
    ctx = eval_autocast(device, precision)
    outs, offsets = [], []
    try:
        with ctx:
            for i in range(0, frames.shape[0], batch_size):
                out = model.forecast(
                    frames[i : i + batch_size].to(device),
                    offsets=return_offsets,
                    filter_temperature=filter_temperature,
                    render=render,
                )
                if return_offsets:
                    offsets.append(out.offsets.float().cpu())
                outs.append(out.frames.float().clamp(0, 1).cpu())
    finally:
        model.train(was_training)
    return (torch.cat(outs), torch.cat(offsets)) if return_offsets else torch.cat(outs)


def evaluate_frames(
    model: EncoderForecaster,
    sequences: Tensor,
    cfg: dict,
    logger: TBLogger | None = None,
    step: int = 0,
    return_predictions: bool = False,
) -> dict:
    """MSE/MAE/SSIM/PSNR of ``model`` on ``sequences`` ``(N, T, C, H, W)``; logs examples if asked;
    ``return_predictions`` adds the predicted frames (key "predictions")."""
    t_in = cfg["model"]["input_frames"]
    x, y = sequences[:, :t_in], sequences[:, t_in:]
    pred = predict(
        model,
        x,
        cfg["data"]["eval_batch_size"],
        cfg["train"]["precision"],
        filter_temperature=cfg["model"]["eval_filter_temperature"],
    )
    fm = FrameMetrics()
    fm.update(pred, y)
    result = fm.compute()
    if logger is not None:
        for i in range(min(cfg["log"]["examples"], x.shape[0])):
            logger.image(f"predictions/sequence_{i}", prediction_strip(x[i], y[i], pred[i]), step)
            video = side_by_side(torch.cat([x[i], y[i]]), torch.cat([x[i], pred[i]]))
            logger.gif(f"videos/sequence_{i}_truth_vs_prediction", upscale(video, 2), step, fps=cfg["log"]["fps"])
        for h, v in enumerate(result["per_frame"]["mse"]):
            logger.scalar(f"val_per_frame/mse_t{h + 1:02d}", v, step)
    if return_predictions:
        result["predictions"] = pred
    return result


# config keys of removed options that a checkpoint's config may still hold, with the values that
# train the same model as this code (None: any value); other values cannot be rebuilt
_REMOVED_KEYS = {
    ("ssim_weight",): None,  # a loss term: any value (training only)
    ("model", "memory_format"): None,  # strides only: any value
    ("model", "motion_input"): False,
}


def _upgrade_config(config: dict, checkpoint: str) -> dict:
    """A checkpoint's config without the keys of removed options (``_REMOVED_KEYS``); a model that
    needed one of them, or a removed head, is a ValueError naming it. A model trained with the
    removed ``head: warp`` has the parameters of a dynamic-filter one: it loads as that, with a
    warning to render it with ``render="warp"`` as it was trained."""
    import copy
    import warnings

    config = copy.deepcopy(config)
    data = config.get("data")
    if isinstance(data, dict) and "eval_sequences" in data:  # the validation set's former key
        data.setdefault("val_sequences", data.pop("eval_sequences"))
    for path, neutral in _REMOVED_KEYS.items():
        *parents, key = path
        section = config
        for part in parents:
            section = section.get(part, {}) if isinstance(section, dict) else {}
        if isinstance(section, dict) and key in section:
            value = section.pop(key)
            if neutral is not None and value != neutral:
                raise ValueError(
                    f"it was trained with config key {'.'.join(path)!r} = {value!r}, an option this version no longer has"
                )
    model = config.get("model", {})
    if model.get("head") == "composite":
        raise ValueError("it was trained with model.head 'composite', a head this version no longer has")
    if model.get("head") == "warp":
        model["head"] = "dynamic_filter"
        warnings.warn(
            f"{checkpoint} was trained with the removed head 'warp': loaded as the dynamic filter whose "
            f"kernels it shares; render with render='warp' (--render warp) as it was trained",
            stacklevel=3,
        )
    return config


def load_trained(checkpoint: str, map_location: str = "cpu") -> tuple[EncoderForecaster, dict]:
    """Rebuild the model stored in a training checkpoint (safe loading) and return it with its
    config (predict with ``filter_temperature=cfg["model"]["eval_filter_temperature"]``).

    Older checkpoints load too: a ``sampling_updates`` buffer (a scheduled-sampling counter the
    training step replaces) and config keys of removed options that do not change the model are
    dropped (``_upgrade_config``; docs/results/removed-options.md)."""
    ck = load_checkpoint(checkpoint, map_location)
    try:
        cfg = merge(DEFAULTS, _upgrade_config(ck["config"], checkpoint))
        model = build_model(cfg)
        model.load_state_dict({k: v for k, v in ck["model"].items() if k != "sampling_updates"})
    except (ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{checkpoint} is not a frame-prediction encoder-forecaster checkpoint: {exc}") from exc
    model.eval()
    return model, cfg
