"""Data-parallel training on PyTorch's own engine: torchrun, ``torch.distributed``, DDP.

The CLI reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and passes
it in; the library itself never reads the environment.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.distributed as tdist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a data-parallel job (one process: world_size 1)."""

    world_size: int = 1  # processes in the job
    rank: int = 0  # this process, 0 .. world_size - 1
    local_rank: int = 0  # this process on its machine (picks the GPU)
    backend: str = "none"  # "gloo" (CPU), "nccl" (CUDA) or "none"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict:
        return asdict(self)


def env_requests_distributed(env: Mapping[str, str]) -> bool:
    """True when started by torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(env.get("WORLD_SIZE", "1")) > 1


def init_distributed(env: Mapping[str, str], *, use_cuda: bool, timeout_s: float = 300.0
                     ) -> DistInfo:
    """Join the process group described by torchrun's environment.

    A timeout is always set, so a rank that dies brings the others down with an error
    instead of leaving them waiting forever.
    """
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", "0"))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(world, rank, local_rank, backend)


def shutdown(info: DistInfo) -> None:
    if info.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over all ranks (in place; a no-op for one process)."""
    if info.enabled:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def broadcast_object(obj, info: DistInfo):
    """Rank 0's value of ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        tdist.barrier()


class ShardSampler(Sampler[int]):
    """Every index exactly once over all ranks, no padding: rank r gets r, r + W, r + 2W, ...

    (``DistributedSampler`` pads the last shard with repeats, which would count some
    validation images twice.)
    """

    def __init__(self, n: int, info: DistInfo):
        self.indices = list(range(info.rank, n, info.world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
