"""Export Φ to ONNX with its model card, and read the card back.

The graph takes ``crops`` ``(B, 3, S, S)`` float32 in ``[0, 1]`` and ``object_index`` ``(B,)`` int64
(the row of the model card's object list, i.e. the CIN class of Eq. 4) with a dynamic batch, and
returns ``keypoints`` ``(B, K, 2)`` in normalised crop coordinates. ImageNet normalisation and the
CIN ``γ/β`` lookup (a ``Gather``) are inside the graph. The model card goes into ``metadata_props``.

Command line (console script ``export_onnx``)::

    export_onnx model.pt model.onnx [--registry config/objects.yaml] [--exporter dynamo|torchscript]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch

from pose6d_ros.models.pose_net import ModelCard, PoseNet, load_model

ONNX_FORMAT = "pose6d_ros.onnx/1"
INPUT_NAMES = ("crops", "object_index")
OUTPUT_NAME = "keypoints"
DEFAULT_OPSET = 18


def card_metadata(card: ModelCard) -> dict[str, str]:
    """The ``metadata_props`` written into the ONNX file (all values are strings)."""
    return {
        "format": ONNX_FORMAT,
        "object_ids": json.dumps(list(card.object_ids)),
        "object_names": json.dumps(list(card.object_names)),
        "keypoints": json.dumps([[list(p) for p in obj] for obj in card.keypoints]),
        "crop_size": str(card.crop_size),
        "backbone": card.backbone,
        "conditioning": card.conditioning,
        "crop_padding": repr(card.crop_padding),
        "model_card": card.to_json(),
    }


def card_from_metadata(meta: Mapping[str, str], source: str = "<onnx>") -> ModelCard:
    """Inverse of :func:`card_metadata`; ``ValueError`` naming ``source`` if it is not ours."""
    if meta.get("format") != ONNX_FORMAT or "model_card" not in meta:
        raise ValueError(f"{source}: no pose6d_ros model card in the ONNX metadata (format "
                         f"{meta.get('format')!r}, expected {ONNX_FORMAT!r})")
    return ModelCard.from_json(meta["model_card"])


def read_onnx_card(path: Union[str, os.PathLike]) -> ModelCard:
    """The model card stored in the ONNX file at ``path``."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    proto = onnx.load(str(path), load_external_data=False)
    return card_from_metadata({p.key: p.value for p in proto.metadata_props}, str(path))


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
        card: the model card, stored in ``metadata_props``.
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
        del proto.metadata_props[:]
        for key, value in card_metadata(card).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = f"pose6d_ros pose network: {card.backbone}, {card.conditioning}, crop {S}"
        onnx.checker.check_model(proto)
        final = Path(tmp) / "final.onnx"
        onnx.save(proto, str(final))
        os.replace(final, path)
    model.train(was_training)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``export_onnx``: checkpoint (``save_model``) -> ONNX file."""
    parser = argparse.ArgumentParser(prog="export_onnx", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="model written by pose6d_ros.models.save_model")
    parser.add_argument("output", type=Path, help="ONNX file to write")
    parser.add_argument("--registry", type=Path, default=None,
                        help="object registry YAML to check the model against before exporting")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    args = parser.parse_args(argv)
    model, card = load_model(args.checkpoint)
    if args.registry is not None:
        from pose6d_ros.registry import ObjectRegistry

        card.check_against(ObjectRegistry.from_yaml(args.registry))
    out = export_onnx(model, card, args.output, opset=args.opset, exporter=args.exporter)
    print(f"wrote {out} ({card.backbone}, {card.conditioning}, crop {card.crop_size}, "
          f"objects {list(card.object_names)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
