"""PnP speed and accuracy: ours (batched torch) vs a loop of cv2.solvePnP (SQPNP, ITERATIVE).

Run: .venv/bin/python benchmarks/pnp.py [--threads 1]
Problems: 9 box keypoints (corners + centre, 10-20 cm boxes), 0.3-1.5 m, 640x480, 1 px noise.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from pose6d_ros.geometry.pnp import solve_pnp

K_NP = np.array([[572.4, 0.0, 325.3], [0.0, 573.6, 242.0], [0.0, 0.0, 1.0]])


def problems(B: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    ext = rng.uniform(0.1, 0.2, (B, 1, 3))
    X = np.concatenate([signs[None] * ext / 2, np.zeros((B, 1, 3))], 1)
    R = Rotation.random(B, random_state=seed).as_matrix()
    z = rng.uniform(0.3, 1.5, B)
    t = np.concatenate([rng.uniform(-0.3, 0.3, (B, 2)) * z[:, None], z[:, None]], 1)
    Xc = np.einsum("bij,bnj->bni", R, X) + t[:, None]
    uv = Xc[..., :2] / Xc[..., 2:3] * np.diag(K_NP)[:2] + K_NP[:2, 2]
    return X, R, t, uv + rng.normal(0.0, 1.0, uv.shape)


def errors(R_est, t_est, R, t):
    cos = (np.trace(np.einsum("bij,bkj->bik", R_est, R), axis1=1, axis2=2) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1))), np.linalg.norm(t_est - t, axis=1) * 1000


def timeit(fn, min_time: float = 0.5) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_time:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    X, R, t, uv = problems(1024)
    print(f"torch threads {args.threads}; 1 px noise; errors: rotation deg / translation mm")
    acc = {}
    for name, flag in (("SQPNP", cv2.SOLVEPNP_SQPNP), ("ITERATIVE", cv2.SOLVEPNP_ITERATIVE)):
        def loop(n=64):
            out = []
            for b in range(n):
                _, rv, tv = cv2.solvePnP(X[b], uv[b], K_NP, None, flags=flag)
                out.append((rv, tv))
            return out
        us = timeit(loop) / 64 * 1e6
        sols = loop(1024)
        Re = np.stack([cv2.Rodrigues(rv)[0] for rv, _ in sols])
        te = np.stack([tv[:, 0] for _, tv in sols])
        acc[name] = (us, errors(Re, te, R, t))
    ref_us = acc["SQPNP"][0]
    for name, (us, (er, et)) in acc.items():
        print(f"cv2 {name:10s} {us:8.1f} us/problem (x{us / ref_us:5.2f} SQPNP)  rot med/p95 "
              f"{np.median(er):.3f}/{np.percentile(er, 95):.3f}  trans med/p95 {np.median(et):.2f}/{np.percentile(et, 95):.2f}")
    for dtype in (torch.float32, torch.float64):
        for B in (1, 64, 1024):
            x2 = torch.as_tensor(uv[:B], dtype=dtype)
            X3 = torch.as_tensor(X[:B], dtype=dtype)
            K = torch.as_tensor(np.broadcast_to(K_NP, (B, 3, 3)).copy(), dtype=dtype)
            kw = dict(iterations=args.iterations, tol=0)
            fwd = timeit(lambda: solve_pnp(x2, X3, K, **kw)) / B * 1e6

            def fwd_bwd():
                x = x2.clone().requires_grad_()
                r = solve_pnp(x, X3, K, **kw)
                (r.R.sum() + r.t.sum()).backward()
            fb = timeit(fwd_bwd) / B * 1e6
            res = solve_pnp(x2, X3, K, **kw)
            er, et = errors(res.R.double().numpy(), res.t.double().numpy(), R[:B], t[:B])
            line = (f"ours {str(dtype)[6:]:8s} B={B:5d} fwd {fwd:8.1f} us/problem (x{fwd / ref_us:5.2f} SQPNP)"
                    f"  fwd+bwd {fb:8.1f} us (x{fb / ref_us:5.2f})")
            if B >= 64:
                line += (f"  rot med/p95 {np.median(er):.3f}/{np.percentile(er, 95):.3f}"
                         f"  trans med/p95 {np.median(et):.2f}/{np.percentile(et, 95):.2f}"
                         f"  failed {int(res.failed.sum())}")
            print(line)


if __name__ == "__main__":
    main()
