from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pose6d_ros.geometry.camera import (CameraModel, crop_affine, crop_intrinsics, distort_points,
                                        normalized_to_pixels, pixels_to_normalized,
                                        undistort_points)

K_NP = np.array([[600.0, 0.0, 318.0], [0.0, 590.0, 243.0], [0.0, 0.0, 1.0]])
D_PLUMB = np.array([-0.28, 0.09, 0.0012, -0.0008, -0.012])
D_RATIONAL = np.array([0.45, -0.12, 0.0007, 0.0011, 0.02, 0.78, -0.05, 0.06])


class TestCameraModel:
    def test_smoke(self):
        cam = CameraModel.from_camera_info_fields(K_NP.ravel().tolist(), D_PLUMB.tolist(),
                                                  "plumb_bob", 640, 480)
        assert cam.K_tensor(torch.float64).shape == (3, 3)
        assert cam.has_distortion
        assert cam.D_tensor().shape == (5,)

    def test_empty_model_reads_as_none(self):
        cam = CameraModel.from_camera_info_fields(K_NP.ravel().tolist(), [], "", 640, 480)
        assert cam.distortion_model == "none" and not cam.has_distortion

    @pytest.mark.parametrize("K, D, model, match", [
        (np.full((3, 3), np.nan), np.zeros(5), "plumb_bob", "K"),
        (np.diag([-1.0, 1.0, 1.0]), np.zeros(5), "plumb_bob", "fx"),
        (K_NP, np.zeros(4), "plumb_bob", "D"),
        (K_NP, np.zeros(5), "rational_polynomial", "D"),
        (K_NP, np.zeros(5), "fisheye42", "distortion_model"),
        (K_NP, np.array([np.inf, 0, 0, 0, 0]), "plumb_bob", "D"),
        (np.eye(2), np.zeros(5), "plumb_bob", "K"),
    ])
    def test_exceptions(self, K, D, model, match):
        with pytest.raises(ValueError, match=match):
            CameraModel(K=K, width=640, height=480, distortion_model=model, D=D)

    def test_bad_camera_info_k(self):
        with pytest.raises(ValueError, match="k"):
            CameraModel.from_camera_info_fields([1.0] * 8, [], "none", 640, 480)


def _random_pixels(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.uniform(0, 639, n), rng.uniform(0, 479, n)], axis=-1)


class TestUndistort:
    @pytest.mark.parametrize("D", [D_PLUMB, D_RATIONAL, D_PLUMB[:4]], ids=["plumb", "rational", "four"])
    def test_matches_opencv_default(self, D):
        # Same fixed-point scheme as OpenCV: 5 iterations must reproduce its default output.
        uv = _random_pixels(200, np.random.default_rng(1))
        ref = cv2.undistortPoints(uv[:, None, :], K_NP, D, P=K_NP)[:, 0, :]
        ours = undistort_points(torch.from_numpy(uv)[None], torch.from_numpy(K_NP)[None],
                                torch.from_numpy(D)[None], iterations=5)[0].numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-3)

    @pytest.mark.parametrize("D", [D_PLUMB, D_RATIONAL], ids=["plumb", "rational"])
    def test_converged_inverts_opencv_distortion(self, D):
        # Ideal pixels -> cv2.projectPoints (distort) -> ours must give the ideal pixels back.
        rng = np.random.default_rng(2)
        ideal = _random_pixels(300, rng) * 0.8 + np.array([64.0, 48.0])
        xyz = np.concatenate([(ideal - K_NP[:2, 2]) / np.diag(K_NP)[:2], np.ones((300, 1))], -1)
        distorted = cv2.projectPoints(xyz, np.zeros(3), np.zeros(3), K_NP, D)[0][:, 0, :]
        ours = undistort_points(torch.from_numpy(distorted)[None], torch.from_numpy(K_NP)[None],
                                torch.from_numpy(D)[None], iterations=50)[0].numpy()
        np.testing.assert_allclose(ours, ideal, atol=1e-4)
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)
        ref = cv2.undistortPoints(distorted[:, None, :], K_NP, D, R=None, P=K_NP, criteria=crit)[:, 0, :]
        np.testing.assert_allclose(ours, ref, atol=1e-4)

    def test_distort_matches_opencv(self):
        rng = np.random.default_rng(3)
        xy = rng.uniform(-0.5, 0.5, (50, 2))
        xyz = np.concatenate([xy, np.ones((50, 1))], -1)
        ref = cv2.projectPoints(xyz, np.zeros(3), np.zeros(3), np.eye(3), D_RATIONAL)[0][:, 0, :]
        ours = distort_points(torch.from_numpy(xy)[None], torch.from_numpy(D_RATIONAL)[None])[0]
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-10)

    def test_batched_devices(self, device, dtype):
        uv = torch.tensor(_random_pixels(20, np.random.default_rng(4)), dtype=dtype, device=device)
        K = torch.tensor(K_NP, dtype=dtype, device=device)
        D = torch.tensor(np.stack([D_PLUMB, np.zeros(5)]), dtype=dtype, device=device)
        out = undistort_points(torch.stack([uv, uv]), torch.stack([K, K]), D)
        assert out.shape == (2, 20, 2) and out.dtype == dtype
        torch.testing.assert_close(out[1], uv)  # zero distortion is the identity
        assert not torch.allclose(out[0], uv)

    @pytest.mark.parametrize("D", [np.zeros(5), np.zeros(8), np.zeros(4)], ids=["plumb", "rational", "four"])
    def test_zero_distortion_matches_opencv(self, D):
        # All-zero coefficients: no iteration, the points come back as given, which is what OpenCV gives.
        uv = _random_pixels(100, np.random.default_rng(6))
        ref = cv2.undistortPoints(uv[:, None, :], K_NP, D, P=K_NP)[:, 0, :]
        uv_t = torch.from_numpy(uv)[None]
        ours = undistort_points(uv_t, torch.from_numpy(K_NP)[None], torch.from_numpy(D)[None])
        np.testing.assert_allclose(ours[0].numpy(), ref, atol=1e-9)
        assert torch.equal(ours, uv_t)

    def test_mixed_batch_matches_opencv_per_row(self):
        # Rows with and without distortion in one batch: each row as OpenCV run to convergence.
        uv = _random_pixels(60, np.random.default_rng(7))
        Ds = [D_PLUMB, np.zeros(8), D_RATIONAL, np.zeros(8)]
        Ds = [np.pad(D, (0, 8 - len(D))) for D in Ds]
        out = undistort_points(torch.from_numpy(uv)[None].expand(4, -1, -1), torch.from_numpy(K_NP)[None].expand(4, -1, -1),
                               torch.from_numpy(np.stack(Ds)), iterations=100)
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-14)
        for b, D in enumerate(Ds):
            ref = cv2.undistortPoints(uv[:, None, :], K_NP, D, R=None, P=K_NP, criteria=crit)[:, 0, :]
            np.testing.assert_allclose(out[b].numpy(), ref, atol=1e-6)
        assert torch.equal(out[1], torch.from_numpy(uv)) and torch.equal(out[3], torch.from_numpy(uv))

    @pytest.mark.parametrize("D", [D_PLUMB, D_RATIONAL, np.array([-0.1, 0.02, 0.0, 0.0, 0.0])],
                             ids=["plumb", "rational", "radial"])
    @pytest.mark.parametrize("iterations", [1, 3, 7])
    def test_fixed_iteration_count_matches_opencv(self, D, iterations):
        # tol=0: exactly `iterations` steps of OpenCV's scheme (its COUNT-only criterion).
        uv = _random_pixels(200, np.random.default_rng(8))
        crit = (cv2.TERM_CRITERIA_COUNT, iterations, 0.0)
        ref = cv2.undistortPoints(uv[:, None, :], K_NP, D, R=None, P=K_NP, criteria=crit)[:, 0, :]
        ours = undistort_points(torch.from_numpy(uv)[None], torch.from_numpy(K_NP)[None], torch.from_numpy(D)[None],
                                iterations=iterations, tol=0)[0].numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-9)

    @pytest.mark.parametrize("D", [D_PLUMB, D_RATIONAL], ids=["plumb", "rational"])
    def test_early_stop_matches_opencv_converged(self, D):
        # Mild distortion near the centre converges in a few iterations: the default settings stop
        # early and must agree with OpenCV iterated to convergence.
        uv = _random_pixels(200, np.random.default_rng(9)) * 0.3 + np.array([224.0, 168.0])
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-15)
        ref = cv2.undistortPoints(uv[:, None, :], K_NP, D * 0.3, R=None, P=K_NP, criteria=crit)[:, 0, :]
        ours = undistort_points(torch.from_numpy(uv)[None], torch.from_numpy(K_NP)[None],
                                torch.from_numpy(D * 0.3)[None], iterations=200)[0].numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-9)

    def test_gradcheck(self):
        uv = torch.tensor(_random_pixels(5, np.random.default_rng(10)), dtype=torch.float64)[None].requires_grad_()
        K, D = torch.from_numpy(K_NP)[None], torch.from_numpy(D_RATIONAL)[None]
        assert torch.autograd.gradcheck(lambda x: undistort_points(x, K, D, iterations=8, tol=0), (uv,))

    def test_exceptions(self):
        with pytest.raises(ValueError, match="D"):
            undistort_points(torch.zeros(1, 3, 2), torch.eye(3)[None], torch.zeros(1, 6))
        with pytest.raises(ValueError, match="uv"):
            undistort_points(torch.zeros(1, 3, 3), torch.eye(3)[None], torch.zeros(1, 5))


class TestCrop:
    def test_full_image_box_is_identity(self):
        K = torch.from_numpy(K_NP)[None]
        box = torch.tensor([[-0.5, -0.5, 639.5, 479.5]], dtype=torch.float64)
        torch.testing.assert_close(crop_intrinsics(K, box, (480, 640)), K)

    def test_hand_computed(self):
        K = torch.from_numpy(K_NP)[None]
        box = torch.tensor([[100.0, 50.0, 300.0, 250.0]], dtype=torch.float64)
        Kc = crop_intrinsics(K, box, 128)[0].numpy()
        s = 128 / 200
        expected = np.array([[600 * s, 0, (318 - 100) * s - 0.5], [0, 590 * s, (243 - 50) * s - 0.5],
                             [0, 0, 1]])
        np.testing.assert_allclose(Kc, expected)

    def test_projection_consistent_with_warp_affine(self):
        # A Gaussian blob centred at a projected point, warped with cv2.warpAffine, must peak where
        # K_crop projects the same 3D point.
        rng = np.random.default_rng(5)
        X = np.array([0.03, -0.02, 0.7])
        uv = K_NP[:2, :2] @ (X[:2] / X[2]) + K_NP[:2, 2]
        jj, ii = np.meshgrid(np.arange(640), np.arange(480))
        img = np.exp(-((jj - uv[0]) ** 2 + (ii - uv[1]) ** 2) / (2 * 6.0 ** 2)).astype(np.float32)
        box = np.array([uv[0] - 70.3, uv[1] - 51.1, uv[0] + 60.2, uv[1] + 79.4]) + rng.normal(0, 1, 4)
        S = 96
        A = crop_affine(torch.from_numpy(box)[None], S)[0].numpy()
        crop = cv2.warpAffine(img, A, (S, S), flags=cv2.INTER_LINEAR)
        w = crop / crop.sum()
        cj, ci = np.meshgrid(np.arange(S), np.arange(S))
        peak = np.array([(w * cj).sum(), (w * ci).sum()])
        Kc = crop_intrinsics(torch.from_numpy(K_NP)[None], torch.from_numpy(box)[None], S)[0].numpy()
        uv_c = Kc[:2, :2] @ (X[:2] / X[2]) + Kc[:2, 2]
        np.testing.assert_allclose(peak, uv_c, atol=0.02)

    def test_normalized_matches_grid_sample(self):
        # grid_sample(align_corners=False) of an image holding its own u/v coordinates at n must
        # return normalized_to_pixels(n).
        H, W = 24, 40
        v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                              indexing="ij")
        img = torch.stack([u, v])[None]
        n = torch.rand(1, 1, 30, 2, dtype=torch.float64) * 1.6 - 0.8
        sampled = torch.nn.functional.grid_sample(img, n, align_corners=False)[0, :, 0].T
        torch.testing.assert_close(normalized_to_pixels(n[0, 0], (H, W)), sampled)
        torch.testing.assert_close(pixels_to_normalized(sampled, (H, W)), n[0, 0])

    def test_normalized_edges(self):
        uv = torch.tensor([[-0.5, -0.5], [63.5, 63.5], [31.5, 31.5]])
        torch.testing.assert_close(pixels_to_normalized(uv, 64),
                                   torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))

    def test_exceptions(self):
        with pytest.raises(ValueError, match="boxes"):
            crop_intrinsics(torch.eye(3)[None], torch.zeros(1, 3), 64)
        with pytest.raises(ValueError, match="K"):
            crop_intrinsics(torch.eye(3), torch.zeros(1, 4), 64)
