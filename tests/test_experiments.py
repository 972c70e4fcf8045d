"""The ablation and demo runners on the tiny synthetic dataset: results files, resumability, mean/std."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# The real configs/synthetic/*.toml, shrunk to seconds per run (every run gets these overrides).
TINY = [
    "data.image_size=[96, 160]", 'data.cameras=["CAM_FRONT", "CAM_BACK"]', "data.num_workers=0",
    "data.max_val_samples=1",
    "model.fusion_channels=16", "model.grid_shape=[200, 200, 16]",
    "model.camera.neck_channels=16", "model.camera.depth_bins=[1.0, 41.0, 4.0]",
    "model.camera.context_channels=8",
    "model.lidar.voxel_size=[0.8, 0.8, 0.8]", "model.lidar.point_range=[-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]",
    "model.lidar.base_channels=8", "model.lidar.stage_channels=[16]", "model.lidar.out_channels=16",
    "model.bev_encoder.channels=[8, 16, 16]", "model.bev_encoder.out_channels=16",
    "model.head.hidden_channels=16",
    "render.rays_per_image=64", "render.depth_bins=[1.0, 41.0, 2.0]",
    "optim.warmup_iters=2", "train.epochs=1", "train.log_every=1", "train.image_every=0",
]


@pytest.fixture(scope="module")
def data_root(synthetic_root, tmp_path_factory) -> str:
    """A copy of the session's synthetic dataset with felzenszwalb segments (RSC needs them)."""
    from radocc.segments import main as segments_main

    root = tmp_path_factory.mktemp("experiments_data") / "root"
    shutil.copytree(synthetic_root, root)
    assert segments_main(["--data-root", str(root), "--fallback", "felzenszwalb", "--no-progress"]) == 0
    return str(root)


def _args(data_root: str) -> list[str]:
    return ["--data-root", data_root, *[a for s in TINY for a in ("--set", s)]]


@pytest.fixture(scope="module")
def ablation(data_root, module_tmp) -> Path:
    from radocc.experiments import main

    out = module_tmp / "ablation"
    assert main(["ablation", "--seeds", "1", "--out", str(out), "--variants", "baseline", "rdc_rsc",
                 *_args(data_root)]) == 0
    return out


def test_ablation_writes_results(ablation):
    payload = json.loads((ablation / "results.json").read_text())
    assert list(payload["summary"]) == ["teacher", "pretrain", "baseline", "rdc_rsc"]
    assert payload["seeds"] == 1 and payload["wall_s"] > 0 and payload["command"].startswith("python -m")
    for variant, entry in payload["summary"].items():
        assert entry["seeds"] == [0]
        run = json.loads((ablation / "seed0" / variant / "eval.json").read_text())
        assert entry["mIoU"]["mean"] == pytest.approx(run["mIoU"]) and entry["mIoU"]["std"] == 0.0
        assert 0.0 <= run["mIoU"] <= 100.0 and "RayIoU" in run and run["depth"]["abs_rel"] >= 0
        assert (ablation / "seed0" / variant / "last.pt").is_file()
    # the students distilled from this seed's teacher run, and every student (the baseline too)
    # started from this seed's pretrained camera model; the runs from scratch did not
    config = (ablation / "seed0" / "rdc_rsc" / "config.toml").read_text()
    assert str(ablation / "seed0" / "teacher" / "last.pt") in config
    start = f'init_from = "{ablation / "seed0" / "pretrain" / "last.pt"}"'
    for variant in ("baseline", "rdc_rsc"):
        assert start in (ablation / "seed0" / variant / "config.toml").read_text(), variant
    for variant in ("teacher", "pretrain"):
        assert 'init_from = ""' in (ablation / "seed0" / variant / "config.toml").read_text(), variant
    table = (ablation / "results.md").read_text()
    for label in ("teacher (camera + LiDAR)", "baseline student (camera)", "+ RDC + RSC (RadOcc, RSC weight 10)",
                  "mIoU (camera mask, %)", "RayIoU", "AbsRel", "wall time", "machine"):
        assert label in table


def test_ablation_is_resumable(ablation, data_root, monkeypatch):
    import radocc.train
    from radocc.experiments import main

    calls: list[list[str]] = []
    real = radocc.train.main
    monkeypatch.setattr(radocc.train, "main", lambda argv: calls.append(list(argv)) or real(argv))
    before = {p: p.stat().st_mtime_ns for p in ablation.rglob("last.pt")}
    args = ["ablation", "--seeds", "1", "--out", str(ablation), "--variants", "baseline", "rdc_rsc",
            *_args(data_root)]
    assert main(args) == 0
    assert calls == []  # finished runs (eval.json present) are not redone
    assert before == {p: p.stat().st_mtime_ns for p in ablation.rglob("last.pt")}
    # an interrupted run (no eval.json yet) continues from its last.pt and is evaluated again
    (ablation / "seed0" / "baseline" / "eval.json").unlink()
    assert main(args) == 0
    assert len(calls) == 1 and calls[0][calls[0].index("--resume") + 1].endswith("baseline/last.pt")
    assert (ablation / "seed0" / "baseline" / "eval.json").is_file()


def test_summarise_mean_and_sample_std():
    from radocc.experiments import summarise

    runs = [{"seed": s, "mIoU": m, "RayIoU": r, "depth": {"abs_rel": a}}
            for s, m, r, a in [(0, 10.0, 5.0, 0.2), (1, 20.0, 7.0, 0.4), (2, 30.0, None, 0.3)]]
    entry = summarise({"baseline": runs})["baseline"]
    assert entry["seeds"] == [0, 1, 2]
    assert entry["mIoU"]["mean"] == pytest.approx(20.0) and entry["mIoU"]["std"] == pytest.approx(10.0)
    assert entry["RayIoU"]["mean"] == pytest.approx(6.0)  # a missing value is left out
    assert entry["RayIoU"]["std"] == pytest.approx(math.sqrt(2.0))
    assert entry["AbsRel"]["mean"] == pytest.approx(0.3) and entry["AbsRel"]["std"] == pytest.approx(0.1)
    assert "mIoU_vs_baseline" not in entry


def test_summarise_pairs_each_variant_with_the_baseline_of_its_seed():
    from radocc.experiments import summarise

    def run(seed, miou):
        return {"seed": seed, "mIoU": miou, "RayIoU": 1.0, "depth": {"abs_rel": 0.1}}

    summary = summarise({"baseline": [run(0, 10.0), run(1, 20.0)],
                         "rdc": [run(1, 21.0), run(0, 13.0), run(2, 50.0)]})  # seed 2: no pair
    paired = summary["rdc"]["mIoU_vs_baseline"]
    assert paired["values"] == pytest.approx([1.0, 3.0])
    assert paired["mean"] == pytest.approx(2.0) and paired["std"] == pytest.approx(math.sqrt(2.0))
    assert "mIoU_vs_baseline" not in summary["baseline"]


def test_summarise_pairs_within_a_data_order_then_averages_per_seed():
    from radocc.experiments import summarise

    def run(seed, order, miou):
        return {"seed": seed, "order": order, "mIoU": miou, "RayIoU": 1.0, "depth": {"abs_rel": 0.1}}

    summary = summarise({"baseline": [run(0, 0, 10.0), run(0, 1, 12.0), run(1, 0, 20.0), run(1, 1, 20.0)],
                         "rdc": [run(0, 0, 13.0), run(0, 1, 13.0), run(1, 0, 21.0), run(1, 1, 23.0)]})
    paired = summary["rdc"]["mIoU_vs_baseline"]
    assert paired["pairs"] == pytest.approx([3.0, 1.0, 1.0, 3.0])  # order k against order k
    assert paired["values"] == pytest.approx([2.0, 2.0]) and paired["std"] == pytest.approx(0.0)
    assert summary["baseline"]["seeds"] == [0, 1]
    assert summary["baseline"]["mIoU"]["values"] == pytest.approx([11.0, 20.0])
    assert summary["baseline"]["mIoU_order_std"]["values"] == pytest.approx([math.sqrt(2.0), 0.0])
    assert summary["rdc"]["mIoU_order_std"]["mean"] == pytest.approx(math.sqrt(2.0) / 2)


def test_orders_fine_tune_each_student_again_with_other_data_orders(tmp_path, monkeypatch):
    import radocc.experiments as experiments

    calls = []

    def fake_run(variant, seed, out, data_root=None, overrides=(), teacher_run=None,
                 pretrain_run=None, budget="demo"):
        calls.append((variant, out.name, list(overrides)))
        order = int(out.name.split("-order")[1]) if "-order" in out.name else 0
        return {"seed": seed, "mIoU": 10.0 + (variant == "rdc") + order, "RayIoU": 5.0,
                "depth": {"abs_rel": 0.5}}

    monkeypatch.setattr(experiments, "run_variant", fake_run)
    with pytest.raises(ValueError, match="orders"):
        experiments.run_ablation(tmp_path, seeds=1, orders=0)
    assert experiments.main(["ablation", "--out", str(tmp_path), "--seeds", "1", "--first-seed", "2",
                             "--variants", "baseline", "rdc", "--orders", "3", "--set", "a=1"]) == 0
    assert calls == [("teacher", "teacher", ["a=1"]), ("pretrain", "pretrain", ["a=1"]),
                     ("baseline", "baseline", ["a=1"]),
                     ("baseline", "baseline-order1", ["a=1", "seed=1002"]),
                     ("baseline", "baseline-order2", ["a=1", "seed=2002"]),
                     ("rdc", "rdc", ["a=1"]), ("rdc", "rdc-order1", ["a=1", "seed=1002"]),
                     ("rdc", "rdc-order2", ["a=1", "seed=2002"])]
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["orders"] == 3 and [r["order"] for r in payload["runs"]["rdc"]] == [0, 1, 2]
    assert payload["summary"]["rdc"]["mIoU_vs_baseline"]["pairs"] == pytest.approx([1.0, 1.0, 1.0])
    text = (tmp_path / "results.md").read_text()
    assert "mIoU std over data orders" in text and "| +1.00 | +1.00 ± 0.00 | 1.00 |" in text


def test_demo_writes_results_and_pictures(data_root, ablation, tmp_path):
    from radocc.experiments import main

    out = tmp_path / "demo"
    # the demo's teacher is a finished run: copy the ablation's (same seed and budget)
    shutil.copytree(ablation / "seed0" / "teacher", out / "teacher")
    assert main(["demo", "--out", str(out), *_args(data_root)]) == 0
    payload = json.loads((out / "results.json").read_text())
    for key in ("teacher", "pretrain", "baseline", "radocc"):
        result = payload[key]
        assert 0.0 <= result["mIoU"] <= 100.0 and "RayIoU" in result and "abs_rel" in result["depth"]
        assert len(result["IoU"]) == 17
    assert isinstance(payload["ordering_holds"], bool)
    assert "RadOcc" in (out / "results.md").read_text()
    # the demo budget's RadOcc: RDC 9, RSC 10 into the semantics only
    config = (out / "radocc" / "config.toml").read_text()
    assert "\nrdc = 9.0\n" in config and "\nrsc = 10.0\n" in config
    assert "\nrsc_semantics_only = true\n" in config
    for name in ("segments", "occupancy_radocc", "occupancy_baseline", "render", "termination", "affinity"):
        assert (out / f"{name}.png").stat().st_size > 1000, name


def test_bad_arguments_are_named(tmp_path):
    from radocc.experiments import run_ablation, run_variant

    with pytest.raises(ValueError, match="seeds"):
        run_ablation(tmp_path, seeds=0)
    with pytest.raises(ValueError, match="first_seed"):
        run_ablation(tmp_path, seeds=1, first_seed=-1)
    with pytest.raises(ValueError, match="variant"):
        run_variant("nope", 0, tmp_path)
    with pytest.raises(ValueError, match="pretrain_run"):
        run_variant("baseline", 0, tmp_path)


def test_first_seed_runs_held_out_seeds(tmp_path, monkeypatch):
    import radocc.experiments as experiments

    calls = []

    def fake_run(variant, seed, out, data_root=None, overrides=(), teacher_run=None,
                 pretrain_run=None, budget="demo"):
        calls.append((variant, seed, out, teacher_run))
        return {"seed": seed, "mIoU": 10.0 + seed, "RayIoU": 5.0, "depth": {"abs_rel": 0.5}}

    monkeypatch.setattr(experiments, "run_variant", fake_run)
    payload = experiments.run_ablation(tmp_path, seeds=2, first_seed=3, variants=["baseline"])
    assert [(v, s) for v, s, _, _ in calls] == [(v, s) for s in (3, 4)
                                                for v in ("teacher", "pretrain", "baseline")]
    assert calls[2][2] == tmp_path / "seed3" / "baseline"
    assert calls[2][3] == tmp_path / "seed3" / "teacher"
    assert payload["first_seed"] == 3 and payload["summary"]["baseline"]["seeds"] == [3, 4]
    assert payload["summary"]["baseline"]["mIoU"]["mean"] == pytest.approx(13.5)
    assert "2 seed(s) (3, 4)" in (tmp_path / "results.md").read_text()
    payload = experiments.run_ablation(tmp_path, seeds=2, first_seed=3, variants=["baseline", "rdc"])
    assert payload["summary"]["rdc"]["mIoU_vs_baseline"]["values"] == pytest.approx([0.0, 0.0])
    assert "| +0.00 / +0.00 | +0.00 ± 0.00 |" in (tmp_path / "results.md").read_text()


def test_teacher_overrides_reach_the_teacher_only(tmp_path, monkeypatch):
    import radocc.experiments as experiments

    seen = {}

    def fake_run(variant, seed, out, data_root=None, overrides=(), teacher_run=None,
                 pretrain_run=None, budget="demo"):
        seen[variant] = list(overrides)
        return {"seed": seed, "mIoU": 10.0, "RayIoU": 5.0, "depth": {"abs_rel": 0.5}}

    monkeypatch.setattr(experiments, "run_variant", fake_run)
    assert experiments.main(["ablation", "--out", str(tmp_path), "--seeds", "1", "--variants", "rdc",
                             "--set", "loss.depth=1.0", "--teacher-set", "train.epochs=24"]) == 0
    assert seen["teacher"] == ["loss.depth=1.0", "train.epochs=24"]
    assert seen["pretrain"] == seen["rdc"] == ["loss.depth=1.0"]
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["teacher_overrides"] == ["train.epochs=24"]


# budget -> (teacher epochs, pretrain epochs, lr from scratch, validation every, BEV channels)
BUDGET_FACTS = {"demo": (20, 15, 3e-3, 0, 32), "short": (8, 8, 2e-3, 8, 64), "long": (16, 64, 2e-3, None, 64)}


@pytest.mark.parametrize("budget", list(BUDGET_FACTS))
def test_budget_reaches_each_role_and_a_run_keeps_its_budget(budget, tmp_path, monkeypatch):
    import radocc.experiments as experiments

    seen = {}

    def fake_train(config_file, sets, out, variant, seed, budget=None):
        seen[variant] = list(sets)
        result = {"seed": seed, "variant": variant, "mIoU": 10.0, "RayIoU": 5.0,
                  "depth": {"abs_rel": 0.5}, "budget": budget}
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(experiments, "_train_and_evaluate", fake_train)
    chosen = [] if budget == "demo" else ["--budget", budget]  # demo is the default
    assert experiments.main(["ablation", *chosen, "--out", str(tmp_path), "--seeds", "1",
                             "--variants", "baseline", "rdc", "--set", "train.log_every=3"]) == 0
    from radocc.config import load_config

    configs = {v: load_config(experiments.CONFIGS / experiments.VARIANTS[v][0], seen[v])
               for v in seen}
    teacher_epochs, pretrain_epochs, lr, val_every, channels = BUDGET_FACTS[budget]
    depth = 0.0 if budget == "short" else 1.0
    assert configs["teacher"].train.epochs == teacher_epochs and configs["teacher"].loss.depth == 0.0
    assert configs["pretrain"].train.epochs == pretrain_epochs and configs["pretrain"].loss.depth == depth
    assert configs["teacher"].optim.lr == configs["pretrain"].optim.lr == lr
    for student in ("baseline", "rdc"):
        assert configs[student].train.epochs == 4 and configs[student].loss.depth == depth
        assert configs[student].optim.lr == 5e-4
        assert configs[student].train.init_from == str(tmp_path / "seed0" / "pretrain" / "last.pt")
    for name, config in configs.items():
        assert config.model.bev_encoder.out_channels == channels, name
        if val_every is not None and name in experiments.FROM_SCRATCH:
            assert config.train.val_every == val_every, name
    assert configs["rdc"].loss.rdc == 9.0 and all(c.train.log_every == 3 for c in configs.values())
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["budget"] == budget and f"budget '{budget}'" in (tmp_path / "results.md").read_text()
    # the finished runs keep their budget: reusing them with another is refused
    other = "long" if budget == "demo" else "demo"
    with pytest.raises(ValueError, match=f"budget.*{budget}"):
        experiments.run_ablation(tmp_path, seeds=1, variants=["baseline"], budget=other)
    with pytest.raises(ValueError, match="budget"):
        experiments.run_variant("teacher", 0, tmp_path / "x", budget="medium")
    with pytest.raises(SystemExit):  # argparse names the choices
        experiments.main(["ablation", "--budget", "medium"])


def test_rsc_semantics_only_variant_is_radocc_with_rsc_kept_off_the_density():
    from radocc.config import load_config
    from radocc.experiments import CONFIGS, VARIANTS

    def config(variant):
        file, sets, _ = VARIANTS[variant]
        return load_config(CONFIGS / file, list(sets))

    paper, semantics = config("rdc_rsc"), config("rdc_rsc_sem")
    assert not paper.loss.rsc_semantics_only and semantics.loss.rsc_semantics_only
    assert (semantics.loss.rdc, semantics.loss.rsc, semantics.loss.rsc_mode) == (
        paper.loss.rdc, paper.loss.rsc, paper.loss.rsc_mode) == (9.0, 10.0, "affinity")
