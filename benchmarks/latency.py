"""Estimator latency, image in -> poses out, torch eager vs ONNX Runtime (CPU), in one run.

    .venv/bin/python benchmarks/latency.py [--frames 30] [--crop-size 64] [--threads 2] [--backbone resnet18]
    .venv/bin/python benchmarks/latency.py --threads 1 --accuracy-only \
        --accuracy-model runs/demo/pose/synthetic/model.pt        # backends' accuracy on lm-lite test
    .venv/bin/python benchmarks/latency.py --threads 1 --detector-only [--detector runs/detector.pt]

Per frame: a 640x480 uint8 RGB image, a distorted camera, 1 / 5 / 13 detections of mixed classes
(lm-lite registry), Φ (default ResNet-18 + CIN, untrained weights: latency does not depend on
them) at the default crop size. Both backends run the same Estimator (crop, undistort, PnP shared);
only the keypoint predictor differs. Reported: wall-clock median and p90 per frame, the time in the
network, the ORT/torch speed-up, and the process CPU time per frame (less sensitive to other
processes on a shared machine; ORT's threads do not spin-wait by default here). Frames alternate
between backends so that load from other processes hits both alike. The ONNX Runtime variants tried
are timed too, on the network alone, with the fp32 throughput (GFLOP/s) beside a same-run sgemm.

The detector (the detector node's work per image) is timed last, on 640x480 uint8 RGB frames: ours
(``--detector`` checkpoint, else a random-init one of the default architecture) in torch eager, and in
ONNX Runtime when ``torch.onnx.export`` (TorchScript exporter, opset 17) exports it; each as a ratio
to torchvision's ``fasterrcnn_mobilenet_v3_large_320_fpn`` (random init, eager, its own 320-pixel
input), timed in the same run with the frames alternating between models.

The INT8 graph is calibrated on real crops: the Estimator's crops of lm-lite's unlabeled train
images (``--calibration-split``), or synthetic renders when that split is not built. With
``--accuracy-model`` the three backends also run on the same GT boxes of a labelled split, and
keypoint error, gap to fp32 and ADD(-S) / 2D-projection recall are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from pose6d_ros.geometry.camera import CameraModel  # noqa: E402
from pose6d_ros.models import DEFAULT_CONFIG, ModelCard, PoseNet, save_model  # noqa: E402
from pose6d_ros.registry import ObjectRegistry  # noqa: E402
from pose6d_ros.runtime import (Detection, Estimator, OnnxPredictor, TorchPredictor, export_onnx,  # noqa: E402
                                quantize_onnx)


class TimedPredictor:
    """Wraps a predictor and accumulates the time spent in ``predict``."""

    def __init__(self, inner) -> None:
        self.inner, self.card, self.device, self.spent = inner, inner.card, inner.device, 0.0

    def predict(self, crops, object_index, detection_index):
        t0 = time.perf_counter()
        out = self.inner.predict(crops, object_index, detection_index)
        self.spent += time.perf_counter() - t0
        return out


def _ort_variant(path: Path, intra_op_threads: int, spin: bool = False, level: str = "all"):
    import onnxruntime as ort

    from pose6d_ros.runtime.backends import default_session_options

    so = default_session_options(intra_op_threads, spin=spin)
    if level == "basic":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def frame(n_det: int, registry: ObjectRegistry, rng: np.random.Generator):
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    names = registry.names
    dets = []
    for i in range(n_det):
        w, h = rng.uniform(60, 150, 2)
        x0, y0 = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
        dets.append(Detection(class_id=names[i % len(names)], box=(x0, y0, x0 + w, y0 + h), score=0.9))
    return image, dets


def int8_calibration(args, card, registry):
    """Real crops for the INT8 ranges: the Estimator's crops of ``--calibration-split`` (lm-lite's
    unlabeled train images and their boxes) when it is there, else synthetic renders of the objects."""
    from pose6d_ros.runtime.onnx_export import calibration_crops

    split = Path(args.calibration_split)
    if split.is_dir():
        crops, index = calibration_crops(split, card, detections=args.calibration_detections,
                                         max_crops=args.calibration_crops)
        return crops, index, f"{len(crops)} crops of {split}" + (
            f" ({Path(args.calibration_detections).name})" if args.calibration_detections else " (GT boxes)")
    from pose6d_ros.data.synthetic import SyntheticConfig, SyntheticCrops

    b = SyntheticCrops(registry, args.calibration_crops, SyntheticConfig(size=card.crop_size),
                       seed=1).batch(range(args.calibration_crops))
    rows = torch.as_tensor([card.object_ids.index(registry.ids[i]) for i in b["obj_index"].tolist()])
    return b["image"].numpy(), rows.numpy(), f"{args.calibration_crops} synthetic crops ({split} not found)"


def macs_per_crop(net: PoseNet) -> int:
    """Multiply-accumulates of one crop through the convolutions and linear layers (the rest is < 1%)."""
    total = [0]

    def hook(m, _inp, out):
        k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] if isinstance(m, torch.nn.Conv2d) \
            else m.in_features
        total[0] += out.numel() * k

    hooks = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        net(torch.rand(1, 3, net.crop_size, net.crop_size), torch.tensor([0]))
    for h in hooks:
        h.remove()
    return total[0]


def sgemm_gflops(n: int = 2048, reps: int = 3) -> float:
    """Float32 matrix-product throughput of torch on this CPU and thread count: a same-run reference
    for the fp32 FMA throughput the convolutions of both backends can reach (ONNX Runtime's NCHWc
    convolutions reach or pass it)."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def accuracy(args) -> None:
    """torch vs ORT fp32 vs ORT int8 on the same detections of a labelled BOP split, one Estimator each.

    Detections are the split's visible GT boxes of each scene's target object (LINEMOD protocol, as
    ``evaluate``). The INT8 graph is calibrated on real crops (``calibration_crops``) of another split.
    Reported: keypoint error against the ground-truth projection (image px), the keypoint gap to the
    fp32 graph, and ADD(-S) at 10% / 2D projection at 5 px recall (``evaluation.score_predictions``).
    """
    from pose6d_ros.data.bop import BopDataset
    from pose6d_ros.data.crops import bop_bbox_to_box
    from pose6d_ros.evaluation.evaluate import InstancePrediction, score_predictions
    from pose6d_ros.geometry.keypoints import project_points
    from pose6d_ros.models import load_model
    from pose6d_ros.data.target_crops import items_from_split

    split = Path(args.accuracy_split)
    registry = ObjectRegistry.from_yaml(args.accuracy_registry or split.parent / "objects.yaml")
    net, card = load_model(args.accuracy_model)
    tmp = Path(tempfile.mkdtemp(prefix="pose6d_accuracy_"))
    export_onnx(net, card, tmp / "model.onnx", exporter="dynamo")
    calib, calib_index, calib_source = int8_calibration(args, card, registry)
    quantize_onnx(tmp / "model.onnx", tmp / "model.int8.onnx", calib, calib_index, source=calib_source)
    estimators = {
        "torch eager": Estimator(TorchPredictor(net, card, "cpu"), registry),
        "ORT CPU fp32": Estimator(tmp / "model.onnx", registry, backend="onnxruntime", device="cpu",
                                  intra_op_threads=args.threads),
        "ORT CPU int8": Estimator(tmp / "model.int8.onnx", registry, backend="onnxruntime", device="cpu",
                                  intra_op_threads=args.threads),
    }
    items = items_from_split(split, list(card.object_ids))
    if args.accuracy_limit:
        items = [items[i] for i in np.linspace(0, len(items) - 1, args.accuracy_limit).round().astype(int)]
    ds = BopDataset(split)
    kp3 = torch.as_tensor(card.keypoints_array, dtype=torch.float64)
    row = {oid: i for i, oid in enumerate(card.object_ids)}
    preds = {k: [] for k in estimators}
    kps = {k: [] for k in estimators}
    gt_kps = []
    for it in items:
        image = ds.load_rgb(it.scene_id, it.im_id)
        K = np.asarray(ds.camera(it.scene_id, it.im_id).K, dtype=np.float64)
        camera = CameraModel(K=K, width=image.shape[1], height=image.shape[0])
        box = tuple(bop_bbox_to_box(torch.tensor(it.bbox, dtype=torch.float64)).tolist())
        R_gt, t_gt = torch.as_tensor(it.R)[None], torch.as_tensor(it.t)[None]
        gt_kps.append(project_points(kp3[row[it.obj_id]][None], R_gt, t_gt, torch.as_tensor(K)[None])[0].numpy())
        for name, est in estimators.items():
            (pose,) = est.estimate(image, camera, [Detection(class_id=it.obj_id, box=box, score=1.0)])
            kps[name].append(pose.keypoints if pose.keypoints is not None else np.full((len(kp3[0]), 2), np.nan))
            preds[name].append(InstancePrediction(
                scene_id=it.scene_id, im_id=it.im_id, obj_id=it.obj_id,
                R=pose.R if pose.ok else np.eye(3), t=pose.t if pose.ok else np.zeros(3),
                R_gt=it.R, t_gt=it.t, K=K, failed=not pose.ok, time=0.0))
    gt = np.stack(gt_kps)
    print(f"\n# accuracy: {args.accuracy_model} ({card.backbone}, {card.conditioning}, crop {card.crop_size}, "
          f"objects {list(card.object_names)}) on {split}, {len(items)} GT boxes; INT8 calibrated on {calib_source}")
    print(f"{'backend':<13} | kp err median px | kp err p90 px | gap to fp32 median / max px | ADD(-S) % "
          f"| 2D proj 5px % | PnP failed")
    ref = np.stack(kps["ORT CPU fp32"])
    for name in estimators:
        k = np.stack(kps[name])
        err = np.linalg.norm(k - gt, axis=-1).mean(axis=1)  # mean over keypoints, per instance
        gap = np.linalg.norm(k - ref, axis=-1)
        mean = score_predictions(preds[name], registry).mean()
        print(f"{name:<13} | {np.nanmedian(err):16.2f} | {np.nanpercentile(err, 90):13.2f} | "
              f"{np.nanmedian(gap):12.3f} / {np.nanmax(gap):8.3f} | {mean['ADD(-S)']:9.1f} | "
              f"{mean['2D proj 5px']:13.1f} | {sum(p.failed for p in preds[name])}")


def _time_frames(models: dict, frames: list, warmup: int) -> dict:
    """``{name: (wall ms list, CPU ms list)}`` of ``models[name](image)`` over ``frames`` (the first
    ``warmup`` untimed); frames alternate between models so that outside load hits all alike."""
    out = {k: ([], []) for k in models}
    for i, image in enumerate(frames):
        for name, fn in models.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn(image)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if i >= warmup:
                out[name][0].append(dt * 1e3)
                out[name][1].append(dc * 1e3)
    return out


def _export_detector_onnx(model: torch.nn.Module, path: Path, size: tuple) -> str:
    """Export the torchvision Faster R-CNN for one ``(3, H, W)`` float image in [0, 1] (the fixed
    ``size``); returns "" or the one-line reason it failed."""
    import warnings

    try:
        with warnings.catch_warnings():  # the tracer's TracerWarnings on the detection heads' Python logic
            warnings.simplefilter("ignore")
            torch.onnx.export(model, ([torch.rand(3, *size)],), str(path), opset_version=17, dynamo=False,
                              input_names=["image"], output_names=["boxes", "labels", "scores"])
        return ""
    except Exception as e:  # noqa: BLE001 - reported in the output, not hidden
        return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def detector_latency(args, registry: ObjectRegistry) -> None:
    """Per 640x480 frame: our detector in torch eager and ONNX Runtime against torchvision's
    fasterrcnn_mobilenet_v3_large_320_fpn (see the module docstring)."""
    import inspect

    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    from pose6d_ros.detection.infer import Detector, box_iou
    from pose6d_ros.detection.model import DetectorSpec, build_from_spec, load_detector

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.detector:
        model, spec, _ = load_detector(args.detector, "cpu")
        source = args.detector
    else:
        spec = DetectorSpec(object_ids=tuple(registry.ids), object_names=tuple(registry.names))
        random_init = {"pretrained": False} if "pretrained" in inspect.signature(build_from_spec).parameters else {}
        model = build_from_spec(spec, **random_init).eval()
        source = "random init"
    ours = Detector(model, spec, "cpu", min_score=args.detector_min_score)
    reference = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None).eval()

    def run_reference(image):
        with torch.no_grad():
            reference([torch.from_numpy(image).permute(2, 0, 1).float() / 255.0])

    models = {"reference: tv mobilenet_v3 320 fpn": run_reference, "ours, torch eager": ours.detect}
    tmp = Path(tempfile.mkdtemp(prefix="pose6d_det_latency_"))
    failure = _export_detector_onnx(ours.model, tmp / "detector.onnx", (480, 640))
    rng = np.random.default_rng(1)
    frames = [frame(0, registry, rng)[0] for _ in range(args.warmup + args.frames)]
    agreement = ""
    if not failure:
        sess = _ort_variant(tmp / "detector.onnx", args.threads)

        def run_ort(image):
            x = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0
            boxes, labels, scores = sess.run(None, {"image": x})
            keep = scores >= ours.min_score
            return boxes[keep], labels[keep], scores[keep]

        models["ours, ONNX Runtime"] = run_ort
        # The same frame both ways: boxes of the ORT graph that eager torch also found (IoU > 0.99, same
        # class). Near-equal scores of an untrained head may swap ranks at the 100-box cut.
        with torch.no_grad():
            eager = ours.model([torch.from_numpy(frames[0]).permute(2, 0, 1).float() / 255.0])[0]
        boxes, labels, scores = sess.run(None, {"image": frames[0].transpose(2, 0, 1).astype(np.float32) / 255.0})
        iou = box_iou(torch.from_numpy(boxes).double(), eager["boxes"].double())
        same = (iou > 0.99) & (torch.from_numpy(labels)[:, None] == eager["labels"][None])
        n = min(10, len(scores), len(eager["scores"]))
        top = float(np.abs(np.sort(scores)[::-1][:n] - eager["scores"].numpy()[:n]).max()) if n else 0.0
        agreement = (f"ORT vs eager on one frame: {len(boxes)} / {len(eager['boxes'])} boxes, "
                     f"{100 * float(same.any(1).double().mean()) if len(boxes) else 100:.0f}% of ORT's found by eager "
                     f"(IoU > 0.99, same class), top-{n} scores max |diff| {top:.1e}")
    times = _time_frames(models, frames, args.warmup)
    arch = f"{spec.arch}, input {spec.min_size}/{spec.max_size} px, box head {spec.box_head_dim}"
    print(f"\n# detector per 640x480 frame on the CPU, {args.threads} thread(s), {args.frames} frames: ours {arch} "
          f"({source}); reference torchvision fasterrcnn_mobilenet_v3_large_320_fpn, random init, eager, "
          f"input 320/640 px (the same frames, alternating)")
    print(f"# load average: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)")
    if failure:
        print(f"# ONNX export failed (torch.onnx.export, TorchScript exporter, opset 17): {failure}")
    else:
        print(f"# ONNX: torch.onnx.export, TorchScript exporter, opset 17, input fixed at 3x480x640; {agreement}")
    ref_wall = statistics.median(times["reference: tv mobilenet_v3 320 fpn"][0])
    ref_cpu = statistics.median(times["reference: tv mobilenet_v3 320 fpn"][1])
    print(f"{'model':<36} | {'median ms':>9} | {'p90 ms':>7} | {'x reference':>11} | {'CPU ms':>7} | x ref CPU")
    for name, (wall, cpu) in times.items():
        med, c = statistics.median(wall), statistics.median(cpu)
        print(f"{name:<36} | {med:9.1f} | {float(np.percentile(wall, 90)):7.1f} | {med / ref_wall:10.2f}x "
              f"| {c:7.1f} | {c / ref_cpu:.2f}x")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=30, help="timed frames per backend and detection count")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--crop-size", type=int, default=DEFAULT_CONFIG["crop_size"])
    p.add_argument("--backbone", default=DEFAULT_CONFIG["backbone"])
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    p.add_argument("--counts", type=int, nargs="+", default=[1, 5, 13])
    p.add_argument("--accuracy-model", default=None,
                   help="trained checkpoint: also compare the backends' accuracy on --accuracy-split")
    p.add_argument("--accuracy-split", default="data/lm-lite/test")
    p.add_argument("--accuracy-registry", default=None, help="default: objects.yaml next to the split")
    p.add_argument("--accuracy-limit", type=int, default=0, help="evaluate this many boxes, spread evenly (0: all)")
    p.add_argument("--calibration-split", default="data/lm-lite/train", help="INT8 calibration images")
    p.add_argument("--calibration-detections", default="data/lm-lite/train_detections.json",
                   help="boxes of the calibration images (BOP detections JSON; empty: the split's GT boxes)")
    p.add_argument("--calibration-crops", type=int, default=256)
    p.add_argument("--accuracy-only", action="store_true", help="skip the latency tables")
    p.add_argument("--detector", default=None, metavar="PATH",
                   help="detector checkpoint to time (default: a random-init detector of the default architecture)")
    p.add_argument("--detector-min-score", type=float, default=0.5, help="the detector node's min_score (0.5)")
    p.add_argument("--detector-only", action="store_true", help="only the detector table")
    p.add_argument("--no-detector", action="store_true", help="skip the detector table")
    args = p.parse_args(argv)
    args.calibration_detections = args.calibration_detections or None
    if args.accuracy_only:
        torch.set_num_threads(args.threads)
        accuracy(args)
        return 0

    torch.set_num_threads(args.threads)
    registry = ObjectRegistry.from_yaml(ROOT / "config" / "objects_lm_lite.yaml")
    if args.detector_only:
        detector_latency(args, registry)
        return 0
    camera = CameraModel(K=np.array([[572.4, 0, 325.3], [0, 573.6, 242.0], [0, 0, 1]]), width=640, height=480,
                         distortion_model="plumb_bob", D=np.array([-0.1, 0.02, 0.0005, -0.0005, 0.0]))
    torch.manual_seed(0)
    net = PoseNet.from_config({"num_objects": len(registry), "crop_size": args.crop_size,
                               "backbone": args.backbone}).eval()
    card = ModelCard.for_model(net, registry)
    tmp = Path(tempfile.mkdtemp(prefix="pose6d_latency_"))
    save_model(tmp / "model.pt", net, card)
    export_onnx(net, card, tmp / "model.onnx", exporter="dynamo")
    calib, calib_index, calib_source = int8_calibration(args, card, registry)
    quantize_onnx(tmp / "model.onnx", tmp / "model.int8.onnx", calib, calib_index, source=calib_source)

    backends = {
        "torch eager": Estimator(TimedPredictor(TorchPredictor(net, card, "cpu")), registry),
        "ORT CPU": Estimator(TimedPredictor(OnnxPredictor(tmp / "model.onnx", device="cpu",
                                                          intra_op_threads=args.threads)), registry),
        "ORT CPU int8": Estimator(TimedPredictor(OnnxPredictor(tmp / "model.int8.onnx", device="cpu",
                                                               intra_op_threads=args.threads)), registry),
    }
    print(f"# {len(registry)} objects, backbone {card.backbone}, crop {card.crop_size}, threads {args.threads}, "
          f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}")
    print(f"# INT8 calibrated on {calib_source}")
    print(f"# load average at start: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)")
    print(f"{'detections':>10} | {'backend':<13} | {'median ms':>9} | {'p90 ms':>7} | {'network ms':>10} "
          f"| speed-up | CPU ms | CPU speed-up")
    rng = np.random.default_rng(0)
    for n in args.counts:
        frames = [frame(n, registry, rng) for _ in range(args.warmup + args.frames)]
        times = {k: [] for k in backends}
        cpu = {k: [] for k in backends}
        net_ms = {k: [] for k in backends}
        for i, (image, dets) in enumerate(frames):
            for name, est in backends.items():
                est.predictor.spent = 0.0
                c0, t0 = time.process_time(), time.perf_counter()
                out = est.estimate(image, camera, dets)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                assert len(out) == n
                if i >= args.warmup:
                    times[name].append(dt * 1e3)
                    cpu[name].append(dc * 1e3)
                    net_ms[name].append(est.predictor.spent * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        for name in backends:
            p90 = float(np.percentile(times[name], 90))
            ratio = med["torch eager"] / med[name]
            cpu_ratio = statistics.median(cpu["torch eager"]) / statistics.median(cpu[name])
            print(f"{n:>10} | {name:<13} | {med[name]:9.1f} | {p90:7.1f} | {statistics.median(net_ms[name]):10.1f} "
                  f"| {ratio:7.2f}x | {statistics.median(cpu[name]):6.1f} | {cpu_ratio:.2f}x")

    print("\n# network alone (predict on ready crops), ONNX Runtime variants; speed-up over torch eager")
    variants = {
        f"ORT all-opt, {args.threads} thr": dict(intra_op_threads=args.threads),
        "ORT all-opt, 1 thr": dict(intra_op_threads=1),
        f"ORT all-opt, {args.threads} thr, spin": dict(intra_op_threads=args.threads, spin=True),
        f"ORT basic-opt, {args.threads} thr": dict(intra_op_threads=args.threads, level="basic"),
    }
    sessions = {k: _ort_variant(tmp / "model.onnx", **v) for k, v in variants.items()}
    sessions[f"ORT int8, {args.threads} thr"] = _ort_variant(tmp / "model.int8.onnx", args.threads)
    torch_pred = TorchPredictor(net, card, "cpu")
    macs = macs_per_crop(net)
    peak = sgemm_gflops()
    print(f"# {macs / 1e9:.3f} GMAC per crop; torch sgemm on {args.threads} thread(s): {peak:.0f} GFLOP/s; "
          f"fp32 GFLOP/s of torch / first ORT variant in brackets")
    print(f"{'batch':>5} | {'torch ms':>8} | " + " | ".join(f"{k:>26}" for k in sessions))
    for n in args.counts:
        crops = torch.rand(n, 3, card.crop_size, card.crop_size)
        idx = torch.arange(n) % len(registry)
        feed = {"crops": crops.numpy(), "object_index": idx.numpy()}
        t_torch, t_ort = [], {k: [] for k in sessions}
        for i in range(args.warmup + args.frames):
            t0 = time.perf_counter()
            with torch.inference_mode():
                torch_pred.model(crops, idx)
            t_torch.append(time.perf_counter() - t0)
            for k, sess in sessions.items():
                t0 = time.perf_counter()
                sess.run(None, feed)
                t_ort[k].append(time.perf_counter() - t0)
        mt = statistics.median(t_torch[args.warmup:]) * 1e3
        cells = []
        for k in sessions:
            mo = statistics.median(t_ort[k][args.warmup:]) * 1e3
            cells.append(f"{mo:8.1f} ms ({mt / mo:4.2f}x)".rjust(26))
        first = statistics.median(t_ort[next(iter(sessions))][args.warmup:]) * 1e3
        flops = [2 * macs * n / (ms * 1e-3) / 1e9 for ms in (mt, first)]
        print(f"{n:>5} | {mt:8.1f} | " + " | ".join(cells) + f" | [{flops[0]:.0f} / {flops[1]:.0f} GFLOP/s]")
    if not args.no_detector:
        detector_latency(args, registry)
    if args.accuracy_model:
        accuracy(args)
    print(f"# load average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
