"""The ROS 2 layer: the only package that imports rclpy or message types.

It converts messages to core types and back (`conversions`) and wires the core `Estimator` and
detector into nodes. No pose logic lives here.
"""
