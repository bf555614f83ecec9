"""Checkpoints: loaded without running code (a crafted file is refused), RNG states restored exactly,
files written with the umask's mode."""

from __future__ import annotations

import os
import random
import shlex

import numpy as np
import pytest
import torch

from pose6d_ros._io import atomic_torch_save
from pose6d_ros.training.checkpoint import load_checkpoint, save_checkpoint


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a crafted checkpoint would do with a full unpickler."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save({"step": 3, "model": {"weight": _Payload(marker)}}, path)
    with pytest.raises(RuntimeError) as info:
        load_checkpoint(path, model=torch.nn.Linear(2, 2))
    msg = str(info.value)
    assert str(path) in msg and "refused" in msg and "\n" not in msg
    assert not marker.exists()


def test_truncated_and_empty_checkpoints_name_the_file(tmp_path):
    m = torch.nn.Linear(3, 2)
    good = save_checkpoint(tmp_path / "good.pt", model=m, step=1)
    for name, data in (("trunc.pt", good.read_bytes()[:200]), ("empty.pt", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(RuntimeError, match=name) as info:
            load_checkpoint(tmp_path / name, model=m)
        assert "\n" not in str(info.value)
    with pytest.raises(RuntimeError, match="good.pt.*do not fit") as info:  # a model of another shape
        load_checkpoint(good, model=torch.nn.Linear(4, 2))
    assert "\n" not in str(info.value)


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    """Python, numpy (with a cached Gaussian) and torch draws after a load equal those right after the save."""
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves the second Gaussian of the pair cached (has_gauss = 1)
    path = save_checkpoint(tmp_path / "c.pt", model=torch.nn.Linear(2, 2), step=0)

    def draws():
        return ([random.random() for _ in range(3)], np.random.standard_normal(3).tolist(),
                np.random.randint(0, 1 << 30, 3).tolist(), torch.rand(3).tolist())

    expected = draws()
    draws()  # move every generator on
    load_checkpoint(path, model=torch.nn.Linear(2, 2))
    assert draws() == expected


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask):
    """``open(path, "w")`` semantics (0o666 & ~umask), not mkstemp's 0o600: another user or group
    reading the run's outputs is the owner's choice, as for any file."""
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "c.pt", model=torch.nn.Linear(2, 2), step=0)
        other = atomic_torch_save(tmp_path / "sub" / "x.pt", {"a": torch.zeros(1)})
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask
    assert (other.stat().st_mode & 0o777) == 0o666 & ~umask
