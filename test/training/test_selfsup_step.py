"""Gradient paths of one self-supervised step (method.md steps 1-10)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pose6d_ros.geometry.pnp import solve_pnp
from pose6d_ros.training.perceptual import FeatureExtractor
from pose6d_ros.training.selfsup_step import SelfSupSettings, SelfSupStep

import _training_doubles as D


def _step(**kw):
    base = dict(use_occlusion=False, use_percep=False, use_sup_synthetic=False, fuse_forward=False)
    base.update(kw)
    return SelfSupStep(settings=SelfSupSettings(**base), keypoints_3d=D.keypoints_3d(),
                       render_fn=D.splat_render, pnp_fn=solve_pnp,
                       perceptual=FeatureExtractor([torch.nn.Conv2d(3, 4, 3)], [0], "test"),
                       occlusion_fn=D.occlusion)


def _grads(step, model, batch):
    model.zero_grad()
    out = step(SimpleNamespace(model=model, state={}), batch)
    out.losses["total"].backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]), out


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    model = D.TinyPhi()
    real, _ = D.real_batch(4)
    return model, {"real": real}


def test_gradients_reach_phi_through_pnp_and_renderer(setup):
    model, batch = setup
    # L_pose only: with every render path detached the PnP branch carries nothing
    g_none, out = _grads(_step(use_pose2=False, use_sup_render=False, grad_through_pnp=False), model, batch)
    assert out.metrics["valid_frac"] == 1.0
    g_mask, _ = _grads(_step(use_pose2=False, use_sup_render=False, grad_through_render_rgb=False), model, batch)
    g_rgb, _ = _grads(_step(use_pose2=False, use_sup_render=False, grad_through_mask=False), model, batch)
    g_both, _ = _grads(_step(use_pose2=False, use_sup_render=False), model, batch)
    g_cut, _ = _grads(_step(use_pose2=False, use_sup_render=False, grad_through_mask=False,
                            grad_through_render_rgb=False), model, batch)
    for g in (g_none, g_mask, g_rgb, g_both):
        assert torch.isfinite(g).all()
    # through m1 (mask) and through r1 (rgb): each path adds a nonzero contribution
    assert (g_mask - g_none).abs().max() > 1e-7
    assert (g_rgb - g_none).abs().max() > 1e-7
    # with both render paths cut, PnP still runs but contributes no gradient: same as no PnP path
    torch.testing.assert_close(g_cut, g_none)
    # the two paths add up (gradients are linear in the paths)
    path_sum = (g_mask - g_none) + (g_rgb - g_none)
    torch.testing.assert_close(g_both - g_none, path_sum, rtol=0, atol=1e-3 * float(path_sum.abs().max()))


def test_h1_receives_gradient_only_through_pnp(setup):
    model, batch = setup
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.calls = 0

        def forward(self, x, o, return_features=False):
            h = self.inner(x, o)
            if self.calls == 0:
                h.retain_grad()
                seen["h1"] = h
            self.calls += 1
            return h

    for through, expect_nonzero in ((True, True), (False, False)):
        spy = Spy(model)
        step = _step(use_pose2=False, use_sup_render=False, grad_through_pnp=through)
        step(SimpleNamespace(model=spy, state={}), batch).losses["total"].backward()
        g = seen["h1"].grad
        assert (g is not None and g.abs().max() > 0) == expect_nonzero


def test_stop_gradient_on_render_label(setup):
    model, batch = setup
    # L_sup's first term alone, render paths cut: the label π(y1) is detached, so no gradient reaches h1
    g, out = _grads(_step(use_pose=False, use_pose2=False, grad_through_mask=False,
                          grad_through_render_rgb=False), model, batch)
    g_nopnp, _ = _grads(_step(use_pose=False, use_pose2=False, grad_through_mask=False,
                              grad_through_render_rgb=False, grad_through_pnp=False), model, batch)
    torch.testing.assert_close(g, g_nopnp)
    assert set(out.losses) == {"sup", "total"}


def test_occlusion_never_reaches_masked_real(setup):
    model, batch = setup
    out = _step(use_occlusion=True, use_percep=True)(SimpleNamespace(model=model, state={}), batch)
    occ = D.occlusion(4, D.S, "cpu").bool().expand(-1, 3, -1, -1)
    # under the patch x_m is the constant background, never the noise
    assert torch.allclose(out.images["masked_real"][occ], torch.tensor(0.5))
    assert not torch.allclose(out.images["real"][occ], torch.tensor(0.5))
    assert torch.isfinite(out.losses["total"])


def test_failed_pnp_sample_is_rejected(setup):
    model, batch = setup
    batch["real"]["K"][1, 0, 0] = float("nan")  # PnP of sample 1 cannot succeed
    g, out = _grads(_step(), model, batch)
    assert out.metrics["valid_frac"] == pytest.approx(0.75)
    assert torch.isfinite(g).all() and torch.isfinite(out.losses["total"])


def test_gradients_through_the_real_renderer(setup):
    """Same check with pose6d_ros.rendering.render on a coloured box mesh (the library's renderer)."""
    import numpy as np
    import trimesh

    from pose6d_ros.rendering.mesh import Mesh, pack_meshes
    from pose6d_ros.rendering.renderer import RenderSettings, render

    model, batch = setup
    box = trimesh.creation.box(extents=(2 * D.HALF, 1.6 * D.HALF, 1.2 * D.HALF))
    colors = np.clip(np.asarray(box.vertices) / (2 * D.HALF) + 0.5, 0, 1)
    meshes = pack_meshes([Mesh.from_arrays(np.asarray(box.vertices, np.float32), np.asarray(box.faces), colors)])
    settings = RenderSettings(background=(0.0, 0.0, 0.0))

    def render_fn(obj, R, t, K, size):
        return render(meshes, obj, R, t, K, (size, size), settings)

    def step(**kw):
        base = dict(use_occlusion=False, use_percep=False, use_sup_synthetic=False, use_pose2=False,
                    use_sup_render=False)
        base.update(kw)
        return SelfSupStep(settings=SelfSupSettings(**base), keypoints_3d=D.keypoints_3d(), render_fn=render_fn,
                           pnp_fn=solve_pnp)

    g_none, out = _grads(step(grad_through_pnp=False), model, batch)
    g_mask, _ = _grads(step(grad_through_render_rgb=False), model, batch)
    g_rgb, _ = _grads(step(grad_through_mask=False), model, batch)
    assert out.metrics["valid_frac"] == 1.0 and out.metrics["mask_mean"] > 0.05
    for g in (g_none, g_mask, g_rgb):
        assert torch.isfinite(g).all()
    assert (g_mask - g_none).abs().max() > 1e-7
    assert (g_rgb - g_none).abs().max() > 1e-7


def test_render_label_term_has_no_path_to_the_pose(setup):
    """Eq. 2's render term alone: with sg[r1] (default) the pose gets no gradient, so Φ's gradient is
    the same as with PnP cut; sharing h3 = Φ(r1) with Eq. 1 (sup_render_detached=False) opens that path."""
    model, batch = setup
    only_sup = dict(use_pose=False, use_pose2=False, use_sup_render=True)
    g_default, _ = _grads(_step(**only_sup), model, batch)
    g_cut, _ = _grads(_step(**only_sup, grad_through_pnp=False), model, batch)
    g_shared, _ = _grads(_step(**only_sup, sup_render_detached=False), model, batch)
    torch.testing.assert_close(g_default, g_cut)
    assert (g_shared - g_cut).abs().max() > 1e-7


def test_box_term_against_opencv(setup):
    """L_box in the step, wired through PnP and the extent projection, against OpenCV's solvePnP and
    projectPoints on the same h1 and the hand formula of losses.box_consistency."""
    import cv2
    import numpy as np

    from pose6d_ros.geometry.camera import normalized_to_pixels

    model, batch = setup
    B = batch["real"]["image"].shape[0]
    cube = D.cube_points()
    with torch.no_grad():
        h1 = model(batch["real"]["image"], batch["real"]["object_index"]).double()
    uv = normalized_to_pixels(h1, D.S).numpy()
    K = batch["real"]["K"][0].double().numpy()
    ext = []
    for b in range(B):
        ok, rvec, tvec = cv2.solvePnP(D.keypoints_3d()[0].double().numpy(), uv[b], K, None,
                                      flags=cv2.SOLVEPNP_ITERATIVE)
        assert ok
        proj, _ = cv2.projectPoints(cube.double().numpy(), rvec, tvec, K, None)
        ext.append(np.concatenate([proj[:, 0].min(0), proj[:, 0].max(0)]))
    ext = torch.as_tensor(np.stack(ext))  # (B, 4) crop px
    # the detection box: the object's extent grown 1.5x about its centre and moved 2 px right
    centre, half = (ext[:, :2] + ext[:, 2:]) / 2, (ext[:, 2:] - ext[:, :2]) / 2
    box = torch.cat((centre - 1.5 * half, centre + 1.5 * half), 1) + torch.tensor([2.0, 0, 2.0, 0])
    batch["real"]["box"] = box.float()
    step = SelfSupStep(settings=SelfSupSettings(use_pose=False, use_pose2=False, use_sup_render=False,
                                                use_sup_synthetic=False, use_percep=False, use_mask=False,
                                                use_occlusion=False, use_box=True, huber_delta=1.0),
                       keypoints_3d=D.keypoints_3d(), render_fn=D.splat_render, pnp_fn=solve_pnp,
                       extent_points=cube[None])
    got = step(SimpleNamespace(model=model, state={}), batch).losses["box"]

    to_n = lambda px: (px + 0.5) * 2 / D.S - 1  # noqa: E731  (pixel -> normalised, conventions.md)
    c_pose, c_det = to_n(centre), to_n(centre + torch.tensor([2.0, 0]))
    target = c_det[:, None] + 1.5 * (h1 - c_pose[:, None])
    expected = 0.5 * ((h1 - target) ** 2).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-3)
    assert got.item() > 1e-4
    with pytest.raises(ValueError, match="extent_points"):
        SelfSupStep(settings=SelfSupSettings(use_box=True), keypoints_3d=D.keypoints_3d(),
                    render_fn=D.splat_render, pnp_fn=solve_pnp, perceptual=torch.nn.Identity(),
                    occlusion_fn=D.occlusion)


def _box_render_fn():
    import numpy as np
    import trimesh

    from pose6d_ros.rendering.mesh import Mesh, pack_meshes
    from pose6d_ros.rendering.renderer import RenderSettings, render

    box = trimesh.creation.box(extents=(2 * D.HALF, 1.6 * D.HALF, 1.2 * D.HALF))
    colors = np.clip(np.asarray(box.vertices) / (2 * D.HALF) + 0.5, 0, 1)
    meshes = pack_meshes([Mesh.from_arrays(np.asarray(box.vertices, np.float32), np.asarray(box.faces), colors)])
    settings = RenderSettings(background=(0.0, 0.0, 0.0))
    return lambda obj, R, t, K, size: render(meshes, obj, R, t, K, (size, size), settings)


def test_refine_pose_moves_a_shifted_pose_back():
    """Render-and-compare on the pose alone: the 'real' image is the box rendered at a known pose on a
    grey background; starting 2 px / 3 deg off, the refined pose is closer to the known one."""
    import math

    from pose6d_ros.geometry.keypoints import project_points
    from pose6d_ros.training.selfsup_step import refine_pose

    torch.manual_seed(0)
    render_fn = _box_render_fn()
    B, S = 4, D.S
    K = D.intrinsics(B)
    ang = torch.tensor([0.4, 0.9, 1.3, 2.0])
    R_gt = torch.stack([torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
                        for a in ang])
    t_gt = torch.tensor([0.0, 0.0, 0.5]).expand(B, 3).clone()
    obj = torch.zeros(B, dtype=torch.long)
    r = render_fn(obj, R_gt, t_gt, K, S)
    image = r.rgb + (1 - r.silhouette) * 0.5
    small = math.radians(3)
    dR = torch.tensor([[1, 0, 0], [0, math.cos(small), -math.sin(small)], [0, math.sin(small), math.cos(small)]])
    t0 = t_gt + torch.tensor([2.0 * 0.5 / 120.0, -1.0 * 0.5 / 120.0, 0.0])  # 2 px right, 1 px up
    R0 = dR @ R_gt
    feats = FeatureExtractor([torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)], [1, 2], "random")
    R, t = refine_pose(render_fn, feats, obj, R0, t0, K, image, steps=60, lr=0.002)
    kp3 = D.keypoints_3d()[0].expand(B, -1, -1)

    def err(Ra, ta):  # mean keypoint distance to the known pose, px (analytic projection)
        return (project_points(kp3, Ra, ta, K) - project_points(kp3, R_gt, t_gt, K)).norm(dim=-1).mean(-1)

    before, after = err(R0, t0), err(R, t)
    assert torch.isfinite(after).all()
    assert bool((after < 0.6 * before).all()), (before, after)
