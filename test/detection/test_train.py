"""Training: a few steps reduce the loss on synthetic scenes; the CLI writes, resumes and evaluates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose6d_ros.detection.model import TV_OFFSET, DetectorSpec, build_from_spec, load_detector
from pose6d_ros.detection.scenes import DetectionScenes, SceneConfig
from pose6d_ros.detection.train import ReplayBuffer, main


def _loss(model, images, targets) -> float:
    torch.manual_seed(123)  # same proposal/anchor sampling for every evaluation
    with torch.no_grad():
        return float(sum(model(list(images), targets).values()))


@pytest.mark.slow
def test_few_steps_reduce_loss_on_scenes(registry):
    torch.set_num_threads(2)
    scenes = DetectionScenes(registry, SceneConfig(image_size=(96, 128), object_px=(25.0, 45.0), augment=False),
                             seed=1)
    batch = scenes.batch(range(2))
    targets = batch.targets(TV_OFFSET)
    assert sum(len(t["labels"]) for t in targets) > 0
    spec = DetectorSpec(object_ids=tuple(registry.ids), object_names=tuple(registry.names), min_size=96,
                        max_size=128, box_head_dim=64)
    model = build_from_spec(spec).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = _loss(model, batch.images, targets)
    for _ in range(6):
        loss = sum(model(list(batch.images), targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _loss(model, batch.images, targets)
    assert after < 0.8 * before, (before, after)


def test_replay_buffer_is_bounded_and_keeps_targets():
    buf = ReplayBuffer(3)
    imgs = torch.rand(5, 3, 4, 4)
    tg = [{"boxes": torch.tensor([[float(i), 0.0, 2.0 + i, 2.0]]), "labels": torch.tensor([i + 1])} for i in range(5)]
    buf.add(imgs, tg)
    assert len(buf) == 3
    x, t = buf.sample(3, np.random.default_rng(0))
    assert sorted(int(d["labels"]) for d in t) == [3, 4, 5]  # the oldest two were dropped
    for img, d in zip(x, t):  # images stay paired with their targets (uint8 storage)
        torch.testing.assert_close(img, imgs[int(d["labels"]) - 1], atol=1 / 255, rtol=0)


def test_cli_writes_resumes_and_rejects_other_objects(tiny_checkpoint, tmp_path, registry, capsys, objects_yaml,
                                                      tiny_args):
    OBJECTS, TINY = objects_yaml, tiny_args
    _, spec, state = load_detector(tiny_checkpoint)
    assert state["step"] == 2 and spec.object_names == tuple(registry.names)
    out = tmp_path / "resumed.pt"
    out.write_bytes(tiny_checkpoint.read_bytes())
    assert main(["--objects", str(OBJECTS), "--out", str(out), "--steps", "3", "--resume", *TINY]) == 0
    _, _, state3 = load_detector(out)
    assert state3["step"] == 3 and state3["extra"]["next_frame"] > state["extra"]["next_frame"]
    # a registry with other names cannot resume this checkpoint
    other = tmp_path / "objects.yaml"
    other.write_text(OBJECTS.read_text().replace("name: duck", "name: goose"))
    assert main(["--objects", str(other), "--out", str(out), "--steps", "4", "--resume", *TINY]) == 2
    assert "duck" in capsys.readouterr().err


def test_cli_result_file_and_bad_checkpoint(tiny_checkpoint, tmp_path, capsys, objects_yaml, tiny_args):
    """The run leaves ``<out stem>.result.json``; resuming from a truncated checkpoint is one line
    naming it and exit code 2 (not a traceback)."""
    import json

    from pose6d_ros.detection.train import result_path

    res = json.loads(result_path(tiny_checkpoint).read_text())
    assert res["checkpoint"] == str(tiny_checkpoint) and res["step"] == 2
    bad = tmp_path / "bad.pt"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["--objects", str(objects_yaml), "--out", str(bad), "--steps", "3", "--resume", *tiny_args]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and str(bad) in err[0], err


# ---------------------------------------------------------------- recipes, resume, progress, TensorBoard

def _smoke():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "training" / "detector_smoke.yaml"


def test_recipe_unknown_key_or_bad_value_is_one_line_naming_it(tmp_path, capsys, objects_yaml):
    bad = tmp_path / "r.yaml"
    bad.write_text(_smoke().read_text() + "stepz: 4\n")
    out = tmp_path / "d.pt"
    assert main(["--recipe", str(bad), "--objects", str(objects_yaml), "--out", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "'stepz'" in err[0] and str(bad) in err[0], err
    for text, name in (("scene:\n  photo_probability: 0.5\n", "'photo_probability'"),
                       ("batch: two\n", "'batch'"), ("image_size: [96]\n", "'image_size'"),
                       ("arch: yolo\n", "'arch'")):
        bad.write_text(text)
        assert main(["--recipe", str(bad), "--objects", str(objects_yaml), "--out", str(out)]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and name in err[0] and str(bad) in err[0], err
    assert not out.exists()


def test_recipe_values_and_command_line_overrides(tmp_path, objects_yaml):
    import yaml

    from pose6d_ros.detection.train import parse_args, scene_config

    args = parse_args(["--recipe", str(_smoke()), "--objects", str(objects_yaml), "--out", str(tmp_path / "d.pt"),
                       "--steps", "7", "--scene", "photo_prob=0.25"])
    recipe = yaml.safe_load(_smoke().read_text())
    assert args.steps == 7 and args.batch == recipe["batch"] and tuple(args.image_size) == tuple(recipe["image_size"])
    cfg = scene_config(args)
    assert cfg.photo_prob == 0.25 and cfg.object_px == tuple(recipe["scene"]["object_px"])
    assert cfg.image_size == tuple(recipe["image_size"]) and cfg.augment is False
    # the default recipe names only options that exist
    default = parse_args(["--recipe", str(_smoke().with_name("detector_lm_lite.yaml")), "--objects", "x", "--out", "y"])
    assert default.arch == "efficientnet_lite0_fpn" and default.steps > 100


def test_resume_after_a_stop_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, objects_yaml, capsys):
    """--stop-at 2 then --resume to 3 == 3 steps straight, bit for bit (frames, batches, augmentation and
    proposal sampling depend only on (seed, step); the buffer is re-rendered). Also: one progress line,
    TensorBoard scalars under <stem>_logs/tb."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base = ["--recipe", str(_smoke()), "--objects", str(objects_yaml), "--threads", "1"]
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    assert main(base + ["--out", str(a)]) == 0
    err = capsys.readouterr().err
    assert "3/3" in err and err.strip().count("\n") == 0  # tqdm redraws one line
    assert main(base + ["--out", str(b), "--stop-at", "2"]) == 0
    assert load_detector(b)[2]["step"] == 2
    assert main(base + ["--out", str(b), "--resume"]) == 0
    sa, sb = load_detector(a)[2], load_detector(b)[2]
    assert sa["step"] == sb["step"] == 3 and sa["extra"]["next_frame"] == sb["extra"]["next_frame"]
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    acc = EventAccumulator(str(tmp_path / "a_logs" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/total", "train/classifier", "train/objectness", "train/lr"} <= tags
    assert [e.step for e in acc.Scalars("train/total")] == [1, 2, 3]


def test_frames_of_step_cover_the_stream_once():
    from pose6d_ros.detection.train import frames_of_step

    seen = [i for s in range(6) for i in frames_of_step(s, batch=4, render_per_step=2)]
    assert seen == list(range(4 + 5 * 2))
    assert list(frames_of_step(0, batch=2, render_per_step=3)) == [0, 1, 2]


def test_a_briefly_overfit_detector_returns_its_boxes_in_our_pixel_convention(registry):
    """30 steps on two fixed frames; then eval (through ``infer.Detector``) finds every object with a box of
    its class at IoU > 0.6 against the mask box (pixel edges at j -+ 0.5), and clips to [-0.5, W - 0.5]."""
    from pose6d_ros.detection.infer import Detector, box_iou

    torch.manual_seed(0)
    H, W = 96, 128
    scenes = DetectionScenes(registry, SceneConfig(image_size=(H, W), objects_per_frame=(1, 2), object_px=(40.0, 60.0),
                                                   augment=False, distractors=(0, 0)), seed=2)
    batch = scenes.batch(range(2))
    targets = batch.targets(TV_OFFSET)
    spec = DetectorSpec(object_ids=tuple(registry.ids), object_names=tuple(registry.names), min_size=H,
                        max_size=W, box_head_dim=64)
    model = build_from_spec(spec).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(30):
        loss = sum(model(list(batch.images), targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    found = Detector(model, spec, min_score=0.0).detect_batch(batch.images)
    n = 0
    for i, dets in enumerate(found):
        boxes = torch.tensor([d.box for d in dets], dtype=torch.float64)
        assert (boxes[:, :2] >= -0.5).all() and (boxes[:, 2] <= W - 0.5).all() and (boxes[:, 3] <= H - 0.5).all()
        for k in batch.valid[i].nonzero()[:, 0].tolist():
            name = registry.names[int(batch.obj_index[i, k])]
            best = next(d for d in dets if d.class_id == name)
            iou = float(box_iou(batch.boxes_visib[i, k][None].double(), torch.tensor([best.box], dtype=torch.float64)))
            assert iou > 0.6, (name, best.box, batch.boxes_visib[i, k].tolist(), iou)
            n += 1
    assert n >= 2
