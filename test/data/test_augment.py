"""Augmentation: occlusion semantics (method.md), colour ops against torchvision and OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from pose6d_ros.data.augment import (
    ColorAugmentConfig,
    OcclusionConfig,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_augment,
    cross_domain_occlusion,
    gaussian_blur,
    occlusion_masks,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TestOcclusion:
    def test_same_patches_and_silhouette_zero(self, device, dtype):
        b, h, w = 16, 24, 32
        real = torch.rand(b, 3, h, w, device=device, dtype=dtype)
        rend = torch.rand(b, 3, h, w, device=device, dtype=dtype)
        sil = torch.rand(b, 1, h, w, device=device, dtype=dtype)
        out = cross_domain_occlusion(real, rend, sil, OcclusionConfig(min_patches=1, max_patches=3), _gen(1))
        m = out.mask.bool()
        assert out.mask.shape == (b, 1, h, w) and m.any(dim=(1, 2, 3)).all()  # every sample got a patch
        assert (~m).any()
        mm = m.expand_as(real)
        assert torch.equal(out.real[mm], out.rendered[mm])  # the same noise at the same places
        assert torch.equal(out.real[~mm], real[~mm]) and torch.equal(out.rendered[~mm], rend[~mm])
        assert (out.silhouette[m] == 0).all() and torch.equal(out.silhouette[~m], sil[~m])
        assert out.real.min() >= 0 and out.real.max() <= 1

    def test_single_patch_is_rectangle_of_bounded_size(self):
        cfg = OcclusionConfig(min_patches=1, max_patches=1, min_size=0.2, max_size=0.5)
        h, w = 40, 50
        masks = occlusion_masks(300, h, w, cfg, _gen(2))[:, 0].numpy().astype(bool)
        inner = 0
        for m in masks:
            ys, xs = np.nonzero(m)
            assert ys.size > 0
            y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
            assert m[y0:y1 + 1, x0:x1 + 1].all() and m.sum() == (y1 - y0 + 1) * (x1 - x0 + 1)
            assert x1 - x0 + 1 <= np.ceil(0.5 * w) + 1 and y1 - y0 + 1 <= np.ceil(0.5 * h) + 1
            if 0 < x0 and x1 < w - 1 and 0 < y0 and y1 < h - 1:  # not cut by the border
                inner += 1
                assert x1 - x0 + 1 >= np.floor(0.2 * w) and y1 - y0 + 1 >= np.floor(0.2 * h)
        assert inner > 50

    def test_patch_count_range(self):
        none = occlusion_masks(20, 16, 16, OcclusionConfig(min_patches=0, max_patches=0), _gen())
        assert none.sum() == 0
        some = occlusion_masks(400, 16, 16, OcclusionConfig(min_patches=0, max_patches=2), _gen())
        empty = (some.sum(dim=(1, 2, 3)) == 0).float().mean().item()
        assert 0.2 < empty < 0.47  # ~1/3 of the samples draw 0 patches

    def test_noise_statistics(self):
        cfg = OcclusionConfig(min_patches=3, max_patches=3, noise_mean=0.5, noise_std=0.1)
        x = torch.zeros(64, 3, 32, 32)
        out = cross_domain_occlusion(x, x, None, cfg, _gen(3))
        vals = out.real[out.mask.bool().expand_as(x)]
        assert vals.numel() > 10000
        assert abs(vals.mean().item() - 0.5) < 0.01 and abs(vals.std().item() - 0.1) < 0.01
        assert out.silhouette is None

    def test_reproducible(self):
        x, r = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
        a = cross_domain_occlusion(x, r, None, generator=_gen(7))
        b = cross_domain_occlusion(x, r, None, generator=_gen(7))
        c = cross_domain_occlusion(x, r, None, generator=_gen(8))
        assert torch.equal(a.real, b.real) and torch.equal(a.mask, b.mask)
        assert not torch.equal(a.mask, c.mask)

    def test_gradient_only_outside_patches(self):
        x = torch.rand(3, 3, 16, 16, requires_grad=True)
        r = torch.rand(3, 3, 16, 16, requires_grad=True)
        s = torch.rand(3, 1, 16, 16, requires_grad=True)
        out = cross_domain_occlusion(x, r, s, OcclusionConfig(min_patches=2), _gen(4))
        (out.real.sum() + out.rendered.sum() + out.silhouette.sum()).backward()
        assert torch.equal(s.grad, 1 - out.mask)
        assert torch.equal(r.grad, (1 - out.mask).expand_as(r))

    def test_shape_errors(self):
        with pytest.raises(ValueError, match="rendered"):
            cross_domain_occlusion(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 9))
        with pytest.raises(ValueError, match="max_patches"):
            OcclusionConfig(min_patches=3, max_patches=1)


class TestColorOps:
    """Per-sample factors against torchvision's per-image functions."""

    @pytest.mark.parametrize(
        "ours, ref, factors",
        [
            (adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.4]),
            (adjust_contrast, TF.adjust_contrast, [0.5, 1.0, 1.7]),
            (adjust_saturation, TF.adjust_saturation, [0.0, 0.8, 1.5]),
            (adjust_hue, TF.adjust_hue, [-0.3, 0.05, 0.5]),
        ],
    )
    def test_against_torchvision(self, ours, ref, factors):
        x = torch.rand(3, 3, 20, 24, generator=_gen(5))
        got = ours(x, torch.tensor(factors))
        want = torch.stack([ref(x[i], f) for i, f in enumerate(factors)])
        torch.testing.assert_close(got, want, atol=2e-5, rtol=0)

    def test_blur_against_cv2(self):
        x = torch.rand(3, 3, 30, 28, generator=_gen(6), dtype=torch.float64)
        sigmas = [0.0, 0.7, 1.5]
        got = gaussian_blur(x, torch.tensor(sigmas, dtype=torch.float64), max_sigma=1.5)
        k = 2 * int(np.ceil(3 * 1.5)) + 1
        for i, s in enumerate(sigmas):
            img = x[i].permute(1, 2, 0).numpy()
            want = img if s == 0 else cv2.GaussianBlur(img, (k, k), sigmaX=s, sigmaY=s,
                                                       borderType=cv2.BORDER_REFLECT_101)
            np.testing.assert_allclose(got[i].permute(1, 2, 0).numpy(), want, atol=1e-6)


class TestColorAugment:
    def test_disabled_is_identity(self):
        x = torch.rand(4, 3, 16, 16)
        cfg = ColorAugmentConfig(p=0.0, p_blur=0.0)
        torch.testing.assert_close(color_augment(x, cfg, _gen()), x)

    def test_brightness_only_per_sample(self):
        x = torch.rand(64, 3, 8, 8) * 0.5 + 0.25
        cfg = ColorAugmentConfig(brightness=0.3, contrast=0, saturation=0, hue=0, noise_std=0, blur_sigma=0, p=1.0)
        y = color_augment(x, cfg, _gen(9))
        ratio = y / x
        per_sample = ratio.flatten(1)
        torch.testing.assert_close(per_sample.min(1).values, per_sample.max(1).values)  # one factor per sample
        f = per_sample[:, 0]
        assert f.min() >= 0.7 - 1e-5 and f.max() <= 1.3 + 1e-5 and f.std() > 0.1

    def test_reproducible_and_in_range(self):
        x = torch.rand(8, 3, 16, 16)
        cfg = ColorAugmentConfig(p=1.0, p_blur=1.0)
        a, b = color_augment(x, cfg, _gen(1)), color_augment(x, cfg, _gen(1))
        assert torch.equal(a, b) and not torch.equal(a, color_augment(x, cfg, _gen(2)))
        assert a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, x)

    def test_device(self, device):
        x = torch.rand(2, 3, 16, 16, device=device)
        assert color_augment(x, generator=_gen()).device == x.device
