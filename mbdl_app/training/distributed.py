"""Data-parallel training under torchrun: who am I, the process group, and small collectives.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT) in each worker's
environment; a process without them, or with WORLD_SIZE=1, trains alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes checkpoints, logs, progress and artifacts."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1


def torchrun_ranks() -> Ranks:
    """Ranks from torchrun's environment variables; a lone process is rank 0 of 1."""
    if not all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return Ranks()
    return Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def init_process_group(ranks: Ranks, device: torch.device) -> bool:
    """Join the job's process group (nccl on GPU, gloo on CPU) unless already joined or alone.

    Returns whether this call created the group (then its caller destroys it).
    """
    if not ranks.parallel or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            rank=ranks.rank, world_size=ranks.world_size)
    return True


def _comm_device(device: torch.device) -> torch.device:
    # nccl moves only CUDA tensors; gloo only CPU ones
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def all_gather_tensors(state: dict[str, torch.Tensor], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Every rank's `state` (same keys and shapes on all ranks), on the CPU, in rank order."""
    comm = _comm_device(device)
    world = dist.get_world_size()
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(world)]
    for key, t in state.items():
        parts = [torch.empty_like(t, device=comm) for _ in range(world)]
        dist.all_gather(parts, t.to(comm))
        for r, p in enumerate(parts):
            out[r][key] = p.cpu()
    return out


def broadcast_float(x: float, device: torch.device) -> float:
    """Rank 0's value of `x` on every rank."""
    t = torch.tensor([x], dtype=torch.float64, device=_comm_device(device))
    dist.broadcast(t, src=0)
    return float(t[0])


def all_mean(x: float, device: torch.device) -> float:
    """The mean of `x` over the ranks."""
    t = torch.tensor([x], dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(t)
    return float(t[0]) / dist.get_world_size()
