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
from typing import Any

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
    return (
        model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model
    )


def shard_indices(dataset_len: int, epoch: int, seed: int, rank: int, world: int, shuffle: bool = True) -> list[int]:
    """The indices of ``rank``'s shard for ``epoch``, as ``torch.utils.data.DistributedSampler`` gives."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(
        range(dataset_len), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
    )  # type: ignore[arg-type]
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


def wrap_model(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun (the model itself otherwise)."""
    if info.world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s RNG stream (rank 0 keeps ``seed``)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] % 2**63)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in a single process)."""
    if info.world_size <= 1 or not tdist.is_initialized():
        return [obj]
    out: list[Any] = [None] * info.world_size
    tdist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True if ``flag`` is set on any rank (an all-reduce under torchrun)."""
    if info.world_size <= 1 or not tdist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64, device=collective_device(info))
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def agree_on_signal(signum: int | None, info: DistInfo) -> int | None:
    """The signal any rank received (the largest number), so that all ranks stop together."""
    if info.world_size <= 1 or not tdist.is_initialized():
        return signum
    flag = torch.tensor([signum or 0], dtype=torch.int64, device=collective_device(info))
    tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
    return int(flag.item()) or None


def collective_device(info: DistInfo) -> torch.device:
    """Where the tensors of a collective live: the rank's GPU under nccl, else the CPU."""
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")
