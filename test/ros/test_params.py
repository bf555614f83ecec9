"""Parameter validation and the shipped config file agree with the schema."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from pose6d_ros.ros.params import ESTIMATOR_PARAMS, ParameterError, validate

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_config_file_lists_exactly_the_schema():
    doc = yaml.safe_load((ROOT / "config" / "estimator.yaml").read_text())
    values = doc["pose6d_estimator"]["ros__parameters"]
    assert set(values) == set(ESTIMATOR_PARAMS)
    for name, value in values.items():
        assert value == ESTIMATOR_PARAMS[name].default, name


@pytest.mark.parametrize(
    "override,needle",
    [
        ({"min_score": 1.5}, "min_score"),
        ({"device": "tpu"}, "device"),
        ({"qos_depth": "5"}, "qos_depth"),
        ({"publish_tf": 1}, "publish_tf"),
        ({"model": ""}, "model"),
        ({"no_such": 1}, "no_such"),
    ],
)
def test_bad_values_name_the_parameter(override, needle):
    values = {"model": "m.onnx", "objects": "o.yaml", **override}
    with pytest.raises(ParameterError, match=needle):
        validate(values)


def test_good_values_are_typed():
    p = validate({"model": "m.onnx", "objects": "o.yaml", "min_score": 0, "qos_depth": 3})
    assert p.min_score == 0.0 and isinstance(p.min_score, float) and p.qos_depth == 3
