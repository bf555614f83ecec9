"""Independent reference renderer: pyrender (OpenGL) on OSMesa, pixel-aligned with OpenCV.

Used to check the differentiable rasterizer and to render the "simulated real" domain (specular
materials, coloured point/spot/directional lights, shadows, several objects per frame).

Why it is built the way it is:
- One ``pyrender.Scene`` and one ``OffscreenRenderer`` per instance, nodes moved with ``set_pose``:
  building a scene per frame on OSMesa leaks memory (about 22 GB after 6,000 frames).
- Pixel alignment: OpenGL samples pixel ``j`` at window coordinate ``j + 0.5`` while OpenCV puts the
  pixel centre at ``u = j`` (docs/conventions.md), so the principal point handed to pyrender is
  shifted by +0.5 px.
- BOP/OpenCV camera frame (x right, y down, z forward) -> OpenGL camera frame (y up, z backward):
  flip y and z, i.e. the camera node's pose is ``diag(1, -1, -1, 1)``.
- pyrender is imported through ``rendering/_gl.py`` (OSMesa platform; torch's compiler stack loaded
  first, or torch's first optimiser step after an OSMesa context exists segfaults).
- Faces are drawn two-sided (``SKIP_CULL_FACES``) because pybullet_data/OBJ windings are not always
  consistent.  pyrender ignores that flag in its segmentation (and depth-only) pass and culls back
  faces there, so the label pass draws a second copy of each mesh holding both windings of every
  face.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from pose6d_ros.rendering._gl import import_pyrender
from pose6d_ros.rendering.mesh import Mesh

__all__ = [
    "Material",
    "Light",
    "ReferenceFrame",
    "PyrenderReference",
    "OPENCV_TO_OPENGL",
]

#: Camera pose in the OpenCV camera frame that makes pyrender's (OpenGL) camera look along +z, y down.
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Material:
    """A glTF metallic-roughness material; the base colour multiplies the mesh's vertex colours.

    ``metallic=0, roughness=1`` is matte (near-Lambertian); low roughness gives specular highlights.
    """

    metallic: float = 0.0
    roughness: float = 1.0
    base_color: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Light:
    """A light in the OpenCV camera frame (metres).

    Attributes:
        kind: ``"directional"``, ``"point"`` or ``"spot"``.
        color: RGB in [0, 1].
        intensity: pyrender's units (W/m^2 for directional, candela-ish for point/spot: a point light
            at 1 m needs roughly ``4*pi`` times a directional one's intensity for the same brightness).
        direction: where the light travels (directional, spot), camera frame; default along +z (a
            headlight).
        position: where the light is (point, spot), camera frame.
        inner_cone_angle, outer_cone_angle: spot cone, radians.
        shadows: cast shadows from this light (pyrender implements them for directional and spot
            lights only).
    """

    kind: str = "directional"
    color: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    intensity: float = 3.0
    direction: Tuple[float, float, float] = (0.0, 0.0, 1.0)
    position: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    inner_cone_angle: float = 0.0
    outer_cone_angle: float = np.pi / 4.0
    shadows: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("directional", "point", "spot"):
            raise ValueError(f"Light.kind: expected directional/point/spot, got {self.kind!r}")
        if self.kind == "point" and self.shadows:
            raise ValueError("Light.shadows: pyrender has no shadows for point lights; use a spot light")


@dataclass(frozen=True)
class ReferenceFrame:
    """One rendered frame.

    Attributes:
        rgb: ``(H, W, 3)`` uint8.
        depth: ``(H, W)`` float32 metres, 0 where empty.
        labels: ``(H, W)`` int32: ``k + 1`` where the ``k``-th object of the call is visible, 0 elsewhere.
    """

    rgb: np.ndarray
    depth: np.ndarray
    labels: np.ndarray

    def mask(self, k: int) -> np.ndarray:
        """``(H, W)`` bool visible mask of the ``k``-th object of the call."""
        return self.labels == k + 1


def _pose_matrix(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = R
    m[:3, 3] = t
    return m


def _look_along(direction: Sequence[float], position: Sequence[float]) -> np.ndarray:
    """4x4 pose (OpenGL convention: the light shines along its -z) in the OpenCV camera frame."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    z = -d
    helper = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, np.asarray(position, dtype=np.float64)
    return m


class StableProgramCache:
    """pyrender's shader cache keyed WITHOUT the GL context object.

    pyrender keys its cache by ``OpenGL.contextdata.getContext()``; under OSMesa that is a new Python
    object on every call, so every frame compiled (and leaked) a fresh shader program: about 3 MB
    per 640x480 frame, gigabytes per build. One renderer owns one context, so the shader names and
    defines are a sufficient key.
    """

    def __init__(self, pyrender_module) -> None:
        self._inner = pyrender_module.shader_program.ShaderProgramCache()
        self._programs: dict = {}

    def get_program(self, vertex_shader, fragment_shader, geometry_shader=None, defines=None):
        key = (vertex_shader, fragment_shader, geometry_shader, tuple(sorted((defines or {}).items())))
        prog = self._programs.get(key)
        if prog is None:
            prog = self._inner.get_program(vertex_shader, fragment_shader, geometry_shader, defines)
            self._programs[key] = prog
        return prog

    def clear(self) -> None:
        self._inner.clear()
        self._programs.clear()


def install_stable_shader_cache(offscreen_renderer, pyrender_module) -> None:
    """Give an ``OffscreenRenderer`` a :class:`StableProgramCache` (call once, after creating it)."""
    offscreen_renderer._renderer._program_cache = StableProgramCache(pyrender_module)


class PyrenderReference:
    """Renders meshes with pyrender at BOP poses and OpenCV intrinsics.

    Example:
        >>> ref = PyrenderReference([load_mesh("duck.obj", scale=0.07)])
        >>> frame = ref.render([0], R[None], t[None], K, 128, 128)

    Args:
        meshes: the objects; an object id is an index into this list.
        material: default material of every object (``materials`` overrides per object id).
        materials: per object id materials.
        lights: lights in the camera frame.  Default: one white headlight.
        ambient: ambient light RGB.
        bg_color: background RGB in [0, 1].
        znear, zfar: clip planes, metres.
        smooth: smooth (vertex-normal) shading; flat shading otherwise.
        max_instances: copies of the same object allowed in one frame.
    """

    def __init__(
        self,
        meshes: Sequence[Mesh],
        material: Optional[Material] = None,
        materials: Optional[Dict[int, Material]] = None,
        lights: Optional[Sequence[Light]] = None,
        ambient: Tuple[float, float, float] = (0.3, 0.3, 0.3),
        bg_color: Tuple[float, float, float] = (0.0, 0.0, 0.0),
        znear: float = 0.01,
        zfar: float = 100.0,
        smooth: bool = True,
        max_instances: int = 4,
    ) -> None:
        pyrender = import_pyrender()
        self._pyrender = pyrender
        if len(meshes) == 0:
            raise ValueError("PyrenderReference: need at least one mesh")
        self.meshes = list(meshes)
        self.znear, self.zfar = float(znear), float(zfar)
        self.max_instances = int(max_instances)
        self.scene = pyrender.Scene(
            bg_color=np.r_[np.asarray(bg_color, dtype=np.float64), 0.0],
            ambient_light=np.asarray(ambient, dtype=np.float64),
        )
        default = material or Material()
        materials = materials or {}
        self._tm = [m.to_trimesh() for m in self.meshes]
        self._materials = [materials.get(i, default) for i in range(len(self.meshes))]
        # node pool: (object id, copy) -> (colour node, its mesh, label node, its mesh); created
        # lazily and kept (adding/removing nodes per frame would re-upload buffers).
        self._pool: Dict[Tuple[int, int], Tuple[object, object, object, object]] = {}
        self._smooth = smooth
        self._camera = pyrender.IntrinsicsCamera(1.0, 1.0, 0.0, 0.0, znear=self.znear, zfar=self.zfar)
        self._camera_node = self.scene.add(self._camera, pose=OPENCV_TO_OPENGL)
        self._light_nodes: List[object] = []
        self._shadow_flags = 0
        self.set_lights(lights if lights is not None else [Light()])
        self._renderer = None
        self._size: Tuple[int, int] = (0, 0)

    # -- scene management --------------------------------------------------------------------
    def set_lights(self, lights: Sequence[Light]) -> None:
        """Replace the lights (cheap: lights carry no GPU buffers)."""
        pr = self._pyrender
        for node in self._light_nodes:
            self.scene.remove_node(node)
        self._light_nodes = []
        flags = 0
        for light in lights:
            color = np.asarray(light.color, dtype=np.float64)
            if light.kind == "directional":
                obj = pr.DirectionalLight(color=color, intensity=light.intensity)
                flags |= pr.RenderFlags.SHADOWS_DIRECTIONAL if light.shadows else 0
            elif light.kind == "point":
                obj = pr.PointLight(color=color, intensity=light.intensity)
                flags |= pr.RenderFlags.SHADOWS_POINT if light.shadows else 0
            else:
                obj = pr.SpotLight(
                    color=color,
                    intensity=light.intensity,
                    innerConeAngle=light.inner_cone_angle,
                    outerConeAngle=light.outer_cone_angle,
                )
                flags |= pr.RenderFlags.SHADOWS_SPOT if light.shadows else 0
            pose_cv = _look_along(light.direction, light.position)
            self._light_nodes.append(self.scene.add(obj, pose=OPENCV_TO_OPENGL @ pose_cv))
        self._shadow_flags = flags

    def _node(self, object_id: int, copy: int):
        key = (object_id, copy)
        if key not in self._pool:
            pr = self._pyrender
            mat = self._materials[object_id]
            # from_trimesh drops the vertex colours when given a material: edit its default one instead.
            pm = pr.Mesh.from_trimesh(self._tm[object_id], smooth=self._smooth)
            for prim in pm.primitives:
                prim.material.metallicFactor = mat.metallic
                prim.material.roughnessFactor = mat.roughness
                prim.material.baseColorFactor = np.asarray(mat.base_color, dtype=np.float64)
                prim.material.doubleSided = True
            node = self.scene.add(pm, pose=np.eye(4))
            tm = self._tm[object_id]
            both = pr.Mesh.from_trimesh(
                type(tm)(
                    vertices=tm.vertices,
                    faces=np.concatenate([tm.faces, tm.faces[:, ::-1]]),
                    process=False,
                ),
                smooth=False,
            )
            both.is_visible = False
            seg_node = self.scene.add(both, pose=np.eye(4))
            self._pool[key] = (node, pm, seg_node, both)
        return self._pool[key]

    def _renderer_for(self, width: int, height: int):
        if self._renderer is None:
            self._renderer = self._pyrender.OffscreenRenderer(width, height)
            install_stable_shader_cache(self._renderer, self._pyrender)
        elif self._size != (width, height):
            self._renderer.viewport_width = width
            self._renderer.viewport_height = height
        self._size = (width, height)
        return self._renderer

    def close(self) -> None:
        """Free the OpenGL context."""
        if self._renderer is not None:
            self._renderer.delete()
            self._renderer = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass

    # -- rendering ---------------------------------------------------------------------------
    def render(
        self,
        object_ids: Sequence[int],
        R: Union[np.ndarray, "object"],
        t: Union[np.ndarray, "object"],
        K: Union[np.ndarray, "object"],
        width: int,
        height: int,
    ) -> ReferenceFrame:
        """Render the objects ``object_ids`` at poses ``(R, t)`` into one frame.

        Args:
            object_ids: ``N`` object ids (repeats allowed up to ``max_instances`` per id).
            R: ``(N, 3, 3)`` rotations model -> OpenCV camera (arrays or CPU tensors).
            t: ``(N, 3)`` translations, metres.
            K: ``(3, 3)`` OpenCV intrinsics of the output image.
            width, height: output size in pixels.

        Returns:
            :class:`ReferenceFrame` with rgb, depth (metres, 0 empty) and instance labels.
        """
        pr = self._pyrender
        R = np.asarray(R, dtype=np.float64)
        t = np.asarray(t, dtype=np.float64)
        K = np.asarray(K, dtype=np.float64)
        ids = [int(i) for i in object_ids]
        n = len(ids)
        if R.shape != (n, 3, 3):
            raise ValueError(f"PyrenderReference.render: R: expected shape ({n}, 3, 3), got {R.shape}")
        if t.shape != (n, 3):
            raise ValueError(f"PyrenderReference.render: t: expected shape ({n}, 3), got {t.shape}")
        if K.shape != (3, 3):
            raise ValueError(f"PyrenderReference.render: K: expected shape (3, 3), got {K.shape}")
        if width <= 0 or height <= 0:
            raise ValueError(f"PyrenderReference.render: bad size {width}x{height}")
        for i in ids:
            if not 0 <= i < len(self.meshes):
                raise ValueError(f"PyrenderReference.render: object id {i} not in [0, {len(self.meshes)})")

        used: Dict[Tuple[int, int], int] = {}
        copies: Dict[int, int] = {}
        for k, i in enumerate(ids):
            c = copies.get(i, 0)
            if c >= self.max_instances:
                raise ValueError(
                    f"PyrenderReference.render: object {i} appears more than max_instances="
                    f"{self.max_instances} times"
                )
            copies[i] = c + 1
            used[(i, c)] = k
        seg_map = {}
        for key in used:
            self._node(*key)  # make sure the pool holds every copy this frame needs
        for key, (node, pm, seg_node, both) in self._pool.items():
            k = used.get(key)
            pm.is_visible = k is not None
            both.is_visible = False
            if k is not None:
                pose = _pose_matrix(R[k], t[k])
                self.scene.set_pose(node, pose)
                self.scene.set_pose(seg_node, pose)
                seg_map[seg_node] = np.array([(k + 1) & 255, ((k + 1) >> 8) & 255, 0], dtype=np.float64)

        self._camera.fx, self._camera.fy = float(K[0, 0]), float(K[1, 1])
        # +0.5: OpenGL samples pixel j at j + 0.5, OpenCV at j.
        self._camera.cx, self._camera.cy = float(K[0, 2]) + 0.5, float(K[1, 2]) + 0.5

        r = self._renderer_for(int(width), int(height))
        flags = pr.RenderFlags.SKIP_CULL_FACES | self._shadow_flags
        rgb, depth = r.render(self.scene, flags=flags)
        for key, (_, pm, _, both) in self._pool.items():
            both.is_visible, pm.is_visible = pm.is_visible, False
        seg, _ = r.render(self.scene, flags=pr.RenderFlags.SEG, seg_node_map=seg_map)
        labels = seg[..., 0].astype(np.int32) + (seg[..., 1].astype(np.int32) << 8)
        labels[depth <= 0] = 0
        return ReferenceFrame(
            rgb=np.ascontiguousarray(rgb[..., :3]), depth=depth.astype(np.float32), labels=labels
        )
