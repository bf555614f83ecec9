"""The README's main job (`make demo`): the whole pipeline on the embedded demo, start to finish.

1. Build a small slice of the simulated real suite `lm-lite` (2 objects, pyrender; no download).
2. `train_selfsup -c training/quick_demo.yaml`: synthetic initialisation with our renderer, then the
   self-supervised stage on the unlabeled "real" images (Eq. 1-3); prints the ADD(-S) table on the
   labelled test images.
3. `export_onnx`: the trained network to ONNX, with its object list as metadata.
4. When rclpy is importable: `replay_frames` runs the estimator node on replayed test frames and
   prints the poses it publishes next to the ground truth.

Each step is skipped when its output already exists, so a rerun is quick; `--fresh` redoes all.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from pose6d_ros.data.build import main as build_main
from pose6d_ros.runtime.onnx_export import main as export_main
from pose6d_ros.training.selfsup import main as selfsup_main

DEMO_OBJECTS = (1, 2)


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/lm-lite-demo", help="where the demo slice of lm-lite is built")
    ap.add_argument("--out", default="runs/quick_demo", help="training output folder")
    ap.add_argument("--images-per-object", type=int, default=100)
    ap.add_argument("--frames", type=int, default=6, help="frames replayed through the ROS node")
    ap.add_argument("--fresh", action="store_true", help="rebuild data and retrain")
    args = ap.parse_args(argv)
    t0 = time.time()
    data, out = Path(args.data), Path(args.out)
    if args.fresh:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)

    _banner(f"1/4 simulated real domain: lm-lite objects {list(DEMO_OBJECTS)} -> {data}")
    if (data / "build_info.json").is_file():
        print("already built")
    else:
        code = build_main(["--suite", "lm-lite", "--out", str(data), "--images-per-object",
                           str(args.images_per_object), "--objects", *map(str, DEMO_OBJECTS)])
        if code:
            return code

    _banner("2/4 train_selfsup -c training/quick_demo.yaml (synthetic init, then self-supervised)")
    model_pt = out / "model.pt"
    if model_pt.is_file():
        print(f"already trained: {model_pt} (use --fresh to retrain)")
        table = out / "eval" / "results.md"
        if table.is_file():
            print(table.read_text())
    else:
        selfsup_main(["-c", "training/quick_demo.yaml", "--output-dir", str(out),
                      "--set", f"data.root={data}"])
        if not model_pt.is_file():
            print(f"demo: training did not write {model_pt}", file=sys.stderr)
            return 1

    _banner("3/4 export_onnx")
    onnx_path = out / "model.onnx"
    if not onnx_path.is_file():
        code = export_main([str(model_pt), str(onnx_path), "--registry", str(data / "objects.yaml")])
        if code:
            return code
    print(f"{onnx_path}")

    _banner("4/4 estimator node on replayed test frames")
    if importlib.util.find_spec("rclpy") is None:
        print("rclpy is not importable here: skipped (run `source tools/env.sh` after `make setup`)")
    else:
        code = subprocess.call([sys.executable, "-m", "pose6d_ros.ros.replay", "--model", str(onnx_path),
                                "--objects", str(data / "objects.yaml"), "--split", str(data / "test"),
                                "--frames", str(args.frames)])
        if code:
            print(f"demo: replay exited with {code}", file=sys.stderr)
            return code
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
