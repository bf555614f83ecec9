"""Crops: K_crop against hand formulas, image features landing where K_crop says, grid_sample == cv2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose6d_ros.data.crops import (
    bop_bbox_to_box,
    crop_detections,
    crop_grid,
    crop_image_cv2,
    crop_images,
    jitter_boxes,
    square_windows,
)
from pose6d_ros.geometry.camera import crop_affine

K_FULL = torch.tensor([[572.4, 0.0, 325.3], [0.0, 573.6, 242.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _project(K: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Naive pinhole projection, ``(N, 3)`` -> ``(N, 2)``."""
    x = X @ K.T
    return x[:, :2] / x[:, 2:]


def _smooth_image(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([0.5 + 0.4 * np.sin(xx / 7.0) * np.cos(yy / 5.0), xx / w, yy / h], -1).astype(np.float32)


def _cv2_tol(img: np.ndarray) -> float:
    """cv2.warpAffine quantises sample positions to 1/32 px: allow max|grad I| * 1/64 (plus rounding)."""
    gy, gx = np.gradient(np.asarray(img, dtype=np.float64), axis=(0, 1))
    return float(np.abs(gx).max() + np.abs(gy).max()) / 64 + 1e-5


class TestWindows:
    def test_square_hand_values(self):
        w = square_windows(torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 8.0, 2.0]]), padding=1.5)
        # centre (20, 40), side 1.5 * 40 = 60; centre (4, 1), side 12
        assert w.tolist() == [[-10.0, 10.0, 50.0, 70.0], [-2.0, -5.0, 10.0, 7.0]]

    def test_bop_bbox(self):
        # BOP (x, y, w, h) spans pixel centres x..x+w -> edges half a pixel out
        assert bop_bbox_to_box(torch.tensor([10.0, 20.0, 5.0, 3.0])).tolist() == [9.5, 19.5, 15.5, 23.5]

    def test_bad_padding(self):
        with pytest.raises(ValueError, match="padding"):
            square_windows(torch.zeros(1, 4), padding=0)
        with pytest.raises(ValueError, match=r"boxes: expected shape \(N, 4\)"):
            square_windows(torch.zeros(4), padding=1.2)

    def test_jitter_bounds_and_reproducible(self):
        boxes = torch.tensor([[100.0, 50.0, 200.0, 90.0]]).repeat(2000, 1)
        g = torch.Generator().manual_seed(3)
        j = jitter_boxes(boxes, shift=0.1, scale=0.2, generator=g)
        wh, wh_j = boxes[:, 2:] - boxes[:, :2], j[:, 2:] - j[:, :2]
        dc = (j[:, :2] + j[:, 2:]) / 2 - (boxes[:, :2] + boxes[:, 2:]) / 2
        assert (dc.abs() <= 0.1 * wh + 1e-4).all()
        ratio = wh_j / wh
        assert torch.allclose(ratio[:, 0], ratio[:, 1], atol=1e-5)  # aspect kept
        assert ratio.min() >= 0.8 - 1e-5 and ratio.max() <= 1.2 + 1e-5
        assert ratio.min() < 0.85 and ratio.max() > 1.15 and dc[:, 0].abs().max() > 8  # the range is used
        j2 = jitter_boxes(boxes, shift=0.1, scale=0.2, generator=torch.Generator().manual_seed(3))
        assert torch.equal(j, j2)


class TestIntrinsics:
    def test_points_map_like_k_crop(self):
        """Project with K_full, map by the crop formula of conventions.md: equals projecting with K_crop."""
        g = torch.Generator().manual_seed(0)
        X = torch.rand(20, 3, generator=g, dtype=torch.float64) * torch.tensor([0.4, 0.3, 0.5]) + torch.tensor(
            [-0.2, -0.15, 0.8])
        boxes = torch.tensor([[250.0, 180.0, 330.0, 300.0], [10.0, -20.0, 100.0, 40.0]], dtype=torch.float64)
        S = 96
        out = crop_detections(torch.zeros(3, 480, 640, dtype=torch.float64), K_FULL, boxes, size=S, padding=1.4)
        uv = _project(K_FULL, X)
        for n in range(2):
            x0, y0, x1, y1 = out.windows[n].tolist()
            hand = torch.stack([(uv[:, 0] - x0) * S / (x1 - x0) - 0.5, (uv[:, 1] - y0) * S / (y1 - y0) - 0.5], -1)
            torch.testing.assert_close(_project(out.K[n], X), hand, rtol=0, atol=1e-9)

    def test_dot_lands_where_k_crop_says(self):
        """A Gaussian dot drawn at a 3D point's projection is found, in the crop, at K_crop's projection."""
        X = torch.tensor([[0.031, -0.027, 0.9]], dtype=torch.float64)
        uv = _project(K_FULL, X)[0].numpy()
        yy, xx = np.mgrid[0:480, 0:640].astype(np.float64)
        sigma = 4.0
        img = np.exp(-((xx - uv[0]) ** 2 + (yy - uv[1]) ** 2) / (2 * sigma ** 2))
        image = torch.from_numpy(np.repeat(img[None], 3, 0))
        box = torch.tensor([[uv[0] - 37.3, uv[1] - 22.1, uv[0] + 30.2, uv[1] + 41.7]], dtype=torch.float64)
        S = 64
        out = crop_detections(image, K_FULL, box, size=S, padding=1.3)
        crop = out.images[0, 0].numpy()
        cy, cx = np.mgrid[0:S, 0:S].astype(np.float64)
        wsum = crop.sum()
        centroid = np.array([(crop * cx).sum() / wsum, (crop * cy).sum() / wsum])
        expected = _project(out.K[0], X)[0].numpy()
        assert np.abs(centroid - expected).max() < 0.05


class TestResampling:
    def test_matches_cv2_warp_affine(self, device, dtype):
        img = _smooth_image(60, 80)
        windows = np.array([[10.3, -5.2, 50.7, 35.2], [-20.0, 30.0, 100.0, 150.0], [0.0, 0.0, 5.0, 5.0]])
        t_img = torch.from_numpy(img).permute(2, 0, 1).to(device, dtype)
        got = crop_images(t_img, torch.from_numpy(windows).to(device, dtype), 32)
        for n, win in enumerate(windows):
            ref = crop_image_cv2(img, win, 32)
            np.testing.assert_allclose(got[n].permute(1, 2, 0).cpu().double().numpy(), ref, atol=_cv2_tol(img))

    def test_non_square_crops_match_cv2_warp_affine(self, device, dtype):
        # (Hc, Wc) crops: the grid's two axes scale independently; cv2.warpAffine with crop_affine's M.
        import cv2

        img = _smooth_image(70, 90)
        windows = np.array([[12.3, -4.1, 61.7, 40.2], [-15.0, 20.0, 95.0, 80.0]])
        t_img = torch.from_numpy(img).permute(2, 0, 1).to(device, dtype)
        got = crop_images(t_img, torch.from_numpy(windows).to(device, dtype), (24, 40))
        assert got.shape == (2, 3, 24, 40)
        for n, win in enumerate(windows):
            M = crop_affine(torch.from_numpy(win)[None], (24, 40))[0].numpy()
            ref = cv2.warpAffine(img, M, (40, 24), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=0)
            np.testing.assert_allclose(got[n].permute(1, 2, 0).cpu().double().numpy(), ref, atol=_cv2_tol(img))

    def test_sizes_and_dtypes_in_turn_match_cv2(self):
        # The constant part of the grid is cached per (size, dtype, device): alternating sizes and
        # dtypes must each still give cv2's crop.
        img = _smooth_image(40, 50)
        win = np.array([3.2, 5.1, 30.4, 33.0])
        for size, dt in [(16, torch.float32), (20, torch.float64), (16, torch.float64), (20, torch.float32),
                         (16, torch.float32)]:
            got = crop_images(torch.from_numpy(img).permute(2, 0, 1).to(dt), torch.from_numpy(win)[None].to(dt), size)
            np.testing.assert_allclose(got[0].permute(1, 2, 0).double().numpy(), crop_image_cv2(img, win, size),
                                       atol=_cv2_tol(img))

    def test_grid_matches_affine_inverse(self):
        # Each grid point, taken back to image pixels, is crop_affine's inverse of the crop pixel
        # (hand-inverted here: u = (u_c + 0.5 - b) / s).
        windows = torch.tensor([[10.5, -3.0, 74.5, 45.0], [-20.0, 30.0, 5.0, 80.0]], dtype=torch.float64)
        grid = crop_grid(windows, (60, 80), (12, 16))
        A = crop_affine(windows, (12, 16))
        jj, ii = torch.meshgrid(torch.arange(16.0, dtype=torch.float64), torch.arange(12.0, dtype=torch.float64),
                                indexing="xy")
        for n in range(2):
            u = (jj - A[n, 0, 2]) / A[n, 0, 0]
            v = (ii - A[n, 1, 2]) / A[n, 1, 1]
            torch.testing.assert_close(grid[n, ..., 0], (u + 0.5) * 2 / 80 - 1, rtol=0, atol=1e-12)
            torch.testing.assert_close(grid[n, ..., 1], (v + 0.5) * 2 / 60 - 1, rtol=0, atol=1e-12)

    def test_uint8_matches_cv2(self):
        rng = np.random.default_rng(0)
        img = (_smooth_image(50, 70) * 255).astype(np.uint8)
        img = np.clip(img.astype(int) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
        win = np.array([5.5, 3.25, 45.0, 42.75])
        ref = crop_image_cv2(img, win, 40).astype(np.float64)
        got = crop_images(torch.from_numpy(img).permute(2, 0, 1).double(), torch.from_numpy(win)[None], 40)
        assert np.abs(got[0].permute(1, 2, 0).numpy() - ref).max() <= 0.5 + _cv2_tol(img)  # cv2 rounds to uint8

    def test_full_window_is_identity(self):
        img = torch.rand(2, 3, 24, 32, dtype=torch.float64)
        win = torch.tensor([[-0.5, -0.5, 31.5, 23.5]] * 2, dtype=torch.float64)
        torch.testing.assert_close(crop_images(img, win, (24, 32)), img)

    def test_integer_shift_is_slicing(self):
        img = torch.rand(1, 3, 30, 40, dtype=torch.float64)
        win = torch.tensor([[4.5, 7.5, 20.5, 23.5]], dtype=torch.float64)  # 16 px, pixel centres 5..20, 8..23
        torch.testing.assert_close(crop_images(img, win, 16)[0], img[0, :, 8:24, 5:21])

    def test_batch_idx_paths(self):
        # smooth images: cv2 quantises sample positions to 1/32 px, which only noise would expose
        imgs = torch.stack([torch.from_numpy(_smooth_image(20, 25)).permute(2, 0, 1).double() * s
                            for s in (1.0, 0.5, 0.8)])
        wins = torch.tensor([[1.0, 2.0, 15.0, 16.0], [3.0, 0.0, 20.0, 17.0], [-4.0, -4.0, 10.0, 10.0]],
                            dtype=torch.float64)
        idx = torch.tensor([2, 0, 2])
        out = crop_images(imgs, wins, 12, batch_idx=idx)
        for n in range(3):
            ref = crop_image_cv2(imgs[idx[n]].permute(1, 2, 0).numpy(), wins[n].numpy(), 12)
            np.testing.assert_allclose(out[n].permute(1, 2, 0).numpy(), ref, rtol=0,
                                       atol=_cv2_tol(imgs[idx[n]].permute(1, 2, 0).numpy()))
        with pytest.raises(ValueError, match="batch_idx is required"):
            crop_images(imgs, wins[:2], 12)
        assert crop_images(imgs[:1], wins[:0], 12).shape == (0, 3, 12, 12)

    def test_gradient_flows_to_image(self):
        img = torch.rand(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
        wins = torch.tensor([[1.3, 0.1, 6.7, 5.5]], dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda x: crop_images(x, wins, 4), (img,))


def test_crop_grid_cache_first_filled_under_inference_mode():
    """The cached pixel-centre grid, first built inside inference mode, still serves a crop whose
    windows require grad (a cached inference tensor cannot be saved for backward)."""
    import torch

    from pose6d_ros.data import crops

    crops._crop_pixel_centres.cache_clear()
    with torch.inference_mode():
        crops.crop_grid(torch.tensor([[0.0, 0.0, 8.0, 8.0]]), (16, 16), 5)
    windows = torch.tensor([[1.0, 2.0, 9.0, 10.0]], requires_grad=True)
    crops.crop_grid(windows, (16, 16), 5).sum().backward()
    assert windows.grad is not None and torch.isfinite(windows.grad).all()
