"""The one 2D detection record: what the detector returns, what ``ros.conversions`` reads from and writes
to ``vision_msgs/Detection2D``, and what :meth:`runtime.Estimator.estimate` takes.

Kept in a module of its own (no torch, no other package module) so the detector, the ROS conversions
and the estimator share it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

__all__ = ["Detection"]


@dataclass(frozen=True, kw_only=True)
class Detection:
    """One 2D detection; built by keyword only (``Detection(class_id="duck", box=(...), score=0.9)``).

    Attributes:
        class_id: the detector's class: an object name or id (``ObjectRegistry.resolve``); the
            detector and ``vision_msgs`` give the registry name.
        box: ``(x0, y0, x1, y1)`` in continuous image coordinates: edges, not pixel centres, so a full
            ``W x H`` image is ``(-0.5, -0.5, W - 0.5, H - 0.5)`` (``docs/conventions.md``, Crop windows).
        score: detector confidence.
        detection_id: ``vision_msgs/Detection2D.id`` (``""`` when the source gives none).
    """

    class_id: Union[str, int]
    box: Tuple[float, float, float, float]
    score: float = 1.0
    detection_id: str = ""
