"""Tests of radocc.metrics and the radocc.evaluate_occ CLI (CPU, a few seconds)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from radocc import evaluate_occ
from radocc.metrics import (
    OCC3D_CLASSES, OCC3D_SHAPE, DepthMetrics, OccupancyMIoU, RayIoU, depth_metrics, first_hit,
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


# ----------------------------------------------------------------------------- first_hit
BOX = ((0.0, 0.0, 0.0), (10.0, 10.0, 10.0))  # 10 x 10 x 10 voxels of 1 m


def cast(occupied, origins, directions, box=BOX):
    return first_hit(occupied, torch.tensor(origins, dtype=torch.float64),
                     torch.tensor(directions, dtype=torch.float64), *box)


def test_first_hit_axis_aligned_rays():
    occ = torch.zeros(10, 10, 10, dtype=torch.bool)
    occ[7, 5, 5] = True
    dist_, idx, hit = cast(occ, [[5.5, 5.5, 5.5], [5.5, 5.5, 5.5], [5.5, 5.5, 5.5]],
                           [[1, 0, 0], [-1, 0, 0], [0, 0, 2]])  # +x, -x, +z (not unit)
    assert hit.tolist() == [True, False, False]
    assert dist_.tolist() == pytest.approx([1.5, 5.5, 4.5])  # enters x = 7; leaves x = 0, z = 10
    assert idx.tolist() == [[7, 5, 5], [0, 5, 5], [5, 5, 9]]  # misses: the last voxel crossed


def test_first_hit_diagonal_ray_visits_exactly_the_voxels_it_crosses():
    # In the plane z = 0.5 the ray y = x - 0.25 crosses (0,0) (1,0) (1,1) (2,1) (2,2) (3,2) (3,3)...
    path = [(0, 0), (1, 0), (1, 1), (2, 1), (2, 2), (3, 2), (3, 3)]
    entry_x = [0.5, 1.0, 1.25, 2.0, 2.25, 3.0, 3.25]
    for (i, j), x in zip(path[1:], entry_x[1:]):
        occ = torch.zeros(10, 10, 1, dtype=torch.bool)
        occ[i, j, 0] = True
        occ[j + 1, i + 2, 0] = True  # off the path (the path has i >= j): never the hit
        dist_, idx, hit = cast(occ, [[0.5, 0.25, 0.5]], [[1, 1, 0]], ((0, 0, 0), (10, 10, 1)))
        assert bool(hit[0]) and idx[0].tolist() == [i, j, 0]
        assert float(dist_[0]) == pytest.approx((x - 0.5) * math.sqrt(2))
    occ = torch.zeros(10, 10, 1, dtype=torch.bool)
    occ[0, 1, 0] = True  # beside the path: the ray passes it by
    dist_, idx, hit = cast(occ, [[0.5, 0.25, 0.5]], [[1, 1, 0]], ((0, 0, 0), (10, 10, 1)))
    assert not bool(hit[0])
    assert float(dist_[0]) == pytest.approx(9.5 * math.sqrt(2))  # leaves through x = 10 (y = 9.75)
    assert idx[0].tolist() == [9, 9, 0]


def test_first_hit_ray_through_voxel_corners_skips_the_neighbours():
    occ = torch.zeros(10, 10, 10, dtype=torch.bool)
    occ[1, 0, 0] = occ[0, 1, 1] = True  # touch the ray only at the corner (1, 1, 1)
    dist_, idx, hit = cast(occ, [[0.5, 0.5, 0.5]], [[1, 1, 1]])
    assert not bool(hit[0]) and idx[0].tolist() == [9, 9, 9]
    assert float(dist_[0]) == pytest.approx(9.5 * math.sqrt(3))
    occ[4, 4, 4] = True
    dist_, idx, hit = cast(occ, [[0.5, 0.5, 0.5]], [[1, 1, 1]])
    assert bool(hit[0]) and idx[0].tolist() == [4, 4, 4]
    assert float(dist_[0]) == pytest.approx(3.5 * math.sqrt(3))


def test_first_hit_origin_inside_an_occupied_voxel():
    occ = torch.zeros(10, 10, 10, dtype=torch.bool)
    occ[2, 3, 4] = True
    dist_, idx, hit = cast(occ, [[2.9, 3.1, 4.5], [2.9, 3.1, 4.5]], [[1, 0, 0], [0, -1, 1]])
    assert hit.all() and dist_.tolist() == [0.0, 0.0]
    assert idx.tolist() == [[2, 3, 4], [2, 3, 4]]


def test_first_hit_origin_on_a_boundary_going_down_the_axis():
    occ = torch.zeros(10, 10, 10, dtype=torch.bool)
    occ[5, 5, 5] = True  # above x = 5: a ray leaving x = 5 towards -x never enters it
    dist_, idx, hit = cast(occ, [[5.0, 5.5, 5.5]], [[-1, 0, 0]])
    assert not bool(hit[0]) and float(dist_[0]) == pytest.approx(5.0)
    occ[4, 5, 5] = True
    dist_, idx, hit = cast(occ, [[5.0, 5.5, 5.5]], [[-1, 0, 0]])
    assert bool(hit[0]) and float(dist_[0]) == 0.0 and idx[0].tolist() == [4, 5, 5]


def test_first_hit_origins_outside_the_box():
    occ = torch.zeros(10, 10, 10, dtype=torch.bool)
    occ[3, 5, 5] = True
    dist_, idx, hit = cast(occ, [[-2, 5.5, 5.5], [-2, 5.5, 5.5], [-2, 5.5, 5.5], [-2, 12, 5.5]],
                           [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [1, 1, 0]])
    assert hit.tolist() == [True, False, False, False]
    assert float(dist_[0]) == pytest.approx(5.0)  # from the origin, not from the box
    assert torch.isinf(dist_[1:]).all() and (idx[1:] == -1).all()  # never meet the box


def test_first_hit_empty_grid_every_ray_leaves():
    occ = torch.zeros(4, 4, 4, dtype=torch.bool)
    dist_, idx, hit = cast(occ, [[1.0, 1.0, 1.0]] * 3, [[0, 0, -1], [0, 1, 0], [3, 4, 0]],
                           ((0, 0, 0), (4, 4, 4)))
    assert not hit.any()
    assert dist_.tolist() == pytest.approx([1.0, 3.0, 3.75])  # (3,4)/5 leaves y = 4 at t = 3.75


def test_first_hit_matches_dense_sampling():
    gen = torch.Generator().manual_seed(3)
    occ = torch.rand(8, 8, 8, generator=gen) < 0.05
    lower, upper = (-1.0, -2.0, 0.0), (3.0, 2.0, 2.0)  # voxels 0.5 x 0.5 x 0.25
    lo, hi = torch.tensor(lower, dtype=torch.float64), torch.tensor(upper, dtype=torch.float64)
    # origins spread over the box's x, y and from 1 m below to 1 m above it
    origins = torch.rand(200, 3, generator=gen, dtype=torch.float64) * 4 + lo - \
        torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    dirs = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    dist_, idx, hit = first_hit(occ, origins, dirs, lower, upper)

    step = 1e-3
    t = torch.arange(0, 12, step, dtype=torch.float64)
    pts = origins[:, None] + t[None, :, None] * (dirs / dirs.norm(dim=1, keepdim=True))[:, None]
    cell = ((pts - lo) / ((hi - lo) / 8)).floor().long()
    inside = ((cell >= 0) & (cell < 8)).all(-1)
    c = cell.clamp(0, 7)
    occupied_here = occ[c[..., 0], c[..., 1], c[..., 2]] & inside
    sampled_hit = occupied_here.any(1)
    first = occupied_here.float().argmax(1)
    assert 20 < int(hit.sum()) < 180  # a real mix of hits and misses
    assert torch.equal(hit, sampled_hit)
    assert torch.allclose(dist_[hit], t[first[hit]], atol=step)
    rows = hit.nonzero().squeeze(1)
    assert torch.equal(idx[hit], cell[rows, first[hit]])
    missed_in = ~hit & inside.any(1)  # rays that cross the box and hit nothing leave it
    last_inside = inside.float().cumsum(1).argmax(1)
    assert torch.allclose(dist_[missed_in], t[last_inside[missed_in]], atol=step)


@pytest.mark.parametrize("call, error, match", [
    (lambda o, d: first_hit(torch.zeros(2, 2, 2), o, d), TypeError, r"occupied must be a bool"),
    (lambda o, d: first_hit(torch.zeros(2, 2, dtype=torch.bool), o, d), ValueError,
     r"occupied must be \[X, Y, Z\]"),
    (lambda o, d: first_hit(torch.zeros(2, 2, 2, dtype=torch.bool), o[:, :2], d), ValueError,
     r"origins must be \[R, 3\]"),
    (lambda o, d: first_hit(torch.zeros(2, 2, 2, dtype=torch.bool), o, d * 0), ValueError,
     r"directions has zero-length rows"),
    (lambda o, d: first_hit(torch.zeros(2, 2, 2, dtype=torch.bool), o, d.long()), TypeError,
     r"directions must be floating point"),
    (lambda o, d: first_hit(torch.zeros(2, 2, 2, dtype=torch.bool), o, d[:1]), ValueError,
     r"origins and directions must have the same shape"),
    (lambda o, d: first_hit(torch.zeros(2, 2, 2, dtype=torch.bool), o, d, (0, 0, 0), (1, 1, 0)),
     ValueError, r"upper must exceed lower"),
])
def test_first_hit_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.zeros(2, 3), torch.ones(2, 3))


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
    m.update(wall_scene(23), wall_scene(20), ORIGIN)  # the wall 1.5 m too far: 9.4 m vs 7.9 m
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
def write_labels(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


@pytest.fixture
def occ_dataset(tmp_path):
    """data_root with two Occ3D gts in two scenes and pred_dir with a noisy prediction of each."""
    rng = np.random.default_rng(6)
    root, preds = tmp_path / "nuscenes", tmp_path / "preds"
    preds.mkdir()
    expected = OccupancyMIoU()
    for scene, token in (("scene-0001", "a" * 32), ("scene-0002", "b" * 32)):
        sem = rng.integers(0, 18, (200, 200, 16), dtype=np.uint8)
        mask = rng.random((200, 200, 16)) < 0.5
        write_labels(root / "gts" / scene / token / "labels.npz", semantics=sem,
                     mask_lidar=mask.astype(np.uint8), mask_camera=mask.astype(np.uint8))
        pred = np.where(rng.random(sem.shape) < 0.2, rng.integers(0, 18, sem.shape), sem)
        np.savez(preds / f"{token}.npz", semantics=pred.astype(np.uint8))
        expected.update(pred, sem, mask)
    return root, preds, expected.compute()


def test_find_gt_files(occ_dataset, tmp_path):
    root, _, _ = occ_dataset
    found = evaluate_occ.find_gt_files(root)
    assert found == {"a" * 32: root / "gts/scene-0001" / ("a" * 32) / "labels.npz",
                     "b" * 32: root / "gts/scene-0002" / ("b" * 32) / "labels.npz"}
    write_labels(root / "gts/scene-0003" / ("a" * 32) / "labels.npz", semantics=np.zeros(1))
    with pytest.raises(ValueError, match="two gt files"):
        evaluate_occ.find_gt_files(root)


def test_cli_prints_table(occ_dataset, capsys):
    root, preds, expected = occ_dataset
    assert evaluate_occ.main(["--pred-dir", str(preds), "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert 0 < expected["mIoU"] < 100
    assert f"{expected['mIoU']:.2f}" in out.splitlines()[-2]
    for name in OCC3D_CLASSES[:17]:
        line = next(l for l in out.splitlines() if l.startswith(name + " "))
        assert line.split()[-1] == f"{expected['IoU'][name]:.2f}"


def test_cli_json_end_to_end(occ_dataset):
    root, preds, expected = occ_dataset
    proc = subprocess.run(
        [sys.executable, "-m", "radocc.evaluate_occ", "--pred-dir", str(preds),
         "--data-root", str(root), "--version", "v1.0-mini", "--split", "val", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["num_samples"] == 2
    assert result["mIoU"] == pytest.approx(expected["mIoU"])
    assert result["IoU"] == pytest.approx(expected["IoU"])


def test_cli_json_writes_null_for_absent_classes(tmp_path, capsys):
    root, preds = tmp_path / "root", tmp_path / "preds"
    sem = np.full((200, 200, 16), FREE, np.uint8)
    sem[0, 0, 0] = CAR
    write_labels(root / "gts/scene-0001/tok/labels.npz", semantics=sem, mask_lidar=sem * 0,
                 mask_camera=np.ones_like(sem))
    write_labels(preds / "tok.npz", semantics=sem)
    assert evaluate_occ.main(["--pred-dir", str(preds), "--data-root", str(root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mIoU"] == 100.0 and result["IoU"]["car"] == 100.0
    assert result["IoU"]["bus"] is None


def run_cli_error(preds: Path, root: Path, capsys) -> str:
    assert evaluate_occ.main(["--pred-dir", str(preds), "--data-root", str(root)]) == 1
    return capsys.readouterr().err


def test_cli_missing_pred_dir(occ_dataset, tmp_path, capsys):
    root, _, _ = occ_dataset
    err = run_cli_error(tmp_path / "nope", root, capsys)
    assert "prediction folder" in err and "nope" in err and "does not exist" in err


def test_cli_empty_pred_dir_and_missing_gts(occ_dataset, tmp_path, capsys):
    root, preds, _ = occ_dataset
    (tmp_path / "empty").mkdir()
    assert "no <sample_token>.npz predictions" in run_cli_error(tmp_path / "empty", root, capsys)
    assert "no gts/ folder" in run_cli_error(preds, tmp_path, capsys)


def test_cli_prediction_without_gt_names_the_file(occ_dataset, capsys):
    root, preds, _ = occ_dataset
    (preds / "c.npz").write_bytes((preds / ("a" * 32 + ".npz")).read_bytes())
    err = run_cli_error(preds, root, capsys)
    assert "no gt for prediction" in err and str(preds / "c.npz") in err


def test_cli_corrupt_npz_names_the_file(occ_dataset, capsys):
    root, preds, _ = occ_dataset
    bad = preds / ("a" * 32 + ".npz")
    bad.write_bytes(bad.read_bytes()[:1000])  # truncated
    err = run_cli_error(preds, root, capsys)
    assert str(bad) in err and "cannot read npz" in err
    bad.write_bytes(b"not a zip at all")
    assert str(bad) in run_cli_error(preds, root, capsys)


def test_cli_corrupt_gt_names_the_file(occ_dataset, capsys):
    root, preds, _ = occ_dataset
    gt = root / "gts/scene-0002" / ("b" * 32) / "labels.npz"
    write_labels(gt, semantics=np.zeros(OCC3D_SHAPE, np.uint8))  # no mask_camera
    err = run_cli_error(preds, root, capsys)
    assert str(gt) in err and "missing key(s) ['mask_camera']" in err



@pytest.mark.parametrize("array, match", [
    (np.zeros((200, 200, 15), np.uint8), r"has shape \(200, 200, 15\), expected \(200, 200, 16\)"),
    (np.zeros(OCC3D_SHAPE, np.float32),
     r"has dtype float32, expected an integer \(uint8\) or bool array of shape \(200, 200, 16\)"),
    (np.full(OCC3D_SHAPE, 30, np.uint8), r"pred has labels in \[30, 30\]"),
])
def test_cli_wrong_prediction_array_names_the_file(occ_dataset, capsys, array, match):
    root, preds, _ = occ_dataset
    bad = preds / ("b" * 32 + ".npz")
    np.savez(bad, semantics=array)
    err = run_cli_error(preds, root, capsys)
    assert str(bad) in err
    assert re.search(match, err), err
