"""Keypoint predictors: what turns a batch of crops into keypoints for the :class:`Estimator`.

A predictor carries its :class:`~pose6d_ros.models.ModelCard` and implements
``predict(crops, object_index, detection_index) -> (B, K, 2)`` normalised crop coordinates. Three
implementations:

- :class:`TorchPredictor`: Φ in PyTorch eager mode (CPU or CUDA);
- :class:`OnnxPredictor`: the exported graph in ONNX Runtime (TensorRT, CUDA or CPU execution
  provider, the first that works in that order unless overridden);
- :class:`OracleKeypointPredictor`: keypoints projected from known poses through the camera and the
  crop window. It stands in for a trained Φ to test the geometry chain and the ROS node end to end.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch

from pose6d_ros._checks import check_same_batch, check_shape
from pose6d_ros.data.crops import CropBatch
from pose6d_ros.geometry.camera import CameraModel, crop_affine, distort_points, pixels_to_normalized
from pose6d_ros.geometry.keypoints import transform_points
from pose6d_ros.models.pose_net import ModelCard, ModelLoadError, PoseNet, load_model
from pose6d_ros.runtime.onnx_card import card_from_metadata

#: ONNX Runtime execution providers in order of preference.
ORT_PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@runtime_checkable
class KeypointPredictor(Protocol):
    """Crops -> keypoints. ``card`` says which objects (object index = row of ``card.object_ids``)."""

    card: ModelCard
    device: torch.device

    def predict(self, crops: CropBatch, object_index: torch.Tensor, detection_index: torch.Tensor) -> torch.Tensor:
        """Keypoints of the crops.

        Args:
            crops: ``images (B, 3, S, S)`` in ``[0, 1]``, ``K (B, 3, 3)`` crop intrinsics,
                ``windows (B, 4)`` crop windows in the full image.
            object_index: ``(B,)`` long, row of ``card.object_ids`` for each crop.
            detection_index: ``(B,)`` long, position of each crop's detection in the frame's list.

        Returns:
            ``(B, K, 2)`` keypoints in normalised crop coordinates (float32, on ``device``).
        """
        ...


class TorchPredictor:
    """Φ in PyTorch eager mode.

    Args:
        model: the network (switched to eval mode and moved to ``device``).
        card: its model card.
        device: ``"cpu"``, ``"cuda"`` or a ``torch.device``.
    """

    def __init__(self, model: PoseNet, card: ModelCard, device: Union[str, torch.device] = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.card = card

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> "TorchPredictor":
        model, card = load_model(path, map_location=device)
        return cls(model, card, device)

    def predict(self, crops: CropBatch, object_index: torch.Tensor, detection_index: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(crops.images.to(self.device, torch.float32), object_index.to(self.device))


def set_thread_counts(num_threads: int) -> None:
    """Use ``num_threads`` threads for torch's intra-op pool and, where torch still allows it, its
    inter-op pool (it refuses once parallel work has started; the intra-op count is what matters).

    Why: the estimator's work per frame is a few small tensors (crops of a handful of detections, one
    batched PnP). On a CPU shared with other processes, torch's pool costs more than it gains there:
    a 5-detection PnP batch took 169-203 ms with 2 threads on 2 busy cores and 9.9 ms with 1.
    ONNX Runtime sessions take their count from ``intra_op_threads`` (:func:`default_session_options`).
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
    torch.set_num_threads(num_threads)
    if torch.get_num_interop_threads() != num_threads:
        try:
            torch.set_num_interop_threads(num_threads)
        except RuntimeError:  # parallel work has already started in this process: keep torch's pool
            pass


def _gpu_visible() -> bool:
    # Without a visible GPU the CUDA/TensorRT providers only print load errors before falling back.
    return torch.cuda.is_available()


def select_providers(device: str = "auto", providers: Optional[Sequence[str]] = None) -> list[str]:
    """ONNX Runtime providers to try, in order.

    ``providers`` (if given) wins. Otherwise ``device="cpu"`` gives the CPU provider only, and
    ``"auto"``/``"cuda"`` give TensorRT, CUDA, CPU, keeping those this ONNX Runtime build has (GPU
    ones only when a CUDA device is visible).
    """
    import onnxruntime as ort

    if providers:
        return list(providers)
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda' for onnxruntime, got {device!r}")
    available = set(ort.get_available_providers())
    wanted = ORT_PROVIDER_PREFERENCE if device != "cpu" and _gpu_visible() else ("CPUExecutionProvider",)
    return [p for p in wanted if p in available] or ["CPUExecutionProvider"]


def default_session_options(intra_op_threads: int = 0, spin: bool = False):
    """Session options used for inference: every graph optimisation (conv+BN+ReLU fusion, constant
    folding, NCHWc layouts), sequential execution, ``intra_op_threads`` (0: ORT's default).

    Worker threads do not spin-wait by default: on a CPU shared with other processes (the robot's
    other nodes; our 2-core test machine) spinning cost time in ``benchmarks/latency.py``.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(intra_op_threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


class OnnxPredictor:
    """The exported Φ in ONNX Runtime.

    Args:
        path: ``.onnx`` file written by :func:`~pose6d_ros.runtime.onnx_export.export_onnx`.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see :func:`select_providers`).
        providers: explicit execution providers (overrides ``device``).
        intra_op_threads: ONNX Runtime intra-op threads (0: its default, one per physical core).
        cache_dir: where TensorRT keeps its engine cache (default: next to the model).

    Raises:
        FileNotFoundError: no such file.
        ModelLoadError: naming the file, if ONNX Runtime cannot load it (empty, truncated, corrupt)
            or it carries no model card.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        device: str = "auto",
        providers: Optional[Sequence[str]] = None,
        intra_op_threads: int = 0,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        chosen = select_providers(device, providers)
        options = []
        for p in chosen:
            if p == "TensorrtExecutionProvider":
                cache = Path(cache_dir) if cache_dir else path.parent / f".{path.stem}.trt_cache"
                options.append({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                                "trt_fp16_enable": False})
            else:
                options.append({})
        try:
            self.session = ort.InferenceSession(str(path), sess_options=default_session_options(intra_op_threads),
                                                providers=chosen, provider_options=options)
        except Exception as e:  # noqa: BLE001 - ORT raises its own types (InvalidProtobuf, InvalidArgument, Fail)
            # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from m.onnx failed:Protobuf parsing failed.",
            # or "... failed:/onnxruntime_src/.../model.cc:256 onnxruntime::Model::Model(...) Unsupported ..."
            detail = " ".join(str(e).split()).split(" failed:", 1)[-1]
            detail = re.sub(r"^/\S+:\d+ [^ (]+\(.*?\) ", "", detail)[:300]
            raise ModelLoadError(f"ONNX model {path}: cannot be loaded (empty, truncated or not ONNX?): "
                                 f"{detail}") from e
        self.providers = self.session.get_providers()
        try:
            self.card = card_from_metadata(self.session.get_modelmeta().custom_metadata_map, str(path))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(" ".join(str(e).split())) from e
        on_gpu = self.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
        # Outputs come back as host arrays either way; the device only says where crops are made.
        self.device = torch.device("cuda" if on_gpu and _gpu_visible() else "cpu")
        self.path = path

    def predict(self, crops: CropBatch, object_index: torch.Tensor, detection_index: torch.Tensor) -> torch.Tensor:
        images = np.ascontiguousarray(crops.images.detach().to("cpu", torch.float32).numpy())
        index = object_index.detach().to("cpu", torch.int64).numpy()
        (out,) = self.session.run(["keypoints"], {"crops": images, "object_index": index})
        return torch.from_numpy(out).to(self.device)


class OracleKeypointPredictor:
    """Keypoints projected from known poses: ``π(R, t)`` through the lens and into each crop.

    The image keypoints are where the camera actually sees them (with lens distortion), mapped into
    the crop by the crop window, so an :class:`Estimator` using it must undo both to recover the pose.

    Args:
        card: model card giving the objects and their 3D keypoints.
        camera: the camera the frame comes from.
        R: ``(D, 3, 3)`` model-to-camera rotations, one per detection of the frame.
        t: ``(D, 3)`` translations in metres.
    """

    def __init__(self, card: ModelCard, camera: CameraModel, R: torch.Tensor, t: torch.Tensor) -> None:
        check_shape(R, ("D", 3, 3), "R")
        check_shape(t, ("D", 3), "t")
        check_same_batch(("R", R), ("t", t))
        self.card = card
        self.camera = camera
        self.device = torch.device("cpu")
        self.R = R.double()
        self.t = t.double()

    def predict(self, crops: CropBatch, object_index: torch.Tensor, detection_index: torch.Tensor) -> torch.Tensor:
        points = torch.as_tensor(self.card.keypoints_array)[object_index.cpu()]  # (B, K, 3)
        cam = transform_points(points, self.R[detection_index.cpu()], self.t[detection_index.cpu()])
        xy = cam[..., :2] / cam[..., 2:3]
        D = self.camera.D_tensor(torch.float64).expand(xy.shape[0], -1)
        xy = distort_points(xy, D)
        K = self.camera.K_tensor(torch.float64)
        uv = xy @ K[:2, :2].T + K[:2, 2]
        A = crop_affine(crops.windows.detach().cpu().double(), self.card.crop_size)  # (B, 2, 3)
        uv_crop = uv @ A[:, :, :2].transpose(1, 2) + A[:, None, :, 2]
        return pixels_to_normalized(uv_crop, self.card.crop_size).float()


def make_predictor(
    model: Union[str, os.PathLike],
    backend: str = "auto",
    device: str = "auto",
    providers: Optional[Sequence[str]] = None,
    intra_op_threads: int = 0,
) -> KeypointPredictor:
    """Predictor for a model file.

    Args:
        model: a checkpoint (``save_model``, ``.pt``) or an ONNX file (``.onnx``).
        backend: ``"torch"``, ``"onnxruntime"`` or ``"auto"`` (by file extension).
        device: ``"auto"`` (CUDA when usable, else the CPU), ``"cpu"`` or ``"cuda"`` (CUDA or a
            ``ValueError``: see :func:`check_cuda`).
        providers: ONNX Runtime providers (overrides the choice by ``device``).
        intra_op_threads: ONNX Runtime intra-op threads (0: its default).

    Raises:
        FileNotFoundError: no such file.
        ModelLoadError: the file cannot be loaded (names it).
        ValueError: a bad ``backend``, or ``device="cuda"`` without a usable CUDA device.
    """
    path = Path(model)
    backend = resolve_backend(path, backend)
    if device == "cuda" and not providers:
        check_cuda(backend)
    if backend == "onnxruntime":
        return OnnxPredictor(path, device=device, providers=providers, intra_op_threads=intra_op_threads)
    if path.suffix.lower() == ".onnx":
        raise ValueError(f"{path}: the torch backend needs a checkpoint (.pt), not an ONNX file")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return TorchPredictor.from_checkpoint(path, device)


def resolve_backend(model: Union[str, os.PathLike], backend: str = "auto") -> str:
    """``"torch"`` or ``"onnxruntime"``: ``backend``, or for ``"auto"`` the one the file's extension calls for."""
    if backend == "auto":
        return "onnxruntime" if Path(model).suffix.lower() == ".onnx" else "torch"
    if backend not in ("torch", "onnxruntime"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'onnxruntime', got {backend!r}")
    return backend


def check_cuda(backend: str, name: str = "device") -> None:
    """Raise ``ValueError`` (``name`` first) unless ``backend`` (``"torch"``/``"onnxruntime"``) can run
    on CUDA here.

    ``device="cuda"`` is a request, not a preference: silently running on the CPU instead would hide
    a misconfigured robot (wrong driver, CPU-only wheel) behind a slow node. ``"auto"`` falls back.
    """
    if not torch.cuda.is_available():
        raise ValueError(f"{name}: 'cuda' requested, but no CUDA device is usable here "
                         f"(torch.cuda.is_available() is False); use 'cpu'")
    if backend == "onnxruntime":
        import onnxruntime as ort

        if not any(p in ort.get_available_providers() for p in ORT_PROVIDER_PREFERENCE[:2]):
            raise ValueError(f"{name}: 'cuda' requested, but this onnxruntime has no CUDA or TensorRT provider "
                             f"(available: {ort.get_available_providers()}); install onnxruntime-gpu or use 'cpu'")
