"""pose6d_ros: 6D object pose from one RGB camera, self-supervised (Sock et al., 2020).

The core library in this package never imports rclpy or ROS message types; only
``pose6d_ros.ros`` does. Training and evaluation therefore run on any machine.
"""

__version__ = "0.1.0"
