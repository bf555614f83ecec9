"""The shared input checker names the argument and enforces repeated size names."""

import pytest
import torch

from pose6d_ros._checks import check_shape


def test_check_shape_enforces_named_sizes():
    check_shape(torch.zeros(2, 4, 4), ("B", "S", "S"), "img")
    with pytest.raises(ValueError, match="img"):
        check_shape(torch.zeros(2, 4, 5), ("B", "S", "S"), "img")
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        check_shape(torch.zeros(2, 4, 2), ("B", "N", 3), "pts")
    check_shape(torch.zeros(7, 2, 9, 3), ("...", "N", 3), "pts")
