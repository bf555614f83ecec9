"""Camera effects of the simulated real domain's ``hard`` appearance, against analytic references."""

import numpy as np
import pytest

from pose6d_ros.data.simreal import APPEARANCE, RealDomainConfig, demosaic_rggb, motion_kernel


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


def test_presets_are_valid_configs():
    for name, over in APPEARANCE.items():
        cfg = RealDomainConfig(**over)
        for f in ("motion_blur_px", "exposure", "saturation", "resolution_scale"):
            lo, hi = getattr(cfg, f)
            assert lo <= hi, (name, f)
