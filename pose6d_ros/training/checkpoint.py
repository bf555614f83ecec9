"""Atomic training checkpoints: model, optimizer, scheduler, AMP scaler, step and RNG states.

A checkpoint is written to a temporary file and moved over ``<path>`` with ``os.replace`` (atomic on
POSIX), so a run killed mid-write leaves the previous checkpoint intact.

Checkpoints hold only tensors and plain data (dicts, lists, tuples, numbers, strings), so they load
with ``torch.load(weights_only=True)``: a crafted file cannot run code (a full unpickler would call
whatever ``__reduce__`` names). The RNG states are stored in that form: numpy's MT19937 state as its
components with the key as a tensor, Python's as its tuple of ints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from pose6d_ros._io import atomic_torch_save, safe_torch_load
from pose6d_ros._rng import rng_state, set_rng_state

__all__ = ["save_checkpoint", "load_checkpoint", "unwrap"]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / DataParallel, else ``model``."""
    return getattr(model, "module", model)


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    step: int,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[Any] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a full training state atomically and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state: Dict[str, Any] = {
        "step": int(step),
        "model": unwrap(model).state_dict(),
        "rng": rng_state(),
        "extra": extra or {},
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return atomic_torch_save(path, state)


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[Any] = None,
    restore_rng: bool = True,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
) -> Dict[str, Any]:
    """Load what :func:`save_checkpoint` wrote into the given objects; returns the raw state."""
    path = Path(path)
    state = safe_torch_load(path, "checkpoint", map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise RuntimeError(f"{path}: not a training checkpoint (no 'model' entry)")
    try:
        unwrap(model).load_state_dict(state["model"], strict=strict)
    except RuntimeError as e:  # its message is many lines: one line naming the file instead
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise RuntimeError(f"{path}: the weights do not fit this run's model ({' '.join(lines[1:2] or lines[:1])[:300]})") from e
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    if restore_rng and "rng" in state:
        set_rng_state(state["rng"])
    return state
