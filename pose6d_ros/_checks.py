"""Input validation shared by every public entry point (kornia's KORNIA_CHECK_SHAPE, in spirit), and
the error handling every console script shares (:func:`run_cli`: one line naming the file or field,
exit code 2, never a traceback for bad input)."""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import zipfile
from typing import Any, Callable, Iterator, Sequence, Union

import torch

Dim = Union[int, str]

#: Set (to anything but empty or 0) to get the traceback instead of the one-line message.
TRACEBACK_ENV = "POSE6D_TRACEBACK"


class InputError(ValueError):
    """Bad input to a command: its message is one line that names the file or the field."""


def _input_errors() -> tuple:
    import yaml

    # what unreadable files and bad values raise: the OS, parsers (json/yaml/PIL/trimesh: ValueError
    # and YAMLError), torch on a corrupt archive (RuntimeError, pickle/zip errors), our own checks
    return (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            yaml.YAMLError)


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, whitespace collapsed."""
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError) would quote it
    else:
        text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = " ".join(lines[0].split()) if lines else type(exc).__name__
    if len(line) > 240 and ". " in line[40:]:  # library prose after the first sentence (torch's zip errors)
        line = line[:line.index(". ", 40) + 1]
    return line


@contextlib.contextmanager
def reading(path: Union[str, "os.PathLike[str]"], what: str = "") -> Iterator[None]:
    """Re-raise bad-input errors from the block as one-line :class:`InputError` naming ``what`` (e.g.
    ``"--model"``) and ``path``, unless the message names ``path`` already.

    Example:
        >>> with reading(args.model, "--model"):  # doctest: +SKIP
        ...     model, card = load_model(args.model)
    """
    try:
        yield
    except _input_errors() as exc:
        msg = one_line(exc)
        if str(path) in msg:
            raise
        prefix = f"{what} {path}" if what else str(path)
        raise InputError(f"{prefix}: {msg}") from exc


def run_cli(prog: str, body: Callable[[], Any]) -> int:
    """Run a console script's ``body`` and return its exit code.

    0 on success (whatever ``body`` returns unless it is an int); 2 with one line ``prog: error:
    <message>`` on stderr for bad input (a missing, corrupt or malformed file, a bad value); 130 on
    Ctrl-C. Other exceptions (bugs) keep their traceback. ``POSE6D_TRACEBACK=1`` shows the traceback
    of bad-input errors too.
    """
    try:
        code = body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except _input_errors() as exc:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr, flush=True)
        return 2
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


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
