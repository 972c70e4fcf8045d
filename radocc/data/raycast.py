"""Exact voxel traversal of many rays through a binary occupancy grid (numpy), for visibility masks.

Occ3D's masks: a voxel is visible to a sensor if one of its rays passes through it before (or at)
the ray's first occupied voxel. This module walks every ray voxel by voxel (Amanatides & Woo),
vectorised over the rays that are still travelling.
"""

from __future__ import annotations

import numpy as np


def cast_rays(occupied: np.ndarray, origins: np.ndarray, directions: np.ndarray,
              lower: tuple[float, float, float], upper: tuple[float, float, float],
              max_distance: float | np.ndarray = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Walk rays through ``occupied`` until each hits an occupied voxel, leaves the grid or ``max_distance``.

    Args:
        occupied: [X, Y, Z] bool, the grid spanning ``lower``..``upper`` (metres).
        origins: [R, 3] metres, grid frame (inside or outside the grid).
        directions: [R, 3], need not be normalised.
        max_distance: metres along the ray, one for all rays or [R]; the voxel holding the point at
            that distance is the last one entered.
    Returns:
        visible: [X, Y, Z] bool, every voxel some ray entered, the hit voxels included.
        hit_distance: [R] metres from the origin to where the ray enters its first occupied voxel
        (inf where it hits nothing).
    """
    shape = np.asarray(occupied.shape)
    lo = np.asarray(lower, dtype=np.float64)
    hi = np.asarray(upper, dtype=np.float64)
    size = (hi - lo) / shape
    o = np.asarray(origins, dtype=np.float64).reshape(-1, 3)
    d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    num = o.shape[0]
    visible = np.zeros(occupied.shape, dtype=bool)
    hit_distance = np.full(num, np.inf)

    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t0 = (lo - o) * inv
        t1 = (hi - o) * inv
    t_near = np.nanmax(np.where(np.isnan(t0), -np.inf, np.minimum(t0, t1)), axis=1)
    t_far = np.nanmin(np.where(np.isnan(t1), np.inf, np.maximum(t0, t1)), axis=1)
    t_enter = np.maximum(t_near, 0.0)
    limit = np.broadcast_to(np.asarray(max_distance, dtype=np.float64), (num,))
    alive = (t_enter < t_far) & (t_enter < limit)
    rays = np.nonzero(alive)[0]
    t_cur = t_enter[rays]
    p = o[rays] + d[rays] * (t_cur[:, None] + 1e-9)
    idx = np.clip(np.floor((p - lo) / size).astype(np.int64), 0, shape - 1)
    dr = d[rays]
    step = np.where(dr > 0, 1, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boundary = lo + (idx + (step > 0)) * size
        t_max = np.where(dr != 0, (boundary - o[rays]) / dr, np.inf)
        t_delta = np.where(dr != 0, size / np.abs(dr), np.inf)
    occ = occupied.reshape(-1)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    vis = visible.reshape(-1)

    while rays.size:
        flat = idx @ strides
        vis[flat] = True
        hit = occ[flat]
        hit_distance[rays[hit]] = t_cur[hit]
        axis = np.argmin(t_max, axis=1)
        ar = np.arange(rays.size)
        t_next = t_max[ar, axis]
        idx[ar, axis] += step[ar, axis]
        t_max[ar, axis] += t_delta[ar, axis]
        inside = np.all((idx >= 0) & (idx < shape), axis=1)
        keep = ~hit & inside & (t_next < limit[rays])
        rays, idx, t_max, t_delta, step = rays[keep], idx[keep], t_max[keep], t_delta[keep], step[keep]
        t_cur = t_next[keep]
    return visible, hit_distance
