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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from torch import Tensor, nn

from .. import openmp
from ..nn import set_implementation
from ..nn.controls import regularization_loss
from ..nn.functional import NonFiniteInputError
from .checkpoint import (
    Checkpointer,
    atomic_write_bytes,
    capture_rng_state,
    json_bytes,
    remove_stale_temporaries,
    restore_rng_state,
    run_folder_lock,
    seed_everything,
    weights_digest,
)
from .config import config_error
from .distributed import (
    DistInfo,
    any_rank,
    barrier,
    cleanup_distributed,
    gather_objects,
    init_distributed,
    rank_seed,
    unwrap,
    wrap_model,
)
from .precision import resolve_device, resolve_precision, training_precision
from .state import NonFiniteLossError, TrainingState, plain_numbers
from .tb import TBLogger

__all__ = [
    "Task",
    "fit",
    "NonFiniteLossError",
    "build_optimizer",
    "build_scheduler",
    "resolve_device",
    "resolve_precision",
    "training_precision",
]


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

    def __enter__(self) -> _StopFlag:
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


def fit(task: Task, cfg: dict, run_dir: str | Path, resume: bool = False) -> dict:
    """Train ``task`` as configured by ``cfg`` (``cfg["train"]`` holds the loop's settings).

    Writes under ``run_dir``: TensorBoard event files, ``config.yaml``,
    ``checkpoints/last.pt`` and ``checkpoints/best.pt`` (the best validation score), and
    ``metrics.json``: the task's ``test`` of ``best.pt`` (the final weights when no evaluation
    ran), ``evaluated_on`` naming the test set, the checkpoint and its step, and ``validation``
    holding the validation metrics that chose it. ``train.patience`` > 0 ends training after that
    many evaluations without a better validation score. Returns the metrics.

    ``resume=True`` continues from ``checkpoints/last.pt``: model, optimizer, scheduler, scaler,
    RNG states and the :class:`~convlstm_vp.train.state.TrainingState` (step, best score, its step
    and metrics, early-stopping count, skipped steps) are restored, so the run ends with the
    weights an uninterrupted run would have. SIGINT/SIGTERM save ``last.pt`` and raise
    ``SystemExit(128 + signum)``.
    """
    tc, run_dir = cfg["train"], Path(run_dir)
    dist = init_distributed(tc["device"])
    run: _Run | None = None
    train_step: _TrainStep | None = None
    prev_threads = torch.get_num_threads()
    with contextlib.ExitStack() as folder_lock, _StopFlag() as stop, _deterministic(tc["deterministic"]):
        try:
            # set up: the model (checked on batch 0), optimizer, schedule, checkpoints, resume, logs
            run = _set_up(task, cfg, run_dir, dist, folder_lock, resume)
            state, saver, logger = run.state, run.checkpointer, run.logger
            progress = _Progress(cfg, logger, run.optimizer, dist, state.step)
            saver.stop_on_signal(stop.signum, logger.flush)  # a signal during set-up
            train_step = _TrainStep(task, run, tc, dist)
            run.model.train()
            for step in range(state.step, tc["steps"] if not state.stopped_early else state.step):
                loss, logs, reg = train_step(step)
                state.step = done = step + 1
                progress.log_step(done, loss, logs, reg)
                quick = tc["quick_eval_every"]
                if quick and done % quick == 0 and dist.rank == 0 and hasattr(task, "quick_evaluate"):
                    logger.scalars(task.quick_evaluate(unwrap(run.model)), done, prefix="val_quick/")
                # evaluate: the validation score, best.pt, early stopping
                if done % tc["eval_every"] == 0 or done == tc["steps"]:
                    _validate(task, run, progress, dist)
                # checkpoint: last.pt every train.checkpoint_every steps, at the end and on a signal
                if done % tc["checkpoint_every"] == 0 or done == tc["steps"] or state.stopped_early:
                    saver.save(saver.last_path)
                if state.stopped_early:
                    progress.write(
                        f"step {done}: no better validation {task.best_metric} in {tc['patience']} "
                        f"evaluations (best at step {state.best_step}); stopping early (train.patience)"
                    )
                    break
                saver.stop_on_signal(stop.signum, logger.flush)
            # finish: test best.pt, write metrics.json
            train_seconds = progress.close()
            return _finish(task, run, dist, run_dir, train_seconds)
        finally:
            if run is not None:
                run.logger.close()
            torch.set_num_threads(prev_threads)
            if dist.world_size > 1:
                # The DistributedDataParallel wrapper sits in a reference cycle, so only the cyclic
                # garbage collector frees it, and with it its reducer's reference to the process
                # group. Free it now, while the interpreter is fully alive, so that the group is
                # torn down here rather than by a collection during interpreter shutdown (where a
                # rank can abort at exit: "terminate called without an active exception").
                run = train_step = None
                gc.collect()
            cleanup_distributed(dist)


@dataclass
class _Run:
    """What :func:`_set_up` builds for one run."""

    model: nn.Module  # wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast: Any  # the forward pass's autocast context (train.precision)
    use_cuda_amp: bool  # fp16: a gradient scaler
    precision: str  # train.precision as it runs (auto resolved)
    device: torch.device
    state: TrainingState
    checkpointer: Checkpointer
    logger: TBLogger


def _set_up(
    task: Task, cfg: dict, run_dir: Path, dist: DistInfo, folder_lock: contextlib.ExitStack, resume: bool
) -> _Run:
    """Seed, build and check the model, lock the run folder, build the optimizer, schedule and
    checkpointer, resume from ``last.pt`` if asked, wrap for DDP, write ``config.yaml``."""
    tc = cfg["train"]
    if tc["num_threads"]:
        torch.set_num_threads(tc["num_threads"])
    seed = int(cfg.get("seed", 0))
    seed_everything(seed)
    device = resolve_device(tc["device"], dist.local_rank, "config key 'train.device'")
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
    folder_lock.enter_context(run_folder_lock(run_dir, dist.rank == 0))
    if dist.rank:  # same initial weights everywhere, then one dropout/sampling stream per rank
        seed_everything(rank_seed(seed, dist.rank))
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc)
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda_amp)
    state = TrainingState()
    checkpointer = Checkpointer(run_dir, model, optimizer, scheduler, scaler, state, cfg, task, dist)
    if resume:
        checkpointer.resume(seed)
    wrapped = wrap_model(model, device, dist)
    if dist.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(checkpointer.last_path.parent)  # left by a run killed while saving
        atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
    logger = TBLogger(run_dir, enabled=dist.rank == 0, purge_step=state.step if resume else None)
    return _Run(
        wrapped, optimizer, scheduler, scaler, autocast, use_cuda_amp, precision, device, state, checkpointer, logger
    )


class _TrainStep:
    """One optimizer step: the task's loss under autocast plus the regularization loss, the
    NaN/Inf policy (``train.nan_policy``), backward, gradient clipping, the optimizer and
    schedule steps."""

    def __init__(self, task: Task, run: _Run, tc: dict, dist: DistInfo) -> None:
        self.task, self.run, self.tc, self.dist = task, run, tc, dist
        self.has_reg = _has_regularizers(unwrap(run.model))
        # One process without a gradient scaler checks the loss after the backward pass, with
        # the gradient norm (one host sync per step instead of two; on a GPU each sync drains
        # the queue of launched kernels). DDP ranks must agree before the all-reduce in
        # backward, and fp16's scaler must not unscale a step it then skips: they check first.
        self.deferred_check = dist.world_size == 1 and not run.use_cuda_amp
        # On a GPU the next batch is built before this step's read-back (train_batch is a
        # function of (seed, step, rank), so building it early changes no number); on a CPU
        # there is nothing to overlap.
        self.prefetch, self.prefetched = _prefetches(run.device), None

    def __call__(self, step: int) -> tuple[Tensor | None, dict, Tensor | None]:
        """Run training step ``step``; returns (the task's loss, its logs, the regularization loss)."""
        run, dist = self.run, self.dist
        batch = (
            self.prefetched if self.prefetched is not None else self.task.train_batch(step, dist.rank, dist.world_size)
        )
        self.prefetched = None
        run.optimizer.zero_grad(set_to_none=True)
        problem, loss, logs, reg, total = None, None, {}, None, None
        try:
            with run.autocast:
                loss, logs = self.task.training_step(run.model, batch, step)
            reg = regularization_loss(unwrap(run.model)) if self.has_reg else None
            total = loss.float() + (reg if reg is not None else 0.0)
            if not self.deferred_check and not bool(torch.isfinite(total)):
                problem = f"loss={float(total.detach())}"
        except NonFiniteInputError as exc:  # NaN/Inf reached a layer that checks its input
            problem = str(exc)
        # every rank skips (or stops) together, or DDP's gradient all-reduce would hang
        if any_rank(problem is not None, dist) and problem is None:
            problem = "non-finite loss on another rank"
        if problem is None:
            assert total is not None
            problem = self._backward(step, total)
        if problem is not None:
            self._skip_or_stop(step, problem)
        else:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        run.scheduler.step()
        return loss, logs, reg

    def _backward(self, step: int, total: Tensor) -> str | None:
        """Backward and clipping; what is non-finite (loss or gradient norm), or None."""
        run, tc, dist = self.run, self.tc, self.dist
        run.scaler.scale(total).backward()
        run.scaler.unscale_(run.optimizer)
        params = [p for p in run.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, tc["grad_clip"] if tc["grad_clip"] > 0 else float("inf"))
        if self.prefetch and step + 1 < tc["steps"]:
            # the host builds the next batch while the GPU runs this step's backward
            self.prefetched = self.task.train_batch(step + 1, dist.rank, dist.world_size)
        if self.deferred_check:  # loss and norm read back together: one host sync per step
            loss_ok, norm_ok = torch.stack([torch.isfinite(total.detach()), torch.isfinite(norm)]).tolist()
            if not loss_ok:
                return f"loss={float(total.detach())}"
            if not norm_ok:
                return f"gradient norm={float(norm)}"
        elif not (bool(torch.isfinite(norm)) or run.use_cuda_amp):  # same on all ranks (all-reduced)
            return f"gradient norm={float(norm)}"
        return None

    def _skip_or_stop(self, step: int, problem: str) -> None:
        if self.tc["nan_policy"] == "stop":
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {step} ({problem}); stopping. "
                f"The last good checkpoint is kept at {self.run.checkpointer.last_path}; lower train.lr or set "
                f"train.nan_policy=skip"
            )
        self.run.state.skipped += 1
        self.run.optimizer.zero_grad(set_to_none=True)


class _Progress:
    """The tqdm bar (``train.progress``, rank 0) and the training scalars in TensorBoard."""

    def __init__(
        self, cfg: dict, logger: TBLogger, optimizer: torch.optim.Optimizer, dist: DistInfo, start_step: int
    ) -> None:
        self.tc, self.logger, self.optimizer, self.dist = cfg["train"], logger, optimizer, dist
        self.start_step, self.bar = start_step, None
        if self.tc["progress"] and dist.rank == 0:
            from tqdm import tqdm

            # stdout: stderr carries the bar and the one-line errors
            print(f"threads: {openmp.describe(torch.get_num_threads())}", flush=True)

            self.bar = tqdm(
                total=self.tc["steps"], initial=start_step, desc=cfg.get("name", "train"), dynamic_ncols=True
            )
        self.t0 = time.time()

    def log_step(self, done: int, loss: Tensor | None, logs: dict, reg: Tensor | None) -> None:
        tc, logger = self.tc, self.logger
        loss_value = float(loss.detach()) if loss is not None else float("nan")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss_value:.4f}")
        if done % tc["log_every"] == 0 or done == tc["steps"]:
            logger.scalar("train/loss", loss_value, done)
            logger.scalar("train/lr", self.optimizer.param_groups[0]["lr"], done)
            if reg is not None:
                logger.scalar("train/regularization", float(reg), done)
            logger.scalars(logs, done, prefix="train/")
            elapsed = max(time.time() - self.t0, 1e-9)
            rate = (done - self.start_step) * tc["batch_size"] * self.dist.world_size / elapsed
            logger.scalar("train/sequences_per_second", rate, done)
            # seconds since this process started training (compilation, evaluations and
            # checkpoints included): plot a validation metric against time with it
            logger.scalar("train/elapsed_seconds", time.time() - self.t0, done)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)

    def close(self) -> float:
        """Close the bar; the seconds the steps and their evaluations took."""
        if self.bar is not None:
            self.bar.close()
        return round(time.time() - self.t0, 1)


def _validate(task: Task, run: _Run, progress: _Progress, dist: DistInfo) -> None:
    """Score the validation split at the state's step (rank 0 alone), save ``best.pt`` when it
    is the best so far, and decide early stopping (every rank together)."""
    state, tc = run.state, run.checkpointer.cfg["train"]
    if dist.rank == 0:
        metrics = task.evaluate(unwrap(run.model), run.logger, state.step)
        run.logger.scalars(metrics, state.step, prefix="val/")
        if state.record_evaluation(metrics, task):
            run.checkpointer.save(run.checkpointer.best_path, all_ranks=False)
        scores = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        progress.write(f"step {state.step} (validation): {scores}")
    state.stopped_early = any_rank(dist.rank == 0 and state.patience_exhausted(tc["patience"], tc["steps"]), dist)
    barrier(dist)
    run.model.train()


def _finish(task: Task, run: _Run, dist: DistInfo, run_dir: Path, train_seconds: float) -> dict:
    """Test ``best.pt`` (rank 0), write ``metrics.json``, and check that every rank ended with
    the same weights. Returns the metrics ({} on ranks other than 0)."""
    state, logger, model = run.state, run.logger, unwrap(run.model)
    result: dict = {}
    if dist.rank == 0 and state.best_metrics is None:  # no evaluation ran (resumed from a final checkpoint)
        state.best_metrics = plain_numbers(task.evaluate(model, logger, state.step))
    # the final weights' digest, before the test loads best.pt's weights into the model
    digests = gather_objects(weights_digest(model.state_dict()), dist)
    if dist.rank == 0:
        result = _test(task, run, run_dir)
    logger.flush()
    if dist.rank == 0:
        result["step"] = state.step
        result["stopped_early"] = state.stopped_early
        result["skipped_steps"] = state.skipped
        result["train_seconds"] = train_seconds  # the steps and their evaluations, not the final one
        result["world_size"] = dist.world_size
        result["precision"] = run.precision  # train.precision as it ran (auto resolved)
        result["weights_sha256"] = digests  # one per rank; DDP keeps them equal
        atomic_write_bytes(run_dir / "metrics.json", json_bytes(result))
    if len(set(digests)) > 1:
        raise RuntimeError(f"the ranks ended with different weights (SHA-256 per rank: {digests})")
    # all ranks leave together, with nothing left to do before tearing the process group
    # down (rank 0's event files are closed first): a rank tearing gloo down while
    # another is still busy can abort at exit
    logger.close()
    barrier(dist)
    return result


def _test(task: Task, run: _Run, run_dir: Path) -> dict:
    """The task's test of ``best.pt``'s weights (the final weights without one), with what was
    tested and the validation evaluation that chose it."""
    state, logger, model = run.state, run.logger, unwrap(run.model)
    t1 = time.time()
    best_at = run.checkpointer.load_best_weights()
    tested_step = state.step if best_at is None else best_at
    result = task.test(model, logger, tested_step, run_dir)
    logger.scalars({k: v for k, v in result.items() if isinstance(v, (int, float))}, state.step, prefix="test/")
    result["evaluated_on"] = {
        **result.get("evaluated_on", {}),
        "checkpoint": "best.pt" if best_at is not None else "final weights",
        "checkpoint_step": tested_step,
    }
    result["validation"] = {
        **task.val_description(),
        "best_metric": task.best_metric,
        "best_step": state.best_step,
        "metrics": state.best_metrics,
    }
    result["final_evaluation_seconds"] = round(time.time() - t1, 1)
    return result


def _prefetches(device: torch.device) -> bool:
    """Whether :func:`fit` builds each next batch while the device runs the step (CUDA)."""
    return device.type == "cuda"


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
