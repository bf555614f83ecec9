"""Atomic training checkpoints: model, optimizer, scheduler, AMP scaler, step and RNG states.

A checkpoint is written to a temporary file and moved over ``<path>`` with ``os.replace`` (atomic on
POSIX), so a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from pose6d_ros._io import atomic_torch_save

__all__ = ["rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint", "unwrap"]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / DataParallel, else ``model``."""
    return getattr(model, "module", model)


def rng_state() -> Dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # corrupt or truncated file
        raise RuntimeError(f"cannot read checkpoint {path}: {e}") from e
    if "model" not in state:
        raise RuntimeError(f"{path}: not a training checkpoint (no 'model' entry)")
    unwrap(model).load_state_dict(state["model"], strict=strict)
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    if restore_rng and "rng" in state:
        set_rng_state(state["rng"])
    return state
