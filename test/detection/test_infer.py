"""Inference records and box recall on a BOP split (hand-computed IoUs, torchvision's box_iou)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose6d_ros.detection.infer import Detector, box_iou, bop_box_to_edges, evaluate_recall
from pose6d_ros.detection.model import DetectorSpec
from pose6d_ros.runtime.detection import Detection


def test_box_iou_matches_torchvision():
    from torchvision.ops import box_iou as tv_iou

    g = torch.Generator().manual_seed(0)
    a = torch.rand(7, 2, generator=g) * 50
    a = torch.cat([a, a + 1 + torch.rand(7, 2, generator=g) * 30], 1).double()
    b = torch.rand(5, 2, generator=g) * 50
    b = torch.cat([b, b + 1 + torch.rand(5, 2, generator=g) * 30], 1).double()
    torch.testing.assert_close(box_iou(a, b), tv_iou(a, b))


def test_bop_box_to_edges():
    # BOP (x, y, w, h) = (10, 20, 3, 4) covers pixel columns 10..12 and rows 20..23
    assert bop_box_to_edges((10, 20, 3, 4)) == (9.5, 19.5, 12.5, 23.5)


class _Oracle:
    """Stands in for a Detector: fixed detections per image (the recall bookkeeping is under test)."""

    def __init__(self, dets):
        self.spec = DetectorSpec(object_ids=(1, 2, 3), object_names=("a", "b", "c"))
        self.dets, self.min_score, self.device = dets, 0.3, torch.device("cpu")
        self.calls = 0

    def detect(self, rgb):
        assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
        self.calls += 1
        return [d for d in self.dets[self.calls - 1] if d.score >= self.min_score]


@pytest.fixture
def split(tmp_path):
    from pose6d_ros.data.bop import CameraRecord, GtInfoRecord, GtRecord, SceneRecord, save_scene

    K = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    I3, t = np.eye(3), np.array([0, 0, 0.5])

    def info(visib, obj, frac=1.0):
        return GtInfoRecord(bbox_obj=obj, bbox_visib=visib, px_count_all=100, px_count_valid=100,
                            px_count_visib=int(100 * frac), visib_fract=frac)

    gts = {0: [GtRecord(1, I3, t), GtRecord(2, I3, t), GtRecord(3, I3, t), GtRecord(99, I3, t)],
           1: [GtRecord(1, I3, t)]}
    infos = {0: [info((10, 20, 40, 30), (10, 20, 40, 30)), info((0, 0, 20, 20), (0, 0, 20, 40)),
                 info((5, 5, 10, 10), (5, 5, 10, 10), frac=0.05), info((1, 1, 5, 5), (1, 1, 5, 5))],
             1: [info((30, 10, 20, 20), (30, 10, 20, 20))]}
    rgb = {i: np.zeros((48, 64, 3), np.uint8) for i in (0, 1)}
    scene = SceneRecord(scene_id=1, cameras={0: CameraRecord(K), 1: CameraRecord(K)}, gts=gts, gt_infos=infos)
    save_scene(tmp_path / "test", scene, rgb=rgb)
    return tmp_path / "test"


def test_recall_bookkeeping(split, registry):
    e = bop_box_to_edges
    shifted = tuple(np.add(e((10, 20, 40, 30)), [10, 0, 10, 0]))  # IoU = 30*30 / (2*1200 - 900) = 0.6
    dets = [
        [Detection(class_id="a", box=e((50, 0, 10, 10)), score=0.9),  # best-scoring box of object 1 misses
         Detection(class_id="a", box=shifted, score=0.8),
         Detection(class_id="b", box=e((0, 0, 20, 20)), score=0.7),  # exact visible box; IoU 0.5 with bbox_obj
         Detection(class_id="c", box=e((5, 5, 10, 10)), score=0.9)],  # object 3 is 5% visible: not counted
        [Detection(class_id="a", box=e((30, 10, 20, 20)), score=0.2)],  # exact but below min_score
    ]
    oracle = _Oracle(dets)
    rep = evaluate_recall(oracle, split, registry, min_score=0.3, min_visib_fract=0.1)
    assert (rep.n_images, rep.n_instances) == (2, 3)  # obj 99 is no class of the detector
    assert rep.n_targets == 2  # object 1 in scene 1, in both images
    r = rep.recall
    assert r[("all", "visib", "any", 0.5)] == pytest.approx(2 / 3)
    assert r[("all", "visib", "any", 0.75)] == pytest.approx(1 / 3)
    assert r[("all", "visib", "top1", 0.5)] == pytest.approx(1 / 3)
    assert r[("all", "obj", "any", 0.5)] == pytest.approx(2 / 3)  # IoU(visib, obj) of object 2 = 400/800 = 0.5
    assert r[("all", "obj", "any", 0.75)] == pytest.approx(0.0)
    assert r[("target", "visib", "any", 0.5)] == pytest.approx(1 / 2)
    assert r[("target", "visib", "any", 0.75)] == pytest.approx(0.0)
    assert r[("target", "visib", "top1", 0.5)] == pytest.approx(0.0)
    # class-agnostic: object 3's 5%-visible box is no GT, but object 1's shifted box still is found
    assert r[("all", "visib", "agnostic", 0.5)] == pytest.approx(2 / 3)
    assert r[("target", "visib", "agnostic", 0.5)] == pytest.approx(1 / 2)
    assert oracle.min_score == 0.3  # restored
    assert "recall vs bbox_visib" in rep.summary()


def test_detector_runs_on_uint8_images(tiny_checkpoint, registry):
    det = Detector.from_file(tiny_checkpoint, min_score=0.0, expect_names=registry.names)
    out = det.detect(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    for k, d in enumerate(out):
        assert isinstance(d, Detection) and d.class_id in registry.names and d.detection_id == f"{d.class_id}_{k}"
        x0, y0, x1, y1 = d.box
        assert -0.5 <= x0 <= x1 <= 119.5 and -0.5 <= y0 <= y1 <= 89.5 and 0 <= d.score <= 1
    with pytest.raises(ValueError, match="rgb"):
        det.detect(np.zeros((90, 120, 4), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        det.detect(np.zeros((90, 120, 3), np.float32))
