"""Bring up the Faster R-CNN detector (optional) and the pose estimator.

    ros2 launch pose6d_ros estimator.launch.py model:=/path/model.onnx objects:=/path/objects.yaml \
        image_topic:=/camera/color/image_raw camera_info_topic:=/camera/color/camera_info device:=cuda

Where `ros2 launch` is not installed (ROS 2 from PyPI wheels), the same file and arguments run with
`python -m pose6d_ros.ros.launch_graph launch/estimator.launch.py model:=... detector_model:=...`.
`use_detector:=false detections_topic:=<topic>` takes boxes from another detector instead.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("pose6d_ros")
    arg = LaunchConfiguration
    args = [
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "estimator.yaml"),
                              description="Estimator parameters file"),
        DeclareLaunchArgument("detector_config", default_value=os.path.join(share, "config", "detector.yaml"),
                              description="Detector parameters file"),
        DeclareLaunchArgument("model", default_value="", description="Pose network (.onnx or .pt)"),
        DeclareLaunchArgument("objects", default_value=os.path.join(share, "config", "objects_lm_lite.yaml"),
                              description="Object registry YAML"),
        DeclareLaunchArgument("detector_model", default_value="", description="Detector checkpoint (.pt)"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image input of both nodes"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info",
                              description="sensor_msgs/CameraInfo input of the estimator"),
        DeclareLaunchArgument("detections_topic", default_value="/detections",
                              description="vision_msgs/Detection2DArray from the detector to the estimator"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu or cuda"),
        DeclareLaunchArgument("use_detector", default_value="true",
                              description="Start the bundled detector; false to use another Detection2DArray source"),
    ]
    detector = Node(
        package="pose6d_ros",
        executable="detector_node",
        name="pose6d_detector",
        parameters=[arg("detector_config"), {
            "model": arg("detector_model"), "objects": arg("objects"), "device": arg("device"),
            "image_topic": arg("image_topic"), "detections_topic": arg("detections_topic"),
        }],
        condition=IfCondition(arg("use_detector")),
        output="screen",
    )
    estimator = Node(
        package="pose6d_ros",
        executable="estimator_node",
        name="pose6d_estimator",
        parameters=[arg("config"), {
            "model": arg("model"), "objects": arg("objects"), "device": arg("device"),
            "image_topic": arg("image_topic"), "camera_info_topic": arg("camera_info_topic"),
            "detections_topic": arg("detections_topic"),
        }],
        output="screen",
    )
    return LaunchDescription(args + [detector, estimator])
