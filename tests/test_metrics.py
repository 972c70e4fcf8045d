"""Tests of radocc.metrics and the radocc.evaluate_occ CLI (CPU, a few seconds)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from radocc import evaluate_occ
from radocc.metrics import (
    OCC3D_CLASSES, OCC3D_SHAPE, DepthMetrics, OccupancyMIoU, RayIoU, depth_metrics,
    lidar_ray_directions, select_lidar_origins,
)

REPO = Path(__file__).resolve().parents[1]
FREE = 17
CAR, MANMADE, BARRIER, DRIVEABLE = 4, 15, 1, 11


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The metrics loop over many small tensor ops, where intra-op threads only add overhead (and
    spin badly on a loaded 2-core machine): run this module single-threaded, then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same_result(a: dict, b: dict) -> None:
    """Equal metric dicts, nan == nan, nested dicts compared key by key."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert_same_result(a[k], b[k])
        elif isinstance(a[k], float) and math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert a[k] == pytest.approx(b[k], abs=1e-9), k


def random_sample(gen: torch.Generator, shape=(20, 20, 4)):
    gt = torch.randint(0, 18, shape, generator=gen)
    # Prediction = gt with a third of the voxels relabelled, so every IoU is strictly between 0, 1.
    noise = torch.randint(0, 18, shape, generator=gen)
    pred = torch.where(torch.rand(shape, generator=gen) < 0.33, noise, gt)
    mask = torch.rand(shape, generator=gen) < 0.7
    return pred, gt, mask


# ----------------------------------------------------------------------------- mIoU
def test_class_names_in_index_order():
    assert len(OCC3D_CLASSES) == 18
    assert OCC3D_CLASSES[0] == "others" and OCC3D_CLASSES[4] == "car"
    assert OCC3D_CLASSES[11] == "driveable_surface" and OCC3D_CLASSES[17] == "free"


def test_miou_hand_computed_confusion():
    gt = torch.tensor([0, 0, 0, 1, 1, FREE, FREE, FREE]).reshape(2, 2, 2)
    pred = torch.tensor([0, 0, 1, 1, FREE, FREE, 0, FREE]).reshape(2, 2, 2)
    m = OccupancyMIoU(use_camera_mask=False)
    m.update(pred, gt)
    expected = torch.zeros(18, 18, dtype=torch.int64)
    expected[0, 0], expected[0, 1], expected[1, 1] = 2, 1, 1
    expected[1, FREE], expected[FREE, FREE], expected[FREE, 0] = 1, 2, 1
    assert torch.equal(m.confusion, expected)  # rows gt, columns pred

    r = m.compute()
    # others: TP 2 / (3 gt + 3 pred - 2); barrier: 1 / (2 + 2 - 1); the free voxel predicted as
    # "others" and the barrier voxel predicted free both count against the class.
    assert r["IoU"]["others"] == pytest.approx(50.0)
    assert r["IoU"]["barrier"] == pytest.approx(100 / 3)
    assert r["mIoU"] == pytest.approx((50.0 + 100 / 3) / 2)  # absent classes (nan) left out
    assert math.isnan(r["IoU"]["bus"])
    assert "free" not in r["IoU"] and len(r["IoU"]) == 17


def test_miou_camera_mask_excludes_voxels():
    gt = torch.tensor([0, 0, 0, 1, 1, FREE, FREE, FREE])
    pred = torch.tensor([0, 0, 1, 1, FREE, FREE, 0, FREE])
    mask = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.uint8)  # hides voxels 2 and 6
    m = OccupancyMIoU()
    m.update(pred, gt, mask)
    r = m.compute()
    assert r["IoU"]["others"] == pytest.approx(100.0)  # 2 / (2 + 2 - 2)
    assert r["IoU"]["barrier"] == pytest.approx(50.0)  # 1 / (2 + 1 - 1)
    assert r["mIoU"] == pytest.approx(75.0)
    assert int(m.confusion.sum()) == 6


def test_miou_free_occupied_confusions_lower_iou():
    gt = torch.tensor([CAR, CAR, FREE, FREE])
    m = OccupancyMIoU(use_camera_mask=False)
    m.update(torch.tensor([CAR, CAR, CAR, FREE]), gt)  # a free voxel predicted as car
    assert m.compute()["IoU"]["car"] == pytest.approx(200 / 3)
    m.reset()
    m.update(torch.tensor([CAR, FREE, FREE, FREE]), gt)  # a car voxel predicted free
    assert m.compute()["IoU"]["car"] == pytest.approx(50.0)
    assert m.compute()["mIoU"] == pytest.approx(50.0)


def test_miou_is_one_global_matrix_not_a_mean_over_samples():
    m = OccupancyMIoU(use_camera_mask=False)
    m.update(torch.tensor([CAR]), torch.tensor([CAR]))  # sample IoU 1
    m.update(torch.full((3,), FREE), torch.full((3,), CAR))  # sample IoU 0
    assert m.compute()["IoU"]["car"] == pytest.approx(25.0)  # 1 / (4 + 1 - 1), not 50


def test_miou_without_camera_mask_ignores_the_mask():
    m = OccupancyMIoU(use_camera_mask=False)
    m.update(torch.tensor([CAR, FREE]), torch.tensor([CAR, CAR]), torch.tensor([True, False]))
    assert m.compute()["IoU"]["car"] == pytest.approx(50.0)


def test_miou_batched_equals_unbatched():
    gen = torch.Generator().manual_seed(0)
    samples = [random_sample(gen) for _ in range(3)]
    one_by_one, batched = OccupancyMIoU(), OccupancyMIoU()
    for pred, gt, mask in samples:
        one_by_one.update(pred, gt, mask)
    batched.update(*(torch.stack(x) for x in zip(*samples)))
    assert torch.equal(one_by_one.confusion, batched.confusion)
    r = batched.compute()
    assert_same_result(one_by_one.compute(), r)
    assert 0 < r["mIoU"] < 100


def test_miou_numpy_and_torch_inputs_agree():
    gen = torch.Generator().manual_seed(1)
    pred, gt, mask = random_sample(gen, (2, 10, 10, 4))
    from_torch, from_numpy = OccupancyMIoU(), OccupancyMIoU()
    from_torch.update(pred, gt.to(torch.uint8), mask)
    from_numpy.update(pred.numpy().astype(np.uint8), gt.numpy().astype(np.int32),
                      mask.numpy().astype(np.uint8))
    assert torch.equal(from_torch.confusion, from_numpy.confusion)
    assert_same_result(from_torch.compute(), from_numpy.compute())


def test_miou_reset_forgets():
    m = OccupancyMIoU(use_camera_mask=False)
    m.update(torch.tensor([CAR]), torch.tensor([FREE]))
    m.reset()
    m.update(torch.tensor([CAR]), torch.tensor([CAR]))
    assert m.compute()["mIoU"] == pytest.approx(100.0)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(pred=np.zeros((2, 2, 2), np.uint8), gt=np.zeros((2, 2, 3), np.uint8)), ValueError,
     r"pred and gt must have the same shape"),
    (dict(mask_camera=np.ones((2, 2), bool)), ValueError, r"mask_camera and gt must have"),
    (dict(pred=np.full((2, 2, 2), 18, np.uint8)), ValueError, r"pred has labels in \[18, 18\]"),
    (dict(gt=-np.ones((2, 2, 2), np.int64)), ValueError, r"gt has labels .* outside \[0, 18\)"),
    (dict(pred=np.zeros((2, 2, 2), np.float32)), TypeError, r"pred must hold integer"),
    (dict(gt=torch.zeros(2, 2, 2, dtype=torch.bool)), TypeError, r"gt must hold integer"),
    (dict(pred=[[0, 1]]), TypeError, r"pred must be a numpy array or a torch tensor"),
    (dict(mask_camera=np.ones((2, 2, 2), np.float32)), TypeError, r"mask_camera must be bool"),
    (dict(mask_camera=np.full((2, 2, 2), 2, np.uint8)), ValueError, r"mask_camera .* \{0, 1\}"),
    (dict(mask_camera=None), ValueError, r"mask_camera is required"),
])
def test_miou_bad_input(kwargs, error, match):
    args = dict(pred=np.zeros((2, 2, 2), np.uint8), gt=np.zeros((2, 2, 2), np.uint8),
                mask_camera=np.ones((2, 2, 2), bool))
    args.update(kwargs)
    m = OccupancyMIoU()
    with pytest.raises(error, match=match):
        m.update(**args)
    assert int(m.confusion.sum()) == 0  # nothing half-added


def test_miou_bad_constructor_arguments():
    with pytest.raises(ValueError, match="free_index"):
        OccupancyMIoU(free_index=18)
    with pytest.raises(ValueError, match="class_names"):
        OccupancyMIoU(num_classes=3, free_index=2, class_names=("a", "b"))


# ----------------------------------------------------------------------------- RayIoU
def test_lidar_ray_directions_follow_sparseocc():
    dirs = lidar_ray_directions()
    assert dirs.shape[1] == 3 and dirs.shape[0] % 360 == 0
    assert torch.allclose(dirs.norm(dim=1), torch.ones(dirs.shape[0], dtype=torch.float64))
    pitch = torch.asin(dirs[::360, 2])
    assert pitch[0] == pytest.approx(-math.pi / 4)
    assert pitch[9] == pytest.approx(-(math.pi / 2 - math.atan(10)))
    steps = pitch[10:] - pitch[9:-1]
    assert torch.allclose(steps, steps[0].expand_as(steps))  # the last increment, repeated
    assert float(pitch[-2]) < 0.21 <= float(pitch[-1])
    assert dirs[1].tolist() == pytest.approx(  # azimuth 1 degree, pitch -45 degrees
        [math.cos(math.radians(1)) / math.sqrt(2), math.sin(math.radians(1)) / math.sqrt(2),
         -1 / math.sqrt(2)])


def test_select_lidar_origins_filters_and_spreads():
    xs = torch.arange(10, dtype=torch.float64)
    origins = torch.stack([xs, xs, torch.zeros(10, dtype=torch.float64)], 1)
    far = torch.tensor([[39.5, 0.0, 0.0], [0.0, -39.0, 0.0]], dtype=torch.float64)
    picked = select_lidar_origins(torch.cat([origins[:5], far, origins[5:]]))
    # round(linspace(0, 9, 8)) = 0 1 3 4 5 6 8 9, after dropping the two outside |x|, |y| < 39
    assert picked[:, 0].tolist() == [0, 1, 3, 4, 5, 6, 8, 9]
    assert select_lidar_origins(origins[:3].numpy()).shape == (3, 3)
    with pytest.raises(ValueError, match=r"lidar_origins has no origin"):
        select_lidar_origins(far)
    with pytest.raises(ValueError, match=r"lidar_origins must be \[M, 3\]"):
        select_lidar_origins(torch.zeros(4, 2))


# A 20 x 20 x 4 m box of 0.5 m voxels; rays along +x, -x and +y from one origin.
SMALL = dict(lower=(0.0, 0.0, 0.0), upper=(20.0, 20.0, 4.0),
             directions=torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
ORIGIN = torch.tensor([[2.1, 10.2, 2.3]])


def wall_scene(x_index: int, label: int = MANMADE) -> torch.Tensor:
    grid = torch.full((40, 40, 8), FREE, dtype=torch.uint8)
    grid[x_index] = label  # a wall across the whole box at x = 0.5 * x_index
    return grid


def test_rayiou_perfect_prediction():
    m = RayIoU(**SMALL)
    m.update(wall_scene(20), wall_scene(20), ORIGIN)
    r = m.compute()
    assert r["RayIoU"] == r["RayIoU@1"] == r["RayIoU@2"] == r["RayIoU@4"] == 100.0
    assert r["IoU@1"]["manmade"] == 100.0 and math.isnan(r["IoU@1"]["car"])
    assert "free" not in r["IoU@2"]
    # only the +x ray counts: the other two leave the box (gt free) and are dropped
    assert m.gt_count.tolist() == [0] * MANMADE + [1, 0, 0]


def test_rayiou_shifted_wall_counts_only_at_larger_thresholds():
    m = RayIoU(**SMALL)
    m.update(wall_scene(23), wall_scene(20), ORIGIN)  # the wall 1.5 m too far: 9.9 m vs 8.4 m
    r = m.compute()
    assert r["RayIoU@1"] == 0.0
    assert r["RayIoU@2"] == 100.0 and r["RayIoU@4"] == 100.0
    assert r["RayIoU"] == pytest.approx(200 / 3)


def test_rayiou_right_depth_wrong_class_scores_zero():
    m = RayIoU(**SMALL)
    m.update(wall_scene(20, BARRIER), wall_scene(20), ORIGIN)
    r = m.compute()
    assert r["IoU@4"]["manmade"] == 0.0 and r["IoU@4"]["barrier"] == 0.0
    assert r["RayIoU"] == 0.0


def test_rayiou_ignores_rays_whose_gt_is_free():
    pred = wall_scene(20)
    pred[1] = CAR  # behind the origin (-x ray) and a car on the +y ray: gt has nothing there
    pred[4, 30] = CAR
    m = RayIoU(**SMALL)
    m.update(pred, wall_scene(20), ORIGIN)
    assert m.compute()["RayIoU"] == 100.0
    assert int(m.pred_count[CAR]) == 0


def test_rayiou_accumulates_and_resets():
    m = RayIoU(**SMALL)
    m.update(wall_scene(20), wall_scene(20), ORIGIN)
    m.update(torch.full((40, 40, 8), FREE), wall_scene(20), ORIGIN)  # misses the wall
    assert m.compute()["IoU@1"]["manmade"] == 50.0  # TP 1 / (2 gt + 1 pred - 1)
    m.reset()
    m.update(wall_scene(20), wall_scene(20), ORIGIN)
    assert m.compute()["RayIoU"] == 100.0


def test_rayiou_occ3d_default_geometry():
    gt = torch.full((200, 200, 16), FREE, dtype=torch.uint8)
    gt[:, :, 0] = DRIVEABLE  # ground
    gt[150:152] = MANMADE  # a wall at x = 20 m
    pred = gt.clone()
    origins = np.array([[0.9, 0.0, 1.8], [-5.0, 3.0, 1.8]])
    m = RayIoU()
    m.update(pred.numpy(), gt.numpy(), origins)
    assert m.compute()["RayIoU"] == 100.0
    assert int(m.gt_count[DRIVEABLE]) > 1000 and int(m.gt_count[MANMADE]) > 1000

    pred[150:152] = FREE
    pred[154:156] = MANMADE  # 1.6 m further: every wall ray is off by >= 1.6 m
    m = RayIoU()
    m.update(pred, gt, origins)
    r = m.compute()
    assert r["IoU@1"]["manmade"] == 0.0
    assert 0.0 < r["IoU@2"]["manmade"] < r["IoU@4"]["manmade"] < 100.0
    assert r["RayIoU@1"] < r["RayIoU@2"] < r["RayIoU@4"]


def march(labels: torch.Tensor, lower, upper, origins: torch.Tensor, dirs: torch.Tensor,
          step: float = 1e-3, length: float = 12.0):
    """Brute force, independent of radocc.raycast: dense samples every `step` metres along each ray
    [R]; returns where the ray enters and leaves its first occupied voxel (metres, quantised to
    `step`) and that voxel's label (free when it hits nothing, then entry = exit = 0)."""
    lo = torch.tensor(lower, dtype=torch.float64)
    n = torch.tensor(labels.shape)
    size = (torch.tensor(upper, dtype=torch.float64) - lo) / n
    t = torch.arange(0, length, step, dtype=torch.float64)
    unit = dirs / dirs.norm(dim=1, keepdim=True)
    cell = ((origins[:, None] + t[None, :, None] * unit[:, None] - lo) / size).floor().long()
    inside = ((cell >= 0) & (cell < n)).all(-1)
    c = torch.minimum(cell.clamp_min(0), n - 1)
    label = labels[c[..., 0], c[..., 1], c[..., 2]].long()
    occupied = (label != FREE) & inside
    first = occupied.float().argmax(1)
    rows = torch.arange(dirs.shape[0])
    left = (t[None] > t[first, None]) & (cell != cell[rows, first][:, None]).any(-1)
    hit = occupied.any(1)
    return t[first], t[left.float().argmax(1)], torch.where(hit, label[rows, first], FREE)


def ray_tp_counts(gt_rays, pred_rays, thresholds, cls: int) -> tuple[list[int], float]:
    """TP counts of class `cls` per threshold from (depth, label) of gt and prediction rays, and
    the smallest gap between a TP ray's depth error and a threshold."""
    (d_gt, l_gt), (d_pred, l_pred) = gt_rays, pred_rays
    err = (d_pred - d_gt).abs()[(l_gt == cls) & (l_pred == cls)]
    gap = min(float((err - t).abs().min()) for t in thresholds)
    return [int((err < t).sum()) for t in thresholds], gap


ROAD_BOX = dict(lower=(0.0, 0.0, 0.0), upper=(10.0, 10.0, 4.0))  # 1 m voxels, 10 x 10 x 4


def road(z_index: int, shape=(10, 10, 4)) -> torch.Tensor:
    grid = torch.full(shape, FREE, dtype=torch.uint8)
    grid[:, :, z_index] = DRIVEABLE
    return grid


def test_rayiou_depth_is_where_the_ray_leaves_the_hit_voxel():
    # The predicted road one voxel too low. Rays descend with slope 0.5 in x per 1 m in z (length
    # sqrt(1.25) per metre of descent s), from z = 3.5: both enter their road 1 m of descent apart
    # (1.118 m). Ray B (x = 2.65 + s / 2) enters the gt road at x = 2.9 and leaves it through x = 3
    # at s = 0.7, but leaves the predicted one through its bottom at s = 2.5: 2.012 m apart.
    # Ray C (x = 1.85 + s / 2) leaves the gt road through its bottom (s = 1.5) and the predicted
    # one through x = 3 (s = 2.3): 0.894 m apart.
    thresholds = (1.0, 1.5, 4.0)
    m = RayIoU(thresholds=thresholds, directions=torch.tensor([[0.5, 0.0, -1.0]]), **ROAD_BOX)
    origins = torch.tensor([[2.65, 5.5, 3.5], [1.85, 5.5, 3.5]], dtype=torch.float64)
    m.update(road(1), road(2), origins)
    assert int(m.gt_count[DRIVEABLE]) == int(m.pred_count[DRIVEABLE]) == 2
    # exit depths: B 0.78 vs 2.80 m, C 1.68 vs 2.57 m (entry depths would give [0, 2, 2])
    assert m.tp_count[:, DRIVEABLE].tolist() == [1, 1, 2]
    r = m.compute()
    assert r["IoU@1"]["driveable_surface"] == pytest.approx(100 / 3)  # TP 1 / (2 + 2 - 1)
    assert r["IoU@4"]["driveable_surface"] == 100.0
    # The same counts from the brute-force march, and different ones from entry depths.
    dirs = torch.tensor([[0.5, 0.0, -1.0]] * 2, dtype=torch.float64)
    g_in, g_out, g_label = march(road(2), **ROAD_BOX, origins=origins, dirs=dirs)
    p_in, p_out, p_label = march(road(1), **ROAD_BOX, origins=origins, dirs=dirs)
    assert g_out.tolist() == pytest.approx([0.7 * 1.25 ** 0.5, 1.5 * 1.25 ** 0.5], abs=2e-3)
    assert p_out.tolist() == pytest.approx([2.5 * 1.25 ** 0.5, 2.3 * 1.25 ** 0.5], abs=2e-3)
    exit_tp, _ = ray_tp_counts((g_out, g_label), (p_out, p_label), thresholds, DRIVEABLE)
    entry_tp, _ = ray_tp_counts((g_in, g_label), (p_in, p_label), thresholds, DRIVEABLE)
    assert exit_tp == [1, 1, 2] and entry_tp == [0, 2, 2]


def test_rayiou_lower_road_matches_a_brute_force_march():
    # 0.5 m voxels; the predicted road one voxel below the true one; rays at pitch -60 and -45
    # degrees every 5 degrees of azimuth from two origins.
    box = dict(lower=(0.0, 0.0, 0.0), upper=(16.0, 16.0, 4.0))
    gt, pred = road(3, (32, 32, 8)), road(2, (32, 32, 8))
    azimuth = torch.deg2rad(torch.arange(0, 360, 5, dtype=torch.float64))
    dirs = torch.cat([torch.stack([math.cos(p) * azimuth.cos(), math.cos(p) * azimuth.sin(),
                                   torch.full_like(azimuth, math.sin(p))], 1)
                      for p in (math.radians(-60), math.radians(-45))])
    origins = torch.tensor([[8.1, 7.7, 3.3], [5.3, 9.45, 3.6]], dtype=torch.float64)
    thresholds = (0.24, 0.655, 1.15)  # in gaps of the depth errors, well clear of the 1 mm steps
    m = RayIoU(thresholds=thresholds, directions=dirs, **box)
    m.update(pred, gt, origins)

    o, d = origins.repeat_interleave(len(dirs), 0), dirs.repeat(len(origins), 1)
    g_in, g_out, g_label = march(gt, **box, origins=o, dirs=d)
    p_in, p_out, p_label = march(pred, **box, origins=o, dirs=d)
    assert (g_label == DRIVEABLE).all() and (p_label == DRIVEABLE).all()  # every ray hits
    exit_tp, gap = ray_tp_counts((g_out, g_label), (p_out, p_label), thresholds, DRIVEABLE)
    assert gap > 5e-3  # the march's 1 mm quantisation cannot flip a count
    assert m.gt_count[DRIVEABLE] == m.pred_count[DRIVEABLE] == len(o)
    assert m.tp_count[:, DRIVEABLE].tolist() == exit_tp
    entry_tp, _ = ray_tp_counts((g_in, g_label), (p_in, p_label), thresholds, DRIVEABLE)
    assert entry_tp != exit_tp  # the test tells the two depths apart


def test_rayiou_origin_inside_an_occupied_voxel_gets_its_exit_distance():
    gt = wall_scene(4)  # x in [2, 2.5]: ORIGIN (x = 2.1) is inside the wall
    pred = wall_scene(6)  # x in [3, 3.5]
    m = RayIoU(**{**SMALL, "thresholds": (0.95, 1.05)})
    m.update(pred, gt, ORIGIN)
    # gt: every ray leaves the origin's wall voxel (+x 0.4 m, -x 0.1 m, +y 0.3 m), so all three
    # count as manmade; pred: only +x meets its wall, leaving it at 1.4 m: 1.0 m from 0.4 m (from
    # 0 m, the entry convention's depth, it would be 0.9 m, a TP at 0.95).
    assert int(m.gt_count[MANMADE]) == 3 and int(m.pred_count[MANMADE]) == 1
    assert m.tp_count[:, MANMADE].tolist() == [0, 1]
    r = m.compute()
    assert r["IoU@0.95"]["manmade"] == 0.0
    assert r["IoU@1.05"]["manmade"] == pytest.approx(100 / 3)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(pred=torch.zeros(40, 40, 7, dtype=torch.uint8)), ValueError, r"pred and gt must have"),
    (dict(pred=torch.zeros(2, 40, 40, 8, dtype=torch.uint8),
          gt=torch.zeros(2, 40, 40, 8, dtype=torch.uint8)), ValueError, r"gt must be one sample"),
    (dict(gt=torch.full((40, 40, 8), 18)), ValueError, r"gt has labels"),
    (dict(pred=torch.zeros(40, 40, 8)), TypeError, r"pred must hold integer"),
    (dict(lidar_origins=[[0.0, 0.0, 0.0]]), TypeError, r"lidar_origins must be a numpy array"),
    (dict(lidar_origins=torch.zeros(1, 3, dtype=torch.long)), TypeError,
     r"lidar_origins must be floating point"),
])
def test_rayiou_bad_input(kwargs, error, match):
    args = dict(pred=wall_scene(20), gt=wall_scene(20), lidar_origins=ORIGIN)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        RayIoU(**SMALL).update(**args)


def test_rayiou_bad_thresholds():
    with pytest.raises(ValueError, match="thresholds"):
        RayIoU(thresholds=(1.0, 0.0))


# ----------------------------------------------------------------------------- depth
def test_depth_metrics_hand_computed():
    pred = np.array([2.0, 4.0, 3.0, 5.0, 7.0])
    target = np.array([2.0, 2.0, 4.0, 0.0, 100.0])  # the last two are invalid (none, too far)
    r = depth_metrics(pred, target, max_depth=80.0)
    assert r["abs_rel"] == pytest.approx((0 + 1 + 0.25) / 3)
    assert r["sq_rel"] == pytest.approx((0 + 2 + 0.25) / 3)
    assert r["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert r["rmse_log"] == pytest.approx(math.sqrt((math.log(2) ** 2 + math.log(0.75) ** 2) / 3))
    # max(p/g, g/p) = 1, 2, 4/3 against 1.25, 1.5625, 1.953
    assert (r["delta1"], r["delta2"], r["delta3"]) == pytest.approx((1 / 3, 2 / 3, 2 / 3))


def test_depth_metrics_clamp_predictions_and_respect_min_depth():
    r = depth_metrics(torch.tensor([0.0, 9.0]), torch.tensor([1.0, 0.2]), min_depth=0.5)
    assert r["abs_rel"] == pytest.approx(0.5)  # pred 0 -> 0.5; target 0.2 < min_depth is ignored


def test_depth_accumulator_pools_pixels():
    gen = torch.Generator().manual_seed(4)
    target = torch.rand(1000, generator=gen) * 60
    pred = target * (1 + 0.3 * torch.randn(1000, generator=gen)).clamp_min(0.1)
    m = DepthMetrics()
    m.update(pred[:300], target[:300])
    m.update(pred[300:].reshape(7, 100), target[300:].reshape(7, 100))
    whole = depth_metrics(pred, target)
    assert m.compute() == pytest.approx(whole)
    assert 0 < whole["delta1"] < whole["delta2"] < whole["delta3"] <= 1


@pytest.mark.parametrize("pred, target, error, match", [
    (torch.ones(3), torch.ones(4), ValueError, r"pred and target must have the same"),
    (torch.ones(3), torch.ones(3, dtype=torch.long), TypeError, r"target must be a floating"),
    (np.ones(3, np.int32), np.ones(3), TypeError, r"pred must be a floating"),
    (torch.ones(3), torch.zeros(3), ValueError, r"target has no valid depth"),
    (torch.tensor([1.0, float("nan")]), torch.ones(2), ValueError, r"pred has non-finite"),
])
def test_depth_metrics_bad_input(pred, target, error, match):
    with pytest.raises(error, match=match):
        depth_metrics(pred, target)


def test_depth_metrics_bad_range():
    with pytest.raises(ValueError, match="min_depth"):
        DepthMetrics(min_depth=0.0)


# ----------------------------------------------------------------------------- distributed
def _dist_worker(rank: int, world: int, init_file: str, out_dir: str, data: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        miou = OccupancyMIoU()
        miou.update(*data["occ"][rank])
        ray = RayIoU(**SMALL)
        ray.update(*data["ray"][rank])
        depth = DepthMetrics()
        depth.update(*data["depth"][rank])
        first = (miou.compute(), ray.compute(), depth.compute())
        second = (miou.compute(), ray.compute(), depth.compute())  # compute() must not mutate
        torch.save({"first": first, "second": second}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_compute_sums_over_ranks(tmp_path):
    gen = torch.Generator().manual_seed(5)
    occ = [random_sample(gen), random_sample(gen)]
    ray = [(wall_scene(20), wall_scene(20), ORIGIN),
           (torch.full((40, 40, 8), FREE), wall_scene(20), ORIGIN)]
    depth = [(torch.tensor([2.0, 4.0]), torch.tensor([2.0, 2.0])),
             (torch.tensor([3.0]), torch.tensor([4.0]))]
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path),
                                 dict(occ=occ, ray=ray, depth=depth)), nprocs=2)

    miou, rayiou, dm = OccupancyMIoU(), RayIoU(**SMALL), DepthMetrics()
    for rank in range(2):
        miou.update(*occ[rank])
        rayiou.update(*ray[rank])
        dm.update(*depth[rank])
    expected = (miou.compute(), rayiou.compute(), dm.compute())
    assert expected[1]["IoU@1"]["manmade"] == 50.0  # differs from either rank alone
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for result, want in zip(got["first"] + got["second"], expected + expected):
            assert_same_result(result, want)


# ----------------------------------------------------------------------------- CLI
# The CLI runs on the session's synthetic v1.0-mini dataset (``synthetic_root`` in conftest.py:
# one scene of mini_train and one of mini_val, 2 samples each). Predictions are written in tmp_path;
# the dataset is only modified on a copy.
VERSION = "v1.0-mini"
TRUCK = 10


@pytest.fixture(scope="module")
def split_gts(synthetic_root):
    """{'mini_train' / 'mini_val': {sample token: (gt semantics, mask_camera)}} in scene then time
    order, found with the devkit and the official splits (independently of radocc.evaluate_occ)."""
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.splits import create_splits_scenes

    nusc = NuScenes(VERSION, dataroot=synthetic_root, verbose=False)
    splits = create_splits_scenes(verbose=False)
    out: dict[str, dict] = {"mini_train": {}, "mini_val": {}}
    for scene in nusc.scene:
        (name,) = [s for s in out if scene["name"] in splits[s]]
        token = scene["first_sample_token"]
        while token:
            with np.load(Path(synthetic_root) / "gts" / scene["name"] / token / "labels.npz") as z:
                out[name][token] = (z["semantics"], z["mask_camera"].astype(bool))
            token = nusc.get("sample", token)["next"]
    assert [len(out["mini_train"]), len(out["mini_val"])] == [2, 2]
    return out


def write_preds(pred_dir: Path, gts: dict, skip: Sequence[str] = ()) -> Path:
    """pred_dir/<token>.npz = the gt semantics of each sample in `gts` (but those in `skip`)."""
    pred_dir.mkdir(parents=True, exist_ok=True)
    for token, (sem, _) in gts.items():
        if token not in skip:
            np.savez(pred_dir / f"{token}.npz", semantics=sem)
    return pred_dir


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = evaluate_occ.main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def run_cli_error(capsys, preds: Path, root, *args: str) -> str:
    rc, out, err = run_cli(capsys, "--pred-dir", preds, "--data-root", root, "--version", VERSION, *args)
    assert rc == 1 and out == ""
    assert err.splitlines()[-1].startswith("evaluate_occ: error: ")  # after tqdm's progress
    return err


def test_split_gt_files_follow_the_devkit_split(synthetic_root, split_gts):
    root = Path(synthetic_root)
    for split, devkit_name in (("val", "mini_val"), ("mini_val", "mini_val"), ("train", "mini_train")):
        name, files = evaluate_occ.split_gt_files(root, VERSION, split)
        assert name == devkit_name
        assert list(files) == list(split_gts[devkit_name])  # the split's samples, in order
        scene = "scene-0103" if devkit_name == "mini_val" else "scene-0061"
        assert files == {t: root / "gts" / scene / t / "labels.npz" for t in split_gts[devkit_name]}
        assert all(p.is_file() for p in files.values())
    with pytest.raises(ValueError, match=r"unknown split 'nope' for v1\.0-mini"):
        evaluate_occ.split_gt_files(root, VERSION, "nope")


def test_cli_perfect_predictions_and_ignored_files(synthetic_root, split_gts, tmp_path, capsys):
    preds = write_preds(tmp_path / "preds", split_gts["mini_val"])
    for token in split_gts["mini_train"]:  # not in the val split: ignored, so never read
        (preds / f"{token}.npz").write_bytes(b"garbage")
    (preds / "stale.npz").write_bytes(b"garbage")
    (preds / "notes.txt").write_text("not a prediction")
    rc, out, err = run_cli(capsys, "--pred-dir", preds, "--data-root", synthetic_root,
                           "--version", VERSION)  # --split defaults to val
    assert rc == 0, err
    lines = out.splitlines()
    counts = sum(np.bincount(sem[mask], minlength=18) for sem, mask in split_gts["mini_val"].values())
    assert 0 < (counts[:17] == 0).sum() < 17  # some classes absent from val: nan
    for c, name in enumerate(OCC3D_CLASSES[:17]):
        line = next(l for l in lines if l.startswith(name + " "))
        assert line.split()[-1] == ("100.00" if counts[c] else "nan"), line
    assert next(l for l in lines if l.startswith("mIoU")).split()[-1] == "100.00"
    assert "(2 samples of split mini_val of v1.0-mini)" in lines
    assert "3 prediction(s) not in the split were ignored" in lines
    assert "no prediction" not in out


def test_cli_one_class_replaced_gives_the_hand_computed_iou(synthetic_root, split_gts, tmp_path,
                                                           capsys):
    gts = split_gts["mini_val"]
    first = next(iter(gts))
    preds = write_preds(tmp_path / "preds", gts)
    sem, mask = gts[first]
    np.savez(preds / f"{first}.npz", semantics=np.where(sem == CAR, TRUCK, sem).astype(np.uint8))
    # Hand count: only voxels inside the camera mask count.
    n_car = sum(int(((s == CAR) & m).sum()) for s, m in gts.values())
    n_truck = sum(int(((s == TRUCK) & m).sum()) for s, m in gts.values())
    k = int(((sem == CAR) & mask).sum())  # car voxels predicted truck
    assert 0 < k < n_car and n_truck > 0
    present = [c for c in range(17) if any(((s == c) & m).any() for s, m in gts.values())]
    car_iou = 100 * (n_car - k) / n_car  # TP n_car - k, gt n_car, pred n_car - k
    truck_iou = 100 * n_truck / (n_truck + k)  # TP n_truck, gt n_truck, pred n_truck + k
    rc, out, err = run_cli(capsys, "--pred-dir", preds, "--data-root", synthetic_root,
                           "--version", VERSION, "--split", "mini_val", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["IoU"]["car"] == pytest.approx(car_iou)
    assert result["IoU"]["truck"] == pytest.approx(truck_iou)
    assert all(result["IoU"][OCC3D_CLASSES[c]] == pytest.approx(100.0)
               for c in present if c not in (CAR, TRUCK))
    assert result["mIoU"] == pytest.approx((100 * (len(present) - 2) + car_iou + truck_iou)
                                           / len(present))
    assert result["mIoU"] < 100


def test_cli_json_end_to_end(synthetic_root, split_gts, tmp_path):
    preds = write_preds(tmp_path / "preds", {**split_gts["mini_val"], **split_gts["mini_train"]})
    proc = subprocess.run(
        [sys.executable, "-m", "radocc.evaluate_occ", "--pred-dir", str(preds),
         "--data-root", synthetic_root, "--version", VERSION, "--split", "val", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["num_samples"] == 2 and result["num_missing"] == 0
    assert result["num_ignored"] == 2  # the train split's predictions
    assert (result["version"], result["split"]) == (VERSION, "mini_val")
    assert result["mIoU"] == 100.0 and result["IoU"]["car"] == 100.0
    assert result["IoU"]["bus"] is None  # absent from val's gt and prediction: nan -> null
    assert set(result["IoU"]) == set(OCC3D_CLASSES[:17])


def test_cli_train_split(synthetic_root, split_gts, tmp_path, capsys):
    preds = write_preds(tmp_path / "preds", split_gts["mini_train"])
    sem, _ = next(iter(split_gts["mini_val"].values()))
    np.savez(preds / f"{next(iter(split_gts['mini_val']))}.npz", semantics=(sem + 1) % 18)
    rc, out, err = run_cli(capsys, "--pred-dir", preds, "--data-root", synthetic_root,
                           "--version", VERSION, "--split", "train", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert (result["split"], result["num_samples"], result["num_ignored"]) == ("mini_train", 2, 1)
    assert result["mIoU"] == 100.0  # the wrong val prediction is not scored


def test_cli_missing_prediction_names_the_file(synthetic_root, split_gts, tmp_path, capsys):
    tokens = list(split_gts["mini_val"])
    preds = write_preds(tmp_path / "preds", split_gts["mini_val"], skip=[tokens[1]])
    err = run_cli_error(capsys, preds, synthetic_root)
    assert f"missing prediction {preds / (tokens[1] + '.npz')} for sample {tokens[1]}" in err
    assert "1 of the 2 samples of split 'mini_val'" in err and "--allow-missing" in err

    rc, out, err = run_cli(capsys, "--pred-dir", preds, "--data-root", synthetic_root,
                           "--version", VERSION, "--allow-missing", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert (result["num_samples"], result["num_missing"], result["num_ignored"]) == (1, 1, 0)
    assert result["mIoU"] == 100.0
    rc, out, err = run_cli(capsys, "--pred-dir", preds, "--data-root", synthetic_root,
                           "--version", VERSION, "--allow-missing")
    assert rc == 0, err
    assert "(1 samples of split mini_val of v1.0-mini)" in out
    assert "1 sample(s) of the split had no prediction and were skipped (--allow-missing)" in out

    only_train = write_preds(tmp_path / "train_preds", split_gts["mini_train"])
    err = run_cli_error(capsys, only_train, synthetic_root, "--allow-missing")
    assert "none of the 2 samples of split 'mini_val'" in err
    assert str(only_train / (tokens[0] + ".npz")) in err


def test_cli_missing_or_empty_pred_dir(synthetic_root, tmp_path, capsys):
    err = run_cli_error(capsys, tmp_path / "nope", synthetic_root)
    assert "prediction folder" in err and str(tmp_path / "nope") in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    err = run_cli_error(capsys, tmp_path / "empty", synthetic_root, "--allow-missing")
    assert f"no <sample_token>.npz predictions in {tmp_path / 'empty'}" in err


def test_cli_bad_tables_version_or_split(synthetic_root, split_gts, tmp_path, capsys):
    preds = write_preds(tmp_path / "preds", split_gts["mini_val"])
    err = run_cli_error(capsys, preds, tmp_path)
    assert "no nuScenes tables for version 'v1.0-mini'" in err and str(tmp_path) in err
    err = run_cli_error(capsys, preds, synthetic_root, "--split", "nope")
    assert "unknown split 'nope' for v1.0-mini" in err and "mini_val" in err
    rc, _, err = run_cli(capsys, "--pred-dir", preds, "--data-root", synthetic_root)  # trainval
    assert rc == 1 and "no nuScenes tables for version 'v1.0-trainval'" in err


def test_cli_corrupt_prediction_names_the_file(synthetic_root, split_gts, tmp_path, capsys):
    preds = write_preds(tmp_path / "preds", split_gts["mini_val"])
    bad = preds / f"{next(iter(split_gts['mini_val']))}.npz"
    bad.write_bytes(bad.read_bytes()[:1000])  # truncated
    err = run_cli_error(capsys, preds, synthetic_root)
    assert f"{bad}: cannot read npz" in err
    bad.write_bytes(b"not a zip at all")
    assert f"{bad}: cannot read npz" in run_cli_error(capsys, preds, synthetic_root)
    np.savez(bad, labels=np.zeros(OCC3D_SHAPE, np.uint8))
    err = run_cli_error(capsys, preds, synthetic_root)
    assert str(bad) in err and "missing key(s) ['semantics']" in err


@pytest.mark.parametrize("array, match", [
    (np.zeros((200, 200, 15), np.uint8), r"has shape \(200, 200, 15\), expected \(200, 200, 16\)"),
    (np.zeros(OCC3D_SHAPE, np.float32),
     r"has dtype float32, expected an integer \(uint8\) or bool array of shape \(200, 200, 16\)"),
    (np.full(OCC3D_SHAPE, 30, np.uint8), r"pred has labels in \[30, 30\]"),
])
def test_cli_wrong_prediction_array_names_the_file(synthetic_root, split_gts, tmp_path, capsys,
                                                   array, match):
    preds = write_preds(tmp_path / "preds", split_gts["mini_val"])
    bad = preds / f"{list(split_gts['mini_val'])[1]}.npz"
    np.savez(bad, semantics=array)
    err = run_cli_error(capsys, preds, synthetic_root)
    assert str(bad) in err
    assert re.search(match, err), err


def test_cli_corrupt_or_missing_gt_names_the_file(synthetic_root, split_gts, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    preds = write_preds(tmp_path / "preds", split_gts["mini_val"])
    token = list(split_gts["mini_val"])[1]
    gt = root / "gts" / "scene-0103" / token / "labels.npz"
    sem, _ = split_gts["mini_val"][token]
    np.savez(gt, semantics=sem, mask_lidar=np.ones_like(sem))  # no mask_camera
    err = run_cli_error(capsys, preds, root)
    assert f"Occ3D labels {gt} lack key(s) ['mask_camera']" in err
    gt.unlink()
    err = run_cli_error(capsys, preds, root)
    assert f"Occ3D labels not found: {gt}" in err
