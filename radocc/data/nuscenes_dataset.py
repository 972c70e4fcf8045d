"""Occ3D-nuScenes samples for training and evaluation: a torch Dataset over a nuScenes root.

The tables are read with the nuScenes devkit (``nuscenes.NuScenes``) and the scenes of a split come
from ``nuscenes.utils.splits``. Each item is one key frame: six camera images with their intrinsics
and poses, the LiDAR sweep(s) in the ego frame, the Occ3D ground truth and (when present) the SAM
segment maps. The ego frame is that of the key frame's LiDAR (the Occ3D grid frame). With
``DatasetConfig(vectors=True)`` items also carry the vector-map ground truth (radocc.data.vectors).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from radocc.data import occ3d
from radocc.data.errors import DataError
from radocc.data.geometry import invert_transform, record_to_transform
from radocc.data.nuscenes_tables import TABLE_NAMES
from radocc.data.rig import CAMERA_NAMES, LIDAR_NAME
from radocc.data.transforms import (
    bev_flip_matrix, flip_occupancy, flip_points, image_transform,
)
from radocc.data.vectors import VECTOR_ITEM_KEYS, MapVectorSource, vector_item

SEGMENTS_DIR = "sam_segments"
POINT_DIMS = 5
"""Floats per point in a nuScenes ``.pcd.bin``: x, y, z, intensity, ring."""
INDEX_FORMAT = 2


@dataclass(frozen=True)
class DatasetConfig:
    """How samples are read and augmented.

    image_size: (H, W) of the returned images in pixels; None keeps each camera's native size.
    cameras: which cameras, in the returned order.
    lidar_sweeps: previous LiDAR sweeps to add to the key frame's points (0 = key frame only).
    load_segments: True = require SAM segment PNGs, False = ignore them, None = load them if
        ``<root>/sam_segments`` exists.
    augment: train-time augmentation (image scale / crop / flip, BEV flips); off = deterministic.
    scale_range: image scale jitter (multiplies the base scale) when augmenting.
    image_flip_prob, bev_flip_x_prob, bev_flip_y_prob: probabilities when augmenting.
    seed: augmentation seed (item i uses seed (seed, i)); None draws fresh randomness.
    skip_bad_samples: on a bad file warn, count the sample in ``skipped`` and return the next one.
    index_cache: JSON file caching the sample index (rebuilt when it does not match).
    vectors: add the vector-map ground truth (MapTR classes, 60 x 30 m patch, map frame; see
        radocc.data.vectors) to each item; needs ``<root>/maps/expansion/<location>.json``.
    vector_cache: directory caching each sample's clipped map lines (one .npz per sample, shared by
        workers and epochs); None keeps only an in-memory cache per process.
    """

    image_size: tuple[int, int] | None = None
    cameras: tuple[str, ...] = CAMERA_NAMES
    lidar_sweeps: int = 0
    load_segments: bool | None = None
    augment: bool = False
    scale_range: tuple[float, float] = (0.94, 1.11)
    image_flip_prob: float = 0.5
    bev_flip_x_prob: float = 0.5
    bev_flip_y_prob: float = 0.5
    seed: int | None = None
    skip_bad_samples: bool = False
    index_cache: str | None = None
    vectors: bool = False
    vector_cache: str | None = None


SPLIT_ALIASES: dict[str, dict[str, str]] = {
    "v1.0-mini": {"train": "mini_train", "val": "mini_val"},
    "v1.0-trainval": {"train": "train", "val": "val"},
    "v1.0-test": {"test": "test"},
}
"""Generic split names per version -> the devkit's split names."""


def resolve_split(version: str, split: str) -> str:
    """The devkit split name for ``split`` ('train' / 'val' or a name of ``create_splits_scenes``)."""
    from nuscenes.utils.splits import create_splits_scenes

    name = SPLIT_ALIASES.get(version, {}).get(split, split)
    known = create_splits_scenes(verbose=False)
    if name not in known:
        raise DataError(f"unknown split {split!r} for {version}: expected 'train', 'val' or one of "
                        f"{sorted(known)}")
    return name


def check_tables(root: str, version: str) -> None:
    """Raise DataError unless ``<root>/<version>/`` holds the 13 nuScenes tables."""
    if not os.path.isdir(root):
        raise DataError(f"dataset root {root} does not exist (expected a nuScenes root holding {version}/)")
    table_dir = os.path.join(root, version)
    if not os.path.isdir(table_dir):
        present = sorted(d for d in os.listdir(root) if d.startswith("v1.0") and os.path.isdir(os.path.join(root, d)))
        raise DataError(f"no nuScenes tables for version {version!r}: {table_dir} does not exist "
                        f"(expected {table_dir}/sample.json and 12 more tables; versions under {root}: "
                        f"{present or 'none'})")
    missing = [t for t in TABLE_NAMES if not os.path.isfile(os.path.join(table_dir, f"{t}.json"))]
    if missing:
        raise DataError(f"nuScenes tables missing in {table_dir}: {', '.join(t + '.json' for t in missing)}")


def _open_devkit(root: str, version: str):
    from nuscenes.nuscenes import NuScenes

    check_tables(root, version)
    try:
        return NuScenes(version=version, dataroot=root, verbose=False)
    except json.JSONDecodeError as exc:
        bad = []
        for t in TABLE_NAMES:
            try:
                with open(os.path.join(root, version, f"{t}.json")) as f:
                    json.load(f)
            except json.JSONDecodeError:
                bad.append(os.path.join(root, version, f"{t}.json"))
        raise DataError(f"nuScenes table(s) {', '.join(bad) or version} are not valid JSON: {exc}") from exc
    except (KeyError, AssertionError, IndexError, TypeError) as exc:
        raise DataError(f"nuScenes tables in {os.path.join(root, version)} are inconsistent "
                        f"({type(exc).__name__}: {exc}); expected the 13 cross-referenced tables") from exc


class SplitSamples(NamedTuple):
    """The key frames of a split, as found by :func:`open_split`."""

    nusc: Any
    """The opened ``nuscenes.NuScenes``."""
    split: str
    """The devkit split name (e.g. 'mini_val' for 'val' of v1.0-mini)."""
    samples: list[tuple[dict, dict]]
    """(scene record, sample record) of every key frame of the split's scenes, in scene then time order."""


def open_split(root: str, version: str, split: str) -> SplitSamples:
    """Open the nuScenes tables under ``root`` with the devkit and list the key frames of ``split``.

    ``split`` is 'train' / 'val' (mapped to mini_train / mini_val for v1.0-mini) or a name of
    ``nuscenes.utils.splits.create_splits_scenes()``; its scenes are the official split's scenes
    present in the tables. Raises DataError on missing / broken tables, an unknown split, or a split
    with no scenes in the tables.
    """
    nusc = _open_devkit(root, version)
    split_name = resolve_split(version, split)
    from nuscenes.utils.splits import create_splits_scenes

    wanted = set(create_splits_scenes(verbose=False)[split_name])
    samples = []
    for scene in nusc.scene:
        if scene["name"] not in wanted:
            continue
        token = scene["first_sample_token"]
        while token:
            sample = nusc.get("sample", token)
            samples.append((scene, sample))
            token = sample["next"]
    if not samples:
        raise DataError(f"split {split_name!r} has no scenes in {os.path.join(root, version)} "
                        f"(scenes there: {sorted(s['name'] for s in nusc.scene)})")
    return SplitSamples(nusc, split_name, samples)


def occ_path(scene_name: str, sample_token: str) -> str:
    """The Occ3D labels of a sample, relative to the nuScenes root: ``gts/<scene>/<token>/labels.npz``."""
    return f"gts/{scene_name}/{sample_token}/labels.npz"


def build_index(root: str, version: str, split: str, cameras: tuple[str, ...], lidar_sweeps: int) -> list[dict]:
    """One JSON-able record per key frame of the split's scenes, in scene then time order.

    Each record holds the sample / scene tokens, the files (relative to ``root``), the camera
    intrinsics [3, 3] and cam2ego [4, 4] (camera -> the key frame LiDAR's ego frame, through the
    global frame so that camera timestamps are honoured), lidar2ego, ego2global and the sweeps.
    """
    nusc, _, samples = open_split(root, version, split)
    return [_sample_record(nusc, sample, scene, cameras, lidar_sweeps) for scene, sample in samples]


def _sample_record(nusc, sample: dict, scene: dict, cameras: tuple[str, ...], lidar_sweeps: int) -> dict:
    if LIDAR_NAME not in sample["data"]:
        raise DataError(f"sample {sample['token']} has no {LIDAR_NAME} sample_data")
    lidar_sd = nusc.get("sample_data", sample["data"][LIDAR_NAME])
    lidar2ego = record_to_transform(nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"]))
    ego2global = record_to_transform(nusc.get("ego_pose", lidar_sd["ego_pose_token"]))
    global2ego = invert_transform(ego2global)
    cams = []
    for cam in cameras:
        if cam not in sample["data"]:
            raise DataError(f"sample {sample['token']} has no {cam} sample_data (has {sorted(sample['data'])})")
        sd = nusc.get("sample_data", sample["data"][cam])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        cam2ego = global2ego @ record_to_transform(nusc.get("ego_pose", sd["ego_pose_token"])) @ record_to_transform(cs)
        cams.append(dict(channel=cam, filename=sd["filename"], width=sd["width"], height=sd["height"],
                         intrinsics=np.asarray(cs["camera_intrinsic"], dtype=float).tolist(),
                         cam2ego=cam2ego.tolist()))
    sweeps = []
    prev = lidar_sd["prev"]
    while prev and len(sweeps) < lidar_sweeps:
        sd = nusc.get("sample_data", prev)
        sweep2ego = (global2ego @ record_to_transform(nusc.get("ego_pose", sd["ego_pose_token"]))
                     @ record_to_transform(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])))
        sweeps.append(dict(filename=sd["filename"], sweep2ego=sweep2ego.tolist(),
                           time_lag=(lidar_sd["timestamp"] - sd["timestamp"]) / 1e6))
        prev = sd["prev"]
    return dict(sample_token=sample["token"], scene_token=scene["token"], scene_name=scene["name"],
                location=nusc.get("log", scene["log_token"])["location"], timestamp=sample["timestamp"],
                cameras=cams, lidar_filename=lidar_sd["filename"],
                lidar2ego=lidar2ego.tolist(), ego2global=ego2global.tolist(), sweeps=sweeps,
                occ_path=occ_path(scene["name"], sample["token"]))


def read_points(path: str) -> np.ndarray:
    """A nuScenes ``.pcd.bin`` -> [P, 5] float32 (x, y, z in metres in the sensor frame, intensity, ring)."""
    if not os.path.isfile(path):
        raise DataError(f"LiDAR file not found: {path} (expected float32 x, y, z, intensity, ring per point)")
    size = os.path.getsize(path)
    if size % (4 * POINT_DIMS):
        raise DataError(f"LiDAR file {path} is truncated: {size} bytes is not a multiple of "
                        f"{4 * POINT_DIMS} (5 float32 per point)")
    return np.fromfile(path, dtype=np.float32).reshape(-1, POINT_DIMS)


def read_image(path: str, size: tuple[int, int]) -> Image.Image:
    """Decode an RGB image and check it is ``size`` = (W, H) pixels (the size its table records)."""
    if not os.path.isfile(path):
        raise DataError(f"camera image not found: {path} (expected a {size[0]}x{size[1]} JPEG)")
    try:
        with Image.open(path) as img:
            img.load()
            image = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"camera image {path} cannot be decoded (expected a {size[0]}x{size[1]} JPEG): {exc}") from exc
    if tuple(image.size) != tuple(size):
        raise DataError(f"camera image {path} is {image.size[0]}x{image.size[1]}, but its sample_data "
                        f"record says {size[0]}x{size[1]}")
    return image


def read_segments(path: str, size: tuple[int, int]) -> np.ndarray:
    """A SAM segment-id PNG -> [H, W] int64 (0 = no segment); it must be ``size`` = (W, H), the image's."""
    from radocc.segments import load_segments

    if not os.path.isfile(path):
        raise DataError(f"SAM segment map not found: {path} (expected a {size[0]}x{size[1]} 16-bit PNG; "
                        f"run python -m radocc.segments, or set load_segments=False)")
    try:
        return load_segments(path, expected_size=(size[1], size[0]))
    except ValueError as exc:
        raise DataError(str(exc)) from exc


class NuScenesOccDataset(Dataset):
    """Key frames of a nuScenes split with Occ3D labels.

    Args:
        root: the nuScenes root (``<root>/<version>/*.json``, ``samples/``, ``gts/``, ...).
        version: 'v1.0-trainval', 'v1.0-mini' or 'v1.0-test'.
        split: 'train' / 'val' (mapped to mini_train / mini_val for v1.0-mini) or any devkit split.
        config: DatasetConfig.

    Items are dicts:
        images [N, 3, H, W] float32 in 0..1; intrinsics [N, 3, 3] (pixels, of the returned images);
        cam2ego [N, 4, 4]; lidar2ego [4, 4]; ego2global [4, 4]; bda [4, 4] (the BEV flip applied);
        points [P, 5] float32 in the ego frame (x, y, z metres, intensity 0..255, time lag s);
        semantics [200, 200, 16] int64 (17 = free), mask_lidar / mask_camera [200, 200, 16] bool;
        segments [N, H, W] int64 (only when segments are loaded); sample_token, scene_token,
        scene_name (str), timestamp (int, microseconds), image_files (list of str, relative).
        With ``config.vectors``: ego2map [4, 4] float32 (cam2map = ego2map @ cam2ego; the map frame
        is the unaugmented LiDAR frame mirrored by the BEV flip), map_points [M, 20, 2] float32
        metres, map_labels [M] int64, map_orderings [M, 19, 20, 2] float32, map_ordering_valid
        [M, 19] bool, map_lines (list of M float64 numpy [Ni, 2]); see radocc.data.vectors.
    Raises DataError (naming the file and what was expected) on bad input, unless
    ``config.skip_bad_samples``: then bad samples are skipped with a warning and their indices
    collected in ``skipped`` (per process when a DataLoader uses workers).
    """

    def __init__(self, root: str, version: str = "v1.0-trainval", split: str = "train",
                 config: DatasetConfig = DatasetConfig()):
        unknown = [c for c in config.cameras if c not in CAMERA_NAMES]
        if unknown:
            raise DataError(f"unknown camera name(s) {unknown}: expected some of {list(CAMERA_NAMES)}")
        if config.image_size is not None and (len(config.image_size) != 2 or min(config.image_size) < 1):
            raise ValueError(f"image_size must be (H, W) > 0, got {config.image_size}")
        self.root = os.path.abspath(root)
        self.version = version
        self.split = split
        self.config = config
        self.skipped: set[int] = set()
        self.records = self._load_index()
        self.segments = (os.path.isdir(os.path.join(self.root, SEGMENTS_DIR)) if config.load_segments is None
                         else bool(config.load_segments))
        self.map_vectors = None
        if config.vectors:
            self.map_vectors = MapVectorSource(self.root, config.vector_cache)
            for location in sorted({rec["location"] for rec in self.records}):
                self.map_vectors.local_map.check_file(location)

    def _index_key(self) -> dict[str, Any]:
        return dict(format=INDEX_FORMAT, root=self.root, version=self.version, split=self.split,
                    cameras=list(self.config.cameras), lidar_sweeps=self.config.lidar_sweeps)

    def _load_index(self) -> list[dict]:
        path = self.config.index_cache
        key = self._index_key()
        if path and os.path.isfile(path):
            try:
                with open(path) as f:
                    cached = json.load(f)
                if cached.get("key") == key:
                    return cached["samples"]
            except (json.JSONDecodeError, OSError, AttributeError, KeyError) as exc:
                warnings.warn(f"ignoring unreadable index cache {path}: {exc}")
        records = build_index(self.root, self.version, self.split, self.config.cameras, self.config.lidar_sweeps)
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(dict(key=key, samples=records), f)
            os.replace(tmp, path)
        return records

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_skipped(self) -> int:
        """How many distinct samples were skipped as bad (``skip_bad_samples``)."""
        return len(self.skipped)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.config.skip_bad_samples:
            return self.load(index)
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                return self.load(i)
            except DataError as exc:
                if i not in self.skipped:
                    self.skipped.add(i)
                    warnings.warn(f"skipping sample {i} ({self.records[i]['sample_token']}): {exc}")
        raise DataError(f"every sample under {self.root} ({self.version}, {self.split}) is bad")

    def _rng(self, index: int) -> np.random.Generator:
        seed = self.config.seed
        return np.random.default_rng(None if seed is None else [seed, index])

    def load(self, index: int) -> dict[str, Any]:
        """Read, check and (if configured) augment sample ``index``; raises DataError on bad input."""
        rec = self.records[index]
        cfg = self.config
        rng = self._rng(index)
        images, intrinsics, cam2ego, segments = [], [], [], []
        for cam in rec["cameras"]:
            source = (cam["width"], cam["height"])
            output = source if cfg.image_size is None else (cfg.image_size[1], cfg.image_size[0])
            if cfg.augment:
                tf = image_transform(source, output, float(rng.uniform(*cfg.scale_range)),
                                     (float(rng.uniform(-1, 1)), float(rng.uniform(0, 0.5))),
                                     bool(rng.uniform() < cfg.image_flip_prob))
            else:
                tf = image_transform(source, output)
            image = tf.apply_image(read_image(os.path.join(self.root, cam["filename"]), source))
            images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
            intrinsics.append(tf.apply_intrinsics(np.asarray(cam["intrinsics"])))
            cam2ego.append(np.asarray(cam["cam2ego"]))
            if self.segments:
                stem = os.path.splitext(os.path.basename(cam["filename"]))[0]
                seg_path = os.path.join(self.root, SEGMENTS_DIR, cam["channel"], f"{stem}.png")
                segments.append(tf.apply_nearest(read_segments(seg_path, source)))
        lidar2ego = np.asarray(rec["lidar2ego"])
        ego2global = np.asarray(rec["ego2global"])
        vectors = (None if self.map_vectors is None else
                   self.map_vectors.vectors(rec["sample_token"], rec["location"], ego2global @ lidar2ego))
        points = self._points(rec, lidar2ego)
        labels = occ3d.load_labels(os.path.join(self.root, rec["occ_path"]))
        semantics, mask_lidar, mask_camera = labels.semantics, labels.mask_lidar, labels.mask_camera

        flip_x = cfg.augment and bool(rng.uniform() < cfg.bev_flip_x_prob)
        flip_y = cfg.augment and bool(rng.uniform() < cfg.bev_flip_y_prob)
        bda = bev_flip_matrix(flip_x, flip_y)
        if flip_x or flip_y:
            semantics, mask_lidar, mask_camera = (flip_occupancy(a, flip_x, flip_y)
                                                  for a in (semantics, mask_lidar, mask_camera))
            points = flip_points(points, flip_x, flip_y)
            cam2ego = [bda @ t for t in cam2ego]
            lidar2ego = bda @ lidar2ego
            ego2global = ego2global @ bda

        item: dict[str, Any] = dict(
            images=torch.stack(images).float() / 255.0,
            intrinsics=torch.from_numpy(np.stack(intrinsics)).float(),
            cam2ego=torch.from_numpy(np.stack(cam2ego)).float(),
            lidar2ego=torch.from_numpy(lidar2ego).float(),
            ego2global=torch.from_numpy(ego2global).double(),
            bda=torch.from_numpy(bda).float(),
            points=torch.from_numpy(points),
            semantics=torch.from_numpy(semantics.astype(np.int64)),
            mask_lidar=torch.from_numpy(mask_lidar),
            mask_camera=torch.from_numpy(mask_camera),
            sample_token=rec["sample_token"], scene_token=rec["scene_token"], scene_name=rec["scene_name"],
            timestamp=rec["timestamp"], image_files=[c["filename"] for c in rec["cameras"]],
        )
        if self.segments:
            item["segments"] = torch.from_numpy(np.stack(segments))
        if vectors is not None:
            item.update(vector_item(vectors, np.asarray(rec["lidar2ego"]), bda))
        return item

    def _points(self, rec: dict, lidar2ego: np.ndarray) -> np.ndarray:
        """Key frame (+ sweeps) points in the key frame's ego frame: [P, 5] x, y, z, intensity, time lag."""
        parts = []
        for filename, sensor2ego, lag in ([(rec["lidar_filename"], lidar2ego, 0.0)]
                                          + [(s["filename"], np.asarray(s["sweep2ego"]), s["time_lag"])
                                             for s in rec["sweeps"]]):
            raw = read_points(os.path.join(self.root, filename))
            xyz = raw[:, :3].astype(np.float64) @ sensor2ego[:3, :3].T + sensor2ego[:3, 3]
            parts.append(np.concatenate([xyz, raw[:, 3:4], np.full((len(raw), 1), lag)], axis=1))
        return np.concatenate(parts).astype(np.float32)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch dataset items: tensors of one shape are stacked ([B, ...]); points are padded with zeros
    to ``points`` [B, P_max, 5] with ``num_points`` [B]; the per-instance map keys (map_points,
    map_labels, map_orderings, map_ordering_valid, map_lines: M differs per sample) and everything
    else become lists."""
    if not items:
        raise ValueError("collate needs at least one item")
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "points":
            counts = torch.tensor([len(v) for v in values], dtype=torch.long)
            padded = values[0].new_zeros((len(values), int(counts.max()), values[0].shape[1]))
            for i, v in enumerate(values):
                padded[i, : len(v)] = v
            out["points"], out["num_points"] = padded, counts
        elif key in VECTOR_ITEM_KEYS:
            out[key] = values
        elif isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"collate: '{key}' has different shapes {sorted(shapes)}; "
                                 f"set DatasetConfig.image_size to batch images of different sizes")
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
