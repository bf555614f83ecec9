"""Harness for tests on a real ROS 2 graph: rclpy over Fast DDS, never a mock.

Each pytest run claims a ROS_DOMAIN_ID no other run on this machine holds (a lock file per id),
so two runs never talk to each other. Nodes spin in executor threads; `collector` gathers
messages with timeouts.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from typing import Any, Callable, List

import pytest

from node_fixtures import wait_until

_LOCK_DIR = "/tmp"
_domain_lock = None


def _claim_domain_id() -> int:
    global _domain_lock
    start = os.getpid() % 100
    for k in range(101):
        domain = 1 + (start + k) % 101
        handle = open(os.path.join(_LOCK_DIR, f"pose6d_ros_domain_{domain}.lock"), "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _domain_lock = handle  # held (and the id reserved) until this process exits
        return domain
    raise RuntimeError("no free ROS_DOMAIN_ID in 1..101")


def pytest_configure(config):
    if "ROS_DOMAIN_ID" not in os.environ or os.environ.get("POSE6D_TEST_KEEP_DOMAIN") != "1":
        os.environ["ROS_DOMAIN_ID"] = str(_claim_domain_id())
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.ros)


@pytest.fixture
def ros_context():
    """A fresh rclpy context for one test, shut down afterwards (explicit init/shutdown: Humble-safe)."""
    import rclpy

    context = rclpy.context.Context()
    rclpy.init(context=context)
    yield context
    try:
        rclpy.shutdown(context=context)
    except Exception:
        pass


class Spinner:
    """Spins nodes in a MultiThreadedExecutor on a background thread."""

    def __init__(self, context):
        from rclpy.executors import MultiThreadedExecutor

        self.executor = MultiThreadedExecutor(num_threads=2, context=context)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._stop = threading.Event()

    def _spin(self):
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def add(self, node):
        self.executor.add_node(node)
        if not self._thread.is_alive():
            self._thread.start()
        return node

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        for node in list(self.executor.get_nodes()):
            self.executor.remove_node(node)
            node.destroy_node()
        self.executor.shutdown()


@pytest.fixture
def spinner(ros_context):
    s = Spinner(ros_context)
    yield s
    s.close()


class Collector:
    """Collects messages of one topic; `wait_for(n)` blocks until n arrived or the timeout passes."""

    def __init__(self, node, msg_type, topic: str, qos: Any = 10):
        self.messages: List[Any] = []
        self._cond = threading.Condition()
        self.subscription = node.create_subscription(msg_type, topic, self._on_msg, qos)

    def _on_msg(self, msg):
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> List[Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.messages)


@pytest.fixture
def collector() -> Callable[..., Collector]:
    return Collector


@pytest.fixture
def wait_for_match():
    """wait_for_match(publisher, n): block until the publisher sees n subscriptions (discovery done)."""

    def _wait(publisher, count: int = 1, timeout: float = 10.0) -> bool:
        return wait_until(lambda: publisher.get_subscription_count() >= count, timeout)

    return _wait


@pytest.fixture(scope="session")
def node_setup(tmp_path_factory):
    """(registry, object ids, model path, frames, tmp dir) shared by the estimator-node tests: the
    model is exported and the frames are rendered once per session."""
    from node_fixtures import REGISTRY_YAML, make_frames, make_model

    from pose6d_ros.registry import ObjectRegistry

    registry = ObjectRegistry.from_yaml(REGISTRY_YAML)
    names = ["duck", "teddy", "lego"]
    ids = [registry.resolve(n).id if n in registry.names else registry.ids[i] for i, n in enumerate(names)]
    tmp = tmp_path_factory.mktemp("node")
    model = make_model(registry, ids, tmp / "model.onnx")
    frames = make_frames(registry, ids, n_per_object=2)
    return registry, ids, model, frames, tmp
