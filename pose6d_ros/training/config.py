"""Training configuration: YAML recipes, defaults, and ``--set a.b=c`` overrides.

A config is a plain nested ``dict``. It is translated into objects in one place per consumer
(``from_config`` style): the trainers read only the keys below. ``DEFAULTS`` documents every key.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import yaml

__all__ = ["DEFAULTS", "load_config", "merge", "apply_overrides", "get", "require", "add_common_args",
           "config_from_args", "apply_threads"]

DEFAULTS: Dict[str, Any] = {
    "seed": 0,
    "output_dir": None,  # required: the recipe, --set output_dir=... or --output-dir
    "threads": None,  # torch CPU threads (intra-op); None = torch's default (OMP_NUM_THREADS if set, else all cores)
    "device": "auto",  # auto | cpu | cuda
    "amp": True,  # used on CUDA only
    "data": {
        "root": "data/lm-lite",  # target-domain suite (python -m pose6d_ros.data.build): train/ train_gt/ diag/ test/
        "suite": "lm-lite",  # registry of the suite's objects (pose6d_ros.data.suites), unless `registry`
        "registry": None,  # path to a registry YAML or BOP models_info.json
        "objects": None,  # list of object ids; None = all in the suite
        "crop_size": 64,
        "synthetic_per_object": 2000,  # source-domain crops (data/synthetic.py)
        "synthetic_cache": True,  # render each synthetic crop once, keep it (uint8) in memory
        "synthetic_cache_dir": "runs/cache",  # ... and on disk once complete (shared by runs; None = off)
        "diag_per_object": 32,  # crops of diag/ per object, for drift monitoring only (never a loss)
        "batch_size": 16,
        "synthetic_batch_size": 16,
        "num_workers": 0,
        "box_jitter": {"shift": 0.1, "scale": 0.15},
    },
    "model": {},  # passed verbatim to pose6d_ros.models.from_config
    "optim": {
        "lr": 1e-4,
        "weight_decay": 0.0,
        "max_steps": 1000,
        "lr_steps": [],  # steps where lr is multiplied by lr_gamma (paper: 15 then 10 epochs)
        "lr_gamma": 0.1,
        "grad_clip": 1.0,  # max global grad norm; 0 = off
    },
    "init": {
        "checkpoint": None,  # synthetic-trained Φ to start from (pose6d_ros.models.save_model file)
        "synthetic": {"steps": 0, "lr": 1e-3, "lr_steps": [], "final_test": False},  # train it first if no checkpoint
        "freeze_early_stages": 0,  # backbone stages frozen at the start (Sec. 4: "early layers are frozen")
        "freeze_early_steps": 0,  # ... for this many steps, then all layers train
        "freeze_bn": True,
        "adapt_bn_epochs": 0,  # ours (selfsup): >0 = BN statistics re-estimated on the unlabeled target crops first
        "adapt_bn_batch": 64,
    },
    "selfsup": {
        "weights": {"pose": 1.0, "pose2": 1.0, "sup": 1.0, "percep": 20.0, "box": 1.0, "refine": 1.0},
        "huber_delta": 0.02,
        "use_pose": True,
        "use_pose2": True,
        "use_sup_render": True,  # first term of Eq. 2
        "use_sup_synthetic": True,  # second term of Eq. 2
        "use_percep": True,
        "use_mask": True,  # False = x_m is the raw crop (ablation "no masking")
        "use_occlusion": True,
        "use_box": False,  # ours: L_box, h1's 2D scale/position pinned to the detection box
        "box_huber_delta": None,  # L_box's Huber transition (None = huber_delta)
        "percep_region": "crop",  # ours: crop (paper) | silhouette (L_percep averaged over m1: no size bias)
        "refine_steps": 0,  # ours: >0 = render-and-compare pseudo-labels (L_refine), Adam steps per refinement
        "refine_lr": 0.002,
        "refine_period": 50,  # a crop's refined pose is recomputed after this many steps
        "occlusion_patches": {"min_patches": 0, "max_patches": 3, "min_size": 0.1, "max_size": 0.4},
        "render": {"max_faces": 2000, "sigma": 0.7},  # in-loop soft renderer (mesh decimated above max_faces)
        "fuse_forward": True,  # h2, h3 and Φ(x_g) in one forward pass
        "background": "constant",  # constant | noise: b in M(x, m)
        "background_value": 0.5,
        "grad_through_mask": True,  # L_pose/L_pose2 reach y1 through m1
        "grad_through_render_rgb": True,  # L_pose/L_percep reach y1 through r1
        "grad_through_pnp": True,  # gradients reach h1 through PnP
        "detach_h2_in_pose2": False,  # stop-gradient on h2 in L_pose2 (h2 acts as target for h1)
        "sup_render_detached": True,  # Eq. 2's render term trains Φ on sg[r1] only (no path to y1)
        "ema_teacher": 0.0,  # >0: h1 from an EMA copy of Φ with this decay
        "reject_failed_pnp": True,
        "depth_range": [0.1, 3.0],  # metres; y1 outside = rejected sample
        "max_reproj_error_px": 10.0,  # PnP residual above this = rejected sample
        "ema_final": False,  # save the EMA teacher instead of the student at the end
        "perceptual": {"vgg_weights": None, "vgg_layers": [3, 8, 15], "phi_layers": 2},
    },
    "log": {"period": 20, "image_period": 200, "tensorboard": True, "progress": True},
    "checkpoint": {"period": 200, "keep_last": True},
    "supervised": {"source": "synthetic", "color_aug": True},  # synthetic | real (upper bound)
    "eval": {"period": 0, "final_test": False, "test_limit": None},  # diag period (0 = start/end only); test_limit: per object
}


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge; ``update`` wins. Neither input is modified."""
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Apply ``a.b.c=value`` strings; values are parsed as YAML (``1e-4``, ``true``, ``[1, 2]``)."""
    out = copy.deepcopy(dict(cfg))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ValueError(f"--set {key}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def load_config(path: Optional[str | Path], overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """DEFAULTS <- YAML file (optionally ``_base_: other.yaml``, relative to it) <- overrides."""
    cfg: Dict[str, Any] = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = merge(cfg, _read_yaml(Path(path)))
    return apply_overrides(cfg, overrides)


def _read_yaml(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:  # its message is several lines; one line naming the file and the place
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ValueError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', None) or e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file ({e.reason})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping")
    base = data.pop("_base_", None)
    if base is not None:
        data = merge(_read_yaml(path.parent / base), data)
    return data


def get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``get(cfg, "optim.lr")``."""
    node: Any = cfg
    for p in key.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return default
        node = node[p]
    return node


def require(cfg: Mapping[str, Any], key: str, hint: str = "") -> Any:
    """``get(cfg, key)``, or ``ValueError`` naming the key when it is missing or null."""
    value = get(cfg, key)
    if value is None or value == "":
        raise ValueError(f"config: '{key}' is not set: give it in the recipe or with --set {key}=...{hint}")
    return value


def apply_threads(cfg: Mapping[str, Any]) -> Optional[int]:
    """Set torch's CPU thread count from ``threads`` (None: leave torch's default, which follows
    ``OMP_NUM_THREADS`` when it is set). Several trainings sharing a few cores run faster each with
    fewer threads than cores: torch's pool spins on small ops."""
    import torch

    n = get(cfg, "threads")
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"config: 'threads' must be a positive integer or null, got {n!r}")
    torch.set_num_threads(n)
    return n


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments every entry script shares."""
    parser.add_argument("--config", "-c", default=None, help="YAML recipe (see training/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=1e-5 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/last.pt if present")
    parser.add_argument("--output-dir", default=None, help="overrides output_dir")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (overrides the recipe's 'threads'; default: torch's, which "
                             "follows OMP_NUM_THREADS)")
    return parser


def config_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    cfg = load_config(args.config, args.overrides)
    if args.output_dir is not None:
        cfg["output_dir"] = args.output_dir
    if getattr(args, "threads", None) is not None:
        cfg["threads"] = args.threads
    return cfg
