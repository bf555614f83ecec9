"""Atomic file writes: a temporary file in the target's folder, fsync, then ``os.replace``.

A reader (or a run killed mid-write) sees either the old file or the new one, never a torn one.
Every checkpoint, model, BOP file and results table is written through here. The file gets the mode
an ordinary ``open(path, "w")`` would give (``0o666`` less the umask), not ``mkstemp``'s ``0o600``.
Torch files a user may be handed are read through :func:`safe_torch_load` (``weights_only``: never code).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def _umask() -> int:
    """The process umask: from /proc (Linux) where it can be read without changing it, else by
    setting it and straight back (a short window where another thread would see 0o022)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file, then move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(path: PathLike, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def safe_torch_load(path: str | Path, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, never code.

    Raises:
        FileNotFoundError: no such file.
        RuntimeError: one line naming ``path``: unreadable (corrupt, truncated, empty, not a torch
            file) or refused (it holds other Python objects, e.g. a crafted pickle whose
            ``__reduce__`` would run a command, or a file written by an older version).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # what the weights-only unpickler raises on a forbidden global
        detail = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln),
                      "it holds objects other than tensors and plain data")
        raise RuntimeError(f"{what} {path}: refused to load: {detail.rstrip('.')}; only tensors and plain "
                           "data are loaded (a crafted file could run code)") from e
    except Exception as e:  # noqa: BLE001 - torch raises many types on a corrupt or truncated file
        msg = " ".join(str(e).split()) or f"{type(e).__name__} (empty or truncated file)"
        raise RuntimeError(f"cannot read {what} {path}: {msg}") from e


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON; non-finite floats become ``null`` (strict JSON has no NaN)."""
    import json
    import math

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return atomic_write_text(path, json.dumps(clean(obj), indent=2, allow_nan=False) + "\n")
