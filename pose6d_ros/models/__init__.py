"""The pose network Φ (Sec. 3.1, 3.3): backbones, object conditioning (CIN, Eq. 4) and baselines."""

from pose6d_ros.models.backbones import Backbone, available_backbones, build_backbone, register_backbone
from pose6d_ros.models.conditioning import ConditionalInstanceNorm, NoConditioning, OneHotConditioning
from pose6d_ros.models.pose_net import (DEFAULT_CONFIG, ModelCard, PoseNet, count_macs, count_parameters, load_model,
                                        save_model)

__all__ = [
    "Backbone", "available_backbones", "build_backbone", "register_backbone",
    "ConditionalInstanceNorm", "NoConditioning", "OneHotConditioning",
    "DEFAULT_CONFIG", "ModelCard", "PoseNet", "count_macs", "count_parameters", "load_model", "save_model",
]
