"""ament_python package: `colcon build` on a robot, `pip install -e .` in development."""

from glob import glob

from setuptools import find_packages, setup

package_name = "pose6d_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["pose6d_ros", "pose6d_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        ("share/" + package_name + "/training", glob("training/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="pose6d_ros maintainers",
    maintainer_email="maintainers@pose6d-ros.org",
    description="6D object pose from one RGB camera, trained without real pose labels (Sock et al., 2020).",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "estimator_node = pose6d_ros.ros.estimator_node:main",
            "detector_node = pose6d_ros.ros.detector_node:main",
            "train_selfsup = pose6d_ros.training.selfsup:main",
            "train_supervised = pose6d_ros.training.supervised:main",
            "distill = pose6d_ros.training.distill:main",
            "train_detector = pose6d_ros.detection.train:main",
            "detect = pose6d_ros.detection.detect:main",
            "evaluate = pose6d_ros.evaluation.evaluate:main",
            "export_onnx = pose6d_ros.runtime.onnx_export:main",
            "import_bag = pose6d_ros.data.bag:main",
            "make_registry = pose6d_ros.registry_cli:main",
            "build_suite = pose6d_ros.data.build:main",
            "demo = pose6d_ros.demo:main",
            "replay_frames = pose6d_ros.ros.replay:main",
        ],
    },
)
