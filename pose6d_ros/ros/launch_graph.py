"""Run a launch file's nodes where ``ros2 launch`` is not installed.

    python -m pose6d_ros.ros.launch_graph launch/estimator.launch.py model:=m.onnx objects:=o.yaml \
        detector_model:=det.pt [use_detector:=false] [--dry-run]
    python -m pose6d_ros.ros.launch_graph pose6d_ros estimator.launch.py ...   # as ros2 launch: package + file

The PyPI wheels of ROS 2 carry rclpy but not ``launch``, ``launch_ros`` or ``ros2cli``. This module
executes the launch file's ``generate_launch_description()`` and starts its nodes as processes:

- When the real ``launch`` and ``launch_ros`` import and the package is installed in an ament index
  (a colcon workspace, a robot), it hands the file to launch's ``LaunchService``, as ``ros2 launch`` does.
- Otherwise the file runs against :func:`minimal_launch_api`: exactly the subset the package's launch
  file uses (``LaunchDescription``, ``DeclareLaunchArgument``, ``LaunchConfiguration``, ``IfCondition``,
  ``launch_ros.actions.Node`` with package/executable/name/namespace/parameters/remappings/arguments/
  condition/output), put into ``sys.modules`` only while the file runs. Anything else in a launch file
  is refused with a one-line error naming it.

Each node becomes one command line: ``python -m <module>`` of the executable's console script (the
package's ``console_scripts`` entry points, from its installed metadata, i.e. setup.py) with
``--ros-args -r __node:=<name> --params-file <file> -p <key>:=<value> ...``. A parameter value from a
launch argument is typed as launch_ros types it (YAML: ``true`` is a bool, ``5`` an int, an empty value
the empty string). ``get_package_share_directory("pose6d_ros")`` falls back to the source checkout
(its ``config/`` and ``launch/``) when the package is not in an ament index (a ``pip install -e``).

Launch arguments are ``name:=value`` as with ``ros2 launch``; a name the file does not declare, a
missing required one, or a value outside a declared choice is an error (exit 2) before anything starts.
Each node's output is printed line by line, prefixed with ``[<node name>]``. SIGINT and SIGTERM are
forwarded to every node; when one node exits with an error the others are stopped (SIGINT, then SIGTERM
after ``--grace`` s, then SIGKILL) and that node's exit code is returned.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml
from ament_index_python import packages as ament  # the real one: the launch file sees a wrapper of it

PACKAGE = "pose6d_ros"
#: the source checkout (``<root>/pose6d_ros/ros/launch_graph.py``): share files of a ``pip install -e``
CHECKOUT = Path(__file__).resolve().parents[2]
PREFIX = "launch_graph"


class LaunchError(Exception):
    """A launch file or argument that cannot be run; the message is one line naming it."""


# -- the package's share directory -------------------------------------------------------------------

def share_directory(package: str) -> str:
    """``get_package_share_directory(package)``, or for this package outside any ament index the
    source checkout (it holds ``config/`` and ``launch/`` as ``share/pose6d_ros`` does)."""
    try:
        return ament.get_package_share_directory(package)
    except ament.PackageNotFoundError:
        if package == PACKAGE and (CHECKOUT / "launch").is_dir() and (CHECKOUT / "config").is_dir():
            return str(CHECKOUT)
        raise LaunchError(f"package '{package}' is not installed in an ament index "
                          f"(AMENT_PREFIX_PATH={os.environ.get('AMENT_PREFIX_PATH', '')})") from None


def _in_ament_index(package: str) -> bool:
    try:
        ament.get_package_share_directory(package)
        return True
    except ament.PackageNotFoundError:
        return False


# -- the minimal launch API ----------------------------------------------------------------------------

class _Context:
    """What substitutions and conditions read: the launch configurations (argument name -> value)."""

    def __init__(self, configurations: Dict[str, str]) -> None:
        self.launch_configurations = configurations


def _perform(value: Any, context: _Context) -> str:
    """A substitution (a str, ``LaunchConfiguration``, or a list of them, concatenated) as a string."""
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, LaunchConfiguration):
        return value.perform(context)
    if isinstance(value, (list, tuple)):
        return "".join(_perform(v, context) for v in value)
    raise LaunchError(f"substitution of type {type(value).__name__} is not supported by {PREFIX}'s minimal "
                      f"launch API (install ros2 launch)")


class LaunchConfiguration:
    """``launch.substitutions.LaunchConfiguration``: the value of a launch argument."""

    def __init__(self, variable_name: str, *, default: Any = None) -> None:
        self.variable_name = variable_name
        self.default = default

    def perform(self, context: _Context) -> str:
        if self.variable_name in context.launch_configurations:
            return context.launch_configurations[self.variable_name]
        if self.default is not None:
            return _perform(self.default, context)
        raise LaunchError(f"launch configuration '{self.variable_name}' does not exist")


class DeclareLaunchArgument:
    """``launch.actions.DeclareLaunchArgument``: a named argument, its default and allowed choices."""

    def __init__(self, name: str, *, default_value: Any = None, description: str = "",
                 choices: Optional[Sequence[str]] = None) -> None:
        self.name = name
        self.default_value = default_value
        self.description = description
        self.choices = list(choices) if choices is not None else None


class IfCondition:
    """``launch.conditions.IfCondition``: true for ``true``/``1``, false for ``false``/``0``
    (case-insensitive, as launch's ``evaluate_condition_expression``), an error otherwise."""

    def __init__(self, predicate_expression: Any) -> None:
        self.predicate_expression = predicate_expression

    def evaluate(self, context: _Context) -> bool:
        text = _perform(self.predicate_expression, context).strip().lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        name = getattr(self.predicate_expression, "variable_name", None)
        what = f"launch argument '{name}'" if name else "IfCondition"
        raise LaunchError(f"{what}: expected true, false, 1 or 0, got '{text}'")


class Node:
    """``launch_ros.actions.Node``, the keywords the minimal API supports."""

    def __init__(self, *, executable: str, package: Optional[str] = None, name: Optional[str] = None,
                 namespace: Optional[str] = None, parameters: Optional[Sequence[Any]] = None,
                 remappings: Optional[Sequence[Tuple[Any, Any]]] = None, arguments: Optional[Sequence[Any]] = None,
                 condition: Optional[IfCondition] = None, output: str = "log", **unsupported: Any) -> None:
        if unsupported:
            raise LaunchError(f"Node(executable='{executable}'): {', '.join(sorted(unsupported))} not supported by "
                              f"{PREFIX}'s minimal launch API (install ros2 launch)")
        self.package, self.executable, self.name, self.namespace = package, executable, name, namespace
        self.parameters = list(parameters or [])
        self.remappings = list(remappings or [])
        self.arguments = list(arguments or [])
        self.condition = condition
        self.output = output


class LaunchDescription:
    """``launch.LaunchDescription``: an ordered list of actions."""

    def __init__(self, initial_entities: Optional[Sequence[Any]] = None) -> None:
        self.entities = list(initial_entities or [])
        for e in self.entities:
            if not isinstance(e, (DeclareLaunchArgument, Node)):
                raise LaunchError(f"action {type(e).__name__} is not supported by {PREFIX}'s minimal launch API "
                                  f"(install ros2 launch)")

    def get_launch_arguments(self) -> List[DeclareLaunchArgument]:
        return [e for e in self.entities if isinstance(e, DeclareLaunchArgument)]


def minimal_launch_api() -> Dict[str, types.ModuleType]:
    """Modules ``launch``, ``launch.actions``, ``launch.conditions``, ``launch.substitutions``,
    ``launch_ros``, ``launch_ros.actions``, and ``ament_index_python.packages`` (with the checkout
    fallback of :func:`share_directory`), holding the minimal API."""
    def module(name: str, **attrs: Any) -> types.ModuleType:
        m = types.ModuleType(name, f"{PREFIX}'s minimal stand-in for {name}")
        m.__path__ = []  # a package, so that `from launch.actions import X` resolves
        m.__dict__.update(attrs)
        return m

    return {
        "launch": module("launch", LaunchDescription=LaunchDescription),
        "launch.actions": module("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument),
        "launch.conditions": module("launch.conditions", IfCondition=IfCondition),
        "launch.substitutions": module("launch.substitutions", LaunchConfiguration=LaunchConfiguration),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", Node=Node),
        "ament_index_python.packages": module("ament_index_python.packages",
                                              get_package_share_directory=share_directory,
                                              PackageNotFoundError=ament.PackageNotFoundError),
    }


@contextlib.contextmanager
def _modules(replacements: Dict[str, types.ModuleType]) -> Iterator[None]:
    """Put ``replacements`` into ``sys.modules`` for the duration, then restore what was there."""
    saved = {name: sys.modules.get(name) for name in replacements}
    sys.modules.update(replacements)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def load_launch_file(path: Path) -> Any:
    """Execute the launch file and return its ``generate_launch_description()`` (with whatever launch
    API is importable at the time)."""
    if not path.is_file():
        raise LaunchError(f"launch file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_{PREFIX}_{path.stem.replace('.', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except LaunchError:
        raise
    except Exception as e:  # a launch file that does not run is the user's error, not ours
        raise LaunchError(f"{path}: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "generate_launch_description", None)):
        raise LaunchError(f"{path}: no generate_launch_description() function")
    try:
        return module.generate_launch_description()
    except LaunchError:
        raise
    except Exception as e:
        raise LaunchError(f"{path}: generate_launch_description(): {type(e).__name__}: {e}") from e


# -- launch arguments ---------------------------------------------------------------------------------

def parse_launch_arguments(tokens: Sequence[str]) -> Dict[str, str]:
    """``["model:=m.onnx", ...]`` -> ``{"model": "m.onnx"}`` (a later value of a name wins)."""
    out: Dict[str, str] = {}
    for token in tokens:
        name, sep, value = token.partition(":=")
        if not sep or not name or any(c.isspace() for c in name):
            raise LaunchError(f"launch argument '{token}' is not of the form name:=value")
        out[name] = value
    return out


def check_argument_names(declared: Sequence[str], given: Dict[str, str]) -> None:
    """``LaunchError`` for a given name the file does not declare (``ros2 launch`` would ignore a typo
    such as ``modle:=...`` silently and start the node without its model)."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise LaunchError(f"unknown launch argument{'s' * (len(unknown) > 1)} {', '.join(unknown)}; "
                          f"the launch file declares: {', '.join(declared)}")


def resolve_configurations(declared: Sequence[DeclareLaunchArgument], given: Dict[str, str],
                           context: _Context) -> Dict[str, str]:
    """Fill ``context`` with every declared argument's given value or default, in declaration order
    (a default may refer to an earlier argument).

    Raises ``LaunchError`` for an undeclared name, a declared argument without default that is not
    given, and a value outside the argument's choices."""
    check_argument_names([d.name for d in declared], given)
    for d in declared:
        if d.name in given:
            context.launch_configurations[d.name] = given[d.name]
        elif d.default_value is None:
            raise LaunchError(f"launch argument '{d.name}' is required (no default): give {d.name}:=<value>")
        else:
            context.launch_configurations[d.name] = _perform(d.default_value, context)
        value = context.launch_configurations[d.name]
        if d.choices is not None and value not in d.choices:
            raise LaunchError(f"launch argument '{d.name}': '{value}' is not one of {', '.join(d.choices)}")
    return context.launch_configurations


# -- nodes -> command lines ---------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeCommand:
    """One node's process: ``name`` (the node name, or the executable when unnamed) and its argv."""

    name: str
    argv: List[str] = field(default_factory=list)


def executable_command(package: str, executable: str) -> List[str]:
    """``[python, -m, <module>]`` of the package's console script ``executable`` (entry points of the
    installed distribution, i.e. setup.py's), run by this interpreter; else ``<prefix>/lib/<package>/
    <executable>`` where ament installed it (colcon)."""
    try:
        scripts = metadata.entry_points(group="console_scripts")
        match = [ep for ep in scripts if ep.name == executable and ep.dist is not None
                 and ep.dist.metadata["Name"].replace("-", "_").lower() == package.replace("-", "_").lower()]
    except Exception:  # noqa: BLE001 - broken metadata elsewhere in the environment: fall through
        match = []
    if match:
        # `python -m` runs the module as __main__: the package's node modules call their entry point there
        return [sys.executable, "-m", match[0].value.split(":")[0].strip()]
    try:
        candidate = Path(ament.get_package_prefix(package)) / "lib" / package / executable
        if os.access(candidate, os.X_OK):
            return [str(candidate)]
    except Exception:  # noqa: BLE001 - not in an ament index either
        pass
    raise LaunchError(f"executable '{executable}' of package '{package}' not found: neither a console script of an "
                      f"installed '{package}' nor in an ament prefix (pip install -e . or colcon build first)")


def _yaml_scalar(text: str) -> Any:
    """``text`` parsed as YAML (launch_ros's typing of a string parameter value); the text itself where
    that gives nothing usable (empty, ``null``, a mapping, invalid YAML)."""
    try:
        typed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return typed if isinstance(typed, (bool, int, float, str, list)) else text


def _ros_value(value: Any) -> str:
    """A parameter value for ``-p name:=<value>``: a string is typed as launch_ros types it (YAML:
    ``true`` a bool, ``5`` an int, empty the empty string), and written so that rcl's YAML parser of
    ``-p`` reads back exactly that value (rcl refuses ``-p name:=`` with nothing after it)."""
    if isinstance(value, str):
        value = _yaml_scalar(value)
    if isinstance(value, str) and _PLAIN.fullmatch(value) and not value.lower().startswith(_RCL_WORDS):
        return value  # a path, topic or word rcl reads back as this string: keep the command line readable
    return json.dumps(value)  # quoted string; bool -> true/false; numbers; lists: JSON is YAML flow style


#: strings written unquoted after ``-p name:=``: no character YAML or rcl's number parsing could read
#: otherwise, and (``_RCL_WORDS``) not a word rcl takes for a bool, null, or a float (strtod: inf, nan)
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
_RCL_WORDS = ("y", "n", "true", "false", "on", "off", "null", "inf", "nan")


def _parameter_value(value: Any, context: _Context) -> Any:
    """A value of a node's parameter dict: substitutions (and plain strings, which launch_ros turns into
    substitutions) performed to a string; other Python values (bool, int, float, lists) as they are."""
    if isinstance(value, (str, LaunchConfiguration)) or (
            isinstance(value, (list, tuple)) and any(isinstance(v, LaunchConfiguration) for v in value)):
        return _perform(value, context)
    return list(value) if isinstance(value, tuple) else value


def _flatten(params: Dict[Any, Any], prefix: str = "") -> Iterator[Tuple[str, Any]]:
    for k, v in params.items():
        if isinstance(v, dict):  # launch_ros flattens nested names with dots
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def node_command(node: Node, context: _Context) -> NodeCommand:
    """The command line that starts ``node`` (``--ros-args`` as launch_ros passes them)."""
    if not node.package:
        raise LaunchError(f"Node(executable='{node.executable}'): package is required")
    argv = executable_command(node.package, node.executable) + [_perform(a, context) for a in node.arguments]
    ros = ["--ros-args"]
    name = _perform(node.name, context) if node.name is not None else None
    if name:
        ros += ["-r", f"__node:={name}"]
    if node.namespace is not None:
        ros += ["-r", f"__ns:={_perform(node.namespace, context)}"]
    for entry in node.parameters:
        if isinstance(entry, dict):
            for key, value in _flatten(entry):
                ros += ["-p", f"{key}:={_ros_value(_parameter_value(value, context))}"]
        else:
            path = Path(_perform(entry, context))
            if not path.is_file():
                raise LaunchError(f"node '{name or node.executable}': parameters file not found: {path}")
            ros += ["--params-file", str(path)]
    for src, dst in node.remappings:
        ros += ["-r", f"{_perform(src, context)}:={_perform(dst, context)}"]
    return NodeCommand(name or node.executable, argv + (ros if len(ros) > 1 else []))


def resolve(path: Path, arguments: Dict[str, str]) -> List[NodeCommand]:
    """The commands of the launch file's nodes whose condition holds, with the minimal API."""
    with _modules(minimal_launch_api()):
        description = load_launch_file(path)
    if not isinstance(description, LaunchDescription):
        raise LaunchError(f"{path}: generate_launch_description() returned {type(description).__name__}, "
                          f"not a LaunchDescription")
    context = _Context({})
    resolve_configurations(description.get_launch_arguments(), arguments, context)
    return [node_command(n, context) for n in description.entities
            if isinstance(n, Node) and (n.condition is None or n.condition.evaluate(context))]


# -- processes ----------------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when launch_graph dies, even by SIGKILL (Linux), so that a
    killed launcher never leaves its nodes running."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the launcher's own shutdown still stops them
        pass


class Graph:
    """The started node processes, each one's output printed with its name as prefix."""

    def __init__(self, commands: Sequence[NodeCommand], grace_s: float = 10.0) -> None:
        self.commands = list(commands)
        self.grace_s = grace_s
        self.procs: List[subprocess.Popen] = []
        self._readers: List[threading.Thread] = []
        self._print_lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._print_lock:
            print(f"[{PREFIX}] {text}", flush=True)

    def _pump(self, name: str, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._print_lock:
                print(f"[{name}] {line}", flush=True)
        stream.close()

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for c in self.commands:
            try:
                # own session: a terminal's Ctrl-C reaches launch_graph only, which forwards it once
                proc = subprocess.Popen(c.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True,
                                        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
            except OSError as e:
                raise LaunchError(f"node '{c.name}' could not start: {e}") from e
            self.procs.append(proc)
            self.say(f"{c.name}: started, pid {proc.pid}: {shlex.join(c.argv)}")
            t = threading.Thread(target=self._pump, args=(c.name, proc.stdout), daemon=True)
            t.start()
            self._readers.append(t)

    def signal_all(self, signum: int) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

    def _wait_all(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        return all(p.poll() is not None for p in self.procs)

    def stop(self, first_signal: int = signal.SIGINT) -> None:
        """``first_signal`` to every running node; SIGTERM after ``grace_s``, SIGKILL 5 s later."""
        self.signal_all(first_signal)
        if not self._wait_all(self.grace_s):
            self.say(f"nodes still running {self.grace_s:g} s after {signal.Signals(first_signal).name}: SIGTERM")
            self.signal_all(signal.SIGTERM)
            if not self._wait_all(5.0):
                self.say("nodes still running: SIGKILL")
                for p in self.procs:
                    if p.poll() is None:
                        p.kill()
                self._wait_all(5.0)
        for t in self._readers:
            t.join(timeout=5.0)

    def run(self) -> int:
        """Start the nodes and wait. Returns 0 after all exited cleanly or a SIGINT/SIGTERM stopped
        them; the exit code of the first node that failed (128 + signal when a signal killed it)."""
        received: List[int] = []
        wake = threading.Event()

        def on_signal(signum, _frame):
            received.append(signum)
            wake.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        try:
            self.start()
            reported = set()
            while not received:
                for c, p in zip(self.commands, self.procs):
                    rc = p.poll()
                    if rc is None or p.pid in reported:
                        continue
                    reported.add(p.pid)
                    if rc == 0:
                        self.say(f"{c.name}: exited (code 0)")
                    elif not code:
                        code = rc if rc > 0 else 128 - rc
                        print(f"{PREFIX}: error: node '{c.name}' exited with code {rc}; stopping the others",
                              file=sys.stderr, flush=True)
                if code or len(reported) == len(self.procs):
                    break
                wake.wait(0.1)
            if received:
                self.say(f"{signal.Signals(received[0]).name} received: stopping the nodes")
        finally:
            self.stop(received[0] if received else signal.SIGINT)
            for s, handler in previous.items():
                signal.signal(s, handler)
        return code


# -- the real launch ---------------------------------------------------------------------------------

def _real_launch_available() -> bool:
    """``launch`` (with ``LaunchService``; a checkout's ``launch/`` directory imports as an empty
    namespace package) and ``launch_ros`` are importable."""
    if importlib.util.find_spec("launch_ros") is None:
        return False
    try:
        import launch
    except ImportError:
        return False
    return hasattr(launch, "LaunchService")


def run_with_launch(path: Path, arguments: Dict[str, str]) -> int:
    """As ``ros2 launch <file> name:=value ...``: launch's ``LaunchService`` runs the file."""
    from launch import LaunchDescription as RealDescription
    from launch import LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import AnyLaunchDescriptionSource

    check_argument_names([d.name for d in load_launch_file(path).get_launch_arguments()], arguments)
    service = LaunchService(argv=[f"{k}:={v}" for k, v in arguments.items()])
    service.include_launch_description(RealDescription([
        IncludeLaunchDescription(AnyLaunchDescriptionSource(str(path)), launch_arguments=list(arguments.items()))]))
    return service.run()



# -- CLI ----------------------------------------------------------------------------------------------

def _launch_path(first: str, rest: List[str]) -> Tuple[Path, List[str]]:
    """``FILE args`` or, as ``ros2 launch``, ``PACKAGE FILE args`` (the file under its share/launch)."""
    if Path(first).is_file() or first.endswith(".py") or not rest or ":=" in rest[0]:
        return Path(first), rest
    return Path(share_directory(first)) / "launch" / rest[0], rest[1:]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m pose6d_ros.ros.{PREFIX}", description="Run a launch file's nodes without ros2 launch "
                                "(see the module docstring of pose6d_ros/ros/launch_graph.py).",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("launch", nargs="+", metavar="[PACKAGE] FILE [name:=value ...]",
                   help="a launch file (or a package and a launch file in its share/launch) and its arguments")
    p.add_argument("--dry-run", action="store_true", help="print each node's command line and exit")
    p.add_argument("--grace", type=float, default=10.0, help="seconds a node has to stop after SIGINT (10)")
    args = p.parse_args(argv)
    try:
        path, rest = _launch_path(args.launch[0], args.launch[1:])
        arguments = parse_launch_arguments(rest)
        if _real_launch_available() and _in_ament_index(PACKAGE) and not args.dry_run:
            return run_with_launch(path, arguments)
        commands = resolve(path, arguments)
        if args.dry_run:
            for c in commands:
                print(f"{c.name}: {shlex.join(c.argv)}")
            return 0
        if not commands:
            raise LaunchError(f"{path}: no node to start with these arguments")
        return Graph(commands, grace_s=args.grace).run()
    except LaunchError as e:
        print(f"{PREFIX}: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
