"""Exact voxel traversal of many rays through an occupancy grid.

`traverse` walks every ray voxel by voxel (Amanatides & Woo) until it meets an occupied voxel,
leaves the grid or reaches its ``max_distance``: on CPU tensors in the compiled kernel (the
renderer's exact march, threads over rays), on CUDA tensors as `traverse_torch`, a vectorised loop
in which all rays advance one voxel per pass. It serves both `RayIoU` (on which
voxel does each ray stop, and where does it leave that voxel: SparseOcc's ray depth) and the
synthetic dataset's Occ3D visibility masks (which voxels did the rays pass through).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence, Union

import numpy as np
import torch

from radocc import _ext  # noqa: F401  (registers torch.ops.radocc.traverse)
from radocc.occ3d import GRID_LOWER, GRID_UPPER

ArrayLike = Union[np.ndarray, torch.Tensor]

__all__ = ["ArrayLike", "Traversal", "traverse", "traverse_torch"]

# Metres: boundary crossings closer than this are one crossing (the ray goes through an edge).
_TIE_EPS = 1e-9
# Codes of the padded grid's voxels (0: free).
_OCCUPIED, _OUTSIDE = 1, 2


# ----------------------------------------------------------------------------- input checks
def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def _same_shape(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape, got {a_name} {tuple(a.shape)} "
            f"and {b_name} {tuple(b.shape)}")


def _vector3(x: ArrayLike | Sequence[float], name: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64, device=device)
    if t.shape != (3,):
        raise ValueError(f"{name} must have 3 values (x, y, z), got shape {tuple(t.shape)}")
    return t


def _rays(x: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    t = _as_tensor(x, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {t.dtype}")
    if t.dim() != 2 or t.shape[1] != 3:
        raise ValueError(f"{name} must be [R, 3], got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has non-finite values")
    return t.to(device, torch.float64)


def _max_distance(x: float | Sequence[float] | ArrayLike, num_rays: int,
                  device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64, device=device)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != num_rays):
        raise ValueError(
            f"max_distance must be one value or [R] = [{num_rays}], got shape {tuple(t.shape)}")
    if bool((t.isnan() | (t < 0)).any()):
        raise ValueError("max_distance must be >= 0 metres (inf for no limit)")
    return t.expand(num_rays)


# ----------------------------------------------------------------------------- traversal
def clip_to_box(origins: torch.Tensor, directions: torch.Tensor, lower: torch.Tensor,
                upper: torch.Tensor, near: float = 0.0, far: float = math.inf,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where unit rays enter and leave an axis-aligned box, clipped to [near, far] (slab test).

    Args:
        origins, directions: [..., 3], metres; directions of unit length.
        lower, upper: [3] box corners, metres.
    Returns:
        t0, t1: [...] metres along the rays; hit: [...] bool, t1 > t0 (the ray crosses the box).
    """
    parallel = directions == 0
    safe = torch.where(parallel, torch.ones_like(directions), directions)
    ta, tb = (lower - origins) / safe, (upper - origins) / safe
    # An axis-parallel ray is unconstrained by that axis between its planes, else misses the box.
    inside = (origins >= lower) & (origins <= upper)
    t_in = torch.where(parallel, torch.where(inside, -math.inf, math.inf), torch.minimum(ta, tb))
    t_out = torch.where(parallel, torch.where(inside, math.inf, -math.inf), torch.maximum(ta, tb))
    t0 = t_in.amax(dim=-1).clamp(min=near)
    t1 = t_out.amin(dim=-1).clamp(max=far)
    return t0, t1, t1 > t0


class Traversal(NamedTuple):
    """What `traverse` found, per ray (R rays) and, with ``return_visible``, per voxel."""

    distance: torch.Tensor
    """[R] float64 metres from the origin to where the ray ENTERS its first occupied voxel (0 when
    the origin's voxel is occupied); for rays that hit nothing, to where they stop: where they leave
    the box, or ``max_distance`` if that comes first; inf for rays that never enter the box (before
    ``max_distance``)."""
    index: torch.Tensor
    """[R, 3] int64, the hit voxel; for rays that hit nothing, the last voxel they visit; -1 for
    rays that visit none."""
    hit: torch.Tensor
    """[R] bool."""
    visible: torch.Tensor | None
    """[X, Y, Z] bool, every voxel some ray visited (the hit voxels included); None unless
    ``return_visible``."""
    exit_distance: torch.Tensor
    """[R] float64 metres from the origin to where the ray LEAVES its first occupied voxel (the
    depth SparseOcc's RayIoU uses; > 0 also when the origin's voxel is occupied; not limited by
    ``max_distance``, which only decides whether the voxel is reached); for rays that hit nothing,
    the same as ``distance``."""


@torch.no_grad()
def traverse(occupied: torch.Tensor, origins: ArrayLike, directions: ArrayLike,
             lower: ArrayLike | Sequence[float] = GRID_LOWER,
             upper: ArrayLike | Sequence[float] = GRID_UPPER,
             max_distance: float | Sequence[float] | ArrayLike = math.inf,
             return_visible: bool = False) -> Traversal:
    """Walk each ray to its first occupied voxel (Amanatides & Woo traversal, all rays at once).

    Voxel [i, j, k] spans ``lower + [i, i+1] * size`` (and likewise in y, z), with
    ``size = (upper - lower) / occupied.shape``. Rays start at their origin (inside or outside the
    box) and visit every voxel they pass through with non-zero length, in order; a ray through an
    edge or a corner goes straight to the diagonal voxel. A voxel is visited when the ray enters it
    at a distance < ``max_distance``. A ray stops at its first occupied voxel (visited), when it
    leaves the box, or at ``max_distance``. Both where it enters that voxel (``distance``) and where
    it would leave it (``exit_distance``, SparseOcc's RayIoU depth) are returned.

    Args:
        occupied: [X, Y, Z] bool; the device the work is done on.
        origins: [R, 3] metres, grid frame.
        directions: [R, 3], non-zero; normalised here, so distances are metres.
        lower, upper: the grid box's corners, metres (Occ3D defaults).
        max_distance: metres along each ray, one value for all or [R]; >= 0, inf for no limit.
        return_visible: also return the mask of visited voxels (else ``visible`` is None).

    Returns:
        A `Traversal` (distance, index, hit, visible, exit_distance).
    """
    if not isinstance(occupied, torch.Tensor) or occupied.dtype != torch.bool:
        got = occupied.dtype if isinstance(occupied, torch.Tensor) else type(occupied).__name__
        raise TypeError(f"occupied must be a bool torch tensor, got {got}")
    if occupied.dim() != 3:
        raise ValueError(f"occupied must be [X, Y, Z], got shape {tuple(occupied.shape)}")
    dev = occupied.device
    o = _rays(origins, "origins", dev)
    d = _rays(directions, "directions", dev)
    _same_shape(o, "origins", d, "directions")
    norm = d.norm(dim=1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("directions has zero-length rows")
    d = d / norm
    lo, hi = _vector3(lower, "lower", dev), _vector3(upper, "upper", dev)
    if not bool((hi > lo).all()):
        raise ValueError(f"upper must exceed lower on every axis, got {lo.tolist()} {hi.tolist()}")
    limit = _max_distance(max_distance, o.shape[0], dev)
    if dev.type == "cpu":
        distance, index, hit, visible, exit_distance = torch.ops.radocc.traverse(
            occupied.contiguous(), o.contiguous(), d.contiguous(), limit.contiguous(),
            lo.tolist(), hi.tolist(), return_visible)
        return Traversal(distance, index, hit, visible if return_visible else None, exit_distance)
    return traverse_torch(occupied, o, d, lo, hi, limit, return_visible)


@torch.no_grad()
def traverse_torch(occupied: torch.Tensor, o: torch.Tensor, d: torch.Tensor, lo: torch.Tensor,
                   hi: torch.Tensor, limit: torch.Tensor, return_visible: bool) -> Traversal:
    """`traverse` as a vectorised torch loop (all rays advance one voxel per pass): what it runs
    on CUDA tensors, and the reference of the CPU kernel (``torch.ops.radocc.traverse``) in the
    tests. It trusts its arguments (`traverse` checks them): occupied [X, Y, Z] bool, o and d
    [R, 3] float64 (d of unit length), lo and hi [3] float64, limit [R] float64, all on
    occupied's device."""
    dev = occupied.device
    n = torch.tensor(occupied.shape, device=dev)
    size = (hi - lo) / n
    num_rays = o.shape[0]

    # The part of the ray inside the box is [t_enter, t_exit].
    t_enter, t_exit, crosses = clip_to_box(o, d, lo, hi)
    enters = crosses & (t_enter < limit)

    distance = torch.full((num_rays,), math.inf, dtype=torch.float64, device=dev)
    index = torch.full((num_rays, 3), -1, dtype=torch.int64, device=dev)
    hit = torch.zeros(num_rays, dtype=torch.bool, device=dev)
    # Where the rays that hit nothing stop; overwritten below for rays that hit.
    distance[enters] = torch.minimum(t_exit, limit)[enters]
    # The grid padded by one voxel on every side, coded free / occupied / outside: a ray crosses at
    # most one boundary per axis per pass and stops on leaving, so its index stays in [-1, n] and
    # one lookup tells both whether it left the box and whether it hit.
    code = torch.nn.functional.pad(occupied.to(torch.uint8), (1, 1, 1, 1, 1, 1), value=_OUTSIDE)
    code_flat = code.reshape(-1)
    _, py, pz = code.shape
    strides = torch.tensor([py * pz, pz, 1], device=dev, dtype=torch.float64)
    pad_offset = strides.sum()  # voxel [i, j, k] is padded voxel [i+1, j+1, k+1]
    visible = torch.zeros_like(code_flat, dtype=torch.bool) if return_visible else None

    # State of the rays still marching; idx is kept in float64 (small exact integers).
    ids = enters.nonzero().squeeze(1)
    o_a, d_a = o[ids], d[ids]
    step = torch.sign(d_a)
    t_cur = t_enter[ids]
    # A ray starting on a voxel boundary towards -axis crosses it in the first pass below.
    idx = torch.floor((o_a + d_a * t_cur[:, None] - lo) / size)
    idx = torch.minimum(torch.maximum(idx, torch.zeros_like(size)), (n - 1).double())
    # The next boundary along each axis is at t = offset + idx * slope: recomputed from the index
    # at every step, so no error accumulates; inf along axes the ray is parallel to.
    moving = step != 0
    d_safe = torch.where(moving, d_a, torch.ones_like(d_a))
    slope = torch.where(moving, size / d_safe, torch.zeros_like(d_a))
    offset = torch.where(moving, (lo + (step > 0) * size - o_a) / d_safe,
                         torch.full_like(d_a, math.inf))
    # Per-ray constants compacted as one tensor [A, 4, 3]: step, slope, offset, limit (broadcast).
    aux = torch.stack([step, slope, offset, limit[ids, None].expand(-1, 3)], dim=1)

    hit_ids, hit_t, hit_exit, hit_idx, stop_ids, stop_idx = [], [], [], [], [], []
    max_passes, passes = int(n.sum()) + 2, 0  # every pass but the first crosses a boundary
    while ids.numel() > 0:
        passes += 1
        if passes > max_passes:
            raise RuntimeError("traverse: traversal did not finish (this is a bug)")
        step, slope, offset, lim = aux.unbind(1)
        t_next = torch.addcmul(offset, idx, slope)
        if passes > 1:
            t_cur = t_next.amin(1)
        # Cross every boundary the ray sits on at t_cur (several at an edge or a corner).
        move = step * (t_next <= t_cur[:, None] + _TIE_EPS)
        idx = idx + move
        lin = torch.addmv(pad_offset, idx, strides).long()
        state = code_flat[lin]
        # The first pass enters at t_enter, already checked against the limit.
        within = t_cur < lim[:, 0]
        stopped = (state == _OUTSIDE) | ~within
        now = (state == _OCCUPIED) & within
        if visible is not None:
            visible[torch.where(stopped, 0, lin)] = True  # flat 0 is padding, cropped below
        done = stopped | now
        if bool(done.any()):
            s = stopped.nonzero().squeeze(1)
            stop_ids.append(ids[s])
            stop_idx.append((idx - move)[s])  # the last voxel visited
            h = now.nonzero().squeeze(1)
            hit_ids.append(ids[h])
            hit_t.append(t_cur[h])
            # The hit voxel is left at its next boundary crossing (the box's exit bounds it; it
            # only guards against rounding).
            leave = torch.addcmul(offset[h], idx[h], slope[h]).amin(1)
            hit_exit.append(torch.minimum(leave, t_exit[ids[h]]))
            hit_idx.append(idx[h])
            go = (~done).nonzero().squeeze(1)
            ids, idx, aux = ids[go], idx[go], aux[go]

    exit_distance = distance.clone()
    if stop_ids:
        index[torch.cat(stop_ids)] = torch.cat(stop_idx).long()
        h = torch.cat(hit_ids)
        distance[h] = torch.cat(hit_t)
        exit_distance[h] = torch.cat(hit_exit)
        index[h] = torch.cat(hit_idx).long()
        hit[h] = True
    if visible is not None:
        visible = visible.reshape(code.shape)[1:-1, 1:-1, 1:-1].contiguous()
    return Traversal(distance, index, hit, visible, exit_distance)
