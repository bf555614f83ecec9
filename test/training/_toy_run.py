"""A runnable self-supervised training on the test doubles (subprocess / torchrun tests only).

    python _toy_run.py --out DIR --steps 6 [--batch 4] [--resume] [--optim adam|sgd] [--sleep 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # test helper script: make the doubles importable
import _training_doubles as D  # noqa: E402

from pose6d_ros.geometry.pnp import solve_pnp  # noqa: E402
from pose6d_ros.training import distributed as du  # noqa: E402
from pose6d_ros.training.selfsup_step import SelfSupSettings, SelfSupStep  # noqa: E402
from pose6d_ros.training.trainer import CheckpointHook, LambdaHook, StepSampler, Trainer  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--optim", default="adam")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ckpt-period", type=int, default=2)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--occlusion", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    du.init_distributed(device)
    torch.manual_seed(0)
    model = D.TinyPhi()
    du.broadcast_parameters(model)
    pool, _ = D.real_batch(64, seed=1)
    sampler = StepSampler(64, a.batch, seed=3)

    def batches(step, rank, world):
        idx = torch.tensor(sampler.indices(step, rank, world))
        return {"real": {k: v[idx] for k, v in pool.items()}}

    step_fn = SelfSupStep(
        settings=SelfSupSettings(use_percep=False, use_sup_synthetic=False, use_occlusion=a.occlusion),
        keypoints_3d=D.keypoints_3d(), render_fn=D.splat_render, pnp_fn=solve_pnp,
        occlusion_fn=lambda b, s, dev: (torch.rand(b, 1, s, s) < 0.1).float())
    opt = (torch.optim.Adam(model.parameters(), lr=a.lr) if a.optim == "adam"
           else torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    hooks = [CheckpointHook(a.ckpt_period)]
    if a.sleep > 0:
        hooks.append(LambdaHook(lambda t: time.sleep(a.sleep)))
    trainer = Trainer(model=model, step_fn=step_fn, batches=batches, optimizer=opt, scheduler=sched,
                      max_steps=a.steps, hooks=hooks, seed=5, output_dir=a.out)
    if a.resume:
        trainer.resume()
    trainer.train()
    if du.is_main():
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "history": trainer.history},
                   Path(a.out) / "final.pt")
    du.cleanup()


if __name__ == "__main__":
    main()
