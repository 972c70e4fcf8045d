"""Camera rays through the nuScenes rig, the pictures and the renderer demo."""

import numpy as np
import pytest
import torch
from PIL import Image

from radocc import demo, viz
from radocc.data import occ3d
from radocc.rays import camera_rays, pixel_grid
from radocc.data.rig import CAMERA_NAMES, camera_matrices


def test_pixel_grid_centres_blocks():
    grid = pixel_grid((4, 6), stride=2)
    assert grid.shape == (6, 2)
    assert grid[:3].tolist() == [[0.5, 0.5], [2.5, 0.5], [4.5, 0.5]]
    assert grid[3].tolist() == [0.5, 2.5]


def test_rays_pass_through_projected_points():
    intrinsics, cam2ego = (torch.from_numpy(m)[None] for m in camera_matrices((90, 160)))
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 6, 7, 2, generator=gen, dtype=torch.float64) * torch.tensor(
        [160.0, 90.0], dtype=torch.float64)
    origins, directions = camera_rays(intrinsics, cam2ego, pixels=pixels)
    assert origins.shape == directions.shape == (1, 42, 3)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(1, 42, dtype=torch.float64))
    points = origins + 7.5 * directions  # ego frame, 7.5 m along each ray
    ego2cam = torch.linalg.inv(cam2ego)[0].repeat_interleave(7, dim=0)  # [42, 4, 4]
    in_cam = (ego2cam[:, :3, :3] @ points[0, :, :, None])[..., 0] + ego2cam[:, :3, 3]
    projected = (intrinsics[0].repeat_interleave(7, dim=0) @ in_cam[..., None])[..., 0]
    uv = projected[:, :2] / projected[:, 2:]
    torch.testing.assert_close(uv, pixels.reshape(42, 2))
    assert (in_cam[:, 2] > 0).all()  # in front of the camera


def test_rig_looks_where_nuscenes_cameras_look():
    cam2ego = torch.from_numpy(camera_matrices()[1])
    forward = cam2ego[:, :3, 2]  # optical axes in the ego frame
    yaw = torch.rad2deg(torch.atan2(forward[:, 1], forward[:, 0]))
    expected = {"CAM_FRONT": 0, "CAM_FRONT_LEFT": 55, "CAM_FRONT_RIGHT": -55, "CAM_BACK_LEFT": 110,
                "CAM_BACK_RIGHT": -110}
    for name, angle in expected.items():
        assert yaw[CAMERA_NAMES.index(name)].item() == pytest.approx(angle, abs=2)
    assert abs(yaw[CAMERA_NAMES.index("CAM_BACK")].item()) == pytest.approx(180, abs=1)
    assert (cam2ego[:, 2, 3] > 1.4).all()  # about 1.5 m above the ground


def test_bev_labels_take_the_highest_voxel_forward_up():
    sem = np.full((4, 3, 2), 17, dtype=np.uint8)
    sem[3, 2, 0] = 11  # front-left corner, ground
    sem[3, 2, 1] = 4  # a car on it
    sem[0, 0, 0] = 13  # back-right corner
    bev = viz.bev_labels(sem)
    assert bev.shape == (4, 3)
    assert bev[0, 0] == 4 and bev[3, 2] == 13
    assert (bev == 17).sum() == 10


def test_demo_writes_pictures(tmp_path):
    assert demo.main(["--out", str(tmp_path), "--height", "18", "--width", "32"]) == 0
    semantics = np.asarray(Image.open(tmp_path / "semantics.png"))
    assert semantics.shape == (36, 96, 3)
    colours = {tuple(c) for c in semantics.reshape(-1, 3)}
    road = tuple(viz.OCC3D_PALETTE[occ3d.DRIVEABLE_SURFACE])
    assert road in colours and len(colours) >= 4  # the road and more classes are seen
    depth = np.asarray(Image.open(tmp_path / "depth.png"))
    assert depth.shape == (36, 96, 3) and depth.std() > 10
    assert np.asarray(Image.open(tmp_path / "bev.png")).shape == (600, 600, 3)


def test_sample_picture_of_a_synthetic_sample(synthetic_root, tmp_path):
    out = tmp_path / "sample.png"
    assert viz.main(["--data-root", synthetic_root, "--split", "val", "--height", "45",
                     "--width", "80", "--out", str(out)]) == 0
    picture = np.asarray(Image.open(out))
    assert picture.shape == (90 + 120, 240, 3)  # 2 x 3 cameras, then two 120 px BEV panels
    bev, lidar = picture[90:, :120], picture[90:, 120:]
    road = viz.OCC3D_PALETTE[11]
    assert (bev == road).all(-1).mean() > 0.05  # the road seen from above
    assert (lidar != (bev * 0.35).astype(np.uint8)).any(-1).mean() > 0.01  # LiDAR points drawn
