from __future__ import annotations

import pytest

from pose6d_ros.training.config import load_config


def test_yaml_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 0.1\n  max_steps: 5\nmodel:\n  backbone: resnet18\n")
    (tmp_path / "run.yaml").write_text("_base_: base.yaml\noptim:\n  lr: 0.01\n")
    cfg = load_config(tmp_path / "run.yaml", ["optim.max_steps=7", "optim.lr=1e-5", "selfsup.use_mask=false",
                                              "data.objects=[1, 3]"])
    assert cfg["optim"]["lr"] == 1e-5 and cfg["optim"]["max_steps"] == 7
    assert cfg["model"]["backbone"] == "resnet18"
    assert cfg["selfsup"]["use_mask"] is False and cfg["data"]["objects"] == [1, 3]
    assert cfg["selfsup"]["weights"]["percep"] == 20.0  # untouched default
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
