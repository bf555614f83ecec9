"""Renderer speed: pose6d_ros.rendering.render (pure PyTorch, batched) vs DEODR (Cython, one image per call).

Batch of 16 crops of a ~1k-face mesh (pybullet_data bunny, 902 faces), forward and forward+backward,
at 128x128 and 64x64, same mesh and poses for both.  Per-image ratios = ours / DEODR, measured in the
same run (the machine is shared: medians of interleaved repeats).

    .venv/bin/python benchmarks/render.py [--threads N] [--repeats R]
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mesh = bunny()
    mb = pack_meshes([mesh])
    B = args.batch
    Rn, tn = poses(B)
    print(f"mesh: bunny, {mesh.num_faces} faces; batch {B}; torch threads {args.threads}; torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("ours times RGB + soft silhouette + depth in one call (RenderSettings(), soft mode); backward of "
          "rgb.sum() + silhouette.sum() w.r.t. R and t")
    print("size  | ours fwd ms/img | DEODR fwd ms/img | ratio | ours fwd+bwd ms/img | DEODR fwd+bwd ms/img | ratio")
    for size in (128, 64):
        K = torch.tensor(intrinsics(size), dtype=torch.float32).expand(B, 3, 3).contiguous()
        R = torch.tensor(Rn, dtype=torch.float32)
        t = torch.tensor(tn, dtype=torch.float32)
        idx = torch.zeros(B, dtype=torch.long)
        settings = RenderSettings()
        de = Deodr(mesh, size)

        def ours_fwd():
            with torch.no_grad():
                render(mb, idx, R, t, K, (size, size), settings)

        def ours_fb():
            Rg = R.clone().requires_grad_(True)
            tg = t.clone().requires_grad_(True)
            out = render(mb, idx, Rg, tg, K, (size, size), settings)
            (out.rgb.sum() + out.silhouette.sum()).backward()

        def de_fwd():
            for k in range(B):
                de.forward(Rn[k], tn[k])

        def de_fb():
            for k in range(B):
                de.forward_backward(Rn[k], tn[k])

        for f in (ours_fwd, ours_fb, de_fwd, de_fb):  # warm-up
            f()
        res = {f: [] for f in ("of", "ob", "df", "db")}
        for _ in range(args.repeats):  # interleaved, so load spikes hit both
            res["of"] += time_it(ours_fwd, 1)
            res["df"] += time_it(de_fwd, 1)
            res["ob"] += time_it(ours_fb, 1)
            res["db"] += time_it(de_fb, 1)
        med = {k: statistics.median(v) * 1000.0 / B for k, v in res.items()}
        print(
            f"{size:3d}^2 | {med['of']:15.2f} | {med['df']:16.2f} | {med['of'] / med['df']:5.2f} | "
            f"{med['ob']:19.2f} | {med['db']:20.2f} | {med['ob'] / med['db']:5.2f}"
        )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
