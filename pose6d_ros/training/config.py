"""Training recipes: YAML files and ``--set a.b=c`` overrides, typed and checked once when loaded.

A recipe is a :class:`Recipe`: one frozen dataclass per section (``data``, ``model``, ``optim``,
``init``, ``selfsup``, ``log``, ``checkpoint``, ``supervised``, ``eval``, ``distill``), every key typed
and with its default here; this module is the one place they are written. The YAML format is the
dataclasses' fields, nested as sections.

Loading (:func:`load_recipe`, and the console scripts through :func:`config_from_args`): the YAML file
(``_base_: other.yaml`` first, relative to it) <- ``--set`` overrides <- ``--output-dir`` / ``--threads``,
then :meth:`Recipe.from_dict` (``schema.build_section``): an unknown key is an error naming it and its
nearest valid name, a wrong type is an error naming the key; either is one line, exit code 2.

Which keys a trainer needs that have no default (:func:`check_required`): ``output_dir`` always;
``data.root`` when the run reads the target-domain suite; ``distill.teachers`` when distillation uses
teachers. Builders (``training/build.py``, ``selfsup.build_step``) take the typed sections.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Literal, Mapping, Optional, Sequence, Tuple, Union

import yaml

from pose6d_ros.data.augment import OcclusionConfig
from pose6d_ros.data.crops import DEFAULT_CROP_PADDING
from pose6d_ros.training.schema import RecipeError, build_section, to_plain
from pose6d_ros.training.selfsup_step import SelfSupSettings

__all__ = ["Recipe", "RecipeError", "DataSection", "BoxJitter", "ModelSection", "OptimSection", "InitSection",
           "SyntheticInit", "SelfSupSection", "RenderSection", "PerceptualSection", "LogSection", "CheckpointSection",
           "SupervisedSection", "EvalSection", "DistillSettings", "DistillWeights", "TRAINERS", "check_required",
           "as_recipe", "load_recipe", "load_config", "merge", "apply_overrides", "add_common_args",
           "config_from_args", "apply_threads"]


def _at_least(section: str, obj: Any, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < minimum:
            raise RecipeError(f"recipe key '{section}.{name}' must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class BoxJitter:
    """Sec. 4: "we randomly perturb center position and rescale the bounding box during training"
    (``data.crops.jitter_boxes``: shift and scale as fractions of the window)."""

    shift: float = 0.1
    scale: float = 0.15


@dataclass(frozen=True)
class DataSection:
    """``data``: where the run's objects and images come from, crop size and batch sizes."""

    # the target-domain suite (python -m pose6d_ros.data.build): train/ train_gt/ diag/ test/.
    # No default: required when the run reads it (check_required)
    root: Optional[str] = None
    suite: str = "lm-lite"  # registry of the suite's objects (pose6d_ros.data.suites), unless `registry`
    registry: Optional[str] = None  # path to a registry YAML or BOP models_info.json
    # the unlabeled target images: a folder of BOP scenes with rgb/ and scene_camera.json (e.g. written by
    # import_bag); None = root/train
    train_split: Optional[str] = None
    # their boxes: a BOP detections JSON (e.g. written by `detect`); None = root/train_detections.json
    detections: Optional[str] = None
    objects: Optional[Tuple[int, ...]] = None  # object ids, in model-row order; None = all of the registry
    crop_size: int = 64
    # crop window side over the box's longer side, for every crop the run trains and tests on; the
    # model card records it and the runtime and `evaluate` crop with it
    crop_padding: float = DEFAULT_CROP_PADDING
    synthetic_per_object: int = 2000  # source-domain crops (data/synthetic.py)
    synthetic_cache: bool = True  # render each synthetic crop once, keep it (uint8) in memory
    synthetic_cache_dir: Optional[str] = "runs/cache"  # ... and on disk once complete (shared by runs; None = off)
    diag_per_object: int = 32  # crops of diag/ per object, for drift monitoring only (never a loss)
    batch_size: int = 16
    synthetic_batch_size: int = 16
    box_jitter: Optional[BoxJitter] = BoxJitter()  # null: training crops are not jittered

    def __post_init__(self) -> None:
        _at_least("data", self, 1, "crop_size", "batch_size", "synthetic_batch_size", "synthetic_per_object")
        _at_least("data", self, 0, "diag_per_object")
        if not self.crop_padding > 0:
            raise RecipeError(f"recipe key 'data.crop_padding' must be > 0, got {self.crop_padding}")


@dataclass(frozen=True)
class ModelSection:
    """``model``: the network Φ (``models.PoseNet``) when ``init.checkpoint`` is not given. A key left
    null takes PoseNet's default (``pose_net.DEFAULT_CONFIG``), except ``num_objects`` (the run's
    objects), ``crop_size`` (``data.crop_size``) and, for one object, ``conditioning`` (``none``)."""

    backbone: Optional[str] = None
    num_objects: Optional[int] = None
    num_keypoints: Optional[int] = None
    conditioning: Optional[str] = None
    crop_size: Optional[int] = None
    small_input: Optional[bool] = None
    pretrained: Optional[bool] = None
    head_channels: Optional[int] = None
    head_hidden: Optional[int] = None
    head_pool: Optional[int] = None

    def given(self) -> Dict[str, Any]:
        """The keys the recipe sets (not null), for ``PoseNet.from_config``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class OptimSection:
    """``optim``: Adam and its step schedule."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    max_steps: int = 1000
    lr_steps: Tuple[int, ...] = ()  # steps where lr is multiplied by lr_gamma (paper: 15 then 10 epochs)
    lr_gamma: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 = off

    def __post_init__(self) -> None:
        _at_least("optim", self, 0, "max_steps")


@dataclass(frozen=True)
class SyntheticInit:
    """``init.synthetic``: train the synthetic-only init first when ``init.checkpoint`` is not given."""

    steps: int = 0
    lr: float = 1e-3
    lr_steps: Tuple[int, ...] = ()
    final_test: bool = False


@dataclass(frozen=True)
class InitSection:
    """``init``: where Φ starts and what is frozen at first."""

    checkpoint: Optional[str] = None  # a pose6d_ros.models.save_model file to start from
    synthetic: SyntheticInit = SyntheticInit()
    freeze_early_stages: int = 0  # backbone stages frozen at the start (Sec. 4: "early layers are frozen")
    freeze_early_steps: int = 0  # ... for this many steps, then all layers train
    freeze_bn: bool = True
    adapt_bn_epochs: int = 0  # ours (selfsup): >0 = BN statistics re-estimated on the unlabeled target crops first
    adapt_bn_batch: int = 64


@dataclass(frozen=True)
class RenderSection:
    """``selfsup.render``: the in-loop soft renderer."""

    max_faces: int = 2000  # meshes decimated above this many faces (0 = never)
    sigma: float = 0.7
    backend: str = "torch"  # torch | pytorch3d (`make pytorch3d`)


@dataclass(frozen=True)
class PerceptualSection:
    """``selfsup.perceptual``: the features of L_percep (``training/perceptual.build_perceptual``)."""

    # squeezenet | vgg16 | phi_early; null: vgg16 when vgg_weights is set, else squeezenet
    features: Optional[str] = None
    squeezenet_layers: Tuple[str, ...] = ("relu1", "fire3", "fire5", "fire9")
    vgg_weights: Optional[str] = None
    vgg_layers: Tuple[int, ...] = (3, 8, 15)
    phi_layers: int = 2  # Φ stages of phi_early


@dataclass(frozen=True)
class SelfSupSection(SelfSupSettings):
    """``selfsup``: the step's switches and weights (:class:`SelfSupSettings`, passed to
    ``SelfSupStep`` as they are) plus what builds the step around it."""

    occlusion_patches: OcclusionConfig = OcclusionConfig()
    render: RenderSection = RenderSection()
    perceptual: PerceptualSection = PerceptualSection()
    ema_teacher: float = 0.0  # >0: h1 from an EMA copy of Φ with this decay
    ema_final: bool = False  # save the EMA teacher instead of the student at the end


@dataclass(frozen=True)
class LogSection:
    period: int = 20
    image_period: int = 200
    tensorboard: bool = True
    progress: bool = True


@dataclass(frozen=True)
class CheckpointSection:
    period: int = 200  # output_dir/last.pt every this many steps (and at the end); 0 = at the end only


@dataclass(frozen=True)
class SupervisedSection:
    """``supervised`` (``train_supervised``): synthetic crops (the baseline, the init) or the withheld
    real labels of ``train_gt/`` (the upper bound)."""

    source: Literal["synthetic", "real"] = "synthetic"
    color_aug: bool = True


@dataclass(frozen=True)
class EvalSection:
    period: int = 0  # diag/ every this many steps (0 = at the start and the end only)
    final_test: bool = False  # the ADD(-S) / 2D-projection table on test/ at the end
    test_limit: Optional[int] = None  # per object


@dataclass(frozen=True)
class DistillWeights:
    kd: float = 1.0
    hint: float = 1.0


@dataclass(frozen=True)
class DistillSettings:
    """``distill`` (the ``distill`` trainer, ``training/distill.py``)."""

    teachers: Union[str, Dict[Any, str], None] = None  # {object id: model.pt} or a template with {id} / {name}
    loss: Literal["kd_star", "kd", "gt"] = "kd_star"  # Eq. 7 | Eq. 5 (labelled samples) | labels only, no teacher
    hint: bool = True  # L_HT (Eq. 6) through one 1x1 adapter per teacher: L_CS = L_KD* + L_HT
    weights: DistillWeights = DistillWeights()  # L = kd * L_KD(*) + hint * L_HT
    synthetic: bool = True  # a batch of labelled synthetic crops per step (data.synthetic_batch_size)
    real: Literal["unlabeled", "labelled", "none"] = "unlabeled"  # a batch of train/ crops per step (data.batch_size)
    color_aug: bool = True  # colour augmentation of the synthetic crops

    def __post_init__(self) -> None:
        if not self.synthetic and self.real == "none":
            raise RecipeError("recipe section 'distill': no data (distill.synthetic is false and distill.real is "
                              "'none')")
        if self.real == "unlabeled" and self.loss != "kd_star" and not self.hint:
            raise RecipeError(f"recipe section 'distill': distill.real=unlabeled: no loss uses unlabeled crops with "
                              f"distill.loss={self.loss} and no hint (use kd_star, distill.hint=true, or "
                              "distill.real=none)")

    @property
    def needs_teachers(self) -> bool:
        return self.loss != "gt" or self.hint


@dataclass(frozen=True)
class Recipe:
    """A whole training recipe, checked. Build it with :meth:`from_dict` or :func:`load_recipe`;
    :meth:`to_dict` gives it back as plain data (``config.yaml``, the model card's record)."""

    seed: int = 0
    output_dir: Optional[str] = None  # required (check_required): the recipe, --set output_dir=... or --output-dir
    threads: Optional[int] = None  # torch CPU threads (intra-op); None = torch's default (OMP_NUM_THREADS if set)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # used on CUDA only
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    optim: OptimSection = OptimSection()
    init: InitSection = InitSection()
    selfsup: SelfSupSection = SelfSupSection()
    log: LogSection = LogSection()
    checkpoint: CheckpointSection = CheckpointSection()
    supervised: SupervisedSection = SupervisedSection()
    eval: EvalSection = EvalSection()
    distill: DistillSettings = DistillSettings()

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise RecipeError(f"recipe key 'threads' must be a positive integer or null, got {self.threads}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        """Checked recipe from nested plain data; keys not given take their defaults."""
        return build_section(cls, data)

    def to_dict(self) -> Dict[str, Any]:
        """Every key, as plain YAML/JSON data (lists for tuples); ``from_dict`` of it gives ``self`` back."""
        return to_plain(self)


#: The trainers, by ``check_required``'s name for them.
TRAINERS = ("supervised", "selfsup", "distill")


def check_required(recipe: Recipe, trainer: str) -> None:
    """Raise :class:`RecipeError` naming the first key ``trainer`` needs and ``recipe`` leaves unset.

    - every trainer: ``output_dir``;
    - ``data.root`` (the target-domain suite), when the run reads it: ``selfsup`` always (the
      unlabeled ``train/`` crops) unless ``data.train_split`` and ``data.detections`` give them,
      ``supervised`` with ``supervised.source: real`` (``train_gt/``), ``distill`` unless ``distill.real:
      none`` (or ``unlabeled`` from those two keys), and any run with ``eval.final_test`` (``test/``).
      Without it, a ``supervised`` or ``distill`` run has no ``diag/`` monitoring;
    - ``distill.teachers``, for ``distill`` unless ``distill.loss: gt`` without hint.
    """
    if trainer not in TRAINERS:
        raise ValueError(f"check_required: unknown trainer {trainer!r}; known: {list(TRAINERS)}")
    need = [("output_dir", "where the run writes", recipe.output_dir, " or --output-dir")]
    reads = {"selfsup": "the unlabeled train/ crops", "supervised": "the train_gt/ labels (supervised.source: real)",
             "distill": f"the train/ crops (distill.real: {recipe.distill.real})"}[trainer]
    # unlabeled crops given as data.train_split + data.detections need no suite
    own_unlabeled = bool(recipe.data.train_split and recipe.data.detections)
    if (trainer == "selfsup" and not own_unlabeled) or (trainer == "supervised" and recipe.supervised.source == "real") \
            or (trainer == "distill" and recipe.distill.real != "none"
                and not (recipe.distill.real == "unlabeled" and own_unlabeled)):
        need.append(("data.root", reads, recipe.data.root, ""))
    if recipe.eval.final_test:
        need.append(("data.root", "the test/ split (eval.final_test)", recipe.data.root, ""))
    if trainer == "distill" and recipe.distill.needs_teachers:
        need.append(("distill.teachers", f"the teachers of distill.loss: {recipe.distill.loss}"
                     + (" with hint" if recipe.distill.hint else ""), recipe.distill.teachers,
                     " (a mapping {object id: model.pt} or a template such as runs/teachers/{id}/model.pt)"))
    for key, why, value, hint in need:
        if value is None or value == "" or (isinstance(value, Mapping) and not value):
            raise RecipeError(f"recipe key '{key}' is required by train_{trainer} ({why}) and not set: give it "
                              f"in the recipe or with --set {key}=...{hint}")
        if key == "data.root" and not Path(str(value)).is_dir():  # before any step, not after the training
            raise RecipeError(f"recipe key 'data.root': {value} is not a folder (train_{trainer} reads {why} "
                              f"there); build it with build_suite or give --set data.root=...")


def as_recipe(cfg: Union[Recipe, Mapping[str, Any]]) -> Recipe:
    """``cfg`` itself if it is a :class:`Recipe`, else ``Recipe.from_dict(cfg)`` (checked)."""
    return cfg if isinstance(cfg, Recipe) else Recipe.from_dict(cfg)


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


def _raw(path: Optional[str | Path], overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """The YAML file (after its ``_base_``) <- overrides, unchecked."""
    return apply_overrides(_read_yaml(Path(path)) if path is not None else {}, overrides)


def load_recipe(path: Optional[str | Path], overrides: Sequence[str] = ()) -> Recipe:
    """The checked :class:`Recipe` of a YAML file (optionally ``_base_: other.yaml``, relative to it)
    with ``a.b=value`` overrides applied first; ``path=None``: the defaults and the overrides."""
    return Recipe.from_dict(_raw(path, overrides))


def load_config(path: Optional[str | Path], overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """:func:`load_recipe` as plain nested data, every key present (for callers that merge recipes as
    dicts, e.g. the benchmarks; the trainers check a dict again with :func:`as_recipe`)."""
    return load_recipe(path, overrides).to_dict()


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


def apply_threads(threads: Optional[int]) -> Optional[int]:
    """Set torch's CPU thread count to ``threads`` (the recipe's ``threads``; None: leave torch's
    default, which follows ``OMP_NUM_THREADS`` when it is set). Several trainings sharing a few cores
    run faster each with fewer threads than cores: torch's pool spins on small ops."""
    import torch

    if threads is None:
        return None
    torch.set_num_threads(int(threads))
    return int(threads)


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


def config_from_args(args: argparse.Namespace) -> Recipe:
    """The checked recipe of a console script: ``--config``, ``--set``, then ``--output-dir`` and
    ``--threads`` (which win over the recipe)."""
    raw = _raw(args.config, args.overrides)
    if args.output_dir is not None:
        raw["output_dir"] = args.output_dir
    if getattr(args, "threads", None) is not None:
        raw["threads"] = args.threads
    return Recipe.from_dict(raw)
