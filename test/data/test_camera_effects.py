"""Camera effects of the simulated real domain's ``hard`` appearance, against analytic references."""

import numpy as np
import pytest

from pose6d_ros.data.simreal import RealDomainConfig, demosaic_rggb, motion_kernel


def test_demosaic_keeps_a_flat_colour_and_its_channel_order():
    rgb = np.empty((10, 12, 3), np.uint8)
    rgb[...] = (200, 90, 30)  # distinct R and B: a swapped CFA pattern would exchange them
    out = demosaic_rggb(rgb)
    np.testing.assert_array_equal(out[2:-2, 2:-2], rgb[2:-2, 2:-2])


def test_demosaic_loses_colour_detail_at_a_red_blue_edge():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8, 0] = 255
    rgb[:, 8:, 2] = 255
    out = demosaic_rggb(rgb).astype(int)
    # Away from the edge the colours are exact; at the edge column the interpolation mixes them.
    np.testing.assert_array_equal(out[4:12, 2:5], rgb[4:12, 2:5])
    assert np.abs(out[4:12, 7:9] - rgb[4:12, 7:9]).max() > 50


@pytest.mark.parametrize("angle", [0.0, np.pi / 2, np.pi / 4])
def test_motion_kernel_is_a_centred_line_of_the_given_length(angle):
    length = 7.0
    k = motion_kernel(length, angle)
    assert k.sum() == pytest.approx(1.0, abs=1e-6) and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    c = k.shape[0] // 2
    ys, xs = np.nonzero(k)
    d = np.array([np.cos(angle), np.sin(angle)])
    along = (xs - c) * d[0] + (ys - c) * d[1]
    across = -(xs - c) * d[1] + (ys - c) * d[0]
    w = k[ys, xs]
    assert np.sum(w * along) == pytest.approx(0.0, abs=1e-6)  # centred
    assert np.abs(across).max() <= 0.71  # on the line, up to pixel rounding
    std = np.sqrt(np.sum(w * along ** 2))
    # a uniform segment of length L has standard deviation L / sqrt(12); rounding to pixels widens it a bit
    assert length / np.sqrt(12) * 0.9 < std < length / np.sqrt(12) * 1.25


def _spec(**kw):
    from pose6d_ros.data.simreal import FrameSpec

    neutral = dict(scene_id=1, im_id=0, obj_ids=[1], poses=np.eye(4)[None], light_pos=np.zeros(3), light_intensity=1.0,
                   ambient=0.3, shadow_strength=0.0, photo=0, photo_box=(0.0, 0.0, 1.0, False), wb=np.ones(3),
                   gamma=1.0, vignette=0.0, blur_sigma=0.0, noise_std=0.0, jpeg_quality=100, noise_seed=0)
    return FrameSpec(**(neutral | kw))


def test_degrade_saturation_keeps_grey_and_exposure_clips():
    from pose6d_ros.data.simreal import degrade

    cfg = RealDomainConfig(width=32, height=24)
    grey = np.full((24, 32, 3), 0.4, np.float32)
    out = degrade(grey, _spec(saturation=0.3), cfg).astype(int)
    assert np.abs(out - round(0.4 * 255)).max() <= 1  # a grey pixel has no colour to remove
    colour = np.zeros((24, 32, 3), np.float32)
    colour[..., 0] = 0.8
    dull = degrade(colour, _spec(saturation=0.5), cfg).astype(float)
    luma = 0.299 * 0.8  # Rec. 601 weights: the grey level the saturation blends towards
    np.testing.assert_allclose(dull[8:16, 8:24].mean((0, 1)) / 255, [luma + 0.5 * (0.8 - luma), 0.5 * luma, 0.5 * luma],
                               atol=3 / 255)
    bright = degrade(np.full((24, 32, 3), 0.7, np.float32), _spec(exposure=1.8), cfg)
    assert bright.min() >= 254  # 0.7 x 1.8 > 1: the sensor clips


def test_degrade_resolution_loss_softens_an_edge():
    from pose6d_ros.data.simreal import degrade

    cfg = RealDomainConfig(width=64, height=48)
    img = np.zeros((48, 64, 3), np.float32)
    img[:, 32:] = 1.0
    sharp = degrade(img, _spec(), cfg)[24, :, 0].astype(int)
    soft = degrade(img, _spec(resolution_scale=0.25), cfg)[24, :, 0].astype(int)
    ramp = lambda row: int(((row > 20) & (row < 235)).sum())  # noqa: E731  pixels between black and white
    assert ramp(sharp) == 0 and ramp(soft) >= 3
