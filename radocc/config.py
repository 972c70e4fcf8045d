"""Experiment configs: TOML files read with the standard library into dataclasses.

What a config names is what runs. ``load_config(path, overrides)`` reads a TOML file into an
:class:`ExperimentConfig`; ``--set section.key=value`` overrides are parsed as TOML values and
type-checked like the file. An unknown key is an error naming the closest valid key.

    name = "radocc"                  # top level: name, task, role, seed
    task = "occupancy"               # "occupancy" | "map" (vector map) | "multi" (both heads)
    role = "student"                 # "teacher" | "student"
    [data]        root, version, splits, image size, augmentation, loader workers, batch size
    [model]       radocc.models.ModelConfig (modality, camera, lidar, bev_encoder, head, ...)
    [teacher]     config + checkpoint of the frozen teacher a student distils from
    [loss]        weights of occupancy, depth, RDC, RSC, feature and logit alignment; RSC mode
    [render]      which rays are rendered for RDC / RSC, and how
    [map_model]   radocc.models.MapModelConfig (modality, pc_range, bev_shape, camera, gkt, head)
    [map_loss]    MapTR head weights, MapDistill weights (relation, feature, head), their settings
    [map_teacher] the frozen map teacher of a multi-task student (task "map" uses [teacher])
    [optim]       AdamW, warm-up + cosine, gradient clipping, EMA
    [train]       epochs, logging, validation, mixed precision

Which sections a task reads: "occupancy" [model] [loss] [render] [teacher]; "map" [map_model]
[map_loss] [teacher] (a map teacher); "multi" all of them, [teacher] being the occupancy teacher
(RDC / RSC) and [map_teacher] the map teacher (MapDistill). The other sections keep their
defaults and are ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from radocc.losses import LOSS_WEIGHTS
from radocc.map_losses import HEAD_SCORE_THRESHOLD, MAP_LOSS_WEIGHTS
from radocc.models.config import MapModelConfig, ModelConfig

__all__ = [
    "ConfigError", "DataSection", "TeacherSection", "LossSection", "RenderSection", "MapLossSection",
    "OptimSection", "TrainSection", "ExperimentConfig", "TASKS", "load_config", "from_dict",
    "to_dict", "apply_overrides",
]

TASKS = ("occupancy", "map", "multi")


class ConfigError(ValueError):
    """A config file or override that does not match the config's dataclasses."""


@dataclass
class DataSection:
    """Where the samples come from and how they are batched.

    image_size: (H, W) of the network input images, pixels (H and W multiples of 16).
    """

    root: str = "data/nuscenes"
    version: str = "v1.0-trainval"
    train_split: str = "train"
    val_split: str = "val"
    image_size: tuple[int, int] = (256, 704)
    cameras: tuple[str, ...] = ()
    """Camera channels to use, in order (empty = the six nuScenes cameras)."""
    augment: bool = True
    lidar_sweeps: int = 0
    batch_size: int = 2
    num_workers: int = 4
    max_train_samples: int = 0
    """Use only the first N training samples (0 = all): for smoke tests."""
    max_val_samples: int = 0
    """Evaluate only the first N validation samples (0 = all)."""
    vector_cache: str = ""
    """Folder caching each sample's vector-map ground truth (tasks "map" / "multi"); empty =
    ``<run folder>/vector_cache`` in training, memory only in evaluation."""


@dataclass
class TeacherSection:
    """The frozen teacher a student distils from (empty = no teacher: a baseline student)."""

    config: str = ""
    """The teacher's training config (its [model] section builds the teacher)."""
    checkpoint: str = ""
    """The teacher's checkpoint (``best.pt`` of its run)."""


@dataclass
class LossSection:
    """Loss weights; the defaults are ``radocc.losses.LOSS_WEIGHTS``, the RadOcc authors'
    (occupancy 1, RDC 100, RSC 10; depth and the two baselines off)."""

    occupancy: float = LOSS_WEIGHTS["occupancy"]
    depth: float = LOSS_WEIGHTS["depth"]
    """LSS depth BCE against LiDAR (FlashOcc M1 has none; variants use 0.05 or 1.0)."""
    rdc: float = LOSS_WEIGHTS["rdc"]
    rsc: float = LOSS_WEIGHTS["rsc"]
    rsc_mode: str = "affinity"
    """"affinity" (the paper: segment affinity matrices) or "kl" (the authors' code: per-ray KL)."""
    rsc_depth_agreement: float = 0.0
    """0 (the paper): RSC on every ray; > 0: only on rays whose student and teacher rendered
    depths agree within this fraction of the teacher's (radocc.distill.RenderDistillLoss)."""
    rsc_semantics_only: bool = False
    """False (the paper): RSC's gradient reaches the student's density and semantics; True: its
    semantics only (radocc.distill.RenderDistillLoss)."""
    feature_alignment: float = LOSS_WEIGHTS["feature_alignment"]
    """Baseline: MSE between student and teacher BEV features (through a 1x1 adapter)."""
    logit_alignment: float = LOSS_WEIGHTS["logit_alignment"]
    """Baseline: KL between teacher and student voxel class distributions (authors' value 10)."""
    class_weights: tuple[float, ...] = ()
    """Per-class cross-entropy weights (K values) or empty for none."""


@dataclass
class RenderSection:
    """Rays rendered through teacher and student for RDC / RSC (the same rays for both)."""

    pixels: str = "lidar"
    """"lidar": pixels where LiDAR points project (the authors); "grid": strided pixel grid."""
    stride: int = 4
    """Pixel stride of the "grid" rays, in network-input pixels (256x704 / 4 = 64x176)."""
    rays_per_image: int = 1024
    """Rays per camera per sample, drawn at random from the grid or the LiDAR pixels."""
    step: float = 0.0
    """0 = exact voxel traversal; > 0 = uniform samples of this length, metres (authors: 0.2)."""
    depth_bins: tuple[float, float, float] = (1.0, 45.0, 0.5)
    """Termination bins for RDC: start, stop, step, metres (plus the never-terminated bin)."""
    chunk_rays: int = 0
    """Render at most this many rays per call (0 = all at once): bounds peak memory."""
    calibrated: bool = True
    """Render logits - log(loss.class_weights) instead of the logits (radocc.train.render_logits),
    in training (teacher and student, each with its own config's weights), evaluation and
    pictures; no effect without class weights. Class-weighted CE inflates every uncertain voxel's
    occupied classes by their weights: rendered raw, such voxels turn opaque near the camera."""


@dataclass
class MapLossSection:
    """Vector-map losses (tasks "map" / "multi"): MapTR's head losses and MapDistill's terms.

    The head weights are MapTR's (focal 2, point L1 5, edge direction 0.005); the distillation
    weights default to ``radocc.map_losses.MAP_LOSS_WEIGHTS`` (the released MapDistill code), so a
    baseline student or a teacher sets them to 0.
    """

    cls: float = 2.0
    pts: float = 5.0
    dir: float = 0.005
    relation: float = MAP_LOSS_WEIGHTS["relation"]
    """Cross-modal relation distillation (student GKT / LSS BEVs vs teacher camera / LiDAR BEVs)."""
    feature_bev: float = MAP_LOSS_WEIGHTS["feature_bev"]
    """MSE between student and teacher fused BEVs (through a 1x1 adapter when channels differ)."""
    feature_decoder: float = MAP_LOSS_WEIGHTS["feature_decoder"]
    """MSE between student and teacher decoder query features (adapter when channels differ)."""
    head_cls: float = MAP_LOSS_WEIGHTS["head_cls"]
    head_pts: float = MAP_LOSS_WEIGHTS["head_pts"]
    relation_patch_size: int = 8
    """BEV patch edge (cells) of the relation distillation; must divide map_model.bev_shape."""
    relation_tokens: str = "mean"
    """"mean" (a patch's features averaged) or "flatten" (its C x ph x pw features)."""
    head_score_threshold: float = HEAD_SCORE_THRESHOLD
    """Teacher predictions scoring above this become the head distillation's pseudo labels."""

    DISTILL_TERMS = ("relation", "feature_bev", "feature_decoder", "head_cls", "head_pts")

    def distill_weights(self) -> dict[str, float]:
        """The MapDistill terms with weight > 0."""
        return {k: getattr(self, k) for k in self.DISTILL_TERMS if getattr(self, k) > 0}


@dataclass
class OptimSection:
    """AdamW with linear warm-up then cosine decay (per iteration)."""

    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_iters: int = 500
    min_lr_ratio: float = 1e-3
    grad_clip: float = 35.0
    """Max gradient norm (0 = no clipping)."""
    scale_lr: bool = True
    """Multiply lr by the world size under torchrun (linear scaling rule)."""
    ema_decay: float = 0.0
    """EMA of the weights (0 = off; the authors use EMA, e.g. 0.9990); evaluation uses the EMA."""
    backbone_lr_mult: float = 1.0
    """lr factor of the image backbone's parameters (MapTR / MapDistill: 0.1)."""


@dataclass
class TrainSection:
    epochs: int = 24
    log_every: int = 50
    """Iterations between TensorBoard scalar logs."""
    image_every: int = 500
    """Iterations between TensorBoard render pictures (0 = never)."""
    val_every: int = 1
    """Epochs between validations (the best checkpoint is chosen by val mIoU); 0 = none: only
    last.pt is written (radocc.experiments evaluates it itself)."""
    amp: str = "bf16"
    """Mixed precision on CUDA: "bf16" or "none" (CPU always runs float32)."""
    deterministic: bool = True
    """torch.use_deterministic_algorithms(warn_only=True) and seeded workers."""
    init_from: str = ""
    """Checkpoint whose model weights (its EMA when it has one) start this run: the RadOcc authors
    start the student from a pretrained camera model (mmdet's load_from). Optimiser, schedule
    and epoch start fresh; --resume, by contrast, continues a run."""


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    task: str = "occupancy"
    """"occupancy" (voxels, [model]), "map" (vector map, [map_model]) or "multi" (one camera
    student with both heads on a shared BEV)."""
    role: str = "student"
    """"teacher" (camera + LiDAR, trained on labels) or "student" (camera only; distils when
    [teacher] names a checkpoint)."""
    seed: int = 0
    data: DataSection = field(default_factory=DataSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    loss: LossSection = field(default_factory=LossSection)
    render: RenderSection = field(default_factory=RenderSection)
    map_model: MapModelConfig = field(default_factory=MapModelConfig)
    map_loss: MapLossSection = field(default_factory=MapLossSection)
    map_teacher: TeacherSection = field(default_factory=TeacherSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    @property
    def distills(self) -> bool:
        """True when this run has a teacher to distil from ([teacher]: the occupancy teacher,
        or for task "map" the map teacher)."""
        return bool(self.teacher.checkpoint)

    @property
    def map_distills(self) -> bool:
        """True when this run has a map teacher (task "map": [teacher]; "multi": [map_teacher])."""
        if self.task == "map":
            return self.distills
        return self.task == "multi" and bool(self.map_teacher.checkpoint)

    def check(self) -> None:
        """Cross-field checks; raises ConfigError."""
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.role not in ("teacher", "student"):
            raise ConfigError(f"role must be 'teacher' or 'student', got {self.role!r}")
        if self.role == "teacher" and (self.distills or self.map_teacher.checkpoint):
            raise ConfigError("a teacher does not distil: remove [teacher] from a role = 'teacher' config")
        for section in ("teacher", "map_teacher"):
            t = getattr(self, section)
            if bool(t.config) != bool(t.checkpoint):
                raise ConfigError(f"[{section}] needs both config and checkpoint (or neither)")
        if self.task != "multi" and self.map_teacher.checkpoint:
            raise ConfigError(f"[map_teacher] is for task 'multi'; task {self.task!r} names its "
                              f"teacher in [teacher]")
        if self.task in ("occupancy", "multi"):
            self._check_occupancy()
        if self.task in ("map", "multi"):
            self._check_map()
        if self.train.amp not in ("bf16", "none"):
            raise ConfigError(f"train.amp must be 'bf16' or 'none', got {self.train.amp!r}")
        h, w = self.data.image_size
        if h % 16 or w % 16:
            raise ConfigError(f"data.image_size must be multiples of 16 (stride-16 features), got {(h, w)}")
        if self.train.val_every < 0:
            raise ConfigError(f"train.val_every must be >= 0 (0 = no validation), got {self.train.val_every}")
        if not self.optim.backbone_lr_mult > 0:
            raise ConfigError(f"optim.backbone_lr_mult must be > 0, got {self.optim.backbone_lr_mult}")

    def _check_occupancy(self) -> None:
        """[model], [loss] and [render] of tasks "occupancy" and "multi"."""
        if self.role == "student" and self.model.modality != "camera":
            raise ConfigError(f"a student is camera-only: model.modality must be 'camera', got "
                              f"{self.model.modality!r}")
        if self.task == "multi" and self.role != "student":
            raise ConfigError("task 'multi' trains a camera student: role must be 'student'")
        needs_teacher = {k: getattr(self.loss, k) for k in
                         ("rdc", "rsc", "feature_alignment", "logit_alignment")
                         if getattr(self.loss, k) > 0}
        if needs_teacher and not self.distills:
            raise ConfigError(f"loss weights {needs_teacher} need a teacher: set teacher.config and "
                              f"teacher.checkpoint, or set those weights to 0")
        if self.loss.rsc_mode not in ("affinity", "kl"):
            raise ConfigError(f"loss.rsc_mode must be 'affinity' or 'kl', got {self.loss.rsc_mode!r}")
        if self.render.pixels not in ("lidar", "grid"):
            raise ConfigError(f"render.pixels must be 'lidar' or 'grid', got {self.render.pixels!r}")
        if self.loss.class_weights and len(self.loss.class_weights) != self.model.num_classes:
            raise ConfigError(f"loss.class_weights needs {self.model.num_classes} values, got "
                              f"{len(self.loss.class_weights)}")

    def _check_map(self) -> None:
        """[map_model] and [map_loss] of tasks "map" and "multi" (the teacher's own model is
        checked when it is loaded: radocc.map_train.load_map_teacher)."""
        m, w = self.map_model, self.map_loss
        if self.task == "map" and self.role == "teacher" and m.modality != "fusion":
            raise ConfigError(f"a map teacher is camera + LiDAR: map_model.modality must be "
                              f"'fusion', got {m.modality!r}")
        if self.role == "student" and m.modality not in ("camera", "camera_dual"):
            raise ConfigError(f"a map student is camera-only: map_model.modality must be 'camera' "
                              f"or 'camera_dual', got {m.modality!r}")
        if self.task == "multi" and m.modality != "camera":
            raise ConfigError(f"task 'multi' feeds the occupancy model's BEV to the map head: "
                              f"map_model.modality must be 'camera' (its camera / gkt settings are "
                              f"unused), got {m.modality!r}")
        if self.task == "multi" and m.bev_channels != self.model.bev_encoder.out_channels:
            raise ConfigError(f"task 'multi': map_model.bev_channels ({m.bev_channels}) must equal "
                              f"model.bev_encoder.out_channels ({self.model.bev_encoder.out_channels}):"
                              f" the map head reads the occupancy model's BEV")
        negative = {k: getattr(w, k) for k in ("cls", "pts", "dir", *w.DISTILL_TERMS)
                    if not getattr(w, k) >= 0}
        if negative:
            raise ConfigError(f"map_loss weights must be >= 0, got {negative}")
        distill = w.distill_weights()
        if distill and not self.map_distills:
            section = "map_teacher" if self.task == "multi" else "teacher"
            raise ConfigError(f"map_loss weights {distill} (MapDistill) need a teacher: set "
                              f"{section}.config and {section}.checkpoint, or set those weights to 0")
        if w.relation > 0 and m.modality != "camera_dual":
            raise ConfigError(f"map_loss.relation > 0 compares the student's GKT and LSS BEVs: "
                              f"map_model.modality must be 'camera_dual', got {m.modality!r} "
                              f"(or set map_loss.relation = 0)")
        if w.relation > 0:
            h, wd = m.bev_shape
            p = w.relation_patch_size
            if p < 1 or h % p or wd % p:
                raise ConfigError(f"map_loss.relation_patch_size ({p}) must divide "
                                  f"map_model.bev_shape {m.bev_shape}")
        if w.relation_tokens not in ("mean", "flatten"):
            raise ConfigError(f"map_loss.relation_tokens must be 'mean' or 'flatten', got "
                              f"{w.relation_tokens!r}")
        if not 0 <= w.head_score_threshold < 1:
            raise ConfigError(f"map_loss.head_score_threshold must be in [0, 1), got "
                              f"{w.head_score_threshold}")


# ----------------------------------------------------------------------------- dict <-> dataclass
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str, default: Any = None) -> Any:
    """``value`` (from TOML) as type ``tp``; raises ConfigError naming ``where``. ``default``: the
    instance a table's missing keys come from (a nested dataclass's field default)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() == "none"
                             and type(None) in options):
            if type(None) in options:
                return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{where}: {value!r} is not a {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table [{where}], got {value!r}")
        return from_dict(tp, value, where, base=default if isinstance(default, tp) else None)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")


def _closest(key: str, valid: Sequence[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def from_dict(cls: type, data: dict, where: str = "", base: Any = None) -> Any:
    """A dataclass ``cls`` from a (TOML) dict: missing keys keep their defaults (those of
    ``base`` when given), unknown keys and values of the wrong type raise ConfigError (naming the
    key and the closest valid key). A nested table starts from its field's default, so e.g.
    [map_model.camera] overrides the map model's camera defaults, not CameraConfig's."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"unknown config key {path!r}{_closest(key, list(fields))} "
                              f"(valid keys{' of [' + where + ']' if where else ''}: "
                              f"{', '.join(fields)})")
        default = None
        if isinstance(value, dict) and dataclasses.is_dataclass(hints[key]):
            default = getattr(base, key) if base is not None else _field_default(fields[key])
        kwargs[key] = _convert(value, hints[key], path, default)
    if base is not None:
        kwargs = {**{name: getattr(base, name) for name, f in fields.items() if f.init}, **kwargs}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a dataclass's own checks (__post_init__)
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def to_dict(config: Any) -> dict:
    """A config dataclass as a TOML-able dict (tuples become lists; None entries are dropped)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        if value is not None:
            out[f.name] = value
    return out


def _parse_value(text: str) -> Any:
    """A --set value: a TOML value (number, bool, string, list), else the raw text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``section.key=value`` overrides to a TOML dict (in place; returned)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. optim.lr=1e-4), got {item!r}")
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a table")
        node[parts[-1]] = _parse_value(text.strip())
    return data


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a TOML experiment config, apply ``--set`` overrides, type-check and cross-check it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    apply_overrides(data, overrides)
    try:
        config = from_dict(ExperimentConfig, data)
        config.check()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return config


def load_model_config(path: str | Path) -> ModelConfig:
    """The [model] section of a TOML experiment config (a teacher's, for a student)."""
    return load_config(path).model
