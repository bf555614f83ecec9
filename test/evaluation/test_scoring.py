"""score_predictions against hand-computed ADD / ADD-S / 2D-projection outcomes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("pose6d_ros.geometry.metrics")  # the metric functions live in geometry (issue: geometry)

from pose6d_ros.evaluation.evaluate import InstancePrediction, score_predictions  # noqa: E402

# a planar square of points at z = 0: every point has the same depth, so a translation dx gives a
# 2D error of exactly f * dx / z pixels and an ADD error of exactly dx
PTS = np.array([[x, y, 0.0] for x in (-0.05, 0.05) for y in (-0.05, 0.05)])
K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
T = np.array([0.0, 0.0, 0.5])


class _Registry:
    def __init__(self, symmetric: bool):
        self.obj = SimpleNamespace(name="sq", diameter=0.1, is_symmetric=symmetric, model_vertices=lambda: PTS)

    def get(self, oid):
        return self.obj


def _pred(R, dx, failed=False):
    return InstancePrediction(1, 0, 1, R=R, t=T + [dx, 0, 0], R_gt=np.eye(3), t_gt=T, K=K, failed=failed, time=0.0)


def test_add_and_projection_thresholds():
    preds = [_pred(np.eye(3), 0.004),  # ADD 4 mm < 10 mm; 4 px < 5 px
             _pred(np.eye(3), 0.006),  # ADD ok; 6 px > 5 px
             _pred(np.eye(3), 0.02),   # both wrong
             _pred(np.eye(3), 0.0, failed=True)]  # a failed PnP never counts
    row = score_predictions(preds, _Registry(False)).rows["sq"]
    assert row["ADD(-S)"] == pytest.approx(50.0)
    assert row["2D proj 5px"] == pytest.approx(25.0)


def test_symmetric_object_uses_adds():
    R180 = np.diag([-1.0, -1.0, 1.0])  # maps the square onto itself
    assert score_predictions([_pred(R180, 0.0)], _Registry(True)).rows["sq"]["ADD(-S)"] == 100.0
    assert score_predictions([_pred(R180, 0.0)], _Registry(False)).rows["sq"]["ADD(-S)"] == 0.0
