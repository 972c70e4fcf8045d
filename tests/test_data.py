"""The data layer: the synthetic generator, the devkit-based loader, augmentation and bad input.

All tests share one tiny synthetic dataset (``synthetic_root`` in conftest.py: 2 scenes x 2
samples, 160x90 images); tests that break files work on copies.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from radocc.data import DataError, DatasetConfig, NuScenesOccDataset, collate
from radocc.data import nuscenes_dataset, occ3d, transforms
from radocc.data.rig import CAMERA_NAMES, CAMERAS

VERSION = "v1.0-mini"


def _copy(root: str, tmp_path) -> str:
    dst = os.path.join(tmp_path, "copy")
    shutil.copytree(root, dst)
    return dst


def _first_labels(root: str) -> str:
    ds = NuScenesOccDataset(root, VERSION, "train")
    return os.path.join(root, ds.records[0]["occ_path"])


def _project(points: torch.Tensor, intrinsics: torch.Tensor, cam2ego: torch.Tensor):
    """Ego points [P, 3] -> pixel (u, v) [P, 2], camera depth z [P], camera-frame points [P, 3]."""
    t = cam2ego.double()
    cam = (points.double() - t[:3, 3]) @ t[:3, :3]
    uvw = cam @ intrinsics.double().T
    return uvw[:, :2] / uvw[:, 2:3], cam[:, 2], cam


def _in_image(uv, z, height, width):
    return (z > 0.5) & (uv[:, 0] > -0.5) & (uv[:, 0] < width - 0.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < height - 0.5)


def _occupied_fraction(points: np.ndarray, semantics: np.ndarray) -> tuple[float, int]:
    idx, inside = occ3d.points_to_voxel_indices(points)
    idx = idx[inside]
    occupied = semantics[idx[:, 0], idx[:, 1], idx[:, 2]] != occ3d.FREE
    return float(occupied.mean()), int(inside.sum())


# --- the generated dataset through the devkit -------------------------------------------------

def test_devkit_opens_generated_dataset(synthetic_root):
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.data_classes import LidarPointCloud

    nusc = NuScenes(VERSION, dataroot=synthetic_root, verbose=False)
    assert [s["name"] for s in nusc.scene] == ["scene-0061", "scene-0103"]
    assert len(nusc.sample) == 4 and len(nusc.sample_data) == 4 * 7
    assert len(nusc.sample_annotation) > 10 and len(nusc.instance) > 5
    for sample in nusc.sample:
        assert set(sample["data"]) == set(CAMERA_NAMES) | {"LIDAR_TOP"}
        for channel, sd_token in sample["data"].items():
            path = nusc.get_sample_data_path(sd_token)
            assert os.path.isfile(path), path
            sd = nusc.get("sample_data", sd_token)
            if channel == "LIDAR_TOP":
                pc = LidarPointCloud.from_file(path)
                assert pc.points.shape[0] == 4 and pc.points.shape[1] == os.path.getsize(path) // 20 > 5000
            else:
                with Image.open(path) as img:
                    assert img.size == (sd["width"], sd["height"]) == (160, 90)
                cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
                fx = cs["camera_intrinsic"][0][0]
                assert fx == pytest.approx(CAMERAS[channel].focal * 160 / 1600)
        # the devkit's own box / sample_data machinery works on the tables
        _, boxes, intrinsic = nusc.get_sample_data(sample["data"]["CAM_FRONT"])
        assert intrinsic.shape == (3, 3)
    # instance chains are consistent
    for inst in nusc.instance:
        ann = nusc.get("sample_annotation", inst["first_annotation_token"])
        count = 1
        while ann["next"]:
            ann = nusc.get("sample_annotation", ann["next"])
            count += 1
        assert count == inst["nbr_annotations"] and ann["token"] == inst["last_annotation_token"]


def test_official_splits_find_the_scenes(synthetic_root):
    from nuscenes.utils import splits

    train = NuScenesOccDataset(synthetic_root, VERSION, "train")
    val = NuScenesOccDataset(synthetic_root, VERSION, "mini_val")
    assert {r["scene_name"] for r in train.records} == {"scene-0061"} <= set(splits.mini_train)
    assert {r["scene_name"] for r in val.records} == {"scene-0103"} <= set(splits.mini_val)
    assert len(train) == len(val) == 2
    assert not {r["sample_token"] for r in train.records} & {r["sample_token"] for r in val.records}
    with pytest.raises(DataError, match="unknown split 'nope'"):
        NuScenesOccDataset(synthetic_root, VERSION, "nope")


def test_item_shapes_and_dtypes(synthetic_root):
    item = NuScenesOccDataset(synthetic_root, VERSION, "train")[1]
    assert item["images"].shape == (6, 3, 90, 160) and item["images"].dtype == torch.float32
    assert 0.0 <= float(item["images"].min()) and float(item["images"].max()) <= 1.0
    assert float(item["images"].std()) > 0.05  # not blank
    assert item["intrinsics"].shape == (6, 3, 3) and item["cam2ego"].shape == (6, 4, 4)
    assert item["lidar2ego"].shape == (4, 4) and item["ego2global"].shape == (4, 4)
    assert item["points"].ndim == 2 and item["points"].shape[1] == 5 and item["points"].dtype == torch.float32
    assert item["points"].shape[0] > 5000 and torch.all(item["points"][:, 4] == 0)
    assert item["semantics"].shape == (200, 200, 16) and item["semantics"].dtype == torch.int64
    assert int(item["semantics"].max()) == occ3d.FREE and int(item["semantics"].min()) >= 0
    for key in ("mask_lidar", "mask_camera"):
        assert item[key].shape == (200, 200, 16) and item[key].dtype == torch.bool
        assert 0.01 < float(item[key].float().mean()) < 0.9
    assert "segments" not in item  # no sam_segments directory
    assert isinstance(item["sample_token"], str) and len(item["sample_token"]) == 32
    present = set(item["semantics"].unique().tolist())
    assert {occ3d.CAR, occ3d.DRIVEABLE_SURFACE, occ3d.SIDEWALK, occ3d.MANMADE, occ3d.VEGETATION} <= present
    batch = collate([item, NuScenesOccDataset(synthetic_root, VERSION, "train")[0]])
    assert batch["images"].shape == (2, 6, 3, 90, 160) and batch["semantics"].shape == (2, 200, 200, 16)
    assert batch["points"].shape[0] == 2 and batch["num_points"].tolist()[0] == item["points"].shape[0]
    assert torch.equal(batch["points"][0, : item["points"].shape[0]], item["points"])
    assert batch["sample_token"][0] == item["sample_token"]


# --- geometry ------------------------------------------------------------------------------------

def test_lidar_points_lie_in_occupied_visible_voxels(synthetic_root):
    for item in NuScenesOccDataset(synthetic_root, VERSION, "val"):
        pts = item["points"][:, :3].numpy()
        frac, count = _occupied_fraction(pts, item["semantics"].numpy())
        assert count > 5000 and frac > 0.97
        idx, inside = occ3d.points_to_voxel_indices(pts)
        idx = idx[inside]
        assert item["mask_lidar"].numpy()[idx[:, 0], idx[:, 1], idx[:, 2]].mean() > 0.97


def test_lidar_projects_onto_pixel_with_matching_rendered_depth(synthetic_root):
    from radocc.rays import camera_rays
    from radocc.render import VoxelGrid, volume_render

    item = NuScenesOccDataset(synthetic_root, VERSION, "train")[0]
    pts = item["points"][:, :3].double()
    density = (item["semantics"] != occ3d.FREE).float()[None] * 1000.0
    height, width = item["images"].shape[-2:]
    errors, depths = [], []
    for n in range(6):
        uv, z, cam = _project(pts, item["intrinsics"][n], item["cam2ego"][n])
        keep = _in_image(uv, z, height, width) & (pts[:, 2] > 0.3) & (cam.norm(dim=1) < 30)
        pixels = uv[keep].round()
        origins, dirs = camera_rays(item["intrinsics"][n][None, None], item["cam2ego"][n][None, None],
                                    pixels=pixels[None, None].float())
        out = volume_render(density, origins, dirs, grid=VoxelGrid())
        rendered = out.depth[0] / out.opacity[0].clamp_min(1e-6)
        true = cam[keep].norm(dim=1)
        errors.append(rendered.double() - true)
        depths.append(true)
    signed, depth = torch.cat(errors), torch.cat(depths)
    tolerance = 0.5 + 0.03 * depth
    assert len(signed) > 300
    assert float(signed.abs().median()) < 0.25
    assert float((signed.abs() < tolerance).double().mean()) > 0.8
    # A camera ray never passes a LiDAR return unseen; shorter rendered depths are occlusions (the
    # camera sits lower than the LiDAR) or the Occ3D voxels' extra thickness.
    assert float((signed > tolerance).double().mean()) < 0.02


def test_image_colours_follow_the_projected_classes(synthetic_root):
    """Pixels under projected LiDAR points on vegetation are green, on the road grey."""
    item = NuScenesOccDataset(synthetic_root, VERSION, "train")[0]
    pts = item["points"][:, :3]
    idx, inside = occ3d.points_to_voxel_indices(pts.numpy())
    labels = np.full(len(pts), occ3d.FREE)
    labels[inside] = item["semantics"].numpy()[idx[inside, 0], idx[inside, 1], idx[inside, 2]]
    height, width = item["images"].shape[-2:]
    colours = {occ3d.VEGETATION: [], occ3d.DRIVEABLE_SURFACE: []}
    for n in range(6):
        uv, z, cam = _project(pts, item["intrinsics"][n], item["cam2ego"][n])
        keep = _in_image(uv, z, height, width) & (cam.norm(dim=1) < 20)
        u, v = uv[keep].round().long().T
        rgb = item["images"][n][:, v, u].T
        for label in colours:
            colours[label].append(rgb[torch.from_numpy(labels)[keep] == label])
    veg, road = (torch.cat(colours[k]) for k in (occ3d.VEGETATION, occ3d.DRIVEABLE_SURFACE))
    assert len(veg) > 20 and len(road) > 100
    veg_green = (veg[:, 1] > veg[:, 0]) & (veg[:, 1] > veg[:, 2])
    road_grey = (road.max(1).values - road.min(1).values) < 0.12
    assert float(veg_green.double().mean()) > 0.7 and float(road_grey.double().mean()) > 0.7


def test_multi_sweep_points_are_in_the_current_ego_frame(synthetic_root):
    ds = NuScenesOccDataset(synthetic_root, VERSION, "train", DatasetConfig(lidar_sweeps=3))
    first, second = ds[0], ds[1]
    single = NuScenesOccDataset(synthetic_root, VERSION, "train")
    assert torch.equal(first["points"], single[0]["points"])  # no earlier sweep exists
    lags = second["points"][:, 4]
    assert set(lags.unique().tolist()) == {0.0, 0.5}
    assert int((lags == 0).sum()) == single[1]["points"].shape[0]
    swept = second["points"][lags > 0, :3].numpy()
    frac, count = _occupied_fraction(swept, second["semantics"].numpy())
    # the static world lines up (without motion compensation about 0.73 would); moving things do not
    assert count > 5000 and frac > 0.82


def test_map_expansion_opens_and_matches_the_occupancy(synthetic_root):
    from nuscenes.map_expansion.map_api import NuScenesMap
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(VERSION, dataroot=synthetic_root, verbose=False)
    ds = NuScenesOccDataset(synthetic_root, VERSION, "train")
    item = ds[0]
    scene = nusc.get("scene", item["scene_token"])
    location = nusc.get("log", scene["log_token"])["location"]
    nmap = NuScenesMap(dataroot=synthetic_root, map_name=location)
    ego2global = item["ego2global"].numpy()
    x, y = ego2global[:2, 3]
    layers = ["road_segment", "lane", "ped_crossing", "road_divider", "lane_divider", "walkway", "drivable_area"]
    found = nmap.get_records_in_patch((x - 40, y - 40, x + 40, y + 40), layers, mode="intersect")
    for layer in layers:
        assert found[layer], layer
    assert nmap.layers_on_point(x, y)["lane"] != ""  # the ego drives on a lane
    assert nmap.get_arcline_path(found["lane"][0])

    rng = np.random.default_rng(0)
    global2ego = np.linalg.inv(ego2global)
    semantics = item["semantics"].numpy()

    def ground_labels(geom) -> np.ndarray:
        x0, y0, x1, y1 = geom.bounds
        cand = rng.uniform((x0, y0), (x1, y1), size=(20000, 2))
        from shapely import contains_xy
        cand = cand[contains_xy(geom, cand[:, 0], cand[:, 1])]
        ego = cand @ global2ego[:2, :2].T + global2ego[:2, 3]
        ego = ego[np.all(np.abs(ego) < 39.0, axis=1)]
        idx, _ = occ3d.points_to_voxel_indices(np.c_[ego, np.zeros(len(ego))])
        return semantics[idx[:, 0], idx[:, 1], 2]

    seg = nmap.extract_polygon(nmap.get("road_segment", found["road_segment"][0])["polygon_token"])
    road = ground_labels(seg)
    assert len(road) > 1000 and (road == occ3d.DRIVEABLE_SURFACE).mean() > 0.7
    walk = np.concatenate([ground_labels(nmap.extract_polygon(nmap.get("walkway", t)["polygon_token"]))
                           for t in found["walkway"]])
    assert len(walk) > 500 and (walk == occ3d.SIDEWALK).mean() > 0.6
    divider = nmap.extract_line(nmap.get("road_divider", found["road_divider"][0])["line_token"])
    assert seg.buffer(0.01).contains(divider)


# --- augmentation -----------------------------------------------------------------------------------

def test_flips_twice_are_identity():
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 18, size=(200, 200, 16), dtype=np.uint8)
    points = rng.normal(size=(50, 5)).astype(np.float32)
    for fx, fy in ((True, False), (False, True), (True, True)):
        assert np.array_equal(transforms.flip_occupancy(transforms.flip_occupancy(grid, fx, fy), fx, fy), grid)
        assert np.array_equal(transforms.flip_points(transforms.flip_points(points, fx, fy), fx, fy), points)
        f = transforms.bev_flip_matrix(fx, fy)
        assert np.array_equal(f @ f, np.eye(4))
    # the mirrored grid keeps each point's voxel: flipping maps voxel centres onto voxel centres
    idx, _ = occ3d.points_to_voxel_indices(np.array([[12.3, -7.9, 0.5]]))
    fidx, _ = occ3d.points_to_voxel_indices(np.array([[-12.3, 7.9, 0.5]]))
    assert np.array_equal(fidx[0], [199 - idx[0, 0], 199 - idx[0, 1], idx[0, 2]])
    tf = transforms.image_transform((160, 90), (128, 64), 1.2, (0.5, 0.3), flip=True)
    a = tf.matrix()
    twice = transforms.ImageTransform((128, 64), (128, 64), (0, 0), (128, 64), flip=True).matrix()
    assert np.allclose(twice @ twice, np.eye(3)) and not np.allclose(a, np.eye(3))


def test_bev_flip_is_consistent_across_occupancy_points_and_cameras(synthetic_root):
    base = NuScenesOccDataset(synthetic_root, VERSION, "train")[0]
    for fx, fy in ((True, False), (False, True), (True, True)):
        cfg = DatasetConfig(augment=True, seed=0, scale_range=(1.0, 1.0), image_flip_prob=0.0,
                            bev_flip_x_prob=float(fx), bev_flip_y_prob=float(fy))
        item = NuScenesOccDataset(synthetic_root, VERSION, "train", cfg)[0]
        dims = [d for d, f in ((0, fx), (1, fy)) if f]
        assert torch.equal(item["semantics"], base["semantics"].flip(dims))
        assert torch.equal(item["mask_camera"], base["mask_camera"].flip(dims))
        assert torch.equal(item["images"], base["images"])
        sign = torch.tensor([-1.0 if fx else 1.0, -1.0 if fy else 1.0, 1.0])
        assert torch.equal(item["points"][:, :3], base["points"][:, :3] * sign)
        # flipped points still land in occupied voxels of the flipped occupancy
        frac, _ = _occupied_fraction(item["points"][:, :3].numpy(), item["semantics"].numpy())
        assert frac > 0.97
        # ... and on the same pixels through the flipped camera poses
        for n in range(6):
            uv0, z0, _ = _project(base["points"][:, :3], base["intrinsics"][n], base["cam2ego"][n])
            uv1, z1, _ = _project(item["points"][:, :3], item["intrinsics"][n], item["cam2ego"][n])
            front = z0 > 0.5
            assert torch.allclose(uv0[front], uv1[front], atol=1e-2) and torch.allclose(z0, z1, atol=1e-4)
        # ... and at the same global positions
        g0 = base["points"][:, :3].double() @ base["ego2global"][:3, :3].T + base["ego2global"][:3, 3]
        g1 = item["points"][:, :3].double() @ item["ego2global"][:3, :3].T + item["ego2global"][:3, 3]
        assert torch.allclose(g0, g1, atol=1e-3)


def test_image_augmentation_updates_intrinsics(synthetic_root):
    base = NuScenesOccDataset(synthetic_root, VERSION, "train")[0]
    cfg = DatasetConfig(image_size=(64, 128), augment=True, seed=3, scale_range=(1.05, 1.3),
                        image_flip_prob=0.5, bev_flip_x_prob=0.0, bev_flip_y_prob=0.0)
    item = NuScenesOccDataset(synthetic_root, VERSION, "train", cfg)[0]
    assert item["images"].shape == (6, 3, 64, 128)
    assert (item["intrinsics"][:, 0, 0] < 0).any() and (item["intrinsics"][:, 0, 0] > 0).any()  # some flipped
    pts = base["points"][:, :3]
    diffs, baselines = [], []
    for n in range(6):
        uv0, z0, _ = _project(pts, base["intrinsics"][n], base["cam2ego"][n])
        uv1, z1, _ = _project(pts, item["intrinsics"][n], item["cam2ego"][n])
        keep = _in_image(uv0, z0, 90, 160) & _in_image(uv1, z1, 64, 128)
        c0 = _bilinear(base["images"][n], uv0[keep])
        c1 = _bilinear(item["images"][n], uv1[keep])
        diffs.append((c0 - c1).abs().mean(1))
        baselines.append((c0 - c1[torch.randperm(len(c1))]).abs().mean(1))
    diff, baseline = torch.cat(diffs), torch.cat(baselines)
    assert len(diff) > 1000
    assert float(diff.mean()) < 0.06 and float(diff.mean()) < 0.4 * float(baseline.mean())


def _bilinear(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Sample image [3, H, W] at pixel coordinates uv [P, 2] (pixel centres at integers) -> [P, 3]."""
    h, w = image.shape[-2:]
    grid = torch.stack([(uv[:, 0] + 0.5) / w * 2 - 1, (uv[:, 1] + 0.5) / h * 2 - 1], -1).float()
    out = torch.nn.functional.grid_sample(image[None], grid[None, None], align_corners=False)
    return out[0, :, 0].T


def test_segments_are_loaded_and_resized_with_nearest_neighbour(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path)
    ds = NuScenesOccDataset(root, VERSION, "train")
    # 16-bit segment maps: the id is the 20x20-pixel block index (+1), a different pattern per camera
    for rec in ds.records:
        for k, cam in enumerate(rec["cameras"]):
            v, u = np.mgrid[0:90, 0:160]
            ids = (1 + (v // 20) * 8 + (u // 20) + 100 * k).astype(np.uint16)
            stem = os.path.splitext(os.path.basename(cam["filename"]))[0]
            os.makedirs(os.path.join(root, "sam_segments", cam["channel"]), exist_ok=True)
            Image.fromarray(ids).save(os.path.join(root, "sam_segments", cam["channel"], f"{stem}.png"))
    item = NuScenesOccDataset(root, VERSION, "train", DatasetConfig(image_size=(45, 80)))[0]
    seg = item["segments"]
    assert seg.shape == (6, 45, 80) and seg.dtype == torch.int64
    v, u = np.mgrid[0:45, 0:80]
    expected = 1 + ((2 * v + 0.5) // 20) * 8 + ((2 * u + 0.5) // 20)
    for k in range(6):
        assert np.array_equal(seg[k].numpy(), expected + 100 * k)
    # the wrong size is refused, naming the file
    bad = os.path.join(root, "sam_segments", "CAM_BACK", os.path.splitext(
        os.path.basename(ds.records[0]["cameras"][3]["filename"]))[0] + ".png")
    Image.fromarray(np.ones((50, 50), np.uint16)).save(bad)
    with pytest.raises(DataError, match="CAM_BACK.*expected 90x160"):
        NuScenesOccDataset(root, VERSION, "train")[0]
    with pytest.raises(DataError, match="SAM segment map not found"):
        os.remove(bad)
        NuScenesOccDataset(root, VERSION, "train", DatasetConfig(load_segments=True))[0]
    assert "segments" not in NuScenesOccDataset(root, VERSION, "train", DatasetConfig(load_segments=False))[0]


def test_index_cache_is_json_and_reused(synthetic_root, tmp_path, monkeypatch):
    cache = str(tmp_path / "index.json")
    first = NuScenesOccDataset(synthetic_root, VERSION, "train", DatasetConfig(index_cache=cache))
    with open(cache) as f:
        assert len(json.load(f)["samples"]) == len(first)

    def no_devkit(*args, **kwargs):
        raise AssertionError("the devkit should not be opened when the cache matches")

    monkeypatch.setattr(nuscenes_dataset, "_open_devkit", no_devkit)
    again = NuScenesOccDataset(synthetic_root, VERSION, "train", DatasetConfig(index_cache=cache))
    assert again.records == first.records
    with pytest.raises(AssertionError, match="should not be opened"):  # a different config rebuilds
        NuScenesOccDataset(synthetic_root, VERSION, "train", DatasetConfig(index_cache=cache, lidar_sweeps=2))


# --- the generator ----------------------------------------------------------------------------------

def _tree(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_generation_is_deterministic_for_a_seed(tmp_path):
    from radocc.data.synthetic import main

    args = ["--scenes", "1", "--samples-per-scene", "1", "--image-size", "36", "64",
            "--lidar-azimuths", "360", "--quiet"]
    roots = [str(tmp_path / name) for name in ("a", "b", "c")]
    assert main(["--out", roots[0], "--seed", "3"] + args) == 0
    assert main(["--out", roots[1], "--seed", "3"] + args) == 0
    assert main(["--out", roots[2], "--seed", "4"] + args) == 0
    files = _tree(roots[0])
    assert files == _tree(roots[1]) and len(files) > 20
    _, mismatch, errors = filecmp.cmpfiles(roots[0], roots[1], files, shallow=False)
    assert not mismatch and not errors
    labels = [occ3d.load_labels(os.path.join(r, f)) for r, f in
              ((roots[0], next(f for f in files if f.endswith("labels.npz"))),
               (roots[2], next(f for f in _tree(roots[2]) if f.endswith("labels.npz"))))]
    assert not np.array_equal(labels[0].semantics, labels[1].semantics)
    with pytest.raises(SystemExit) as info:  # an existing dataset is not overwritten silently
        main(["--out", roots[0], "--seed", "5"] + args)
    assert info.value.code == 2 and filecmp.cmp(os.path.join(roots[0], files[0]), os.path.join(roots[1], files[0]))


# --- bad input ----------------------------------------------------------------------------------------

def test_root_without_tables(tmp_path):
    (tmp_path / "samples").mkdir()
    with pytest.raises(DataError, match="no nuScenes tables for version 'v1.0-mini'.*versions under"):
        NuScenesOccDataset(str(tmp_path), VERSION, "train")
    with pytest.raises(DataError, match="does not exist"):
        NuScenesOccDataset(str(tmp_path / "missing"), VERSION, "train")


def test_unknown_version(synthetic_root):
    with pytest.raises(DataError, match=r"v1\.0-nope.*v1\.0-mini"):
        NuScenesOccDataset(synthetic_root, "v1.0-nope", "train")


def test_missing_and_broken_tables(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path)
    os.remove(os.path.join(root, VERSION, "ego_pose.json"))
    with pytest.raises(DataError, match="ego_pose.json"):
        NuScenesOccDataset(root, VERSION, "train")
    with open(os.path.join(root, VERSION, "ego_pose.json"), "w") as f:
        f.write('[{"token": ')
    with pytest.raises(DataError, match="ego_pose.json.*not valid JSON"):
        NuScenesOccDataset(root, VERSION, "train")


def test_unknown_camera_name(synthetic_root):
    with pytest.raises(DataError, match="unknown camera name.*CAM_FRONTT.*CAM_FRONT"):
        NuScenesOccDataset(synthetic_root, VERSION, "train", DatasetConfig(cameras=("CAM_FRONT", "CAM_FRONTT")))


def test_missing_and_truncated_labels(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path)
    path = _first_labels(root)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"{re.escape(path)}.*cannot be read"):
        NuScenesOccDataset(root, VERSION, "train")[0]
    os.remove(path)
    with pytest.raises(DataError, match=f"Occ3D labels not found: {re.escape(path)}"):
        NuScenesOccDataset(root, VERSION, "train")[0]


@pytest.mark.parametrize("key, array, message", [
    ("semantics", np.zeros((200, 200, 17), np.uint8), r"'semantics' has shape \(200, 200, 17\), expected \(200, 200, 16\)"),
    ("mask_camera", np.zeros((200, 200, 16), np.float32), "'mask_camera' has dtype float32, expected uint8"),
    ("semantics", np.full((200, 200, 16), 40, np.uint8), "'semantics' holds class 40"),
    (None, None, r"lack key\(s\) \['mask_lidar'\]"),
])
def test_labels_with_wrong_arrays(synthetic_root, tmp_path, key, array, message):
    root = _copy(synthetic_root, tmp_path)
    path = _first_labels(root)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if key is None:
        del arrays["mask_lidar"]
    else:
        arrays[key] = array
    np.savez_compressed(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        NuScenesOccDataset(root, VERSION, "train")[0]
    assert path in str(info.value)


def test_undecodable_image_and_truncated_lidar(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path)
    ds = NuScenesOccDataset(root, VERSION, "train")
    image = os.path.join(root, ds.records[0]["cameras"][2]["filename"])
    with open(image, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DataError, match=f"camera image {re.escape(image)} cannot be decoded"):
        ds[0]
    Image.new("RGB", (80, 45)).save(image)
    with pytest.raises(DataError, match=f"{re.escape(image)} is 80x45, but its sample_data record says 160x90"):
        ds[0]
    lidar = os.path.join(root, ds.records[1]["lidar_filename"])
    with open(lidar, "r+b") as f:
        f.truncate(os.path.getsize(lidar) - 6)
    with pytest.raises(DataError, match=f"LiDAR file {re.escape(lidar)} is truncated"):
        ds[1]


def test_skip_bad_samples_warns_and_counts(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path)
    os.remove(_first_labels(root))
    ds = NuScenesOccDataset(root, VERSION, "train", DatasetConfig(skip_bad_samples=True))
    with pytest.warns(UserWarning, match="skipping sample 0.*labels not found"):
        item = ds[0]
    assert item["sample_token"] == ds.records[1]["sample_token"]
    assert ds.num_skipped == 1 and ds.skipped == {0}
    assert ds[1]["sample_token"] == ds.records[1]["sample_token"] and ds.num_skipped == 1
    os.remove(os.path.join(root, ds.records[1]["occ_path"]))
    with pytest.warns(UserWarning), pytest.raises(DataError, match="every sample"):
        ds[1]


def test_quaternions_match_pyquaternion():
    from pyquaternion import Quaternion

    from radocc.data.geometry import matrix_to_quaternion, quaternion_to_matrix

    rng = np.random.default_rng(0)
    for q in rng.normal(size=(50, 4)):
        q = q / np.linalg.norm(q)
        m = quaternion_to_matrix(q)
        assert np.allclose(m, Quaternion(q).rotation_matrix, atol=1e-12)
        back = np.asarray(matrix_to_quaternion(m))
        assert np.allclose(back, q * np.sign(q[0]), atol=1e-9)
