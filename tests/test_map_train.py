"""Vector-map training and evaluation (task = "map" / "multi") on the tiny synthetic dataset (CPU).

Tiny models (BEV 20 x 10, 16-24 channels, 8 vectors, 2 cameras at 48 x 96): a fusion teacher is
trained once per module; students distil from it.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

CAMERAS = ("CAM_FRONT", "CAM_BACK")


def write_map_config(path: Path, root: str | Path, *, role: str = "student", modality: str | None = None,
                     channels: int = 16, teacher: tuple[Path, Path] | None = None,
                     distill: str = "", extra: str = "") -> Path:
    """A tiny map config at ``path`` (named ``path.stem``). role "teacher": fusion; "student":
    ``modality`` (default camera_dual). teacher: (config, checkpoint) to distil from, with the
    [map_loss] weights ``distill`` (default: all MapDistill terms off)."""
    modality = modality or ("fusion" if role == "teacher" else "camera_dual")
    teacher_table = (f"[teacher]\nconfig = {json.dumps(str(teacher[0]))}\n"
                     f"checkpoint = {json.dumps(str(teacher[1]))}\n" if teacher else "")
    losses = distill or ("relation = 0.0\nfeature_bev = 0.0\nfeature_decoder = 0.0\n"
                         "head_cls = 0.0\nhead_pts = 0.0")
    path.write_text(f"""
name = "{path.stem}"
task = "map"
role = "{role}"
seed = 3

[data]
root = {json.dumps(str(root))}
version = "v1.0-mini"
image_size = [48, 96]
cameras = {json.dumps(list(CAMERAS))}
batch_size = 1
num_workers = 0

[map_model]
modality = "{modality}"
bev_shape = [20, 10]
bev_channels = {channels}

[map_model.camera]
backbone = "resnet18"
neck_channels = 16
depth_bins = [1.0, 33.0, 4.0]
context_channels = {channels}

[map_model.gkt]
ffn_channels = 32

[map_model.lidar]
voxel_size = [1.5, 1.5, 2.0]
base_channels = 8
stage_channels = [8, 16]
out_channels = {channels}
max_voxels = 5000

[map_model.head]
num_vectors = 8
embed_dims = {channels}
num_layers = 2
num_heads = 4
ffn_channels = 32

{teacher_table}
[map_loss]
{losses}

[optim]
lr = 5e-3
warmup_iters = 1

[train]
epochs = 1
log_every = 1

{extra}
""")
    return path


ALL_TERMS = ("relation = 1.0\nfeature_bev = 1.0\nfeature_decoder = 1.0\nhead_cls = 0.1\n"
             "head_pts = 0.1\nrelation_patch_size = 2\nhead_score_threshold = 0.0")


def _train(config: Path, out: Path, *args: str) -> int:
    from radocc.train import main

    return main([str(config), "--out", str(out), "--no-progress", *args])


@pytest.fixture(scope="module")
def map_teacher(synthetic_root, module_tmp) -> Path:
    """A trained tiny fusion map teacher (24 channels): its config (run folder ``run`` beside it)."""
    folder = module_tmp
    config = write_map_config(folder / "teacher.toml", synthetic_root, role="teacher", channels=24)
    assert _train(config, folder / "run") == 0
    return config


def _student(tmp_path: Path, root: str, teacher: Path | None, distill: str = "", **kw) -> Path:
    pair = (teacher, teacher.parent / "run" / "best.pt") if teacher else None
    return write_map_config(tmp_path / "student.toml", root, teacher=pair, distill=distill, **kw)


def test_teacher_run_writes_checkpoints_and_map_metrics(map_teacher):
    from radocc.checkpoint import load_checkpoint

    run = map_teacher.parent / "run"
    state = load_checkpoint(run / "best.pt")
    assert state["epoch"] == 1 and state["iteration"] == 2  # 2 training samples, batch 1
    assert state["config"]["task"] == "map" and state["metric"] == "mAP"
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= record["mAP"] <= 100.0 and record["num_samples"] == 2
    assert set(record["AP"]) == {"divider", "ped_crossing", "boundary"}
    assert any((run / "vector_cache").iterdir())  # the ground truth is cached in the run folder


def test_teacher_loss_decreases_on_a_batch(map_teacher, tmp_path):
    from radocc.config import load_config
    from radocc.train import trainer_class

    config = load_config(map_teacher, ["data.augment=false"])
    trainer = trainer_class(config)(config, tmp_path / "run", progress=False)
    trainer.train_set.set_epoch(0)
    batch = next(iter(trainer.train_loader))
    totals = [trainer.step(batch)["total"] for _ in range(6)]
    assert all(math.isfinite(t) for t in totals)
    assert totals[-1] < 0.9 * totals[0], totals


@pytest.mark.parametrize("distill", ["", ALL_TERMS], ids=["baseline", "mapdistill"])
def test_student_trains_with_and_without_mapdistill(distill, synthetic_root, map_teacher, tmp_path,
                                                    monkeypatch):
    import radocc.train as train
    from radocc.map_train import MapTrainer

    config = _student(tmp_path, synthetic_root, map_teacher if distill else None, distill)
    seen: list[dict] = []
    step = MapTrainer.step
    monkeypatch.setattr(MapTrainer, "step", lambda self, batch: seen.append(step(self, batch)) or seen[-1])
    assert _train(config, tmp_path / "run") == 0
    assert len(seen) == 2
    expected = {"map_cls", "map_pts", "map_dir", "total"}
    if distill:
        expected |= {"relation", "feature_bev", "feature_decoder", "head_cls", "head_pts"}
    for logged in seen:
        assert set(logged) == expected
        assert all(math.isfinite(v) for v in logged.values()), logged
    if distill:  # student (16 ch) and teacher (24 ch) differ: the adapters' weights are saved
        assert seen[0]["feature_bev"] > 0 and seen[0]["head_pts"] > 0
        state = train.load_checkpoint(tmp_path / "run" / "last.pt")
        assert {k.split(".")[0] for k in state["adapter"]} == {"bev", "decoder"}


def test_teacher_gets_no_gradient_and_adapters_train(synthetic_root, map_teacher, tmp_path):
    from radocc.config import load_config
    from radocc.map_train import MapTrainer

    config = load_config(_student(tmp_path, synthetic_root, map_teacher, ALL_TERMS))
    trainer = MapTrainer(config, tmp_path / "run", progress=False)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    adapter_before = {k: v.clone() for k, v in trainer.adapter.state_dict().items()}
    trainer.train_set.set_epoch(0)
    trainer.step(next(iter(trainer.train_loader)))
    assert not trainer.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    for key, value in trainer.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key  # BN statistics untouched too
    assert any(not torch.equal(v, adapter_before[k]) for k, v in trainer.adapter.state_dict().items())


def test_evaluate_prints_table_and_json(map_teacher, capsys):
    from radocc.evaluate import main

    run = map_teacher.parent / "run"
    assert main([str(map_teacher), "--checkpoint", str(run / "best.pt"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for word in ("divider", "ped_crossing", "boundary", "AP@0.5m", "AP@1.5m", "mAP", "(2 samples)"):
        assert word in text, word
    assert main([str(map_teacher), "--checkpoint", str(run / "best.pt"), "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["mAP"] <= 100.0 and result["num_samples"] == 2
    assert set(result["AP"]["boundary"]) == {"0.5", "1.0", "1.5"}
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["mAP"] == pytest.approx(record["mAP"])  # the same model and protocol as validation


def test_resume_matches_uninterrupted_run(synthetic_root, tmp_path):
    from radocc.checkpoint import load_checkpoint

    # warm-up over the first epoch: the lr of step 3 is then the same whether the run was
    # started for 1 or 2 epochs (the cosine phase depends on the total)
    config = _student(tmp_path, synthetic_root, None, modality="camera", extra="")
    config.write_text(config.read_text().replace("warmup_iters = 1", "warmup_iters = 2"))
    assert _train(config, tmp_path / "full", "--set", "train.epochs=2") == 0
    assert _train(config, tmp_path / "half", "--set", "train.epochs=1") == 0
    assert _train(config, tmp_path / "half", "--set", "train.epochs=2",
                  "--resume", str(tmp_path / "half" / "last.pt")) == 0
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    resumed = load_checkpoint(tmp_path / "half" / "last.pt")
    assert full["iteration"] == resumed["iteration"] == 4
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert full["best_metric"] == resumed["best_metric"]


def test_config_without_map_expansion_is_refused(synthetic_root, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root, ignore=lambda d, names: ["maps"] if Path(d) == Path(synthetic_root) else [])
    config = _student(tmp_path, str(root), None)
    assert _train(config, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "map_expansion" in err and "maps/expansion/<location>.json" in err and "MISSING" in err


def test_teacher_checkpoint_of_another_model_is_named(synthetic_root, map_teacher, tmp_path, capsys):
    from radocc.checkpoint import save_checkpoint
    from radocc.config import load_config, to_dict
    from radocc.models import build_model

    # a camera_dual student's checkpoint where the fusion teacher's belongs: keys do not match
    student = _student(tmp_path, synthetic_root, None, channels=24)
    assert _train(student, tmp_path / "student_run") == 0
    config = write_map_config(tmp_path / "bad.toml", synthetic_root, distill=ALL_TERMS,
                              teacher=(map_teacher, tmp_path / "student_run" / "last.pt"))
    assert _train(config, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "teacher checkpoint" in err and "missing key(s)" in err and "lidar_encoder" in err
    # an occupancy run's checkpoint
    occupancy = load_config(Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "teacher.toml")
    save_checkpoint(tmp_path / "occ.pt", dict(model=build_model(occupancy.model).state_dict(),
                                              config=to_dict(occupancy)))
    config = write_map_config(tmp_path / "bad2.toml", synthetic_root, distill=ALL_TERMS,
                              teacher=(map_teacher, tmp_path / "occ.pt"))
    assert _train(config, tmp_path / "run2") == 2
    assert "task 'occupancy' run" in capsys.readouterr().err


def test_ego_bev_to_map_reads_the_right_cells():
    from radocc.multitask import ego_bev_to_map

    # an ego BEV whose channels are the cell centre's (x, y): bilinear resampling of a linear
    # field is exact, so each map cell must read its own position in the ego frame
    lower, upper, shape = (-40.0, -40.0, -1.0), (40.0, 40.0, 5.4), (200, 200)
    y = torch.linspace(-40 + 0.2, 40 - 0.2, shape[0])
    x = torch.linspace(-40 + 0.2, 40 - 0.2, shape[1])
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    bev = torch.stack([xx, yy])[None]                                # [1, 2, Y, X]
    ego2map = torch.eye(4)
    ego2map[:3, :3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ego2map[:3, 3] = torch.tensor([1.0, 2.0, 0.0])                    # map = R ego + t
    out = ego_bev_to_map(bev, ego2map[None], lower, upper, (-15, -30, 15, 30), (20, 10))
    assert out.shape == (1, 2, 20, 10)
    my = -30 + (torch.arange(20) + 0.5) * 3.0
    mx = -15 + (torch.arange(10) + 0.5) * 3.0
    myy, mxx = torch.meshgrid(my, mx, indexing="ij")
    map_cells = torch.stack([mxx, myy, torch.zeros_like(mxx), torch.ones_like(mxx)], -1)
    ego = map_cells @ torch.linalg.inv(ego2map).T
    assert torch.allclose(out[0, 0], ego[..., 0], atol=1e-4)
    assert torch.allclose(out[0, 1], ego[..., 1], atol=1e-4)


MULTI = """
name = "multi"
task = "multi"
role = "student"
seed = 3

[data]
root = {root}
version = "v1.0-mini"
image_size = [48, 96]
cameras = {cameras}
batch_size = 1
num_workers = 0

[model]                          # the Occ3D grid (the labels'), tiny channels
modality = "camera"

[model.camera]
backbone = "resnet18"
neck_channels = 16
depth_bins = [1.0, 41.0, 4.0]
context_channels = 8

[model.bev_encoder]
channels = [8, 16, 16]
out_channels = 16

[model.head]
hidden_channels = 16

[teacher]                        # the test hands the Trainer a ready occupancy teacher
config = "unused.toml"
checkpoint = "unused.pt"

[loss]
rdc = 1.0
rsc = 1.0
rsc_mode = "kl"

[render]
rays_per_image = 32
depth_bins = [1.0, 41.0, 2.0]

[map_model]
modality = "camera"
bev_shape = [20, 10]
bev_channels = 16

[map_model.head]
num_vectors = 8
embed_dims = 16
num_layers = 2
num_heads = 4
ffn_channels = 32

[map_teacher]
config = {map_config}
checkpoint = {map_checkpoint}

[map_loss]
relation = 0.0
feature_bev = 1.0
feature_decoder = 1.0
head_cls = 0.1
head_pts = 0.1
head_score_threshold = 0.0

[optim]
lr = 1e-3
warmup_iters = 1

[train]
epochs = 1
"""


def test_multitask_student_trains_with_rdc_rsc_and_mapdistill(synthetic_root, map_teacher, tmp_path):
    from radocc.config import load_config
    from radocc.models import ModelConfig, build_model
    from radocc.train import trainer_class

    path = tmp_path / "multi.toml"
    path.write_text(MULTI.format(root=json.dumps(synthetic_root), cameras=json.dumps(list(CAMERAS)),
                                 map_config=json.dumps(str(map_teacher)),
                                 map_checkpoint=json.dumps(str(map_teacher.parent / "run" / "best.pt"))))
    config = load_config(path)
    # a random camera + LiDAR occupancy teacher stands in for a trained one (RDC / RSC run on it)
    occupancy_teacher = build_model(ModelConfig(**{**vars(config.model), "modality": "fusion",
                                                   "fusion_channels": 16}))
    trainer = trainer_class(config)(config, tmp_path / "run", progress=False, teacher=occupancy_teacher)
    trainer.train_set.set_epoch(0)
    batch = next(iter(trainer.train_loader))
    logged = trainer.step(batch)
    assert {"rdc", "rsc", "occupancy", "map_cls", "map_pts", "map_dir", "feature_bev",
            "feature_decoder", "head_cls", "head_pts"} <= set(logged)
    assert all(math.isfinite(v) for v in logged.values()), logged
    assert logged["head_pts"] > 0 and logged["rsc"] > 0
    assert all(p.grad is None for p in trainer.map_teacher.parameters())
    assert all(p.grad is None for p in trainer.teacher.parameters())
    # the map head's outputs reach the shared image encoder through the resampled BEV
    trainer.model.zero_grad(set_to_none=True)
    _, vec = trainer.model(batch["images"], batch["intrinsics"], batch["cam2ego"], batch["ego2map"])
    vec.points.sum().backward()
    assert trainer.model.occupancy.image_encoder.neck.output.weight.grad.abs().sum() > 0
    result = trainer.validate()
    assert 0.0 <= result["mAP"] <= 100.0 and 0.0 <= result["mIoU"] <= 100.0


def test_torchrun_two_processes_distil(synthetic_root, map_teacher, tmp_path):
    import os
    import subprocess
    import sys

    from radocc.checkpoint import load_checkpoint

    config = _student(tmp_path, synthetic_root, map_teacher, ALL_TERMS)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "radocc.train", str(config), "--out", str(out), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(out / "last.pt")
    assert state["iteration"] == 1  # 2 samples split over 2 ranks
    assert set(state["adapter"]) and state["metric"] == "mAP"
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= record["mAP"] <= 100.0 and record["num_samples"] == 2  # both ranks' samples
