"""The Occ3D-nuScenes facts: classes and grid.

Constants only; this module imports nothing from radocc, so the renderer, the losses, the metrics
and the models can all use it without loading the data layer. ``radocc.data.occ3d`` re-exports
these names beside the ``labels.npz`` reading.
"""

from __future__ import annotations

__all__ = [
    "CLASS_NAMES", "NUM_CLASSES", "FREE", "GRID_LOWER", "GRID_UPPER", "GRID_SHAPE", "VOXEL_SIZE",
    "OTHERS", "BARRIER", "BICYCLE", "BUS", "CAR", "CONSTRUCTION_VEHICLE", "MOTORCYCLE",
    "PEDESTRIAN", "TRAFFIC_CONE", "TRAILER", "TRUCK", "DRIVEABLE_SURFACE", "OTHER_FLAT",
    "SIDEWALK", "TERRAIN", "MANMADE", "VEGETATION",
]

CLASS_NAMES: tuple[str, ...] = (
    "others", "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle",
    "pedestrian", "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat",
    "sidewalk", "terrain", "manmade", "vegetation", "free",
)
"""Occ3D class names in index order; index 17 is free space."""

NUM_CLASSES = 18
FREE = 17
OTHERS, BARRIER, BICYCLE, BUS, CAR, CONSTRUCTION_VEHICLE, MOTORCYCLE, PEDESTRIAN = range(8)
TRAFFIC_CONE, TRAILER, TRUCK, DRIVEABLE_SURFACE, OTHER_FLAT, SIDEWALK, TERRAIN = range(8, 15)
MANMADE, VEGETATION = 15, 16

GRID_LOWER: tuple[float, float, float] = (-40.0, -40.0, -1.0)
"""Lower corner of the Occ3D grid in the ego frame (x forward, y left, z up), metres."""
GRID_UPPER: tuple[float, float, float] = (40.0, 40.0, 5.4)
"""Upper corner of the Occ3D grid in the ego frame, metres."""
GRID_SHAPE: tuple[int, int, int] = (200, 200, 16)
"""Voxels along x, y, z; arrays over the grid are indexed [x, y, z]."""
VOXEL_SIZE = 0.4
"""Voxel edge length in metres, the same on every axis."""
