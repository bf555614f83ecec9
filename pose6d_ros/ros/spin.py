"""The one `main` body every node shares: init, build, spin, clean shutdown, exit code.

Start-up errors (bad parameters, a missing or mismatched model) print one line naming the problem and
return 2, never a traceback. Explicit `rclpy.init()`/`shutdown()`: Humble has no context-manager form.
"""

from __future__ import annotations

import sys
from typing import Callable, Tuple, Type

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def spin_node(factory: Callable[[], Node], label: str, startup_errors: Tuple[Type[BaseException], ...],
              args=None) -> int:
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = factory()
        rclpy.spin(node)
    except startup_errors as e:
        print(f"{label}: {e}", file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code
