"""The simulated real domain: full frames rendered by an independent renderer (pyrender + OSMesa).

It plays the part of LINEMOD's real images. The gap to the synthetic source domain is the kind the
method is meant to close (``docs/method.md``, "The simulated real domain"): photographs as backgrounds
(``skimage.data``), specular materials, a point light with cast shadows (shadow-mapped here, as
pyrender's shadows fail on OSMesa), white balance, gamma, vignetting, blur, sensor noise and JPEG,
a small smooth geometric error of the rendering mesh, clutter from other registered objects and
occlusion. The object's own colours are the same as in the source domain (an albedo gap is one
masking cannot close).

Frames are sampled up front from a seed (:func:`sample_frames`), so output does not depend on how
many workers render them. A :class:`RealRenderer` keeps ONE pyrender scene and renderer for its
whole life and moves nodes with ``set_pose`` (rebuilding scenes leaks memory on OSMesa).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.rendering._gl import import_pyrender  # sets the OSMesa platform before anything loads OpenGL
from pose6d_ros.rendering.pyrender_ref import install_stable_shader_cache

#: LINEMOD's Kinect intrinsics (640x480), used as the default "real" camera.
LINEMOD_K = np.array([[572.4114, 0.0, 325.2611], [0.0, 573.57043, 242.04899], [0.0, 0.0, 1.0]])
#: OpenCV camera frame -> OpenGL camera frame (y and z flipped).
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "stereo_motorcycle", "camera", "coins", "moon", "page", "text", "grass", "gravel",
          "brick")


@dataclass
class RealDomainConfig:
    """Settings of the simulated real domain (defaults: LINEMOD-like 640x480 frames).

    Attributes:
        width, height: image size.
        K: ``(3, 3)`` camera intrinsics.
        object_px: range of the target's projected diameter in pixels (sets its distance).
        viewpoints: ``"upper"`` (camera above the model's x-y plane, like LINEMOD) or ``"sphere"``.
        inplane_deg: max absolute in-plane rotation of the camera (degrees).
        center_margin: fraction of the image kept clear at the borders when placing the target centre.
        clutter: inclusive range of other registered objects per frame.
        occlusion_prob: chance that one clutter object is placed in front of the target.
        mesh_scale_err: max relative anisotropic scale error of the rendering mesh (per axis).
        mesh_warp: amplitude of the smooth vertex displacement, fraction of the diameter.
        metallic, roughness: ranges of the per-object material (specular highlights).
        light_intensity, ambient: ranges of the point light and ambient light.
        shadow_strength: range of the darkening of shadowed object pixels.
        noise_std: range of Gaussian sensor noise (image in [0, 1]).
        blur_sigma: range of Gaussian blur sigma in pixels.
        jpeg_quality: range of JPEG quality.
        wb_gain: max relative per-channel white-balance error.
        gamma: range of the gamma applied to the image.
        vignette: range of the darkening at the image corners.
        motion_blur_px: range of the length of a linear motion blur (camera or arm motion during the
            exposure), random direction; 0 = none.
        exposure: range of the exposure gain applied before the sensor clips (> 1 blows out highlights).
        saturation: range of the colour saturation of the camera's processing (< 1: duller colours).
        resolution_scale: range of the sensor's effective resolution relative to the frame (optics,
            demosaicing and on-camera scaling soften detail): the frame is resampled down and back up.
        bayer: sample the image through an RGGB colour filter array and demosaic it (bilinear),
            as a raw sensor does: colour fringes at edges.

    The defaults are the original ``lm-lite`` appearance; :data:`APPEARANCE` holds named presets.
    """

    width: int = 640
    height: int = 480
    K: np.ndarray = field(default_factory=lambda: LINEMOD_K.copy())
    object_px: tuple[float, float] = (70.0, 170.0)
    viewpoints: str = "upper"
    inplane_deg: float = 45.0
    center_margin: float = 0.2
    clutter: tuple[int, int] = (1, 3)
    occlusion_prob: float = 0.4
    mesh_scale_err: float = 0.02
    mesh_warp: float = 0.005
    metallic: tuple[float, float] = (0.0, 0.4)
    roughness: tuple[float, float] = (0.25, 0.6)
    light_intensity: tuple[float, float] = (1.5, 5.0)
    ambient: tuple[float, float] = (0.15, 0.45)
    shadow_strength: tuple[float, float] = (0.3, 0.6)
    noise_std: tuple[float, float] = (0.005, 0.03)
    blur_sigma: tuple[float, float] = (0.0, 1.2)
    jpeg_quality: tuple[int, int] = (40, 95)
    wb_gain: float = 0.15
    gamma: tuple[float, float] = (0.8, 1.25)
    vignette: tuple[float, float] = (0.0, 0.4)
    motion_blur_px: tuple[float, float] = (0.0, 0.0)
    exposure: tuple[float, float] = (1.0, 1.0)
    saturation: tuple[float, float] = (1.0, 1.0)
    resolution_scale: tuple[float, float] = (1.0, 1.0)
    bayer: bool = False


#: Named appearance presets of the simulated real domain (``build --appearance``). ``hard`` adds what a
#: low-cost RGB-D camera's colour stream does to an image and a renderer does not: motion blur, a
#: lower effective resolution, clipped highlights, duller colours and a Bayer sensor's demosaicing.
APPEARANCE: dict[str, dict] = {
    "standard": {},
    "hard": dict(motion_blur_px=(0.0, 6.0), exposure=(0.8, 1.8), saturation=(0.45, 1.0),
                 resolution_scale=(0.4, 0.8), bayer=True, blur_sigma=(0.3, 1.5), noise_std=(0.01, 0.05)),
}


@dataclass
class FrameSpec:
    """Everything needed to render one frame deterministically.

    Attributes:
        scene_id, im_id: BOP ids (one scene per target object).
        obj_ids: object ids, the target first.
        poses: ``(N, 4, 4)`` model-to-camera transforms (OpenCV camera frame, metres).
        light_pos: ``(3,)`` point light position in the camera frame.
        light_intensity, ambient, shadow_strength: lighting.
        photo: index into :data:`PHOTOS`; ``photo_box`` ``(x0, y0, side_frac, flip)`` crop of it.
        wb: ``(3,)`` white-balance gains; gamma, vignette, blur_sigma, noise_std, jpeg_quality.
        noise_seed: seed of the sensor noise.
        motion_px, motion_angle: length (pixels) and direction (radians) of the motion blur.
        exposure, saturation, resolution_scale, bayer: camera processing (see ``RealDomainConfig``).
    """

    scene_id: int
    im_id: int
    obj_ids: list[int]
    poses: np.ndarray
    light_pos: np.ndarray
    light_intensity: float
    ambient: float
    shadow_strength: float
    photo: int
    photo_box: tuple[float, float, float, bool]
    wb: np.ndarray
    gamma: float
    vignette: float
    blur_sigma: float
    noise_std: float
    jpeg_quality: int
    noise_seed: int
    motion_px: float = 0.0
    motion_angle: float = 0.0
    exposure: float = 1.0
    saturation: float = 1.0
    resolution_scale: float = 1.0
    bayer: bool = False


@dataclass
class RenderedFrame:
    """One rendered frame.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 RGB, all degradations applied.
        depth: ``(H, W)`` float32 metres, 0 where empty (of the rendering mesh).
        masks: list of ``(H, W)`` bool full silhouettes, one per object of the spec.
        masks_visib: list of ``(H, W)`` bool visible silhouettes.
    """

    rgb: np.ndarray
    depth: np.ndarray
    masks: list[np.ndarray]
    masks_visib: list[np.ndarray]


# ---------------------------------------------------------------------- pose sampling


def look_at_rotation(view_dirs: np.ndarray, inplane: np.ndarray) -> np.ndarray:
    """Model-to-camera rotations that look at the model origin from ``view_dirs``.

    Args:
        view_dirs: ``(B, 3)`` unit vectors from the object to the camera, model frame.
        inplane: ``(B,)`` in-plane rotation about the optical axis, radians.

    Returns:
        ``(B, 3, 3)`` rotations ``R`` with ``R @ view_dir = (0, 0, -1)`` (the camera sees the
        object along +z).
    """
    z = -view_dirs / np.linalg.norm(view_dirs, axis=1, keepdims=True)  # camera z in model frame
    up = np.where(np.abs(z[:, 2:3]) > 0.99, np.array([[0.0, 1.0, 0.0]]), np.array([[0.0, 0.0, 1.0]]))
    x = np.cross(-up, z)  # image "down" follows the model's -up (up is drawn upwards)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.cross(z, x)
    R_c2m = np.stack([x, y, z], axis=2)
    c, s = np.cos(inplane), np.sin(inplane)
    Rz = np.zeros((len(inplane), 3, 3))
    Rz[:, 0, 0], Rz[:, 0, 1], Rz[:, 1, 0], Rz[:, 1, 1], Rz[:, 2, 2] = c, -s, s, c, 1.0
    return Rz @ np.transpose(R_c2m, (0, 2, 1))


def sample_view_dirs(rng: np.random.Generator, n: int, viewpoints: str) -> np.ndarray:
    """``(n, 3)`` unit view directions, uniform on the sphere or the upper (z >= 0.1) cap."""
    if viewpoints not in ("upper", "sphere"):
        raise ValueError(f"viewpoints: expected 'upper' or 'sphere', got {viewpoints!r}")
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    if viewpoints == "upper":
        v[:, 2] = np.abs(v[:, 2]) * 0.9 + 0.1
        v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def _rotation_uniform(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def sample_frames(registry: ObjectRegistry, obj_id: int, im_ids: Sequence[int], cfg: RealDomainConfig,
                  seed: int, clutter: bool = True) -> list[FrameSpec]:
    """Sample frames whose target is ``obj_id`` (scene ``obj_id``), deterministic in ``seed``.

    Clutter objects are placed so their bounding spheres do not intersect the target's: beside it,
    or (with ``occlusion_prob``) in front of it, partly covering it.
    """
    specs = []
    K = cfg.K
    others = [i for i in registry.ids if i != obj_id]
    for im_id in im_ids:
        rng = np.random.default_rng([seed, obj_id, im_id])
        target = registry.get(obj_id)
        px = rng.uniform(*cfg.object_px)
        Z = K[0, 0] * target.diameter / px
        m = cfg.center_margin
        u = rng.uniform(m * cfg.width, (1 - m) * cfg.width) - 0.5
        v = rng.uniform(m * cfg.height, (1 - m) * cfg.height) - 0.5
        t = Z * np.linalg.solve(K, np.array([u, v, 1.0]))
        R = look_at_rotation(sample_view_dirs(rng, 1, cfg.viewpoints),
                             np.deg2rad(rng.uniform(-cfg.inplane_deg, cfg.inplane_deg, 1)))[0]
        ids, poses = [obj_id], [_pose(R, t)]
        if clutter and others:
            n_cl = int(rng.integers(cfg.clutter[0], cfg.clutter[1] + 1))
            chosen = rng.choice(others, size=min(n_cl, len(others)), replace=False)
            occlude = rng.random() < cfg.occlusion_prob
            r_t = target.diameter / 2
            for k, cid in enumerate(chosen):
                r_c = registry.get(int(cid)).diameter / 2
                gap = r_t + r_c
                ang = rng.uniform(0, 2 * np.pi)
                lateral_dir = np.array([np.cos(ang), np.sin(ang), 0.0])
                if k == 0 and occlude:  # in front, partly covering the target
                    dz = -gap * rng.uniform(0.75, 0.95)
                    lat = np.sqrt(max(gap ** 2 * 1.05 - dz ** 2, 0.0)) + gap * rng.uniform(0.0, 0.3)
                else:
                    dz = gap * rng.uniform(-0.3, 0.6)
                    lat = gap * rng.uniform(1.05, 1.6)
                tc = t + lateral_dir * lat + np.array([0.0, 0.0, dz])
                if tc[2] < 0.1:  # too close to the camera: skip rather than clip through the lens
                    continue
                ids.append(int(cid))
                poses.append(_pose(_rotation_uniform(rng), tc))
        light_dir = rng.normal(size=3)
        light_dir[2] = -abs(light_dir[2])  # light on the camera's side of the object
        light_pos = t + light_dir / np.linalg.norm(light_dir) * Z * rng.uniform(0.6, 1.2)
        specs.append(FrameSpec(
            scene_id=obj_id, im_id=int(im_id), obj_ids=ids, poses=np.stack(poses), light_pos=light_pos,
            light_intensity=float(rng.uniform(*cfg.light_intensity)), ambient=float(rng.uniform(*cfg.ambient)),
            shadow_strength=float(rng.uniform(*cfg.shadow_strength)), photo=int(rng.integers(len(PHOTOS))),
            photo_box=(float(rng.random()), float(rng.random()), float(rng.uniform(0.4, 1.0)),
                       bool(rng.random() < 0.5)),
            wb=1.0 + rng.uniform(-cfg.wb_gain, cfg.wb_gain, 3), gamma=float(rng.uniform(*cfg.gamma)),
            vignette=float(rng.uniform(*cfg.vignette)), blur_sigma=float(rng.uniform(*cfg.blur_sigma)),
            noise_std=float(rng.uniform(*cfg.noise_std)),
            jpeg_quality=int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)),
            noise_seed=int(rng.integers(2 ** 31)),
            # drawn last, so that the frames of the standard appearance are unchanged by these fields
            motion_px=float(rng.uniform(*cfg.motion_blur_px)), motion_angle=float(rng.uniform(0, np.pi)),
            exposure=float(rng.uniform(*cfg.exposure)), saturation=float(rng.uniform(*cfg.saturation)),
            resolution_scale=float(rng.uniform(*cfg.resolution_scale)), bayer=cfg.bayer))
    return specs


def _pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


# ---------------------------------------------------------------------- rendering


def perturb_mesh(vertices: np.ndarray, diameter: float, scale_err: float, warp: float,
                 seed: int) -> np.ndarray:
    """The "real" object's geometric error: an anisotropic scale plus a smooth displacement field.

    The displacement is a function of position, so vertices duplicated across faces move together
    and the surface stays closed. ``(N, 3) -> (N, 3)``.
    """
    rng = np.random.default_rng([seed, 7])
    v = vertices * (1.0 + rng.uniform(-scale_err, scale_err, 3))
    freqs = rng.normal(size=(3, 3)) * (2 * np.pi / max(diameter, 1e-9))
    phases = rng.uniform(0, 2 * np.pi, 3)
    dirs = rng.normal(size=(3, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    field_ = np.sin(vertices @ freqs.T + phases) @ dirs  # (N, 3), each component in [-3, 3]
    return v + field_ * (warp * diameter / 3.0)


def load_photos(width: int, height: int) -> list[np.ndarray]:
    """The background photographs (``skimage.data``, bundled, no download) as float RGB in [0, 1];
    grey ones get a random-free fixed tint so they are not all neutral."""
    import skimage.data

    out = []
    tints = [np.array([1.0, 0.9, 0.75]), np.array([0.8, 0.95, 1.0]), np.array([0.95, 1.0, 0.85])]
    for i, name in enumerate(PHOTOS):
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img
        img = img.astype(np.float32) / 255.0
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2) * tints[i % 3]
        out.append(np.ascontiguousarray(img[..., :3]))
    return out


def crop_photo(photo: np.ndarray, box: tuple[float, float, float, bool], width: int, height: int) -> np.ndarray:
    """Cut a random window of ``photo`` with the output's aspect and resize it to ``(height, width)``."""
    import cv2

    H, W = photo.shape[:2]
    fx, fy, frac, flip = box
    side_w = min(W, H * width / height) * frac
    side_h = side_w * height / width
    x0, y0 = fx * (W - side_w), fy * (H - side_h)
    A = np.array([[width / side_w, 0, -x0 * width / side_w], [0, height / side_h, -y0 * height / side_h]])
    out = cv2.warpAffine(photo, A, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out[:, ::-1].copy() if flip else out


class RealRenderer:
    """Renders :class:`FrameSpec` s with ONE pyrender scene holding every registered object.

    Args:
        registry: the objects; each is added once, with its perturbed "real" mesh and a material
            sampled deterministically from ``seed``.
        cfg: domain settings (image size, K, degradation ranges).
        seed: seed of the per-object mesh error and material.
        perturb: apply the geometric mesh error (set ``False`` to render the registry mesh exactly).
    """

    def __init__(self, registry: ObjectRegistry, cfg: RealDomainConfig, seed: int = 0, perturb: bool = True):
        import trimesh

        pyrender = import_pyrender()  # torch's compiler stack first (rendering/_gl.py)

        self._pr = pyrender
        self.cfg = cfg
        self.registry = registry
        self.scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[0.3, 0.3, 0.3])
        self.nodes = {}
        for o in registry:
            tm = o.load_mesh()
            # pyrender's shader outputs sRGB from linear light but takes vertex colours as they are:
            # linearise them so the rendered albedo matches the registry's colours.
            col = np.asarray(tm.visual.vertex_colors, np.float64)
            col[:, :3] = 255.0 * (col[:, :3] / 255.0) ** 2.2
            col = np.round(col).astype(np.uint8)
            rng = np.random.default_rng([seed, o.id, 3])
            verts = np.asarray(tm.vertices)
            if perturb:
                verts = perturb_mesh(verts, o.diameter, cfg.mesh_scale_err, cfg.mesh_warp, seed * 1000 + o.id)
            tm = trimesh.Trimesh(vertices=verts, faces=tm.faces, vertex_colors=col, process=False)
            # from_trimesh drops vertex colours when given a material: edit its default one instead.
            pmesh = pyrender.Mesh.from_trimesh(tm, smooth=False)
            for prim in pmesh.primitives:
                prim.material.metallicFactor = float(rng.uniform(*cfg.metallic))
                prim.material.roughnessFactor = float(rng.uniform(*cfg.roughness))
                prim.material.alphaMode = "OPAQUE"
            node = self.scene.add(pmesh)
            node.mesh.is_visible = False
            self.nodes[o.id] = node
        K = cfg.K
        # +0.5: OpenGL samples pixel j at window coordinate j + 0.5, OpenCV at j (docs/conventions.md).
        cam = pyrender.IntrinsicsCamera(K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5, znear=0.02, zfar=20.0)
        # The world frame IS the OpenCV camera frame: the GL camera sits at the origin, flipped.
        self.cam_node = self.scene.add(cam, pose=CV_TO_GL)
        self.light = pyrender.PointLight(color=np.ones(3), intensity=3.0)
        self.light_node = self.scene.add(self.light, pose=np.eye(4))
        self.shadow_cam_node = self.scene.add(
            pyrender.PerspectiveCamera(yfov=1.0, znear=0.02, zfar=20.0, aspectRatio=cfg.width / cfg.height),
            pose=np.eye(4))
        self.renderer = pyrender.OffscreenRenderer(cfg.width, cfg.height)
        install_stable_shader_cache(self.renderer, pyrender)
        self._photos = None

    def close(self) -> None:
        self.renderer.delete()

    def _show(self, ids: Sequence[int], poses: np.ndarray) -> None:
        for oid, node in self.nodes.items():
            node.mesh.is_visible = False
        for oid, T in zip(ids, poses):
            self.nodes[oid].mesh.is_visible = True
            self.scene.set_pose(self.nodes[oid], T)

    def render_depth(self, ids: Sequence[int], poses: np.ndarray) -> np.ndarray:
        """``(H, W)`` float32 depth (metres, OpenCV z) of the objects ``ids`` at ``poses``."""
        self._show(ids, poses)
        return self.renderer.render(self.scene, self._pr.RenderFlags.DEPTH_ONLY).astype(np.float32)

    def render(self, spec: FrameSpec) -> RenderedFrame:
        """Render one frame: objects, lights, shadows, background, degradations."""
        pr, cfg = self._pr, self.cfg
        ids, poses = spec.obj_ids, spec.poses
        singles = [self.render_depth([oid], T[None]) for oid, T in zip(ids, poses)]
        masks = [d > 0 for d in singles]
        self._show(ids, poses)
        self.scene.ambient_light = np.full(3, spec.ambient)
        # Intensity scales with the squared distance, so the irradiance at the target is in range.
        self.light.intensity = spec.light_intensity * float(np.sum((spec.light_pos - poses[0, :3, 3]) ** 2))
        self.scene.set_pose(self.light_node, _pose(np.eye(3), spec.light_pos))
        color, depth = self.renderer.render(self.scene, pr.RenderFlags.NONE)
        depth = depth.astype(np.float32)
        fg = depth > 0
        masks_visib = [m & (np.abs(d - depth) < 1e-4) for m, d in zip(masks, singles)]
        img = color.astype(np.float32) / 255.0
        shadow = self._shadow_mask(spec, depth)
        img[shadow] *= 1.0 - spec.shadow_strength
        if self._photos is None:
            self._photos = load_photos(cfg.width, cfg.height)
        bg = crop_photo(self._photos[spec.photo], spec.photo_box, cfg.width, cfg.height)
        img = np.where(fg[..., None], img, bg)
        rgb = degrade(img, spec, cfg)
        return RenderedFrame(rgb=rgb, depth=depth, masks=masks, masks_visib=masks_visib)

    def _shadow_mask(self, spec: FrameSpec, depth: np.ndarray) -> np.ndarray:
        """Pixels whose surface point the point light cannot see (a shadow map from the light)."""
        H, W = depth.shape
        fg = depth > 0
        if not fg.any():
            return fg
        # A light "camera" at the light, looking at the target; GL convention (looks along -z).
        target = spec.poses[0, :3, 3]
        fwd = target - spec.light_pos
        dist = np.linalg.norm(fwd)
        fwd /= dist
        tmp = np.array([0.0, 1.0, 0.0]) if abs(fwd[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
        x = np.cross(fwd, tmp)
        x /= np.linalg.norm(x)
        y = np.cross(x, fwd)
        L2W = _pose(np.stack([x, y, -fwd], axis=1), spec.light_pos)
        radius = max(self.registry.get(i).diameter for i in spec.obj_ids) * 2.5
        yfov = float(2 * np.arctan2(radius, max(dist - radius, 0.05)))
        # The shadow map reuses the main renderer (one GL context; meshes are bound to it) and its
        # viewport: resizing a viewport recreates the context, which is slow.
        yfov = min(yfov, 2.5)
        self.shadow_cam_node.camera.yfov = yfov
        self.scene.set_pose(self.shadow_cam_node, L2W)
        self.scene.main_camera_node = self.shadow_cam_node
        try:
            ldepth = self.renderer.render(self.scene, self._pr.RenderFlags.DEPTH_ONLY)
        finally:
            self.scene.main_camera_node = self.cam_node
        vs, us = np.nonzero(fg)
        z = depth[vs, us]
        K = self.cfg.K
        X = np.stack([(us - K[0, 2]) / K[0, 0] * z, (vs - K[1, 2]) / K[1, 1] * z, z], axis=1)
        W2L = np.linalg.inv(L2W)
        Xl = X @ W2L[:3, :3].T + W2L[:3, 3]
        zl = -Xl[:, 2]
        f = (H / 2) / np.tan(yfov / 2)
        ul = np.round(f * Xl[:, 0] / zl + (W - 1) / 2).astype(int)
        vl = np.round(-f * Xl[:, 1] / zl + (H - 1) / 2).astype(int)
        ok = (ul >= 0) & (ul < W) & (vl >= 0) & (vl < H)
        occluder = np.zeros_like(z)
        occluder[ok] = ldepth[vl[ok], ul[ok]]
        bias = 0.004 + 0.01 * radius
        shadowed = ok & (occluder > 0) & (occluder < zl - bias)
        out = np.zeros_like(fg)
        out[vs[shadowed], us[shadowed]] = True
        return out


def degrade(img: np.ndarray, spec: FrameSpec, cfg: RealDomainConfig) -> np.ndarray:
    """Camera effects on a float ``(H, W, 3)`` image in [0, 1] -> uint8 RGB: motion blur, exposure,
    white balance, saturation, gamma, vignetting, blur, effective resolution, sensor noise, Bayer
    demosaicing, JPEG."""
    import cv2

    H, W = img.shape[:2]
    if spec.motion_px >= 1.0:
        img = cv2.filter2D(img, -1, motion_kernel(spec.motion_px, spec.motion_angle), borderType=cv2.BORDER_REFLECT)
    img = np.clip(img * spec.exposure * spec.wb[None, None], 0, 1)
    if spec.saturation != 1.0:
        grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
        img = grey[..., None] + spec.saturation * (img - grey[..., None])
    img = img ** spec.gamma
    yy, xx = np.mgrid[0:H, 0:W]
    r2 = ((xx - W / 2) ** 2 + (yy - H / 2) ** 2) / ((W / 2) ** 2 + (H / 2) ** 2)
    img = img * (1.0 - spec.vignette * r2)[..., None]
    if spec.blur_sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), spec.blur_sigma)
    if spec.resolution_scale < 1.0:
        small = (max(1, round(W * spec.resolution_scale)), max(1, round(H * spec.resolution_scale)))
        img = cv2.resize(cv2.resize(img, small, interpolation=cv2.INTER_AREA), (W, H), interpolation=cv2.INTER_LINEAR)
    rng = np.random.default_rng(spec.noise_seed)
    img = img + rng.normal(0, spec.noise_std, img.shape).astype(np.float32)
    u8 = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    if spec.bayer:
        u8 = demosaic_rggb(u8)
    ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, spec.jpeg_quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """Normalised kernel of a linear motion blur: a line of ``length`` pixels at ``angle`` (radians,
    from the image x axis) through the kernel's centre, anti-aliased by supersampling."""
    half = int(np.ceil(length / 2))
    size = 2 * half + 1
    s = np.linspace(-length / 2, length / 2, 8 * size)
    k = np.zeros((size, size), np.float32)
    np.add.at(k, (np.round(half + s * np.sin(angle)).astype(int), np.round(half + s * np.cos(angle)).astype(int)), 1.0)
    return k / k.sum()


def demosaic_rggb(rgb: np.ndarray) -> np.ndarray:
    """What a raw sensor makes of ``rgb`` (uint8 ``(H, W, 3)``): keep one channel per pixel of an RGGB
    colour filter array, then demosaic it bilinearly (OpenCV)."""
    import cv2

    H, W = rgb.shape[:2]
    raw = np.empty((H, W), np.uint8)
    raw[0::2, 0::2] = rgb[0::2, 0::2, 0]
    raw[0::2, 1::2] = rgb[0::2, 1::2, 1]
    raw[1::2, 0::2] = rgb[1::2, 0::2, 1]
    raw[1::2, 1::2] = rgb[1::2, 1::2, 2]
    # OpenCV names Bayer patterns by the second row's first two pixels: RGGB is its "BayerBG".
    return cv2.cvtColor(raw, cv2.COLOR_BayerBG2RGB)


def bbox_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """BOP box ``(x, y, w, h)`` of a boolean mask, ``(-1, -1, -1, -1)`` if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (-1, -1, -1, -1)
    return (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
