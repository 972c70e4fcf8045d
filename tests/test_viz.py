"""python -m radocc.viz: every subcommand on the tiny synthetic dataset with tiny random models
(PNG sizes, the drawn content), the figure builders, and segment_affinity (RSC's matrix)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tiny import SCALES, write_tiny_config

torch.set_num_threads(1)

HEIGHT, WIDTH = SCALES["occ3d"]["image_size"]  # the configs' image size


@pytest.fixture(scope="module")
def runs(synthetic_root, module_tmp) -> dict[str, Path]:
    """A data root with felzenszwalb segments, and a tiny random teacher (fusion) and RadOcc
    student (camera) saved as checkpoints; the student's config names the teacher."""
    from radocc.checkpoint import save_checkpoint
    from radocc.config import load_config
    from radocc.models import build_model
    from radocc.segments import main as segments_main

    folder = module_tmp
    root = folder / "root"
    shutil.copytree(synthetic_root, root)
    assert segments_main(["--data-root", str(root), "--fallback", "felzenszwalb", "--no-progress"]) == 0
    out = {"root": root}
    for name in ("teacher", "student"):
        student = name == "student"
        config = write_tiny_config(
            folder / f"tiny-{name}.toml", role=name, scale="occ3d", root=root,
            teacher=(out["teacher.toml"], out["teacher.pt"]) if student else None,
            loss=f"rdc = {1.0 if student else 0.0}\nrsc = 0.0",
            extra="[render]\ndepth_bins = [1.0, 45.0, 2.0]")
        torch.manual_seed(len(name))
        model = build_model(load_config(config).model)
        save_checkpoint(folder / f"{name}.pt", {"model": model.state_dict()})
        out[f"{name}.toml"], out[f"{name}.pt"] = config, folder / f"{name}.pt"
    return out


def _viz(*args: str) -> int:
    from radocc.viz import main

    return main([str(a) for a in args])


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _student_args(runs: dict[str, Path]) -> list:
    return ["--config", runs["student.toml"], "--checkpoint", runs["student.pt"]]


@pytest.fixture(scope="module")
def sample(runs):
    """(student config, batched val sample 0 with segments, the two models, teacher first)."""
    from radocc.config import load_config
    from radocc.viz_data import load_models, load_sample

    config = load_config(runs["student.toml"])
    batch = load_sample(config, "val", 0, segments=True)
    models = load_models(config, runs["student.pt"], None, None, torch.device("cpu"))
    return config, batch, models


# ----------------------------------------------------------------------------- the subcommands
def test_segments_png(runs, tmp_path):
    out = tmp_path / "segments.png"
    assert _viz("segments", "--config", runs["student.toml"], "--out", out) == 0
    image = _png(out)
    panel_h = round(400 * HEIGHT / WIDTH)
    assert image.shape == (40 + 2 * (panel_h + 30), 3 * 410 + 10, 3)
    # The first panel (CAM_FRONT_LEFT) is the overlay of that camera, pixel for pixel.
    from radocc.config import load_config
    from radocc.viz import segment_overlay
    from radocc.viz_data import load_sample

    batch = load_sample(load_config(runs["student.toml"]), "val", 0, segments=True)
    cam = [Path(f).parent.name for f in batch["image_files"][0]].index("CAM_FRONT_LEFT")
    picture = (batch["images"][0, cam].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    expected = segment_overlay(picture, batch["segments"][0, cam].numpy())
    top = 40 + 22  # title band + title
    crop = image[top:top + panel_h, 10:410]  # 400 x 240 px showing the 160 x 96 picture
    # The drawn pixel at the centre of each picture pixel (2.5 x 2.5 drawn pixels each).
    rows = ((np.arange(HEIGHT) + 0.5) * panel_h / HEIGHT).astype(int)
    cols = ((np.arange(WIDTH) + 0.5) * 400 / WIDTH).astype(int)
    assert (crop[rows][:, cols] == expected).all(axis=-1).mean() > 0.95


def test_occupancy_png_ground_truth_panel_is_bev_labels(runs, tmp_path):
    from radocc.config import load_config
    from radocc.occ3d import FREE
    from radocc.viz import bev_labels, colorize_labels
    from radocc.viz_data import load_sample

    out = tmp_path / "occupancy.png"
    assert _viz("occupancy", *_student_args(runs), "--out", out) == 0
    image = _png(out)
    assert image.shape == (40 + 2 * 460 + 60, 3 * 460 + 20, 3)  # ground truth, teacher, student
    batch = load_sample(load_config(runs["student.toml"]), "val", 0)
    visible = np.where(batch["mask_camera"][0].numpy(), batch["semantics"][0].numpy(), FREE)
    expected = colorize_labels(bev_labels(visible))  # [200, 200, 3]
    assert (expected != 255).any(), "the fixture's ground truth has occupied visible voxels"
    # The BEV sits at (55, 65) from the top-left, 2 x 2 px per column; check the centre pixel of
    # each 2 x 2 block away from the frame and the ego marker.
    bev = image[65:465, 55:455][::2, ::2]
    rows, cols = np.meshgrid(np.arange(2, 198), np.arange(2, 198), indexing="ij")
    away = (np.abs(rows - 100) > 6) | (np.abs(cols - 100) > 6)
    same = (bev[rows, cols] == expected[rows, cols]).all(-1)
    assert same[away].all(), f"{(~same[away]).sum()} BEV cells differ from bev_labels"


def test_occupancy_region_all_and_ground_truth_only(runs, tmp_path):
    out = tmp_path / "gt.png"
    assert _viz("occupancy", "--config", runs["teacher.toml"], "--region", "all", "--out", out) == 0
    assert _png(out).shape == (40 + 2 * 460 + 60, 460 + 20, 3)  # the ground truth alone


def test_render_png(runs, tmp_path):
    out = tmp_path / "render.png"
    assert _viz("render", *_student_args(runs), "--stride", "4", "--ground-truth",
                "--out", out) == 0
    height = round(260 * HEIGHT / WIDTH)
    columns = 1 + 2 * 3  # image, then depth and semantics of ground truth, teacher, student
    assert _png(out).shape == (50 + 6 * (height + 8) + 70, columns * 268 + 40, 3)
    one = tmp_path / "front.png"
    assert _viz("render", *_student_args(runs), "--camera", "CAM_FRONT", "--out", one) == 0
    assert _png(one).shape == (50 + (height + 8) + 70, 5 * 268 + 40, 3)


def test_termination_png(runs, tmp_path):
    out = tmp_path / "termination.png"
    assert _viz("termination", *_student_args(runs), "--camera", "CAM_BACK", "--pixel", "80", "60",
                "--ground-truth", "--out", out) == 0
    assert _png(out).shape == (460, 1300, 3)


def test_affinity_png(runs, tmp_path):
    out = tmp_path / "affinity.png"
    assert _viz("affinity", *_student_args(runs), "--stride", "4", "--max-segments", "12",
                "--out", out) == 0
    assert _png(out).shape == (500, 420 * 4 + 20, 3)  # image, teacher, student, difference


def test_sample_subcommand_and_the_old_form(runs, tmp_path):
    for args in (["sample"], []):
        out = tmp_path / f"sample{len(args)}.png"
        assert _viz(*args, "--data-root", runs["root"], "--height", "90", "--width", "160",
                    "--out", out) == 0
        assert _png(out).shape == (2 * 90 + 240, 3 * 160, 3)


@pytest.mark.parametrize("args, message", [
    (["render", "--camera", "CAM_NOPE"], "--camera must be one of"),
    (["termination", "--pixel", "500", "10"], "--pixel must lie in the 160 x 96 image"),
    (["occupancy", "--index", "99"], "--index must be in"),
    (["render", "--stride", "0"], "--stride must be >= 1"),
])
def test_bad_input_is_a_clear_error(runs, tmp_path, capsys, args, message):
    assert _viz(*args[:1], *_student_args(runs), *args[1:], "--out", tmp_path / "x.png") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_missing_teacher_checkpoint_is_named(runs, tmp_path, capsys):
    assert _viz("occupancy", *_student_args(runs), "--teacher-checkpoint", tmp_path / "none.pt",
                "--out", tmp_path / "x.png") == 2
    assert "teacher checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the arrays drawn
def test_ground_truth_renders_at_the_lidar_depth(sample):
    """The labels rendered through the cameras stop where the LiDAR returns (the ray and camera
    conventions of the pictures agree with the data)."""
    from radocc.data.targets import project_points
    from radocc.viz_data import ground_truth_logits, render_cameras

    config, batch, _ = sample
    logits = ground_truth_logits(batch["semantics"], config.model.num_classes)
    render = render_cameras(config, logits, batch, [0, 3], stride=1)
    assert render.depth.shape == (2, HEIGHT, WIDTH)
    points = batch["points"][0, : int(batch["num_points"][0])]
    cam, uv, _, distance = project_points(points, batch["intrinsics"][0], batch["cam2ego"][0],
                                          (HEIGHT, WIDTH))
    errors = []
    for index, camera in enumerate((0, 3)):
        mine = cam == camera
        col, row = uv[mine].round().long().unbind(-1)
        hit = render.opacity[index][row, col] > 0.5
        errors.append(np.abs(render.depth[index][row, col] - distance[mine].numpy())[hit])
    errors = np.concatenate(errors)
    assert len(errors) > 200
    # The render stops at the middle of the first occupied voxel crossed (of 0.4 m, longer along
    # grazing rays), the LiDAR at the surface: within a voxel or so.
    assert np.median(errors) < 1.0 and (errors < 2.0).mean() > 0.8, np.percentile(errors, [50, 80])


def test_termination_is_a_distribution_peaking_at_the_lidar_return(sample):
    from radocc.viz_data import ground_truth_logits, lidar_depth_at, predict, ray_termination

    config, batch, models = sample
    pixel = (80.0, 70.0)  # below the horizon of CAM_FRONT: the road
    depth = lidar_depth_at(batch, 0, pixel, radius=3)
    assert depth is not None and 1.0 < depth < 45.0
    labels = ground_truth_logits(batch["semantics"], config.model.num_classes)
    edges, probs = ray_termination(config, labels, batch, 0, pixel)
    assert edges.shape == (23,) and probs.shape == (23,)  # 22 bins of 2 m + never terminated
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    peak = probs[:-1].argmax()
    assert edges[peak] - 2.0 <= depth <= edges[peak + 1] + 2.0
    for model in models:
        _, p = ray_termination(config, predict(model, batch), batch, 0, pixel)
        assert p.sum() == pytest.approx(1.0, abs=1e-5) and (p >= 0).all()


def test_lidar_pixel_near_is_a_lidar_return_near_the_pixel(sample):
    from radocc.viz_data import lidar_depth_at, lidar_pixel_near

    _, batch, _ = sample
    centre = (79.5, 47.5)
    u, v = lidar_pixel_near(batch, 0, centre)
    assert lidar_depth_at(batch, 0, (u, v), radius=0.01) is not None  # a point projects there
    from radocc.data.targets import project_points

    cam, uv, _, _ = project_points(batch["points"][0, : int(batch["num_points"][0])],
                                   batch["intrinsics"][0], batch["cam2ego"][0], (96, 160))
    distances = (uv[cam == 0] - torch.tensor(centre)).norm(dim=-1)
    assert len(distances) > 1  # a choice to make
    assert float(torch.tensor([u - centre[0], v - centre[1]]).norm()) == pytest.approx(
        float(distances.min()), abs=1e-4)  # no return projects nearer the centre
    empty = dict(batch, num_points=torch.zeros_like(batch["num_points"]))
    assert lidar_pixel_near(empty, 0, centre) is None


def test_termination_figure_draws_the_whole_distribution():
    from matplotlib.patches import Rectangle, StepPatch

    from radocc.pictures import termination_figure

    edges = np.arange(1.0, 46.0, 2.0)  # 22 bins
    rng = np.random.default_rng(0)
    dists = [(name, p / p.sum()) for name, p in (("teacher (t)", rng.random(23)),
                                                 ("student (s)", rng.random(23)))]
    fig = termination_figure(np.zeros((96, 160, 3), np.uint8), (10, 20), edges, dists,
                             lidar_depth=12.0, camera="CAM_FRONT")
    plot, miss = fig.axes[1], fig.axes[2]
    steps = [p for p in plot.patches if isinstance(p, StepPatch)]
    bars = [p for p in miss.patches if isinstance(p, Rectangle)]
    assert len(steps) == len(bars) == 2
    for step, bar, (_, p) in zip(steps, bars, dists):
        np.testing.assert_allclose(step.get_data().edges, edges)
        assert step.get_data().values.sum() + bar.get_height() == pytest.approx(1.0)
    assert [line.get_xdata()[0] for line in plot.lines] == [12.0]  # the LiDAR return
    with pytest.raises(ValueError, match="D \\+ 1 = 23"):
        termination_figure(np.zeros((96, 160, 3), np.uint8), (10, 20), edges,
                           [("x", np.ones(22) / 22)])


def test_camera_affinity_diagonal_and_rsc(sample):
    from radocc.losses import rsc_loss
    from radocc.viz_data import camera_affinity, predict

    config, batch, models = sample
    results = [camera_affinity(config, predict(m, batch), batch, 0, stride=2) for m in models]
    (teacher, t_features, ids), (student, s_features, _) = results
    count = len(torch.unique(ids[ids > 0]))
    assert teacher.matrix.shape == student.matrix.shape == (count, count) and count >= 5
    np.testing.assert_allclose(np.diagonal(teacher.matrix), 1.0, atol=1e-5)
    np.testing.assert_allclose(student.matrix, student.matrix.T, atol=1e-6)
    assert (teacher.matrix >= -1e-6).all()  # rendered class probabilities are non-negative
    # The RSC loss of these rays is the mean |difference| of the two matrices.
    loss = rsc_loss(s_features, t_features, ids, mode="affinity")
    assert float(loss) == pytest.approx(np.abs(student.matrix - teacher.matrix).mean(), rel=1e-4)
    # The largest segments only: a sub-matrix of the full one, rows in increasing id.
    top, _, _ = camera_affinity(config, predict(models[0], batch), batch, 0, stride=2, max_segments=4)
    assert len(top.ids) == 4 and (np.diff(top.ids) > 0).all()
    rows = np.searchsorted(teacher.ids, top.ids)
    np.testing.assert_allclose(top.matrix, teacher.matrix[np.ix_(rows, rows)], atol=1e-6)
    sizes = np.bincount(ids[ids > 0].numpy())
    assert sizes[top.ids].min() >= np.sort(sizes)[-4]


def test_segment_affinity_matches_a_reference():
    from radocc.losses import rsc_loss, segment_affinity

    g = torch.Generator().manual_seed(0)
    features = torch.rand(2, 30, 5, generator=g)
    ids = torch.randint(0, 6, (2, 30), generator=g) * 7  # sparse ids, 0 = none
    ids[1, ids[1] == 14] = 0
    out = segment_affinity(features, ids)
    for b in range(2):
        present = sorted(set(ids[b].tolist()) - {0})
        assert out.ids[b][out.present[b]].tolist() == present
        means = torch.stack([features[b][ids[b] == i].mean(0) for i in present])
        unit = means / means.norm(dim=-1, keepdim=True)
        k = len(present)
        torch.testing.assert_close(out.matrix[b, :k, :k], unit @ unit.T)
        assert (out.matrix[b, k:] == 0).all()
    teacher = torch.rand(2, 30, 3, generator=g)
    t = segment_affinity(teacher, ids)
    mask = out.present[:, :, None] & out.present[:, None, :]
    per_item = ((out.matrix - t.matrix).abs() * mask).sum((1, 2)) / mask.sum((1, 2))
    torch.testing.assert_close(rsc_loss(features, teacher, ids), per_item.mean())
    with pytest.raises(ValueError, match="segment_ids must be >= 0"):
        segment_affinity(features, -ids)


def test_segment_overlay():
    from radocc.viz import segment_colours, segment_overlay

    image = np.full((4, 6, 3), 100, np.uint8)
    ids = np.zeros((4, 6), np.int64)
    ids[:, 3:] = 2
    out = segment_overlay(image, ids, alpha=0.5)
    assert (out[:, :2] == 100).all()  # no segment, no boundary: unchanged
    assert (out[:, 2] == 255).all()  # the boundary with segment 2 is white
    expected = np.round(0.5 * 100 + 0.5 * segment_colours(3)[2].astype(float))
    assert (out[:3, 3:5] == expected).all()
    with pytest.raises(ValueError, match="segments must be"):
        segment_overlay(image, ids[:, :5])


def test_pictures_ignore_global_matplotlib_style(runs, tmp_path):
    """nuscenes-devkit's map API changes matplotlib's global rcParams (grids, greys); the pictures
    must not change with them."""
    import matplotlib

    first, second = tmp_path / "a.png", tmp_path / "b.png"
    assert _viz("occupancy", *_student_args(runs), "--out", first) == 0
    with matplotlib.rc_context({"axes.grid": True, "axes.edgecolor": ".8", "image.cmap": "Greys"}):
        assert _viz("occupancy", *_student_args(runs), "--out", second) == 0
    assert np.array_equal(_png(first), _png(second))
