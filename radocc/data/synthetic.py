"""Synthetic Occ3D-nuScenes: procedural street scenes written in the real on-disk layout.

``python -m radocc.data.synthetic --out DIR [--scenes N] [--samples-per-scene M] [--seed S]
[--image-size H W]`` writes a dataset that ``nuscenes.NuScenes('v1.0-mini', dataroot=DIR)`` and
``NuScenesMap(dataroot=DIR, map_name=location)`` open unmodified:

    DIR/v1.0-mini/<13 tables>.json
    DIR/samples/CAM_*/<log>__<CAM>__<timestamp>.jpg      (6 cameras, the nuScenes rig)
    DIR/samples/LIDAR_TOP/<log>__LIDAR_TOP__<timestamp>.pcd.bin   (float32 x, y, z, intensity, ring)
    DIR/gts/<scene-name>/<sample-token>/labels.npz    (Occ3D semantics, mask_lidar, mask_camera)
    DIR/maps/expansion/<location>.json, DIR/maps/<token>.png

Scene names come from the official splits (mini_train / mini_val, or train / val for
``--version v1.0-trainval``), alternating train and val so that both splits are populated.
Every sample's world is rasterised in its ego frame on a fine grid (``render_voxel``); the Occ3D
labels are that grid pooled to 0.4 m; cameras and LiDAR are rendered from the fine grid by
``render_sensors`` through ``radocc.render.volume_render``; visibility masks are cast through the
Occ3D grid. Generation is deterministic for a seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm
from PIL import Image

from radocc.data import occ3d
from radocc.data.geometry import make_transform, matrix_to_quaternion, yaw_quaternion
from radocc.data.map_expansion import MapWriter
from radocc.data.nuscenes_tables import TableWriter, TokenMaker
from radocc.data.rig import (CAMERA_NAMES, CAMERAS, LIDAR, LIDAR_NAME, NATIVE_IMAGE_SIZE, camera_matrices,
                             lidar_beam_directions)
from radocc.data.world import FineGrid, World, boxes_at, build_world, downsample_labels, rasterise
from radocc.raycast import traverse

LOCATIONS: tuple[str, ...] = ("boston-seaport", "singapore-onenorth", "singapore-queenstown",
                              "singapore-hollandvillage")
SAMPLE_PERIOD_S = 0.5
"""Key frames are 2 Hz, as in nuScenes."""
SURFACE_DENSITY = 1000.0
"""Density (per metre) of occupied voxels when rendering sensors: surfaces are opaque."""
ANNOTATION_RANGE_M = 50.0


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. image_size is (H, W) pixels; render_voxel (m) must divide 0.4."""

    scenes: int = 4
    samples_per_scene: int = 8
    seed: int = 0
    image_size: tuple[int, int] = (225, 400)
    version: str = "v1.0-mini"
    render_voxel: float = 0.2
    lidar_azimuths: int = 1080
    lidar_dropout: float = 0.1
    lidar_range: float = 70.0
    mask_stride: int = 8
    jpeg_quality: int = 92


def scene_names(version: str, count: int) -> list[str]:
    """``count`` official scene names for ``version``, alternating the train and val splits."""
    from nuscenes.utils import splits

    if version == "v1.0-mini":
        train, val = list(splits.mini_train), list(splits.mini_val)
    elif version == "v1.0-trainval":
        train, val = list(splits.train), list(splits.val)
    else:
        raise ValueError(f"synthetic data can be written as v1.0-mini or v1.0-trainval, not {version!r}")
    names: list[str] = []
    while len(names) < count and (train or val):
        for pool in (train, val):
            if pool and len(names) < count:
                names.append(pool.pop(0))
    if len(names) < count:
        raise ValueError(f"{version} has only {len(names)} scene names; asked for {count} scenes")
    return names


def render_sensors(grid: FineGrid, intrinsics: np.ndarray, cam2ego: np.ndarray, image_size: tuple[int, int],
                   lidar2ego: np.ndarray, beam_dirs: np.ndarray, beam_rings: np.ndarray,
                   rng: np.random.Generator, lidar_range: float = 70.0,
                   lidar_dropout: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Render the six camera images and one LiDAR sweep of a rasterised world (the only rendering).

    Occupied voxels get density SURFACE_DENSITY and features (RGB colour, reflectivity); all camera
    pixels and LiDAR beams go through one ``radocc.render.volume_render`` call (exact voxel
    traversal). Pixels show the rendered colour, shaded by the face of the surface voxel the ray
    entered, over sky / far-ground colours; LiDAR returns lie 2 cm inside that face.

    Args:
        grid: the world in the ego frame (FineGrid).
        intrinsics: [N, 3, 3] pixels, for ``image_size``; cam2ego: [N, 4, 4].
        image_size: (H, W) pixels.
        lidar2ego: [4, 4]; beam_dirs: [R, 3] unit vectors in the LiDAR frame; beam_rings: [R] int.
    Returns:
        images: [N, H, W, 3] uint8 RGB.
        points: [P, 5] float32 (x, y, z in metres in the LiDAR frame, intensity 0..255, ring).
    """
    from radocc.rays import camera_rays
    from radocc.render import VoxelGrid, volume_render

    height, width = image_size
    lower = torch.tensor(grid.lower, dtype=torch.float32)
    voxel = (torch.tensor(grid.upper, dtype=torch.float32) - lower) / torch.tensor(grid.labels.shape)
    density = torch.from_numpy((grid.labels != occ3d.FREE).astype(np.float32) * SURFACE_DENSITY)[None]
    features = torch.from_numpy(np.concatenate([grid.colours, grid.intensity[..., None]], axis=-1))[None]

    # One render for all camera pixels and LiDAR beams.
    origins, dirs = camera_rays(torch.from_numpy(intrinsics).float()[None], torch.from_numpy(cam2ego).float()[None],
                                image_size=(height, width))
    rot, lidar_origin = lidar2ego[:3, :3], lidar2ego[:3, 3]
    lidar_dirs = beam_dirs @ rot.T
    origins = torch.cat([origins[0], torch.from_numpy(lidar_origin).float().expand(len(beam_dirs), 3)])
    dirs = torch.cat([dirs[0], torch.from_numpy(lidar_dirs).float()])
    with torch.no_grad():
        out = volume_render(density, origins[None], dirs[None], features, grid=VoxelGrid(grid.lower, grid.upper))
    num_pixels = len(intrinsics) * height * width
    opacity = out.opacity[0].clamp(0, 1)
    rendered = out.features[0] / opacity.clamp_min(1e-6)[:, None]
    # The expected depth is the midpoint of the ray's chord through the surface voxel (surfaces are
    # opaque); find where the ray entered that voxel and through which face (slab test).
    d = torch.nn.functional.normalize(dirs, dim=-1)
    depth = out.depth[0] / opacity.clamp_min(1e-6)
    corner = lower + torch.floor((origins + d * depth[:, None] - lower) / voxel) * voxel
    with torch.no_grad():
        t0, t1 = (corner - origins) / d, (corner + voxel - origins) / d
    t_near = torch.where(d == 0, torch.full_like(t0, -torch.inf), torch.minimum(t0, t1))
    entry, face_axis = t_near.max(dim=-1)

    # Cameras: the surface colour lit by the face the ray entered, over sky / far ground.
    dc, op = d[:num_pixels], opacity[:num_pixels, None]
    normal = -torch.nn.functional.one_hot(face_axis[:num_pixels], 3).float() * torch.sign(dc)
    light = torch.nn.functional.normalize(torch.tensor([0.45, 0.3, 0.85]), dim=0)
    shade = 0.55 + 0.45 * (normal @ light).clamp_min(0.0)
    up = dc[:, 2:3].clamp(0, 1)
    sky = torch.tensor([0.78, 0.82, 0.86]) * (1 - up) + torch.tensor([0.42, 0.58, 0.85]) * up
    background = torch.where(dc[:, 2:3] < -0.01, torch.tensor([0.42, 0.4, 0.32]).expand_as(sky), sky)
    colour = op * rendered[:num_pixels, :3] * shade[:, None] + (1 - op) * background
    colour = colour.numpy() + rng.normal(0.0, 0.012, colour.shape)
    images = (np.clip(colour, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(len(intrinsics), height, width, 3)

    # LiDAR: a return 2 cm inside the surface each beam reaches, dropped at random, within range.
    lop, ldepth = opacity[num_pixels:].numpy(), depth[num_pixels:].numpy()
    surface = np.minimum(entry[num_pixels:].numpy() + 0.02, ldepth)
    keep = (lop > 0.5) & (surface < lidar_range) & (rng.uniform(size=lop.shape) >= lidar_dropout)
    points_ego = lidar_origin + lidar_dirs[keep] * surface[keep, None]
    reflect = rendered[num_pixels:, 3].numpy()[keep]
    intensity = np.clip(255.0 * reflect * rng.uniform(0.8, 1.2, reflect.shape), 0, 255)
    points = (points_ego - lidar_origin) @ rot  # ego -> LiDAR frame
    return images, np.concatenate([points, intensity[:, None], beam_rings[keep, None]], axis=1).astype(np.float32)


def visibility_masks(semantics: np.ndarray, cam2ego: np.ndarray, lidar_origin: np.ndarray,
                     lidar_points: np.ndarray, mask_stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Occ3D visibility masks [200, 200, 16] bool, cast through the Occ3D grid (ego frame).

    mask_camera: voxels the camera rays (one every ``mask_stride`` pixels of a 1600x900 image) pass
    through, up to and including the first occupied voxel. mask_lidar: voxels the LiDAR rays pass
    through from ``lidar_origin`` [3] up to and including the voxel of their return ``lidar_points``
    [P, 3] (metres, ego frame), as Occ3D builds it from the sweep.
    """
    from radocc.rays import camera_rays

    occupied = torch.from_numpy(semantics != occ3d.FREE)
    k, _ = camera_matrices()
    origins, dirs = camera_rays(torch.from_numpy(k).float()[None], torch.from_numpy(cam2ego).float()[None],
                                image_size=NATIVE_IMAGE_SIZE, stride=mask_stride)
    mask_camera = traverse(occupied, origins[0], dirs[0], occ3d.GRID_LOWER, occ3d.GRID_UPPER,
                           return_visible=True).visible
    # An empty grid: a LiDAR ray's path ends at its return, whatever the labels hold on the way.
    offsets = torch.from_numpy(lidar_points - lidar_origin).double()
    mask_lidar = traverse(torch.zeros_like(occupied), torch.from_numpy(lidar_origin).expand_as(offsets), offsets,
                          occ3d.GRID_LOWER, occ3d.GRID_UPPER, max_distance=offsets.norm(dim=1),
                          return_visible=True).visible
    return mask_camera.numpy(), mask_lidar.numpy()


def _points_in_box(points: np.ndarray, centre: np.ndarray, size: tuple[float, float, float], yaw: float) -> int:
    """How many points [P, 3] lie in a box (centre [3], size (width, length, height), yaw), same frame."""
    c, s = np.cos(yaw), np.sin(yaw)
    d = points - centre
    along = d[:, 0] * c + d[:, 1] * s
    across = -d[:, 0] * s + d[:, 1] * c
    return int(np.sum((np.abs(along) <= size[1] / 2) & (np.abs(across) <= size[0] / 2)
                      & (np.abs(d[:, 2]) <= size[2] / 2)))


def _place_worlds(worlds: list[World], locations: list[str], rng: np.random.Generator) -> list[World]:
    """Give each world a random heading and a tile of its location's map canvas (all coordinates > 0)."""
    radius = [float(np.hypot(w.layout.length / 2, 45.0)) + 10 for w in worlds]
    tile = {loc: 2 * max(r for r, l in zip(radius, locations) if l == loc) for loc in set(locations)}
    placed, used = [], {loc: 0 for loc in tile}
    for world, loc in zip(worlds, locations):
        size = tile[loc]
        cx, cy = size / 2 + used[loc] * size + 10, size / 2 + 10
        used[loc] += 1
        yaw = float(rng.uniform(-np.pi, np.pi))
        half = world.layout.length / 2
        placed.append(dataclasses.replace(world, road2global=(cx - half * np.cos(yaw), cy - half * np.sin(yaw), yaw)))
    return placed


def check_config(config: SyntheticConfig) -> None:
    """Raise ValueError for a config that cannot be generated (before anything is written)."""
    factor = int(round(occ3d.VOXEL_SIZE / config.render_voxel)) if config.render_voxel > 0 else 0
    if factor < 1 or abs(factor * config.render_voxel - occ3d.VOXEL_SIZE) > 1e-6:
        raise ValueError(f"render_voxel must divide {occ3d.VOXEL_SIZE} m, got {config.render_voxel}")
    if config.samples_per_scene < 1 or config.scenes < 1:
        raise ValueError("need at least one scene and one sample per scene")
    if min(config.image_size) < 8:
        raise ValueError(f"image_size must be at least 8x8 pixels, got {config.image_size}")
    if config.lidar_azimuths < 1:
        raise ValueError(f"lidar_azimuths must be positive, got {config.lidar_azimuths}")
    scene_names(config.version, config.scenes)


def _existing_dataset(out: str, version: str, overwrite: bool) -> list[str]:
    """The dataset folders already in ``out``; ValueError if there are any and not ``overwrite``."""
    existing = [d for d in (version, "samples", "gts", "maps", "sam_segments") if os.path.exists(os.path.join(out, d))]
    if existing and not overwrite:
        raise ValueError(f"{out} already holds {', '.join(existing)}; pass --overwrite to replace them")
    return existing


def generate(out: str, config: SyntheticConfig = SyntheticConfig(), verbose: bool = True,
             overwrite: bool = False) -> dict:
    """Write a synthetic dataset under ``out`` (created if needed). Returns a summary dict
    (scene names, sample count, seconds).

    Refuses (ValueError) to write where a dataset already is (``<version>/``, ``samples/``, ``gts/``,
    ``maps/`` or ``sam_segments/``), unless ``overwrite``: then those folders are deleted first.
    """
    start = time.time()
    check_config(config)
    for d in _existing_dataset(out, config.version, overwrite):
        shutil.rmtree(os.path.join(out, d))
    factor = int(round(occ3d.VOXEL_SIZE / config.render_voxel))
    token = TokenMaker(config.seed)
    tables = TableWriter(token)
    names = scene_names(config.version, config.scenes)
    locations = [LOCATIONS[i % len(LOCATIONS)] for i in range(config.scenes)]
    duration = (config.samples_per_scene - 1) * SAMPLE_PERIOD_S
    worlds = [build_world(np.random.default_rng([config.seed, i, 1]), duration, (0.0, 0.0, 0.0))
              for i in range(config.scenes)]
    worlds = _place_worlds(worlds, locations, np.random.default_rng([config.seed, 0, 2]))
    beam_dirs, beam_rings = lidar_beam_directions(config.lidar_azimuths)
    height, width = config.image_size
    intrinsics, cam2ego = camera_matrices(config.image_size)
    lidar2ego = make_transform(LIDAR.rotation, LIDAR.translation)
    maps = {loc: MapWriter(loc, token) for loc in dict.fromkeys(locations)}
    logs_at: dict[str, list[str]] = {loc: [] for loc in maps}
    channels = list(CAMERA_NAMES) + [LIDAR_NAME]
    num_samples = 0
    progress = tqdm(total=config.scenes * config.samples_per_scene, desc="synthetic",
                    unit="sample", disable=not verbose)

    for si, (name, loc, world) in enumerate(zip(names, locations, worlds)):
        rng = np.random.default_rng([config.seed, si, 3])
        logfile = f"syn{config.seed:04d}-2018-08-01-12-00-{si:02d}+0000"
        log_tok = tables.add("log", dict(token=token("log", si), logfile=logfile, vehicle="n015",
                                         date_captured="2018-08-01", location=loc))
        logs_at[loc].append(log_tok)
        maps[loc].add_world(world)
        scene_tok = token("scene", si)
        calib = {}
        for c in channels:
            cal = LIDAR if c == LIDAR_NAME else CAMERAS[c]
            intr = [] if c == LIDAR_NAME else intrinsics[CAMERA_NAMES.index(c)].tolist()
            calib[c] = tables.add("calibrated_sensor", dict(
                token=token("calibrated_sensor", si, c), sensor_token=tables.sensor(c, "lidar" if c == LIDAR_NAME
                                                                                      else "camera"),
                translation=list(cal.translation), rotation=list(cal.rotation), camera_intrinsic=intr))
        samples, sample_data = [], {c: [] for c in channels}
        annotations: dict[int, list[dict]] = {}
        t0_us = 1533124800000000 + si * 10**9
        for k in range(config.samples_per_scene):
            t = k * SAMPLE_PERIOD_S
            stamp = t0_us + int(round(t * 1e6))
            sample_tok = token("sample", si, k)
            samples.append(dict(token=sample_tok, timestamp=stamp, scene_token=scene_tok))
            ego2global = world.ego2global(t)
            fine = rasterise(world, t, voxel_size=config.render_voxel)
            semantics = downsample_labels(fine.labels, factor)
            images, points = render_sensors(fine, intrinsics, cam2ego, (height, width), lidar2ego, beam_dirs,
                                            beam_rings, rng, config.lidar_range, config.lidar_dropout)
            points_ego = points[:, :3] @ lidar2ego[:3, :3].T + lidar2ego[:3, 3]
            mask_camera, mask_lidar = visibility_masks(semantics, cam2ego, lidar2ego[:3, 3], points_ego,
                                                       config.mask_stride)
            occ3d.save_labels(os.path.join(out, "gts", name, sample_tok, "labels.npz"),
                              semantics, mask_lidar, mask_camera)
            pose = dict(rotation=matrix_to_quaternion(ego2global[:3, :3]),
                        translation=[float(v) for v in ego2global[:3, 3]])
            for c in channels:
                is_cam = c != LIDAR_NAME
                ext = "jpg" if is_cam else "pcd.bin"
                filename = f"samples/{c}/{logfile}__{c}__{stamp}.{ext}"
                path = os.path.join(out, filename)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if is_cam:
                    Image.fromarray(images[CAMERA_NAMES.index(c)]).save(path, quality=config.jpeg_quality)
                else:
                    points.tofile(path)
                pose_tok = tables.add("ego_pose", dict(token=token("ego_pose", si, k, c), timestamp=stamp, **pose))
                sample_data[c].append(dict(
                    token=token("sample_data", si, k, c), sample_token=sample_tok, ego_pose_token=pose_tok,
                    calibrated_sensor_token=calib[c], timestamp=stamp, fileformat="jpg" if is_cam else "pcd",
                    is_key_frame=True, height=height if is_cam else 0, width=width if is_cam else 0,
                    filename=filename))
            points_global = points_ego @ ego2global[:3, :3].T + ego2global[:3, 3]
            for box in boxes_at(world, t):
                if np.hypot(*(box["centre"][:2] - ego2global[:2, 3])) > ANNOTATION_RANGE_M:
                    continue
                n_pts = _points_in_box(points_global, box["centre"], box["size"], box["yaw"])
                vis = "4" if n_pts > 10 else "3" if n_pts > 3 else "2" if n_pts > 0 else "1"
                inst = world.instances[box["instance"]]
                attrs = [tables.attribute_tokens[inst.attribute]] if inst.attribute else []
                annotations.setdefault(box["instance"], []).append(dict(
                    token=token("sample_annotation", si, k, box["instance"]), sample_token=sample_tok,
                    instance_token=token("instance", si, box["instance"]), visibility_token=vis,
                    attribute_tokens=attrs, translation=[float(v) for v in box["centre"]],
                    size=[float(v) for v in box["size"]], rotation=yaw_quaternion(box["yaw"]),
                    num_lidar_pts=n_pts, num_radar_pts=0))
            num_samples += 1
            progress.set_postfix(scene=name, points=len(points))
            progress.update()
        TableWriter.link_chain(samples)
        for rec in samples:
            tables.add("sample", rec)
        for c in channels:
            TableWriter.link_chain(sample_data[c])
            for rec in sample_data[c]:
                tables.add("sample_data", rec)
        for inst_index, anns in annotations.items():
            TableWriter.link_chain(anns)
            for rec in anns:
                tables.add("sample_annotation", rec)
            tables.add("instance", dict(
                token=token("instance", si, inst_index),
                category_token=tables.category_tokens[world.instances[inst_index].category],
                nbr_annotations=len(anns), first_annotation_token=anns[0]["token"],
                last_annotation_token=anns[-1]["token"]))
        tables.add("scene", dict(token=scene_tok, log_token=log_tok, nbr_samples=len(samples),
                                 first_sample_token=samples[0]["token"], last_sample_token=samples[-1]["token"],
                                 name=name, description=f"Synthetic street at {loc}, seed {config.seed}."))
    for loc, writer in maps.items():
        map_tok = token("map", loc)
        filename = f"maps/{map_tok}.png"
        writer.write(out, filename)
        tables.add("map", dict(token=map_tok, log_tokens=logs_at[loc], category="semantic_prior", filename=filename))
    tables.write(os.path.join(out, config.version))
    seconds = time.time() - start
    progress.close()
    if verbose:
        print(f"[synthetic] wrote {num_samples} samples in {config.scenes} scenes to {out} in {seconds:.1f} s",
              file=sys.stderr)
    return dict(scenes=names, locations=locations, samples=num_samples, seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    defaults = SyntheticConfig()
    p = argparse.ArgumentParser(prog="python -m radocc.data.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="dataset root to write (created if needed)")
    p.add_argument("--scenes", type=int, default=defaults.scenes, help="number of scenes (at most 10 for v1.0-mini)")
    p.add_argument("--samples-per-scene", type=int, default=defaults.samples_per_scene,
                   help="key frames per scene (2 Hz)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="the same seed writes the same bytes")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=defaults.image_size,
                   help="camera image height and width in pixels (intrinsics scaled from 900x1600)")
    p.add_argument("--version", default=defaults.version, choices=["v1.0-mini", "v1.0-trainval"],
                   help="table folder and the splits the scene names come from")
    p.add_argument("--render-voxel", type=float, default=defaults.render_voxel,
                   help="voxel size (m) of the world grid the sensors see; must divide 0.4")
    p.add_argument("--lidar-azimuths", type=int, default=defaults.lidar_azimuths,
                   help="LiDAR azimuth steps per sweep (32 beams each)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete a dataset already in --out (its tables, samples, gts, maps, sam_segments)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    args = p.parse_args(argv)
    config = SyntheticConfig(scenes=args.scenes, samples_per_scene=args.samples_per_scene, seed=args.seed,
                             image_size=tuple(args.image_size), version=args.version,
                             render_voxel=args.render_voxel, lidar_azimuths=args.lidar_azimuths)
    try:
        check_config(config)
        _existing_dataset(args.out, config.version, args.overwrite)
    except ValueError as exc:
        p.error(str(exc))
    generate(args.out, config, verbose=not args.quiet, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
