"""Training, evaluation and the train-step benchmark on the tiny synthetic dataset (CPU, tiny models).

The teacher (camera + LiDAR) is trained once per module; students distil from it.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny import write_tiny_config

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]

# What training needs beyond the tiny model: 64 rays per camera, 2 iterations of 1 epoch
# (2 training samples, batch 1), a log line and pictures every step.
TRAIN = """
[render]
pixels = "lidar"
rays_per_image = 64
depth_bins = [1.0, 41.0, 2.0]

[optim]
lr = 1e-3
warmup_iters = 2

[train]
epochs = 1
log_every = 1
image_every = 1
"""


def write_config(path: Path, root: str, *, role: str, teacher: Path | None = None,
                 loss: str = "rdc = 0.0\nrsc = 0.0") -> Path:
    """The tiny Occ3D-grid config, 2 cameras, 16 channels; a student distils from ``teacher``
    (a config whose trained run is ``run/best.pt`` beside it)."""
    return write_tiny_config(path, role=role, scale="occ3d", root=root, cameras=("CAM_FRONT", "CAM_BACK"),
                             seed=3, channels=16, loss=loss, extra=TRAIN,
                             teacher=(teacher, teacher.parent / "run" / "best.pt") if teacher else None)


@pytest.fixture(scope="module")
def data_root(synthetic_root, tmp_path_factory) -> str:
    """The session's synthetic dataset plus felzenszwalb segments (a copy: RSC needs segments)."""
    from radocc.segments import main as segments_main

    root = tmp_path_factory.mktemp("train_data") / "root"
    shutil.copytree(synthetic_root, root)
    assert segments_main(["--data-root", str(root), "--fallback", "felzenszwalb", "--no-progress"]) == 0
    return str(root)


@pytest.fixture(scope="module")
def teacher_run(data_root, module_tmp) -> Path:
    """A trained tiny fusion teacher: its config path (run folder beside it, ``run/best.pt``)."""
    from radocc.train import main

    folder = module_tmp / "teacher"
    folder.mkdir()
    config = write_config(folder / "teacher.toml", data_root, role="teacher")
    assert main([str(config), "--out", str(folder / "run"), "--no-progress"]) == 0
    return config


def _train(config: Path, out: Path, *args: str) -> int:
    from radocc.train import main

    return main([str(config), "--out", str(out), "--no-progress", *args])


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_teacher_trains_and_writes_checkpoints(teacher_run):
    from radocc.checkpoint import load_checkpoint

    run = teacher_run.parent / "run"
    for name in ("last.pt", "best.pt", "config.toml"):
        assert (run / name).is_file(), name
    state = load_checkpoint(run / "best.pt")
    assert state["epoch"] == 1 and state["iteration"] == 2  # 2 training samples, batch 1
    assert (run / "best.pt").stat().st_ino == (run / "last.pt").stat().st_ino  # one file, two names
    assert state["config"]["model"]["modality"] == "fusion"
    record = _metrics(run)[-1]
    assert 0.0 <= record["mIoU"] <= 100.0
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())


@pytest.mark.parametrize("loss", [
    "rdc = 0.0\nrsc = 0.0",                                   # baseline student
    'rdc = 100.0\nrsc = 10.0\nrsc_mode = "affinity"',          # RadOcc
    'rdc = 0.0\nrsc = 10.0\nrsc_mode = "kl"',
    "rdc = 0.0\nrsc = 0.0\nfeature_alignment = 1.0\nlogit_alignment = 10.0",
], ids=["baseline", "radocc", "rsc-kl", "alignment"])
def test_student_trains(loss, data_root, teacher_run, tmp_path, monkeypatch):
    import radocc.train as train

    distills = "rdc = 0.0\nrsc = 0.0" != loss
    config = write_config(tmp_path / "student.toml", data_root, role="student",
                          teacher=teacher_run if distills else None, loss=loss)
    seen: list[dict] = []
    step = train.Trainer.step
    monkeypatch.setattr(train.Trainer, "step", lambda self, batch: seen.append(step(self, batch)) or seen[-1])
    assert _train(config, tmp_path / "run") == 0
    assert len(seen) == 2
    for logged in seen:
        assert all(math.isfinite(v) for v in logged.values())
    expected = {"occupancy", "total"}
    for line in loss.splitlines():
        key, value = (s.strip() for s in line.split("="))
        if key in ("rdc", "rsc", "feature_alignment", "logit_alignment") and float(value) > 0:
            expected.add(key)
    assert set(seen[0]) == expected
    if "rdc" in expected:
        # a KL: never negative beyond rounding. It can be ~0 here: the tiny teacher (2 steps) and
        # the random student both stop every ray in the first depth bin (opacity 1, measured).
        assert seen[0]["rdc"] >= -1e-6


def test_teacher_gets_no_gradient_and_stays_frozen(data_root, teacher_run, tmp_path):
    from radocc.config import load_config
    from radocc.train import Trainer

    config = load_config(write_config(tmp_path / "s.toml", data_root, role="student",
                                      teacher=teacher_run, loss="rdc = 100.0\nrsc = 10.0"))
    trainer = Trainer(config, tmp_path / "run", progress=False)
    before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.train_set.set_epoch(0)
    trainer.step(next(iter(trainer.train_loader)))
    assert not trainer.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    for key, value in trainer.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN statistics untouched too


@pytest.mark.parametrize("calibrated", [True, False])
def test_renders_calibrated_logits_of_each_model(calibrated, data_root, teacher_run, tmp_path):
    """render.calibrated: the student's logits minus log of its class weights are rendered, the
    teacher's (its config has none) as they are; off: both raw."""
    from radocc.config import load_config
    from radocc.train import Trainer

    weights = [float(2 + k) for k in range(18)]
    path = write_config(tmp_path / "s.toml", data_root, role="student", teacher=teacher_run,
                        loss=f"rdc = 100.0\nrsc = 0.0\nclass_weights = {weights}")
    config = load_config(path, [f"render.calibrated={str(calibrated).lower()}"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    seen: dict[str, torch.Tensor] = {}
    for name, module in (("student", trainer.model), ("teacher", trainer.teacher)):
        module.register_forward_hook(lambda m, i, out, name=name: seen.__setitem__(name, out.logits))
    trainer.render_loss.register_forward_pre_hook(
        lambda m, args: seen.update(s_in=args[0].detach(), t_in=args[1].detach()))
    trainer.train_set.set_epoch(0)
    trainer.step(next(iter(trainer.train_loader)))
    offset = torch.tensor(weights).log() if calibrated else torch.zeros(18)
    torch.testing.assert_close(seen["s_in"], seen["student"].detach().float() - offset)
    torch.testing.assert_close(seen["t_in"], seen["teacher"].float())


def test_resume_matches_uninterrupted_run(data_root, tmp_path):
    from radocc.checkpoint import load_checkpoint

    config = write_config(tmp_path / "s.toml", data_root, role="student",
                          loss="rdc = 0.0\nrsc = 0.0")
    assert _train(config, tmp_path / "full", "--set", "train.epochs=2") == 0
    assert _train(config, tmp_path / "half", "--set", "train.epochs=1") == 0
    assert _train(config, tmp_path / "half", "--set", "train.epochs=2",
                  "--resume", str(tmp_path / "half" / "last.pt")) == 0
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    resumed = load_checkpoint(tmp_path / "half" / "last.pt")
    assert full["iteration"] == resumed["iteration"] == 4
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert full["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    # and the same seed gives the same run: deterministic on CPU
    assert _train(config, tmp_path / "again", "--set", "train.epochs=2") == 0
    again = load_checkpoint(tmp_path / "again" / "last.pt")
    assert all(torch.equal(v, again["model"][k]) for k, v in full["model"].items())


def test_ema_weights_are_evaluated_and_saved(data_root, tmp_path):
    from radocc.checkpoint import load_checkpoint

    config = write_config(tmp_path / "s.toml", data_root, role="student")
    assert _train(config, tmp_path / "run", "--set", "optim.ema_decay=0.5") == 0
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["ema"] is not None
    differs = [k for k, v in state["model"].items()
               if v.is_floating_point() and not torch.equal(v, state["ema"][k])]
    assert differs  # the average lags the trained weights


def test_evaluate_prints_tables_and_json(data_root, teacher_run, tmp_path, capsys):
    from radocc.evaluate import main
    from radocc.evaluate_occ import evaluate as evaluate_saved

    run = teacher_run.parent / "run"
    preds = tmp_path / "preds"
    assert main([str(teacher_run), "--checkpoint", str(run / "best.pt"), "--no-progress",
                 "--save-predictions", str(preds)]) == 0
    text = capsys.readouterr().out
    assert "mIoU (camera mask, Occ3D protocol)" in text and "RayIoU" in text and "driveable_surface" in text
    assert main([str(teacher_run), "--checkpoint", str(run / "best.pt"), "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"mIoU", "IoU", "mIoU_no_mask", "RayIoU", "RayIoU@1", "depth", "protocols"} <= set(result)
    assert result["num_samples"] == 2
    assert result["depth"]["rmse"] > 0
    # the saved predictions score the same mIoU with evaluate_occ
    saved = evaluate_saved(preds, Path(data_root), "v1.0-mini", "val", progress=False)
    assert saved["mIoU"] == pytest.approx(result["mIoU"], nan_ok=True)


def test_torchrun_two_processes(data_root, teacher_run, tmp_path):
    config = write_config(tmp_path / "s.toml", data_root, role="student", teacher=teacher_run,
                          loss="rdc = 100.0\nrsc = 10.0")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "radocc.train", str(config), "--out", str(out), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from radocc.checkpoint import load_checkpoint

    state = load_checkpoint(out / "last.pt")
    assert state["iteration"] == 1  # 2 samples split over 2 ranks
    # the learning rate is scaled by the world size (linear scaling rule)
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(2e-3)
    record = _metrics(out)[-1]
    assert 0.0 <= record["mIoU"] <= 100.0


# ----------------------------------------------------------------------------- bad input
def test_teacher_checkpoint_of_another_model_is_named(data_root, teacher_run, tmp_path, capsys):
    student_cfg = write_config(tmp_path / "student.toml", data_root, role="student")
    assert _train(student_cfg, tmp_path / "student") == 0
    # a student checkpoint given as the teacher's: the tensors that differ are named
    config = write_config(tmp_path / "s.toml", data_root, role="student", teacher=teacher_run,
                          loss="rdc = 100.0\nrsc = 0.0")
    code = _train(config, tmp_path / "run", "--set",
                  f"teacher.checkpoint={json.dumps(str(tmp_path / 'student' / 'best.pt'))}")
    err = capsys.readouterr().err
    assert code == 2
    assert "teacher checkpoint" in err and "lidar" in err and "missing" in err


def test_init_from_starts_from_another_runs_weights(data_root, teacher_run, tmp_path, capsys):
    from radocc.checkpoint import load_checkpoint
    from radocc.config import load_config
    from radocc.train import Trainer

    config = write_config(tmp_path / "student.toml", data_root, role="student")
    assert _train(config, tmp_path / "pre") == 0
    weights = load_checkpoint(tmp_path / "pre" / "last.pt")["model"]
    trainer = Trainer(load_config(config, [f"train.init_from={json.dumps(str(tmp_path / 'pre' / 'last.pt'))}"]),
                      tmp_path / "run", progress=False)
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert trainer.epoch == 0 and trainer.iteration == 0  # a fresh run, not a resume
    fresh = Trainer(load_config(config), tmp_path / "fresh", progress=False).model.state_dict()
    assert not all(torch.equal(fresh[k], v) for k, v in weights.items())
    # a checkpoint of another model (the fusion teacher) is refused, naming the differing tensors
    code = _train(config, tmp_path / "bad", "--set",
                  f"train.init_from={json.dumps(str(teacher_run.parent / 'run' / 'best.pt'))}")
    err = capsys.readouterr().err
    assert code == 2 and "train.init_from" in err and "lidar" in err


def test_unknown_key_and_bad_set_value(data_root, tmp_path, capsys):
    config = write_config(tmp_path / "s.toml", data_root, role="student")
    assert _train(config, tmp_path / "run", "--set", "optim.lrr=1e-4") == 2
    assert "did you mean 'lr'" in capsys.readouterr().err
    assert _train(config, tmp_path / "run", "--set", "train.epochs=two") == 2
    err = capsys.readouterr().err
    assert "train.epochs" in err and "integer" in err
    assert _train(config, tmp_path / "run", "--set", "train.val_every=-1") == 2
    assert "train.val_every" in capsys.readouterr().err


def test_val_every_zero_trains_without_validation(data_root, tmp_path, monkeypatch):
    from radocc.train import Trainer

    def no_validation(self):
        raise AssertionError("validate() called with train.val_every = 0")

    monkeypatch.setattr(Trainer, "validate", no_validation)
    config = write_config(tmp_path / "s.toml", data_root, role="student")
    assert _train(config, tmp_path / "run", "--set", "train.val_every=0") == 0
    assert (tmp_path / "run" / "last.pt").is_file() and not (tmp_path / "run" / "best.pt").exists()
    assert _metrics(tmp_path / "run") == [{"epoch": 1, "iteration": 2}]


def test_rsc_without_segments_says_how_to_make_them(synthetic_root, teacher_run, tmp_path, capsys):
    config = write_config(tmp_path / "s.toml", synthetic_root, role="student", teacher=teacher_run,
                          loss="rdc = 100.0\nrsc = 10.0")
    assert _train(config, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "segments" in err and "python -m radocc.segments" in err


def test_data_root_that_fails_the_check(tmp_path, data_root, capsys):
    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    shutil.rmtree(root / "gts")
    config = write_config(tmp_path / "s.toml", str(root), role="student")
    assert _train(config, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "gts" in err and "not ready for training" in err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_root, tmp_path, monkeypatch, capsys):
    import radocc.losses as losses

    config = write_config(tmp_path / "s.toml", data_root, role="student")
    out = tmp_path / "run"
    assert _train(config, out) == 0
    good = (out / "last.pt").read_bytes()
    calls = {"n": 0}
    real = losses.occupancy_loss

    def flaky(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 2 else value

    monkeypatch.setattr(losses, "occupancy_loss", flaky)
    assert _train(config, out, "--set", "train.epochs=2", "--resume", str(out / "last.pt")) == 2
    err = capsys.readouterr().err
    assert "step 4" in err and "'occupancy'" in err and "last.pt" in err
    assert (out / "last.pt").read_bytes() == good


def test_train_step_benchmark_reports_every_phase(data_root, teacher_run, tmp_path):
    from radocc.bench_train import PHASES, bench_train_step

    config = write_config(tmp_path / "s.toml", data_root, role="student", teacher=teacher_run,
                          loss="rdc = 100.0\nrsc = 10.0")
    result = bench_train_step(str(config), [], steps=1, warmup=0, out=str(tmp_path / "bench"))
    seconds = result["seconds"]
    assert set(PHASES) | {"render_backward", "step"} <= set(seconds)
    parts = sum(seconds[k] for k in PHASES if k not in ("data",))
    assert 0 < parts <= seconds["step"] * 1.05
    assert 0 < result["rendering_share"] < 1
    assert result["rays_per_sample"] == 2 * 64


def test_diagnose_reports_voxels_termination_semantics_lss_depth_and_images(data_root, teacher_run, capsys):
    from radocc.diagnose import _images, main

    run = teacher_run.parent / "run"
    assert main([str(teacher_run), "--checkpoint", str(run / "best.pt"), "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_samples"] == 2
    # the ground-truth column counts every camera-visible voxel of the val split's labels
    from radocc.data import NuScenesOccDataset
    voxels = result["voxels"]
    val = NuScenesOccDataset(data_root, "v1.0-mini", "val")
    visible = sum(int(val[i]["mask_camera"].sum()) for i in range(len(val)))
    assert sum(v["gt"] for v in voxels.values()) == visible
    assert sum(v["gt"] for v in voxels.values()) == sum(v["pred"] for v in voxels.values())
    assert all(v["hits"] <= min(v["gt"], v["pred"]) for v in voxels.values())
    # "real" images give the evaluation's mIoU
    from radocc.evaluate import main as evaluate
    assert evaluate([str(teacher_run), "--checkpoint", str(run / "best.pt"), "--no-progress", "--json",
                     "--no-rayiou"]) == 0
    assert result["images"]["real"] == pytest.approx(json.loads(capsys.readouterr().out)["mIoU"], nan_ok=True)
    for name in ("rendered", "raw"):
        t = result["termination"][name]
        assert t["rays"] > 0 and 0 <= t["mass_at_lidar"] <= 1 and 0 <= t["never_terminated"] <= 1
    assert result["lss_depth"]["pixels"] > 0 and result["lss_depth"]["median_guess_abs_rel"] > 0
    sem = result["semantics"]  # the data root has segments, so RSC to the labels is measured
    assert sem["rays"] > 0 and sum(v["rays"] for v in sem["per_class"].values()) == sem["rays"]
    assert 0 <= sem["right"] <= 100 and 0 <= sem["rsc_to_labels"] <= 2
    # the image inputs: one colour per image; each camera gets its neighbour's image
    images = torch.rand(1, 3, 3, 4, 5)
    flat = _images(images, "mean_colour")
    assert torch.allclose(flat[0, 1, :, 0, 0], images[0, 1].mean(dim=(-2, -1)))
    assert flat.std(dim=(-2, -1)).max() < 1e-6
    assert torch.equal(_images(images, "neighbour_camera")[0, 1], images[0, 0])
    assert main([str(teacher_run), "--checkpoint", str(run / "best.pt"), "--tolerance", "0"]) == 2
    assert "tolerance" in capsys.readouterr().err


def test_diagnose_semantics_counts_rays_whose_rendered_class_is_the_labels():
    from radocc.diagnose import _semantics
    from radocc.metrics import OccupancyMIoU

    names = OccupancyMIoU().class_names
    road, sidewalk = names.index("driveable_surface"), names.index("sidewalk")
    truth = torch.tensor([road, road, sidewalk, 0])
    said = torch.tensor([road, sidewalk, sidewalk, 1])
    sem = _semantics(truth, said, names)
    assert sem["rays"] == 4 and sem["right"] == pytest.approx(50.0)
    assert sem["ground"] == pytest.approx(200 / 3) and sem["objects"] == pytest.approx(0.0)
    assert sem["per_class"]["driveable_surface"] == {"rays": 2, "right": pytest.approx(50.0)}
    assert sem["per_class"]["sidewalk"]["right"] == pytest.approx(100.0)
    assert set(sem["per_class"]) == {"driveable_surface", "sidewalk", "others"}
    empty = _semantics(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), names)
    assert empty["rays"] == 0 and empty["right"] is None and empty["per_class"] == {}
