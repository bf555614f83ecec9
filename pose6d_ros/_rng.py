"""The process's random-number states (Python, NumPy, torch, CUDA) as checkpoint data.

Stored as tensors and plain data (NumPy's MT19937 state as its components with the key as a tensor,
Python's as its tuple of ints), so a checkpoint holding them loads with ``torch.load(weights_only=True)``.
Shared by the trainers' checkpoints (``training/checkpoint.py``) and the detector's (``detection/model.py``).
"""

from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state"]


def rng_state() -> Dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain data (``weights_only``-safe)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),  # (version, tuple of 625 ints, None or float)
        "numpy": {"kind": str(kind), "key": torch.from_numpy(np.asarray(key, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["gauss"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
