"""Data-parallel training on PyTorch's own engine: torchrun, ``torch.distributed``, DDP.

The CLI reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and passes
it in; the library itself never reads the environment.
"""

from __future__ import annotations

import datetime
import platform
from collections.abc import Callable, Mapping
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
        """In a process group: started by torchrun, even as a single process (which then
        runs the same DDP code path as many, e.g. to check NCCL on a one-GPU machine)."""
        return self.backend != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict:
        return asdict(self)


ENV_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")  # what env:// init reads


def env_requests_distributed(env: Mapping[str, str]) -> bool:
    """True when started by torchrun (or any launcher that sets the ``env://`` variables)."""
    return all(name in env for name in ENV_VARS)


def init_distributed(env: Mapping[str, str], *, use_cuda: bool, timeout_s: float = 300.0
                     ) -> DistInfo:
    """Join the process group described by torchrun's environment.

    A timeout is always set, so a rank that dies brings the others down with an error
    instead of leaving them waiting forever.
    """
    world = int(env["WORLD_SIZE"])
    rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", "0"))
    backend = "nccl" if use_cuda else "gloo"
    device_id = None
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device_id = torch.device("cuda", local_rank)  # binds NCCL to this GPU up front
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                                 device_id=device_id)
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


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order, on every rank (picklable objects)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    tdist.all_gather_object(out, obj)
    return out


def gather_to_main(obj, info: DistInfo) -> list | None:
    """Every rank's ``obj``, in rank order, on rank 0 only (None on the others): for what
    only rank 0 writes, such as each validation image's probabilities."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    tdist.gather_object(obj, out, dst=0)
    return out


def check_same_everywhere(value, info: DistInfo, *, what: str) -> None:
    """Raise the same ValueError on every rank unless all ranks hold an equal ``value``."""
    values = gather_objects(value, info)
    odd = [rank for rank, v in enumerate(values) if v != values[0]]
    if odd:
        who = f"rank {odd[0]} sees" if len(odd) == 1 else f"ranks {', '.join(map(str, odd))} see"
        raise ValueError(f"{what} is not the same in every process: {who} other files or "
                         f"labels than rank 0 (copies on each machine must be identical)")


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank, in place.

    Each rank updates its running statistics from its own last batch; evaluating after this
    measures, on every shard, the very model rank 0 saves.
    """
    if info.enabled:
        for b in module.buffers():
            tdist.broadcast(b, src=0)


def run_on_main(fn: Callable[[], object], info: DistInfo):
    """``fn()`` on rank 0 only, its result (or its exception) handed to every rank.

    For what only rank 0 can do, such as reading the checkpoint on the node that wrote it:
    if it fails, every rank raises the same error instead of waiting for a value.
    """
    if not info.enabled:
        return fn()
    value = exc = None
    if info.is_main:
        try:
            value = fn()
        except Exception as err:  # handed to the other ranks, then raised here too
            exc = err
    value, exc = broadcast_object((value, exc), info)
    if exc is not None:
        raise exc
    return value


def is_collective_failure(exc: BaseException) -> bool:
    """True for the errors a collective raises when another rank died, hung or timed out."""
    return isinstance(exc, tdist.DistError) or (
        isinstance(exc, RuntimeError) and any(
            s in str(exc) for s in ("Timed out", "timed out", "Connection closed by peer",
                                    "Connection reset by peer", "NCCL communicator was aborted")))


@dataclass(frozen=True)
class RankRecord:
    """One process's share of an epoch: how much it trained and how fast its loader fed it."""

    rank: int
    host: str  # machine name (several machines: one per node)
    images: int  # training images this process stepped through
    seconds: float  # its training time in the epoch (without validation)
    data_seconds: float  # of which waiting for its loader, copy and normalize included

    @classmethod
    def measure(cls, info: DistInfo, images: int, seconds: float, data_seconds: float
                ) -> RankRecord:
        return cls(info.rank, platform.node(), images, seconds, data_seconds)

    @property
    def images_per_s(self) -> float:
        """Training throughput of this process."""
        return self.images / max(self.seconds, 1e-9)

    @property
    def data_share(self) -> float:
        """Share of its training time this process spent waiting for data, 0-1."""
        return self.data_seconds / max(self.seconds, 1e-9)

    @property
    def loader_images_per_s(self) -> float:
        """How fast this process's loader delivered images while the process waited for it."""
        return self.images / max(self.data_seconds, 1e-9)

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_s": self.images_per_s,
                "loader_images_per_s": self.loader_images_per_s, "data_share": self.data_share}


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
