"""``python -m radocc.experiments map`` on the tiny synthetic dataset: the runs it trains (map
teacher, students distilling from it, the multi-task student with its occupancy teacher), the
results files, resumability, mean / std."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# The real configs/synthetic/*.toml shrunk to seconds per run: the occupancy sizes of
# test_experiments.py (the multi-task student and its occupancy teacher) and tiny map sizes.
TINY = [
    "data.image_size=[96, 160]", 'data.cameras=["CAM_FRONT", "CAM_BACK"]', "data.num_workers=0",
    "data.max_val_samples=1",
    "model.fusion_channels=16", "model.camera.neck_channels=16",
    "model.camera.depth_bins=[1.0, 41.0, 4.0]", "model.camera.context_channels=8",
    "model.lidar.voxel_size=[0.8, 0.8, 0.8]", "model.lidar.base_channels=8",
    "model.lidar.stage_channels=[16]", "model.lidar.out_channels=16",
    "model.bev_encoder.channels=[8, 16, 16]", "model.bev_encoder.out_channels=16",
    "model.head.hidden_channels=16",
    "render.rays_per_image=64", "render.depth_bins=[1.0, 41.0, 2.0]",
    "map_model.bev_shape=[20, 10]", "map_model.bev_channels=16",
    "map_model.camera.neck_channels=16", "map_model.camera.depth_bins=[1.0, 33.0, 4.0]",
    "map_model.camera.context_channels=16", "map_model.gkt.ffn_channels=32",
    "map_model.lidar.voxel_size=[1.5, 1.5, 2.0]", "map_model.lidar.base_channels=8",
    "map_model.lidar.stage_channels=[8, 16]", "map_model.lidar.out_channels=16",
    "map_model.lidar.max_voxels=5000",
    "map_model.head.num_vectors=8", "map_model.head.embed_dims=16",
    "map_model.head.ffn_channels=32", "map_loss.relation_patch_size=2",
    "optim.warmup_iters=2", "train.epochs=1", "train.log_every=1", "train.image_every=0",
]
VARIANTS = ("baseline", "head", "mapdistill", "multitask")


@pytest.fixture(scope="module")
def data_root(synthetic_root, tmp_path_factory) -> str:
    """A copy of the session's synthetic dataset with felzenszwalb segments (RSC needs them)."""
    from radocc.segments import main as segments_main

    root = tmp_path_factory.mktemp("experiments_map_data") / "root"
    shutil.copytree(synthetic_root, root)
    assert segments_main(["--data-root", str(root), "--fallback", "felzenszwalb", "--no-progress"]) == 0
    return str(root)


def _args(data_root: str, out: Path, *variants: str) -> list[str]:
    return ["map", "--seeds", "1", "--out", str(out), "--variants", *variants,
            "--data-root", data_root, *[a for s in TINY for a in ("--set", s)]]


@pytest.fixture(scope="module")
def experiment(data_root, module_tmp) -> Path:
    from radocc.experiments import main

    out = module_tmp / "map_experiments"
    assert main(_args(data_root, out, *VARIANTS)) == 0
    return out


def test_map_experiment_writes_results(experiment):
    payload = json.loads((experiment / "results.json").read_text())
    assert list(payload["summary"]) == ["teacher", *VARIANTS]
    assert payload["seeds"] == 1 and payload["wall_s"] > 0 and payload["command"].startswith("python -m")
    for variant, entry in payload["summary"].items():
        run = json.loads((experiment / "seed0" / variant / "eval.json").read_text())
        assert entry["seeds"] == [0] and run["variant"] == variant and run["num_samples"] == 1
        assert entry["mAP"]["mean"] == pytest.approx(run["mAP"]) and entry["mAP"]["std"] == 0.0
        assert 0.0 <= run["mAP"] <= 100.0 and set(run["AP"]) == {"divider", "ped_crossing", "boundary"}
        ap = run["AP"]["boundary"]
        assert entry["boundary"]["mean"] == pytest.approx(sum(ap.values()) / len(ap))
        state = torch.load(experiment / "seed0" / variant / "last.pt", map_location="cpu",
                           weights_only=False)
        assert state["config"]["seed"] == 0 and state["epoch"] == 1  # the tiny budget won
    # the multi-task student also reports its occupancy head; the others have no mIoU
    assert 0.0 <= payload["summary"]["multitask"]["mIoU"]["mean"] <= 100.0
    assert payload["summary"]["baseline"]["mIoU"]["mean"] is None  # NaN -> null in strict JSON
    table = (experiment / "results.md").read_text()
    for label in ("teacher (camera + LiDAR fusion)", "baseline student", "MapDistill student",
                  "multi-task student", "Loss ablation", "mAP (%)", "wall time", "machine"):
        assert label in table
    # the ablation table: the baseline row has no loss ticked, "head" one, MapDistill all three
    ablation = table[table.index("Loss ablation"):].splitlines()
    rows = [line for line in ablation if line.startswith("| ")]
    ticks = [line.count("✓") for line in rows[1:]]
    assert ticks == [0, 1, 3], rows


def test_students_distil_from_this_seeds_teachers(experiment):
    from radocc.config import load_config

    seed = experiment / "seed0"
    teacher = str(seed / "teacher" / "last.pt")
    baseline = load_config(seed / "baseline" / "config.toml")
    assert not baseline.distills and baseline.map_loss.distill_weights() == {}
    head = load_config(seed / "head" / "config.toml")
    assert head.teacher.checkpoint == teacher
    assert set(head.map_loss.distill_weights()) == {"head_cls", "head_pts"}
    mapdistill = load_config(seed / "mapdistill" / "config.toml")
    assert set(mapdistill.map_loss.distill_weights()) == {"relation", "feature_bev", "feature_decoder",
                                                          "head_cls", "head_pts"}
    multi = load_config(seed / "multitask" / "config.toml")
    assert multi.task == "multi" and multi.map_teacher.checkpoint == teacher
    # RDC + RSC from the occupancy teacher trained in this seed's folder
    assert multi.teacher.checkpoint == str(seed / "occupancy_teacher" / "last.pt")
    assert multi.loss.rdc > 0 and multi.loss.rsc > 0
    assert json.loads((seed / "occupancy_teacher" / "eval.json").read_text())["mIoU"] >= 0
    # one vector ground-truth cache shared by the runs
    assert len(list((experiment / "vector_cache").iterdir())) >= 2
    assert not (seed / "baseline" / "vector_cache").exists()


def test_map_experiment_is_resumable(experiment, data_root, monkeypatch):
    import radocc.train
    from radocc.experiments import main

    calls: list[list[str]] = []
    real = radocc.train.main
    monkeypatch.setattr(radocc.train, "main", lambda argv: calls.append(list(argv)) or real(argv))
    before = {p: p.stat().st_mtime_ns for p in experiment.rglob("last.pt")}
    args = _args(data_root, experiment, *VARIANTS)
    assert main(args) == 0
    assert calls == []  # finished runs (eval.json present) are not redone
    assert before == {p: p.stat().st_mtime_ns for p in experiment.rglob("last.pt")}
    (experiment / "seed0" / "head" / "eval.json").unlink()
    assert main(args) == 0
    assert len(calls) == 1 and calls[0][calls[0].index("--resume") + 1].endswith("head/last.pt")
    assert (experiment / "seed0" / "head" / "eval.json").is_file()


def test_report_only_tabulates_finished_runs_without_training(experiment, data_root, tmp_path,
                                                              monkeypatch):
    import radocc.train
    from radocc.experiments import main

    monkeypatch.setattr(radocc.train, "main", lambda argv: pytest.fail(f"trained {argv}"))
    out = tmp_path / "partial"
    shutil.copytree(experiment, out)
    (out / "seed0" / "head" / "eval.json").unlink()  # an unfinished run
    assert main(_args(data_root, out, *VARIANTS) + ["--seeds", "2", "--report-only"]) == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["complete"] is False and payload["runs_s"] > 0
    assert payload["summary"]["head"]["seeds"] == [] and payload["summary"]["baseline"]["seeds"] == [0]
    table = (out / "results.md").read_text()
    assert "NOT complete" in table and "| none |" in table and "| 0 |" in table
    assert not (out / "seed1").exists()  # nothing was started for the missing seed


def test_occupancy_teachers_of_another_experiment_are_reused(experiment, data_root, tmp_path):
    from radocc.experiments import main

    out = tmp_path / "map"
    shutil.copytree(experiment / "seed0" / "teacher", out / "seed0" / "teacher")
    ablation = tmp_path / "ablation"
    shutil.copytree(experiment / "seed0" / "occupancy_teacher", ablation / "seed0" / "teacher")
    assert main(_args(data_root, out, "multitask") + ["--occupancy-teachers", str(ablation)]) == 0
    from radocc.config import load_config

    multi = load_config(out / "seed0" / "multitask" / "config.toml")
    assert multi.teacher.checkpoint == str(ablation / "seed0" / "teacher" / "last.pt")
    assert not (out / "seed0" / "occupancy_teacher").exists()
    # a missing occupancy teacher is named, not a crash inside training
    assert main(_args(data_root, tmp_path / "other", "multitask")
                + ["--occupancy-teachers", str(tmp_path / "nowhere")]) == 2


def test_summarise_map_mean_and_sample_std():
    from radocc.experiments import summarise_map

    def run(seed, m, divider, train_s, miou=None):
        ap = {"divider": {"0.5": divider, "1.0": divider + 2, "1.5": divider + 4},
              "ped_crossing": {"0.5": 0.0, "1.0": 0.0, "1.5": 0.0}}
        return {"seed": seed, "mAP": m, "AP": ap, "train_s": train_s, "mIoU": miou}

    entry = summarise_map({"mapdistill": [run(0, 10.0, 1.0, 60.0), run(1, 20.0, 3.0, 80.0),
                                          run(2, 30.0, 5.0, 70.0, miou=4.0)]})["mapdistill"]
    assert entry["seeds"] == [0, 1, 2]
    assert entry["mAP"]["mean"] == pytest.approx(20.0) and entry["mAP"]["std"] == pytest.approx(10.0)
    assert entry["divider"]["mean"] == pytest.approx(5.0)  # class AP = mean over the thresholds
    assert entry["divider"]["std"] == pytest.approx(2.0)
    assert math.isnan(entry["boundary"]["mean"])  # no AP for the class
    assert entry["mIoU"]["mean"] == pytest.approx(4.0) and entry["mIoU"]["std"] == 0.0
    assert entry["train_s"]["mean"] == pytest.approx(70.0)


def test_bad_map_arguments_are_named(tmp_path):
    from radocc.experiments import run_map, run_map_variant

    with pytest.raises(ValueError, match="seeds"):
        run_map(tmp_path, seeds=0)
    with pytest.raises(ValueError, match="variants"):
        run_map(tmp_path, seeds=1, variants=["nope"])
    with pytest.raises(ValueError, match="variant"):
        run_map_variant("nope", 0, tmp_path)
    with pytest.raises(ValueError, match="teacher_run"):
        run_map_variant("mapdistill", 0, tmp_path / "run")
