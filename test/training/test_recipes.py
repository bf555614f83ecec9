"""Typed recipes (issue 16, item 1): every recipe in training/ loads; an unknown key, a wrong type or a
missing required key is one line naming the key (exit code 2 from the console scripts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pose6d_ros.training import distill, selfsup, supervised
from pose6d_ros.training.config import (DataSection, ModelSection, Recipe, RecipeError, check_required, load_config,
                                        load_recipe)
from pose6d_ros.training.selfsup_step import SelfSupSettings

ROOT = Path(__file__).resolve().parents[2]
#: the pose network's recipes; ``detector_*.yaml`` are train_detector's (another reader, checked below)
RECIPES = sorted(p for p in (ROOT / "training").glob("*.yaml") if not p.name.startswith("detector_"))
DETECTOR_RECIPES = sorted((ROOT / "training").glob("detector_*.yaml"))


def _error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_there_are_recipes():
    assert len(RECIPES) >= 6


@pytest.mark.parametrize("path", DETECTOR_RECIPES, ids=lambda p: p.name)
def test_every_detector_recipe_loads_with_its_values(path):
    """train_detector reads each detector recipe: every option it sets arrives in the arguments, and its
    scene section builds a SceneConfig with those values."""
    import yaml

    from pose6d_ros.detection.train import parse_args, scene_config

    raw = yaml.safe_load(path.read_text())
    args = parse_args(["--recipe", str(path), "--objects", "o.yaml", "--out", "d.pt"])
    for key, value in raw.items():
        if key == "scene":
            continue
        got = getattr(args, key.replace("-", "_"))
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    cfg = scene_config(args)
    for key, value in raw.get("scene", {}).items():
        got = getattr(cfg, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert len(DETECTOR_RECIPES) >= 3


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_in_training_loads_and_keeps_its_values(path):
    """Each key the YAML file sets (after its ``_base_``) has that value in the typed recipe, and the
    recipe written back as plain data (config.yaml, the model card) reads back the same."""
    recipe = load_recipe(path)
    own = yaml.safe_load(path.read_text())
    own.pop("_base_", None)  # its values are checked with that file

    def walk(node, obj, key):
        for k, v in node.items():
            if isinstance(v, dict) and k != "teachers":
                walk(v, getattr(obj, k), f"{key}{k}.")
            else:
                got = getattr(obj, k)
                assert (list(got) if isinstance(got, tuple) else got) == v, f"{key}{k}"

    walk(own, recipe, "")
    assert Recipe.from_dict(yaml.safe_load(yaml.safe_dump(recipe.to_dict()))) == recipe
    assert recipe.output_dir and recipe.output_dir.startswith("runs/")


def test_a_partial_section_keeps_the_other_defaults():
    r = load_recipe(None, ["selfsup.weights.percep=5", "data.box_jitter.shift=0.2"])
    assert r.selfsup.weights.percep == 5.0 and r.selfsup.weights.pose == 1.0 and r.selfsup.weights.box == 1.0
    assert (r.data.box_jitter.shift, r.data.box_jitter.scale) == (0.2, 0.15)
    assert load_recipe(None, ["data.box_jitter=null"]).data.box_jitter is None


@pytest.mark.parametrize("override, message", [
    ("optim.max_step=100000", "recipe key 'optim.max_step' is unknown; did you mean 'optim.max_steps'?"),
    ("selfsup.use_msk=false", "recipe key 'selfsup.use_msk' is unknown; did you mean 'selfsup.use_mask'?"),
    ("selfsup.render.max_face=10", "recipe key 'selfsup.render.max_face' is unknown; did you mean "
                                   "'selfsup.render.max_faces'?"),
    ("selfsup.weights.percp=3", "recipe key 'selfsup.weights.percp' is unknown; did you mean 'selfsup.weights.percep'?"),
    ("optimizer.lr=1", "recipe key 'optimizer' is unknown; did you mean 'optim'?"),
    ("data.zzz=1", "recipe key 'data.zzz' is unknown; the keys of 'data' are: root, suite,"),
])
def test_unknown_key_is_one_line_naming_it_and_the_nearest(tmp_path, capsys, override, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(None, [override])
    assert str(e.value).startswith(message)
    assert supervised.main(["--set", override, "--output-dir", str(tmp_path / "run")]) == 2
    assert _error_line(capsys) == f"train_supervised: error: {e.value}"
    assert not (tmp_path / "run").exists()  # nothing was started


def test_unknown_key_in_a_yaml_file(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("output_dir: out\nselfsup:\n  render: {max_faces: 100, sigmaa: 0.5}\n")
    assert selfsup.main(["-c", str(path)]) == 2
    assert "recipe key 'selfsup.render.sigmaa' is unknown; did you mean 'selfsup.render.sigma'?" in _error_line(capsys)


@pytest.mark.parametrize("override, message", [
    ("optim.lr=abc", "recipe key 'optim.lr' must be a number, got 'abc'"),
    ("optim.lr=true", "recipe key 'optim.lr' must be a number, got True"),
    ("data.batch_size=true", "recipe key 'data.batch_size' must be an integer, got True"),
    ("data.batch_size=2.5", "recipe key 'data.batch_size' must be an integer, got 2.5"),
    ("optim.max_steps=null", "recipe key 'optim.max_steps' must be an integer, got null"),
    ("selfsup.use_mask=1", "recipe key 'selfsup.use_mask' must be true or false, got 1"),
    ("data.objects=[1, two]", "recipe key 'data.objects[1]' must be an integer, got 'two'"),
    ("data.objects=3", "recipe key 'data.objects' must be a list of integers or null, got 3"),
    ("selfsup.depth_range=[0.1]", "recipe key 'selfsup.depth_range' must be a list of 2 values"),
    ("model.backbone=18", "recipe key 'model.backbone' must be a string or null, got 18"),
    ("supervised.source=rael", "recipe key 'supervised.source' must be one of 'synthetic', 'real', got 'rael'"),
    ("selfsup.percep_region=silhouete", "did you mean 'silhouette'?"),
    ("optim=0.1", "recipe key 'optim' must be a section (a mapping), got 0.1"),
    ("data.box_jitter=0.1", "recipe key 'data.box_jitter' must be a section (a mapping) or null, got 0.1"),
    ("threads=0", "recipe key 'threads' must be a positive integer or null, got 0"),
    ("data.batch_size=0", "recipe key 'data.batch_size' must be >= 1, got 0"),
    ("selfsup.occlusion_patches.min_patches=5", "recipe section 'selfsup.occlusion_patches': need 0 <= min_patches"),
])
def test_wrong_type_is_one_line_naming_the_key(tmp_path, capsys, override, message):
    with pytest.raises(RecipeError, match=None) as e:
        load_recipe(None, [override])
    assert message in str(e.value) and "\n" not in str(e.value)
    assert supervised.main(["--set", override, "--output-dir", str(tmp_path / "run")]) == 2
    assert _error_line(capsys) == f"train_supervised: error: {e.value}"


def test_what_each_type_accepts():
    r = load_recipe(None, ["optim.lr=1", "optim.lr_steps=[10, 20]", "selfsup.box_huber_delta=null",
                           "selfsup.depth_range=[1, 2]", "data.objects=[1, 3]", "init.checkpoint=null"])
    assert r.optim.lr == 1.0 and isinstance(r.optim.lr, float)  # an int for a float
    assert r.optim.lr_steps == (10, 20) and r.data.objects == (1, 3)  # lists for tuples
    assert r.selfsup.depth_range == (1.0, 2.0) and all(isinstance(v, float) for v in r.selfsup.depth_range)
    assert r.selfsup.box_huber_delta is None and r.init.checkpoint is None  # None where Optional
    # PyYAML reads 1e-4 (no dot) as a string, in a file as on the command line
    assert Recipe.from_dict({"optim": {"lr": "1e-4"}}).optim.lr == 1e-4
    assert Recipe.from_dict({"output_dir": Path("runs/x")}).output_dir == "runs/x"
    assert load_recipe(None, ["distill.teachers={1: a.pt, 2: b.pt}"]).distill.teachers == {1: "a.pt", 2: "b.pt"}
    with pytest.raises(RecipeError, match="'distill.teachers' must be a string or a mapping or null, got a list"):
        load_recipe(None, ["distill.teachers=[a.pt]"])


def test_load_config_is_the_typed_recipe_as_plain_data():
    cfg = load_config(None, ["data.objects=[1, 3]"])
    assert cfg["data"]["objects"] == [1, 3] and cfg["optim"]["lr_steps"] == []
    assert cfg["selfsup"]["weights"] == {"pose": 1.0, "pose2": 1.0, "sup": 1.0, "percep": 20.0, "box": 1.0,
                                         "refine": 1.0}
    assert Recipe.from_dict(cfg) == load_recipe(None, ["data.objects=[1, 3]"])


def test_selfsup_settings_from_config_rejects_unknown_keys():
    """It used to drop them silently."""
    s = SelfSupSettings.from_config({"use_box": True, "weights": {"box": 2}, "depth_range": [0.2, 2]})
    assert s.use_box and s.weights.box == 2.0 and s.weights.percep == 20.0 and s.depth_range == (0.2, 2.0)
    with pytest.raises(RecipeError, match="recipe key 'selfsup.use_boxx' is unknown; did you mean 'selfsup.use_box'"):
        SelfSupSettings.from_config({"use_boxx": True})
    with pytest.raises(RecipeError, match="'selfsup.weights.pos' is unknown; did you mean 'selfsup.weights.pose'"):
        SelfSupSettings.from_config({"weights": {"pos": 1.0}})


def test_distill_section_is_checked_at_load():
    with pytest.raises(RecipeError, match="recipe key 'distill.loss' must be one of .*; did you mean 'kd_star'"):
        load_recipe(None, ["distill.loss=kdstar"])
    with pytest.raises(RecipeError, match="'distill.weights.kdd' is unknown; did you mean 'distill.weights.kd'"):
        load_recipe(None, ["distill.weights.kdd=2"])
    with pytest.raises(RecipeError, match=r"recipe section 'distill': no data"):
        load_recipe(None, ["distill.synthetic=false", "distill.real=none"])


def test_model_section_has_every_posenet_key():
    """A key PoseNet.from_config accepts is a key of the recipe's ``model`` section, and no other."""
    from pose6d_ros.models.pose_net import DEFAULT_CONFIG

    assert set(ModelSection.__dataclass_fields__) == set(DEFAULT_CONFIG)


# ---- required keys ------------------------------------------------------------------------------
def test_a_data_root_that_is_no_folder_stops_before_any_step(tmp_path, monkeypatch, capsys):
    """A recipe's default data.root left pointing at a suite that is not there (a user's own objects
    without --set data.root=) is one line naming the key and the path, not an error after training."""
    monkeypatch.chdir(tmp_path)
    assert supervised.main(_tiny(tmp_path, "--output-dir", str(tmp_path / "run"), "--set", "eval.final_test=true",
                                 "--set", "data.root=no/such/suite")) == 2
    line = _error_line(capsys)
    assert "recipe key 'data.root': no/such/suite is not a folder" in line
    assert not (tmp_path / "run").exists()


def _tiny(tmp_path: Path, *extra: str) -> list:
    return ["--set", "data.objects=[1]", "--set", "data.synthetic_per_object=4", "--set", "data.batch_size=2",
            "--set", "data.synthetic_cache_dir=", "--set", "model.backbone=mobilenet_v3_small", "--set",
            "optim.max_steps=1", "--set", "log.tensorboard=false", "--set", "log.progress=false", *extra]


@pytest.mark.parametrize("main, args, key", [
    (supervised.main, [], "output_dir"),
    (selfsup.main, ["--output-dir", "OUT"], "data.root"),
    (supervised.main, ["--output-dir", "OUT", "--set", "supervised.source=real"], "data.root"),
    (supervised.main, ["--output-dir", "OUT", "--set", "eval.final_test=true"], "data.root"),
    (distill.main, ["--output-dir", "OUT", "--set", "distill.teachers=t/{id}.pt"], "data.root"),
    (distill.main, ["--output-dir", "OUT", "--set", "data.root=d"], "distill.teachers"),
])
def test_missing_required_key_is_one_line_naming_it(tmp_path, monkeypatch, capsys, main, args, key):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    args = [a.replace("OUT", str(tmp_path / "run")) for a in args]
    assert main(_tiny(tmp_path, *args)) == 2
    line = _error_line(capsys)
    assert f"recipe key '{key}' is required by " in line and f"--set {key}=" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()  # checked before any work


def test_required_keys_per_trainer(tmp_path):
    """What each trainer reads decides what it needs; a synthetic-only run needs no suite."""
    bare = Recipe.from_dict({"output_dir": "o"})
    check_required(bare, "supervised")  # synthetic crops only: no data.root, no diag/
    check_required(Recipe.from_dict({"output_dir": "o", "distill": {"loss": "gt", "hint": False, "real": "none"}}),
                   "distill")  # labels of synthetic crops only: no suite, no teacher
    for trainer in ("selfsup", "distill"):
        with pytest.raises(RecipeError, match="'data.root' is required"):
            check_required(bare, trainer)
    with_root = Recipe.from_dict({"output_dir": "o", "data": {"root": str(tmp_path)}})
    check_required(with_root, "selfsup")
    with pytest.raises(RecipeError, match="'distill.teachers' is required by train_distill"):
        check_required(with_root, "distill")
    with pytest.raises(RecipeError, match="'output_dir' is required"):
        check_required(Recipe.from_dict({"data": {"root": "d"}}), "selfsup")
    assert DataSection().root is None  # no silent data/lm-lite


def test_crop_padding_reaches_the_crops_and_the_model_card(tmp_path):
    """``data.crop_padding``: the target crops' window is padding x the box's longer side (crop focal
    length = f * S / window), and the saved model card records the padding, for the runtime."""
    import numpy as np
    import torch

    from pose6d_ros.data.bop import CameraRecord, DetectionRecord, save_detections, save_rgb, save_scene_camera
    from pose6d_ros.models import load_model
    from pose6d_ros.training.runner import Run

    root, f, S, box = tmp_path / "data", 572.4, 32, (120.0, 90.0, 64.0, 56.0)
    save_rgb(root / "train", 1, 0, np.zeros((240, 320, 3), np.uint8))
    save_scene_camera(root / "train" / "000001" / "scene_camera.json",
                      {0: CameraRecord(K=np.array([[f, 0, 160.0], [0, f, 120.0], [0, 0, 1]]))})
    save_detections(root / "train_detections.json", [DetectionRecord(1, 0, 1, 1.0, box)])
    cfg = {"output_dir": str(tmp_path / "run"), "threads": 1,
           "data": {"root": str(root), "objects": [1], "crop_size": S, "crop_padding": 1.5, "box_jitter": None,
                    "synthetic_per_object": 2, "batch_size": 2, "synthetic_cache_dir": None, "diag_per_object": 0},
           "model": {"backbone": "mobilenet_v3_small", "head_pool": 2}, "optim": {"max_steps": 1},
           "log": {"tensorboard": False, "progress": False}, "checkpoint": {"period": 0}}
    threads = torch.get_num_threads()
    try:
        run = Run(cfg, "supervised")
        K = run.target_crops(labelled=False).batch([0], with_labels=False)["K"][0]
        # BOP boxes span pixel centres x .. x + w: the box's edges are w + 1 = 65 px apart
        assert float(K[0, 0]) == pytest.approx(f * S / (1.5 * 65.0), rel=1e-5)
        res = supervised.train(cfg)
    finally:
        torch.set_num_threads(threads)
    assert load_model(res["model"])[1].crop_padding == 1.5
    with pytest.raises(RecipeError, match="'data.crop_padding' must be > 0"):
        load_recipe(None, ["data.crop_padding=0"])
