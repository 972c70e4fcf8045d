"""Occ3D-nuScenes ground truth: ``labels.npz`` reading with checks, and voxel indexing of points.

The classes and the grid are defined in :mod:`radocc.occ3d` and re-exported here.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np

from radocc.data.errors import DataError

# The Occ3D facts live in radocc.occ3d (importable without the data layer); re-exported here.
from radocc.occ3d import (  # noqa: F401
    BARRIER, BICYCLE, BUS, CAR, CLASS_NAMES, CONSTRUCTION_VEHICLE, DRIVEABLE_SURFACE, FREE,
    GRID_LOWER, GRID_SHAPE, GRID_UPPER, MANMADE, MOTORCYCLE, NUM_CLASSES, OTHER_FLAT, OTHERS,
    PEDESTRIAN, SIDEWALK, TERRAIN, TRAFFIC_CONE, TRAILER, TRUCK, VEGETATION, VOXEL_SIZE,
)

LABEL_KEYS = ("semantics", "mask_lidar", "mask_camera")


@dataclass(frozen=True)
class Occ3DLabels:
    """One sample's Occ3D ground truth, arrays [200, 200, 16] indexed [x, y, z] in the ego frame.

    semantics: uint8 class ids 0..17 (17 = free); mask_lidar / mask_camera: bool visibility masks.
    """

    semantics: np.ndarray
    mask_lidar: np.ndarray
    mask_camera: np.ndarray


def voxel_centres(lower=GRID_LOWER, upper=GRID_UPPER, shape=GRID_SHAPE) -> tuple[np.ndarray, ...]:
    """Voxel centre coordinates along each axis: three 1-D arrays (metres), ``lower + (i + 0.5) * size``."""
    return tuple(
        lo + (np.arange(n) + 0.5) * (hi - lo) / n for lo, hi, n in zip(lower, upper, shape)
    )


def points_to_voxel_indices(points: np.ndarray, lower=GRID_LOWER, upper=GRID_UPPER,
                            shape=GRID_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Points [P, >=3] (metres, grid frame) -> integer voxel indices [P, 3] and an in-grid mask [P]."""
    lo = np.asarray(lower)
    size = (np.asarray(upper) - lo) / np.asarray(shape)
    idx = np.floor((points[:, :3] - lo) / size).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
    return idx, inside


def save_labels(path: str, semantics: np.ndarray, mask_lidar: np.ndarray, mask_camera: np.ndarray) -> None:
    """Write ``labels.npz`` as Occ3D does: three uint8 arrays [200, 200, 16] (compressed)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez_compressed(path, semantics=semantics.astype(np.uint8),
                        mask_lidar=mask_lidar.astype(np.uint8), mask_camera=mask_camera.astype(np.uint8))


def load_labels(path: str) -> Occ3DLabels:
    """Read and check an Occ3D ``labels.npz``.

    Raises DataError naming the file when it is missing, truncated, lacks a key, or holds an array
    that is not [200, 200, 16] uint8 (bool is accepted for the masks) or has classes above 17.
    """
    if not os.path.isfile(path):
        raise DataError(f"Occ3D labels not found: {path} (expected an .npz with keys {', '.join(LABEL_KEYS)})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in LABEL_KEYS if k not in npz.files]
            if missing:
                raise DataError(f"Occ3D labels {path} lack key(s) {missing}; found {npz.files}, "
                                f"expected {list(LABEL_KEYS)}")
            arrays = {k: npz[k] for k in LABEL_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"Occ3D labels {path} cannot be read (truncated or not an .npz): {exc}") from exc
    for key, arr in arrays.items():
        if arr.shape != GRID_SHAPE:
            raise DataError(f"Occ3D labels {path}: '{key}' has shape {arr.shape}, expected {GRID_SHAPE}")
        allowed = (np.uint8,) if key == "semantics" else (np.uint8, np.bool_)
        if arr.dtype.type not in allowed:
            raise DataError(f"Occ3D labels {path}: '{key}' has dtype {arr.dtype}, expected uint8")
    semantics = arrays["semantics"]
    if semantics.max(initial=0) > FREE:
        raise DataError(f"Occ3D labels {path}: 'semantics' holds class {int(semantics.max())}, "
                        f"expected 0..{FREE}")
    return Occ3DLabels(semantics=semantics, mask_lidar=arrays["mask_lidar"].astype(bool),
                       mask_camera=arrays["mask_camera"].astype(bool))
