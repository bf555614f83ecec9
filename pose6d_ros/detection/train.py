"""``train_detector``: train the Faster R-CNN on synthetic scenes (CPU-feasible), resume, evaluate.

Example::

    train_detector --recipe training/detector_lm_lite.yaml --objects config/objects_lm_lite.yaml \\
        --out runs/det/detector.pt
    train_detector --recipe training/detector_lm_lite.yaml --objects config/objects_lm_lite.yaml \\
        --out runs/det/detector.pt --resume                      # continues a killed run
    train_detector --objects config/objects_lm_lite.yaml --out runs/detector.pt --steps 0 \\
        --eval data/lm-lite/test

A recipe is a YAML mapping of this command's options (``image_size: [240, 320]``; ``-`` or ``_``
in names) plus ``scene:``, a mapping of ``scenes.SceneConfig`` fields; flags on the command line
override it. An unknown key is a one-line error naming it (exit code 2).

Rendering a frame costs a fair part of a training step on a CPU, so frames go through a replay
buffer: each step renders ``--render-per-step`` new frames into it and trains on a batch drawn from
it, re-augmented (``data.augment.color_augment``) every time a frame is drawn. Checkpoints are
atomic (``model.save_detector``). Every random draw of step ``s`` (frames, batch, augmentation,
torchvision's proposal sampling) depends only on ``(seed, s)``, and ``--resume`` re-renders the
buffer's frames, so a killed run resumed from its last checkpoint ends with the same weights as an
uninterrupted one. Progress: a tqdm bar on one line; TensorBoard scalars in ``<out stem>_logs/tb``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from pose6d_ros._checks import InputError, reading, run_cli
from pose6d_ros._io import atomic_write_json
from pose6d_ros.data.augment import ColorAugmentConfig, color_augment
from pose6d_ros.detection.infer import Detector, evaluate_recall
from pose6d_ros.detection.model import (ARCHS, LITE_ARCHS, TV_OFFSET, DetectorSpec, build_from_spec,
                                        load_detector, save_detector)
from pose6d_ros.detection.scenes import DetectionScenes, SceneConfig
from pose6d_ros.registry import ObjectRegistry

__all__ = ["ReplayBuffer", "train_steps", "frames_of_step", "refill", "trainable_groups", "load_recipe", "parse_args",
           "scene_config", "main", "result_path", "logs_dir"]

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


def frames_of_step(step: int, batch: int, render_per_step: int) -> range:
    """Indices of the frames rendered at step ``step`` (0-based): the first step fills a batch,
    every later one adds ``render_per_step``."""
    first = max(render_per_step, batch)
    if step == 0:
        return range(0, first)
    start = first + (step - 1) * render_per_step
    return range(start, start + render_per_step)


def refill(buffer: "ReplayBuffer", scenes: DetectionScenes, next_frame: int, chunk: int = 16) -> None:
    """Put back into an empty ``buffer`` the frames it held when frame ``next_frame`` was due: the
    last ``capacity`` frames before it (frames depend only on their index)."""
    start = max(0, next_frame - buffer.capacity)
    for s in range(start, next_frame, chunk):
        fresh = scenes.batch(range(s, min(s + chunk, next_frame)))
        buffer.add(fresh.images, fresh.targets(TV_OFFSET))


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scenes: DetectionScenes,
                buffer: ReplayBuffer, *, start_step: int, steps: int, batch: int, render_per_step: int,
                next_frame: int, lr: float, warmup: int, total_steps: int, seed: int,
                on_step=None) -> tuple[int, int]:
    """Run ``steps`` optimisation steps; returns ``(step, next_frame)`` after them.

    ``on_step(step, losses: dict[str, float], next_frame)`` is called after each step (logging,
    checkpoints). The learning rate is a linear warm-up then a cosine decay to 5% at ``total_steps``,
    times each parameter group's ``lr_factor``.
    Step ``s`` renders :func:`frames_of_step` (unless ``next_frame`` is already past them) and runs
    under torch's RNG seeded from ``(seed, s)``.
    """
    model.train()
    step = start_step
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for _ in range(steps):
        todo = frames_of_step(step, batch, render_per_step)
        if todo.stop > next_frame:
            fresh = scenes.batch(range(max(todo.start, next_frame), todo.stop))
            next_frame = todo.stop
            buffer.add(fresh.images, fresh.targets(TV_OFFSET))
        rng = np.random.default_rng([seed, step])
        images, targets = buffer.sample(batch, rng)
        images = _augment(images, torch.Generator().manual_seed(int(rng.integers(2 ** 62))))
        frac = min(1.0, step / max(1, total_steps))
        scale = min(1.0, (step + 1) / max(1, warmup)) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in optimizer.param_groups:  # "lr_factor": the trunk's share (see trainable_groups)
            group["lr"] = lr * scale * group.get("lr_factor", 1.0)
        dev = next(model.parameters()).device
        with torch.random.fork_rng(devices=[]):  # torchvision samples anchors and RoIs from torch's RNG
            torch.manual_seed(int(rng.integers(2 ** 62)))
            losses = model([im.to(dev) for im in images], [{k: v.to(dev) for k, v in t.items()} for t in targets])
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        step += 1
        if on_step is not None:
            on_step(step, {k: float(v.detach()) for k, v in losses.items()}, next_frame)
    return step, next_frame


def trainable_groups(model: torch.nn.Module, trunk_lr_scale: float) -> List[Dict[str, Any]]:
    """AdamW parameter groups: the trainable trunk (``backbone.body``) at ``trunk_lr_scale`` times the
    learning rate, everything else (FPN, RPN, box head) at the full rate. Why: large steps on a
    pretrained trunk wash out the ImageNet features the synthetic-to-real transfer relies on."""
    trunk, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (trunk if name.startswith("backbone.body.") else rest).append(p)
    groups = [{"params": rest, "lr_factor": 1.0}]
    if trunk:
        groups.append({"params": trunk, "lr_factor": float(trunk_lr_scale)})
    return groups


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_detector", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=None, help="YAML of these options (+ 'scene:'); flags override it")
    p.add_argument("--objects", default=None, help="object registry YAML (required, here or in the recipe)")
    p.add_argument("--out", default=None, help="checkpoint path, written atomically (required, here or in the recipe)")
    p.add_argument("--steps", type=int, default=400, help="total optimisation steps (with --resume: the new total)")
    p.add_argument("--stop-at", type=int, default=0,
                   help="stop after this step, keeping the schedule of --steps (split a run; --resume goes on)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from --out")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--trunk-lr-scale", type=float, default=None,
                   help="learning-rate factor of the trainable trunk (default 0.1 on the ImageNet trunk, else 1)")
    p.add_argument("--arch", choices=ARCHS, default=ARCHS[0],
                   help="detector architecture (default: the ImageNet EfficientNet-Lite0 trunk with an FPN)")
    p.add_argument("--frozen-stages", type=int, default=DetectorSpec.frozen_stages,
                   help="EfficientNet trunk stages kept at their ImageNet weights (of 5: strides 2..32)")
    p.add_argument("--fpn-channels", type=int, default=DetectorSpec.fpn_channels)
    p.add_argument("--image-size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"),
                   help="synthetic frame size; also the detector's input size (min_size=H, max_size=W)")
    p.add_argument("--box-head-dim", type=int, default=256)
    p.add_argument("--render-per-step", type=int, default=2, help="new frames rendered per step")
    p.add_argument("--buffer", type=int, default=512, help="replay buffer capacity (frames, >= --batch)")
    p.add_argument("--scene", action="append", default=[], metavar="KEY=VALUE",
                   help="a scenes.SceneConfig field (YAML value), e.g. --scene photo_prob=0.5; repeatable")
    p.add_argument("--ckpt-every", type=int, default=25)
    p.add_argument("--log-every", type=int, default=10, help="TensorBoard scalars every N steps")
    p.add_argument("--no-progress", action="store_true", help="a log line every --log-every steps, no progress bar")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--backbone-weights", default=None, help="optional local state_dict file of model.backbone.body")
    p.add_argument("--trunk-weights", default=None,
                   help="another copy of the EfficientNet-Lite0 ImageNet .pth (same sha256; default: the pinned package's)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval", default=None, metavar="SPLIT_DIR",
                   help="after training, print box recall on this BOP split (e.g. data/lm-lite/test)")
    p.add_argument("--eval-max-images", type=int, default=0, help="evaluate on the first N images (0: all)")
    p.add_argument("--min-score", type=float, default=0.3, help="score threshold of the evaluation")
    return p


#: recipe keys that are no option of the training itself
_NOT_IN_RECIPE = ("recipe", "resume")
_SCENE_FIXED = ("image_size", "K", "augment")  # set by --image-size / by the replay buffer's augmentation


def _scene_value(where: str, key: str, value: Any) -> Any:
    known = [f.name for f in dataclasses.fields(SceneConfig) if f.name not in _SCENE_FIXED]
    if key not in known:
        raise InputError(f"{where}: unknown scene key {key!r} (known: {', '.join(known)})")
    return tuple(value) if isinstance(value, list) else value


def load_recipe(path: str | Path, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """A recipe's values as ``parser`` defaults (``dest`` names), each checked with its option's type.

    Raises:
        InputError: unreadable file, not a mapping, an unknown key or a value of the wrong type (one
            line naming the file and the key).
    """
    import yaml

    with reading(path, "--recipe"):
        raw = yaml.safe_load(Path(path).read_text())
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"--recipe {path}: expected a mapping of options, got {type(raw).__name__}")
    actions = {a.dest: a for a in parser._actions if a.dest not in _NOT_IN_RECIPE + ("help",)}
    out: Dict[str, Any] = {}
    for key, value in raw.items():
        dest = str(key).replace("-", "_")
        if dest == "scene":
            if not isinstance(value, dict):
                raise InputError(f"--recipe {path}: 'scene' must be a mapping of SceneConfig fields")
            out["scene"] = {str(k): _scene_value(f"--recipe {path}", str(k), v) for k, v in value.items()}
            continue
        if dest not in actions:
            raise InputError(f"--recipe {path}: unknown key {key!r} (known: {', '.join(sorted(actions))}, scene)")
        action = actions[dest]
        try:
            if action.nargs is not None and action.nargs not in ("?",) and action.const is None:
                if not isinstance(value, list) or (isinstance(action.nargs, int) and len(value) != action.nargs):
                    raise ValueError(f"expected a list of {action.nargs} values")
                value = tuple(action.type(v) if action.type else v for v in value)
            elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                if not isinstance(value, bool):
                    raise ValueError("expected true or false")
            elif value is not None and action.type is not None:
                if isinstance(value, bool) or (action.type is int and isinstance(value, float)):
                    raise ValueError(f"expected {action.type.__name__}")
                value = action.type(value)
            if action.choices is not None and value not in action.choices:
                raise ValueError(f"expected one of {list(action.choices)}")
        except (TypeError, ValueError) as e:
            raise InputError(f"--recipe {path}: bad value of {key!r}: {value!r} ({e})") from e
        out[dest] = value
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line over recipe over defaults. Bad recipes raise :class:`InputError`."""
    parser = _parser()
    first, _ = parser.parse_known_args(argv)
    recipe: Dict[str, Any] = load_recipe(first.recipe, parser) if first.recipe else {}
    scene = recipe.pop("scene", {})
    parser.set_defaults(**recipe)
    args = parser.parse_args(argv)
    args.scene_recipe = scene  # --scene entries override it
    for name in ("objects", "out"):
        if not getattr(args, name):
            raise InputError(f"--{name} is required (on the command line or in the recipe)")
    return args


def scene_config(args: argparse.Namespace) -> SceneConfig:
    """The ``SceneConfig`` of ``--image-size``, the recipe's ``scene:`` and the ``--scene`` entries."""
    import yaml

    fields: Dict[str, Any] = dict(getattr(args, "scene_recipe", {}))
    for item in args.scene:
        key, sep, text = item.partition("=")
        if not sep:
            raise InputError(f"--scene {item!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise InputError(f"--scene {item!r}: bad YAML value ({str(e).splitlines()[0]})") from e
        fields[key.strip()] = _scene_value("--scene", key.strip(), value)
    H, W = args.image_size
    return SceneConfig(image_size=(H, W), augment=False, **fields)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``train_detector``: exit code 0 (result in ``<out stem>.result.json``), 2 with one
    line naming the file or key on bad input, 130 when interrupted (the last checkpoint is kept)."""
    return run_cli("train_detector", lambda: _run(parse_args(argv)))


def result_path(checkpoint: str | Path) -> Path:
    """``runs/detector.pt`` -> ``runs/detector.result.json``."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".result.json")


class _LoopView:
    """What ``training.trainer.LoggerHook`` reads of a trainer (its progress bar and TensorBoard
    writer are reused as they are)."""

    def __init__(self, step: int, max_steps: int, output_dir: Path) -> None:
        self.step, self.max_steps, self.output_dir = step, max_steps, output_dir
        self.history: List[Dict[str, float]] = []
        self.last = None
        self.state: Dict[str, Any] = {}


def logs_dir(checkpoint: str | Path) -> Path:
    """``runs/det/detector.pt`` -> ``runs/det/detector_logs`` (TensorBoard under ``tb/``)."""
    p = Path(checkpoint)
    return p.with_name(p.stem + "_logs")


def _run(args: argparse.Namespace) -> int:
    from pose6d_ros.training.trainer import LoggerHook

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with reading(args.objects, "--objects"):
        registry = ObjectRegistry.from_yaml(args.objects)
    for name in ("steps", "batch", "render_per_step", "buffer", "ckpt_every", "log_every"):
        if getattr(args, name) < (0 if name == "steps" else 1):
            raise InputError(f"--{name.replace('_', '-')} must be >= {0 if name == 'steps' else 1}, "
                             f"got {getattr(args, name)}")
    if args.buffer < args.batch:
        raise InputError(f"--buffer ({args.buffer}) must hold at least a batch (--batch {args.batch})")
    out = Path(args.out)
    H, W = args.image_size
    scene_cfg = scene_config(args)
    spec = DetectorSpec(object_ids=tuple(registry.ids), object_names=tuple(registry.names), arch=args.arch,
                        min_size=min(H, W), max_size=max(H, W), box_head_dim=args.box_head_dim,
                        frozen_stages=args.frozen_stages, fpn_channels=args.fpn_channels)
    step, next_frame, state = 0, 0, None
    if args.resume and out.is_file():
        model, spec, state = load_detector(out, args.device, expect_names=registry.names)
        if tuple(spec.object_names) != tuple(registry.names):
            raise InputError(f"{out} was trained on {list(spec.object_names)}, not on the objects of {args.objects}")
        step, next_frame = int(state["step"]), int(state["extra"].get("next_frame", 0))
    else:
        torch.manual_seed(args.seed)  # the new layers' initialisation is part of the run's seed
        model = build_from_spec(spec, backbone_weights=args.backbone_weights,
                                trunk_weights=args.trunk_weights).to(args.device)
    trunk_scale = args.trunk_lr_scale if args.trunk_lr_scale is not None else (0.1 if spec.arch in LITE_ARCHS else 1.0)
    optimizer = torch.optim.AdamW(trainable_groups(model, trunk_scale), lr=args.lr, weight_decay=1e-4)
    if state is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    scenes = DetectionScenes(registry, scene_cfg, seed=args.seed, device=args.device)
    buffer = ReplayBuffer(args.buffer)
    stop = min(args.steps, args.stop_at) if args.stop_at > 0 else args.steps
    recipe = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "scene_recipe"}
    recipe["scene"] = {f.name: (list(v) if isinstance(v, tuple) else v) for f in dataclasses.fields(scene_cfg)
                       if f.name != "K" for v in [getattr(scene_cfg, f.name)]}
    extra = {"seed": args.seed, "objects": args.objects, "args": recipe}
    t0 = time.monotonic()
    if step < stop:
        if next_frame > 0:
            refill(buffer, scenes, next_frame)
        view = _LoopView(step, args.steps, logs_dir(out))
        hook = LoggerHook(period=args.log_every, image_period=0, tensorboard=not args.no_tensorboard,
                          progress=not args.no_progress)
        hook.before_train(view)

        def on_step(s: int, losses: dict, nf: int) -> None:
            rec = {"total": sum(losses.values()), **{k.replace("loss_", ""): v for k, v in losses.items()},
                   "lr": optimizer.param_groups[0]["lr"], "frames": float(nf)}
            view.step, view.history = s, [rec]
            hook.after_step(view)
            if args.no_progress and (s % args.log_every == 0 or s == stop):
                print(f"step {s}/{args.steps} " + " ".join(f"{k}={v:.4g}" for k, v in rec.items()), flush=True)
            if s % args.ckpt_every == 0 or s == stop:
                save_detector(out, model, spec, step=s, optimizer=optimizer, extra={"next_frame": nf, **extra})

        try:
            step, next_frame = train_steps(
                model, optimizer, scenes, buffer, start_step=step, steps=stop - step, batch=args.batch,
                render_per_step=args.render_per_step, next_frame=next_frame, lr=args.lr, warmup=args.warmup,
                total_steps=args.steps, seed=args.seed, on_step=on_step)
        except KeyboardInterrupt:
            print("train_detector: interrupted; the last checkpoint is kept", file=sys.stderr)
            return 130
        finally:
            hook.after_train(view)
        print(f"trained to step {step} in {time.monotonic() - t0:.0f}s -> {out}", flush=True)
    elif not out.is_file():
        save_detector(out, model, spec, step=step, optimizer=optimizer, extra={"next_frame": next_frame, **extra})
    result = {"checkpoint": str(out), "step": step, "objects": list(spec.object_names), "arch": spec.arch,
              "seconds": round(time.monotonic() - t0, 1)}
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
