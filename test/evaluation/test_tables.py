"""Tables and the BOP results CSV against hand-written expectations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pose6d_ros.evaluation.tables import (
    BopEstimate,
    format_csv,
    format_markdown,
    load_bop_results,
    recall_table,
    save_bop_results,
)


def test_recall_table_and_mean():
    t = recall_table({"ape": {"ADD": [True, False, True, True]}, "cat": {"ADD": [False, True]}}, ["ADD"])
    assert t.rows["ape"]["ADD"] == 75.0 and t.rows["cat"]["ADD"] == 50.0
    assert t.mean()["ADD"] == 62.5  # unweighted over objects, not over instances (4/6 would be 66.7)
    md = format_markdown(t, "T")
    assert "| ape | 4 | 75.0 |" in md and "| **mean** | 6 | **62.5** |" in md
    assert format_csv(t).splitlines() == ["object,n,ADD", "ape,4,75.0000", "cat,2,50.0000", "mean,6,62.5000"]


def test_bop_csv_format(tmp_path):
    R = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix()
    e = BopEstimate(scene_id=2, im_id=15, obj_id=5, score=0.9, R=R, t=np.array([0.01, -0.02, 0.5]), time=0.25)
    path = save_bop_results(tmp_path / "m_lm-test.csv", [e])
    lines = path.read_text().splitlines()
    assert lines[0] == "scene_id,im_id,obj_id,score,R,t,time"
    fields = lines[1].split(",")
    assert fields[:4] == ["2", "15", "5", "0.9"] and fields[6] == "0.25"
    np.testing.assert_allclose(np.array(fields[4].split(), float).reshape(3, 3), R)  # row-major
    np.testing.assert_allclose(np.array(fields[5].split(), float), [10.0, -20.0, 500.0])  # millimetres
    back = load_bop_results(path)[0]
    np.testing.assert_allclose(back.t, e.t)
    with pytest.raises(ValueError, match="non-finite"):
        save_bop_results(tmp_path / "bad.csv", [BopEstimate(1, 1, 1, 1.0, R, np.array([np.nan, 0, 1]))])
