"""radocc.config: TOML experiment configs -> dataclasses, --set overrides, cross-field checks."""

import dataclasses
from pathlib import Path

import pytest
import torch

from radocc.config import (ConfigError, ExperimentConfig, apply_overrides, from_dict, load_config,
                           to_dict)
from radocc.models import ModelConfig, OccupancyModel, build_model

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*/*.toml"))
STUDENT = REPO / "configs" / "synthetic" / "student.toml"
TEACHER = REPO / "configs" / "synthetic" / "teacher.toml"
RADOCC = REPO / "configs" / "synthetic" / "radocc.toml"


def test_config_files_found():
    names = {f"{p.parent.name}/{p.name}" for p in CONFIGS}
    assert {"synthetic/student.toml", "synthetic/teacher.toml", "synthetic/radocc.toml",
            "occ3d/student_r50.toml", "occ3d/teacher_fusion_r50.toml", "occ3d/radocc_r50.toml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_loads_and_its_model_builds(path):
    config = load_config(path)
    assert isinstance(config, ExperimentConfig) and isinstance(config.model, ModelConfig)
    if config.task != "occupancy":
        _check_map_config(config)
        return
    if config.role == "teacher":
        assert config.model.modality == "fusion"
    # Construct only (no forward): even the paper-scale ResNet-50 models are cheap to build.
    model = build_model(config.model)
    assert isinstance(model, OccupancyModel)
    assert sum(p.numel() for p in model.parameters()) > 0
    if config.distills:  # a distilling student's teacher config exists, loads, and is a teacher
        teacher = load_config(REPO / config.teacher.config)
        assert teacher.role == "teacher" and teacher.model.modality == "fusion"
        assert teacher.model.grid_shape == config.model.grid_shape
        assert teacher.model.num_classes == config.model.num_classes


def _check_map_config(config: ExperimentConfig) -> None:
    """A map / multi-task config builds its model; a distilling one names a map teacher whose
    model fits (same patch, BEV and points; a fusion teacher for the relation term)."""
    from radocc.evaluate import build_task_model

    model = build_task_model(config)
    assert sum(p.numel() for p in model.parameters()) > 0
    if config.task == "map":
        assert config.map_model.modality == ("fusion" if config.role == "teacher" else config.map_model.modality)
    teacher = config.teacher if config.task == "map" else config.map_teacher
    if teacher.config:
        t = load_config(REPO / teacher.config)
        assert t.task == "map" and t.role == "teacher" and t.map_model.modality == "fusion"
        assert t.map_model.bev_shape == config.map_model.bev_shape
        assert t.map_model.pc_range == config.map_model.pc_range
        assert t.map_model.head.num_points == config.map_model.head.num_points
    if config.task == "multi" and config.teacher.config:
        t = load_config(REPO / config.teacher.config)
        assert t.task == "occupancy" and t.role == "teacher"
        assert t.model.grid_shape == config.model.grid_shape


def test_map_configs_found_and_paper_scale():
    names = {f"{p.parent.name}/{p.name}" for p in CONFIGS}
    assert {"synthetic/map_teacher.toml", "synthetic/map_student.toml", "synthetic/map_mapdistill.toml",
            "nuscenes/map_teacher_fusion_r50.toml", "nuscenes/map_student_r18.toml",
            "nuscenes/map_mapdistill_r18.toml"} <= names
    teacher = load_config(REPO / "configs" / "nuscenes" / "map_teacher_fusion_r50.toml")
    student = load_config(REPO / "configs" / "nuscenes" / "map_mapdistill_r18.toml")
    assert teacher.map_model.camera.backbone == "resnet50" and teacher.map_model.modality == "fusion"
    assert student.map_model.camera.backbone == "resnet18" and student.map_model.modality == "camera_dual"
    for c in (teacher, student):
        assert c.map_model.bev_shape == (80, 40) and c.map_model.head.num_vectors == 100
        assert c.map_model.head.num_layers == 2
        assert (c.optim.lr, c.optim.warmup_iters, c.optim.grad_clip) == (6e-4, 500, 35.0)
    assert (teacher.train.epochs, student.train.epochs) == (24, 110)
    assert student.map_loss.distill_weights() == {"relation": 1.0, "feature_bev": 1.0,
                                                   "feature_decoder": 1.0, "head_cls": 0.1,
                                                   "head_pts": 0.1}


def test_map_sections_use_the_config_machinery():
    mapdistill = REPO / "configs" / "synthetic" / "map_mapdistill.toml"
    config = load_config(mapdistill, ["map_loss.head_cls=0.5", "map_model.head.num_vectors=12"])
    assert config.map_loss.head_cls == 0.5 and config.map_model.head.num_vectors == 12
    # a partial [map_model.camera] table keeps the map defaults (not the occupancy model's)
    default = load_config(mapdistill, ["map_model.camera.neck_channels=16"]).map_model.camera
    assert default.neck_channels == 16 and default.backbone == "resnet18"
    assert ExperimentConfig().task == "occupancy" and load_config(STUDENT).task == "occupancy"
    with pytest.raises(ConfigError, match=r"'map_loss\.relaton'.*did you mean 'relation'"):
        load_config(mapdistill, ["map_loss.relaton=1"])
    with pytest.raises(ConfigError, match=r"'map_model\.head\.num_vector'.*did you mean 'num_vectors'"):
        load_config(mapdistill, ["map_model.head.num_vector=3"])
    with pytest.raises(ConfigError, match=r"map_loss\.head_cls: expected a number"):
        load_config(mapdistill, ["map_loss.head_cls=yes"])
    with pytest.raises(ConfigError, match=r"map_model.*modality"):
        load_config(mapdistill, ["map_model.modality=lidar"])


MAP_STUDENT = REPO / "configs" / "synthetic" / "map_student.toml"
MAP_DISTILL = REPO / "configs" / "synthetic" / "map_mapdistill.toml"
MAP_TEACHER = REPO / "configs" / "synthetic" / "map_teacher.toml"


@pytest.mark.parametrize("path, overrides, match", [
    (STUDENT, ["task=vectors"], "task must be one of"),
    (MAP_STUDENT, ["map_model.modality=fusion", "map_model.lidar.out_channels=32"],
     "map student is camera-only"),
    (MAP_TEACHER, ["map_model.modality=camera_dual"], "map teacher is camera \\+ LiDAR"),
    (MAP_STUDENT, ["map_loss.relation=1"], r"relation.*need a teacher"),
    (MAP_STUDENT, ["map_loss.head_pts=0.1"], "need a teacher"),
    (MAP_DISTILL, ["map_model.modality=camera"], "relation > 0 .*camera_dual"),
    (MAP_DISTILL, ["map_loss.relation_patch_size=3"], "must divide"),
    (MAP_DISTILL, ["map_loss.head_score_threshold=1.5"], "head_score_threshold"),
    (MAP_DISTILL, ["map_loss.feature_bev=-1"], ">= 0"),
    (MAP_DISTILL, ["map_teacher.config=a.toml", "map_teacher.checkpoint=a.pt"], "for task 'multi'"),
    (MAP_TEACHER, ["teacher.config=a.toml", "teacher.checkpoint=a.pt"], "teacher does not distil"),
])
def test_map_cross_checks(path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(path, overrides)


def test_occ3d_configs_are_paper_scale():
    config = load_config(REPO / "configs" / "occ3d" / "student_r50.toml")
    assert config.model.camera.backbone == "resnet50"
    assert config.model.camera.num_depth_bins == 88
    assert config.data.image_size == (256, 704)
    assert config.model.grid_shape == (200, 200, 16)
    radocc = load_config(REPO / "configs" / "occ3d" / "radocc_r50.toml")
    assert radocc.distills and (radocc.loss.occupancy, radocc.loss.rdc, radocc.loss.rsc) == (1.0, 100.0, 10.0)


def test_values_from_the_file():
    config = load_config(STUDENT)
    assert config.name == "synthetic-student" and config.role == "student"
    assert config.data.image_size == (128, 224) and isinstance(config.data.image_size, tuple)
    assert config.model.camera.backbone == "resnet18"
    assert config.model.camera.depth_bins == (1.0, 45.0, 1.0)
    assert config.model.bev_encoder.channels == (32, 64, 128)
    assert config.optim.lr == 1e-3 and config.train.epochs == 4
    assert config.optim.weight_decay == 0.01  # not in the file: the default
    assert not config.distills


# ----------------------------------------------------------------------------- unknown keys
@pytest.mark.parametrize("override, key, closest", [
    ("optim.lrr=1e-4", "optim.lrr", "lr"),
    ("nmae=x", "nmae", "name"),
    ("data.image_sise=[96, 160]", "data.image_sise", "image_size"),
    ("model.camera.backbon=resnet18", "model.camera.backbon", "backbone"),
    ("model.lidar.voxel_sise=[0.4, 0.4, 0.4]", "model.lidar.voxel_sise", "voxel_size"),
])
def test_unknown_key_names_the_closest_valid_key(override, key, closest):
    with pytest.raises(ConfigError) as info:
        load_config(STUDENT, [override])
    message = str(info.value)
    assert repr(key) in message and f"did you mean {closest!r}" in message
    assert str(STUDENT) in message


def test_unknown_key_in_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(STUDENT.read_text().replace("[optim]\n", "[optim]\nlearning_rat = 1e-3\n"))
    with pytest.raises(ConfigError, match=r"'optim\.learning_rat'; did you mean '\w+'") as info:
        load_config(path)
    assert str(path) in str(info.value)
    path.write_text("[optimizer]\nlr = 1e-3\n")
    with pytest.raises(ConfigError, match=r"'optimizer'.*did you mean 'optim'"):
        load_config(path)


# ----------------------------------------------------------------------------- --set overrides
def test_set_float():
    config = load_config(STUDENT, ["optim.lr=1e-4"])
    assert config.optim.lr == 1e-4 and type(config.optim.lr) is float
    config = load_config(STUDENT, ["optim.lr=3"])  # a TOML integer is a fine float
    assert config.optim.lr == 3.0 and type(config.optim.lr) is float
    assert load_config(STUDENT, [" optim.lr = 5e-4 "]).optim.lr == 5e-4


@pytest.mark.parametrize("override, key, expected", [
    ("optim.lr=abc", "optim.lr", "number"),
    ("optim.lr=true", "optim.lr", "number"),
    ("train.epochs=1.5", "train.epochs", "integer"),
    ("train.epochs=true", "train.epochs", "integer"),
    ("data.augment=3", "data.augment", "true or false"),
    ("name=3", "name", "string"),
    ("data.image_size=96", "data.image_size", "list"),
    ("data.image_size=[96, 160, 3]", "data.image_size", "2 values"),
    ("data.image_size=[96.5, 160]", "data.image_size[0]", "integer"),
    ("model.camera=3", "model.camera", "table"),
])
def test_set_wrong_type_names_key_and_expected_type(override, key, expected):
    with pytest.raises(ConfigError) as info:
        load_config(STUDENT, [override])
    message = str(info.value)
    assert f"{key}:" in message and expected in message


def test_set_strings_lists_and_none():
    config = load_config(STUDENT, ["data.image_size=[96,160]", "name=my-run", 'data.root="/x y"',
                                   "model.camera.pretrained=weights/r18.pth",
                                   "loss.class_weights=[1, 2.5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"])
    assert config.data.image_size == (96, 160) and isinstance(config.data.image_size, tuple)
    assert config.name == "my-run" and config.data.root == "/x y"
    assert config.model.camera.pretrained == "weights/r18.pth"
    assert config.loss.class_weights[1] == 2.5 and len(config.loss.class_weights) == 18
    assert all(type(w) is float for w in config.loss.class_weights)
    pretrained = load_config(STUDENT, ["model.camera.pretrained=weights/r18.pth",
                                       "model.camera.pretrained=none"])  # later overrides win
    assert pretrained.model.camera.pretrained is None


def test_set_can_create_a_section():
    config = load_config(STUDENT, ["teacher.config=configs/synthetic/teacher.toml",
                                   "teacher.checkpoint=runs/t/best.pt", "loss.rdc=100"])
    assert config.distills and config.loss.rdc == 100.0


@pytest.mark.parametrize("override", ["optim.lr", "=3", ""])
def test_malformed_set(override):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(STUDENT, [override])


def test_set_through_a_value_is_an_error():
    with pytest.raises(ConfigError, match="'lr' is not a table"):
        load_config(STUDENT, ["optim.lr.x=3"])


def test_apply_overrides_in_place():
    data = {"optim": {"lr": 1.0}}
    out = apply_overrides(data, ["optim.lr=2e-4", "train.epochs=3", "data.image_size=[32, 64]"])
    assert out is data
    assert data == {"optim": {"lr": 2e-4}, "train": {"epochs": 3}, "data": {"image_size": [32, 64]}}


@pytest.mark.parametrize("override, match", [
    ("model.camera.backbone=resnet34", r"model\.camera.*resnet34"),
    ("model.modality=lidar", "modality"),
    ("model.head.kind=mlp", "head.kind"),
    ("model.camera.depth_bins=[5, 1, 1]", "depth_bins"),
    ("model.grid_shape=[200, 0, 16]", "grid_shape"),
])
def test_model_dataclass_checks_become_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(STUDENT, [override])


# ----------------------------------------------------------------------------- cross checks
@pytest.mark.parametrize("path, overrides, match", [
    (STUDENT, ["model.modality=fusion"], "camera-only"),
    (STUDENT, ["role=observer"], "role"),
    (STUDENT, ["loss.rdc=1"], r"rdc.*need a teacher"),
    (STUDENT, ["loss.rsc=1"], r"rsc.*need a teacher"),
    (STUDENT, ["loss.feature_alignment=1"], "need a teacher"),
    (STUDENT, ["loss.logit_alignment=10"], "need a teacher"),
    (STUDENT, ["data.image_size=[104, 160]"], "multiples of 16"),
    (STUDENT, ["data.image_size=[96, 168]"], "multiples of 16"),
    (STUDENT, ["loss.rsc_mode=cosine"], "rsc_mode"),
    (STUDENT, ["render.pixels=random"], "render.pixels"),
    (STUDENT, ["train.amp=fp16"], "train.amp"),
    (STUDENT, ["loss.class_weights=[1.0, 2.0]"], "18 values"),
    (STUDENT, ["teacher.config=configs/synthetic/teacher.toml"], "both config and checkpoint"),
    (TEACHER, ["teacher.config=a.toml", "teacher.checkpoint=a.pt"], "teacher does not distil"),
])
def test_cross_checks(path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(path, overrides)


def test_check_on_a_built_config():
    config = ExperimentConfig()
    config.loss.rdc = config.loss.rsc = 0.0
    config.check()  # the defaults minus distillation are a valid baseline student
    config.loss.rsc_mode = "kl"
    config.check()
    config.loss.rsc_mode = "bogus"
    with pytest.raises(ConfigError, match="rsc_mode"):
        config.check()
    with pytest.raises(ConfigError, match="need a teacher"):
        ExperimentConfig().check()  # default weights RDC 100, RSC 10 without a teacher


def test_distilling_student_is_valid():
    config = load_config(RADOCC)
    assert config.distills and config.loss.rdc == 100.0 and config.loss.rsc == 10.0
    assert config.loss.rsc_mode == "affinity"


# ----------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_to_dict_round_trip(path):
    config = load_config(path)
    data = to_dict(config)
    assert isinstance(data["data"]["image_size"], list)  # TOML-able: tuples become lists
    assert from_dict(ExperimentConfig, data) == config


def test_round_trip_keeps_set_values():
    config = load_config(STUDENT, ["model.camera.pretrained=w.pth", "optim.lr=1e-4",
                                   "data.image_size=[96, 160]"])
    back = from_dict(ExperimentConfig, to_dict(config))
    assert back == config and back.model.camera.pretrained == "w.pth"
    assert back != dataclasses.replace(config, seed=1)


def test_from_dict_defaults_and_errors():
    assert from_dict(ExperimentConfig, {}) == ExperimentConfig()
    with pytest.raises(ConfigError, match=r"'model\.camera\.backbon'.*did you mean 'backbone'"):
        from_dict(ExperimentConfig, {"model": {"camera": {"backbon": "resnet18"}}})


# ----------------------------------------------------------------------------- files
def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_invalid_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\n[data\nroot = 1\n')
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)
    path.write_bytes(b'name = "\xff\xfe"\n')  # not UTF-8
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_type_error_in_file_names_the_path(tmp_path):
    path = tmp_path / "typed.toml"
    path.write_text('[train]\nepochs = "many"\n')
    with pytest.raises(ConfigError, match="train.epochs: expected an integer") as info:
        load_config(path)
    assert str(path) in str(info.value)
