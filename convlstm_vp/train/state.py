"""What a training run knows about itself besides its weights: the step, the best validation
evaluation, early stopping and skipped steps. Checkpoints store it (:meth:`TrainingState.state_dict`),
so a resumed run continues with the same best checkpoint, patience count and totals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss or gradient and ``nan_policy`` is "stop"."""


@dataclass
class TrainingState:
    """The training step reached, the best validation evaluation (score, step, metrics), the
    evaluations since it, whether patience ended the run, and the steps skipped as non-finite."""

    step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    best_metrics: dict | None = None
    since_best: int = 0
    stopped_early: bool = False
    skipped: int = 0

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's entries for this state (plain data)."""
        return {
            "step": self.step,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "best_metrics": self.best_metrics,
            "since_best": self.since_best,
            "stopped_early": self.stopped_early,
            "skipped": self.skipped,
        }

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        """Restore from a checkpoint's entries (a checkpoint without some of them: their defaults)."""
        self.step = int(ck["step"])
        self.best_score = ck.get("best_score")
        self.best_step = ck.get("best_step")
        self.best_metrics = ck.get("best_metrics")
        self.since_best = int(ck.get("since_best", 0))
        self.stopped_early = bool(ck.get("stopped_early", False))
        self.skipped = int(ck.get("skipped", 0))

    def better(self, metrics: dict, task: Any) -> bool:
        """Whether ``metrics`` beat the best evaluation so far: a better ``task.best_metric``, or
        an equal one and a better ``task.tie_break`` (an optional (key, mode): on a small
        validation set accuracy and F1 saturate early, its loss still ranks the models)."""
        if self.best_score is None:
            return True
        score = metrics[task.best_metric]
        if score == self.best_score and getattr(task, "tie_break", None) and self.best_metrics:
            key, mode = task.tie_break
            if key in metrics and key in self.best_metrics:
                return metrics[key] < self.best_metrics[key] if mode == "min" else metrics[key] > self.best_metrics[key]
        return score < self.best_score if task.best_mode == "min" else score > self.best_score

    def record_evaluation(self, metrics: dict, task: Any) -> bool:
        """Count a validation evaluation at the current step; True when it is the new best."""
        self.since_best += 1
        if task.best_metric not in metrics or not self.better(metrics, task):
            return False
        self.best_score, self.best_step, self.since_best = metrics[task.best_metric], self.step, 0
        self.best_metrics = plain_numbers(metrics)
        return True

    def patience_exhausted(self, patience: int, steps: int) -> bool:
        """Whether ``patience`` (> 0) evaluations in a row brought no better score before the end."""
        return patience > 0 and self.since_best >= patience and self.step < steps


def plain_numbers(metrics: dict) -> dict:
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
