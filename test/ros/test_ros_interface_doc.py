"""docs/ros-interface.md lists every node parameter with the schema's type, default, range or choices, and
description."""

from __future__ import annotations

import pathlib
import re

import pytest

from pose6d_ros.ros.params import DETECTOR_PARAMS, ESTIMATOR_PARAMS

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "ros-interface.md"


def _table(section: str):
    text = DOC.read_text()
    body = text[text.index(section):]
    body = body[:body.index("\n## ", 1)]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| `([^`]*)` \| ([^|]*) \| (.*) \|$", body, re.M)
    return {name: (kind, default, limits.strip(), what) for name, kind, default, limits, what in rows}


def _doc_default(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value or '""'
    return repr(value)


@pytest.mark.parametrize("section,schema", [("## Parameters of the estimator", ESTIMATOR_PARAMS),
                                            ("## Parameters of the detector", DETECTOR_PARAMS)])
def test_parameter_tables_match_the_schema(section, schema):
    rows = _table(section)
    assert sorted(rows) == sorted(schema), "the doc's parameters differ from the schema's"
    for name, spec in schema.items():
        limits = (", ".join(f"`{c}`" for c in spec.choices) if spec.choices
                  else f"{spec.range[0]:g} to {spec.range[1]:g}" if spec.range else "")
        assert rows[name] == (type(spec.default).__name__, _doc_default(spec.default), limits, spec.description), name
