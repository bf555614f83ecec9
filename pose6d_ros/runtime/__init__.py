"""Inference without ROS: the :class:`Estimator`, keypoint predictors (torch, ONNX Runtime, oracle)
and ONNX export."""

from pose6d_ros.runtime.backends import (
    KeypointPredictor,
    OnnxPredictor,
    OracleKeypointPredictor,
    TorchPredictor,
    make_predictor,
    select_providers,
)
from pose6d_ros.runtime.detection import Detection
from pose6d_ros.runtime.estimator import SKIP_REASONS, Estimator, PoseEstimate
from pose6d_ros.runtime.onnx_card import read_onnx_card
from pose6d_ros.runtime.onnx_export import export_onnx, quantize_onnx

__all__ = [
    "KeypointPredictor", "OnnxPredictor", "OracleKeypointPredictor", "TorchPredictor", "make_predictor",
    "select_providers", "SKIP_REASONS", "Detection", "Estimator", "PoseEstimate", "export_onnx",
    "quantize_onnx", "read_onnx_card",
]
