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


def test_edges_to_bop_box_inverts_bop_box_to_edges():
    from pose6d_ros.detection.infer import edges_to_bop_box

    # the pixel columns 10..12 and rows 20..23 again, from their edges
    np.testing.assert_array_equal(edges_to_bop_box((9.5, 19.5, 12.5, 23.5)), [10.0, 20.0, 3.0, 4.0])
    xywh = np.random.default_rng(0).uniform(0, 50, (6, 4))
    edges = np.array([bop_box_to_edges(b) for b in xywh])
    np.testing.assert_allclose(edges_to_bop_box(torch.as_tensor(edges)), xywh, atol=1e-12)
    with pytest.raises(ValueError, match="boxes"):
        edges_to_bop_box(np.zeros((2, 3)))


def _gt_split(root, images):
    """A labelled split: ``images`` is ``{(scene, im): [(obj_id, (x, y, w, h), visib_fract), ...]}``."""
    from pose6d_ros.data.bop import CameraRecord, GtInfoRecord, GtRecord, SceneRecord, save_scene

    K = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    for sid in sorted({s for s, _ in images}):
        ims = {i: inst for (s, i), inst in images.items() if s == sid}
        save_scene(root, SceneRecord(
            scene_id=sid, cameras={i: CameraRecord(K) for i in ims},
            gts={i: [GtRecord(o, np.eye(3), np.array([0, 0, 0.5])) for o, _, _ in inst] for i, inst in ims.items()},
            gt_infos={i: [GtInfoRecord(bbox_obj=b, bbox_visib=b, px_count_all=100, px_count_valid=100,
                                       px_count_visib=int(100 * f), visib_fract=f) for _, b, f in inst]
                      for i, inst in ims.items()}))
    return root


def test_average_precision_by_hand(tmp_path):
    """3 counted GT of object 1 (+1 only 20% visible), 5 ranked detections; AP computed by hand.

    Image (1, 0): g1 (0,0,10,10), g2 (20,0,10,10), g_low (40,0,10,10) 20% visible. Image (1, 1): g3 (0,0,20,20).
    By score: d1 = g1 (IoU 1), d5 = g_low (IoU 1), d2 (60,0,10,10) nothing, d3 (22,0,10,10) g2 with IoU 8/12 = 0.67,
    d4 = g3 (IoU 1).

    min_visib_fract 0.3 (g_low ignored, 3 GT; d5 neither hit nor false positive):
      IoU 0.5: TP, (ign), FP, TP, TP -> precision 1, 1/2, 2/3, 3/4 at recall 1/3, 1/3, 2/3, 1; envelope 1, 3/4, 3/4,
      3/4. Recall points 0..0.33 (34 of 101) -> 1, 0.34..1 (67) -> 3/4: AP = (34 + 67 * 0.75) / 101 = 84.25 / 101.
      IoU 0.75: TP, (ign), FP, FP, TP -> precision 1, 1/2, 1/3, 1/2 at recall 1/3, 1/3, 1/3, 2/3; envelope 1, 1/2,
      1/2, 1/2: 34 points at 1, 33 (0.34..0.66) at 1/2, 34 beyond 2/3 at 0: AP = 50.5 / 101 = 0.5.
      d3 is a hit at 0.5, 0.55, 0.6, 0.65 and a miss from 0.7: AP 0.5:0.95 = (4 * 84.25 + 6 * 50.5) / 1010 = 64 / 101.
    min_visib_fract 0 (4 GT): IoU 0.5: TP, TP, FP, TP, TP -> envelope 1, 1, 4/5, 4/5, 4/5 at recall 1/4 .. 1:
      51 points (0..0.5) at 1, 50 at 4/5: AP = 91 / 101. IoU 0.75: TP, TP, FP, FP, TP -> envelope 1, 1, 2/3, 3/5, 3/5
      at recall 1/4, 1/2, 1/2, 1/2, 3/4: 51 at 1, 25 (0.51..0.75) at 3/5, 25 at 0: AP = 66 / 101.
    """
    from pose6d_ros.data.bop import DetectionRecord
    from pose6d_ros.detection.infer import evaluate_detections

    split = _gt_split(tmp_path / "test", {
        (1, 0): [(1, (0, 0, 10, 10), 1.0), (1, (20, 0, 10, 10), 1.0), (1, (40, 0, 10, 10), 0.2), (3, (0, 30, 5, 5), 1.0)],
        (1, 1): [(1, (0, 0, 20, 20), 1.0)]})

    def det(im, obj, box, score):
        return DetectionRecord(scene_id=1, im_id=im, obj_id=obj, score=score, bbox=box, time=0.01)

    dets = [det(0, 1, (60.0, 0.0, 10.0, 10.0), 0.8), det(1, 1, (0.0, 0.0, 20.0, 20.0), 0.6),
            det(0, 1, (0.0, 0.0, 10.0, 10.0), 0.9), det(0, 1, (22.0, 0.0, 10.0, 10.0), 0.7),
            det(0, 1, (40.0, 0.0, 10.0, 10.0), 0.85),
            det(0, 2, (0.0, 0.0, 10.0, 10.0), 0.9),  # object 2 has no GT: no AP, not in the means
            det(0, 7, (0.0, 0.0, 10.0, 10.0), 0.9)]  # object 7 is not evaluated
    rep = evaluate_detections(dets, split, [1, 2, 3], min_visib_fract=0.3, min_score=0.65)
    c = rep.classes[1]
    assert (c.n_gt, c.n_ignored, c.n_dets) == (3, 1, 5)
    assert c.ap_at(0.5) == pytest.approx(84.25 / 101, abs=1e-12)
    assert c.ap_at(0.75) == pytest.approx(0.5, abs=1e-12)
    assert c.ap_mean == pytest.approx(64 / 101, abs=1e-12)
    # recall at score >= 0.65: d1, d5, d2, d3 -> g1 and g2 found at 0.5, only g1 at 0.75
    assert c.recall_at(0.5) == pytest.approx(2 / 3) and c.recall_at(0.75) == pytest.approx(1 / 3)
    assert np.isnan(rep.classes[2].ap_mean) and rep.classes[2].n_gt == 0 and rep.classes[2].n_dets == 1
    assert rep.classes[3].n_gt == 1 and rep.classes[3].ap_mean == 0.0  # found by nothing
    assert 7 not in rep.classes
    assert rep.mAP(0.5) == pytest.approx((84.25 / 101 + 0.0) / 2)  # over objects 1 and 3
    assert rep.recall_all(0.5) == pytest.approx(2 / 4)

    c0 = evaluate_detections(dets, split, [1], min_visib_fract=0.0).classes[1]
    assert (c0.n_gt, c0.n_ignored) == (4, 0)
    assert c0.ap_at(0.5) == pytest.approx(91 / 101, abs=1e-12)
    assert c0.ap_at(0.75) == pytest.approx(66 / 101, abs=1e-12)
    assert c0.recall_at(0.5) == pytest.approx(1.0)  # min_score 0: every detection counts
    assert "AP50" in rep.summary() and rep.to_dict()["classes"]["1"]["n_gt"] == 3

    with pytest.raises(ValueError, match="scene 1 image 5"):
        evaluate_detections([det(5, 1, (0.0, 0.0, 1.0, 1.0), 0.5)], split, [1])


def test_average_precision_matches_pycocotools(tmp_path):
    """A random case (jittered GT, duplicates, false positives, less visible GT) against pycocotools'
    COCOeval, the reference of the BOP 2D detection task. Less visible GT are given pycocotools'
    ignore through the area range (an area below it), as COCOeval ignores crowd and out-of-range GT."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from pose6d_ros.data.bop import DetectionRecord
    from pose6d_ros.detection.infer import IOU_THRESHOLDS, evaluate_detections

    rng = np.random.default_rng(3)
    images, dets = {}, []
    for im in range(30):
        inst = []
        for _ in range(rng.integers(1, 6)):
            xy, wh = rng.integers(0, 60, 2), rng.integers(5, 40, 2)
            inst.append((int(rng.integers(1, 4)), tuple(int(v) for v in (*xy, *wh)), float(rng.uniform(0, 1))))
        images[(2, im)] = inst
        for obj, (x, y, w, h), _ in inst:
            for _ in range(rng.integers(0, 3)):  # 0-2 detections near each GT (duplicates are false positives)
                j = rng.normal(0, 0.15, 4) * [w, h, w, h]
                dets.append(DetectionRecord(2, im, obj, float(rng.uniform()), (x + j[0], y + j[1], w + j[2], h + j[3])))
        for _ in range(rng.integers(0, 3)):  # pure false positives
            dets.append(DetectionRecord(2, im, int(rng.integers(1, 4)), float(rng.uniform()),
                                        tuple(float(v) for v in (*rng.uniform(0, 60, 2), *rng.uniform(5, 30, 2)))))
    split = _gt_split(tmp_path / "test", images)
    min_visib = 0.3
    rep = evaluate_detections(dets, split, [1, 2, 3], min_visib_fract=min_visib)

    keys = sorted(images)
    coco_gt = COCO()
    coco_gt.dataset = {
        "images": [{"id": n + 1} for n in range(len(keys))], "categories": [{"id": k} for k in (1, 2, 3)],
        "annotations": [{"id": len(keys) * 10 + 10 * n + g, "image_id": n + 1, "category_id": o, "bbox": list(b),
                         "area": 100.0 if f >= min_visib else 0.0, "iscrowd": 0}
                        for n, k in enumerate(keys) for g, (o, b, f) in enumerate(images[k])]}
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes([{"image_id": keys.index((d.scene_id, d.im_id)) + 1, "category_id": d.obj_id,
                                "bbox": list(d.bbox), "score": d.score} for d in dets])
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.params.areaRng, ev.params.areaRngLbl, ev.params.maxDets = [[1e-3, 1e10]], ["all"], [100]
    ev.evaluate()
    ev.accumulate()
    np.testing.assert_allclose(ev.params.iouThrs, IOU_THRESHOLDS)
    prec = ev.eval["precision"][:, :, :, 0, 0]  # (T, R, K)
    for k, obj in enumerate(ev.params.catIds):
        ref = prec[:, :, k].mean(axis=1)
        c = rep.classes[obj]
        assert c.n_gt > 0 and c.n_ignored > 0 and c.n_dets > c.n_gt  # the case exercises all three
        np.testing.assert_allclose(c.ap, ref, atol=1e-12, err_msg=f"object {obj}")
        np.testing.assert_allclose(c.recall, ev.eval["recall"][:, k, 0, 0], atol=1e-12)  # min_score 0: all
    assert 0.05 < rep.mAP() < 0.95  # neither trivial extreme


def test_detection_takes_the_counted_gt_before_a_less_visible_one(tmp_path):
    """COCO's rule: a detection matches a counted GT when one is good enough at the threshold, even if
    an ignored (less visible) GT overlaps it more. Here IoU 1 with the 10%-visible box and 9/11 = 0.82
    with the counted one: a hit at IoU 0.5 .. 0.8 (AP 1), matched to the ignored box from 0.85 (no hit,
    no false positive: AP 0)."""
    from pose6d_ros.data.bop import DetectionRecord
    from pose6d_ros.detection.infer import evaluate_detections

    split = _gt_split(tmp_path / "test", {(1, 0): [(1, (0, 0, 10, 10), 1.0), (1, (1, 0, 10, 10), 0.1)]})
    c = evaluate_detections([DetectionRecord(1, 0, 1, 0.9, (1.0, 0.0, 10.0, 10.0))], split, [1],
                            min_visib_fract=0.3).classes[1]
    np.testing.assert_allclose(c.ap, [1.0] * 7 + [0.0] * 3, atol=1e-12)
    np.testing.assert_allclose(c.recall, [1.0] * 7 + [0.0] * 3)


def test_evaluate_detector_runs_unthresholded_on_the_chosen_images(split, tiny_checkpoint, registry):
    from pose6d_ros.detection.infer import evaluate_detector

    det = Detector.from_file(tiny_checkpoint, min_score=0.3, expect_names=registry.names)
    rep, dets = evaluate_detector(det, split, registry, min_score=0.3, min_visib_fract=0.1, max_images=1)
    assert det.min_score == 0.3  # restored
    assert rep.n_images == 1 and {(d.scene_id, d.im_id) for d in dets} <= {(1, 0)}
    from pose6d_ros.data.bop import load_rgb

    unthresholded = Detector.from_file(tiny_checkpoint, min_score=0.0).detect(load_rgb(split, 1, 0))
    assert len(dets) == len(unthresholded)  # AP sees the low-scoring detections too
    # image (1, 0): objects 1 and 2 counted, object 3 only 5% visible, object 99 no class of the detector
    assert (rep.classes[1].n_gt, rep.classes[2].n_gt, rep.classes[3].n_ignored) == (1, 1, 1)
    assert 99 not in rep.classes and all(0.0 <= c.ap_mean <= 1.0 for c in rep.classes.values() if c.n_gt)
