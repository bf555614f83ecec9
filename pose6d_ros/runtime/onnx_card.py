"""The model card inside an ONNX file (``metadata_props``): written by ``export_onnx``, read by the
ONNX Runtime predictor and :func:`read_onnx_card`.

Every value is a string; ``model_card`` holds the whole card as JSON, the other keys repeat its main
fields for tools that read ONNX metadata (Netron, ``onnx.load``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Union

from pose6d_ros.models.pose_net import ModelCard

__all__ = ["ONNX_FORMAT", "card_metadata", "card_from_metadata", "read_onnx_card"]

ONNX_FORMAT = "pose6d_ros.onnx/1"


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
        "parameters": str(card.parameters),
        "macs_per_crop": str(card.macs_per_crop),
        "training": json.dumps(card.training, sort_keys=True),
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
