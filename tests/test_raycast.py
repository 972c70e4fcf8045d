"""Tests of radocc.raycast.traverse: where rays stop and which voxels they visit (CPU, ~2 s)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from radocc.raycast import traverse, traverse_torch


# ----------------------------------------------------------------------------- where rays stop
BOX = ((0.0, 0.0, 0.0), (10.0, 10.0, 10.0))  # 10 x 10 x 10 voxels of 1 m


def cast(occupied, origins, directions, box=BOX):
    """(distance, index, hit, exit_distance) of `traverse` on lists of rays."""
    t = traverse(occupied, torch.tensor(origins, dtype=torch.float64),
                 torch.tensor(directions, dtype=torch.float64), *box)
    return t.distance, t.index, t.hit, t.exit_distance


def test_traverse_axis_aligned_rays():
    occ = torch.zeros(10, 10, 10, dtype=torch.bool)
    occ[7, 5, 5] = True
    dist_, idx, hit, exit_ = cast(occ, [[5.5, 5.5, 5.5], [5.5, 5.5, 5.5], [5.5, 5.5, 5.5]],
                                  [[1, 0, 0], [-1, 0, 0], [0, 0, 2]])  # +x, -x, +z (not unit)
    assert hit.tolist() == [True, False, False]
    assert dist_.tolist() == pytest.approx([1.5, 5.5, 4.5])  # enters x = 7; leaves x = 0, z = 10
    assert exit_.tolist() == pytest.approx([2.5, 5.5, 4.5])  # leaves voxel 7 at x = 8
    assert idx.tolist() == [[7, 5, 5], [0, 5, 5], [5, 5, 9]]  # misses: the last voxel crossed


def test_traverse_diagonal_ray_visits_exactly_the_voxels_it_crosses():
    # In the plane z = 0.5 the ray y = x - 0.25 crosses (0,0) (1,0) (1,1) (2,1) (2,2) (3,2) (3,3)...
    path = [(0, 0), (1, 0), (1, 1), (2, 1), (2, 2), (3, 2), (3, 3)]
    entry_x = [0.5, 1.0, 1.25, 2.0, 2.25, 3.0, 3.25, 4.0]  # the last: where (3, 3) is left
    for (i, j), x, x_out in zip(path[1:], entry_x[1:], entry_x[2:]):
        occ = torch.zeros(10, 10, 1, dtype=torch.bool)
        occ[i, j, 0] = True
        occ[j + 1, i + 2, 0] = True  # off the path (the path has i >= j): never the hit
        dist_, idx, hit, exit_ = cast(occ, [[0.5, 0.25, 0.5]], [[1, 1, 0]],
                                      ((0, 0, 0), (10, 10, 1)))
        assert bool(hit[0]) and idx[0].tolist() == [i, j, 0]
        assert float(dist_[0]) == pytest.approx((x - 0.5) * math.sqrt(2))
        assert float(exit_[0]) == pytest.approx((x_out - 0.5) * math.sqrt(2))  # the next entry
    occ = torch.zeros(10, 10, 1, dtype=torch.bool)
    occ[0, 1, 0] = True  # beside the path: the ray passes it by
    dist_, idx, hit, exit_ = cast(occ, [[0.5, 0.25, 0.5]], [[1, 1, 0]], ((0, 0, 0), (10, 10, 1)))
    assert not bool(hit[0])
    assert float(dist_[0]) == pytest.approx(9.5 * math.sqrt(2))  # leaves through x = 10 (y = 9.75)
    assert float(exit_[0]) == float(dist_[0])
    assert idx[0].tolist() == [9, 9, 0]


def test_traverse_ray_through_voxel_corners_skips_the_neighbours():
    occ = torch.zeros(10, 10, 10, dtype=torch.bool)
    occ[1, 0, 0] = occ[0, 1, 1] = True  # touch the ray only at the corner (1, 1, 1)
    dist_, idx, hit, _ = cast(occ, [[0.5, 0.5, 0.5]], [[1, 1, 1]])
    assert not bool(hit[0]) and idx[0].tolist() == [9, 9, 9]
    assert float(dist_[0]) == pytest.approx(9.5 * math.sqrt(3))
    occ[4, 4, 4] = True
    dist_, idx, hit, exit_ = cast(occ, [[0.5, 0.5, 0.5]], [[1, 1, 1]])
    assert bool(hit[0]) and idx[0].tolist() == [4, 4, 4]
    assert float(dist_[0]) == pytest.approx(3.5 * math.sqrt(3))
    assert float(exit_[0]) == pytest.approx(4.5 * math.sqrt(3))  # out through the corner (5, 5, 5)


def test_traverse_origin_inside_an_occupied_voxel():
    occ = torch.zeros(10, 10, 10, dtype=torch.bool)
    occ[2, 3, 4] = True
    dist_, idx, hit, exit_ = cast(occ, [[2.9, 3.1, 4.5], [2.9, 3.1, 4.5]],
                                  [[1, 0, 0], [0, -1, 1]])
    assert hit.all() and dist_.tolist() == [0.0, 0.0]
    assert idx.tolist() == [[2, 3, 4], [2, 3, 4]]
    # Left through x = 3 after 0.1 m; through y = 3 (0.1 m down y) before z = 5 (0.5 m up z).
    assert exit_.tolist() == pytest.approx([0.1, 0.1 * math.sqrt(2)])


def test_traverse_origin_on_a_boundary_going_down_the_axis():
    occ = torch.zeros(10, 10, 10, dtype=torch.bool)
    occ[5, 5, 5] = True  # above x = 5: a ray leaving x = 5 towards -x never enters it
    dist_, idx, hit, exit_ = cast(occ, [[5.0, 5.5, 5.5]], [[-1, 0, 0]])
    assert not bool(hit[0]) and float(dist_[0]) == pytest.approx(5.0)
    assert float(exit_[0]) == pytest.approx(5.0)
    occ[4, 5, 5] = True
    dist_, idx, hit, exit_ = cast(occ, [[5.0, 5.5, 5.5]], [[-1, 0, 0]])
    assert bool(hit[0]) and float(dist_[0]) == 0.0 and idx[0].tolist() == [4, 5, 5]
    assert float(exit_[0]) == pytest.approx(1.0)  # voxel 4 is left at x = 4


def test_traverse_origins_outside_the_box():
    occ = torch.zeros(10, 10, 10, dtype=torch.bool)
    occ[3, 5, 5] = True
    dist_, idx, hit, exit_ = cast(
        occ, [[-2, 5.5, 5.5], [-2, 5.5, 5.5], [-2, 5.5, 5.5], [-2, 12, 5.5]],
        [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [1, 1, 0]])
    assert hit.tolist() == [True, False, False, False]
    assert float(dist_[0]) == pytest.approx(5.0)  # from the origin, not from the box
    assert float(exit_[0]) == pytest.approx(6.0)
    assert torch.isinf(dist_[1:]).all() and (idx[1:] == -1).all()  # never meet the box
    assert torch.isinf(exit_[1:]).all()


def test_traverse_empty_grid_every_ray_leaves():
    occ = torch.zeros(4, 4, 4, dtype=torch.bool)
    dist_, idx, hit, exit_ = cast(occ, [[1.0, 1.0, 1.0]] * 3, [[0, 0, -1], [0, 1, 0], [3, 4, 0]],
                                  ((0, 0, 0), (4, 4, 4)))
    assert not hit.any()
    assert dist_.tolist() == pytest.approx([1.0, 3.0, 3.75])  # (3,4)/5 leaves y = 4 at t = 3.75
    assert torch.equal(exit_, dist_)


def test_traverse_matches_dense_sampling():
    gen = torch.Generator().manual_seed(3)
    occ = torch.rand(8, 8, 8, generator=gen) < 0.05
    lower, upper = (-1.0, -2.0, 0.0), (3.0, 2.0, 2.0)  # voxels 0.5 x 0.5 x 0.25
    lo, hi = torch.tensor(lower, dtype=torch.float64), torch.tensor(upper, dtype=torch.float64)
    # origins spread over the box's x, y and from 1 m below to 1 m above it
    origins = torch.rand(200, 3, generator=gen, dtype=torch.float64) * 4 + lo - \
        torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    dirs = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    walk = traverse(occ, origins, dirs, lower, upper)
    dist_, idx, hit, exit_ = walk.distance, walk.index, walk.hit, walk.exit_distance

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
    # The exit: the first sample after the hit outside the hit voxel (or the box).
    hit_cell = cell[rows, first[hit]]
    after = (t[None] > t[first[hit], None]) & (cell[rows] != hit_cell[:, None]).any(-1)
    assert after.any(1).all()
    assert torch.allclose(exit_[hit], t[after.float().argmax(1)], atol=step)
    assert (exit_[hit] > dist_[hit]).all()
    missed_in = ~hit & inside.any(1)  # rays that cross the box and hit nothing leave it
    last_inside = inside.float().cumsum(1).argmax(1)
    assert torch.allclose(dist_[missed_in], t[last_inside[missed_in]], atol=step)
    assert torch.equal(exit_[~hit], dist_[~hit])


@pytest.mark.parametrize("call, error, match", [
    (lambda o, d: traverse(torch.zeros(2, 2, 2), o, d), TypeError, r"occupied must be a bool"),
    (lambda o, d: traverse(torch.zeros(2, 2, dtype=torch.bool), o, d), ValueError,
     r"occupied must be \[X, Y, Z\]"),
    (lambda o, d: traverse(torch.zeros(2, 2, 2, dtype=torch.bool), o[:, :2], d), ValueError,
     r"origins must be \[R, 3\]"),
    (lambda o, d: traverse(torch.zeros(2, 2, 2, dtype=torch.bool), o, d * 0), ValueError,
     r"directions has zero-length rows"),
    (lambda o, d: traverse(torch.zeros(2, 2, 2, dtype=torch.bool), o, d.long()), TypeError,
     r"directions must be floating point"),
    (lambda o, d: traverse(torch.zeros(2, 2, 2, dtype=torch.bool), o, d[:1]), ValueError,
     r"origins and directions must have the same shape"),
    (lambda o, d: traverse(torch.zeros(2, 2, 2, dtype=torch.bool), o, d, (0, 0, 0), (1, 1, 0)),
     ValueError, r"upper must exceed lower"),
    (lambda o, d: traverse(torch.zeros(2, 2, 2, dtype=torch.bool), o, d, max_distance=-1.0),
     ValueError, r"max_distance must be >= 0"),
    (lambda o, d: traverse(torch.zeros(2, 2, 2, dtype=torch.bool), o, d,
                           max_distance=torch.tensor([1.0, math.nan])),
     ValueError, r"max_distance must be >= 0"),
    (lambda o, d: traverse(torch.zeros(2, 2, 2, dtype=torch.bool), o, d,
                           max_distance=torch.ones(3)),
     ValueError, r"max_distance must be one value or \[R\] = \[2\]"),
])
def test_traverse_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.zeros(2, 3), torch.ones(2, 3))


# ----------------------------------------------------------------------------- visited voxels
def walk(occupied, origins, directions, box=BOX, max_distance=math.inf):
    """`traverse` on lists of rays, with the visited-voxel mask."""
    return traverse(occupied, torch.tensor(origins, dtype=torch.float64),
                    torch.tensor(directions, dtype=torch.float64), *box,
                    max_distance=max_distance, return_visible=True)


def voxels(mask: torch.Tensor) -> list[list[int]]:
    return mask.nonzero().tolist()


def wall_at_x2() -> torch.Tensor:
    occ = torch.zeros(10, 10, 10, dtype=torch.bool)
    occ[2] = True  # the slab 2 m <= x < 3 m
    return occ


def test_visible_is_none_unless_asked():
    t = traverse(wall_at_x2(), torch.tensor([[0.5, 5.5, 5.5]]), torch.tensor([[1.0, 0.0, 0.0]]),
                 *BOX)
    assert t.visible is None


def test_ray_visits_the_voxels_up_to_and_including_the_wall():
    t = walk(wall_at_x2(), [[0.5, 5.5, 5.5]], [[1, 0, 0]])
    assert voxels(t.visible) == [[0, 5, 5], [1, 5, 5], [2, 5, 5]]
    assert t.visible.shape == (10, 10, 10) and t.visible.dtype == torch.bool
    assert bool(t.hit[0]) and float(t.distance[0]) == pytest.approx(1.5)


def test_max_distance_stops_the_ray_before_the_wall():
    t = walk(wall_at_x2(), [[0.5, 5.5, 5.5]], [[1, 0, 0]], max_distance=1.1)
    assert voxels(t.visible) == [[0, 5, 5], [1, 5, 5]]  # x = 2 is entered at 1.5 m
    assert not bool(t.hit[0]) and float(t.distance[0]) == pytest.approx(1.1)
    assert t.index[0].tolist() == [1, 5, 5]  # the last voxel visited
    # entered at exactly max_distance is not visited
    t = walk(wall_at_x2(), [[0.5, 5.5, 5.5]], [[1, 0, 0]], max_distance=1.5)
    assert voxels(t.visible) == [[0, 5, 5], [1, 5, 5]] and not bool(t.hit[0])
    t = walk(wall_at_x2(), [[0.5, 5.5, 5.5]], [[1, 0, 0]], max_distance=1.5 + 1e-6)
    assert voxels(t.visible) == [[0, 5, 5], [1, 5, 5], [2, 5, 5]] and bool(t.hit[0])
    # max_distance decides whether the wall is reached, not where the ray would leave it
    assert float(t.exit_distance[0]) == pytest.approx(2.5)


def test_max_distance_per_ray_and_beyond_the_box():
    occ = torch.zeros(10, 10, 10, dtype=torch.bool)
    t = walk(occ, [[0.5, 5.5, 5.5], [0.5, 3.5, 5.5], [0.5, 1.5, 5.5], [-2, 7.5, 5.5]],
             [[1, 0, 0]] * 4, max_distance=[0.0, 2.7, 30.0, 1.5])
    # 0 m: nothing; 2.7 m: up to x = 3.2; 30 m: leaves the box at 9.5 m; from x = -2, 1.5 m
    # falls short of the box
    expected = [[i, 3, 5] for i in range(4)] + [[i, 1, 5] for i in range(10)]
    assert voxels(t.visible) == sorted(expected)
    assert t.distance.tolist() == pytest.approx([math.inf, 2.7, 9.5, math.inf])
    assert t.index.tolist() == [[-1, -1, -1], [3, 3, 5], [9, 1, 5], [-1, -1, -1]]
    assert not t.hit.any()
    # a numpy max_distance
    t = walk(occ, [[0.5, 3.5, 5.5]], [[1, 0, 0]], max_distance=np.array([2.7]))
    assert voxels(t.visible) == [[i, 3, 5] for i in range(4)]


def test_ray_that_misses_the_box_visits_nothing():
    t = walk(wall_at_x2(), [[-2, 5.5, 5.5], [-2, 12, 5.5]], [[-1, 0, 0], [1, 1, 0]])
    assert not t.visible.any() and not t.hit.any()
    assert torch.isinf(t.distance).all() and (t.index == -1).all()


def test_ray_through_voxel_corners_visits_only_the_diagonal():
    t = walk(torch.zeros(10, 10, 10, dtype=torch.bool), [[0.5, 0.5, 0.5]], [[1, 1, 1]])
    assert voxels(t.visible) == [[i, i, i] for i in range(10)]


def test_diagonal_ray_visits_exactly_the_voxels_it_crosses():
    t = walk(torch.zeros(10, 10, 1, dtype=torch.bool), [[0.5, 0.25, 0.5]], [[1, 1, 0]],
             ((0, 0, 0), (10, 10, 1)))
    path = [[i, i, 0] for i in range(10)] + [[i + 1, i, 0] for i in range(9)]
    assert voxels(t.visible) == sorted(path)


def test_origin_in_an_occupied_voxel_visits_only_it():
    occ = torch.zeros(10, 10, 10, dtype=torch.bool)
    occ[2, 3, 4] = True
    t = walk(occ, [[2.9, 3.1, 4.5]], [[1, 0, 0]])
    assert voxels(t.visible) == [[2, 3, 4]]


def test_lidar_return_voxel_is_the_last_visited():
    # Occ3D's LiDAR mask: an empty grid walked up to each return; the return's voxel is visited
    gen = torch.Generator().manual_seed(0)
    origin = torch.tensor([5.2, 4.9, 1.8], dtype=torch.float64)
    points = torch.rand(300, 3, generator=gen, dtype=torch.float64) * 10
    offsets = points - origin
    t = traverse(torch.zeros(10, 10, 10, dtype=torch.bool), origin.expand_as(offsets), offsets,
                 *BOX, max_distance=offsets.norm(dim=1), return_visible=True)
    cell = points.floor().long()
    assert torch.equal(t.index, cell)
    assert t.visible[cell[:, 0], cell[:, 1], cell[:, 2]].all()
    assert torch.allclose(t.distance, offsets.norm(dim=1))


def _slab(origins: torch.Tensor, dirs: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Where each ray [R] meets each box [V]: entry, exit [R, V] (metres along the unit ray)."""
    inv = 1.0 / dirs[:, None]  # no zero components in these random directions
    t0, t1 = (lo[None] - origins[:, None]) * inv, (hi[None] - origins[:, None]) * inv
    return torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)


def test_visited_voxels_match_a_per_voxel_slab_test():
    # A voxel is visited iff the ray crosses it with non-zero length, entering before the ray
    # stops (`distance`, and max_distance), or it is the hit voxel.
    gen = torch.Generator().manual_seed(5)
    shape = (6, 5, 4)
    lower, upper = (-1.0, -2.0, 0.0), (2.0, 0.5, 2.0)
    lo, hi = torch.tensor(lower, dtype=torch.float64), torch.tensor(upper, dtype=torch.float64)
    occ = torch.rand(shape, generator=gen) < 0.15
    size = (hi - lo) / torch.tensor(shape)
    cells = torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij"), -1)
    cells = cells.reshape(-1, 3)
    v_lo, v_hi = lo + cells * size, lo + (cells + 1) * size
    origins = lo + torch.rand(100, 3, generator=gen, dtype=torch.float64) * (hi - lo) * 1.4 \
        - (hi - lo) * 0.2
    dirs = torch.randn(100, 3, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    limits = torch.where(torch.rand(100, generator=gen) < 0.5, math.inf,
                         torch.rand(100, generator=gen, dtype=torch.float64) * 3)
    enter, leave = _slab(origins, dirs, v_lo, v_hi)
    visible_union = torch.zeros(shape, dtype=torch.bool)
    for r in range(100):
        t = traverse(occ, origins[r:r + 1], dirs[r:r + 1], lower, upper,
                     max_distance=limits[r:r + 1], return_visible=True)
        start = enter[r].clamp_min(0)
        stop = torch.minimum(t.distance, limits[r])  # inf: never entered the box
        expected = ((leave[r] - start > 1e-9) & (start < stop)).reshape(shape)
        if bool(t.hit[0]):
            expected[tuple(t.index[0].tolist())] = True
        assert torch.equal(t.visible, expected), r
        visible_union |= expected
    all_rays = traverse(occ, origins, dirs, lower, upper, max_distance=limits,
                        return_visible=True)
    assert torch.equal(all_rays.visible, visible_union)
    # a real mix of rays that hit, stop at max_distance, leave the box, never reach it
    hit, dist_ = all_rays.hit, all_rays.distance
    at_limit = ~hit & limits.isfinite() & (dist_ == limits)
    left = ~hit & ~at_limit & dist_.isfinite()
    assert min(int(hit.sum()), int(at_limit.sum()), int(left.sum()), int(dist_.isinf().sum())) >= 5


# ----------------------------------------------------------------------------- CPU kernel vs torch loop
def _prepared(origins: torch.Tensor, dirs: torch.Tensor):
    return origins.double(), dirs.double() / dirs.double().norm(dim=1, keepdim=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cpu_kernel_matches_the_torch_loop(seed):
    # traverse runs torch.ops.radocc.traverse on CPU and traverse_torch on CUDA: the same rays
    # must stop in the same voxel at the same distances, and visit the same voxels. Half of the
    # rays are degenerate: origins on voxel planes, directions along axes and diagonals (ties).
    gen = torch.Generator().manual_seed(seed)
    shape = (12, 9, 5)
    lower, upper = (-3.0, -1.0, -0.5), (3.0, 3.5, 2.0)
    lo, hi = torch.tensor(lower, dtype=torch.float64), torch.tensor(upper, dtype=torch.float64)
    size = (hi - lo) / torch.tensor(shape)
    occ = torch.rand(shape, generator=gen) < 0.12
    rays = 3000
    origins = lo + torch.rand(rays, 3, generator=gen, dtype=torch.float64) * (hi - lo) * 1.6 \
        - (hi - lo) * 0.3
    dirs = torch.randn(rays, 3, generator=gen, dtype=torch.float64)
    snap = torch.arange(rays) % 2 == 0
    planes = lo + torch.round((origins - lo) / size) * size  # on voxel planes and corners
    origins = torch.where(snap[:, None], planes, origins)
    dirs = torch.where(snap[:, None], torch.randint(-1, 2, (rays, 3), generator=gen).double(), dirs)
    dirs[(dirs == 0).all(1)] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    limits = torch.where(torch.rand(rays, generator=gen) < 0.5, math.inf,
                         torch.rand(rays, generator=gen, dtype=torch.float64) * 6)
    kernel = traverse(occ, origins, dirs, lower, upper, max_distance=limits, return_visible=True)
    o, d = _prepared(origins, dirs)
    twin = traverse_torch(occ, o, d, lo, hi, limits, True)
    assert torch.equal(kernel.hit, twin.hit)
    assert torch.equal(kernel.index, twin.index)
    assert torch.equal(kernel.visible, twin.visible)
    for name in ("distance", "exit_distance"):
        a, b = getattr(kernel, name), getattr(twin, name)
        assert torch.equal(a.isinf(), b.isinf()), name
        torch.testing.assert_close(a[a.isfinite()], b[b.isfinite()], rtol=0, atol=1e-9)
    # the mix is real: hits, stops at max_distance, exits, misses; degenerate rays among the hits
    assert int(kernel.hit.sum()) > 250 and int((kernel.hit & snap).sum()) > 100
    assert int(kernel.distance.isinf().sum()) > 100
    assert int((~kernel.hit & (kernel.distance == limits)).sum()) > 100


def test_cpu_kernel_rejects_bad_tensors_from_direct_callers():
    occ = torch.zeros(2, 2, 2, dtype=torch.bool)
    rays = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="origins must be float64"):
        torch.ops.radocc.traverse(occ, rays.float(), rays, torch.zeros(3, dtype=torch.float64),
                                  [0.0] * 3, [1.0] * 3, False)
    with pytest.raises(RuntimeError, match="max_distance must be float64"):
        torch.ops.radocc.traverse(occ, rays, rays, torch.zeros(2, dtype=torch.float64),
                                  [0.0] * 3, [1.0] * 3, False)
