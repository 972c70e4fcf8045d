"""radocc.data.targets: projection, sparse depth, LSS depth targets and render rays per sample."""

import math

import numpy as np
import pytest
import torch

from radocc.data import DatasetConfig, NuScenesOccDataset
from radocc.data.targets import (SEGMENT_OFFSET, RayChoice, camera_depth_image, lss_depth_targets,
                                 project_points, render_targets, sparse_depth)
from radocc.rays import camera_rays, pixel_grid

torch.set_num_threads(1)

IMAGE_SIZE = (96, 160)
F, CX, CY = 100.0, 80.0, 48.0


def front_camera(x: float = 1.0, z: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """A pinhole camera at ego (x, 0, z) looking along ego +x (camera x = -ego y, y = -ego z)."""
    intrinsics = torch.tensor([[F, 0.0, CX], [0.0, F, CY], [0.0, 0.0, 1.0]])
    cam2ego = torch.eye(4)
    cam2ego[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    cam2ego[:3, 3] = torch.tensor([x, 0.0, z])
    return intrinsics, cam2ego


def rig() -> tuple[torch.Tensor, torch.Tensor]:
    """Two cameras: the front one, and one at the origin looking backwards (along ego -x)."""
    k0, t0 = front_camera()
    k1, t1 = front_camera(x=0.0, z=0.0)
    t1[:3, :3] = torch.diag(torch.tensor([-1.0, -1.0, 1.0])) @ t1[:3, :3]
    return torch.stack([k0, k1]), torch.stack([t0, t1])


# ----------------------------------------------------------------------------- projection
def test_point_straight_ahead_projects_to_principal_point():
    intrinsics, cam2ego = rig()
    points = torch.tensor([[11.0, 0.0, 1.5, 7.0, 0.0]])  # 10 m in front of camera 0, behind camera 1
    camera, uv, z, distance = project_points(points, intrinsics, cam2ego, IMAGE_SIZE)
    assert camera.tolist() == [0]
    torch.testing.assert_close(uv, torch.tensor([[CX, CY]]))
    torch.testing.assert_close(z, torch.tensor([10.0]))
    torch.testing.assert_close(distance, torch.tensor([10.0]))


def test_projection_off_axis_distance_and_depth():
    intrinsics, cam2ego = rig()
    # ego y = +2 is camera x = -2 (left of the image centre); ego z = 2.5 is 1 m up (camera y = -1)
    points = torch.tensor([[11.0, 2.0, 2.5], [-10.0, 1.0, 0.0]])
    camera, uv, z, distance = project_points(points, intrinsics, cam2ego, IMAGE_SIZE)
    assert camera.tolist() == [0, 1]
    torch.testing.assert_close(uv[0], torch.tensor([CX - F * 0.2, CY - F * 0.1]))
    torch.testing.assert_close(z[0], torch.tensor(10.0))
    torch.testing.assert_close(distance[0], torch.tensor(math.sqrt(100 + 4 + 1)))
    # camera 1 looks along -x: ego (-10, 1, 0) is 10 m ahead, 1 m to its right (camera x = +1)
    torch.testing.assert_close(uv[1], torch.tensor([CX + F * 0.1, CY]))
    torch.testing.assert_close(distance[1], torch.tensor(math.sqrt(101)))


def test_points_behind_near_or_outside_are_dropped():
    intrinsics, cam2ego = rig()
    points = torch.tensor([
        [11.0, 0.0, 1.5],     # kept (camera 0)
        [-0.3, 0.0, 0.0],     # 0.3 m in front of camera 1: nearer than min_depth; behind camera 0
        [1.2, 0.0, 1.5],      # 0.2 m in front of camera 0: nearer than min_depth; behind camera 1
        [11.0, 20.0, 1.5],    # 10 m ahead but u = 79.5 - 200 < 0: outside the image
        [11.0, 0.0, -10.0],   # below the image (v > H - 1)
        [-3.0, 0.0, 1.5],     # behind camera 0, 3 m ahead of camera 1 but v = 48 - 50 < 0
    ])
    camera, uv, z, distance = project_points(points, intrinsics, cam2ego, IMAGE_SIZE)
    assert camera.tolist() == [0]
    torch.testing.assert_close(z, torch.tensor([10.0]))
    camera, *_ = project_points(points, intrinsics, cam2ego, IMAGE_SIZE, min_depth=0.1)
    assert camera.tolist() == [0, 0, 1]  # the 0.2 m point (cam 0) and the 0.5 m point (cam 1) come back


def test_project_points_rejects_bad_shapes():
    intrinsics, cam2ego = rig()
    with pytest.raises(ValueError, match="points"):
        project_points(torch.zeros(4, 2), intrinsics, cam2ego, IMAGE_SIZE)
    with pytest.raises(ValueError, match="intrinsics"):
        project_points(torch.zeros(4, 3), intrinsics[0], cam2ego, IMAGE_SIZE)
    with pytest.raises(ValueError, match="cam2ego"):
        project_points(torch.zeros(4, 3), intrinsics, cam2ego[:1], IMAGE_SIZE)


# ----------------------------------------------------------------------------- depth images
def test_sparse_depth_keeps_the_nearest_per_pixel():
    camera = torch.tensor([0, 0, 0, 1, 0])
    uv = torch.tensor([[10.2, 5.1], [9.8, 4.9], [10.0, 5.0], [10.0, 5.0], [0.0, 95.0]])
    depth = torch.tensor([7.0, 3.0, 5.0, 2.0, 9.0])
    out = sparse_depth(camera, uv, depth, 3, IMAGE_SIZE)
    assert out.shape == (3, *IMAGE_SIZE)
    assert out[0, 5, 10] == 3.0  # three points in one pixel: the nearest wins
    assert out[1, 5, 10] == 2.0  # the same pixel of another camera is separate
    assert out[0, 95, 0] == 9.0
    assert (out != 0).sum() == 3 and out[2].abs().sum() == 0


def test_lss_depth_targets_min_nonzero_per_patch():
    depth = torch.zeros(2, 32, 48)
    depth[0, 0, 0], depth[0, 15, 15], depth[0, 3, 7] = 5.0, 2.0, 9.0  # patch (0, 0): 2
    depth[0, 16, 40] = 4.0                                            # patch (1, 2): 4
    depth[1, 31, 47] = 1.5                                            # camera 1, patch (1, 2)
    out = lss_depth_targets(depth)
    expected = torch.zeros(2, 2, 3)
    expected[0, 0, 0], expected[0, 1, 2], expected[1, 1, 2] = 2.0, 4.0, 1.5
    torch.testing.assert_close(out, expected)


def test_lss_depth_targets_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(3, 64, 32, generator=gen) * 40 + 1
    depth[torch.rand(depth.shape, generator=gen) < 0.97] = 0  # sparse, like LiDAR
    depth[:, :16, :16] = 0  # one empty patch per camera
    out = lss_depth_targets(depth, downsample=8)
    assert out.shape == (3, 8, 4)
    for n in range(3):
        for i in range(8):
            for j in range(4):
                patch = depth[n, i * 8:(i + 1) * 8, j * 8:(j + 1) * 8]
                nonzero = patch[patch > 0]
                assert out[n, i, j] == (nonzero.min() if len(nonzero) else 0.0)
    assert (out[:, :2, :2] == 0).all()


def test_lss_depth_targets_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of 16"):
        lss_depth_targets(torch.zeros(1, 90, 160))
    with pytest.raises(ValueError, match="depth_image"):
        lss_depth_targets(torch.zeros(90, 160))


def test_camera_depth_image_uses_camera_z():
    intrinsics, cam2ego = rig()
    points = torch.tensor([[11.0, 2.0, 2.5, 0, 0], [21.0, 4.0, 3.5, 0, 0], [-10.0, 0.0, 0.0, 0, 0]])
    item = dict(images=torch.zeros(2, 3, *IMAGE_SIZE), intrinsics=intrinsics, cam2ego=cam2ego,
                points=points)
    out = camera_depth_image(item)
    assert out.shape == (2, *IMAGE_SIZE)
    assert out[0, int(CY - 10), int(CX - 20)] == 10.0  # camera z (10), not the distance (10.25)
    assert out[1, int(CY), int(CX)] == 10.0
    assert (out > 0).sum() == 2  # the point at 20 m hits the same pixel as the 10 m one: nearest kept


# ----------------------------------------------------------------------------- render targets
@pytest.fixture(scope="module")
def item(synthetic_root):
    dataset = NuScenesOccDataset(synthetic_root, "v1.0-mini", "train", DatasetConfig(image_size=IMAGE_SIZE))
    return dataset[0]


def lidar_counts(item) -> torch.Tensor:
    camera, *_ = project_points(item["points"], item["intrinsics"], item["cam2ego"], IMAGE_SIZE)
    return camera.bincount(minlength=len(item["intrinsics"]))


def rays(out: dict, item: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """origins, directions [N * P, 3] of the rays through the item's ray pixels."""
    origins, directions = camera_rays(item["intrinsics"][None], item["cam2ego"][None],
                                      pixels=out["ray_pixels"][None])
    return origins[0], directions[0]


def cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact pairwise distances (cdist's default matmul form loses ~0.05 at these magnitudes)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def snap(pixels: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[P, 2] the candidate pixel nearest each of ``pixels`` (the exact value the rays were built from:
    recovering it from a direction leaves ~1e-4 px of float error, enough to flip a rounding)."""
    distance = cdist(pixels, candidates)
    assert distance.min(dim=1).values.max() < 1e-2
    return candidates[distance.argmin(dim=1)]


def lookup(image: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """image [N, H, W] at pixels [N, P, 2] (u, v), nearest pixel centre -> [N, P]."""
    rows, cols = pixels[..., 1].round().long(), pixels[..., 0].round().long()
    return image[torch.arange(len(image))[:, None], rows, cols]


def check_rays(out: dict, item: dict, per_camera: int) -> None:
    num_cams = len(item["intrinsics"])
    assert out["ray_pixels"].shape == (num_cams, per_camera, 2)
    assert out["ray_pixels"].dtype == torch.float32
    assert out["ray_valid"].shape == out["ray_depth"].shape == (num_cams, per_camera)
    assert out["ray_valid"].dtype == torch.bool and out["ray_depth"].dtype == torch.float32
    assert "ray_origins" not in out and "ray_directions" not in out  # built in the step
    assert (out["ray_depth"][~out["ray_valid"]] == 0).all()


def test_lidar_rays_hit_lidar_points(item):
    out = render_targets(item, RayChoice("lidar", rays_per_image=128), np.random.default_rng(0))
    check_rays(out, item, 128)
    assert lidar_counts(item).min() >= 128 and out["ray_valid"].all()  # enough points: no padding
    depth = out["ray_depth"].reshape(-1)
    assert (depth > 0.5).all()
    origins, directions = rays(out, item)
    ends = origins + depth[:, None] * directions
    nearest = cdist(ends, item["points"][:, :3]).min(dim=1).values
    assert nearest.max() < 0.05
    # ...and those points project inside the ray's camera image
    pixels = out["ray_pixels"]
    assert (pixels[..., 0] >= 0).all() and (pixels[..., 0] <= IMAGE_SIZE[1] - 1).all()
    assert (pixels[..., 1] >= 0).all() and (pixels[..., 1] <= IMAGE_SIZE[0] - 1).all()


def test_lidar_rays_padding(item):
    counts = lidar_counts(item)
    per_camera = int(counts.min()) + 50  # at least one camera has fewer LiDAR pixels than that
    out = render_targets(item, RayChoice("lidar", rays_per_image=per_camera), np.random.default_rng(1))
    check_rays(out, item, per_camera)
    valid = out["ray_valid"]
    assert valid.sum(dim=1).tolist() == counts.clamp(max=per_camera).tolist()
    assert not valid.all()
    depth = out["ray_depth"]
    assert (depth[valid] > 0).all() and (depth[~valid] == 0).all()


def test_lidar_rays_without_points(item):
    empty = dict(item, points=item["points"][:0])
    out = render_targets(empty, RayChoice("lidar", rays_per_image=16), np.random.default_rng(0))
    check_rays(out, empty, 16)
    assert not out["ray_valid"].any() and (out["ray_depth"] == 0).all()


def test_grid_rays_follow_pixel_grid(item):
    stride = 8
    grid = pixel_grid(IMAGE_SIZE, stride)  # [G, 2]
    out = render_targets(item, RayChoice("grid", stride=stride, rays_per_image=0), np.random.default_rng(0))
    check_rays(out, item, len(grid))
    assert out["ray_valid"].all()
    pixels = torch.stack([snap(p, grid) for p in out["ray_pixels"]])  # [N, G, 2]
    for n in range(len(pixels)):  # every grid pixel exactly once per camera (in a random order)
        assert torch.equal(pixels[n][torch.argsort(pixels[n, :, 1] * 1000 + pixels[n, :, 0])], grid)
    # LiDAR depth at the grid pixels: the nearest return in the pixel containing the grid point
    camera, uv, _, dist = project_points(item["points"], item["intrinsics"], item["cam2ego"], IMAGE_SIZE)
    expected = lookup(sparse_depth(camera, uv, dist, len(pixels), IMAGE_SIZE), pixels)
    torch.testing.assert_close(out["ray_depth"], expected)
    assert (expected > 0).any() and (expected == 0).any()


def test_grid_rays_subsample_and_pad(item):
    grid = pixel_grid(IMAGE_SIZE, 16)  # 6 x 10 = 60 pixels
    out = render_targets(item, RayChoice("grid", stride=16, rays_per_image=20), np.random.default_rng(0))
    check_rays(out, item, 20)
    assert out["ray_valid"].all()
    for pixels in out["ray_pixels"]:  # 20 distinct grid pixels per camera
        assert snap(pixels, grid).unique(dim=0).shape == (20, 2)
    # more rays than grid pixels: padding. Put a LiDAR return 10 m behind grid pixel 0 of every camera
    # (the pixel the padding repeats): padded rays must still get depth 0. The return is 0.1 px off
    # the block centre (7.5, 7.5), which is a rounding tie between pixels 7 and 8.
    num_cams = len(item["intrinsics"])
    origins, directions = camera_rays(item["intrinsics"][None], item["cam2ego"][None],
                                      pixels=(grid[:1] + 0.1).expand(1, num_cams, 1, 2))
    extra = torch.zeros(num_cams, item["points"].shape[1])
    extra[:, :3] = origins[0] + 10.0 * directions[0]
    hit = dict(item, points=torch.cat([item["points"], extra]))
    out = render_targets(hit, RayChoice("grid", stride=16, rays_per_image=64), np.random.default_rng(0))
    check_rays(out, hit, 64)
    valid = out["ray_valid"]
    assert (valid.sum(dim=1) == 60).all()
    pixel0 = (out["ray_pixels"] - grid[0]).norm(dim=-1) < 1e-2  # [N, 64]: pixel 0 and the padding
    assert (pixel0 & valid).sum(dim=1).tolist() == [1] * num_cams
    torch.testing.assert_close(out["ray_depth"][pixel0 & valid], torch.full((num_cams,), 10.0))


def fake_segments(num_cams: int) -> torch.Tensor:
    """[N, H, W] int64: 8 x 8 blocks numbered from 1, every third column of blocks 0 (no segment),
    the bottom-right block 65535 (the largest 16-bit id)."""
    height, width = IMAGE_SIZE
    rows = torch.arange(height)[:, None] // 8
    cols = torch.arange(width)[None, :] // 8
    ids = rows * (width // 8) + cols + 1
    ids = torch.where(cols % 3 == 0, 0, ids)
    ids[-8:, -8:] = SEGMENT_OFFSET - 1
    return ids.expand(num_cams, height, width).clone()


@pytest.mark.parametrize("choice", [RayChoice("grid", stride=1, rays_per_image=0),
                                    RayChoice("lidar", rays_per_image=256)], ids=["grid", "lidar"])
def test_segment_ids_are_offset_per_camera(item, choice):
    num_cams = len(item["intrinsics"])
    segments = fake_segments(num_cams)
    out = render_targets(dict(item, segments=segments), choice, np.random.default_rng(0))
    ids = out["ray_segments"]
    assert ids.dtype == torch.int64 and ids.shape == out["ray_valid"].shape
    pixels = out["ray_pixels"]
    if choice.pixels == "grid":  # stride 1: integer pixels
        assert torch.equal(pixels, pixels.round())
    else:  # the projected LiDAR points
        camera, uv, *_ = project_points(item["points"], item["intrinsics"], item["cam2ego"], IMAGE_SIZE)
        assert torch.equal(pixels, torch.stack([snap(p, uv[camera == n]) for n, p in enumerate(pixels)]))
    looked_up = lookup(segments, pixels)  # [N, P]
    for n in range(num_cams):
        mine = ids[n][ids[n] > 0]
        assert ((mine >= n * SEGMENT_OFFSET + 1) & (mine < (n + 1) * SEGMENT_OFFSET)).all()
    offset = torch.arange(num_cams)[:, None] * SEGMENT_OFFSET
    torch.testing.assert_close(ids, torch.where(looked_up > 0, looked_up + offset, 0))
    assert (ids == 0).any() and (ids > 0).any()  # both "no segment" and segments were hit
    if choice.pixels == "grid":  # every pixel: the top 16-bit id shows up in every camera
        assert (ids == offset + SEGMENT_OFFSET - 1).any(dim=1).all()


def test_padded_rays_have_no_segment(item):
    per_camera = int(lidar_counts(item).max()) + 10  # every camera is padded
    segments = torch.ones(len(item["intrinsics"]), *IMAGE_SIZE, dtype=torch.int64)  # one segment everywhere
    out = render_targets(dict(item, segments=segments), RayChoice("lidar", rays_per_image=per_camera),
                         np.random.default_rng(0))
    valid = out["ray_valid"]
    assert (~valid).any() and (out["ray_segments"][~valid] == 0).all()
    cams = torch.arange(len(segments))[:, None].expand(-1, per_camera)
    assert (out["ray_segments"][valid] == cams[valid] * SEGMENT_OFFSET + 1).all()


def test_no_segments_key_without_segments(item):
    out = render_targets(item, RayChoice("lidar", rays_per_image=8), np.random.default_rng(0))
    assert "ray_segments" not in out


@pytest.mark.parametrize("choice", [RayChoice("lidar", rays_per_image=64),
                                    RayChoice("grid", stride=8, rays_per_image=64)], ids=["lidar", "grid"])
def test_same_seed_same_rays(item, choice):
    a = render_targets(item, choice, np.random.default_rng(3))
    b = render_targets(item, choice, np.random.default_rng(3))
    c = render_targets(item, choice, np.random.default_rng(4))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["ray_pixels"], c["ray_pixels"])
    assert not torch.equal(a["ray_depth"], c["ray_depth"])


def test_bad_choices():
    with pytest.raises(ValueError, match="pixels"):
        RayChoice("random")
    with pytest.raises(ValueError, match="stride"):
        RayChoice("grid", stride=0)
    with pytest.raises(ValueError, match="rays_per_image"):
        RayChoice("grid", rays_per_image=-1)


def test_lidar_needs_a_ray_count(item):
    with pytest.raises(ValueError, match="rays_per_image"):
        render_targets(item, RayChoice("lidar", rays_per_image=0), np.random.default_rng(0))
