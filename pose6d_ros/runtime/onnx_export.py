"""Export Φ to ONNX with its model card, and read the card back.

The graph takes ``crops`` ``(B, 3, S, S)`` float32 in ``[0, 1]`` and ``object_index`` ``(B,)`` int64
(the row of the model card's object list, i.e. the CIN class of Eq. 4) with a dynamic batch, and
returns ``keypoints`` ``(B, K, 2)`` in normalised crop coordinates. ImageNet normalisation and the
CIN ``γ/β`` lookup (a ``Gather``) are inside the graph. The model card goes into ``metadata_props``.

Command line (console script ``export_onnx``)::

    export_onnx model.pt model.onnx [--registry config/objects.yaml] [--exporter dynamo|torchscript]
                [--int8-calibration data/lm-lite/train | crops.npy]
                [--int8-detections data/lm-lite/train_detections.json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch

from pose6d_ros._checks import reading, run_cli
from pose6d_ros._io import atomic_write_bytes
from pose6d_ros._logs import quiet_library_logs
from pose6d_ros.data.bop import BopDataset, load_detections
from pose6d_ros.data.crops import bop_bbox_to_box
from pose6d_ros.geometry.camera import CameraModel
from pose6d_ros.models.pose_net import ModelCard, PoseNet, load_model
from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.runtime.estimator import detection_crops
from pose6d_ros.runtime.onnx_card import card_metadata, read_onnx_card

INPUT_NAMES = ("crops", "object_index")
OUTPUT_NAME = "keypoints"
DEFAULT_OPSET = 18


def export_onnx(
    model: PoseNet,
    card: ModelCard,
    path: Union[str, os.PathLike],
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
) -> Path:
    """Write ``model`` (in eval mode, on the CPU, float32) and ``card`` to ``path`` as one ONNX file.

    Args:
        model: the network; its crop size and object count must match ``card``.
        card: the model card, stored in ``metadata_props`` (with the network's parameter count and
            MACs per crop measured here when the card lacks them).
        path: output ``.onnx`` file (written atomically: temp file + rename).
        opset: ONNX opset.
        exporter: ``"dynamo"`` (``torch.export``-based, the supported path) or ``"torchscript"``
            (the legacy tracer: several times faster to export, deprecated by PyTorch).

    Returns:
        ``path`` as a ``Path``.
    """
    import onnx

    if card.crop_size != model.crop_size or len(card.object_ids) != model.num_objects:
        raise ValueError(f"card (crop {card.crop_size}, {len(card.object_ids)} objects) does not fit the "
                         f"model (crop {model.crop_size}, {model.num_objects} objects)")
    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}")
    if card.parameters is None or card.macs_per_crop is None:
        card = card.with_model_stats(model)  # every exported network says its size and cost
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    net = model.cpu().float().eval()
    S = model.crop_size
    # Two different classes in the example so nothing specialises on one object.
    example = (torch.rand(2, 3, S, S), torch.tensor([0, model.num_objects - 1], dtype=torch.int64))
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporters' deprecation/tracer chatter
            if exporter == "dynamo":
                batch = torch.export.Dim("batch")
                program = torch.onnx.export(
                    net, example, dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
                    output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch}, {0: batch}), verbose=False,
                )
                program.save(str(raw), external_data=False)
            else:
                torch.onnx.export(
                    net, example, str(raw), dynamo=False, opset_version=min(opset, 17),
                    input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                    dynamic_axes={n: {0: "batch"} for n in (*INPUT_NAMES, OUTPUT_NAME)},
                )
        proto = onnx.load(str(raw))
    proto.doc_string = f"pose6d_ros pose network: {card.backbone}, {card.conditioning}, crop {S}"
    onnx.checker.check_model(proto)
    _save_with_metadata(proto, card_metadata(card), path)
    model.train(was_training)
    return path


def _save_with_metadata(proto, meta: Mapping[str, str], path: Path) -> Path:
    """``proto`` with ``meta`` as its only ``metadata_props``, written atomically (``_io``)."""
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return atomic_write_bytes(path, proto.SerializeToString())


def calibration_crops(
    split: Union[str, os.PathLike],
    card: ModelCard,
    *,
    detections: Optional[Union[str, os.PathLike]] = None,
    max_crops: int = 256,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Real crops for INT8 calibration: what the :class:`~pose6d_ros.runtime.Estimator` feeds Φ on
    the images of a BOP split.

    Boxes come from ``detections`` (a BOP detections JSON such as a suite's
    ``train_detections.json``: unlabeled images are enough) or, without it, from the split's visible
    GT boxes (``scene_gt_info.json``). Only the model card's objects are kept, and at most
    ``max_crops`` boxes are drawn at random (seeded) over the whole split. The
    crops are cut by :func:`~pose6d_ros.runtime.estimator.detection_crops`, the Estimator's own path.

    Args:
        split: BOP split folder holding ``rgb/`` and ``scene_camera.json`` per scene.
        card: the model card (crop size, padding, objects).
        detections: optional BOP detections JSON for the split.
        max_crops: upper bound of the number of crops.
        seed: seed of the draw.

    Returns:
        ``crops (N, 3, S, S)`` float32 in ``[0, 1]`` and ``object_index (N,)`` int64 rows of the card.

    Raises:
        ValueError: if the split has no box of the card's objects.
    """
    ds = BopDataset(split)
    rows = {oid: i for i, oid in enumerate(card.object_ids)}
    if detections is not None:
        found = [(d.scene_id, d.im_id, d.obj_id, d.bbox) for d in load_detections(detections)]
    else:
        found = []
        for inst in ds.instances:
            info = ds.gt_info(inst)
            if info is not None and info.bbox_visib[2] > 0 and info.bbox_visib[3] > 0:
                found.append((inst.scene_id, inst.im_id, inst.obj_id, info.bbox_visib))
    found = [f for f in found if f[2] in rows]
    if not found:
        raise ValueError(f"{split}: no boxes of objects {list(card.object_ids)} to calibrate on")
    pick = np.random.default_rng(seed).permutation(len(found))[:max_crops]
    by_image: dict[tuple[int, int], list[int]] = {}
    for i in sorted(int(k) for k in pick):
        by_image.setdefault(found[i][:2], []).append(i)
    crops, index = [], []
    for (sid, iid), members in by_image.items():
        image = ds.load_rgb(sid, iid)
        camera = CameraModel(K=np.asarray(ds.camera(sid, iid).K, dtype=np.float64), width=image.shape[1],
                             height=image.shape[0])
        boxes = bop_bbox_to_box(torch.tensor([found[i][3] for i in members], dtype=torch.float64)).numpy()
        crops.append(detection_crops(image, camera, boxes, card.crop_size, card.crop_padding).images.numpy())
        index.extend(rows[found[i][2]] for i in members)
    return np.concatenate(crops).astype(np.float32), np.asarray(index, dtype=np.int64)


_CALIBRATION_METHODS = {
    "minmax": lambda m: m.MinMax,
    "percentile": lambda m: m.Percentile,
    "entropy": lambda m: m.Entropy,
}


def quantize_onnx(
    src: Union[str, os.PathLike],
    dst: Union[str, os.PathLike],
    calibration_crops: np.ndarray,
    calibration_index: Optional[np.ndarray] = None,
    batch: int = 8,
    method: str = "minmax",
    exclude: Sequence[str] = (),
    source: str = "",
) -> Path:
    """Static INT8 quantisation (QDQ, per-channel weights) of an exported Φ for the CPU.

    Only ``Conv``/``Gemm``/``MatMul`` are quantised (ONNX Runtime fuses the residual ``Add`` too);
    the normalisation, instance norm and the CIN ``γ/β`` lookup stay float. Activation ranges come
    from ``calibration_crops``, which should be real crops of the objects as the Estimator cuts them
    (:func:`calibration_crops`): ranges from random pixels give keypoints ~5x further from the fp32
    graph's (``benchmarks/RESULTS.md``, Latency). The model card is copied over, with
    ``quantization`` and ``quantization_calibration`` (``source``) added. Check accuracy on labelled
    data before deploying an INT8 model: the outputs are no longer equal to the float model's to 1e-4.

    Args:
        src: float ONNX file from :func:`export_onnx`.
        dst: INT8 ONNX file to write.
        calibration_crops: ``(N, 3, S, S)`` float32 crops in ``[0, 1]``.
        calibration_index: ``(N,)`` object indices of the crops (default: cycle through objects).
        batch: calibration batch size (``minmax`` only; the histogram methods run one crop at a time).
        method: activation ranges from ``"minmax"``, ``"percentile"`` (99.999%) or ``"entropy"``.
        exclude: names of nodes to keep in float.
        source: where the calibration crops came from, stored in the metadata.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    card = read_onnx_card(src)
    crops = np.asarray(calibration_crops, dtype=np.float32)
    S = card.crop_size
    if crops.ndim != 4 or crops.shape[1:] != (3, S, S) or len(crops) == 0:
        raise ValueError(f"calibration_crops: expected shape (N, 3, {S}, {S}), got {crops.shape}")
    index = (np.arange(len(crops)) % len(card.object_ids) if calibration_index is None
             else np.asarray(calibration_index, dtype=np.int64))

    if method not in _CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {sorted(_CALIBRATION_METHODS)}, got {method!r}")
    if method != "minmax":
        batch = 1  # the histogram calibrators stack batches, so all must have the same size

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"crops": crops[i:i + batch], "object_index": index[i:i + batch]}
                             for i in range(0, len(crops), batch)])

        def get_next(self):
            return next(self._it, None)

    dst = Path(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=["Conv", "Gemm", "MatMul"], nodes_to_exclude=list(exclude),
                        calibrate_method=_CALIBRATION_METHODS[method](CalibrationMethod))
        proto = onnx.load(str(out))
    meta = card_metadata(card)
    meta["quantization"] = f"int8-static-qdq-{method}"
    meta["quantization_calibration"] = f"{len(crops)} crops; {source or 'unspecified'}"
    return _save_with_metadata(proto, meta, dst)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``export_onnx``: checkpoint (``save_model``) -> ONNX file."""
    parser = argparse.ArgumentParser(prog="export_onnx", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="model written by pose6d_ros.models.save_model")
    parser.add_argument("output", type=Path, help="ONNX file to write")
    parser.add_argument("--registry", type=Path, default=None,
                        help="object registry YAML to check the model against before exporting")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    parser.add_argument("--int8-calibration", type=Path, default=None,
                        help="also write <output>.int8.onnx, statically quantised for the CPU, calibrated on "
                             "this BOP split's crops (a folder, e.g. data/lm-lite/train) or on an .npy of "
                             "(N, 3, S, S) float32 crops in [0, 1]; check its accuracy before use")
    parser.add_argument("--int8-detections", type=Path, default=None,
                        help="BOP detections JSON giving the calibration split's boxes (default: its GT boxes)")
    parser.add_argument("--int8-crops", type=int, default=256, help="at most this many calibration crops")
    parser.add_argument("--log-file", type=Path, default=None,
                        help="where the exporter's and optimiser's own log lines go (default: <output>.export.log, "
                             "e.g. model.export.log)")
    args = parser.parse_args(argv)
    return run_cli("export_onnx", lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    """The body of :func:`main` (bad input raises; ``run_cli`` turns it into one line and exit code 2)."""
    with reading(args.checkpoint, "checkpoint"):
        model, card = load_model(args.checkpoint)
    if args.registry is not None:
        with reading(args.registry, "--registry"):
            card.check_against(ObjectRegistry.from_yaml(args.registry))
    with quiet_library_logs(args.log_file or args.output.with_suffix(".export.log")):  # one line per artefact
        _write(args, model, card)
    return 0


def _write(args: argparse.Namespace, model: PoseNet, card: ModelCard) -> None:
    """Export (and quantise) as asked, printing one line per file written."""
    out = export_onnx(model, card, args.output, opset=args.opset, exporter=args.exporter)
    print(f"wrote {out} ({card.backbone}, {card.conditioning}, crop {card.crop_size}, "
          f"objects {list(card.object_names)})", flush=True)
    if args.int8_calibration is not None:
        if args.int8_calibration.is_dir():
            crops, index = calibration_crops(args.int8_calibration, card, detections=args.int8_detections,
                                             max_crops=args.int8_crops)
            source = f"{args.int8_calibration}" + (f" boxes {args.int8_detections}" if args.int8_detections else
                                                   " GT boxes")
        else:
            with reading(args.int8_calibration, "--int8-calibration"):
                crops, index, source = np.load(args.int8_calibration), None, str(args.int8_calibration)
        q = quantize_onnx(out, out.with_suffix(".int8.onnx"), crops, index, source=source)
        print(f"wrote {q} (INT8, calibrated on {len(crops)} crops of {source})", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
