"""python -m radocc.viz map: the input images and the ground-truth / teacher / baseline / student
vectors over the BEV patch (MapDistill's Fig. 4), on the tiny synthetic dataset with tiny random
map models; and the figure builder (sizes, where each vector is drawn, class colours)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_map_train import write_map_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runs(synthetic_root, module_tmp) -> dict[str, Path]:
    """A tiny random fusion map teacher, a baseline student and a MapDistill student (whose
    config names the teacher), saved as checkpoints."""
    from radocc.checkpoint import save_checkpoint
    from radocc.config import load_config
    from radocc.models import build_map_model

    folder = module_tmp
    out: dict[str, Path] = {}
    for name in ("teacher", "baseline", "mapdistill"):
        teacher = (out["teacher.toml"], out["teacher.pt"]) if name == "mapdistill" else None
        config = write_map_config(folder / f"{name}.toml", synthetic_root,
                                  role="teacher" if name == "teacher" else "student", teacher=teacher,
                                  distill=("relation = 0.0\nfeature_bev = 1.0\nfeature_decoder = 0.0\n"
                                           "head_cls = 0.0\nhead_pts = 0.0") if teacher else "")
        torch.manual_seed(len(name))
        model = build_map_model(load_config(config).map_model)
        save_checkpoint(folder / f"{name}.pt", {"model": model.state_dict(), "config": {"task": "map"}})
        out[f"{name}.toml"], out[f"{name}.pt"] = config, folder / f"{name}.pt"
    return out


def _viz(*args) -> int:
    from radocc.viz import main

    return main([str(a) for a in args])


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _args(runs: dict[str, Path], *extra) -> list:
    return ["map", "--config", runs["mapdistill.toml"], "--checkpoint", runs["mapdistill.pt"],
            "--baseline-config", runs["baseline.toml"], "--baseline-checkpoint", runs["baseline.pt"],
            *extra]


def _class_pixels(panel: np.ndarray) -> np.ndarray:
    """[3] how many pixels of the panel have each class colour."""
    from radocc.pictures import MAP_PALETTE

    return np.array([(panel == colour).all(-1).sum() for colour in MAP_PALETTE])


def _layout(runs, panels: int):
    from radocc.config import load_config
    from radocc.pictures import map_figure_layout

    config = load_config(runs["mapdistill.toml"])
    return map_figure_layout(panels, tuple(config.data.image_size), len(config.data.cameras))


def test_map_png_draws_ground_truth_where_it_is(runs, tmp_path):
    from radocc.config import load_config
    from radocc.pictures import MAP_PALETTE
    from radocc.viz_data import ground_truth_vectors, load_sample

    out = tmp_path / "map.png"
    assert _viz(*_args(runs, "--score-threshold", "0", "--out", out)) == 0
    image = _png(out)
    layout = _layout(runs, 4)  # ground truth, teacher, baseline, MapDistill student
    assert image.shape == (layout["size"][1], layout["size"][0], 3)
    truth = ground_truth_vectors(load_sample(load_config(runs["mapdistill.toml"]), "val", 0,
                                             vectors=True))
    assert len(truth.labels) > 0, "the fixture's sample has map elements"
    left, top, width, height = layout["bev"][0]
    hits, total = np.zeros(3), np.zeros(3)
    for line, label in zip(truth.lines, truth.labels):
        for x, y in line:  # the line's own vertices, away from the patch border
            if abs(x) > 14 or abs(y) > 29:
                continue
            col, row = left + (x + 15) / 30 * width, top + (30 - y) / 60 * height
            window = image[int(row) - 2:int(row) + 3, int(col) - 2:int(col) + 3]
            hits[label] += (window == MAP_PALETTE[label]).all(-1).any()
            total[label] += 1
    assert total.sum() > 0
    # x right, y forward-up: the vertices lie on their class's colour (a line of another class
    # drawn later may cover a few: ped crossings end on the road boundary)
    present = total > 0
    assert hits.sum() >= 0.8 * total.sum() and (hits[present] > 0).all(), (hits, total)
    # ground truth only where it exists; with threshold 0 every model draws its top 50
    gt_pixels = _class_pixels(image[top:top + height, left:left + width])
    assert ((gt_pixels > 0) == present).all(), gt_pixels
    for left, top, width, height in layout["bev"][1:]:
        assert _class_pixels(image[top:top + height, left:left + width]).sum() > 100


def test_map_png_score_threshold_and_optional_baseline(runs, tmp_path):
    out = tmp_path / "map.png"
    # no baseline: ground truth, teacher (from the config's [teacher]) and student; a threshold of
    # 1 keeps no prediction (sigmoid scores are < 1), so the model panels show no vector
    assert _viz("map", "--config", runs["mapdistill.toml"], "--checkpoint", runs["mapdistill.pt"],
                "--score-threshold", "1", "--out", out) == 0
    image = _png(out)
    layout = _layout(runs, 3)
    assert image.shape == (layout["size"][1], layout["size"][0], 3)
    left, top, width, height = layout["bev"][0]
    assert _class_pixels(image[top:top + height, left:left + width]).sum() > 0
    for left, top, width, height in layout["bev"][1:]:
        assert _class_pixels(image[top:top + height, left:left + width]).sum() == 0


def test_map_figure_checks_its_panels():
    from radocc.pictures import map_figure

    images = {"CAM_FRONT": np.zeros((16, 32, 3), np.uint8)}
    with pytest.raises(ValueError, match="at least one"):
        map_figure(images, [])
    with pytest.raises(ValueError, match="2 lines but 1 labels"):
        map_figure(images, [("gt", [np.zeros((2, 2))] * 2, np.array([0]))])
    with pytest.raises(ValueError, match="class ids"):
        map_figure(images, [("gt", [np.zeros((2, 2))], np.array([3]))])


def test_map_bad_arguments_are_named(runs, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert _viz("map", "--config", runs["mapdistill.toml"], "--checkpoint", runs["mapdistill.pt"],
                "--baseline-config", runs["baseline.toml"], "--out", out) == 2
    assert "--baseline-config and --baseline-checkpoint go together" in capsys.readouterr().err
    assert _viz(*_args(runs, "--score-threshold", "1.5", "--out", out)) == 2
    assert "--score-threshold must be in [0, 1]" in capsys.readouterr().err
    assert _viz(*_args(runs, "--top-k", "0", "--out", out)) == 2
    assert "--top-k must be >= 1" in capsys.readouterr().err
    assert _viz("map", "--config", runs["mapdistill.toml"], "--checkpoint", tmp_path / "none.pt",
                "--out", out) == 2
    assert "does not exist" in capsys.readouterr().err
    occupancy = Path(__file__).parents[1] / "configs" / "synthetic" / "student.toml"
    assert _viz("map", "--config", occupancy, "--out", out) == 2
    assert "must be a map config" in capsys.readouterr().err
    assert not out.exists()


def test_predict_vectors_top_k_and_threshold(runs):
    from radocc.config import load_config
    from radocc.viz_data import load_sample, load_viz_model, predict_vectors

    model = load_viz_model(runs["teacher.toml"], runs["teacher.pt"], torch.device("cpu"))
    batch = load_sample(load_config(runs["teacher.toml"]), "val", 0, vectors=True)
    top = predict_vectors(model, batch, 0.0, top_k=3)
    assert len(top.lines) == 3 and top.lines[0].shape == (20, 2) and len(top.labels) == 3
    assert (np.diff(top.scores) <= 0).all()  # descending
    every = predict_vectors(model, batch, 0.0)
    assert len(every.labels) == 24  # top 50 capped at 8 queries x 3 classes
    np.testing.assert_allclose(every.scores[:3], top.scores)
    kept = predict_vectors(model, batch, float(every.scores[5]))
    assert len(kept.labels) >= 6 and (kept.scores >= every.scores[5]).all()
    for line in every.lines:  # metres inside the patch (the head's sigmoid points)
        assert (np.abs(line[:, 0]) <= 15 + 1e-4).all() and (np.abs(line[:, 1]) <= 30 + 1e-4).all()
