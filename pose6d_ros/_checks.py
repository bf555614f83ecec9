"""Input validation shared by every public entry point (kornia's KORNIA_CHECK_SHAPE, in spirit)."""

from __future__ import annotations

from typing import Sequence, Union

import torch

Dim = Union[int, str]


def check_shape(x: torch.Tensor, shape: Sequence[Dim], name: str) -> None:
    """Raise ``ValueError`` unless ``x`` has ``shape``.

    ``shape`` entries are ints (exact size), ``"*"`` (any size) or a letter naming a size
    that must be the same everywhere it appears, e.g. ``("B", "N", 3)``.  A leading ``"..."``
    accepts any number of leading dimensions.

    Example:
        >>> check_shape(torch.zeros(2, 9, 3), ("B", "N", 3), "points_3d")
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    expected = list(shape)
    actual = list(x.shape)
    if expected and expected[0] == "...":
        expected = expected[1:]
        if len(actual) < len(expected):
            raise ValueError(f"{name}: expected shape (..., {_fmt(expected)}), got {tuple(actual)}")
        actual = actual[len(actual) - len(expected):]
    elif len(actual) != len(expected):
        raise ValueError(f"{name}: expected shape ({_fmt(expected)}), got {tuple(x.shape)}")
    named: dict = {}
    for want, got in zip(expected, actual):
        if isinstance(want, int) and want != got:
            raise ValueError(f"{name}: expected shape ({_fmt(shape)}), got {tuple(x.shape)}")
        if isinstance(want, str) and want not in ("*", "...") and named.setdefault(want, got) != got:
            raise ValueError(f"{name}: expected shape ({_fmt(shape)}) with one size for '{want}', "
                             f"got {tuple(x.shape)}")


def check_same_batch(*named: tuple) -> None:
    """Raise ``ValueError`` unless every ``(name, tensor)`` pair shares its first dimension."""
    sizes = {name: t.shape[0] for name, t in named}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch sizes differ: {sizes}")


def _fmt(shape: Sequence[Dim]) -> str:
    return ", ".join(str(s) for s in shape)
