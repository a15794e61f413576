"""Multi-process training on torch.distributed: set-up from ``torchrun``'s environment.

``torchrun --nproc_per_node N scripts/train_moving_mnist.py ...`` sets RANK, WORLD_SIZE,
LOCAL_RANK and MASTER_ADDR/PORT; :func:`init_distributed` then joins the process group (gloo on
CPU, nccl on CUDA). Only rank 0 writes logs and checkpoints; every rank draws its own batches
(:func:`dataset_batch_indices` gives dataset tasks the batches of a DistributedSampler shard).

What :func:`convlstm_vp.train.fit` adds on top: every rank starts from the same weights and has
its own RNG stream (dropout, scheduled sampling); ``last.pt`` holds the RNG states of all ranks,
so a resumed multi-process run is bit-exact too; the ranks agree (all-reduce) on skipping a
non-finite step and on stopping after a signal; at the end each rank hashes its weights and
``metrics.json`` lists the hashes (``weights_sha256``), which must be equal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched with WORLD_SIZE > 1; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if tdist.is_initialized():
        return DistInfo(rank, world, local, False)
    if use_cuda:
        torch.cuda.set_device(local)
    tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, True)


def cleanup_distributed(info: DistInfo) -> None:
    if info.initialized_here and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.world_size > 1 and tdist.is_initialized():
        tdist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard_indices(dataset_len: int, epoch: int, seed: int, rank: int, world: int, shuffle: bool = True) -> list[int]:
    """The indices of ``rank``'s shard for ``epoch``, as ``torch.utils.data.DistributedSampler`` gives."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(dataset_len), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)  # type: ignore[arg-type]
    sampler.set_epoch(epoch)
    return list(iter(sampler))


def dataset_batch_indices(dataset_len: int, batch_size: int, step: int, seed: int, rank: int, world: int) -> list[int]:
    """Indices of batch ``step`` for ``rank``: epochs of a shuffled DistributedSampler shard.

    A pure function of its arguments, so a resumed run draws exactly the batches it would have.
    """
    per_rank = -(-dataset_len // world)
    per_epoch = max(per_rank // batch_size, 1)
    epoch, k = divmod(step, per_epoch)
    idx = shard_indices(dataset_len, epoch, seed, rank, world)
    start = (k * batch_size) % max(len(idx), 1)
    out = idx[start : start + batch_size]
    if len(out) < batch_size:  # shard smaller than a batch: wrap around
        out = (idx * (batch_size // max(len(idx), 1) + 2))[start : start + batch_size]
    return out
