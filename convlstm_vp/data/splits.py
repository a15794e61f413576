"""Seeded, stratified validation splits carved out of a training set."""

from __future__ import annotations

import numpy as np

__all__ = ["VAL_SPLIT_SEED", "check_val_fraction", "stratified_split"]

#: Seed of every validation split the training tasks carve: fixed (not the run's seed), so runs
#: with different seeds train and select on the same data and their scores compare.
VAL_SPLIT_SEED = 0


def check_val_fraction(value: object, key: str = "data.val_fraction") -> float:
    """``value`` as a float in (0, 0.5], else a ValueError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 0.5:
        raise ValueError(f"config key {key!r}: expected a fraction of the training data in (0, 0.5], got {value!r}")
    return float(value)


def stratified_split(labels: np.ndarray, fraction: float, seed: int = VAL_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Split item indices into ``(train, val)``, holding out ``fraction`` of every class.

    Each class with ``n`` items gives ``round(fraction * n)`` of them, at least 1 and at most
    ``n - 1``, to ``val`` (a class with a single item stays in ``train``), drawn by a generator
    seeded with ``seed``; both index arrays are sorted, so the items keep their order.

    Args:
        labels: ``(N,)`` integer class labels.
        fraction: share of each class held out, in (0, 1).
        seed: seed of the draw.

    Raises:
        ValueError: ``labels`` is not 1-D, or no class has two items to split.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"stratified_split: labels must be (N,), got shape {labels.shape}")
    if not 0 < fraction < 1:
        raise ValueError(f"stratified_split: fraction must lie in (0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    val = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if members.size < 2:
            continue
        k = min(max(int(round(fraction * members.size)), 1), members.size - 1)
        val.append(rng.choice(members, size=k, replace=False))
    if not val:
        raise ValueError(
            f"stratified_split: no class has two items to split between training and validation ({labels.size} items)"
        )
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(labels.size), val_idx)
    return train_idx, val_idx
