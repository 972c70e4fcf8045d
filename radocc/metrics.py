"""Occupancy and rendering metrics for Occ3D-nuScenes.

- `OccupancyMIoU`: Occ3D's voxel mIoU (one global confusion matrix over camera-visible voxels).
- `RayIoU`: SparseOcc's ray-based IoU: LiDAR-like rays cast through the predicted and the true
  grids must stop at the same depth (within 1, 2, 4 m) with the same class; a ray's depth is where
  it leaves its first occupied voxel, as in SparseOcc (rays walked by `radocc.raycast.traverse`).
- `depth_metrics` / `DepthMetrics`: rendered depth against LiDAR depth (AbsRel, RMSE,
  delta < 1.25^k).

Accumulators take numpy arrays or torch tensors, keep int64/float64 sums on the CPU and, when
torch.distributed is initialised, sum them over all ranks in `compute()` (a collective: every rank
must call it).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist

from radocc.map_metrics import ChamferMapAP  # vector-map Chamfer AP (MapDistill branch)
# The Occ3D facts live in radocc.occ3d; re-exported here under the metrics' names.
from radocc.occ3d import CLASS_NAMES as OCC3D_CLASSES
from radocc.occ3d import FREE as OCC3D_FREE
from radocc.occ3d import GRID_LOWER as OCC3D_LOWER
from radocc.occ3d import GRID_SHAPE as OCC3D_SHAPE
from radocc.occ3d import GRID_UPPER as OCC3D_UPPER
from radocc.occ3d import NUM_CLASSES as OCC3D_NUM_CLASSES
# Input checks shared with the traversal.
from radocc.raycast import ArrayLike, _as_tensor, _rays, _same_shape, _vector3, traverse

__all__ = [
    "OCC3D_CLASSES", "OCC3D_NUM_CLASSES", "OCC3D_FREE", "OCC3D_SHAPE", "OCC3D_LOWER", "OCC3D_UPPER",
    "OccupancyMIoU", "RayIoU", "lidar_ray_directions", "select_lidar_origins",
    "depth_metrics", "DepthMetrics", "ChamferMapAP",
]


# ----------------------------------------------------------------------------- input checks
def _labels(x: ArrayLike, name: str, num_classes: int) -> torch.Tensor:
    """Integer class labels in [0, num_classes), returned as int64."""
    t = _as_tensor(x, name)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold integer class labels, got dtype {t.dtype}")
    if t.numel() > 0:
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name} has labels in [{lo}, {hi}], outside [0, {num_classes})")
    return t.long()


def _mask(x: ArrayLike, name: str) -> torch.Tensor:
    """A visibility mask: bool, or integers that are all 0 or 1."""
    t = _as_tensor(x, name)
    if t.dtype == torch.bool:
        return t
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must be bool or 0/1 integers, got dtype {t.dtype}")
    if t.numel() > 0 and not bool(((t == 0) | (t == 1)).all()):
        raise ValueError(f"{name} must be bool or 0/1 integers, got values outside {{0, 1}}")
    return t != 0


def _depths(x: ArrayLike, name: str) -> torch.Tensor:
    t = _as_tensor(x, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point depth array, got dtype {t.dtype}")
    return t.double().reshape(-1)


def _check_classes(num_classes: int, free_index: int,
                   class_names: Sequence[str] | None) -> tuple[str, ...]:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 0 <= free_index < num_classes:
        raise ValueError(f"free_index must be in [0, {num_classes}), got {free_index}")
    if class_names is None:
        if num_classes == len(OCC3D_CLASSES):
            return OCC3D_CLASSES
        return tuple(f"class_{i}" for i in range(num_classes))
    if len(class_names) != num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} names, expected num_classes={num_classes}")
    return tuple(class_names)


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over all ranks, as a copy (`t` is untouched); a copy when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return t.clone()
    # NCCL only reduces CUDA tensors; gloo and others reduce CPU tensors.
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    out = t.to(device, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def _percent_dict(names: Sequence[str], values: torch.Tensor, skip: int) -> dict[str, float]:
    return {n: v * 100.0 for i, (n, v) in enumerate(zip(names, values.tolist())) if i != skip}


# ----------------------------------------------------------------------------- Occ3D mIoU
class OccupancyMIoU:
    """Occ3D-nuScenes voxel mIoU (BEVDet/FlashOcc ``Metric_mIoU``).

    One global confusion matrix (rows gt, columns pred) over every voxel of every sample where
    ``mask_camera`` is set; free stays in the matrix, so free<->occupied mistakes lower the
    classes' IoU, but the mean is over the other classes only (nan-mean: a class absent from both
    gt and prediction is left out).

    Args:
        num_classes: number of labels, free included (18 for Occ3D).
        free_index: the free label (17), excluded from the mean.
        use_camera_mask: evaluate only voxels where ``mask_camera`` is set (the Occ3D protocol).
        class_names: names in label order; defaults to `OCC3D_CLASSES` when num_classes is 18.
    """

    def __init__(self, num_classes: int = OCC3D_NUM_CLASSES, free_index: int = OCC3D_FREE,
                 use_camera_mask: bool = True, class_names: Sequence[str] | None = None) -> None:
        self.class_names = _check_classes(num_classes, free_index, class_names)
        self.num_classes = num_classes
        self.free_index = free_index
        self.use_camera_mask = use_camera_mask
        self.reset()

    def reset(self) -> None:
        """Forget all samples seen so far."""
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: ArrayLike, gt: ArrayLike, mask_camera: ArrayLike | None = None) -> None:
        """Add samples to the confusion matrix.

        Args:
            pred: predicted labels, integer, [X, Y, Z] or batched [B, X, Y, Z] (any shape).
            gt: true labels, same shape as pred.
            mask_camera: bool or 0/1, same shape; required when use_camera_mask, else ignored.
        """
        p = _labels(pred, "pred", self.num_classes)
        g = _labels(gt, "gt", self.num_classes)
        _same_shape(p, "pred", g, "gt")
        if self.use_camera_mask:
            if mask_camera is None:
                raise ValueError("mask_camera is required when use_camera_mask=True")
            m = _mask(mask_camera, "mask_camera")
            _same_shape(m, "mask_camera", g, "gt")
            m = m.to(g.device)
            p, g = p.to(g.device)[m], g[m]
        else:
            p, g = p.to(g.device).reshape(-1), g.reshape(-1)
        k = self.num_classes
        counts = torch.bincount(g * k + p, minlength=k * k).reshape(k, k)
        self.confusion += counts.cpu()

    def compute(self) -> dict:
        """Returns ``{"mIoU": percent, "IoU": {class name: percent}}`` (free not listed).

        IoU_c = TP / (TP + FP + FN) from the (all-reduced) confusion matrix; nan for a class absent
        from both gt and prediction.
        """
        hist = _all_reduce_sum(self.confusion).double()
        tp = hist.diag()
        iou = tp / (hist.sum(0) + hist.sum(1) - tp)  # 0/0 -> nan
        keep = [c for c in range(self.num_classes) if c != self.free_index]
        return {
            "mIoU": float(torch.nanmean(iou[keep])) * 100.0,
            "IoU": _percent_dict(self.class_names, iou, skip=self.free_index),
        }


# ----------------------------------------------------------------------------- RayIoU
def lidar_ray_directions() -> torch.Tensor:
    """SparseOcc's RayIoU ray set: [P * 360, 3] float64 unit vectors (pitch-major).

    Azimuth 0..359 degrees in 1-degree steps; pitch -(pi/2 - atan(k + 1)) for k = 0..9 (from -45
    degrees up to about -5.7), then the last increment is repeated while pitch < 0.21 rad (the top
    of the nuScenes LiDAR's field of view).
    """
    pitch = [-(math.pi / 2 - math.atan(k + 1)) for k in range(10)]
    while pitch[-1] < 0.21:
        pitch.append(pitch[-1] + (pitch[-1] - pitch[-2]))
    pitch_t = torch.tensor(pitch, dtype=torch.float64)[:, None]
    azimuth = torch.deg2rad(torch.arange(360, dtype=torch.float64))[None, :]
    dirs = torch.stack([
        torch.cos(pitch_t) * torch.cos(azimuth),
        torch.cos(pitch_t) * torch.sin(azimuth),
        torch.sin(pitch_t).expand(-1, azimuth.shape[1]),
    ], dim=-1)
    return dirs.reshape(-1, 3)


def select_lidar_origins(lidar_origins: ArrayLike, max_origins: int = 8,
                         xy_range: float = 39.0) -> torch.Tensor:
    """SparseOcc's ray origins: LiDAR origins with |x| < xy_range and |y| < xy_range, at most
    `max_origins` of them, evenly spaced (indices round(linspace(0, M - 1, max_origins))).

    Args:
        lidar_origins: [M, 3] metres, current ego frame (the scene's keyframe LiDAR origins).

    Returns:
        [M', 3] float64, M' <= max_origins.
    """
    t = _as_tensor(lidar_origins, "lidar_origins")
    if not t.is_floating_point():
        raise TypeError(f"lidar_origins must be floating point, got dtype {t.dtype}")
    if t.dim() != 2 or t.shape[1] != 3:
        raise ValueError(f"lidar_origins must be [M, 3], got shape {tuple(t.shape)}")
    t = t.double()
    t = t[(t[:, 0].abs() < xy_range) & (t[:, 1].abs() < xy_range)]
    if t.shape[0] == 0:
        raise ValueError(f"lidar_origins has no origin with |x| and |y| < {xy_range} m")
    if t.shape[0] > max_origins:
        pick = torch.round(torch.linspace(0, t.shape[0] - 1, max_origins, dtype=torch.float64))
        t = t[pick.long()]
    return t


class RayIoU:
    """SparseOcc's RayIoU: do rays stop at the same depth, on the same class, in both grids?

    For each sample, rays from up to 8 LiDAR origins (`select_lidar_origins`) along
    `lidar_ray_directions` are cast through the binarised gt and predicted grids (occupied =
    label != free) with `radocc.raycast.traverse`; a ray's label is its hit voxel's class (free
    when it leaves the grid) and its depth, in metres, is where it LEAVES the hit voxel
    (``Traversal.exit_distance``, as SparseOcc's dvr walk measures it: an origin inside an
    occupied voxel gets that voxel's exit distance, not 0), or where it leaves the grid when it
    hits nothing. Rays whose gt label is free are dropped. Per class c: gt_cnt,
    pred_cnt = rays labelled c, TP@t = rays labelled c in both with |d_pred - d_gt| < t;
    IoU_c@t = TP / (gt_cnt + pred_cnt - TP). No camera mask.

    Args:
        num_classes, free_index, class_names: as for `OccupancyMIoU`.
        thresholds: depth tolerances, metres.
        lower, upper: the grid box, metres, ego frame (Occ3D defaults).
        directions: [D, 3] ray directions (default `lidar_ray_directions()`).
        max_origins, origin_xy_range: origin selection, see `select_lidar_origins`.
    """

    def __init__(self, num_classes: int = OCC3D_NUM_CLASSES, free_index: int = OCC3D_FREE,
                 thresholds: Sequence[float] = (1.0, 2.0, 4.0),
                 lower: Sequence[float] = OCC3D_LOWER, upper: Sequence[float] = OCC3D_UPPER,
                 directions: ArrayLike | None = None, max_origins: int = 8,
                 origin_xy_range: float = 39.0,
                 class_names: Sequence[str] | None = None) -> None:
        self.class_names = _check_classes(num_classes, free_index, class_names)
        self.num_classes = num_classes
        self.free_index = free_index
        if len(thresholds) == 0 or any(t <= 0 for t in thresholds):
            raise ValueError(f"thresholds must be positive metres, got {tuple(thresholds)}")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.lower = _vector3(lower, "lower", torch.device("cpu"))
        self.upper = _vector3(upper, "upper", torch.device("cpu"))
        self.directions = (lidar_ray_directions() if directions is None
                           else _rays(directions, "directions", torch.device("cpu")))
        self.max_origins = max_origins
        self.origin_xy_range = origin_xy_range
        self.reset()

    def reset(self) -> None:
        """Forget all samples seen so far."""
        k = self.num_classes
        self.gt_count = torch.zeros(k, dtype=torch.int64)
        self.pred_count = torch.zeros(k, dtype=torch.int64)
        self.tp_count = torch.zeros(len(self.thresholds), k, dtype=torch.int64)

    def _cast(self, labels: torch.Tensor, origins: torch.Tensor,
              directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(depth [R] metres, where each ray leaves its hit voxel or the grid; label [R])."""
        walk = traverse(labels != self.free_index, origins, directions, self.lower, self.upper)
        idx = walk.index.clamp_min(0)
        label = labels[idx[:, 0], idx[:, 1], idx[:, 2]]
        label = torch.where(walk.hit, label, torch.full_like(label, self.free_index))
        return walk.exit_distance, label

    def update(self, pred: ArrayLike, gt: ArrayLike, lidar_origins: ArrayLike) -> None:
        """Add one sample.

        Args:
            pred: [X, Y, Z] integer labels (one sample, not a batch).
            gt: [X, Y, Z] integer labels.
            lidar_origins: [M, 3] metres, the scene's keyframe LiDAR origins in this sample's ego
                frame.
        """
        p = _labels(pred, "pred", self.num_classes)
        g = _labels(gt, "gt", self.num_classes)
        if g.dim() != 3:
            raise ValueError(f"gt must be one sample [X, Y, Z], got shape {tuple(g.shape)}")
        _same_shape(p, "pred", g, "gt")
        p = p.to(g.device)
        origins = select_lidar_origins(lidar_origins, self.max_origins, self.origin_xy_range)
        num_dirs = self.directions.shape[0]
        o = origins.to(g.device).repeat_interleave(num_dirs, dim=0)
        d = self.directions.to(g.device).repeat(origins.shape[0], 1)

        d_gt, l_gt = self._cast(g, o, d)
        d_pred, l_pred = self._cast(p, o, d)
        keep = l_gt != self.free_index
        d_gt, l_gt, d_pred, l_pred = d_gt[keep], l_gt[keep], d_pred[keep], l_pred[keep]

        k = self.num_classes
        self.gt_count += torch.bincount(l_gt, minlength=k).cpu()
        self.pred_count += torch.bincount(l_pred, minlength=k).cpu()
        same = l_gt == l_pred
        err = (d_pred - d_gt).abs()
        for j, t in enumerate(self.thresholds):
            self.tp_count[j] += torch.bincount(l_gt[same & (err < t)], minlength=k).cpu()

    def compute(self) -> dict:
        """Returns ``{"RayIoU": percent, "RayIoU@1": ..., "RayIoU@2": ..., "RayIoU@4": ...,
        "IoU@1": {class name: percent}, ...}`` (keys follow `thresholds`, formatted with %g).

        RayIoU@t is the nan-mean over the non-free classes; RayIoU the mean over thresholds.
        """
        k, t = self.num_classes, len(self.thresholds)
        counts = torch.cat([self.gt_count, self.pred_count, self.tp_count.reshape(-1)])
        counts = _all_reduce_sum(counts)
        gt_c, pred_c, tp = counts[:k].double(), counts[k:2 * k].double(), counts[2 * k:].double()
        iou = tp.reshape(t, k) / (gt_c + pred_c - tp.reshape(t, k))
        keep = [c for c in range(k) if c != self.free_index]
        out: dict = {}
        per_threshold = []
        for j, thr in enumerate(self.thresholds):
            value = float(torch.nanmean(iou[j, keep])) * 100.0
            per_threshold.append(value)
            out[f"RayIoU@{thr:g}"] = value
            out[f"IoU@{thr:g}"] = _percent_dict(self.class_names, iou[j], skip=self.free_index)
        return {"RayIoU": sum(per_threshold) / t, **out}


# ----------------------------------------------------------------------------- depth
_DEPTH_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")


class DepthMetrics:
    """Rendered depth against LiDAR depth, pooled over every valid pixel seen.

    A pixel is valid when its target depth is finite, > 0 and within [min_depth, max_depth];
    predictions are clamped to [min_depth, max_depth] first (the usual KITTI/monodepth protocol).
    With g the target and p the prediction, over valid pixels:
    abs_rel = mean |p - g| / g, sq_rel = mean (p - g)^2 / g, rmse = sqrt(mean (p - g)^2) (metres),
    rmse_log = sqrt(mean (log p - log g)^2), delta_k = fraction with max(p/g, g/p) < 1.25^k.
    """

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 80.0) -> None:
        if not 0 < min_depth < max_depth:
            raise ValueError(
                f"need 0 < min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}")
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.reset()

    def reset(self) -> None:
        """Forget all pixels seen so far."""
        # sums of: |e|/g, e^2/g, e^2, (log p - log g)^2, delta1..3 hits, pixel count
        self.sums = torch.zeros(8, dtype=torch.float64)

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add pixels. pred, target: same shape (any), metres, floating point; target <= 0 = no
        LiDAR return."""
        p = _depths(pred, "pred")
        g = _depths(target, "target")
        if p.shape != g.shape:
            raise ValueError(
                f"pred and target must have the same number of pixels, got pred "
                f"{tuple(_as_tensor(pred, 'pred').shape)} and target "
                f"{tuple(_as_tensor(target, 'target').shape)}")
        p = p.to(g.device)
        valid = torch.isfinite(g) & (g > 0) & (g >= self.min_depth) & (g <= self.max_depth)
        p, g = p[valid], g[valid]
        if not bool(torch.isfinite(p).all()):
            raise ValueError("pred has non-finite depths at valid target pixels")
        p = p.clamp(self.min_depth, self.max_depth)
        err = p - g
        ratio = torch.maximum(p / g, g / p)
        self.sums += torch.stack([
            (err.abs() / g).sum(), (err ** 2 / g).sum(), (err ** 2).sum(),
            ((p.log() - g.log()) ** 2).sum(),
            (ratio < 1.25).sum(), (ratio < 1.25 ** 2).sum(), (ratio < 1.25 ** 3).sum(),
            torch.tensor(float(g.numel()), dtype=torch.float64, device=g.device),
        ]).cpu()

    def compute(self) -> dict[str, float]:
        """Returns {"abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3"}
        (summed over ranks when distributed); the deltas are fractions in [0, 1]. Raises
        ValueError when no valid pixel was seen."""
        return self._from_sums(_all_reduce_sum(self.sums))

    def _from_sums(self, s: torch.Tensor) -> dict[str, float]:
        n = float(s[7])
        if n == 0:
            raise ValueError(
                f"target has no valid depth (finite, > 0, within [{self.min_depth}, "
                f"{self.max_depth}] m)")
        m = (s[:7] / n).tolist()
        m[2], m[3] = math.sqrt(m[2]), math.sqrt(m[3])
        return dict(zip(_DEPTH_KEYS, m))


def depth_metrics(pred: ArrayLike, target: ArrayLike, min_depth: float = 1e-3,
                  max_depth: float = 80.0) -> dict[str, float]:
    """Depth errors of pred [N] against target [N] (metres) over valid target pixels; see
    `DepthMetrics` for the definitions. Local: never reduced across ranks."""
    m = DepthMetrics(min_depth, max_depth)
    m.update(pred, target)
    return m._from_sums(m.sums)
