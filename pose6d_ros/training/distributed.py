"""Data-parallel helpers for ``torchrun`` (gloo on the CPU, nccl on CUDA).

Gradients are averaged over ranks after ``backward`` (:func:`average_gradients`); every loss in ``losses.py`` is a batch mean,
so ``N`` ranks with batch ``B`` give the update of one process with batch ``N·B``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "is_distributed", "rank", "world_size", "is_main", "all_reduce_mean",
           "broadcast_parameters", "average_gradients", "cleanup", "resolve_device"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda:<LOCAL_RANK>`` when CUDA exists, else ``cpu``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def init_distributed(device: torch.device) -> bool:
    """Join the process group if launched by ``torchrun`` (``WORLD_SIZE > 1``); returns whether it did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity when not distributed); for logging only."""
    if not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / world_size()


def broadcast_parameters(model: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (start of training)."""
    if not is_distributed():
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=src)


def average_gradients(model: torch.nn.Module) -> None:
    """All-reduce-mean every parameter gradient, in one flat buffer.

    Used instead of DistributedDataParallel because a self-supervised step calls Φ three or four
    times before one backward (h1, h2, h3, Φ(x_g)); an explicit reduction after ``backward`` is
    exact whatever the graph. Every rank runs the same code, so the set of parameters that have a
    gradient is the same on each rank.
    """
    if not is_distributed():
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def cleanup(finished: bool = True) -> None:
    """Leave the process group. After a finished run the ranks leave together: a rank that tears gloo
    down while another still writes its last files aborts in gloo's threads ("terminate called without
    an active exception", SIGABRT). After an error there is no barrier: the other ranks may never reach
    it, and the failing rank must exit so that torchrun stops them."""
    if is_distributed():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
