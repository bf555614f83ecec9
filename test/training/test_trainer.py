"""Trainer: loss goes down, kill + --resume is exact, 2-process gloo equals one process with 2x batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pose6d_ros.training.checkpoint import load_checkpoint, save_checkpoint
from pose6d_ros.training.trainer import StepSampler

HERE = Path(__file__).parent
SCRIPT = HERE / "_toy_run.py"
ROOT = HERE.parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}


def _run(args, **kw):
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=ENV, capture_output=True, text=True,
                          timeout=120, **kw)


def _final(out: Path):
    return torch.load(out / "final.pt", weights_only=False)


def test_step_sampler_partitions_global_batch():
    s = StepSampler(10, 2, seed=1)
    one = StepSampler(10, 4, seed=1)
    for step in range(4):
        assert s.indices(step, 0, 2) + s.indices(step, 1, 2) == one.indices(step)
    # each epoch is a permutation
    assert sorted(one.indices(0) + one.indices(1) + one.indices(2)[:2]) == list(range(10))


def test_checkpoint_is_atomic_and_roundtrips(tmp_path):
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters())
    m(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "c.pt", model=m, step=7, optimizer=opt)
    assert not (tmp_path / "c.pt.tmp").exists()
    m2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(m2.parameters())
    state = load_checkpoint(path, model=m2, optimizer=opt2)
    assert state["step"] == 7
    torch.testing.assert_close(m2.weight, m.weight, rtol=0, atol=0)
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt", model=m2)


def test_few_steps_reduce_loss(tmp_path):
    r = _run(["--out", str(tmp_path), "--steps", "12", "--batch", "8", "--lr", "3e-3", "--ckpt-period", "0"])
    assert r.returncode == 0, r.stderr[-2000:]
    hist = _final(tmp_path)["history"]
    first = sum(h["total"] for h in hist[:3]) / 3
    last = sum(h["total"] for h in hist[-3:]) / 3
    assert last < 0.7 * first, (first, last)


def test_resume_after_kill_is_identical(tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    common = ["--steps", "8", "--batch", "4", "--ckpt-period", "2", "--occlusion"]
    r = _run(["--out", str(ref), *common])
    assert r.returncode == 0, r.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(cut), *common, "--sleep", "0.5"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 100
        while time.time() < deadline:
            ck = cut / "last.pt"
            if ck.exists() and torch.load(ck, weights_only=False)["step"] >= 4:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (cut / "final.pt").exists(), "the run finished before it was killed"
    r = _run(["--out", str(cut), *common, "--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _final(ref), _final(cut)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=0)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(sb[i][k], sa[i][k], rtol=0, atol=0)
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]


@pytest.mark.slow
def test_two_process_gloo_equals_one_process_double_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--steps", "1", "--optim", "sgd", "--lr", "20", "--ckpt-period", "0"]
    r = _run(["--out", str(one), "--batch", "4", *args])
    assert r.returncode == 0, r.stderr[-2000:]
    torchrun = Path(sys.executable).parent / "torchrun"
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", str(SCRIPT),
                        "--out", str(two), "--batch", "2", *args], env=ENV, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _final(one)["model"], _final(two)["model"]
    init = __import__("_training_doubles").TinyPhi().state_dict()  # same seed-0 init as the script
    moved = max(float((a[k] - init[k]).abs().max()) for k in a)
    assert moved > 1e-3  # the step did something
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)


def test_ema_teacher_update_matches_formula():
    from pose6d_ros.training.trainer import EMATeacher

    student = torch.nn.Linear(2, 1)
    teacher = EMATeacher(student, decay=0.9)
    before = teacher.module.weight.detach().clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update(student)
    torch.testing.assert_close(teacher.module.weight, 0.9 * before + 0.1 * (before + 1.0))
    assert not any(p.requires_grad for p in teacher.parameters())


def test_nonfinite_gradient_skips_update():
    from pose6d_ros.training.trainer import StepOutput, Trainer

    model = torch.nn.Linear(2, 1)
    w0 = model.weight.detach().clone()

    def step_fn(trainer, batch):
        # finite loss, NaN gradient: sqrt at 0 has an infinite derivative, times 0 -> NaN
        loss = (torch.sqrt(model.weight.sum() * 0.0) * 0.0).sum() + 0.0 * model.bias.sum()
        return StepOutput(losses={"total": loss})

    tr = Trainer(model=model, step_fn=step_fn, batches=lambda s, r, w: None,
                 optimizer=torch.optim.SGD(model.parameters(), lr=1.0), max_steps=1)
    tr.train()
    assert tr.skipped_steps == 1
    torch.testing.assert_close(model.weight, w0, rtol=0, atol=0)
