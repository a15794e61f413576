"""The one training loop every script uses.

A *task* supplies the model, the batches and two evaluations, one on a validation split carved
from the training data and one on the test split; :func:`fit` does the rest:
optimizer and schedule, mixed precision, gradient clipping, regularization losses, NaN
handling, TensorBoard, a tqdm bar, atomic ``last``/``best`` checkpoints, exact resume, signal
handling and DistributedDataParallel when launched by ``torchrun``.

Splits: every ``train.eval_every`` steps the task's ``evaluate`` scores the *validation* split;
that score picks ``best.pt`` and, with ``train.patience``, stops the run early. The test split is
touched once, at the end, by the task's ``test`` on ``best.pt``: the numbers ``metrics.json``
reports, next to the validation score that chose the checkpoint.

Exact resume: batch ``k`` is a pure function of ``(seed, k, rank)`` (the task builds it from a
generator seeded with those numbers), every schedule follows the step (the task's
``training_step`` gets it), and every other random draw (dropout, scheduled sampling) comes from
the torch/numpy/python RNGs whose states are in the checkpoint. So a run
killed at any moment and resumed from its last checkpoint ends with the same weights as an
uninterrupted run (bit-exact on CPU with the same thread count). Under ``torchrun`` each rank has
its own RNG stream and ``last.pt`` holds all of them.

Fail fast: before training, the model is built and training batch 0 runs through it once (eval
mode, no gradients, RNG and buffers restored), so a config whose model does not fit the data is a
:class:`~convlstm_vp.train.config.ConfigError` naming the key or shape, before anything is
written. A NaN/Inf loss, gradient or input (:class:`~convlstm_vp.nn.NonFiniteInputError`) stops
the run with :class:`NonFiniteLossError` (``train.nan_policy=stop``; ``last.pt`` keeps the last
good state) or skips the step (``skip``).
"""

from __future__ import annotations

import contextlib
import gc
import math
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as tdist
import yaml
from torch import Tensor, nn

from ..nn.controls import regularization_loss
from ..nn import set_implementation
from ..nn.fast import cpu_bf16_native
from ..nn.functional import NonFiniteInputError
from .config import ConfigError, check_resume_config, config_error
from .checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    capture_rng_state,
    json_bytes,
    load_checkpoint,
    remove_stale_temporaries,
    run_folder_lock,
    restore_rng_state,
    save_checkpoint,
    weights_digest,
)
from .distributed import DistInfo, barrier, cleanup_distributed, init_distributed, unwrap
from .tb import TBLogger


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss or gradient and ``nan_policy`` is "stop"."""


class Task(Protocol):
    """What a training script hands to :func:`fit`."""

    best_metric: str  # key of evaluate()'s result used to pick the best checkpoint
    best_mode: str  # "min" or "max"
    # Optional: tie_break = (key, "min" | "max"), the metric that decides between equal best_metric

    def build_model(self) -> nn.Module: ...

    # the training batch of ``step`` on ``rank`` of ``world``: a function of its arguments and the
    # seed only (no global RNG), so that a resumed run sees the same batches and the loop may
    # build a batch before the previous step has finished
    def train_batch(self, step: int, rank: int, world: int) -> Any: ...

    # (loss, logs) of batch ``train_batch(step, ...)`` at training step ``step`` (0-based; it may
    # drive schedules such as scheduled sampling, and after a resume it is the restored step);
    # logs maps names to floats or 0-dim tensors (TBLogger.scalars reads both)
    def training_step(self, model: nn.Module, batch: Any, step: int) -> tuple[Tensor, dict]: ...

    # metrics of ``model`` on the validation split (TensorBoard val/); best_metric picks best.pt
    def evaluate(self, model: nn.Module, logger: TBLogger | None, step: int) -> dict: ...

    # what evaluate() scores: {"split": "validation", "what": <a sentence>, <sizes>}
    def val_description(self) -> dict: ...

    # metrics of ``model`` (the best checkpoint's weights) on the test split, with an
    # "evaluated_on" entry naming that set (split "test"); it may write pictures into run_dir
    def test(self, model: nn.Module, logger: TBLogger | None, step: int, run_dir: Path) -> dict: ...

    # Optional: checkpoint_state() -> dict, plain data stored in every checkpoint as "task_state"
    # (the sensor task: class names and z-score statistics, which classifying new data needs).
    # Optional: quick_evaluate(model) -> dict, a cheap validation score every
    # train.quick_eval_every steps, logged under val_quick/ (a curve with more points than val/);
    # it leaves the model in the mode it found it.


def _has_regularizers(model: nn.Module) -> bool:
    """Whether any layer of ``model`` declares regularizers (checked once, not every step)."""
    return any(getattr(m, "regularizers", None) for m in model.modules())


def build_optimizer(model: nn.Module, tc: dict) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if tc["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=tc["lr"], weight_decay=tc["weight_decay"])
    if tc["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=tc["lr"], weight_decay=tc["weight_decay"])
    if tc["optimizer"] == "rmsprop":
        return torch.optim.RMSprop(params, lr=tc["lr"], alpha=tc["rmsprop_alpha"], weight_decay=tc["weight_decay"])
    return torch.optim.SGD(params, lr=tc["lr"], momentum=0.9, weight_decay=tc["weight_decay"])


def build_scheduler(opt: torch.optim.Optimizer, tc: dict) -> torch.optim.lr_scheduler.LRScheduler:
    steps = tc["steps"]
    warm = max(int(tc["warmup_fraction"] * steps), 0)
    if tc["schedule"] == "onecycle" and steps >= 4:
        # OneCycleLR divides by the length of each phase (pct_start * steps - 1 steps of warm-up,
        # then the rest): keep both at least one step, or it raises ZeroDivisionError mid-run
        # (e.g. 10 steps with warmup_fraction 0.1). Runs under 4 steps use the cosine path below.
        pct = min(max(tc["warmup_fraction"], 2.0 / steps), 1.0 - 2.0 / steps)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc["lr"], total_steps=steps, pct_start=pct)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if tc["schedule"] == "constant":
            return 1.0
        progress = (step - warm) / max(steps - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def resolve_precision(device: torch.device, precision: str) -> str:
    """``train.precision`` as it runs on ``device``: ``auto`` is bf16 where the device computes
    bfloat16 natively (a CUDA GPU that supports it; a CPU with AVX512_BF16 or AMX instructions,
    see :func:`convlstm_vp.nn.fast.cpu_bf16_native`) and fp32 elsewhere; other values as given.
    An explicit bf16 on a CPU that only emulates it warns: it runs, several times slower."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_bf16_native() else "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        warnings.warn(
            "train.precision=bf16 on a CPU without native bfloat16 (no AVX512_BF16/AMX instructions): autocast "
            "emulates it, 2x (AVX-512) to 16x (AVX2) slower than fp32 in the ConvLSTM training steps measured on "
            "such CPUs; use train.precision=auto (fp32 here) or fp32",
            RuntimeWarning,
            stacklevel=2,
        )
    return precision


def training_precision(device: torch.device, precision: str) -> tuple[Any, bool, str]:
    """``train.precision`` on ``device``: the forward pass's autocast context (a no-op for fp32),
    whether fp16 needs a gradient scaler, and the precision that runs (:func:`resolve_precision`);
    fp16 off CUDA is a config error."""
    precision = resolve_precision(device, precision)
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("config key 'train.precision': fp16 needs a CUDA device; use bf16 on CPU")
    if precision == "fp32":
        return nullcontext(), False, precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), precision == "fp16", precision


def resolve_device(choice: str, index: int = 0, what: str = "device") -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``; ValueError naming ``what`` when
    CUDA is asked for and absent."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError(f"{what} is 'cuda' but no CUDA device is available")
        return torch.device("cuda", index)
    return torch.device("cpu")


def _device(tc: dict, dist: DistInfo) -> torch.device:
    return resolve_device(tc["device"], dist.local_rank, "config key 'train.device'")


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps.

    Installed at the start of :func:`fit`, so a signal that arrives while the model is built
    is not lost: the loop then saves ``last.pt`` at the step it has reached and exits with
    ``SystemExit(128 + signum)``. Under ``torchrun`` the ranks agree on the flag (an
    all-reduce per step) so that they all stop after the same step.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _restore_training_state(path: Path, ck: dict, model: nn.Module, optimizer, scheduler, scaler, tc: dict) -> None:
    """Load model/optimizer/scheduler/scaler states from checkpoint ``ck``; errors name ``path``."""
    saved_steps = ck.get("config", {}).get("train", {}).get("steps")
    if tc["schedule"] == "onecycle" and saved_steps is not None and saved_steps != tc["steps"]:
        raise CheckpointError(
            f"--resume: {path} was written by a run with train.steps={saved_steps}, this config has "
            f"train.steps={tc['steps']}; the onecycle schedule cannot change length (use "
            f"train.schedule=cosine or constant to extend a run)"
        )
    try:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if "scaler" in ck:
            scaler.load_state_dict(ck["scaler"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"--resume: {path} does not match the model or optimizer of this config "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
        ) from exc


def fit(task: Task, cfg: dict, run_dir: str | Path, resume: bool = False) -> dict:
    """Train ``task`` as configured by ``cfg`` (``cfg["train"]`` holds the loop's settings).

    Writes under ``run_dir``: TensorBoard event files, ``config.yaml``,
    ``checkpoints/last.pt`` and ``checkpoints/best.pt`` (the best validation score), and
    ``metrics.json``: the task's ``test`` of ``best.pt`` (the final weights when no evaluation
    ran), ``evaluated_on`` naming the test set, the checkpoint and its step, and ``validation``
    holding the validation metrics that chose it. ``train.patience`` > 0 ends training after that
    many evaluations without a better validation score. Returns the metrics.

    ``resume=True`` continues from ``checkpoints/last.pt``: model, optimizer, scheduler, scaler,
    RNG states, step, best score (and its step and metrics), early-stopping count and skipped-step
    count are restored, so the run ends with the weights an uninterrupted run would have. SIGINT/SIGTERM save ``last.pt`` and raise
    ``SystemExit(128 + signum)``.
    """
    tc = cfg["train"]
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    dist = init_distributed(tc["device"])
    is_main = dist.rank == 0
    logger: TBLogger | None = None
    prev_threads = torch.get_num_threads()
    with contextlib.ExitStack() as folder_lock, _StopFlag() as stop, _deterministic(tc["deterministic"]):
        try:
            if tc["num_threads"]:
                torch.set_num_threads(tc["num_threads"])
            seed = int(cfg.get("seed", 0))
            _seed_everything(seed)
            device = _device(tc, dist)
            autocast, use_cuda_amp, precision = training_precision(device, tc["precision"])
            try:
                model = task.build_model().to(device)
            except (ValueError, TypeError) as exc:
                raise config_error(exc, cfg, "building the model", ["model"]) from exc
            # every implementation computes the same numbers: the check runs the plain one, so
            # that "graphed" does not compile a graph for this one eval-mode batch
            set_implementation(model, "plain")
            _check_model_accepts_batches(task, model, cfg, dist)
            set_implementation(model, tc["implementation"])
            # the run folder is locked once the config is known to work (a failed check leaves no
            # folder behind) and before anything in it is read or touched (last.pt, stale
            # temporaries, config.yaml) while another process may be writing there
            folder_lock.enter_context(run_folder_lock(run_dir, is_main))
            if dist.rank:  # same initial weights everywhere, then one dropout/sampling stream per rank
                _seed_everything(_rank_seed(seed, dist.rank))
            optimizer = build_optimizer(model, tc)
            scheduler = build_scheduler(optimizer, tc)
            scaler = torch.amp.GradScaler("cuda", enabled=use_cuda_amp)

            start_step, best_score, skipped = 0, None, 0
            # the best validation evaluation (step, metrics), evaluations since, early stop
            best_step, best_metrics, since_best, stopped_early = None, None, 0, False
            if resume:
                if not last_path.is_file():
                    raise CheckpointError(f"--resume: no checkpoint to resume from at {last_path}")
                ck = load_checkpoint(last_path)
                check_resume_config(ck["config"], cfg, last_path)
                _restore_training_state(last_path, ck, model, optimizer, scheduler, scaler, tc)
                start_step, best_score, skipped = int(ck["step"]), ck.get("best_score"), int(ck.get("skipped", 0))
                best_step, best_metrics = ck.get("best_step"), ck.get("best_metrics")
                since_best, stopped_early = int(ck.get("since_best", 0)), bool(ck.get("stopped_early", False))
                _restore_rank_rng(ck, dist, seed, last_path)
                del ck
            if dist.world_size > 1:
                from torch.nn.parallel import DistributedDataParallel as DDP

                model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

            if is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(ckpt_dir)  # left by a run killed while saving
                atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
            logger = TBLogger(run_dir, enabled=is_main, purge_step=start_step if resume else None)

            def checkpoint(path: Path, step: int, all_ranks: bool = True) -> None:
                """Rank 0 writes ``path``; with ``all_ranks`` (every rank calls) it holds every rank's RNG.

                Weights that became NaN/Inf (a finite loss and gradient can still step them there,
                e.g. with a huge learning rate) stop the run before anything is written, so no
                checkpoint is ever saved as good with non-finite weights (DDP ranks agree: the
                weights are the same on every rank)."""
                bad = [n for n, t in unwrap(model).state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
                if bad:
                    raise NonFiniteLossError(
                        f"the weights became NaN/Inf by step {step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                        f"{path.name} was not written and the last good checkpoint is kept at {last_path}; lower train.lr"
                    )
                rng_ranks = _gather_rng_states(dist) if all_ranks else None
                if not is_main:
                    return
                payload = {
                    "model": unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "step": step,
                    "best_score": best_score,
                    "best_step": best_step,
                    "best_metrics": best_metrics,
                    "since_best": since_best,
                    "stopped_early": stopped_early,
                    "skipped": skipped,
                    "config": cfg,
                    "world_size": dist.world_size,
                }
                if hasattr(task, "checkpoint_state"):  # what applying the model later needs (classes, statistics)
                    payload["task_state"] = task.checkpoint_state()
                if rng_ranks is not None:
                    payload["rng"], payload["rng_ranks"] = rng_ranks[0], rng_ranks
                save_checkpoint(path, payload)

            def stop_here(step: int) -> None:
                """Save ``last.pt`` at ``step`` and exit if a rank received SIGINT/SIGTERM."""
                signum = _agree_on_signal(stop.signum, dist)
                if signum is None:
                    return
                checkpoint(last_path, step)
                assert logger is not None
                logger.flush()
                if is_main:
                    name = signal.Signals(signum).name
                    print(
                        f"{name}: saved checkpoint at step {step} to {last_path}; continue with --resume",
                        file=sys.stderr,
                        flush=True,
                    )
                raise SystemExit(128 + signum)

            def better(metrics: dict) -> bool:
                """Whether ``metrics`` beat the best evaluation so far: a better ``best_metric``, or
                an equal one and a better ``tie_break`` (a task's optional (key, mode): on a small
                validation set accuracy and F1 saturate early, its loss still ranks the models)."""
                if best_score is None:
                    return True
                score = metrics[task.best_metric]
                if score == best_score and getattr(task, "tie_break", None) and best_metrics:
                    key, mode = task.tie_break  # type: ignore[attr-defined]
                    if key in metrics and key in best_metrics:
                        return metrics[key] < best_metrics[key] if mode == "min" else metrics[key] > best_metrics[key]
                return score < best_score if task.best_mode == "min" else score > best_score

            steps = tc["steps"]
            last_step = start_step  # the step training ends at (earlier than steps when stopped early)
            has_reg = _has_regularizers(unwrap(model))
            bar = None
            if tc["progress"] and is_main:
                from tqdm import tqdm

                bar = tqdm(total=steps, initial=start_step, desc=cfg.get("name", "train"), dynamic_ncols=True)
            t0 = time.time()
            stop_here(start_step)  # a signal during set-up
            # One process without a gradient scaler checks the loss after the backward pass, with
            # the gradient norm (one host sync per step instead of two; on a GPU each sync drains
            # the queue of launched kernels). DDP ranks must agree before the all-reduce in
            # backward, and fp16's scaler must not unscale a step it then skips: they check first.
            deferred_check = dist.world_size == 1 and not use_cuda_amp
            # On a GPU the next batch is built before this step's read-back (train_batch is a
            # function of (seed, step, rank), so building it early changes no number); on a CPU
            # there is nothing to overlap.
            prefetch, prefetched = _prefetches(device), None
            model.train()
            for step in range(start_step, steps if not stopped_early else start_step):
                batch = prefetched if prefetched is not None else task.train_batch(step, dist.rank, dist.world_size)
                prefetched = None
                optimizer.zero_grad(set_to_none=True)
                problem, loss, logs, reg, total = None, None, {}, None, None
                try:
                    with autocast:
                        loss, logs = task.training_step(model, batch, step)
                    reg = regularization_loss(unwrap(model)) if has_reg else None
                    total = loss.float() + (reg if reg is not None else 0.0)
                    if not deferred_check and not bool(torch.isfinite(total)):
                        problem = f"loss={float(total.detach())}"
                except NonFiniteInputError as exc:  # NaN/Inf reached a layer that checks its input
                    problem = str(exc)
                # every rank skips (or stops) together, or DDP's gradient all-reduce would hang
                if _any_rank(problem is not None, dist) and problem is None:
                    problem = "non-finite loss on another rank"
                if problem is None:
                    assert total is not None
                    scaler.scale(total).backward()
                    scaler.unscale_(optimizer)
                    params = [p for p in model.parameters() if p.grad is not None]
                    norm = torch.nn.utils.clip_grad_norm_(params, tc["grad_clip"] if tc["grad_clip"] > 0 else float("inf"))
                    if prefetch and step + 1 < steps:
                        # the host builds the next batch while the GPU runs this step's backward
                        prefetched = task.train_batch(step + 1, dist.rank, dist.world_size)
                    if deferred_check:  # loss and norm read back together: one host sync per step
                        loss_ok, norm_ok = torch.stack([torch.isfinite(total.detach()), torch.isfinite(norm)]).tolist()
                        if not loss_ok:
                            problem = f"loss={float(total.detach())}"
                        elif not norm_ok:
                            problem = f"gradient norm={float(norm)}"
                    elif not (bool(torch.isfinite(norm)) or use_cuda_amp):  # same on all ranks (all-reduced)
                        problem = f"gradient norm={float(norm)}"
                if problem is not None:
                    if tc["nan_policy"] == "stop":
                        raise NonFiniteLossError(
                            f"non-finite loss or gradient at step {step} ({problem}); stopping. "
                            f"The last good checkpoint is kept at {last_path}; lower train.lr or set "
                            f"train.nan_policy=skip"
                        )
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                else:
                    scaler.step(optimizer)
                    scaler.update()
                scheduler.step()
                done = step + 1
                loss_value = float(loss.detach()) if loss is not None else float("nan")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                if done % tc["log_every"] == 0 or done == steps:
                    logger.scalar("train/loss", loss_value, done)
                    logger.scalar("train/lr", optimizer.param_groups[0]["lr"], done)
                    if reg is not None:
                        logger.scalar("train/regularization", float(reg), done)
                    logger.scalars(logs, done, prefix="train/")
                    logger.scalar("train/sequences_per_second", (done - start_step) * tc["batch_size"] * dist.world_size / max(time.time() - t0, 1e-9), done)
                    # seconds since this process started training (compilation, evaluations and
                    # checkpoints included): plot a validation metric against time with it
                    logger.scalar("train/elapsed_seconds", time.time() - t0, done)
                quick = tc["quick_eval_every"]
                if quick and done % quick == 0 and is_main and hasattr(task, "quick_evaluate"):
                    logger.scalars(task.quick_evaluate(unwrap(model)), done, prefix="val_quick/")
                if done % tc["eval_every"] == 0 or done == steps:
                    if is_main:
                        metrics = task.evaluate(unwrap(model), logger, done)
                        logger.scalars(metrics, done, prefix="val/")
                        since_best += 1
                        if task.best_metric in metrics and better(metrics):
                            best_score, best_step, since_best = metrics[task.best_metric], done, 0
                            best_metrics = _plain_numbers(metrics)
                            checkpoint(best_path, done, all_ranks=False)
                        if bar is not None:
                            bar.write(f"step {done} (validation): " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
                    # every rank stops together: rank 0 alone evaluates
                    stopped_early = _any_rank(is_main and tc["patience"] > 0 and since_best >= tc["patience"] and done < steps, dist)
                    barrier(dist)
                    model.train()
                last_step = done
                if done % tc["checkpoint_every"] == 0 or done == steps or stopped_early:
                    checkpoint(last_path, done)
                if stopped_early:
                    if bar is not None:
                        bar.write(f"step {done}: no better validation {task.best_metric} in {tc['patience']} evaluations "
                                  f"(best at step {best_step}); stopping early (train.patience)")
                    break
                stop_here(done)
            if bar is not None:
                bar.close()
            train_seconds = round(time.time() - t0, 1)
            result: dict = {}
            if is_main:
                if best_metrics is None:  # no evaluation ran (resumed from an old final checkpoint)
                    best_metrics = _plain_numbers(task.evaluate(unwrap(model), logger, last_step))
            # the final weights' digest, before the test loads best.pt's weights into the model
            digests = _gather_objects(weights_digest(unwrap(model).state_dict()), dist)
            if is_main:
                t1 = time.time()
                best_at = _load_best_weights(unwrap(model), best_path)
                tested_step = last_step if best_at is None else best_at
                result = task.test(unwrap(model), logger, tested_step, run_dir)
                logger.scalars({k: v for k, v in result.items() if isinstance(v, (int, float))}, last_step, prefix="test/")
                result["evaluated_on"] = {
                    **result.get("evaluated_on", {}),
                    "checkpoint": "best.pt" if best_at is not None else "final weights",
                    "checkpoint_step": tested_step,
                }
                result["validation"] = {
                    **task.val_description(), "best_metric": task.best_metric, "best_step": best_step,
                    "metrics": best_metrics,
                }
                result["final_evaluation_seconds"] = round(time.time() - t1, 1)
            logger.flush()
            if is_main:
                result["step"] = last_step
                result["stopped_early"] = stopped_early
                result["skipped_steps"] = skipped
                result["train_seconds"] = train_seconds  # the steps and their evaluations, not the final one
                result["world_size"] = dist.world_size
                result["precision"] = precision  # train.precision as it ran (auto resolved)
                result["weights_sha256"] = digests  # one per rank; DDP keeps them equal
                atomic_write_bytes(run_dir / "metrics.json", json_bytes(result))
            if len(set(digests)) > 1:
                raise RuntimeError(f"the ranks ended with different weights (SHA-256 per rank: {digests})")
            # all ranks leave together, with nothing left to do before tearing the process group
            # down (rank 0's event files are closed first): a rank tearing gloo down while
            # another is still busy can abort at exit
            logger.close()
            barrier(dist)
            return result  # metrics.json's content ({} on ranks other than 0)
        finally:
            if logger is not None:
                logger.close()
            torch.set_num_threads(prev_threads)
            if dist.world_size > 1:
                # The DistributedDataParallel wrapper sits in a reference cycle, so only the cyclic
                # garbage collector frees it, and with it its reducer's reference to the process
                # group. Free it now, while the interpreter is fully alive, so that the group is
                # torn down here rather than by a collection during interpreter shutdown (a rank
                # of the 2-process test aborted at exit: "terminate called without an active
                # exception").
                model = None  # also clears the reference the checkpoint closure holds
                gc.collect()
            cleanup_distributed(dist)


def _plain_numbers(metrics: dict) -> dict:
    """``metrics`` with tensors and numpy scalars as Python numbers (a checkpoint and JSON hold it)."""
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Tensor):
            return v.tolist()
        if hasattr(v, "item") and not isinstance(v, (str, bytes)):
            return v.item()
        return v

    return {k: plain(v) for k, v in metrics.items()}


def _prefetches(device: torch.device) -> bool:
    """Whether :func:`fit` builds each next batch while the device runs the step (CUDA)."""
    return device.type == "cuda"


def _load_best_weights(model: nn.Module, best_path: Path) -> int | None:
    """Load ``best.pt``'s weights into ``model`` (in place, so that code compiled for it, and
    CUDA graphs pointing at its parameters, serve the test too) and put it in eval mode;
    returns best.pt's step, or None (weights untouched) when there is no ``best.pt``."""
    if not best_path.is_file():
        return None
    ck = load_checkpoint(best_path)
    model.load_state_dict(ck["model"])
    model.eval()
    return int(ck["step"])


def _check_model_accepts_batches(task: Task, model: nn.Module, cfg: dict, dist: DistInfo) -> None:
    """Run training batch 0 through the model once (eval mode, no gradients) before training.

    A config whose model does not fit the data (a kernel larger than the input with valid
    padding, frames not divisible by the patch size, a window shorter than the convolutions
    need, NaN in the data) fails here with a :class:`ConfigError`, before anything is written.
    RNG states and buffers are restored, so the run is the same as without the check.
    """
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    rng = capture_rng_state()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            task.training_step(model, task.train_batch(0, dist.rank, dist.world_size), 0)
    except torch.OutOfMemoryError:
        raise
    except (ValueError, TypeError, RuntimeError, IndexError) as exc:
        raise config_error(exc, cfg, "running training batch 0 through the model", ["model", "data"]) from exc
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        restore_rng_state(rng)


def _rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s RNG stream (rank 0 keeps ``seed``)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] % 2**63)


def _gather_objects(obj: Any, dist: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in a single process)."""
    if dist.world_size <= 1 or not tdist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(out, obj)
    return out


def _gather_rng_states(dist: DistInfo) -> list[dict] | None:
    """Every rank's RNG states, gathered on all ranks (None in a single process)."""
    if dist.world_size <= 1:
        return None
    return _gather_objects(capture_rng_state(), dist)


def _restore_rank_rng(ck: dict, dist: DistInfo, seed: int, path: Path) -> None:
    """Restore this rank's RNG states from checkpoint ``ck``.

    A checkpoint written with the same number of processes holds every rank's states, so the
    resumed run is exact. Otherwise rank 0 gets the saved states, the other ranks fresh streams
    (the run goes on correctly but is not bit-identical to an uninterrupted one).
    """
    states = ck.get("rng_ranks")
    if states is not None and len(states) == dist.world_size:
        restore_rng_state(states[dist.rank])
        return
    restore_rng_state(ck["rng"])
    saved_world = int(ck.get("world_size", 1))
    if dist.rank:
        _seed_everything(_rank_seed(seed + int(ck["step"]), dist.rank))
    if saved_world != dist.world_size and dist.rank == 0:
        print(
            f"note: {path} was written by {saved_world} process(es), this run has {dist.world_size}; "
            f"training continues, but not bit-identically to an uninterrupted run",
            file=sys.stderr,
        )


def _any_rank(flag: bool, dist: DistInfo) -> bool:
    """True if ``flag`` is set on any rank (an all-reduce under torchrun)."""
    if dist.world_size <= 1 or not tdist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64, device=_collective_device(dist))
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def _agree_on_signal(signum: int | None, dist: DistInfo) -> int | None:
    """The signal any rank received (the largest number), so that all ranks stop together."""
    if dist.world_size <= 1 or not tdist.is_initialized():
        return signum
    flag = torch.tensor([signum or 0], dtype=torch.int64, device=_collective_device(dist))
    tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
    return int(flag.item()) or None


def _collective_device(dist: DistInfo) -> torch.device:
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


class _deterministic:
    """``train.deterministic``: deterministic cuDNN/cuBLAS kernels while :func:`fit` runs."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> None:
        self._old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        if self.enabled:
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False

    def __exit__(self, *exc: Any) -> None:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = self._old

