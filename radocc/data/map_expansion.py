"""Writing nuScenes map-expansion JSON (``maps/expansion/<location>.json``) for the synthetic worlds.

The layers follow the map expansion v1.3 schema that ``nuscenes.map_expansion.map_api.NuScenesMap``
reads: geometric layers (node, line, polygon) and the non-geometric layers that point at them.
Each world's straight road contributes its drivable area, road segment, two road blocks, four lanes
(with arcline paths), zebra crossings, sidewalks (walkway), paved bays (carpark_area), the centre
road divider and the two lane dividers, all in global (map) coordinates.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw

from radocc.data.nuscenes_tables import TokenMaker
from radocc.data.world import World

MAP_VERSION = "1.3"
LAYERS: tuple[str, ...] = (
    "polygon", "line", "node", "drivable_area", "road_segment", "road_block", "lane", "ped_crossing",
    "walkway", "stop_line", "carpark_area", "road_divider", "lane_divider", "traffic_light",
    "lane_connector",
)
NODE_SPACING = 20.0
"""Metres between the nodes written along long edges."""


class MapWriter:
    """Accumulates the map layers of one location; ``add_world`` adds a world's road, ``write`` saves."""

    def __init__(self, location: str, token: TokenMaker):
        self.location = location
        self.token = token
        self.layers: dict[str, list[dict]] = {name: [] for name in LAYERS}
        self.arcline_path_3: dict[str, list[dict]] = {}
        self.connectivity: dict[str, dict] = {}
        self.drivable_polygons: list[np.ndarray] = []
        self._n = 0

    def _tok(self, kind: str) -> str:
        self._n += 1
        return self.token("map", self.location, kind, self._n)

    def _node(self, xy: np.ndarray) -> str:
        tok = self._tok("node")
        self.layers["node"].append(dict(token=tok, x=float(xy[0]), y=float(xy[1])))
        return tok

    def _line(self, points: np.ndarray) -> tuple[str, list[str]]:
        nodes = [self._node(p) for p in points]
        tok = self._tok("line")
        self.layers["line"].append(dict(token=tok, node_tokens=nodes))
        return tok, nodes

    def _polygon(self, ring: np.ndarray) -> str:
        nodes = [self._node(p) for p in ring]
        tok = self._tok("polygon")
        self.layers["polygon"].append(dict(token=tok, exterior_node_tokens=nodes, holes=[]))
        return tok

    def add_world(self, world: World) -> None:
        """Add the map elements of ``world``'s road, transformed to global coordinates."""
        lay = world.layout
        road = world.road_to_global_matrix()
        yaw = world.road2global[2]

        def to_global(uv: np.ndarray) -> np.ndarray:
            uv = np.asarray(uv, dtype=np.float64)
            return uv @ road[:2, :2].T + road[:2, 3]

        def along(u0: float, u1: float) -> np.ndarray:
            n = max(2, int(np.ceil((u1 - u0) / NODE_SPACING)) + 1)
            return np.linspace(u0, u1, n)

        def rect(u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
            us = along(u0, u1)
            ring = [(u, v0) for u in us] + [(u, v1) for u in us[::-1]]
            return to_global(np.array(ring))

        def polyline(u0: float, u1: float, v: float) -> np.ndarray:
            return to_global(np.array([(u, v) for u in along(u0, u1)]))

        length, hw = lay.length, lay.half_width
        road_ring = rect(0.0, length, -hw, hw)
        self.drivable_polygons.append(road_ring)
        da_tok = self._tok("drivable_area")
        self.layers["drivable_area"].append(dict(token=da_tok, polygon_tokens=[self._polygon(road_ring)]))
        seg_tok = self._tok("road_segment")
        self.layers["road_segment"].append(dict(token=seg_tok, polygon_token=self._polygon(road_ring),
                                                is_intersection=False, drivable_area_token=da_tok))
        block_tokens = {}
        for direction, (v0, v1) in ((1, (-hw, 0.0)), (-1, (0.0, hw))):
            start, end = (0.0, length) if direction > 0 else (length, 0.0)
            from_line, _ = self._line(to_global(np.array([(start, v0), (start, v1)])))
            to_line, _ = self._line(to_global(np.array([(end, v0), (end, v1)])))
            tok = self._tok("road_block")
            block_tokens[direction] = tok
            self.layers["road_block"].append(dict(token=tok, polygon_token=self._polygon(rect(0.0, length, v0, v1)),
                                                  from_edge_line_token=from_line, to_edge_line_token=to_line,
                                                  road_segment_token=seg_tok))
        # Dividers: the centre line and one lane divider per carriageway.
        line_tok, _ = self._line(polyline(0.0, length, 0.0))
        self.layers["road_divider"].append(dict(token=self._tok("road_divider"), line_token=line_tok,
                                                road_segment_token=seg_tok))
        for i in range(1, lay.lanes_per_direction):
            for side in (-1, 1):
                line_tok, nodes = self._line(polyline(0.0, length, side * i * lay.lane_width))
                self.layers["lane_divider"].append(dict(
                    token=self._tok("lane_divider"), line_token=line_tok,
                    lane_divider_segments=[dict(node_token=n, segment_type="DOUBLE_DASHED_WHITE") for n in nodes]))
        # Lanes with their boundary nodes and straight arcline paths.
        for v_centre, direction in lay.lane_centres():
            v0, v1 = v_centre - lay.lane_width / 2, v_centre + lay.lane_width / 2
            start, end = (0.0, length) if direction > 0 else (length, 0.0)
            left_v, right_v = (v1, v0) if direction > 0 else (v0, v1)
            from_line, _ = self._line(to_global(np.array([(start, v0), (start, v1)])))
            to_line, _ = self._line(to_global(np.array([(end, v0), (end, v1)])))
            left_nodes = [self._node(p) for p in to_global(np.array([(u, left_v) for u in along(0.0, length)]))]
            right_nodes = [self._node(p) for p in to_global(np.array([(u, right_v) for u in along(0.0, length)]))]
            kind = "DOUBLE_SOLID_YELLOW" if abs(left_v) < 1e-6 else "DOUBLE_DASHED_WHITE"
            tok = self._tok("lane")
            self.layers["lane"].append(dict(
                token=tok, polygon_token=self._polygon(rect(0.0, length, v0, v1)), lane_type="CAR",
                from_edge_line_token=from_line, to_edge_line_token=to_line,
                left_lane_divider_segments=[dict(node_token=n, segment_type=kind) for n in left_nodes],
                right_lane_divider_segments=[dict(node_token=n, segment_type="NIL") for n in right_nodes]))
            start_xy = to_global(np.array([[start, v_centre]]))[0]
            heading = float(np.arctan2(np.sin(yaw + (0 if direction > 0 else np.pi)),
                                       np.cos(yaw + (0 if direction > 0 else np.pi))))
            end_xy = to_global(np.array([[end, v_centre]]))[0]
            self.arcline_path_3[tok] = [dict(
                start_pose=[float(start_xy[0]), float(start_xy[1]), heading],
                end_pose=[float(end_xy[0]), float(end_xy[1]), heading],
                shape="LSR", radius=999.999, segment_length=[0.0, float(length), 0.0])]
            self.connectivity[tok] = dict(incoming=[], outgoing=[])
        for c0, c1 in lay.crossings:
            self.layers["ped_crossing"].append(dict(token=self._tok("ped_crossing"),
                                                    polygon_token=self._polygon(rect(c0, c1, -hw, hw)),
                                                    road_segment_token=seg_tok))
        for side in (-1, 1):
            v0, v1 = sorted((side * hw, side * (hw + lay.sidewalk_width)))
            self.layers["walkway"].append(dict(token=self._tok("walkway"),
                                               polygon_token=self._polygon(rect(0.0, length, v0, v1))))
        for b0, b1, side in lay.flat_bays:
            b0, b1 = max(b0, 0.0), min(b1, length)
            if b1 - b0 < 1.0:
                continue
            inner = side * (hw + lay.sidewalk_width)
            v0, v1 = sorted((inner, inner + side * 8.0))
            self.layers["carpark_area"].append(dict(
                token=self._tok("carpark_area"), polygon_token=self._polygon(rect(b0, b1, v0, v1)),
                orientation=float(yaw), road_block_token=block_tokens[-1 if side > 0 else 1]))

    def canvas_edge(self) -> tuple[float, float]:
        """(width, height) of the map canvas in metres: all nodes lie inside [0, w] x [0, h]."""
        xy = np.array([(n["x"], n["y"]) for n in self.layers["node"]]) if self.layers["node"] else np.zeros((1, 2))
        return float(np.ceil(xy[:, 0].max() + 50.0)), float(np.ceil(xy[:, 1].max() + 50.0))

    def write(self, dataroot: str, mask_filename: str) -> None:
        """Write ``<dataroot>/maps/expansion/<location>.json`` and the 0.1 m/pixel drivable-area mask PNG
        ``<dataroot>/<mask_filename>`` that the ``map`` table points at."""
        canvas = self.canvas_edge()
        obj = dict(version=MAP_VERSION, canvas_edge=list(canvas), **self.layers,
                   arcline_path_3=self.arcline_path_3, connectivity=self.connectivity)
        os.makedirs(os.path.join(dataroot, "maps", "expansion"), exist_ok=True)
        with open(os.path.join(dataroot, "maps", "expansion", f"{self.location}.json"), "w") as f:
            json.dump(obj, f)
        width, height = int(canvas[0] / 0.1), int(canvas[1] / 0.1)
        mask = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(mask)
        for ring in self.drivable_polygons:
            draw.polygon([(float(x / 0.1), float(height - y / 0.1)) for x, y in ring], fill=255)
        path = os.path.join(dataroot, mask_filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mask.save(path)
