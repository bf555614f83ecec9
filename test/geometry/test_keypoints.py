from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch

from pose6d_ros.geometry.keypoints import box_keypoints, project_camera_points, project_points, transform_points


class TestBoxKeypoints:
    def test_order_matches_conventions(self):
        rng = np.random.default_rng(0)
        V = rng.normal(size=(100, 3)) * np.array([0.05, 0.02, 0.08])
        lo, hi = V.min(0), V.max(0)
        expected = list(itertools.product((lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2])))
        expected.append(tuple((lo + hi) / 2))
        out = box_keypoints(torch.from_numpy(V))
        np.testing.assert_allclose(out.numpy(), np.array(expected))
        np.testing.assert_allclose(box_keypoints(torch.from_numpy(V), with_centroid=False).numpy(),
                                   np.array(expected[:8]))

    def test_batched(self, device, dtype):
        V = torch.randn(4, 50, 3, device=device, dtype=dtype)
        out = box_keypoints(V)
        assert out.shape == (4, 9, 3)
        torch.testing.assert_close(out[2], box_keypoints(V[2]))

    def test_exceptions(self):
        with pytest.raises(ValueError, match="vertices"):
            box_keypoints(torch.zeros(10, 2))


class TestProject:
    def test_matches_opencv(self):
        rng = np.random.default_rng(1)
        B, N = 5, 9
        pts = rng.uniform(-0.1, 0.1, (B, N, 3))
        rvec = rng.normal(size=(B, 3))
        t = np.concatenate([rng.uniform(-0.2, 0.2, (B, 2)), rng.uniform(0.4, 1.5, (B, 1))], -1)
        K = np.array([[600.0, 0, 320], [0, 610, 240], [0, 0, 1]])
        R = np.stack([cv2.Rodrigues(r)[0] for r in rvec])
        ref = np.stack([cv2.projectPoints(pts[b], rvec[b], t[b], K, None)[0][:, 0] for b in range(B)])
        ours = project_points(torch.from_numpy(pts), torch.from_numpy(R), torch.from_numpy(t),
                              torch.from_numpy(K).expand(B, 3, 3))
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-9)
        # shared (N, 3) points
        shared = project_points(torch.from_numpy(pts[0]), torch.from_numpy(R), torch.from_numpy(t),
                                torch.from_numpy(K).expand(B, 3, 3))
        np.testing.assert_allclose(shared[0].numpy(), ref[0], atol=1e-9)

    def test_skewed_camera_matches_homogeneous_formula(self):
        """The one projection (rasterizer, metrics, keypoints) against ``K @ X`` dehomogenised, with a
        skew OpenCV's projectPoints would ignore."""
        rng = np.random.default_rng(2)
        X = np.concatenate([rng.uniform(-0.3, 0.3, (3, 7, 2)), rng.uniform(0.3, 2.0, (3, 7, 1))], -1)
        K = np.array([[[500.0, 3.5, 320.0], [0, 520.0, 240.0], [0, 0, 1]]]).repeat(3, 0)
        K[1, 0, 1] = -2.0
        uvw = np.einsum("bij,bnj->bni", K, X)
        ours = project_camera_points(torch.from_numpy(X), torch.from_numpy(K))
        np.testing.assert_allclose(ours.numpy(), uvw[..., :2] / uvw[..., 2:], rtol=0, atol=1e-9)

    def test_transform_hand(self):
        R = torch.tensor([[[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]])
        out = transform_points(torch.tensor([[1.0, 2, 3]]), R, torch.tensor([[0.0, 0, 1]]))
        torch.testing.assert_close(out, torch.tensor([[[-2.0, 1, 4]]]))

    def test_exceptions(self):
        with pytest.raises(ValueError, match="R"):
            transform_points(torch.zeros(2, 3), torch.zeros(1, 3), torch.zeros(1, 3))
        with pytest.raises(ValueError, match="batch"):
            project_points(torch.zeros(2, 4, 3), torch.eye(3).expand(2, 3, 3), torch.zeros(2, 3),
                           torch.eye(3).expand(3, 3, 3))
