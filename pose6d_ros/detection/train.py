"""``train_detector``: train the Faster R-CNN on synthetic scenes (CPU-feasible), resume, evaluate.

Example::

    train_detector --objects config/objects_lm_lite.yaml --out runs/detector.pt --steps 400 --batch 8
    train_detector --objects config/objects_lm_lite.yaml --out runs/detector.pt --resume --steps 800
    train_detector --objects config/objects_lm_lite.yaml --out runs/detector.pt --steps 0 \\
        --eval data/lm-lite/test

Rendering a frame costs about as much as a training step on a CPU, so frames go through a replay
buffer: each step renders ``--render-per-step`` new frames into it and trains on a batch drawn from
it, re-augmented (``data.augment.color_augment``) every time a frame is drawn. Checkpoints are
atomic (``model.save_detector``); ``--resume`` continues from ``--out`` (step, optimizer, frame
counter); the buffer is refilled from new frames.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from pose6d_ros._checks import InputError, reading, run_cli
from pose6d_ros._io import atomic_write_json
from pose6d_ros.data.augment import ColorAugmentConfig, color_augment
from pose6d_ros.detection.infer import Detector, evaluate_recall
from pose6d_ros.detection.model import (ARCHS, TV_OFFSET, DetectorSpec, build_from_spec,
                                        load_detector, save_detector)
from pose6d_ros.detection.scenes import DetectionScenes, SceneConfig
from pose6d_ros.registry import ObjectRegistry

__all__ = ["ReplayBuffer", "train_steps", "main"]


class ReplayBuffer:
    """A bounded FIFO of rendered frames (uint8 images + their torchvision targets)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.images: List[torch.Tensor] = []
        self.targets: List[dict] = []

    def __len__(self) -> int:
        return len(self.images)

    def add(self, images: torch.Tensor, targets: Sequence[dict]) -> None:
        for img, tgt in zip((images * 255 + 0.5).clamp(0, 255).to(torch.uint8), targets):
            self.images.append(img.cpu())
            self.targets.append({k: v.cpu() for k, v in tgt.items()})
        del self.images[:-self.capacity], self.targets[:-self.capacity]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, List[dict]]:
        pick = rng.choice(len(self.images), size=min(n, len(self.images)), replace=False)
        return (torch.stack([self.images[i] for i in pick]).float() / 255.0,
                [self.targets[i] for i in pick])


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return color_augment(images, ColorAugmentConfig(), generator=generator)


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scenes: DetectionScenes,
                buffer: ReplayBuffer, *, start_step: int, steps: int, batch: int, render_per_step: int,
                next_frame: int, lr: float, warmup: int, total_steps: int, seed: int,
                on_step=None) -> tuple[int, int]:
    """Run ``steps`` optimisation steps; returns ``(step, next_frame)`` after them.

    ``on_step(step, losses: dict[str, float], next_frame)`` is called after each step (logging,
    checkpoints). The learning rate is a linear warm-up then a cosine decay to 5% at ``total_steps``.
    """
    model.train()
    step = start_step
    for _ in range(steps):
        need = max(render_per_step, batch - len(buffer))
        fresh = scenes.batch(range(next_frame, next_frame + need))
        next_frame += need
        buffer.add(fresh.images, fresh.targets(TV_OFFSET))
        rng = np.random.default_rng([seed, step])
        images, targets = buffer.sample(batch, rng)
        images = _augment(images, torch.Generator().manual_seed(int(rng.integers(2 ** 62))))
        frac = min(1.0, step / max(1, total_steps))
        scale = min(1.0, (step + 1) / max(1, warmup)) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        dev = next(model.parameters()).device
        losses = model([im.to(dev) for im in images], [{k: v.to(dev) for k, v in t.items()} for t in targets])
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        step += 1
        if on_step is not None:
            on_step(step, {k: float(v.detach()) for k, v in losses.items()}, next_frame)
    return step, next_frame


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_detector", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", required=True, help="object registry YAML")
    p.add_argument("--out", required=True, help="checkpoint path (written atomically)")
    p.add_argument("--steps", type=int, default=400, help="total optimisation steps (with --resume: the new total)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from --out")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--arch", choices=ARCHS, default=ARCHS[0])
    p.add_argument("--image-size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"),
                   help="synthetic frame size; also the detector's input size (min_size=H, max_size=W)")
    p.add_argument("--box-head-dim", type=int, default=256)
    p.add_argument("--render-per-step", type=int, default=2, help="new frames rendered per step")
    p.add_argument("--buffer", type=int, default=512, help="replay buffer capacity (frames)")
    p.add_argument("--ckpt-every", type=int, default=25)
    p.add_argument("--backbone-weights", default=None, help="optional local backbone state_dict file")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval", default=None, metavar="SPLIT_DIR",
                   help="after training, print box recall on this BOP split (e.g. data/lm-lite/test)")
    p.add_argument("--eval-max-images", type=int, default=0, help="evaluate on the first N images (0: all)")
    p.add_argument("--min-score", type=float, default=0.3, help="score threshold of the evaluation")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``train_detector``: exit code 0 (result in ``<out stem>.result.json``), 2 with one
    line naming the file on bad input, 130 when interrupted (the last checkpoint is kept)."""
    args = _parser().parse_args(argv)
    return run_cli("train_detector", lambda: _run(args))


def result_path(checkpoint: str | Path) -> Path:
    """``runs/detector.pt`` -> ``runs/detector.result.json``."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".result.json")


def _run(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with reading(args.objects, "--objects"):
        registry = ObjectRegistry.from_yaml(args.objects)
    out = Path(args.out)
    H, W = args.image_size
    spec = DetectorSpec(object_ids=tuple(registry.ids), object_names=tuple(registry.names), arch=args.arch,
                        min_size=min(H, W), max_size=max(H, W), box_head_dim=args.box_head_dim)
    step, next_frame, state = 0, 0, None
    if args.resume and out.is_file():
        model, spec, state = load_detector(out, args.device, expect_names=registry.names)
        if tuple(spec.object_names) != tuple(registry.names):
            raise InputError(f"{out} was trained on {list(spec.object_names)}, not on the objects of {args.objects}")
        step, next_frame = int(state["step"]), int(state["extra"].get("next_frame", 0))
    else:
        model = build_from_spec(spec, backbone_weights=args.backbone_weights).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    if state is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    scenes = DetectionScenes(registry, SceneConfig(image_size=(H, W), augment=False), seed=args.seed,
                             device=args.device)
    buffer = ReplayBuffer(args.buffer)
    t0, last = time.monotonic(), [time.monotonic()]

    def on_step(s: int, losses: dict, nf: int) -> None:
        now = time.monotonic()
        print(f"step {s}/{args.steps} loss {sum(losses.values()):.4f} "
              + " ".join(f"{k.replace('loss_', '')}={v:.3f}" for k, v in losses.items())
              + f" frames={nf} {now - last[0]:.1f}s", flush=True)
        last[0] = now
        if s % args.ckpt_every == 0 or s == args.steps:
            save_detector(out, model, spec, step=s, optimizer=optimizer,
                          extra={"next_frame": nf, "seed": args.seed, "objects": args.objects})

    if step < args.steps:
        try:
            step, next_frame = train_steps(
                model, optimizer, scenes, buffer, start_step=step, steps=args.steps - step, batch=args.batch,
                render_per_step=args.render_per_step, next_frame=next_frame, lr=args.lr, warmup=args.warmup,
                total_steps=args.steps, seed=args.seed, on_step=on_step)
        except KeyboardInterrupt:
            print("train_detector: interrupted; the last checkpoint is kept", file=sys.stderr)
            return 130
        print(f"trained to step {step} in {time.monotonic() - t0:.0f}s -> {out}", flush=True)
    elif not out.is_file():
        save_detector(out, model, spec, step=step, optimizer=optimizer, extra={"next_frame": next_frame})
    result = {"checkpoint": str(out), "step": step, "objects": list(spec.object_names), "arch": spec.arch}
    if args.eval:
        det = Detector.from_file(out, args.device, min_score=0.0)
        rep = evaluate_recall(det, args.eval, registry, min_score=args.min_score,
                              max_images=args.eval_max_images or None)
        print(rep.summary(), flush=True)
        result["eval"] = {"split": str(args.eval), "n_images": rep.n_images, "n_instances": rep.n_instances,
                          "n_targets": rep.n_targets, "min_score": rep.min_score, "mean_time_s": rep.mean_time_s,
                          "recall": {"/".join(map(str, k)): v for k, v in rep.recall.items()}}
    res = atomic_write_json(result_path(out), result)
    print(f"result: {res}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
