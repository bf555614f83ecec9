"""Parameter validation, the records' schemas, and the shipped config files against the schemas."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any, Dict, List

import pytest
import yaml

from pose6d_ros.ros.params import (ESTIMATOR_PARAMS, NODE_PARAMS, EstimatorParams, ParameterError, param, schema,
                                   validate, validate_params)

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: every config/*.yaml that sets a node's parameters (the object registries do not)
NODE_CONFIGS = [p for p in sorted((ROOT / "config").glob("*.yaml"))
                if any(isinstance(v, dict) and "ros__parameters" in v for v in yaml.safe_load(p.read_text()).values())]


def _config_problems(doc: Dict[str, Any]) -> List[str]:
    """What is wrong in a parameter file ``{node: {ros__parameters: {...}}}`` against the nodes' schemas:
    an unknown node or key, a missing key, a value of another type than the default's (the YAML shows
    ``4.0``, not ``4``, for a double), a value that is not the default, or one that fails validation."""
    problems = []
    for node, section in doc.items():
        if node not in NODE_PARAMS:
            problems.append(f"node '{node}' has no parameter schema")
            continue
        record = NODE_PARAMS[node]
        specs = schema(record)
        values = section["ros__parameters"]
        problems += [f"{node}: unknown key '{k}'" for k in sorted(set(values) - set(specs))]
        problems += [f"{node}: missing key '{k}'" for k in sorted(set(specs) - set(values))]
        for name in sorted(set(values) & set(specs)):
            value, default = values[name], specs[name].default
            if type(value) is not type(default):
                problems.append(f"{node}: '{name}' is a {type(value).__name__}, the schema's type is "
                                f"{type(default).__name__}")
            elif value != default:
                problems.append(f"{node}: '{name}' is {value!r}, the schema's default is {default!r}")
        # the shipped files leave the required paths empty; anything else must pass as written
        filled = {k: v or ("x" if k in specs and specs[k].required else v) for k, v in values.items()}
        try:
            validate_params(record, filled)
        except ParameterError as e:
            problems.append(f"{node}: {e}")
    return problems


def test_both_node_configs_are_found():
    assert {p.name for p in NODE_CONFIGS} == {"estimator.yaml", "detector.yaml"}
    nodes = {node for p in NODE_CONFIGS for node in yaml.safe_load(p.read_text())}
    assert nodes == set(NODE_PARAMS)


@pytest.mark.parametrize("path", NODE_CONFIGS, ids=lambda p: p.name)
def test_config_file_matches_its_nodes_schema(path):
    assert _config_problems(yaml.safe_load(path.read_text())) == []


def test_config_check_finds_each_kind_of_mistake():
    """The check above can fail: each kind of mistake in a parameter file is reported, naming the key."""
    good = {name: spec.default for name, spec in ESTIMATOR_PARAMS.items()}
    assert _config_problems({"pose6d_estimator": {"ros__parameters": good}}) == []
    values = {**good, "qos_depth": 5.0, "min_score": 0.5, "min_sccore": 0.3}
    del values["sync"]
    assert _config_problems({"pose6d_estimator": {"ros__parameters": values},
                             "pose6d_tracker": {"ros__parameters": {}}}) == [
        "pose6d_estimator: unknown key 'min_sccore'",
        "pose6d_estimator: missing key 'sync'",
        "pose6d_estimator: 'min_score' is 0.5, the schema's default is 0.3",
        "pose6d_estimator: 'qos_depth' is a float, the schema's type is int",
        "pose6d_estimator: unknown parameter(s): ['min_sccore']",
        "node 'pose6d_tracker' has no parameter schema",
    ]
    # a value of the right type that validation refuses (here a rule between two parameters)
    assert _config_problems({"pose6d_estimator": {"ros__parameters": {**good, "min_depth_m": 30.0}}})[-1] == (
        "pose6d_estimator: parameter 'max_depth_m': 20.0 must be greater than min_depth_m = 30.0")


@pytest.mark.parametrize(
    "override,needle",
    [
        ({"min_score": 1.5}, "min_score"),
        ({"device": "tpu"}, "device"),
        ({"qos_depth": "5"}, "qos_depth"),
        ({"publish_tf": 1}, "publish_tf"),
        ({"model": ""}, "model"),
        ({"no_such": 1}, "no_such"),
        ({"min_depth_m": 1.0, "max_depth_m": 0.5}, "max_depth_m"),
    ],
)
def test_bad_values_name_the_parameter(override, needle):
    values = {"model": "m.onnx", "objects": "o.yaml", **override}
    with pytest.raises(ParameterError, match=needle):
        validate(values)


def test_good_values_are_typed():
    p = validate({"model": "m.onnx", "objects": "o.yaml", "min_score": 0, "qos_depth": 3})
    assert isinstance(p, EstimatorParams)
    assert p.min_score == 0.0 and isinstance(p.min_score, float) and p.qos_depth == 3
    assert p.device == "cpu" and p.max_depth_m == 20.0  # unset: the defaults written in the record


def test_schema_is_read_from_the_record_fields():
    @dataclass(frozen=True)
    class Params:
        rate_hz: float = param(10.0, "How often", range=(0.1, 100.0))
        topic: str = param("/in", "Input", required=True)

    specs = schema(Params)
    assert list(specs) == ["rate_hz", "topic"]
    assert (specs["rate_hz"].default, specs["rate_hz"].range, specs["topic"].required) == (10.0, (0.1, 100.0), True)
    assert validate_params(Params, {"rate_hz": 5, "topic": "/x"}) == Params(rate_hz=5.0, topic="/x")
    with pytest.raises(ParameterError, match="'topic': a path is required"):
        validate_params(Params, {"topic": ""})


def test_a_field_whose_type_is_not_its_defaults_is_refused():
    @dataclass(frozen=True)
    class Mistyped:
        qos_depth: int = param(5.0, "History depth")

    with pytest.raises(TypeError, match="Mistyped.qos_depth: annotated int but its default 5.0 is a float"):
        schema(Mistyped)

    @dataclass(frozen=True)
    class Undeclared:
        topic: str = field(default="/in")

    with pytest.raises(TypeError, match="Undeclared.topic: not declared with param"):
        schema(Undeclared)
