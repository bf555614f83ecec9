"""PnP speed and accuracy: ours (batched torch) vs a loop of cv2.solvePnP (SQPNP, ITERATIVE).

Run: .venv/bin/python benchmarks/pnp.py [--threads 1] [--iterations 5] [--repeats 5]
Problems: 9 box keypoints (corners + centre, 10-20 cm boxes), 0.3-1.5 m, 640x480, 1 px noise.
Ours is timed in two settings: ``fixed`` (``--iterations`` LM steps, ``tol=0``) and ``default``
(``solve_pnp``'s defaults: up to 10 steps, early exit at the dtype's tolerance; the number of
steps run is printed). Each time is the best of ``--repeats`` runs of >= 0.1 s of the calling
thread's CPU time (``time.thread_time``: everything runs on that one thread, and CPU time does
not count the time other processes of a shared machine hold the core; ``--wall`` uses wall
time). cv2 SQPNP is timed before and after ours and the ratios use its best time.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

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


CLOCK: Callable[[], float] = time.thread_time


def timeit(fn: Callable[[], object], repeats: int, min_time: float = 0.1) -> float:
    """Best over ``repeats`` of the mean time of ``fn`` over >= ``min_time`` seconds of ``CLOCK``."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        n, t0 = 0, CLOCK()
        while CLOCK() - t0 < min_time:
            fn()
            n += 1
        best = min(best, (CLOCK() - t0) / n)
    return best


def stats(er, et) -> str:
    return (f"rot med/p95 {np.median(er):.3f}/{np.percentile(er, 95):.3f}"
            f"  trans med/p95 {np.median(et):.2f}/{np.percentile(et, 95):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--wall", action="store_true", help="time with the wall clock, not thread CPU time")
    args = ap.parse_args()
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    X, R, t, uv = problems(1024)
    print(f"torch {torch.__version__} threads {args.threads}; load average {os.getloadavg()[0]:.2f}; "
          f"{'wall' if args.wall else 'thread CPU'} time; 1 px noise; errors: rotation deg / translation mm; "
          f"µs per problem (x cv2 SQPNP)")

    def cv_loop(flag: int, n: int = 64):
        return [cv2.solvePnP(X[b], uv[b], K_NP, None, flags=flag)[1:] for b in range(n)]

    acc = {}
    for name, flag in (("SQPNP", cv2.SOLVEPNP_SQPNP), ("ITERATIVE", cv2.SOLVEPNP_ITERATIVE)):
        us = timeit(lambda: cv_loop(flag), args.repeats) / 64 * 1e6
        sols = cv_loop(flag, 1024)
        Re = np.stack([cv2.Rodrigues(rv)[0] for rv, _ in sols])
        te = np.stack([tv[:, 0] for _, tv in sols])
        acc[name] = (us, errors(Re, te, R, t))

    lines = []
    for dtype in (torch.float32, torch.float64):
        for B in (1, 64, 1024):
            x2 = torch.as_tensor(uv[:B], dtype=dtype)
            X3 = torch.as_tensor(X[:B], dtype=dtype)
            K = torch.as_tensor(np.broadcast_to(K_NP, (B, 3, 3)).copy(), dtype=dtype)
            for setting, kw in (("fixed", dict(iterations=args.iterations, tol=0)), ("default", {})):
                fwd = timeit(lambda: solve_pnp(x2, X3, K, **kw), args.repeats) / B * 1e6

                def fwd_bwd():
                    x = x2.clone().requires_grad_()
                    r = solve_pnp(x, X3, K, **kw)
                    (r.R.sum() + r.t.sum()).backward()
                fb = timeit(fwd_bwd, args.repeats) / B * 1e6
                res = solve_pnp(x2, X3, K, **kw)
                er, et = errors(res.R.double().numpy(), res.t.double().numpy(), R[:B], t[:B])
                lines.append((f"ours {str(dtype)[6:]:7s} {setting:7s} B={B:4d} it={res.iterations:2d}", fwd, fb,
                              f"  {stats(er, et)}  failed {int(res.failed.sum())}" if B >= 64 else ""))
    # SQPNP again after ours: the reference is its best time over the whole run.
    sq_after = timeit(lambda: cv_loop(cv2.SOLVEPNP_SQPNP), args.repeats) / 64 * 1e6
    ref = min(acc["SQPNP"][0], sq_after)
    print(f"cv2 SQPNP best {ref:.1f} µs (before ours {acc['SQPNP'][0]:.1f}, after {sq_after:.1f})")
    for name, (us, (er, et)) in acc.items():
        print(f"cv2 {name:10s} {us:8.1f} (x{us / ref:5.2f})  {stats(er, et)}")
    for label, fwd, fb, tail in lines:
        print(f"{label} fwd {fwd:8.1f} (x{fwd / ref:5.2f})  fwd+bwd {fb:8.1f} (x{fb / ref:5.2f}){tail}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
