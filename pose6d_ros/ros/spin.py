"""The one `main` body every node shares: init, build, spin, clean shutdown, exit code.

Start-up errors (bad parameters, a missing, corrupt or mismatched model, a device that is not there)
print one line naming the problem and return 2, never a traceback. Explicit `rclpy.init()`/`shutdown()`:
Humble has no context-manager form.
"""

from __future__ import annotations

import sys
from typing import Callable, Tuple, Type

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (whitespace collapsed), or its type when the message is empty."""
    return " ".join(str(exc).split()) or type(exc).__name__


def spin_node(factory: Callable[[], Node], label: str, startup_errors: Tuple[Type[BaseException], ...],
              args=None) -> int:
    """Build the node with ``factory`` and spin it until shutdown.

    Returns:
        0 after a clean shutdown (Ctrl-C, ``rclpy.shutdown``); 2 when building the node raised one
        of ``startup_errors`` or an rclpy parameter error (printed as ``<label>: error: <one line>``
        on stderr). Anything else is a bug and keeps its traceback.
    """
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = factory()
        except (*startup_errors, ParameterException) as e:
            print(f"{label}: error: {one_line(e)}", file=sys.stderr, flush=True)
            return 2
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
