"""End to end on a tiny lm-lite built in the test: train_supervised, train_selfsup, evaluate."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision.models  # noqa: F401  (import before OSMesa is loaded by the suite build: importing it after segfaults)

pytest.importorskip("pose6d_ros.geometry.metrics")  # evaluation needs the metric functions of geometry

from pose6d_ros.evaluation.evaluate import main as evaluate_main  # noqa: E402
from pose6d_ros.training.selfsup import main as selfsup_main  # noqa: E402
from pose6d_ros.training.supervised import main as supervised_main  # noqa: E402


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    from pose6d_ros.data.build import build

    out = tmp_path_factory.mktemp("lm-lite")
    # 20 images of object 1: 3 unlabeled train, 1 diag, 16 test
    build("lm-lite", out, images_per_object=20, workers=1, object_ids=[1], log=lambda *a: None)
    return out


def _common(root, out):
    return ["--set", f"data.root={root}", "--set", "data.objects=[1]", "--set", "model.backbone=mobilenet_v3_small",
            "--set", "data.synthetic_per_object=32", "--set", "data.batch_size=4", "--set", "data.synthetic_batch_size=4",
            "--set", "data.diag_per_object=2", "--set", "log.tensorboard=true", "--set", "log.progress=false",
            "--set", "eval.final_test=true", "--set", "eval.test_limit=6", "--set", f"data.synthetic_cache_dir={out.parent / 'cache'}", "--output-dir", str(out)]


@pytest.mark.slow
def test_supervised_selfsup_evaluate(tiny_suite, tmp_path):
    syn = tmp_path / "syn"
    assert supervised_main(_common(tiny_suite, syn) + ["--set", "optim.max_steps=3", "--set", "optim.lr=1e-3"]) == 0
    assert (syn / "model.pt").is_file() and (syn / "last.pt").is_file()
    res = json.loads((syn / "result.json").read_text())
    assert res["test"]["counts"] == {"duck": 6}  # eval.test_limit, per object
    assert (syn / "eval" / "results.md").is_file() and len(list((syn / "eval").glob("pose6d_*-test.csv"))) == 1
    assert any((syn / "tb").iterdir())
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # the synthetic pool, shared with later runs

    real = tmp_path / "real"
    assert supervised_main(_common(tiny_suite, real) + ["--set", "optim.max_steps=2", "--set", "supervised.source=real",
                                                        "--set", f"init.checkpoint={syn / 'model.pt'}"]) == 0
    assert (real / "model.pt").is_file()

    ss = tmp_path / "ss"
    ss_args = ["--set", "optim.max_steps=2", "--set", f"init.checkpoint={syn / 'model.pt'}",
               "--set", "init.freeze_early_stages=2", "--set", "init.freeze_early_steps=1",
               "--set", "selfsup.render.max_faces=300", "--set", "eval.period=1",
               "--set", "init.adapt_bn_epochs=1", "--set", "init.adapt_bn_batch=2", "--set", "selfsup.ema_teacher=0.9"]
    assert selfsup_main(_common(tiny_suite, ss) + ss_args) == 0
    res = json.loads((ss / "result.json").read_text())
    from pose6d_ros.models import load_model

    # BN is frozen during the loop (init.freeze_bn), so only the adaptation to the real crops moves its statistics
    bn_stats = [{k: v for k, v in load_model(p)[0].state_dict().items() if k.endswith("running_mean")}
                for p in (syn / "model.pt", ss / "model.pt")]
    assert bn_stats[0].keys() == bn_stats[1].keys() and bn_stats[0]
    assert all(not torch.allclose(bn_stats[0][k], bn_stats[1][k]) for k in bn_stats[0])
    extra = torch.load(ss / "last.pt", weights_only=True)["extra"]  # tensors and plain data only
    # the EMA teacher (h1) starts from the adapted model, not from the synthetic statistics
    assert all(torch.allclose(extra["teacher"]["module." + k], bn_stats[1][k], atol=1e-6) for k in bn_stats[1])
    hist = extra["history"]
    assert len(hist) == 2 and all(torch.isfinite(torch.tensor(h["total"])) for h in hist)
    assert len(res["diag"]) >= 2 and "kp_err_median_px" in res["diag"][0]

    assert evaluate_main(["--model", str(ss / "model.pt"), "--split", str(tiny_suite / "test"), "--registry",
                          str(tiny_suite / "objects.yaml"), "--limit", "5", "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "result.json").read_text())["counts"] == {"duck": 5}
    assert (tmp_path / "ev" / "results.csv").read_text().startswith("object,n,ADD(-S),2D proj 5px")


def test_target_crops_box_matches_the_projected_object(tiny_suite):
    """The detection box handed to L_box, in crop pixels, against the GT mesh projected with the
    crop's K (independent of the crop affine): inside the object's extent, and equal to it when the
    object is not occluded."""
    import numpy as np

    from pose6d_ros.geometry.keypoints import project_points
    from pose6d_ros.data.target_crops import TargetCrops, items_from_split
    from pose6d_ros.training.build import build_objects
    from pose6d_ros.training.config import DataSection

    objects = build_objects(DataSection(root=str(tiny_suite), suite="lm-lite", objects=(1,)))
    items = items_from_split(tiny_suite / "test", [1])
    crops = TargetCrops(tiny_suite / "test", items, objects, 64, jitter=(0.1, 0.15))
    torch.manual_seed(0)
    b = crops.batch(range(len(items)), jitter=True)
    verts = torch.as_tensor(np.asarray(objects.registry.get(1).model_vertices()), dtype=torch.float32)
    uv = project_points(verts.expand(len(items), -1, -1), b["R"], b["t"], b["K"])
    extent = torch.cat((uv.amin(1), uv.amax(1)), 1)  # pixel centres of the extreme vertices
    box = b["box"]  # pixel edges: half a (full-image) pixel outside the extreme centres
    assert box.shape == (len(items), 4)
    assert bool(((box[:, :2] >= extent[:, :2] - 1.5) & (box[:, 2:] <= extent[:, 2:] + 1.5)).all())
    close = ((box - extent).abs() <= 1.5).all(1)
    assert close.float().mean() >= 0.5, (box - extent)
