"""The two domains differ as intended: in appearance (a tiny CNN tells them apart), not in geometry
(our rasterizer and pyrender give the same silhouettes at the same pose)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose6d_ros.data.suites import load_suite_registry
from pose6d_ros.data.synthetic import SyntheticConfig, SyntheticCrops
from pose6d_ros.rendering._gl import import_pyrender

pyrender = import_pyrender()  # OSMesa; torch's compiler stack first

FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV camera -> OpenGL camera


def _gl_camera(K: np.ndarray) -> "pyrender.IntrinsicsCamera":
    """OpenGL samples pixel j at window coordinate j + 0.5, OpenCV at j: shift the principal point."""
    return pyrender.IntrinsicsCamera(K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5, znear=0.01, zfar=10)


@pytest.fixture(scope="module")
def registry():
    return load_suite_registry("lm-lite")


def test_silhouettes_of_both_renderers_agree(registry):
    S = 128
    ds = SyntheticCrops(registry, 1000, SyntheticConfig(size=S), seed=11)
    b = ds.batch(range(13))
    r = pyrender.OffscreenRenderer(S, S)
    ious = []
    for j in range(13):
        o = registry.get(int(b["obj_id"][j]))
        K = b["K_crop"][j].double().numpy()
        sc = pyrender.Scene()
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = b["R"][j].double().numpy(), b["t"][j].double().numpy()
        sc.add(pyrender.Mesh.from_trimesh(o.load_mesh()), pose=T)
        sc.add(_gl_camera(K), pose=FLIP)
        ref = r.render(sc, pyrender.RenderFlags.DEPTH_ONLY) > 0
        ours = b["mask"][j, 0].numpy() > 0.5
        ious.append((ref & ours).sum() / (ref | ours).sum())
    r.delete()
    assert np.mean(ious) > 0.98 and min(ious) > 0.95, ious


def _real_crops(registry, per_object: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two jittered target crops per simulated real frame, and each crop's within-object frame index."""
    from pose6d_ros.data.crops import bop_bbox_to_box, crop_images, jitter_boxes, square_windows
    from pose6d_ros.data.simreal import LINEMOD_K, RealDomainConfig, RealRenderer, bbox_of, sample_frames

    # Half-resolution frames keep the test fast; the appearance pipeline is the same.
    K = LINEMOD_K.copy()
    K[:2] *= 0.5
    K[:2, 2] -= 0.25  # pixel centres: u' = (u + 0.5) / 2 - 0.5
    cfg = RealDomainConfig(width=320, height=240, K=K, object_px=(35.0, 85.0))
    rr = RealRenderer(registry, cfg, seed=0)
    specs = [s for oid in registry.ids for s in sample_frames(registry, oid, range(per_object), cfg, seed=9)]
    frames = [rr.render(s) for s in specs]
    rr.close()
    imgs = torch.stack([torch.from_numpy(f.rgb).permute(2, 0, 1).float() / 255 for f in frames])
    boxes = torch.tensor([bbox_of(f.masks_visib[0]) for f in frames], dtype=torch.float32).repeat(2, 1)
    windows = jitter_boxes(square_windows(bop_bbox_to_box(boxes), padding=1.3),
                           generator=torch.Generator().manual_seed(0))
    frame_idx = torch.arange(len(frames)).repeat(2)
    crops = crop_images(imgs, windows, size, batch_idx=frame_idx)
    return crops, torch.tensor([s.im_id for s in specs]).repeat(2)


@pytest.mark.slow
def test_tiny_cnn_separates_source_from_target(registry):
    """Held-out accuracy > 95%. Real test crops come from frames never seen in training (no two
    crops of one frame on both sides), so the classifier must learn the domain, not the frames."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared 2-core machine
    try:
        _separate(registry)
    finally:
        torch.set_num_threads(threads)


def _separate(registry) -> None:
    torch.manual_seed(0)
    per_object, S = 20, 64
    real, im_idx = _real_crops(registry, per_object, S)
    ds = SyntheticCrops(registry, 10_000, SyntheticConfig(size=S), seed=1)
    syn = torch.cat([ds.batch(range(i, min(i + 64, len(real))))["image"] for i in range(0, len(real), 64)])
    held_out = im_idx >= 15
    n_syn_train = int((~held_out).sum())
    x_tr = torch.cat([syn[:n_syn_train], real[~held_out]])
    y_tr = torch.cat([torch.zeros(n_syn_train), torch.ones(int((~held_out).sum()))])
    x_te = torch.cat([syn[n_syn_train:], real[held_out]])
    y_te = torch.cat([torch.zeros(len(syn) - n_syn_train), torch.ones(int(held_out.sum()))])
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(1000):
        idx = torch.randint(0, len(x_tr), (32,))
        logits = net((x_tr[idx] - 0.5) / 0.25)[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_tr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = ((net((x_te - 0.5) / 0.25)[:, 0] > 0).float() == y_te).float().mean().item()
    assert acc > 0.95, acc
