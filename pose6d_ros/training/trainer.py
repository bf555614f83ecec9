"""A small trainer with hooks (detectron2 style).

The trainer owns the loop: fetch the batch of step ``s``, run a ``step_fn`` that returns named
losses, backward (AMP on CUDA), average gradients over ranks, clip, optimizer and scheduler step,
then the hooks (logging, checkpoints, evaluation, teacher updates, unfreezing).

Determinism and resume: every step runs under RNG streams seeded from ``(seed, step, rank)``
(batch sampling, augmentation, occlusion patches). A run killed after a checkpoint and resumed
therefore sees exactly the batches and random draws of an uninterrupted run, and the checkpoint
restores model, optimizer, scheduler, scaler and step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from pose6d_ros.training import distributed as dist_utils
from pose6d_ros.training.checkpoint import load_checkpoint, save_checkpoint, unwrap

__all__ = [
    "StepOutput", "Trainer", "HookBase", "CheckpointHook", "LoggerHook", "EvalHook", "LambdaHook",
    "EMATeacher", "EMAHook", "step_seed", "StepSampler",
]

log = logging.getLogger("pose6d_ros.training")


@dataclass
class StepOutput:
    """What a ``step_fn`` returns.

    Attributes:
        losses: named scalar losses; ``"total"`` is the one back-propagated.
        metrics: extra scalars to log (not differentiated), e.g. the fraction of rejected samples.
        images: named ``(B, 3, H, W)`` panels for TensorBoard (real, masked real, rendered, ...).
    """

    losses: Dict[str, torch.Tensor]
    metrics: Dict[str, float] = field(default_factory=dict)
    images: Dict[str, torch.Tensor] = field(default_factory=dict)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A 63-bit seed for step ``step`` of rank ``rank``; independent of anything else in the run."""
    return (int(seed) * 1_000_003 + int(step) * 7_919 + int(rank) * 104_729) % (2**63 - 1)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % (2**32))
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class StepSampler:
    """Indices of the batch of each step, a pure function of ``(seed, step)``.

    The global batch of step ``s`` is the slice ``[s·B·W, (s+1)·B·W)`` of an endless stream of
    per-epoch permutations; rank ``r`` of ``W`` takes its ``B`` consecutive entries. One process
    with batch ``2B`` therefore sees the union of two ranks with batch ``B``.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, shuffle: bool = True) -> None:
        if num_items <= 0:
            raise ValueError("StepSampler: empty dataset")
        self.n, self.b, self.seed, self.shuffle = num_items, batch_size, seed, shuffle

    def _perm(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 9_973 + epoch)
        return torch.randperm(self.n, generator=g)

    def indices(self, step: int, rank: int = 0, world: int = 1) -> List[int]:
        start = (step * world + rank) * self.b
        out = []
        for pos in range(start, start + self.b):
            epoch, i = divmod(pos, self.n)
            out.append(int(self._perm(epoch)[i]))
        return out


class HookBase:
    """Override any of these; ``trainer`` is the running :class:`Trainer`."""

    def before_train(self, trainer: "Trainer") -> None: ...

    def after_step(self, trainer: "Trainer") -> None: ...

    def after_train(self, trainer: "Trainer") -> None: ...


class Trainer:
    """The training loop.

    Args:
        model: Φ (or any module); parameters with ``requires_grad`` are trained.
        step_fn: ``step_fn(trainer, batch) -> StepOutput``; the batch is already on ``device``.
        batches: ``batches(step, rank, world) -> batch`` (deterministic in its arguments).
        optimizer: over the trainable parameters.
        max_steps: steps to run in total (a resumed run continues up to it).
        device: where the model lives.
        scheduler: optional LR scheduler stepped every step.
        hooks: run in order after every step.
        amp: mixed precision (float16 autocast + GradScaler) when ``device`` is CUDA.
        grad_clip: max global gradient norm, 0 = off.
        seed: base of the per-step RNG streams.
        output_dir: where checkpoints and logs go.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        step_fn: Callable[["Trainer", Any], StepOutput],
        batches: Callable[[int, int, int], Any],
        optimizer: torch.optim.Optimizer,
        max_steps: int,
        device: torch.device | str = "cpu",
        scheduler: Optional[Any] = None,
        hooks: Sequence[HookBase] = (),
        amp: bool = False,
        grad_clip: float = 0.0,
        seed: int = 0,
        output_dir: Optional[str | Path] = None,
        config: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.model = model
        self.step_fn = step_fn
        self.batches = batches
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_steps = int(max_steps)
        self.device = torch.device(device)
        self.hooks: List[HookBase] = list(hooks)
        self.use_amp = bool(amp) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.grad_clip = float(grad_clip)
        self.seed = int(seed)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.config = config or {}
        self.step = 0
        self.last: Optional[StepOutput] = None
        self.history: List[Dict[str, float]] = []
        self.skipped_steps = 0
        self.state: Dict[str, Any] = {}  # for hooks (e.g. the EMA teacher)

    # ---- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Optional[Path]:
        return None if self.output_dir is None else self.output_dir / "last.pt"

    def save(self, path: Optional[str | Path] = None) -> Optional[Path]:
        """Checkpoint the full state (main rank only)."""
        path = path or self.checkpoint_path
        if path is None or not dist_utils.is_main():
            return None
        extra: Dict[str, Any] = {"config": self.config, "history": self.history}
        teacher = self.state.get("teacher")
        if teacher is not None:
            extra["teacher"] = teacher.state_dict()
        return save_checkpoint(path, model=self.model, step=self.step, optimizer=self.optimizer,
                               scheduler=self.scheduler, scaler=self.scaler, extra=extra)

    def resume(self, path: Optional[str | Path] = None) -> bool:
        """Load ``path`` (default ``output_dir/last.pt``) if it exists; returns whether it did."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None or not path.is_file():
            return False
        state = load_checkpoint(path, model=self.model, optimizer=self.optimizer,
                                scheduler=self.scheduler, scaler=self.scaler,
                                map_location=self.device)
        self.step = int(state["step"])
        self.history = list(state.get("extra", {}).get("history", []))
        teacher = self.state.get("teacher")
        if teacher is not None and "teacher" in state.get("extra", {}):
            teacher.load_state_dict(state["extra"]["teacher"])
        log.info("resumed from %s at step %d", path, self.step)
        return True

    # ---- the loop ----------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def run_step(self) -> StepOutput:
        rank, world = dist_utils.rank(), dist_utils.world_size()
        with _seeded(step_seed(self.seed, self.step, rank)):
            batch = _to_device(self.batches(self.step, rank, world), self.device)
            with self.autocast():
                out = self.step_fn(self, batch)
        total = out.losses["total"]
        self.optimizer.zero_grad(set_to_none=True)
        finite = torch.isfinite(total.detach())
        if dist_utils.is_distributed():  # every rank must agree to skip, or reductions deadlock
            finite = dist_utils.all_reduce_mean(finite.float()) == 1.0
        if not bool(finite):
            self.skipped_steps += 1
            log.warning("step %d: non-finite loss, update skipped", self.step)
        else:
            self.scaler.scale(total).backward()
            dist_utils.average_gradients(unwrap(self.model))
            self.scaler.unscale_(self.optimizer)
            gnorm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.grad is not None],
                self.grad_clip if self.grad_clip > 0 else float("inf"))
            out.metrics["grad_norm"] = float(gnorm)
            if not self.use_amp and not math.isfinite(float(gnorm)):
                # a NaN gradient (e.g. a degenerate PnP Jacobian) must not reach the weights;
                # with AMP the scaler already skips such steps
                self.skipped_steps += 1
                self.optimizer.zero_grad(set_to_none=True)
                log.warning("step %d: non-finite gradient, update skipped", self.step)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        record = {"step": float(self.step)}
        record.update({k: float(dist_utils.all_reduce_mean(v.detach().float())) for k, v in out.losses.items()})
        record.update({k: float(v) for k, v in out.metrics.items()})
        record["lr"] = float(self.optimizer.param_groups[0]["lr"])
        self.history.append(record)
        self.last = out
        return out

    def train(self) -> List[Dict[str, float]]:
        for h in self.hooks:
            h.before_train(self)
        try:
            while self.step < self.max_steps:
                self.run_step()
                for h in self.hooks:
                    h.after_step(self)
        finally:
            for h in self.hooks:
                h.after_train(self)
        return self.history


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


# ---- hooks -------------------------------------------------------------------------------------
class CheckpointHook(HookBase):
    """Atomic ``output_dir/last.pt`` every ``period`` steps and at the end."""

    def __init__(self, period: int) -> None:
        self.period = int(period)

    def after_step(self, trainer: Trainer) -> None:
        if self.period > 0 and trainer.step % self.period == 0:
            trainer.save()

    def after_train(self, trainer: Trainer) -> None:
        if trainer.step >= trainer.max_steps:
            trainer.save()


class LambdaHook(HookBase):
    """``fn(trainer)`` after every step (schedules such as unfreezing early layers)."""

    def __init__(self, after_step: Callable[[Trainer], None]) -> None:
        self.fn = after_step

    def after_step(self, trainer: Trainer) -> None:
        self.fn(trainer)


class EvalHook(HookBase):
    """``fn(trainer) -> dict`` every ``period`` steps (0 = only at the end); logged, never a loss."""

    def __init__(self, period: int, fn: Callable[[Trainer], Dict[str, float]], at_start: bool = True) -> None:
        self.period, self.fn, self.at_start = int(period), fn, at_start
        self.results: List[Dict[str, float]] = []

    def _run(self, trainer: Trainer) -> None:
        if not dist_utils.is_main():
            return
        was_training = trainer.model.training
        res = {"step": float(trainer.step)}
        res.update(self.fn(trainer))
        trainer.model.train(was_training)
        self.results.append(res)
        trainer.state.setdefault("eval", []).append(res)
        log.info("eval @%d: %s", trainer.step, {k: round(v, 4) for k, v in res.items()})
        tb = trainer.state.get("tb")
        if tb is not None:
            for k, v in res.items():
                if k != "step":
                    tb.add_scalar(f"diag/{k}", v, trainer.step)

    def before_train(self, trainer: Trainer) -> None:
        if self.at_start:
            self._run(trainer)

    def after_step(self, trainer: Trainer) -> None:
        if self.period > 0 and trainer.step % self.period == 0 and trainer.step < trainer.max_steps:
            self._run(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if trainer.step >= trainer.max_steps:
            self._run(trainer)


class LoggerHook(HookBase):
    """tqdm progress, console lines and TensorBoard scalars / image panels (main rank only)."""

    def __init__(self, period: int = 20, image_period: int = 200, tensorboard: bool = True,
                 progress: bool = True) -> None:
        self.period, self.image_period = int(period), int(image_period)
        self.use_tb, self.use_tqdm = tensorboard, progress
        self.tb = None
        self.bar = None
        self._t0 = 0.0
        self._s0 = 0

    def before_train(self, trainer: Trainer) -> None:
        if not dist_utils.is_main():
            return
        if self.use_tb and trainer.output_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(trainer.output_dir / "tb"))
            trainer.state["tb"] = self.tb
        if self.use_tqdm:
            from tqdm import tqdm

            self.bar = tqdm(total=trainer.max_steps, initial=trainer.step, dynamic_ncols=True)
        self._t0, self._s0 = time.perf_counter(), trainer.step

    def after_step(self, trainer: Trainer) -> None:
        if not dist_utils.is_main():
            return
        rec = trainer.history[-1]
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{rec.get('total', float('nan')):.3g}")
        if self.tb is not None and (trainer.step % self.period == 0):
            for k, v in rec.items():
                if k != "step" and math.isfinite(v):
                    self.tb.add_scalar(f"train/{k}", v, trainer.step)
            if self.image_period > 0 and trainer.step % self.image_period == 0 and trainer.last is not None:
                for name, img in trainer.last.images.items():
                    self.tb.add_images(f"panels/{name}", img[:8].detach().float().clamp(0, 1).cpu(), trainer.step)
        if self.period > 0 and trainer.step % self.period == 0:
            its = (trainer.step - self._s0) / max(time.perf_counter() - self._t0, 1e-9)
            rec["it_per_s"] = its
            msg = " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k != "step")
            log.info("step %d: %s", trainer.step, msg)

    def after_train(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            trainer.state.pop("tb", None)


class EMATeacher(torch.nn.Module):
    """Exponential moving average copy of Φ (a teacher for h1); never trained by backprop."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        super().__init__()
        import copy

        self.decay = float(decay)
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        src = unwrap(model).state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(self.decay).add_(src[k].detach(), alpha=1 - self.decay)
            else:
                v.copy_(src[k])

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class EMAHook(HookBase):
    """Updates ``trainer.state['teacher']`` after every optimizer step."""

    def after_step(self, trainer: Trainer) -> None:
        teacher = trainer.state.get("teacher")
        if teacher is not None:
            teacher.update(trainer.model)
