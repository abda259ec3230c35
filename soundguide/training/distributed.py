"""torch.distributed plumbing: the job from torchrun's environment, and gathers.

The same command runs on one process or many: under ``torchrun`` the
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
variables are set and :func:`init_distributed` joins the process group
(``nccl`` on CUDA, ``gloo`` on CPU); without them it is a one-process job and
nothing is initialized.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from soundguide.core.errors import ConfigError


@dataclass(frozen=True)
class Job:
    """Where this process stands: its rank, the world size, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto``: this process's CUDA device when there is one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but CUDA is not available")
        if resolved.index is None:
            resolved = torch.device(f"cuda:{local_rank}")
    return resolved


def init_distributed(device: str | torch.device = "auto") -> Job:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    resolved = resolve_device(device, local_rank)
    if world_size <= 1:
        return Job(device=resolved)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://"}
        if resolved.type == "cuda":
            kwargs["device_id"] = resolved
        dist.init_process_group(**kwargs)
        initialized_here = True
    return Job(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=resolved,
        initialized_here=initialized_here,
    )


def shutdown(job: Job) -> None:
    if job.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def gather(tensor: torch.Tensor, job: Job, *, grad: bool = False) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order.

    With ``grad``, the gather is differentiable: the backward sums the gradients
    every rank computed for this rank's slice (an all-reduce, which every
    backend has, then the slice; what ``torch.distributed.nn.functional.all_gather``
    does with reduce-scatter, now deprecated).
    Input: (n, ...) with the same shape on every rank. Output: (world_size * n, ...).
    """
    if not job.distributed:
        return tensor
    if grad:
        return _GatherWithGrad.apply(tensor, job.rank, job.world_size)
    parts = [torch.empty_like(tensor) for _ in range(job.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None


def gather_ragged(tensor: torch.Tensor, job: Job, max_rows: int) -> torch.Tensor:
    """Like :func:`gather` without gradient, for per-rank row counts up to ``max_rows``."""
    if not job.distributed:
        return tensor
    rows = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = gather(rows, job).tolist()
    padded = torch.zeros(max_rows, *tensor.shape[1:], dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = gather(padded, job).split(max_rows)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


def gather_objects(obj: Any, job: Job) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not job.distributed:
        return [obj]
    out: list[Any] = [None] * job.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, job: Job) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank."""
    if not job.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(job: Job) -> None:
    if job.distributed:
        dist.barrier()


def average_(tensors: list[torch.Tensor], job: Job) -> None:
    """Replace each tensor by its mean over ranks, in place."""
    if not job.distributed:
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(job.world_size)
