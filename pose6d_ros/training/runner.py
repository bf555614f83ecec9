"""What both entry scripts share: device, seeds, hooks, the loop, the final model and test table."""

from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

import numpy as np
import torch
import yaml

from pose6d_ros._checks import InputError, run_cli
from pose6d_ros._io import atomic_write_json, atomic_write_text
from pose6d_ros.data.bop import list_scenes
from pose6d_ros.data.target_crops import TargetCrops, first_per_object, items_from_detections, items_from_split
from pose6d_ros.evaluation.evaluate import diagnostic_eval, predict_split, score_predictions, write_outputs
from pose6d_ros.evaluation.tables import format_markdown
from pose6d_ros.registry import RunObjects
from pose6d_ros.training import distributed as du
from pose6d_ros.training.build import build_model, build_objects, build_optimizer, save_run_model
from pose6d_ros.training.config import (Recipe, add_common_args, apply_threads, as_recipe, check_required,
                                        config_from_args)
from pose6d_ros.training.trainer import (CheckpointHook, EMAHook, EvalHook, HookBase, LoggerHook, StepOutput,
                                         Trainer)

__all__ = ["Run", "cli_main", "RESULT_FILE"]

#: What every trainer leaves in its ``output_dir`` when it finishes (JSON, written atomically).
RESULT_FILE = "result.json"

log = logging.getLogger("pose6d_ros.training")


class FreezeEarlyHook(HookBase):
    """First ``n_stages`` backbone stages frozen while ``step < steps`` (Sec. 4), then all layers train.

    Decided from the step in ``before_train`` too, so a resumed run is in the same state as an
    uninterrupted one."""

    def __init__(self, n_stages: int, steps: int) -> None:
        self.n, self.steps = int(n_stages), int(steps)

    def _apply(self, trainer: Trainer) -> None:
        trainer.model.freeze_early(self.n if trainer.step < self.steps else 0)

    def before_train(self, trainer: Trainer) -> None:
        self._apply(trainer)

    def after_step(self, trainer: Trainer) -> None:
        if trainer.step == self.steps:
            self._apply(trainer)


class Run:
    """The pieces of a run before the step function is attached.

    Args:
        recipe: the checked recipe (a plain mapping is checked here, :func:`config.as_recipe`).
        trainer: ``supervised`` | ``selfsup`` | ``distill``: which keys are required
            (:func:`config.check_required`), checked before any work.
    """

    def __init__(self, recipe: Union[Recipe, Mapping[str, Any]], trainer: str) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        self.recipe = recipe = as_recipe(recipe)
        check_required(recipe, trainer)  # before any work: no ./runs/default, no half-built run
        self.out = Path(recipe.output_dir)
        apply_threads(recipe.threads)
        seed = recipe.seed
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        self.device = du.resolve_device(recipe.device)
        du.init_distributed(self.device)
        if du.is_main():
            atomic_write_text(self.out / "config.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        data = recipe.data
        self.objects: RunObjects = build_objects(data)
        self.model = build_model(recipe.model, recipe.init, data.crop_size, self.objects, self.device)
        du.broadcast_parameters(self.model)
        self.optimizer, self.scheduler = build_optimizer(recipe.optim, self.model)
        S = data.crop_size
        # data.root is required (check_required) wherever the run reads it; without it, no diag/
        self.root = Path(data.root) if data.root else None
        # the unlabeled images: data.train_split (e.g. written by import_bag), else the suite's train/
        self.train_split = Path(data.train_split) if data.train_split else (self.root / "train" if self.root else None)
        self.test_split = self.root / "test" if self.root else None
        self.diag: Optional[Dict[str, torch.Tensor]] = None
        diag_split = self.root / "diag" if self.root else None
        n_diag = data.diag_per_object
        if n_diag > 0 and diag_split is not None and diag_split.is_dir():
            items = items_from_split(diag_split, self.objects.ids)
            per: Dict[int, int] = {}
            keep = []
            for it in items:  # the first n_diag targets of each object
                if per.get(it.obj_id, 0) < n_diag:
                    keep.append(it)
                    per[it.obj_id] = per.get(it.obj_id, 0) + 1
            if keep:
                self.diag = TargetCrops(diag_split, keep, self.objects, S, padding=data.crop_padding).batch(
                    range(len(keep)), jitter=False)

    def target_crops(self, labelled: bool) -> TargetCrops:
        """Training crops of the target domain: unlabeled (self-supervised) or with the withheld
        ``train_gt`` labels (the real-label upper bound)."""
        data = self.recipe.data
        jitter = (data.box_jitter.shift, data.box_jitter.scale) if data.box_jitter is not None else None
        if data.train_split and not list_scenes(self.train_split):
            raise InputError(f"recipe key 'data.train_split': {self.train_split}: no BOP scenes (folders with "
                             "rgb/ and scene_camera.json, as import_bag writes)")
        if labelled:
            items = items_from_split(self.root / "train_gt", self.objects.ids)
        else:
            # the boxes of the unlabeled images: data.detections (e.g. written by `detect`), else the suite's
            key, path = ("data.detections", Path(data.detections)) if data.detections else \
                ("data.root", self.root / "train_detections.json")
            if not path.is_file():
                raise InputError(f"recipe key '{key}': {path}: no such file (the boxes of the unlabeled "
                                 "images in BOP detection format, e.g. written by detect)")
            items = items_from_detections(path, self.objects.ids)
            if not items:
                raise InputError(f"recipe key '{key}': {path}: no detections of the run's objects {self.objects.ids}")
        crops = TargetCrops(self.train_split, items, self.objects, data.crop_size, padding=data.crop_padding,
                            jitter=jitter)
        images = set(crops.ds.images)
        stray = next((it for it in items if (it.scene_id, it.im_id) not in images), None)
        if stray is not None:  # now, not at the step that draws it
            raise InputError(f"scene {stray.scene_id} image {stray.im_id} of the boxes is not an image of "
                             f"{self.train_split}" + ("" if labelled else f" ({key} {path})"))
        return crops

    def trainer(self, step_fn: Callable[[Trainer, Any], StepOutput], batches, extra_hooks=()) -> Trainer:
        r = self.recipe
        hooks = list(extra_hooks)
        n_frozen, frozen_steps = r.init.freeze_early_stages, r.init.freeze_early_steps
        if n_frozen > 0 and frozen_steps > 0:
            hooks.append(FreezeEarlyHook(n_frozen, frozen_steps))
        if self.diag is not None:
            diag, objects = self.diag, self.objects
            hooks.append(EvalHook(r.eval.period, lambda t: diagnostic_eval(t.model, diag, objects)))
        hooks.append(EMAHook())
        hooks.append(CheckpointHook(r.checkpoint.period))
        hooks.append(LoggerHook(r.log.period, r.log.image_period, r.log.tensorboard, r.log.progress))
        return Trainer(model=self.model, step_fn=step_fn, batches=batches, optimizer=self.optimizer,
                       scheduler=self.scheduler, max_steps=r.optim.max_steps, device=self.device,
                       hooks=hooks, amp=r.amp, grad_clip=r.optim.grad_clip, seed=r.seed, output_dir=self.out,
                       config=r.to_dict())

    def finish(self, trainer: Trainer, kind: str,
               training: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
        # the model card records how it was trained: the trainer, the whole recipe, and ``training``'s extras
        """Save ``model.pt``, when ``eval.final_test`` print the test table, and write
        ``output_dir/result.json`` (model, steps, diagnostics, test table); returns the same with the
        table as a :class:`RecallTable`."""
        if trainer.step < trainer.max_steps:
            return None
        if du.is_distributed():
            torch.distributed.barrier()
        if not du.is_main():
            return None
        if trainer.step == trainer.max_steps and trainer.state.get("teacher") is not None \
                and self.recipe.selfsup.ema_final:
            trainer.model.load_state_dict(trainer.state["teacher"].module.state_dict())
        path = save_run_model(self.out / "model.pt", trainer.model, self.objects, self.recipe.data.crop_padding,
                              {"kind": kind, "steps": trainer.step, "output_dir": str(self.out)},
                              training={"kind": kind, "recipe": self.recipe.to_dict(), **(training or {})})
        log.info("wrote %s", path)
        result: Dict[str, Any] = {"kind": kind, "model": str(path), "checkpoint": str(trainer.checkpoint_path),
                                  "steps": trainer.step, "skipped_steps": trainer.skipped_steps,
                                  "diag": trainer.state.get("eval", [])}
        if self.recipe.eval.final_test and self.test_split is not None and self.test_split.is_dir():
            items = items_from_split(self.test_split, self.objects.ids)
            limit = self.recipe.eval.test_limit
            if limit:  # per object: a global cap would keep only the first objects of the split
                items = first_per_object(items, limit)
            crops = TargetCrops(self.test_split, items, self.objects, self.recipe.data.crop_size,
                                padding=self.recipe.data.crop_padding)
            preds = predict_split(trainer.model, crops, self.objects.keypoints, device=self.device)
            table = score_predictions(preds, self.objects.registry)
            write_outputs(table, preds, self.out / "eval", dataset=self.root.resolve().name)
            print(format_markdown(table, f"{kind} on {self.test_split}"), flush=True)
            result["table"] = table
        doc = {k: v for k, v in result.items() if k != "table"}
        if "table" in result:
            doc["test"] = {"split": str(self.test_split), **result["table"].to_dict()}
        result["result_file"] = str(atomic_write_json(self.out / RESULT_FILE, doc))
        return result


def cli_main(prog: str, description: str, train: Callable[..., Any], argv=None) -> int:
    """The body of every trainer's console script: recipe + ``--set`` overrides, ``--resume``, clean
    teardown; exit code 0 on success, 2 with one line naming the file or key on bad input
    (``_checks.run_cli``). The result is printed and left in ``output_dir/result.json``."""
    args = add_common_args(argparse.ArgumentParser(prog=prog, description=description)).parse_args(argv)

    def body() -> None:
        try:
            result = train(config_from_args(args), resume=args.resume)
        except BaseException:
            du.cleanup(finished=False)
            raise
        du.cleanup()
        if result is not None:
            print(f"model: {result['model']} ({result['steps']} steps)\nresult: {result['result_file']}", flush=True)

    return run_cli(prog, body)
