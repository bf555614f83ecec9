"""Renderer speed: pose6d_ros.rendering.render (pure PyTorch, batched) vs DEODR (Cython, one image per call)
and vs the same ``render`` with ``RenderSettings(backend="pytorch3d")`` (pytorch3d's C++ CPU rasterizer, batched).

Batch of 16 crops of a ~1k-face mesh (pybullet_data bunny, 902 faces), forward and forward+backward,
at 128x128 and 64x64, same mesh and poses for all.  Per-image ratios = ours / DEODR and pytorch3d / DEODR,
measured in the same run (the machine is shared: medians of interleaved repeats).  The pytorch3d column
is left out (with a note) when pytorch3d is not installed (`make pytorch3d`).

    .venv/bin/python benchmarks/render.py [--threads N] [--repeats R] [--no-pytorch3d]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pose6d_ros.rendering.mesh import Mesh, load_mesh, pack_meshes  # noqa: E402
from pose6d_ros.rendering.pytorch3d_backend import available as pytorch3d_available  # noqa: E402
from pose6d_ros.rendering.renderer import RenderSettings, render  # noqa: E402


def bunny() -> Mesh:
    import pybullet_data

    path = os.path.join(pybullet_data.getDataPath(), "bunny.obj")
    m = load_mesh(path)
    v = m.vertices.double().numpy()
    v = (v - 0.5 * (v.min(0) + v.max(0))) * (0.1 / m.diameter)
    return Mesh.from_arrays(v, m.faces.numpy(), m.vertex_colors.numpy(), name="bunny")


def poses(n: int, seed: int = 0):
    from scipy.spatial.transform import Rotation

    R = Rotation.random(n, random_state=seed).as_matrix()
    rng = np.random.default_rng(seed)
    t = np.stack([rng.uniform(-0.01, 0.01, n), rng.uniform(-0.01, 0.01, n), rng.uniform(0.32, 0.38, n)], 1)
    return R, t


def intrinsics(size: int) -> np.ndarray:
    f = 300.0 * size / 128.0
    return np.array([[f, 0.0, size / 2 - 0.5], [0.0, f, size / 2 - 0.5], [0.0, 0.0, 1.0]])


class Deodr:
    """DEODR's Scene3D rendering the same mesh, vertex colours, headlight."""

    def __init__(self, mesh: Mesh, size: int) -> None:
        from deodr.differentiable_renderer import Camera, Scene3D
        from deodr.triangulated_mesh import ColoredTriMesh

        self.Camera = Camera
        self.mesh = ColoredTriMesh(
            mesh.faces.numpy().astype(np.int32),
            vertices=mesh.vertices.double().numpy(),
            colors=mesh.vertex_colors.double().numpy(),
        )
        self.scene = Scene3D(sigma=1.0)
        self.scene.set_mesh(self.mesh)
        self.scene.set_light(light_directional=np.array([0.0, 0.0, -0.5]), light_ambient=0.5)
        self.scene.set_background_color(np.zeros(3))
        self.size = size
        self.K = intrinsics(size)

    def forward(self, R: np.ndarray, t: np.ndarray) -> np.ndarray:
        cam = self.Camera(np.hstack([R, t[:, None]]), self.K, self.size, self.size)
        return self.scene.render(cam)

    def forward_backward(self, R: np.ndarray, t: np.ndarray) -> None:
        image = self.forward(R, t)
        self.scene.clear_gradients()
        self.scene.render_backward(np.ones_like(image))


def time_it(fn, repeats: int) -> list:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (DEODR uses one)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--no-pytorch3d", action="store_true", help="leave out the pytorch3d column")
    args = ap.parse_args()
    with_p3d = not args.no_pytorch3d and pytorch3d_available()
    torch.set_num_threads(args.threads)
    mesh = bunny()
    mb = pack_meshes([mesh])
    B = args.batch
    Rn, tn = poses(B)
    print(f"mesh: bunny, {mesh.num_faces} faces; batch {B}; torch threads {args.threads}; torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("ours and pytorch3d time RGB + soft silhouette + depth in one call (RenderSettings(), soft mode; "
          "pytorch3d: RenderSettings(backend='pytorch3d'), a hard pass and a soft pass of "
          f"{RenderSettings().faces_per_pixel} faces per pixel); backward of rgb.sum() + silhouette.sum() "
          "w.r.t. R and t")
    if not with_p3d:
        print("pytorch3d: " + ("left out (--no-pytorch3d)" if args.no_pytorch3d else "not installed (make pytorch3d)"))
    print("ms per image; ratios to DEODR")
    print("size  | ours fwd | DEODR fwd | p3d fwd | ours/DEODR | p3d/DEODR | ours f+b | DEODR f+b | p3d f+b "
          "| ours/DEODR | p3d/DEODR")
    for size in (128, 64):
        K = torch.tensor(intrinsics(size), dtype=torch.float32).expand(B, 3, 3).contiguous()
        R = torch.tensor(Rn, dtype=torch.float32)
        t = torch.tensor(tn, dtype=torch.float32)
        idx = torch.zeros(B, dtype=torch.long)
        settings = RenderSettings()
        p3d_settings = RenderSettings(backend="pytorch3d")
        de = Deodr(mesh, size)

        def fwd(s: RenderSettings) -> None:
            with torch.no_grad():
                render(mb, idx, R, t, K, (size, size), s)

        def fwd_bwd(s: RenderSettings) -> None:
            Rg = R.clone().requires_grad_(True)
            tg = t.clone().requires_grad_(True)
            out = render(mb, idx, Rg, tg, K, (size, size), s)
            (out.rgb.sum() + out.silhouette.sum()).backward()

        def de_fwd():
            for k in range(B):
                de.forward(Rn[k], tn[k])

        def de_fb():
            for k in range(B):
                de.forward_backward(Rn[k], tn[k])

        fns = {"of": lambda: fwd(settings), "df": de_fwd, "ob": lambda: fwd_bwd(settings), "db": de_fb}
        if with_p3d:
            fns.update(pf=lambda: fwd(p3d_settings), pb=lambda: fwd_bwd(p3d_settings))
        for f in fns.values():  # warm-up
            f()
        res = {k: [] for k in fns}
        for _ in range(args.repeats):  # interleaved, so load spikes hit all of them
            for k, f in fns.items():
                res[k] += time_it(f, 1)
        med = {k: statistics.median(v) * 1000.0 / B for k, v in res.items()}
        nan = float("nan")
        pf, pb = med.get("pf", nan), med.get("pb", nan)
        print(
            f"{size:3d}^2 | {med['of']:8.2f} | {med['df']:9.2f} | {pf:7.2f} | {med['of'] / med['df']:10.2f} | "
            f"{pf / med['df']:9.2f} | {med['ob']:8.2f} | {med['db']:9.2f} | {pb:7.2f} | "
            f"{med['ob'] / med['db']:10.2f} | {pb / med['db']:9.2f}"
        )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
