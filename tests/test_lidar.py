"""The LiDAR branch: voxelisation against a naive per-point mean, and the spconv encoder's BEV output."""

import math
import time

import pytest
import torch

torch.set_num_threads(1)

import radocc.models.lidar as lidar  # noqa: E402
from radocc.models.lidar import LidarConfig, LidarEncoder, voxelize  # noqa: E402

# A tiny grid: 8 x 8 x 1.6 m, voxels 0.1 x 0.1 x 0.4 m (80 x 80 x 4) -> a 20 x 20 BEV of 0.4 m cells,
# so the first 2 stages stride 2 in x/y as at paper scale (800 -> 200).
LOWER, UPPER, BEV = (-4.0, -4.0, -1.0), (4.0, 4.0, 0.6), (20, 20)
TINY = LidarConfig(voxel_size=(0.1, 0.1, 0.4), base_channels=8, stage_channels=(16, 32), out_channels=32,
                   max_voxels=5000)


def random_points(n: int, lower=LOWER, upper=UPPER, seed: int = 0) -> torch.Tensor:
    """[n, 5]: x, y, z uniform in the box, intensity and time lag in [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(lower), torch.tensor(upper)
    return torch.cat([lo + (hi - lo) * torch.rand(n, 3, generator=g), torch.rand(n, 2, generator=g)], 1)


def batch(*clouds: torch.Tensor, pad: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad clouds [n_i, 5] to [B, max n + pad, 5]; pad rows are filled with in-range junk
    (they must be ignored)."""
    P = max(len(c) for c in clouds) + pad
    points = torch.stack([torch.cat([c, random_points(P - len(c), seed=99)]) for c in clouds])
    return points, torch.tensor([len(c) for c in clouds])


def encoder(config: LidarConfig = TINY, bev=BEV, **kw) -> LidarEncoder:
    torch.manual_seed(0)
    return LidarEncoder(config, kw.get("lower", LOWER), kw.get("upper", UPPER), bev)


def test_voxelize_matches_naive_mean():
    lower, upper, size = (0.0, 0.0, 0.0), (2.0, 2.0, 1.0), (0.5, 0.5, 0.5)
    special = torch.tensor([
        [0.0, 0.0, 0.0, 1.0, 0.0],     # exactly on the lower corner: voxel (0, 0, 0)
        [-1e-4, 0.3, 0.3, 2.0, 0.0],   # just below x0: dropped (truncation would keep it in cell 0)
        [0.3, 0.3, 0.3, 3.0, 0.1],     # shares voxel (0, 0, 0) with the first point
        [2.0, 1.0, 0.5, 4.0, 0.0],     # exactly on the upper x face: outside
        [1.0, 5.0, 0.5, 5.0, 0.0],     # far outside in y
        [1.2, 1.7, 0.99, 6.0, 0.2],
        [1.2, 1.7, -0.01, 7.0, 0.2],   # below z0
    ])
    g = torch.Generator().manual_seed(1)
    # the random points keep x >= 0.5, out of the corner voxel
    rest = torch.rand(40, 5, generator=g) * torch.tensor([1.5, 2.0, 1.0, 1.0, 1.0]) + torch.tensor([0.5, 0, 0, 0, 0])
    cloud0 = torch.cat([special, rest])
    cloud1 = torch.rand(25, 5, generator=g) * torch.tensor([2.4, 2.4, 1.2, 1.0, 1.0]) - 0.2
    points, num = batch(cloud0, cloud1, pad=5)
    features, indices, shape = voxelize(points, num, lower, upper, size)
    assert shape == (2, 4, 4) and indices.dtype == torch.int32 and indices.shape == (len(features), 4)

    sums: dict = {}
    for b, cloud in enumerate((cloud0, cloud1)):
        for p in cloud.tolist():
            cell = [math.floor((p[a] - lower[a]) / size[a]) for a in range(3)]
            if all(0 <= cell[a] < (4, 4, 2)[a] for a in range(3)):
                key = (b, cell[2], cell[1], cell[0])
                sums.setdefault(key, []).append(p)
    keys = sorted(sums)
    assert indices.tolist() == [list(k) for k in keys]  # (b, z, y, x), sorted
    expected = torch.tensor([[sum(col) / len(col) for col in zip(*sums[k])] for k in keys])
    torch.testing.assert_close(features, expected)
    first = keys.index((0, 0, 0, 0))
    torch.testing.assert_close(features[first, 3], torch.tensor(2.0))  # the two corner points only


def test_voxelize_max_voxels_is_a_deterministic_per_item_subset():
    points, num = batch(random_points(300, seed=2), random_points(40, seed=3))
    full_f, full_i, _ = voxelize(points, num, LOWER, UPPER, (0.4, 0.4, 0.4))
    f, i, _ = voxelize(points, num, LOWER, UPPER, (0.4, 0.4, 0.4), max_voxels=100)
    assert (i[:, 0] == 0).sum() == 100 and (i[:, 0] == 1).sum() == (full_i[:, 0] == 1).sum() <= 40
    rows = {tuple(r): k for k, r in enumerate(full_i.tolist())}
    torch.testing.assert_close(f, full_f[[rows[tuple(r)] for r in i.tolist()]])
    f2, i2, _ = voxelize(points, num, LOWER, UPPER, (0.4, 0.4, 0.4), max_voxels=100)
    assert torch.equal(i, i2) and torch.equal(f, f2)
    kept_x = i[i[:, 0] == 0, 3].float()  # spread over the scene, not the first rows in sorted order
    assert kept_x.min() < 5 and kept_x.max() > 14


def test_voxelize_rejects_bad_input():
    points, num = batch(random_points(10))
    with pytest.raises(ValueError, match="num_points"):
        voxelize(points, torch.tensor([points.shape[1] + 1]), LOWER, UPPER, (0.4, 0.4, 0.4))
    with pytest.raises(ValueError, match="whole"):
        voxelize(points, num, LOWER, UPPER, (0.3, 0.4, 0.4))
    with pytest.raises(ValueError, match="points"):
        voxelize(points[0], num, LOWER, UPPER, (0.4, 0.4, 0.4))


def test_encoder_shape_gradients_and_cpu_algorithm():
    enc = encoder().train()
    assert enc.xy_strides == 2 and not enc.resize and enc.spatial_shape == (4, 80, 80)
    points, num = batch(random_points(800, seed=4), random_points(500, seed=5))
    out = enc(points, num)
    assert out.shape == (2, TINY.out_channels, *BEV) and enc.out_channels == TINY.out_channels
    out.square().mean().backward()
    grad = enc.conv_input.conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert all(conv.algo == lidar._spconv().ConvAlgo.Native for conv in enc._convs)


def test_encoder_resize_and_projection_path():
    # z 16 voxels -> Z' = 2 does not divide 31 channels: a 1x1 projection; 15 x 15 is no power-of-two
    # fraction of 40 x 40: every stage strides and the map is resized.
    config = LidarConfig(voxel_size=(0.2, 0.2, 0.2), base_channels=8, stage_channels=(8, 16), out_channels=31)
    enc = encoder(config, bev=(15, 15), upper=(4.0, 4.0, 2.2)).train()
    assert enc.resize and enc.xy_strides == 2 and enc.dense_shape == (2, 10, 10)
    assert isinstance(enc.project, torch.nn.Sequential)
    points, num = batch(random_points(400, upper=(4.0, 4.0, 2.2)))
    out = enc(points, num)
    assert out.shape == (1, 31, 15, 15)
    out.mean().backward()
    assert enc.conv_input.conv.weight.grad.abs().sum() > 0


def test_batch_items_are_independent():
    enc = encoder().eval()  # in training, BatchNorm's batch statistics couple the items
    a, b1, b2 = random_points(300, seed=6), random_points(200, seed=7), random_points(450, seed=8)
    with torch.no_grad():
        out1 = enc(*batch(a, b1))
        out2 = enc(*batch(a, b2))
    torch.testing.assert_close(out1[0], out2[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out1[1], out2[1])


def test_single_point_lands_on_its_bev_cell():
    enc = encoder().eval()
    x, y = -3.1, 2.5  # column floor(0.9 / 0.4) = 2, row floor(6.5 / 0.4) = 16
    points = torch.tensor([[[x, y, 0.0, 0.5, 0.0]]])
    with torch.no_grad():
        out = enc(points, torch.tensor([1]))
    rows, cols = torch.nonzero(out[0].abs().sum(0)).unbind(1)
    assert len(rows) > 0
    assert (rows - 16).abs().max() <= 1 and (cols - 2).abs().max() <= 1, (rows, cols)


def test_empty_clouds_give_zero_maps():
    enc = encoder().train()
    points, num = batch(random_points(300, seed=9), random_points(5, seed=10))
    num[1] = 0
    out = enc(points, num)
    assert out[0].abs().sum() > 0 and torch.count_nonzero(out[1]) == 0
    out = enc(points, torch.tensor([0, 0]))
    assert out.shape == (2, TINY.out_channels, *BEV) and torch.count_nonzero(out) == 0


def test_encoder_rejects_bad_config():
    with pytest.raises(ValueError, match="point_range"):
        LidarEncoder(LidarConfig(point_range=(-50, -40, -1, 40, 40, 5.4)), LOWER, UPPER, BEV)
    with pytest.raises(ValueError, match="points"):
        encoder()(torch.zeros(1, 4, 4), torch.tensor([4]))


def test_missing_spconv_names_the_package(monkeypatch):
    import sys

    lidar._spconv.cache_clear()
    monkeypatch.setitem(sys.modules, "spconv.pytorch", None)  # makes the import fail
    try:
        with pytest.raises(ImportError, match="pip install spconv"):
            LidarEncoder(TINY, LOWER, UPPER, BEV)
    finally:
        lidar._spconv.cache_clear()


def test_importing_the_models_does_not_import_spconv():
    import subprocess
    import sys

    code = "import sys, radocc.models; assert 'spconv' not in sys.modules, 'spconv imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_paper_scale_forward_backward_on_cpu():
    """Default config on the Occ3D grid (800 x 800 x 32 voxels -> 256 x 200 x 200), 30k points."""
    lower, upper = (-40.0, -40.0, -1.0), (40.0, 40.0, 5.4)
    enc = LidarEncoder(LidarConfig(), lower, upper, (200, 200)).train()
    assert enc.xy_strides == 2 and not enc.resize and enc.dense_shape == (2, 200, 200)
    points, num = batch(random_points(30000, lower, upper, seed=11), pad=0)
    start = time.perf_counter()
    out = enc(points, num)
    out.square().mean().backward()
    print(f"LidarEncoder paper scale, 30k points, CPU 1 thread: {time.perf_counter() - start:.1f} s fwd+bwd")
    assert out.shape == (1, 256, 200, 200) and torch.isfinite(out).all()
    assert enc.conv_input.conv.weight.grad.abs().sum() > 0
