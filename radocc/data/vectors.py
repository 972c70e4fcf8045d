"""Vectorised HD-map ground truth from the nuScenes map expansion, as MapTR's ``VectorizedLocalMap``.

The *map frame* of a sample is its LiDAR frame, flattened to the LiDAR yaw: x lateral (right),
y forward, metres, origin at the LiDAR. The patch is 60 m along y by 30 m along x
(x in [-15, 15], y in [-30, 30]). Three classes (:data:`MAP_CLASSES`):

- 0 divider: the ``road_divider`` and ``lane_divider`` lines clipped to the patch, each piece of a
  clipped multi-line its own instance;
- 1 ped_crossing: the union of the ``ped_crossing`` polygons clipped to the patch; each ring
  (exterior clockwise, holes counter-clockwise) cut by a box 0.2 m larger than the patch (so it
  stays closed), pieces merged;
- 2 boundary: the contour of union(``road_segment``, ``lane``) clipped to the patch, cut by a box
  0.2 m smaller than the patch, so a ring cut by the patch edge becomes an open polyline.

Each instance keeps its clipped geometry (``lines``, for the Chamfer AP, which resamples it itself)
and is resampled to 20 points equally spaced by arc length with its equivalent orderings: an open
polyline has 2 (forward, reversed), a closed ring (first point == last) its 19 cyclic shifts.

The maps are read with nuscenes-devkit (``NuScenesMap``; ``NuScenesMapExplorer.get_patch_coord``
gives the rotated patch box), once per location and process. Unlike MapTR, which loops over every
record of a layer for every sample, each layer's geometries are built once and queried with a
shapely STRtree (the clip itself is MapTR's: intersect with the rotated patch, rotate by -yaw,
shift). Degenerate records are repaired or dropped there (zero-length lines and polygons of fewer
than 3 distinct nodes or no area dropped; self-intersecting polygons repaired with ``make_valid``,
where MapTR drops them), never passed on to shapely operations that would raise.

BEV flips: the loader mirrors the ego frame by F = ``bda``. :func:`ego_to_map` returns
ego2map = G @ inv(lidar2ego) @ F, where G mirrors the map frame about the LiDAR origin in the map
axes that F's axes become (x_ego <-> y_map, y_ego <-> x_map for the nuScenes LiDAR), so
cam2map = ego2map @ cam2ego holds for the flipped sample and the vectors are the unflipped ones
mirrored by G (each instance also reversed when G is a reflection, so rings keep their orientation).
As in MapTR, inv(lidar2ego) includes the LiDAR's small roll / pitch while the vectors are in the
yaw-only frame; the two differ by that tilt (a fraction of a degree on nuScenes).

Caching (:class:`MapVectorSource`): the clipped lines and labels of each sample are cached in an
in-memory LRU per process and, when a directory is given (``DatasetConfig.vector_cache``), in one
``.npz`` per sample there, keyed by the sample token, location, LiDAR pose, patch settings and map
file, written atomically (temporary file + rename), so DataLoader workers and later epochs share it.
The resampled points and orderings are recomputed on load (cheap) after the flips.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
import torch
from shapely import affinity, ops
from shapely.geometry import LinearRing, LineString, MultiLineString, MultiPolygon, Polygon, box
from shapely.strtree import STRtree

from radocc.data.errors import DataError
from radocc.data.map_expansion import MAP_VERSION

__all__ = [
    "BOUNDARY", "DIVIDER", "MAP_CLASSES", "NUM_ORDERINGS", "NUM_POINTS", "PATCH_SIZE", "PC_RANGE",
    "PED_CROSSING", "VECTOR_ITEM_KEYS", "MapVectorSource", "MapVectors", "VectorCache",
    "VectorizedLocalMap", "ego_to_map", "equivalent_orderings", "flip_lines", "is_closed",
    "lidar_patch_pose", "map_flip_axes", "resample_line", "vector_item", "vectorize",
]

MAP_CLASSES: tuple[str, ...] = ("divider", "ped_crossing", "boundary")
DIVIDER, PED_CROSSING, BOUNDARY = 0, 1, 2
DIVIDER_LAYERS: tuple[str, ...] = ("road_divider", "lane_divider")
PED_CROSSING_LAYERS: tuple[str, ...] = ("ped_crossing",)
BOUNDARY_LAYERS: tuple[str, ...] = ("road_segment", "lane")
PATCH_SIZE: tuple[float, float] = (60.0, 30.0)
"""(extent along y = forward, extent along x = lateral) of the patch, metres (MapTR's patch_size)."""
PC_RANGE: tuple[float, float, float, float] = (-15.0, -30.0, 15.0, 30.0)
"""(x_min, y_min, x_max, y_max) of the patch in the map frame, metres."""
CLIP_MARGIN = 0.2
"""Metres the ped-crossing box is grown by and the boundary box shrunk by (MapTR)."""
NUM_POINTS = 20
NUM_ORDERINGS = 19
MIN_LENGTH = 1e-6
"""Lines (and polygon areas, in m^2) at or below this are degenerate and dropped."""
VECTOR_ITEM_KEYS: tuple[str, ...] = (
    "map_points", "map_labels", "map_orderings", "map_ordering_valid", "map_lines",
)
"""Dataset item keys whose first dimension (M instances) differs per sample: collated as lists."""
NUSCENES_DOWNLOAD = "https://www.nuscenes.org/nuscenes#download"
CACHE_FORMAT = 1


# --- resampling and orderings ---------------------------------------------------------------------

def _as_line(line: Any, name: str = "line") -> np.ndarray:
    arr = np.asarray(line, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be [N, 2] (x, y metres), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has non-finite coordinates")
    return arr


def _drop_repeats(line: np.ndarray) -> np.ndarray:
    """Remove consecutive duplicate points (zero-length segments)."""
    if len(line) < 2:
        return line
    keep = np.r_[True, np.any(np.diff(line, axis=0) != 0, axis=1)]
    return line[keep]


def is_closed(line: np.ndarray) -> bool:
    """True when a polyline [N, 2] is a closed ring (first point == last point, N > 2)."""
    return len(line) > 2 and bool(np.array_equal(line[0], line[-1]))


def resample_line(line: Any, num_points: int = NUM_POINTS) -> np.ndarray:
    """Resample a polyline to ``num_points`` points equally spaced by arc length.

    Args:
        line: [N, 2] metres, N >= 2, positive length.
        num_points: points returned (>= 2).
    Returns:
        [num_points, 2] float64; the first and last points are the line's end points (for a closed
        ring both are its first vertex).
    """
    line = _drop_repeats(_as_line(line))
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points}")
    if len(line) < 2:
        raise ValueError("line has zero length: at least two distinct points are needed")
    cumulative = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))]
    distances = np.linspace(0.0, cumulative[-1], num_points)
    out = np.stack([np.interp(distances, cumulative, line[:, k]) for k in range(2)], axis=1)
    out[0], out[-1] = line[0], line[-1]
    return out


def equivalent_orderings(points: Any, closed: bool,
                         num_orderings: int = NUM_ORDERINGS) -> tuple[np.ndarray, np.ndarray]:
    """The orderings of a resampled instance that describe the same geometry.

    Args:
        points: [P, 2] resampled points (for a closed ring points[0] == points[-1]).
        closed: a closed ring: its cyclic shifts (P - 1 distinct starts, the first ``num_orderings``
            kept), each re-closed; else the polyline forward and reversed.
        num_orderings: S, rows returned (>= 2).
    Returns:
        orderings [S, P, 2] (rows past the valid ones repeat row 0) and valid [S] bool.
    """
    pts = _as_line(points, "points")
    if num_orderings < 2:
        raise ValueError(f"num_orderings must be >= 2, got {num_orderings}")
    if closed:
        ring = pts[:-1]
        shifts = [np.concatenate([np.roll(ring, -k, axis=0), np.roll(ring, -k, axis=0)[:1]])
                  for k in range(min(len(ring), num_orderings))]
    else:
        shifts = [pts, pts[::-1]]
    out = np.repeat(pts[None], num_orderings, axis=0)
    out[: len(shifts)] = np.stack(shifts)
    valid = np.zeros(num_orderings, dtype=bool)
    valid[: len(shifts)] = True
    return out, valid


@dataclass(frozen=True)
class MapVectors:
    """A sample's vector ground truth in the map frame (M instances).

    lines: M float64 arrays [Ni, 2] metres, the clipped geometry (closed rings repeat their first point);
    labels [M] int64 (0 divider, 1 ped_crossing, 2 boundary); points [M, P, 2] float32 metres, P
    points equally spaced by arc length; orderings [M, S, P, 2] float32; ordering_valid [M, S] bool.
    """

    lines: tuple[np.ndarray, ...]
    labels: np.ndarray
    points: np.ndarray
    orderings: np.ndarray
    ordering_valid: np.ndarray

    def __len__(self) -> int:
        return len(self.lines)


def vectorize(lines: Sequence[Any], labels: Any, num_points: int = NUM_POINTS,
              num_orderings: int = NUM_ORDERINGS) -> MapVectors:
    """Resample instances and build their orderings.

    Args:
        lines: M polylines [Ni, 2] metres (closed rings repeat their first point), each of positive length.
        labels: [M] class indices in 0..2.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(lines):
        raise ValueError(f"labels must have one entry per line: {len(labels)} labels for {len(lines)} lines")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(MAP_CLASSES)):
        raise ValueError(f"labels must be in 0..{len(MAP_CLASSES) - 1}, got {sorted(set(labels.tolist()))}")
    arrays = tuple(_as_line(line, f"lines[{i}]") for i, line in enumerate(lines))
    points = np.zeros((len(arrays), num_points, 2), dtype=np.float32)
    orderings = np.zeros((len(arrays), num_orderings, num_points, 2), dtype=np.float32)
    valid = np.zeros((len(arrays), num_orderings), dtype=bool)
    for i, line in enumerate(arrays):
        pts = resample_line(line, num_points)
        points[i] = pts
        orderings[i], valid[i] = equivalent_orderings(pts, is_closed(line), num_orderings)
    return MapVectors(arrays, labels, points, orderings, valid)


def flip_lines(lines: Sequence[np.ndarray], flip_x: bool, flip_y: bool) -> list[np.ndarray]:
    """Mirror map-frame polylines about the origin in x and/or y. When exactly one axis is flipped
    each line is also reversed, so rings keep their orientation (exterior clockwise)."""
    sign = np.array([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0])
    out = [np.asarray(line, dtype=np.float64) * sign for line in lines]
    return [line[::-1].copy() for line in out] if flip_x != flip_y else out


# --- frames ---------------------------------------------------------------------------------------

def _check_transform(t: Any, name: str) -> np.ndarray:
    arr = np.asarray(t, dtype=np.float64)
    if arr.shape != (4, 4):
        raise ValueError(f"{name} must be a [4, 4] transform, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has non-finite entries")
    return arr


def lidar_patch_pose(lidar2global: Any) -> tuple[float, float, float]:
    """(x, y, yaw) of the patch: the LiDAR's global position (m) and the yaw (radians) of its x axis,
    as MapTR (``quaternion_yaw`` of ego2global rot * lidar2ego rot)."""
    t = _check_transform(lidar2global, "lidar2global")
    return float(t[0, 3]), float(t[1, 3]), float(np.arctan2(t[1, 0], t[0, 0]))


def map_flip_axes(lidar2ego: Any, flip_x: bool, flip_y: bool) -> tuple[bool, bool]:
    """Which map axes (x, y) an ego-frame BEV flip (in x and/or y) mirrors.

    The map axes are the LiDAR's x and y; each is matched to the ego axis (x or y) it is closest to
    (nuScenes: LiDAR x ~ -ego y, LiDAR y ~ ego x, so an ego x flip mirrors map y).
    """
    rot = _check_transform(lidar2ego, "lidar2ego")[:3, :3]
    ego_axis = [int(np.argmax(np.abs(rot[:2, i]))) for i in range(2)]
    if ego_axis[0] == ego_axis[1]:
        raise ValueError(f"lidar2ego rotation {rot.tolist()} does not map the LiDAR x and y axes to "
                         f"distinct ego axes; BEV flips cannot be carried to the map frame")
    flips = (flip_x, flip_y)
    return flips[ego_axis[0]], flips[ego_axis[1]]


def ego_to_map(lidar2ego: Any, bda: Any | None = None) -> np.ndarray:
    """ego2map [4, 4] float64 for a sample's (possibly flipped) ego frame.

    Args:
        lidar2ego: [4, 4] of the unaugmented sample.
        bda: [4, 4] BEV flip F = diag(+-1, +-1, 1, 1) applied to the ego frame (None: identity).
    Returns:
        G @ inv(lidar2ego) @ F with G = diag of :func:`map_flip_axes`, so that for the flipped sample
        cam2map = ego2map @ cam2ego and ego points map to the mirrored map frame; inv(lidar2ego)
        without a flip.
    """
    lidar2ego = _check_transform(lidar2ego, "lidar2ego")
    f = np.eye(4) if bda is None else _check_transform(bda, "bda")
    if not np.array_equal(np.abs(f), np.eye(4)) or f[2, 2] != 1:
        raise ValueError(f"bda must be diag(+-1, +-1, 1, 1), got {f.tolist()}")
    gx, gy = map_flip_axes(lidar2ego, bool(f[0, 0] < 0), bool(f[1, 1] < 0))
    g = np.diag([-1.0 if gx else 1.0, -1.0 if gy else 1.0, 1.0, 1.0])
    rot, trans = lidar2ego[:3, :3], lidar2ego[:3, 3]
    inv = np.eye(4)
    inv[:3, :3] = rot.T
    inv[:3, 3] = -rot.T @ trans
    return g @ inv @ f


def vector_item(vectors: MapVectors, lidar2ego: Any, bda: Any | None = None) -> dict[str, Any]:
    """The dataset item entries of a sample's (unflipped) vectors under the BEV flip ``bda``.

    Returns ego2map [4, 4] float32, map_points [M, P, 2] float32, map_labels [M] int64, map_orderings
    [M, S, P, 2] float32, map_ordering_valid [M, S] bool (tensors) and map_lines (list of M float64
    numpy [Ni, 2]), all in the (mirrored) map frame.
    """
    ego2map = ego_to_map(lidar2ego, bda)
    if bda is not None and not np.array_equal(np.asarray(bda), np.eye(4)):
        f = np.asarray(bda)
        gx, gy = map_flip_axes(lidar2ego, bool(f[0, 0] < 0), bool(f[1, 1] < 0))
        vectors = vectorize(flip_lines(vectors.lines, gx, gy), vectors.labels,
                            vectors.points.shape[1], vectors.orderings.shape[1])
    return dict(
        ego2map=torch.from_numpy(ego2map).float(),
        map_points=torch.from_numpy(vectors.points),
        map_labels=torch.from_numpy(vectors.labels),
        map_orderings=torch.from_numpy(vectors.orderings),
        map_ordering_valid=torch.from_numpy(vectors.ordering_valid),
        map_lines=list(vectors.lines),
    )


# --- geometry extraction --------------------------------------------------------------------------

def _polygons(geom) -> list[Polygon]:
    """The polygons of positive area in any shapely geometry."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom] if geom.area > MIN_LENGTH else []
    return [p for g in getattr(geom, "geoms", []) for p in _polygons(g)]


def _linestrings(geom) -> list[LineString]:
    """The line strings of positive length in any shapely geometry (rings as closed line strings)."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, LineString):  # LinearRing is a LineString
        return [LineString(geom.coords)] if geom.length > MIN_LENGTH else []
    return [line for g in getattr(geom, "geoms", []) for line in _linestrings(g)]


def _ring_lines(polygons: list[Polygon], clip_box: Polygon) -> list[np.ndarray]:
    """MapTR's ring instances: union the polygons, orient every ring (exterior clockwise, holes
    counter-clockwise), cut it by ``clip_box``, merge the pieces."""
    if not polygons:
        return []
    union = ops.unary_union(polygons)
    union = shapely.make_valid(union) if not union.is_valid else union
    exteriors, interiors = [], []
    for poly in _polygons(union):
        ext = poly.exterior
        exteriors.append(LinearRing(list(ext.coords)[::-1]) if ext.is_ccw else ext)
        interiors += [r if r.is_ccw else LinearRing(list(r.coords)[::-1]) for r in poly.interiors]
    rings = exteriors + interiors  # MapTR's order: every exterior, then every hole
    out = []
    for ring in rings:
        pieces = _linestrings(ring.intersection(clip_box))
        if len(pieces) > 1:
            pieces = _linestrings(ops.linemerge(MultiLineString(pieces)))
        out += [np.asarray(p.coords, dtype=np.float64) for p in pieces]
    return out


@dataclass
class _Layer:
    geoms: list
    tree: STRtree | None


class _LocationMap:
    """One location's map: per layer used, the repaired geometries and their STRtree.

    Built from an opened ``NuScenesMap``, which is not kept: the geometries are all that the patches
    need, and a real map's parsed JSON (hundreds of MB) would otherwise stay in every worker.
    """

    def __init__(self, path: str, nusc_map):
        self.path = path
        self.nusc_map = nusc_map
        self.layers: dict[str, _Layer] = {}
        for name in DIVIDER_LAYERS:
            self.layers[name] = self._build(name, self._line)
        for name in PED_CROSSING_LAYERS + BOUNDARY_LAYERS:
            self.layers[name] = self._build(name, self._polygon)
        del self.nusc_map

    def _build(self, name: str, make: Callable[[dict, str], Any]) -> _Layer:
        geoms = []
        for record in getattr(self.nusc_map, name):
            geom = make(record, name)
            if geom is not None:
                geoms.append(geom)
        return _Layer(geoms, STRtree(geoms) if geoms else None)

    def _nodes(self, tokens: Sequence[str], where: str) -> np.ndarray:
        try:
            xy = [(float(n["x"]), float(n["y"])) for n in (self.nusc_map.get("node", t) for t in tokens)]
        except KeyError as exc:
            raise DataError(f"map expansion {self.path}: {where} points at node {exc}, which is not in "
                            f"the node layer") from exc
        except (TypeError, ValueError) as exc:
            raise DataError(f"map expansion {self.path}: {where} has a node without numeric x, y: {exc}") from exc
        arr = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(arr).all():
            raise DataError(f"map expansion {self.path}: {where} has non-finite node coordinates")
        return arr

    def _record_geometry(self, layer: str, record: dict, key: str) -> dict:
        try:
            return self.nusc_map.get(layer, record[key])
        except KeyError as exc:
            raise DataError(f"map expansion {self.path}: {layer.replace('_', ' ')} record of "
                            f"{record.get('token')} misses its geometry ({key} {exc})") from exc

    def _line(self, record: dict, layer: str) -> LineString | None:
        line = self._record_geometry("line", record, "line_token")
        xy = _drop_repeats(self._nodes(line.get("node_tokens", []), f"{layer} {record.get('token')}"))
        if len(xy) < 2:
            return None
        geom = LineString(xy)
        return geom if geom.length > MIN_LENGTH else None

    def _polygon(self, record: dict, layer: str) -> Polygon | MultiPolygon | None:
        poly = self._record_geometry("polygon", record, "polygon_token")
        where = f"{layer} {record.get('token')}"
        shell = _drop_repeats(self._nodes(poly.get("exterior_node_tokens", []), where))
        if len(shell) < 3:
            return None
        holes = [h for h in (_drop_repeats(self._nodes(hole.get("node_tokens", []), where))
                             for hole in poly.get("holes", [])) if len(h) >= 3]
        geom = Polygon(shell, holes)
        if not geom.is_valid:  # self-intersecting rings: repair, keep the polygonal part
            parts = _polygons(shapely.make_valid(geom))
            geom = parts[0] if len(parts) == 1 else MultiPolygon(parts) if parts else None
        return geom if geom is not None and geom.area > MIN_LENGTH else None

    def clipped(self, name: str, patch: Polygon, to_local: list[float]) -> list:
        """The layer's geometries cut by the global ``patch`` and moved to the map frame, in record order."""
        layer = self.layers[name]
        if layer.tree is None:
            return []
        out = []
        for i in sorted(layer.tree.query(patch, predicate="intersects").tolist()):
            part = layer.geoms[i].intersection(patch)
            if not part.is_empty:
                out.append(affinity.affine_transform(part, to_local))
        return out


class VectorizedLocalMap:
    """Vector ground truth of map patches around a LiDAR pose (MapTR's ``VectorizedLocalMap``).

    Args:
        dataroot: nuScenes root holding ``maps/expansion/<location>.json`` (map expansion v1.3).
        patch_size: (along y, along x) metres; MapTR's (60, 30).
    Maps are opened lazily, once per location and process (not pickled to DataLoader workers).
    """

    def __init__(self, dataroot: str, patch_size: tuple[float, float] = PATCH_SIZE):
        if len(patch_size) != 2 or not all(np.isfinite(s) and s > 2 * CLIP_MARGIN for s in patch_size):
            raise ValueError(f"patch_size must be (along y, along x) metres > {2 * CLIP_MARGIN}, got {patch_size}")
        self.dataroot = os.path.abspath(dataroot)
        self.patch_size = (float(patch_size[0]), float(patch_size[1]))
        self._maps: dict[str, _LocationMap] = {}

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _maps={})

    def map_file(self, location: str) -> str:
        """``<dataroot>/maps/expansion/<location>.json``."""
        return os.path.join(self.dataroot, "maps", "expansion", f"{location}.json")

    def check_file(self, location: str) -> str:
        """The map file of ``location``; DataError naming it and how to get it when it is missing."""
        from nuscenes.map_expansion.map_api import locations

        if location not in locations:
            raise DataError(f"unknown map location {location!r}: nuScenes maps are {locations}")
        path = self.map_file(location)
        if not os.path.isfile(path):
            raise DataError(
                f"map expansion for {location} not found: {path} (expected the nuScenes map expansion "
                f"v{MAP_VERSION} JSON; download the map expansion pack (v{MAP_VERSION}) from "
                f"{NUSCENES_DOWNLOAD} and unpack it into {os.path.join(self.dataroot, 'maps')}/, or for a "
                f"synthetic root regenerate it: python -m radocc.data.synthetic --out {self.dataroot} --overwrite)")
        return path

    def location_map(self, location: str) -> _LocationMap:
        """Open (once) the map of ``location`` with the devkit; DataError on a missing, unreadable or
        other-version file."""
        if location in self._maps:
            return self._maps[location]
        from nuscenes.map_expansion.map_api import NuScenesMap

        path = self.check_file(location)
        try:
            nusc_map = NuScenesMap(dataroot=self.dataroot, map_name=location)
        except Exception as exc:  # the devkit raises a bare Exception for old versions, KeyError for missing layers
            found = _file_version(path)
            if found != MAP_VERSION:
                raise _version_error(path, found) from exc
            raise DataError(f"map expansion {path} cannot be read by nuscenes-devkit "
                            f"({type(exc).__name__}: {exc}); expected the v{MAP_VERSION} schema") from exc
        if nusc_map.version != MAP_VERSION:
            raise _version_error(path, nusc_map.version)
        self._maps[location] = _LocationMap(path, nusc_map)
        return self._maps[location]

    def lines(self, location: str, lidar2global: Any) -> tuple[list[np.ndarray], np.ndarray]:
        """The clipped instances of the patch around a LiDAR pose.

        Args:
            location: one of the four nuScenes map names.
            lidar2global: [4, 4] LiDAR -> global (ego2global @ lidar2ego of the unaugmented sample).
        Returns:
            lines: M float64 [Ni, 2] metres in the map frame (dividers, then ped crossings, then
            boundaries); labels [M] int64.
        """
        from nuscenes.map_expansion.map_api import NuScenesMapExplorer

        x, y, yaw = lidar_patch_pose(lidar2global)
        m = self.location_map(location)
        height, width = self.patch_size
        patch = NuScenesMapExplorer.get_patch_coord((x, y, height, width), float(np.degrees(yaw)))
        c, s = np.cos(yaw), np.sin(yaw)
        to_local = [c, s, -s, c, -(c * x + s * y), s * x - c * y]  # R(-yaw) (p - (x, y))
        lines: list[np.ndarray] = []
        labels: list[int] = []
        for name in DIVIDER_LAYERS:
            for geom in m.clipped(name, patch, to_local):
                for piece in _linestrings(geom):
                    lines.append(np.asarray(piece.coords, dtype=np.float64))
                    labels.append(DIVIDER)
        hx, hy = width / 2, height / 2
        for label, names, margin in ((PED_CROSSING, PED_CROSSING_LAYERS, CLIP_MARGIN),
                                     (BOUNDARY, BOUNDARY_LAYERS, -CLIP_MARGIN)):
            polygons = [p for name in names for geom in m.clipped(name, patch, to_local) for p in _polygons(geom)]
            rings = _ring_lines(polygons, box(-hx - margin, -hy - margin, hx + margin, hy + margin))
            lines += rings
            labels += [label] * len(rings)
        return lines, np.asarray(labels, dtype=np.int64)

    def vectors(self, location: str, lidar2global: Any, num_points: int = NUM_POINTS,
                num_orderings: int = NUM_ORDERINGS) -> MapVectors:
        """:meth:`lines` resampled, with orderings (see :func:`vectorize`)."""
        return vectorize(*self.lines(location, lidar2global), num_points=num_points, num_orderings=num_orderings)


def _file_version(path: str) -> Any:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"map expansion {path} is not valid JSON ({exc}); expected the nuScenes map "
                        f"expansion v{MAP_VERSION}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"map expansion {path} is not a JSON object; expected the nuScenes map expansion v{MAP_VERSION}")
    return obj.get("version", "none (pre-1.3 files carry no version)")


def _version_error(path: str, found: Any) -> DataError:
    return DataError(f"map expansion {path} is version {found!r}, expected {MAP_VERSION!r}: download the map "
                     f"expansion pack (v{MAP_VERSION}) from {NUSCENES_DOWNLOAD} and unpack it into "
                     f"{os.path.dirname(os.path.dirname(path))}/")


# --- per-sample cache -----------------------------------------------------------------------------

class VectorCache:
    """Cache of (lines, labels) per sample: an in-memory LRU of ``capacity`` samples per process and,
    when ``directory`` is given, one ``<sample token>_<key hash>.npz`` there (written atomically)."""

    def __init__(self, directory: str | None = None, capacity: int = 1024):
        self.directory = None if directory is None else os.path.abspath(directory)
        self.capacity = int(capacity)
        self._memory: OrderedDict[str, tuple[list[np.ndarray], np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _memory=OrderedDict())

    @staticmethod
    def key_hash(key: dict) -> str:
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def path(self, token: str, digest: str) -> str | None:
        return None if self.directory is None else os.path.join(self.directory, f"{token}_{digest}.npz")

    def get(self, token: str, key: dict,
            compute: Callable[[], tuple[list[np.ndarray], np.ndarray]]) -> tuple[list[np.ndarray], np.ndarray]:
        """The cached value of (token, key), else ``compute()`` stored."""
        digest = self.key_hash(dict(key, token=token, format=CACHE_FORMAT))
        mem_key = f"{token}_{digest}"
        if mem_key in self._memory:
            self._memory.move_to_end(mem_key)
            return self._memory[mem_key]
        path = self.path(token, digest)
        value = self._read(path) if path and os.path.isfile(path) else None
        if value is None:
            value = compute()
            if path:
                self._write(path, value)
        self._memory[mem_key] = value
        while len(self._memory) > self.capacity:
            self._memory.popitem(last=False)
        return value

    @staticmethod
    def _read(path: str) -> tuple[list[np.ndarray], np.ndarray] | None:
        try:
            with np.load(path) as z:
                coords, offsets, labels = z["coords"], z["offsets"], z["labels"]
            lines = [coords[a:b].astype(np.float64) for a, b in zip(offsets[:-1], offsets[1:])]
            if len(lines) != len(labels):
                raise ValueError("offsets and labels disagree")
            return lines, labels.astype(np.int64)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
            warnings.warn(f"ignoring unreadable map vector cache file {path}: {exc}")
            return None

    @staticmethod
    def _write(path: str, value: tuple[list[np.ndarray], np.ndarray]) -> None:
        lines, labels = value
        os.makedirs(os.path.dirname(path), exist_ok=True)
        offsets = np.cumsum([0] + [len(line) for line in lines]).astype(np.int64)
        coords = np.concatenate(lines) if lines else np.zeros((0, 2))
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, coords=coords, offsets=offsets, labels=labels)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


class MapVectorSource:
    """Vectors of dataset samples: a :class:`VectorizedLocalMap` behind a :class:`VectorCache`."""

    def __init__(self, dataroot: str, cache_dir: str | None = None, patch_size: tuple[float, float] = PATCH_SIZE):
        self.local_map = VectorizedLocalMap(dataroot, patch_size)
        self.cache = VectorCache(cache_dir)

    def vectors(self, sample_token: str, location: str, lidar2global: Any) -> MapVectors:
        """The unflipped vectors of a sample (cached lines, resampled on each call)."""
        pose = _check_transform(lidar2global, "lidar2global")
        path = self.local_map.check_file(location)
        stat = os.stat(path)
        key = dict(location=location, patch_size=list(self.local_map.patch_size), margin=CLIP_MARGIN,
                   pose=[round(float(v), 6) for v in pose[:3].ravel()],
                   map_file=[stat.st_size, stat.st_mtime_ns])
        lines, labels = self.cache.get(sample_token, key, lambda: self.local_map.lines(location, pose))
        return vectorize(lines, labels)
