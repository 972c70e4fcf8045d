"""Vector-map ground truth (radocc.data.vectors): resampling, orderings, the patch on hand-made maps,
the synthetic world's road, the loader option with BEV flips and caching, and bad map input.

Hand-made maps are written in the v1.3 map-expansion schema under a temporary root, with their
geometry given in the map frame of a chosen LiDAR pose (so the expected output is known exactly).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch
from shapely.geometry import LinearRing, LineString, Point, Polygon, box

from radocc.data import DataError, DatasetConfig, NuScenesOccDataset, collate
from radocc.data.geometry import make_transform, yaw_quaternion
from radocc.data.map_expansion import LAYERS
from radocc.data.rig import CAMERA_NAMES, LIDAR
from radocc.data.vectors import (
    BOUNDARY, DIVIDER, NUM_ORDERINGS, NUM_POINTS, PED_CROSSING, MapVectorSource, VectorCache,
    VectorizedLocalMap, ego_to_map, equivalent_orderings, flip_lines, is_closed, lidar_patch_pose,
    map_flip_axes, resample_line, vector_item, vectorize,
)

VERSION = "v1.0-mini"
LOCATION = "boston-seaport"
LIDAR2EGO = make_transform(LIDAR.rotation, LIDAR.translation)


# --- hand-made maps -------------------------------------------------------------------------------

def pose(x: float, y: float, yaw: float) -> np.ndarray:
    """A lidar2global whose map frame has its origin at (x, y) and its x axis at ``yaw``."""
    return make_transform(yaw_quaternion(yaw), (x, y, 1.8))


def to_global(lidar2global: np.ndarray, xy) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    return xy @ lidar2global[:2, :2].T + lidar2global[:2, 3]


class MapFile:
    """Builds a map-expansion JSON (v1.3 schema) from global coordinates."""

    def __init__(self):
        self.obj = {name: [] for name in LAYERS}
        self.obj.update(version="1.3", canvas_edge=[5000.0, 5000.0], arcline_path_3={}, connectivity={})
        self.n = 0

    def _tok(self) -> str:
        self.n += 1
        return f"tok{self.n:05d}"

    def nodes(self, xy) -> list[str]:
        toks = []
        for x, y in np.asarray(xy, dtype=np.float64).reshape(-1, 2):
            toks.append(self._tok())
            self.obj["node"].append(dict(token=toks[-1], x=float(x), y=float(y)))
        return toks

    def line(self, layer: str, xy) -> None:
        tok = self._tok()
        self.obj["line"].append(dict(token=tok, node_tokens=self.nodes(xy)))
        self.obj[layer].append(dict(token=self._tok(), line_token=tok))

    def polygon(self, layer: str, xy, holes=()) -> None:
        tok = self._tok()
        self.obj["polygon"].append(dict(token=tok, exterior_node_tokens=self.nodes(xy),
                                        holes=[dict(node_tokens=self.nodes(h)) for h in holes]))
        record = dict(token=self._tok(), polygon_token=tok)
        if layer == "lane":
            record.update(left_lane_divider_segments=[], right_lane_divider_segments=[])
        self.obj[layer].append(record)

    def write(self, root, location: str = LOCATION) -> str:
        path = os.path.join(root, "maps", "expansion", f"{location}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.obj, f)
        return path


def rect(x0, x1, y0, y1) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64)


def same_ring(a: np.ndarray, b) -> bool:
    """Two closed rings with the same vertex cycle (any start), to 1e-6."""
    a, b = np.asarray(a)[:-1], np.asarray(b, dtype=np.float64)
    if len(a) != len(b):
        return False
    return any(np.allclose(np.roll(a, -k, axis=0), b, atol=1e-6) for k in range(len(a)))


def clockwise(ring: np.ndarray) -> bool:
    return not LinearRing(ring).is_ccw


# --- resampling and orderings ---------------------------------------------------------------------

def test_resample_is_equally_spaced_by_arc_length_and_keeps_the_endpoints():
    rng = np.random.default_rng(0)
    line = np.cumsum(rng.normal(size=(7, 2)) * 4, axis=0)
    shape = LineString(line)
    line = np.insert(line, 3, line[3], axis=0)  # a repeated vertex (zero-length segment)
    out = resample_line(line, 20)
    assert out.shape == (20, 2) and out.dtype == np.float64
    assert np.array_equal(out[0], line[0]) and np.array_equal(out[-1], line[-1])
    along = np.array([shape.project(Point(p)) for p in out])
    np.testing.assert_allclose(along, np.linspace(0, shape.length, 20), atol=1e-9)
    assert max(shape.distance(Point(p)) for p in out) < 1e-9
    straight = resample_line([(0.0, 0.0), (1.0, 0.0), (9.5, 0.0)], 20)
    np.testing.assert_allclose(np.diff(straight[:, 0]), 0.5)
    with pytest.raises(ValueError, match="zero length"):
        resample_line([(1.0, 2.0), (1.0, 2.0)])
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        resample_line(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        resample_line([(0.0, 0.0), (np.nan, 1.0)])


def test_orderings_of_an_open_polyline_are_forward_and_reversed():
    pts = resample_line([(0.0, 0.0), (3.0, 4.0), (3.0, 10.0)], NUM_POINTS)
    orderings, valid = equivalent_orderings(pts, closed=False)
    assert orderings.shape == (NUM_ORDERINGS, NUM_POINTS, 2) and valid.tolist() == [True, True] + [False] * 17
    assert np.array_equal(orderings[0], pts) and np.array_equal(orderings[1], pts[::-1])
    assert all(np.array_equal(o, pts) for o in orderings[2:])  # padding repeats row 0


def test_orderings_of_a_closed_ring_are_its_cyclic_shifts():
    ring = np.array([(0, 0), (0, 4), (6, 4), (6, 0), (0, 0)], dtype=np.float64)
    assert is_closed(ring) and not is_closed(ring[:-1])
    pts = resample_line(ring, NUM_POINTS)
    assert np.array_equal(pts[0], pts[-1])
    orderings, valid = equivalent_orderings(pts, closed=True)
    assert valid.all() and orderings.shape == (19, 20, 2)
    starts = {tuple(o[0]) for o in orderings}
    assert len(starts) == 19  # every distinct start point once
    for k, o in enumerate(orderings):
        assert np.array_equal(o[0], o[-1])  # still closed
        assert np.array_equal(o[0], pts[k])
        np.testing.assert_array_equal(o[:-1], np.roll(pts[:-1], -k, axis=0))
    # fewer orderings kept than shifts: the first ones
    few, few_valid = equivalent_orderings(pts, closed=True, num_orderings=5)
    assert few_valid.all() and np.array_equal(few, orderings[:5])


def test_vectorize_shapes_labels_and_flips():
    lines = [np.array([(0.0, -5.0), (0.0, 5.0)]), rect(1, 3, 1, 2)[[0, 3, 2, 1, 0]]]
    vec = vectorize(lines, [DIVIDER, PED_CROSSING])
    assert vec.points.shape == (2, 20, 2) and vec.points.dtype == np.float32
    assert vec.orderings.shape == (2, 19, 20, 2) and vec.ordering_valid.sum(1).tolist() == [2, 19]
    assert vec.labels.dtype == np.int64 and len(vec) == 2
    empty = vectorize([], [])
    assert empty.points.shape == (0, 20, 2) and empty.orderings.shape == (0, 19, 20, 2)
    assert empty.ordering_valid.shape == (0, 19) and empty.labels.shape == (0,)
    with pytest.raises(ValueError, match="one entry per line"):
        vectorize(lines, [0])
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        vectorize(lines, [0, 3])
    # a single mirror reverses each line (rings stay clockwise); two mirrors do not
    assert clockwise(lines[1])
    one = flip_lines(lines, True, False)
    assert np.array_equal(one[1], (lines[1] * [-1, 1])[::-1]) and clockwise(one[1])
    both = flip_lines(lines, True, True)
    assert np.array_equal(both[0], -lines[0]) and clockwise(both[1])


# --- frames and flips -----------------------------------------------------------------------------

def test_map_flip_axes_follow_the_lidar_mounting():
    # nuScenes LiDAR: x right (= -ego y), y forward (= ego x)
    assert map_flip_axes(LIDAR2EGO, True, False) == (False, True)
    assert map_flip_axes(LIDAR2EGO, False, True) == (True, False)
    assert map_flip_axes(np.eye(4), True, False) == (True, False)
    np.testing.assert_allclose(ego_to_map(LIDAR2EGO), np.linalg.inv(LIDAR2EGO), atol=1e-12)
    with pytest.raises(ValueError, match="bda must be diag"):
        ego_to_map(LIDAR2EGO, np.diag([2.0, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"lidar2ego must be a \[4, 4\]"):
        ego_to_map(np.eye(3))
    x, y, yaw = lidar_patch_pose(pose(3.0, 4.0, 0.7))
    assert (x, y) == (3.0, 4.0) and yaw == pytest.approx(0.7)


@pytest.mark.parametrize("flip", [(True, False), (False, True), (True, True)])
def test_ego_to_map_mirrors_the_map_frame_like_the_ego_frame(flip):
    rng = np.random.default_rng(1)
    bda = np.diag([-1.0 if flip[0] else 1.0, -1.0 if flip[1] else 1.0, 1.0, 1.0])
    ego_points = rng.uniform(-20, 20, size=(50, 3))
    ego2map, flipped = ego_to_map(LIDAR2EGO), ego_to_map(LIDAR2EGO, bda)
    in_map = ego_points @ ego2map[:3, :3].T + ego2map[:3, 3]
    flipped_points = ego_points @ bda[:3, :3].T  # the loader's flip of the points
    gx, gy = map_flip_axes(LIDAR2EGO, *flip)
    expected = in_map * [-1 if gx else 1, -1 if gy else 1, 1]
    np.testing.assert_allclose(flipped_points @ flipped[:3, :3].T + flipped[:3, 3], expected, atol=1e-9)
    assert np.linalg.det(flipped[:3, :3]) == pytest.approx(1.0)  # mirror o mirror: a rotation


# --- hand-made maps: the patch --------------------------------------------------------------------

@pytest.mark.parametrize("yaw", [0.0, 0.6, np.pi / 2, -2.4])
def test_patch_rotation_translation_and_classes_on_a_hand_made_map(tmp_path, yaw):
    lidar2global = pose(1200.0, 800.0, yaw)
    g = lambda xy: to_global(lidar2global, xy)  # noqa: E731  (map frame -> global)
    m = MapFile()
    m.line("road_divider", g([(-3.0, -50.0), (-3.0, 50.0)]))          # crosses the patch along y
    m.line("lane_divider", g([(-40.0, 10.0), (0.0, 10.0), (40.0, 10.0)]))  # along x
    m.line("lane_divider", g([(100.0, 0.0), (120.0, 0.0)]))            # outside
    m.polygon("ped_crossing", g(rect(2, 6, 5, 9)))                     # inside: a closed ring
    m.polygon("ped_crossing", g(rect(12, 20, 0, 4)))                   # cut by x = 15: still closed
    m.polygon("road_segment", g(rect(-8, 8, -100, 100)))               # a road through the patch
    m.polygon("lane", g(rect(6, 12, -10, 10)))                         # widens it on the right
    m.polygon("road_segment", g(rect(-14, -10, -5, 5)), holes=[g(rect(-13, -11, -2, 2))])  # an island with a hole
    m.write(tmp_path)
    lines, labels = VectorizedLocalMap(str(tmp_path)).lines(LOCATION, lidar2global)

    dividers = [l for l, c in zip(lines, labels) if c == DIVIDER]
    crossings = [l for l, c in zip(lines, labels) if c == PED_CROSSING]
    boundaries = [l for l, c in zip(lines, labels) if c == BOUNDARY]
    assert labels.tolist() == [DIVIDER] * 2 + [PED_CROSSING] * 2 + [BOUNDARY] * 4  # MapTR's order
    np.testing.assert_allclose(dividers[0], [(-3, -30), (-3, 30)], atol=1e-6)
    np.testing.assert_allclose(dividers[1], [(-15, 10), (0, 10), (15, 10)], atol=1e-6)
    for expected in (rect(2, 6, 5, 9), rect(12, 15, 0, 4)):  # the union's order is shapely's
        assert sum(same_ring(ring, expected[::-1]) for ring in crossings) == 1, expected
    assert all(is_closed(ring) and clockwise(ring) for ring in crossings)
    # boundaries: the road's two sides cut 0.2 m inside the patch (open), the island's two rings (closed)
    open_b = [b for b in boundaries if not is_closed(b)]
    closed_b = [b for b in boundaries if is_closed(b)]
    assert len(open_b) == 2 and len(closed_b) == 2
    for b in open_b:
        assert {round(abs(b[0, 1]), 6), round(abs(b[-1, 1]), 6)} == {29.8}
    left = next(b for b in open_b if b[:, 0].max() < 0)
    right = next(b for b in open_b if b[:, 0].max() > 0)
    np.testing.assert_allclose(left[:, 0], -8.0, atol=1e-6)
    assert right[:, 0].max() == pytest.approx(12.0) and right[:, 0].min() == pytest.approx(8.0)
    outer, inner = sorted(closed_b, key=lambda r: -Polygon(r).area)
    assert same_ring(outer, rect(-14, -10, -5, 5)[::-1]) and clockwise(outer)
    assert same_ring(inner, rect(-13, -11, -2, 2)) and not clockwise(inner)  # holes counter-clockwise
    # everything inside the patch (+ the 0.2 m ped-crossing margin)
    allpts = np.concatenate(lines)
    assert np.abs(allpts[:, 0]).max() <= 15 + 1e-6 and np.abs(allpts[:, 1]).max() <= 30 + 1e-6


def test_dividers_match_the_devkit_layer_clip(tmp_path):
    """The divider clip equals the devkit's own ``_get_layer_line`` (MapTR's get_divider_line)."""
    lidar2global = pose(500.0, 700.0, 1.1)
    m = MapFile()
    rng = np.random.default_rng(3)
    for _ in range(6):
        m.line("lane_divider", to_global(lidar2global, np.cumsum(rng.normal(size=(5, 2)) * 12, axis=0)))
    m.write(tmp_path)
    from nuscenes.map_expansion.map_api import NuScenesMap, NuScenesMapExplorer

    lines, labels = VectorizedLocalMap(str(tmp_path)).lines(LOCATION, lidar2global)
    explorer = NuScenesMapExplorer(NuScenesMap(str(tmp_path), LOCATION))
    x, y, yaw = lidar_patch_pose(lidar2global)
    ref = explorer._get_layer_line((x, y, 60.0, 30.0), np.degrees(yaw), "lane_divider")
    ref_lines = [np.asarray(g.coords) for r in ref for g in (getattr(r, "geoms", None) or [r])]
    assert len(lines) == len(ref_lines) > 0 and (labels == DIVIDER).all()
    for a, b in zip(lines, ref_lines):
        np.testing.assert_allclose(a, b, atol=1e-6)


# --- bad input ------------------------------------------------------------------------------------

def test_a_patch_without_map_elements_gives_empty_arrays(tmp_path):
    m = MapFile()
    m.line("road_divider", [(0.0, 0.0), (10.0, 0.0)])
    m.write(tmp_path)
    vec = VectorizedLocalMap(str(tmp_path)).vectors(LOCATION, pose(2000.0, 2000.0, 0.3))
    assert len(vec) == 0 and vec.points.shape == (0, 20, 2) and vec.labels.shape == (0,)
    assert vec.orderings.shape == (0, 19, 20, 2) and vec.ordering_valid.shape == (0, 19)
    item = vector_item(vec, LIDAR2EGO, np.diag([-1.0, 1, 1, 1]))
    assert item["map_points"].shape == (0, 20, 2) and item["map_lines"] == []
    assert item["map_labels"].dtype == torch.int64 and item["map_ordering_valid"].dtype == torch.bool
    batch = collate([dict(item), dict(item)])
    assert batch["ego2map"].shape == (2, 4, 4) and [t.shape[0] for t in batch["map_points"]] == [0, 0]


def test_degenerate_geometries_are_dropped_or_repaired(tmp_path):
    lidar2global = pose(300.0, 300.0, 0.2)
    g = lambda xy: to_global(lidar2global, xy)  # noqa: E731
    m = MapFile()
    m.line("road_divider", g([(1.0, 1.0), (1.0, 1.0), (1.0, 1.0)]))    # zero length
    m.line("road_divider", g([(2.0, 2.0)]))                             # a single node
    m.line("lane_divider", g([(-40.0, 30.0 + 1e-3), (40.0, 30.0 + 1e-3)]))  # just outside: none
    m.line("lane_divider", g([(5.0, -5.0), (5.0, -5.0), (5.0, 5.0)]))   # a repeated node
    m.polygon("ped_crossing", g([(0, 0), (4, 4), (4, 0), (0, 4)]))      # self-intersecting bow tie
    m.polygon("ped_crossing", g([(8, 8), (9, 9)]))                      # two nodes
    m.polygon("ped_crossing", g([(8, 8), (9, 9), (10, 10)]))            # zero area
    m.polygon("road_segment", g(rect(-20, -15, -10, 10)))               # touches the patch on its edge only
    m.polygon("lane", g([(-5, -5), (5, 5), (5, -5), (-5, 5)]))          # bow tie lane
    m.write(tmp_path)
    vec = VectorizedLocalMap(str(tmp_path)).vectors(LOCATION, lidar2global)
    assert np.isfinite(vec.points).all()
    lengths = [LineString(l).length for l in vec.lines]
    assert min(lengths) > 1e-3
    dividers = [l for l, c in zip(vec.lines, vec.labels) if c == DIVIDER]
    assert len(dividers) == 1
    np.testing.assert_allclose(dividers[0], [(5, -5), (5, 5)], atol=1e-6)
    crossings = [l for l, c in zip(vec.lines, vec.labels) if c == PED_CROSSING]
    # the bow tie is repaired into its two triangles (each a closed clockwise ring)
    assert len(crossings) == 2 and all(is_closed(r) and clockwise(r) for r in crossings)
    assert sum(Polygon(r).area for r in crossings) == pytest.approx(8.0)
    boundaries = [l for l, c in zip(vec.lines, vec.labels) if c == BOUNDARY]
    assert len(boundaries) == 2 and all(is_closed(r) for r in boundaries)  # the bow-tie lane's triangles


def test_a_location_without_a_map_file_names_the_file_and_how_to_get_it(tmp_path):
    vlm = VectorizedLocalMap(str(tmp_path))
    with pytest.raises(DataError) as err:
        vlm.lines("singapore-onenorth", pose(0.0, 0.0, 0.0))
    msg = str(err.value)
    assert os.path.join(str(tmp_path), "maps", "expansion", "singapore-onenorth.json") in msg
    assert "map expansion pack (v1.3)" in msg and "nuscenes.org" in msg and "radocc.data.synthetic" in msg
    with pytest.raises(DataError, match="unknown map location 'atlantis'"):
        vlm.lines("atlantis", pose(0.0, 0.0, 0.0))


@pytest.mark.parametrize("version, found", [("1.0", "'1.0'"), ("2.0", "'2.0'"), (None, "none")])
def test_a_map_expansion_of_another_version_is_refused(tmp_path, version, found):
    m = MapFile()
    if version is None:
        del m.obj["version"]
    else:
        m.obj["version"] = version
    path = m.write(tmp_path)
    with pytest.raises(DataError) as err:
        VectorizedLocalMap(str(tmp_path)).lines(LOCATION, pose(0.0, 0.0, 0.0))
    msg = str(err.value)
    assert path in msg and found in msg and "expected '1.3'" in msg


def test_broken_map_files_raise_data_errors(tmp_path):
    m = MapFile()
    m.line("road_divider", [(0.0, 0.0), (10.0, 0.0)])
    m.obj["line"][0]["node_tokens"].append("no-such-node")
    path = m.write(tmp_path)
    with pytest.raises(DataError, match="no-such-node"):
        VectorizedLocalMap(str(tmp_path)).lines(LOCATION, pose(0.0, 0.0, 0.0))
    m = MapFile()
    m.line("road_divider", [(0.0, 0.0), (10.0, 0.0)])
    m.obj["node"][1]["x"] = float("nan")
    m.write(tmp_path)
    with pytest.raises(DataError, match="non-finite node coordinates"):
        VectorizedLocalMap(str(tmp_path)).lines(LOCATION, pose(0.0, 0.0, 0.0))
    m = MapFile()
    m.polygon("ped_crossing", rect(0, 4, 0, 4))
    del m.obj["ped_crossing"][0]["polygon_token"]
    m.write(tmp_path)
    with pytest.raises(DataError, match="cannot be read by nuscenes-devkit"):
        VectorizedLocalMap(str(tmp_path)).lines(LOCATION, pose(0.0, 0.0, 0.0))
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        VectorizedLocalMap(str(tmp_path)).lines(LOCATION, pose(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"lidar2global must be a \[4, 4\]"):
        VectorizedLocalMap(str(tmp_path)).lines(LOCATION, np.eye(3))


# --- the synthetic world --------------------------------------------------------------------------

def _synthetic_worlds(root: str) -> dict[str, object]:
    """The fixture's worlds, rebuilt as radocc.data.synthetic.generate builds them (seed 7, 2 x 2)."""
    from radocc.data.synthetic import LOCATIONS, SAMPLE_PERIOD_S, _place_worlds, scene_names
    from radocc.data.world import build_world

    names = scene_names(VERSION, 2)
    worlds = [build_world(np.random.default_rng([7, i, 1]), SAMPLE_PERIOD_S, (0.0, 0.0, 0.0)) for i in range(2)]
    worlds = _place_worlds(worlds, [LOCATIONS[i % len(LOCATIONS)] for i in range(2)], np.random.default_rng([7, 0, 2]))
    return dict(zip(names, worlds))


def test_synthetic_vectors_follow_the_world_road(synthetic_root):
    worlds = _synthetic_worlds(synthetic_root)
    found_crossings = 0
    for split in ("train", "val"):
        ds = NuScenesOccDataset(synthetic_root, VERSION, split, DatasetConfig(vectors=True))
        for i, rec in enumerate(ds.records):
            world = worlds[rec["scene_name"]]
            ego2global = np.asarray(rec["ego2global"])
            k = min(range(2), key=lambda k: np.abs(world.ego2global(0.5 * k) - ego2global).max())
            assert np.abs(world.ego2global(0.5 * k) - ego2global).max() < 1e-6  # the world is the fixture's
            lay, road = world.layout, world.road_to_global_matrix()
            lidar2global = ego2global @ np.asarray(rec["lidar2ego"])
            x, y, yaw = lidar_patch_pose(lidar2global)
            c, s = np.cos(yaw), np.sin(yaw)

            def local(uv):  # road frame (u, v) -> map frame
                gxy = np.asarray(uv, dtype=np.float64) @ road[:2, :2].T + road[:2, 3]
                return (gxy - (x, y)) @ np.array([[c, -s], [s, c]])

            patch = box(-15, -30, 15, 30)

            def expected_line(v):
                return LineString(local([(0.0, v), (lay.length, v)])).intersection(patch)

            item = ds[i]
            lines, labels = item["map_lines"], item["map_labels"].numpy()
            assert item["map_points"].shape == (len(lines), 20, 2)
            dividers = [l for l, c in zip(lines, labels) if c == DIVIDER]
            offsets = [0.0] + [sgn * j * lay.lane_width for j in range(1, lay.lanes_per_direction) for sgn in (-1, 1)]
            assert len(dividers) == len(offsets)
            for v in offsets:
                ref = expected_line(v)
                match = [d for d in dividers if LineString(d).hausdorff_distance(ref) < 1e-6]
                assert len(match) == 1, v
                assert max(abs(match[0][0, 1]), abs(match[0][-1, 1])) == pytest.approx(30.0)  # spans the patch
            boundaries = [l for l, c in zip(lines, labels) if c == BOUNDARY]
            assert len(boundaries) == 2 and not any(is_closed(b) for b in boundaries)
            inner = box(-14.8, -29.8, 14.8, 29.8)
            for v in (-lay.half_width, lay.half_width):
                ref = LineString(local([(0.0, v), (lay.length, v)])).intersection(inner)
                assert sum(LineString(b).hausdorff_distance(ref) < 1e-6 for b in boundaries) == 1, v
            crossings = [l for l, c in zip(lines, labels) if c == PED_CROSSING]
            expected = [Polygon(local(rect(c0, c1, -lay.half_width, lay.half_width))).intersection(patch)
                        for c0, c1 in lay.crossings]
            expected = [e for e in expected if e.area > 1e-6]
            assert len(crossings) == len(expected)
            for ring in crossings:
                assert is_closed(ring) and clockwise(ring)
                assert min(Polygon(ring).symmetric_difference(ref).area for ref in expected) < 1e-6
            found_crossings += len(crossings)
    assert found_crossings >= 1  # the worlds put zebra crossings within 30 m of the start


# --- the loader option ----------------------------------------------------------------------------

def _project(points_map: np.ndarray, cam2map: np.ndarray, intrinsics: np.ndarray):
    """Map-frame points [P, 3] -> pixels [P, 2], depth [P]."""
    cam = (points_map - cam2map[:3, 3]) @ cam2map[:3, :3]
    uvw = cam @ intrinsics.T
    return uvw[:, :2] / uvw[:, 2:3], cam[:, 2]


@pytest.mark.parametrize("flips", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_loader_flips_the_vectors_with_the_bev(synthetic_root, flips):
    plain = NuScenesOccDataset(synthetic_root, VERSION, "train", DatasetConfig(vectors=True))
    flipped = NuScenesOccDataset(synthetic_root, VERSION, "train", DatasetConfig(
        vectors=True, augment=True, scale_range=(1.0, 1.0), image_flip_prob=0.0,
        bev_flip_x_prob=flips[0], bev_flip_y_prob=flips[1], seed=0))
    a, b = plain[0], flipped[0]
    assert torch.equal(b["bda"], torch.diag(torch.tensor([1 - 2 * flips[0], 1 - 2 * flips[1], 1.0, 1.0])))
    np.testing.assert_allclose(a["ego2map"].numpy(), np.linalg.inv(a["lidar2ego"].numpy()), atol=1e-5)
    gx, gy = map_flip_axes(a["lidar2ego"].numpy(), bool(flips[0]), bool(flips[1]))
    assert (gx, gy) == (bool(flips[1]), bool(flips[0]))  # ego x flip = map y flip
    sign = np.array([-1.0 if gx else 1.0, -1.0 if gy else 1.0])
    reverse = gx != gy
    assert torch.equal(a["map_labels"], b["map_labels"]) and len(a["map_lines"]) > 3
    for la, lb in zip(a["map_lines"], b["map_lines"]):
        np.testing.assert_allclose(lb, (la * sign)[::-1] if reverse else la * sign, atol=1e-12)
    pa, pb = a["map_points"].numpy(), b["map_points"].numpy()
    np.testing.assert_allclose(pb, (pa * sign)[:, ::-1] if reverse else pa * sign, atol=1e-5)
    assert np.abs(pb[..., 0]).max() <= 15 + 1e-4 and np.abs(pb[..., 1]).max() <= 30 + 1e-4  # still in range
    # the geometry is consistent: a vector point projects to the same pixel with and without the flip
    visible = 0
    for cam in range(len(CAMERA_NAMES)):
        k = a["intrinsics"][cam].double().numpy()
        assert np.allclose(k, b["intrinsics"][cam].double().numpy())
        pts_a = np.c_[np.concatenate(a["map_lines"]), np.full(sum(map(len, a["map_lines"])), -1.8)]
        pts_b = np.c_[np.concatenate([l[::-1] if reverse else l for l in b["map_lines"]]), pts_a[:, 2]]
        uv_a, z_a = _project(pts_a, (a["ego2map"].double() @ a["cam2ego"][cam].double()).numpy(), k)
        uv_b, z_b = _project(pts_b, (b["ego2map"].double() @ b["cam2ego"][cam].double()).numpy(), k)
        front = z_a > 1.0
        visible += int(front.sum())
        np.testing.assert_allclose(z_b, z_a, atol=1e-4)
        np.testing.assert_allclose(uv_b[front], uv_a[front], atol=1e-3)
    assert visible > 10
    # LiDAR points: ego2map on the flipped points = the mirrored map-frame points
    pa3 = a["points"][:, :3].double().numpy() @ a["ego2map"].double().numpy()[:3, :3].T + a["ego2map"].double().numpy()[:3, 3]
    pb3 = b["points"][:, :3].double().numpy() @ b["ego2map"].double().numpy()[:3, :3].T + b["ego2map"].double().numpy()[:3, 3]
    np.testing.assert_allclose(pb3[:, :2], pa3[:, :2] * sign, atol=1e-3)


def test_loader_collates_vectors_as_lists(synthetic_root):
    ds = NuScenesOccDataset(synthetic_root, VERSION, "val", DatasetConfig(vectors=True))
    items = [ds[0], ds[1]]
    batch = collate(items)
    assert batch["ego2map"].shape == (2, 4, 4) and batch["ego2map"].dtype == torch.float32
    for key in ("map_points", "map_labels", "map_orderings", "map_ordering_valid", "map_lines"):
        assert isinstance(batch[key], list) and len(batch[key]) == 2
    for i, item in enumerate(items):
        m = item["map_labels"].shape[0]
        assert batch["map_points"][i].shape == (m, 20, 2) and batch["map_orderings"][i].shape == (m, 19, 20, 2)
        assert batch["map_ordering_valid"][i].dtype == torch.bool and len(batch["map_lines"][i]) == m
        assert all(isinstance(l, np.ndarray) and l.dtype == np.float64 for l in batch["map_lines"][i])
        np.testing.assert_allclose(item["map_points"].numpy()[:, 0], np.stack([l[0] for l in item["map_lines"]]),
                                   atol=1e-5)
    assert "map_points" not in NuScenesOccDataset(synthetic_root, VERSION, "val")[0]  # off by default


def test_loader_caches_vectors_on_disk(synthetic_root, tmp_path, monkeypatch):
    cache = tmp_path / "vec_cache"
    first = NuScenesOccDataset(synthetic_root, VERSION, "val", DatasetConfig(vectors=True, vector_cache=str(cache)))
    a = [first[i] for i in range(len(first))]
    files = sorted(os.listdir(cache))
    assert len(files) == len(first) and all(f.endswith(".npz") for f in files)  # one per sample, no temp files
    assert {f.split("_")[0] for f in files} == {rec["sample_token"] for rec in first.records}

    def fail(*args, **kwargs):
        raise AssertionError("the map was read although the cache holds the sample")

    monkeypatch.setattr(VectorizedLocalMap, "lines", fail)
    again = NuScenesOccDataset(synthetic_root, VERSION, "val", DatasetConfig(vectors=True, vector_cache=str(cache)))
    for i, item in enumerate(a):
        b = again[i]
        assert torch.equal(item["map_points"], b["map_points"]) and torch.equal(item["map_labels"], b["map_labels"])
        assert all(np.array_equal(x, y) for x, y in zip(item["map_lines"], b["map_lines"]))
    # a broken cache file is recomputed with a warning, and rewritten
    monkeypatch.undo()
    with open(cache / files[0], "wb") as f:
        f.write(b"broken")
    fresh = NuScenesOccDataset(synthetic_root, VERSION, "val", DatasetConfig(vectors=True, vector_cache=str(cache)))
    index = [r["sample_token"] for r in fresh.records].index(files[0].split("_")[0])
    with pytest.warns(UserWarning, match="unreadable map vector cache"):
        item = fresh[index]
    assert torch.equal(item["map_points"], a[index]["map_points"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert VectorCache._read(str(cache / files[0])) is not None
    # the in-memory cache: a second read of a sample does not touch the map; pickling drops loaded maps
    src = MapVectorSource(synthetic_root)
    rec = fresh.records[0]
    lidar2global = np.asarray(rec["ego2global"]) @ np.asarray(rec["lidar2ego"])
    first_vec = src.vectors(rec["sample_token"], rec["location"], lidar2global)
    assert src.local_map._maps
    clone = pickle.loads(pickle.dumps(src))
    assert not clone.local_map._maps and not clone.cache._memory
    monkeypatch.setattr(VectorizedLocalMap, "lines", fail)
    np.testing.assert_array_equal(src.vectors(rec["sample_token"], rec["location"], lidar2global).points,
                                  first_vec.points)


def test_loader_refuses_a_root_without_the_map_expansion(synthetic_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    os.remove(root / "maps" / "expansion" / "singapore-onenorth.json")
    NuScenesOccDataset(str(root), VERSION, "train", DatasetConfig())  # fine without vectors
    with pytest.raises(DataError, match=r"singapore-onenorth\.json.*map expansion pack"):
        NuScenesOccDataset(str(root), VERSION, "val", DatasetConfig(vectors=True))
