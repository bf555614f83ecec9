"""Quiet, readable console output: library logs go to a log file, progress bars stay on one line.

What a run prints should be our own lines (results, one line per written artefact, step summaries) and the
progress bars. Libraries talk a lot: the ONNX exporter and optimiser (``onnxscript``, ``onnx_ir``: dozens of
INFO lines per export once a CLI has set up INFO console logging), pyrender/trimesh, matplotlib's font cache,
TensorBoard; and their Python warnings. :func:`quiet_library_logs` sends all of that to a file while it is
active, and writes console log lines through ``tqdm.write`` so that a line logged during a progress bar lands
above the bar instead of splitting it.

onnxruntime logs from C++ straight to the process's stderr; its default logger is set to ERROR while active
(its warnings are dropped, not filed: a C++ logger cannot be routed to Python's ``logging``).

Example:
    >>> with quiet_library_logs(out / "demo.log"):  # doctest: +SKIP
    ...     export_main([...])
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple, Union

from tqdm import tqdm

__all__ = ["LIBRARY_LOGGERS", "TqdmConsoleHandler", "quiet_library_logs"]

#: Loggers whose records go to the log file, not the console (children included: ``onnxscript.optimizer``...).
#: ``torch.*`` is not among them: torch configures its own loggers (``TORCH_LOGS``: own stderr handlers, WARNING,
#: no propagation), and its exporter's warnings are silenced where it is called (``runtime/onnx_export.py``).
LIBRARY_LOGGERS: Tuple[str, ...] = (
    "onnxscript", "onnx_ir", "onnx", "onnxruntime", "tensorboard", "pyrender", "trimesh", "OpenGL", "PIL",
    "matplotlib", "fsspec", "py.warnings",
)
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PACKAGE_DIR = str(Path(__file__).resolve().parent) + os.sep
_ORT_DEFAULT_SEVERITY = 2  # onnxruntime's own default (WARNING)
_ORT_ERROR = 3
_active = 0  # quiet_library_logs blocks entered and not left (they nest: the demo's around export_onnx's)


class TqdmConsoleHandler(logging.StreamHandler):
    """A console handler that writes through ``tqdm.write``: an open bar is cleared, the line written, the bar
    redrawn below it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # pragma: no cover - logging's own policy for a failing handler
            self.handleError(record)


def _is_console(h: logging.Handler) -> bool:
    return type(h) is logging.StreamHandler and getattr(h, "stream", None) in (sys.stdout, sys.stderr)


@contextmanager
def quiet_library_logs(log_path: Union[str, os.PathLike], level: int = logging.INFO,
                       libraries: Sequence[str] = LIBRARY_LOGGERS) -> Iterator[Path]:
    """While active: library logs and warnings go to ``log_path``; console logging goes through ``tqdm.write``.

    - The ``libraries`` loggers (and their children) get a file handler at ``level`` and stop propagating to the
      console handlers of the root logger.
    - Python warnings raised outside ``pose6d_ros`` are written to the file (logger ``py.warnings``); ours still
      reach the console (through ``tqdm.write``).
    - onnxruntime's default C++ logger shows errors only.
    - The root logger's console handlers are swapped for ``tqdm.write`` ones; when the root logger has no handler,
      one is installed at INFO with the format ``%(message)s`` (what our CLIs' ``basicConfig`` would install; a later
      ``basicConfig`` then leaves it in place).

    Everything is restored on exit (onnxruntime to its default, WARNING, when the outermost block exits: blocks
    nest, e.g. ``export_onnx``'s inside the demo's). Not thread-safe: enter it from the main thread, around the run.

    Args:
        log_path: the log file (appended to; its folder is created).
        level: the least severe record filed.
        libraries: logger names to divert.

    Yields:
        ``log_path`` as a ``Path``.
    """
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    file_handler.setLevel(level)
    saved: List[Tuple[logging.Logger, int, bool]] = []
    for name in libraries:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate))
        lg.addHandler(file_handler)
        lg.setLevel(level)
        lg.propagate = False
    warn_log = logging.getLogger("py.warnings")
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
        if str(filename).startswith(_PACKAGE_DIR):  # ours: the console, above any progress bar
            tqdm.write(text, file=file or sys.stderr)
        else:
            warn_log.warning("%s", text)

    warnings.showwarning = showwarning
    global _active
    ort = _onnxruntime()
    if ort is not None:
        ort.set_default_logger_severity(_ORT_ERROR)
    _active += 1
    root = logging.getLogger()
    root_level, root_handlers = root.level, list(root.handlers)
    if root_handlers:
        for i, h in enumerate(root.handlers):
            if _is_console(h):
                new = TqdmConsoleHandler(h.stream)
                new.setFormatter(h.formatter)
                new.setLevel(h.level)
                for f in h.filters:
                    new.addFilter(f)
                root.handlers[i] = new
    else:
        new = TqdmConsoleHandler(sys.stderr)
        new.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(new)
        root.setLevel(logging.INFO)
    try:
        yield path
    finally:
        root.handlers[:] = root_handlers
        root.setLevel(root_level)
        _active -= 1
        if ort is not None and _active == 0:  # an inner block leaves the outer one's setting alone
            ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)
        warnings.showwarning = show
        for lg, lvl, prop in saved:
            lg.removeHandler(file_handler)
            lg.setLevel(lvl)
            lg.propagate = prop
        file_handler.close()


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a dependency; absent only in stripped environments
        return None
    return onnxruntime
