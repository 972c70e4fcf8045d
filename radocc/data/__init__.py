"""Data layer: Occ3D-nuScenes loading (through the nuScenes devkit) and the synthetic dataset.

- :class:`NuScenesOccDataset` / :class:`DatasetConfig` / :func:`collate`: samples for training.
- :mod:`radocc.data.synthetic`: ``python -m radocc.data.synthetic --out DIR`` writes a small
  nuScenes-layout dataset (tables, images, LiDAR, Occ3D labels, map expansion) from procedural worlds.
- :mod:`radocc.data.occ3d`: the Occ3D grid, classes and ``labels.npz`` reading.
- :mod:`radocc.data.transforms`: augmentation that keeps images, poses, points and voxels consistent.
- :mod:`radocc.data.vectors`: vector-map ground truth (MapTR's VectorizedLocalMap) from the map expansion.

Importing this package does not import torch extensions or the devkit's heavy modules.
"""

from radocc.data.errors import DataError
from radocc.data.nuscenes_dataset import DatasetConfig, NuScenesOccDataset, collate
from radocc.data.occ3d import CLASS_NAMES, FREE, GRID_LOWER, GRID_SHAPE, GRID_UPPER, load_labels
from radocc.data.vectors import MAP_CLASSES, MapVectors, VectorizedLocalMap, ego_to_map

__all__ = [
    "CLASS_NAMES", "FREE", "GRID_LOWER", "GRID_SHAPE", "GRID_UPPER", "MAP_CLASSES", "DataError",
    "DatasetConfig", "MapVectors", "NuScenesOccDataset", "VectorizedLocalMap", "collate", "ego_to_map",
    "load_labels",
]
