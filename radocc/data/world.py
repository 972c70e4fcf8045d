"""A procedural street world for the synthetic dataset, and its rasterisation around the ego vehicle.

The world is laid out in a *road frame*: u along the road (metres), v to the left of it, z up, the
road surface at z = 0. ``World.road2global`` places that frame on the map. The ego vehicle drives
along +u in the inner lane of the right-hand carriageway. Everything is a list of primitives (oriented
boxes and ellipsoids, some moving) over a ground made of road, sidewalks, terrain and paved bays, so a
sample's labels are rasterised exactly in its own ego frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radocc.data import occ3d
from radocc.data.occ3d import (
    BARRIER, BICYCLE, BUS, CAR, CONSTRUCTION_VEHICLE, DRIVEABLE_SURFACE, FREE, MANMADE, MOTORCYCLE,
    OTHER_FLAT, OTHERS, PEDESTRIAN, SIDEWALK, TERRAIN, TRAFFIC_CONE, TRAILER, TRUCK, VEGETATION,
)

GROUND_THICKNESS = 0.3
"""Ground surfaces are slabs this thick (m) below their top, so the Occ3D ground is one voxel thick."""

CLASS_COLOURS: dict[int, tuple[float, float, float]] = {
    OTHERS: (0.55, 0.35, 0.55), BARRIER: (0.85, 0.45, 0.15), BICYCLE: (0.2, 0.5, 0.7),
    BUS: (0.9, 0.75, 0.2), CAR: (0.6, 0.1, 0.1), CONSTRUCTION_VEHICLE: (0.95, 0.65, 0.0),
    MOTORCYCLE: (0.15, 0.15, 0.2), PEDESTRIAN: (0.25, 0.3, 0.6), TRAFFIC_CONE: (1.0, 0.35, 0.05),
    TRAILER: (0.7, 0.7, 0.75), TRUCK: (0.3, 0.45, 0.35), DRIVEABLE_SURFACE: (0.33, 0.33, 0.35),
    OTHER_FLAT: (0.45, 0.43, 0.47), SIDEWALK: (0.65, 0.63, 0.6), TERRAIN: (0.45, 0.42, 0.28),
    MANMADE: (0.7, 0.62, 0.52), VEGETATION: (0.18, 0.42, 0.15),
}
"""Base RGB colour (0..1) of each Occ3D class in the synthetic images."""

CLASS_INTENSITY: dict[int, float] = {
    OTHERS: 0.3, BARRIER: 0.6, BICYCLE: 0.4, BUS: 0.5, CAR: 0.5, CONSTRUCTION_VEHICLE: 0.6,
    MOTORCYCLE: 0.4, PEDESTRIAN: 0.25, TRAFFIC_CONE: 0.8, TRAILER: 0.5, TRUCK: 0.5,
    DRIVEABLE_SURFACE: 0.08, OTHER_FLAT: 0.1, SIDEWALK: 0.15, TERRAIN: 0.12, MANMADE: 0.3,
    VEGETATION: 0.2,
}
"""LiDAR reflectivity (0..1) of each class; the point intensity is 255 times this, with noise."""

LANE_MARKING_WHITE = (0.9, 0.9, 0.88)
LANE_MARKING_YELLOW = (0.85, 0.7, 0.15)


@dataclass(frozen=True)
class Instance:
    """An annotated object: a nuScenes category name and attribute name (None: no attribute)."""

    category: str
    attribute: str | None


@dataclass(frozen=True)
class Primitive:
    """An oriented box (or ellipsoid inscribed in it) in the road frame.

    centre: (u, v) at time 0, metres; z_range: (bottom, top) metres; size: (length along yaw, width);
    yaw: radians in the road frame; velocity: (du/dt, dv/dt) m/s; instance: index into
    ``World.instances`` (-1 for unannotated scenery).
    """

    label: int
    centre: tuple[float, float]
    z_range: tuple[float, float]
    size: tuple[float, float]
    yaw: float
    colour: tuple[float, float, float]
    velocity: tuple[float, float] = (0.0, 0.0)
    ellipsoid: bool = False
    instance: int = -1

    def centre_at(self, t: float) -> tuple[float, float]:
        """(u, v) of the centre at time ``t`` seconds."""
        return self.centre[0] + self.velocity[0] * t, self.centre[1] + self.velocity[1] * t


@dataclass(frozen=True)
class RoadLayout:
    """A straight two-way road along u in [0, length]: lanes, sidewalks, crossings and paved bays.

    crossings: (u_start, u_end) of each zebra crossing; flat_bays: (u_start, u_end, side) of paved
    areas (other_flat) behind the sidewalk, side +1 left (v > 0) or -1 right.
    """

    length: float
    lane_width: float = 3.5
    lanes_per_direction: int = 2
    sidewalk_width: float = 3.0
    curb_height: float = 0.15
    crossings: tuple[tuple[float, float], ...] = ()
    flat_bays: tuple[tuple[float, float, int], ...] = ()

    @property
    def half_width(self) -> float:
        """Half the carriageway width (m): the road edge is at |v| = half_width."""
        return self.lanes_per_direction * self.lane_width

    def lane_centres(self) -> list[tuple[float, int]]:
        """(v, direction) of every lane centre; direction +1 drives along +u (right side, v < 0)."""
        out = []
        for i in range(self.lanes_per_direction):
            off = (i + 0.5) * self.lane_width
            out.append((-off, 1))
            out.append((off, -1))
        return out

    def ground(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ground at road-frame columns (u, v) [...]: class [...] uint8, top height [...] m, colour [..., 3]."""
        av = np.abs(v)
        hw = self.half_width
        label = np.full(u.shape, TERRAIN, dtype=np.uint8)
        top = np.full(u.shape, 0.05)
        for u0, u1, side in self.flat_bays:
            bay = (u >= u0) & (u < u1) & (np.sign(v) == side) & (av >= hw + self.sidewalk_width)
            label[bay] = OTHER_FLAT
            top[bay] = 0.02
        walk = (av >= hw) & (av < hw + self.sidewalk_width)
        label[walk] = SIDEWALK
        top[walk] = self.curb_height
        road = av < hw
        label[road] = DRIVEABLE_SURFACE
        top[road] = 0.0
        colour = np.asarray([CLASS_COLOURS[c] for c in range(17)] + [(0, 0, 0)], dtype=np.float32)[label]
        # Markings (colour only): the centre line, dashed lane dividers and zebra stripes.
        yellow = road & (av < 0.15)
        white = np.zeros(u.shape, dtype=bool)
        for i in range(1, self.lanes_per_direction):
            white |= road & (np.abs(av - i * self.lane_width) < 0.1) & (np.mod(u, 6.0) < 3.0)
        for u0, u1 in self.crossings:
            white |= road & (u >= u0) & (u < u1) & (np.mod(v, 1.0) < 0.5) & ~yellow
        colour[yellow] = LANE_MARKING_YELLOW
        colour[white] = LANE_MARKING_WHITE
        return label, top, colour


@dataclass(frozen=True)
class World:
    """One scene's world: the road, its primitives and instances, the map placement and the ego path.

    road2global: (x, y, yaw) placing the road frame in the global (map) frame, metres / radians.
    The ego's rear axle follows u = ego_start + ego_speed * t, v = ego_lane_v, heading + small sway.
    """

    layout: RoadLayout
    primitives: tuple[Primitive, ...]
    instances: tuple[Instance, ...]
    road2global: tuple[float, float, float]
    ego_start: float
    ego_speed: float
    ego_lane_v: float
    sway: float = 0.01

    def road_to_global_matrix(self) -> np.ndarray:
        """4x4 transform from the road frame to the global frame."""
        x, y, yaw = self.road2global
        c, s = np.cos(yaw), np.sin(yaw)
        m = np.eye(4)
        m[:2, :2] = [[c, -s], [s, c]]
        m[:2, 3] = [x, y]
        return m

    def ego_in_road(self, t: float) -> tuple[float, float, float]:
        """(u, v, yaw) of the ego vehicle in the road frame at time ``t`` seconds."""
        return (self.ego_start + self.ego_speed * t, self.ego_lane_v + 0.1 * np.sin(0.7 * t),
                self.sway * np.sin(0.5 * t))

    def ego2global(self, t: float) -> np.ndarray:
        """4x4 ego -> global transform at time ``t`` (flat ground: z = 0, no roll or pitch)."""
        u, v, yaw = self.ego_in_road(t)
        c, s = np.cos(yaw), np.sin(yaw)
        m = np.eye(4)
        m[:2, :2] = [[c, -s], [s, c]]
        m[:2, 3] = [u, v]
        return self.road_to_global_matrix() @ m


@dataclass(frozen=True)
class FineGrid:
    """A sample's world rasterised in the ego frame on a regular grid.

    labels [X, Y, Z] uint8 (17 = free), colours [X, Y, Z, 3] float32 in 0..1, intensity [X, Y, Z]
    float32 in 0..1; the grid spans ``lower``..``upper`` (metres, ego frame).
    """

    labels: np.ndarray
    colours: np.ndarray
    intensity: np.ndarray
    lower: tuple[float, float, float]
    upper: tuple[float, float, float]


def _vehicle_colour(rng: np.random.Generator, label: int) -> tuple[float, float, float]:
    if label == CAR:
        palette = [(0.6, 0.1, 0.1), (0.1, 0.15, 0.5), (0.85, 0.85, 0.85), (0.12, 0.12, 0.12),
                   (0.5, 0.5, 0.55), (0.1, 0.35, 0.2), (0.8, 0.7, 0.3)]
        base = palette[rng.integers(len(palette))]
    else:
        base = CLASS_COLOURS[label]
    jitter = rng.uniform(-0.05, 0.05, 3)
    return tuple(float(np.clip(b + j, 0, 1)) for b, j in zip(base, jitter))


# (label, nuScenes category, length, width, height) of the object kinds the world places.
_VEHICLES = {
    CAR: ("vehicle.car", 4.5, 1.9, 1.6), TRUCK: ("vehicle.truck", 7.0, 2.5, 3.0),
    BUS: ("vehicle.bus.rigid", 11.0, 2.8, 3.3), TRAILER: ("vehicle.trailer", 8.0, 2.5, 3.5),
    CONSTRUCTION_VEHICLE: ("vehicle.construction", 6.0, 2.6, 3.2),
    MOTORCYCLE: ("vehicle.motorcycle", 2.1, 0.8, 1.4), BICYCLE: ("vehicle.bicycle", 1.8, 0.6, 1.2),
}


class _Builder:
    """Collects primitives and instances while a world is laid out."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.primitives: list[Primitive] = []
        self.instances: list[Instance] = []

    def scenery(self, label: int, u: float, v: float, z0: float, z1: float, length: float, width: float,
                yaw: float = 0.0, colour=None, ellipsoid: bool = False) -> None:
        colour = colour if colour is not None else CLASS_COLOURS[label]
        self.primitives.append(Primitive(label, (u, v), (z0, z1), (length, width), yaw, tuple(colour),
                                         ellipsoid=ellipsoid))

    def thing(self, label: int, category: str, attribute: str | None, u: float, v: float, z0: float,
              size: tuple[float, float, float], yaw: float, velocity=(0.0, 0.0), colour=None) -> None:
        colour = colour if colour is not None else _vehicle_colour(self.rng, label)
        self.instances.append(Instance(category, attribute))
        self.primitives.append(Primitive(label, (u, v), (z0, z0 + size[2]), (size[0], size[1]), yaw,
                                         tuple(colour), tuple(velocity), instance=len(self.instances) - 1))

    def vehicle(self, label: int, u: float, v: float, z0: float, yaw: float, speed: float = 0.0) -> float:
        category, length, width, height = _VEHICLES[label]
        s = self.rng.uniform(0.9, 1.1)
        if label in (BICYCLE, MOTORCYCLE):
            attribute = "cycle.with_rider" if speed > 0 else "cycle.without_rider"
        else:
            attribute = "vehicle.moving" if speed > 0 else "vehicle.parked"
        vel = (speed * np.cos(yaw), speed * np.sin(yaw))
        self.thing(label, category, attribute, u, v, z0, (length * s, width * s, height * s), yaw, vel)
        return length * s


def build_world(rng: np.random.Generator, duration: float, road2global: tuple[float, float, float],
                margin: float = 60.0) -> World:
    """Lay out a street world for a scene lasting ``duration`` seconds.

    The road is long enough that the ego's 80 m Occ3D window stays on it (``margin`` metres of road
    before the start and after the end of the drive).
    """
    ego_speed = float(rng.uniform(3.0, 7.0))
    length = float(margin * 2 + ego_speed * duration)
    lw, sw = 3.5, 3.0
    hw = 2 * lw
    crossings = []
    u = margin + rng.uniform(5, 25)
    while u < length - 20:
        crossings.append((u, u + 4.0))
        u += rng.uniform(45, 80)
    bays = []
    for side in (-1, 1):
        u = rng.uniform(0, 30)
        while u < length:
            w = rng.uniform(10, 25)
            bays.append((u, u + w, side))
            u += w + rng.uniform(30, 70)
    layout = RoadLayout(length=length, lane_width=lw, lanes_per_direction=2, sidewalk_width=sw,
                        crossings=tuple(crossings), flat_bays=tuple(bays))
    b = _Builder(rng)
    walk_in, walk_out = hw, hw + sw

    def in_crossing(u0: float, u1: float, pad: float = 2.0) -> bool:
        return any(u1 > c0 - pad and u0 < c1 + pad for c0, c1 in crossings)

    def in_bay(u0: float, u1: float, side: int) -> bool:
        return any(u1 > b0 and u0 < b1 and s == side for b0, b1, s in bays)

    # Buildings behind a terrain verge, with gaps and bays between them.
    for side in (-1, 1):
        u = -40.0
        while u < length + 40:
            blen = rng.uniform(8, 25)
            if not in_bay(u, u + blen, side):
                setback = rng.uniform(3, 8)
                depth = rng.uniform(8, 15)
                v = side * (walk_out + setback + depth / 2)
                shade = rng.uniform(-0.12, 0.12, 3)
                colour = np.clip(np.asarray(CLASS_COLOURS[MANMADE]) + shade, 0, 1)
                b.scenery(MANMADE, u + blen / 2, v, 0.0, rng.uniform(6, 20), blen, depth, colour=colour)
            u += blen + rng.uniform(2, 10)
    # Trees and bushes on the verge; street lights and a few bins / benches on the sidewalk.
    for side in (-1, 1):
        u = rng.uniform(0, 10) - 40
        while u < length + 40:
            v = side * (walk_out + rng.uniform(1.0, 2.5))
            if rng.uniform() < 0.7:
                h = rng.uniform(2.0, 3.0)
                b.scenery(VEGETATION, u, v, 0.0, h, 0.3, 0.3)
                r = rng.uniform(1.4, 2.2)
                b.scenery(VEGETATION, u, v, h - 0.4, h - 0.4 + 2 * rng.uniform(1.1, 1.6), 2 * r, 2 * r,
                          ellipsoid=True)
            else:
                b.scenery(VEGETATION, u, v, 0.0, rng.uniform(0.8, 1.3), rng.uniform(2, 5), 1.2)
            u += rng.uniform(7, 15)
        u = rng.uniform(0, 25)
        while u < length:
            b.scenery(MANMADE, u, side * (walk_out - 0.3), 0.15, 5.5, 0.25, 0.25, colour=(0.4, 0.4, 0.42))
            if rng.uniform() < 0.4:
                b.scenery(OTHERS, u + 3, side * (walk_out - 0.6), 0.15, 0.15 + rng.uniform(0.5, 1.0),
                          rng.uniform(0.5, 1.6), 0.5)
            u += rng.uniform(20, 30)
    # A construction zone in the outer right lane: cones at the taper, barriers, a digger.
    outer_v = -1.5 * lw
    zone_u0 = float(margin + rng.uniform(10, max(11.0, length - 2 * margin - 30)))
    zone_len = rng.uniform(15, 25)
    for k in range(4):
        b.thing(TRAFFIC_CONE, "movable_object.trafficcone", None, zone_u0 - 6 + 1.5 * k,
                outer_v - 1.5 + 0.9 * k, 0.0, (0.4, 0.4, 0.7), 0.0, colour=CLASS_COLOURS[TRAFFIC_CONE])
    u = zone_u0
    while u < zone_u0 + zone_len:
        b.thing(BARRIER, "movable_object.barrier", None, u + 1.0, -lw - 0.3, 0.0, (2.0, 0.5, 1.0), 0.0,
                colour=CLASS_COLOURS[BARRIER])
        u += 2.4
    b.vehicle(CONSTRUCTION_VEHICLE, zone_u0 + zone_len / 2, outer_v, 0.0, 0.0)
    # A row of barriers on one sidewalk.
    bu = float(rng.uniform(margin, length - margin))
    for k in range(5):
        b.thing(BARRIER, "movable_object.barrier", None, bu + 2.2 * k, walk_in + 0.4, 0.15, (2.0, 0.5, 1.0),
                0.0, colour=CLASS_COLOURS[BARRIER])
    # Parked vehicles in both outer lanes (not in the zone, not on crossings).
    kinds = [CAR] * 12 + [TRUCK, TRAILER, BUS, MOTORCYCLE, BICYCLE]
    for side, yaw in ((-1, 0.0), (1, np.pi)):
        u = -30.0
        while u < length + 30:
            label = kinds[rng.integers(len(kinds))]
            length_ = _VEHICLES[label][1] * 1.1
            zone = side < 0 and u + length_ > zone_u0 - 8 and u < zone_u0 + zone_len + 2
            if not zone and not in_crossing(u, u + length_) and rng.uniform() < 0.7:
                v = side * (1.5 * lw + rng.uniform(-0.2, 0.3))
                if label in (BICYCLE, MOTORCYCLE):
                    v = side * (hw - 0.6)
                b.vehicle(label, u + length_ / 2, v, 0.0, yaw + rng.uniform(-0.05, 0.05))
            u += length_ + rng.uniform(1.0, 8.0)
    # Bicycles parked on the verge behind the sidewalks.
    for _ in range(2):
        side = 1 if rng.uniform() < 0.5 else -1
        b.vehicle(BICYCLE, rng.uniform(margin, length - margin), side * (walk_out + 0.5), 0.05,
                  rng.uniform(-0.2, 0.2))
    # Oncoming traffic in the inner left lane; a lead vehicle ahead of the ego at the ego's speed.
    u = -60.0
    while u < length + ego_speed * duration + 200:
        label = [CAR, CAR, CAR, CAR, TRUCK, BUS, MOTORCYCLE][rng.integers(7)]
        length_ = b.vehicle(label, u, 0.5 * lw, 0.0, np.pi, speed=float(rng.uniform(4, 10)))
        u += length_ + rng.uniform(10, 40)
    b.vehicle(CAR, margin + rng.uniform(14, 25), -0.5 * lw, 0.0, 0.0, speed=ego_speed)
    # Pedestrians: walking along the sidewalks, waiting at the crossings.
    for _ in range(int(length / 12)):
        side = 1 if rng.uniform() < 0.5 else -1
        direction = 1 if rng.uniform() < 0.5 else -1
        speed = rng.uniform(0.8, 1.6)
        yaw = 0.0 if direction > 0 else np.pi
        v = side * (walk_in + rng.uniform(1.0, sw - 1.2))
        b.thing(PEDESTRIAN, "human.pedestrian.adult", "pedestrian.moving", rng.uniform(-20, length + 20), v,
                0.15, (0.6, 0.6, rng.uniform(1.55, 1.9)), yaw, (direction * speed, 0.0))
    for c0, c1 in crossings:
        for side in (-1, 1):
            if rng.uniform() < 0.6:
                b.thing(PEDESTRIAN, "human.pedestrian.adult", "pedestrian.standing", rng.uniform(c0, c1),
                        side * (walk_in + 0.7), 0.15, (0.6, 0.6, rng.uniform(1.55, 1.9)),
                        -side * np.pi / 2, (0.0, 0.0))
    return World(layout=layout, primitives=tuple(b.primitives), instances=tuple(b.instances),
                 road2global=road2global, ego_start=margin, ego_speed=ego_speed, ego_lane_v=-0.5 * lw)


def _hash_noise(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray) -> np.ndarray:
    """Deterministic per-cell noise in [0, 1) from integer coordinates (any matching shapes)."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (iz.astype(np.int64) * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def rasterise(world: World, t: float, voxel_size: float = 0.2,
              lower: tuple[float, float, float] = occ3d.GRID_LOWER,
              upper: tuple[float, float, float] = occ3d.GRID_UPPER) -> FineGrid:
    """Rasterise the world at time ``t`` (s) on a grid of ``voxel_size`` (m) in the ego frame at ``t``.

    A voxel takes the class of the primitive (or ground slab) containing its centre; later
    primitives win. Returns a FineGrid [X, Y, Z] with X = (upper - lower) / voxel_size per axis.
    """
    shape = tuple(int(round((hi - lo) / voxel_size)) for lo, hi in zip(lower, upper))
    xs, ys, zs = occ3d.voxel_centres(lower, upper, shape)
    road_from_ego = np.linalg.inv(world.road_to_global_matrix()) @ world.ego2global(t)
    a, off = road_from_ego[:2, :2], road_from_ego[:2, 3]
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    u = a[0, 0] * gx + a[0, 1] * gy + off[0]
    v = a[1, 0] * gx + a[1, 1] * gy + off[1]

    labels = np.full(shape, FREE, dtype=np.uint8)
    colours = np.zeros(shape + (3,), dtype=np.float32)
    g_label, g_top, g_colour = world.layout.ground(u, v)
    inside = (zs[None, None, :] < g_top[..., None]) & (zs[None, None, :] > g_top[..., None] - GROUND_THICKNESS)
    labels[inside] = np.broadcast_to(g_label[..., None], shape)[inside]
    colours[inside] = np.broadcast_to(g_colour[:, :, None, :], shape + (3,))[inside]

    ego_from_road = np.linalg.inv(road_from_ego)
    lo = np.asarray(lower)
    for prim in world.primitives:
        cu, cv = prim.centre_at(t)
        half = np.asarray(prim.size) / 2
        c, s = np.cos(prim.yaw), np.sin(prim.yaw)
        corners = np.array([[cu + sx * half[0] * c - sy * half[1] * s, cv + sx * half[0] * s + sy * half[1] * c]
                            for sx in (-1, 1) for sy in (-1, 1)])
        ego_xy = corners @ ego_from_road[:2, :2].T + ego_from_road[:2, 3]
        i0 = np.floor((ego_xy.min(0) - lo[:2]) / voxel_size).astype(int)
        i1 = np.ceil((ego_xy.max(0) - lo[:2]) / voxel_size).astype(int)
        k0 = int(np.floor((prim.z_range[0] - lo[2]) / voxel_size))
        k1 = int(np.ceil((prim.z_range[1] - lo[2]) / voxel_size))
        i0 = np.maximum(i0, 0)
        i1 = np.minimum(i1, shape[:2])
        k0, k1 = max(k0, 0), min(k1, shape[2])
        if i0[0] >= i1[0] or i0[1] >= i1[1] or k0 >= k1:
            continue
        du = u[i0[0]:i1[0], i0[1]:i1[1]] - cu
        dv = v[i0[0]:i1[0], i0[1]:i1[1]] - cv
        la = (du * c + dv * s)[..., None] / half[0]
        lb = (-du * s + dv * c)[..., None] / half[1]
        zc = zs[k0:k1]
        zmid = (prim.z_range[0] + prim.z_range[1]) / 2
        zhalf = (prim.z_range[1] - prim.z_range[0]) / 2
        lz = ((zc - zmid) / zhalf)[None, None, :]
        if prim.ellipsoid:
            hit = la ** 2 + lb ** 2 + lz ** 2 <= 1.0
        else:
            hit = (np.abs(la) <= 1.0) & (np.abs(lb) <= 1.0) & (np.abs(lz) <= 1.0)
        if not hit.any():
            continue
        block = labels[i0[0]:i1[0], i0[1]:i1[1], k0:k1]
        block[hit] = prim.label
        cblock = colours[i0[0]:i1[0], i0[1]:i1[1], k0:k1]
        cblock[hit] = prim.colour

    intensity_table = np.asarray([CLASS_INTENSITY[c] for c in range(17)] + [0.0], dtype=np.float32)
    intensity = intensity_table[labels]
    # Texture: per-voxel brightness noise keyed to the voxel's global cell (stable across frames).
    ix, iy, iz = np.nonzero(labels != FREE)
    e2g = world.ego2global(t)
    gx_ = e2g[0, 0] * xs[ix] + e2g[0, 1] * ys[iy] + e2g[0, 3]
    gy_ = e2g[1, 0] * xs[ix] + e2g[1, 1] * ys[iy] + e2g[1, 3]
    noise = _hash_noise(np.floor(gx_ / voxel_size), np.floor(gy_ / voxel_size), np.floor(zs[iz] / voxel_size))
    colours[ix, iy, iz] *= (0.82 + 0.36 * noise)[:, None]
    np.clip(colours, 0.0, 1.0, out=colours)
    return FineGrid(labels=labels, colours=colours, intensity=intensity, lower=tuple(lower), upper=tuple(upper))


def downsample_labels(fine: np.ndarray, factor: int) -> np.ndarray:
    """Fine labels [X*f, Y*f, Z*f] -> coarse [X, Y, Z] uint8: a coarse voxel is occupied if any child is;
    its class is the most frequent occupied child class (ties: the lower class id)."""
    if factor == 1:
        return fine.copy()
    x, y, z = (n // factor for n in fine.shape)
    ix = np.arange(fine.shape[0]) // factor
    iy = np.arange(fine.shape[1]) // factor
    iz = np.arange(fine.shape[2]) // factor
    cell = (ix[:, None, None] * y + iy[None, :, None]) * z + iz[None, None, :]
    counts = np.bincount((cell * (FREE + 1) + fine).reshape(-1), minlength=x * y * z * (FREE + 1))
    counts = counts.reshape(x * y * z, FREE + 1)[:, :FREE]
    best = counts.argmax(-1).astype(np.uint8)
    return np.where(counts.max(-1) > 0, best, np.uint8(FREE)).reshape(x, y, z).astype(np.uint8)


def boxes_at(world: World, t: float) -> list[dict]:
    """Annotated objects at time ``t``: dicts with instance index, global centre [3] (m), nuScenes size
    [width, length, height] (m), global yaw (rad) and velocity [2] (m/s, global)."""
    road = world.road_to_global_matrix()
    road_yaw = world.road2global[2]
    out = []
    for prim in world.primitives:
        if prim.instance < 0:
            continue
        cu, cv = prim.centre_at(t)
        centre = road @ np.array([cu, cv, 0.0, 1.0])
        centre[2] = (prim.z_range[0] + prim.z_range[1]) / 2
        vel = road[:2, :2] @ np.asarray(prim.velocity)
        out.append(dict(instance=prim.instance, centre=centre[:3], yaw=road_yaw + prim.yaw,
                        size=(prim.size[1], prim.size[0], prim.z_range[1] - prim.z_range[0]),
                        velocity=vel))
    return out
