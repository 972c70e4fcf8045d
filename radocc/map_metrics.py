"""Chamfer-distance AP of vectorised HD-map predictions, computed as MapTR evaluates it.

MapTR (hustvl/MapTR ``datasets/map_utils/mean_ap.py``, ``tpfp.py``, ``tpfp_chamfer.py``; the top-50
of ``core/bbox/coders/nms_free_coder.py``), step by step:

1. Per sample, the 50 highest-scoring predictions over all classes together are kept.
2. Every prediction and every ground-truth line is resampled to 100 points equally spaced by arc
   length (the ground truth from its original clipped geometry). A prediction that already has
   exactly 100 points is used as it is, as MapTR does.
3. A (prediction, ground truth) pair of the same class can match only if their 2 m buffers
   intersect; the buffers have FLAT caps (shapely ``cap_style="flat"``, mitre joins), so lines
   placed end to end do not touch. Their Chamfer distance is the mean of the two directed mean
   nearest-point distances on the 100-point lines.
4. Per sample and class, predictions in descending score each take the ground truth with the
   smallest Chamfer distance: a true positive if that distance is <= the threshold and that ground
   truth is still unclaimed, otherwise a false positive (no fall-back to the next ground truth).
5. Per class over the whole dataset: cumulative TP / FP in descending score order, recall over the
   number of ground truths, precision, VOC "area" AP under the monotone precision envelope.
6. Thresholds 0.5, 1.0, 1.5 m; mAP is the mean over classes x thresholds, a class without ground
   truth counting as AP 0. MapTR reports fractions; this module reports percent.

Ties in score are broken by input order (stable sorts), where MapTR's ``np.argsort`` leaves them
unspecified. Lines are in metres in the map frame (x lateral, y forward); any consistent metric
frame gives the same result.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import shapely
import torch
import torch.distributed as dist
from scipy.spatial.distance import cdist

__all__ = [
    "ChamferMapAP", "chamfer_matrix", "resample_polyline", "average_precision",
]

ArrayLike = Any  # numpy array, torch tensor or nested sequence


# ----------------------------------------------------------------------------- input checks
def _array(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name} could not be read as an array: {err}") from None


def _points(x: ArrayLike, name: str, shape_doc: str, ndim: int) -> np.ndarray:
    """Finite float64 coordinates with ``ndim`` dimensions, the last of size 2."""
    a = _array(x, name)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating)
                                   or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must hold real coordinates {shape_doc}, got dtype {a.dtype}")
    if a.ndim != ndim or a.shape[-1] != 2:
        raise ValueError(f"{name} must be {shape_doc} metres, got shape {a.shape}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has non-finite (NaN or inf) coordinates")
    return a


def _labels(x: ArrayLike, name: str, count: int, num_classes: int) -> np.ndarray:
    a = _array(x, name)
    if a.size == 0 and a.shape in ((0,), (count,)):
        return np.zeros(count, dtype=np.int64)  # [] reads as float64; an empty list is fine
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class labels, got dtype {a.dtype}")
    if a.shape != (count,):
        raise ValueError(f"{name} must be [{count}] (one label per line), got shape {a.shape}")
    if count and (a.min() < 0 or a.max() >= num_classes):
        raise ValueError(f"{name} has labels in [{a.min()}, {a.max()}], outside "
                         f"[0, {num_classes})")
    return a.astype(np.int64)


def _scores(x: ArrayLike, name: str, count: int) -> np.ndarray:
    a = _array(x, name)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating)
                                   or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must hold real scores, got dtype {a.dtype}")
    if a.shape != (count,):
        raise ValueError(f"{name} must be [{count}] (one score per line), got shape {a.shape}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has non-finite (NaN or inf) scores")
    return a


def _gt_lines(x: ArrayLike, name: str) -> list[np.ndarray]:
    """[M, Q, 2] or a list of M arrays [Q_i, 2] -> list of float64 [Q_i, 2], each Q_i >= 2."""
    if isinstance(x, (list, tuple)):
        lines = [_points(line, f"{name}[{i}]", "[Q, 2]", 2) for i, line in enumerate(x)]
    else:
        a = _points(x, name, "[M, Q, 2] (or a list of M arrays [Q_i, 2])", 3)
        lines = list(a)
    for i, line in enumerate(lines):
        if line.shape[0] < 2:
            raise ValueError(f"{name}[{i}] must have at least 2 points, got shape {line.shape}")
    return lines


# ----------------------------------------------------------------------------- geometry
def resample_polyline(line: ArrayLike, num_points: int = 100) -> np.ndarray:
    """``num_points`` points equally spaced by arc length along a polyline, both ends included.

    The numpy equivalent of shapely's ``LineString.interpolate`` at ``linspace(0, length, n)``
    (MapTR's resampling). A zero-length line gives ``num_points`` copies of its first point.

    Args:
        line: [Q, 2] metres, Q >= 2.
    Returns:
        [num_points, 2] float64.
    """
    pts = _points(line, "line", "[Q, 2]", 2)
    if pts.shape[0] < 2:
        raise ValueError(f"line must have at least 2 points, got shape {pts.shape}")
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points}")
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, arc[-1], num_points)
    # The segment holding each t; right-side search steps over zero-length segments.
    i = np.clip(np.searchsorted(arc, t, side="right") - 1, 0, len(seg) - 1)
    frac = np.divide(t - arc[i], seg[i], out=np.zeros_like(t), where=seg[i] > 0)
    return pts[i] + frac[:, None] * (pts[i + 1] - pts[i])


def chamfer_matrix(pred: np.ndarray, gt: np.ndarray, buffer_width: float = 2.0,
                   cap_style: str = "flat") -> np.ndarray:
    """Chamfer distances of every (prediction, ground truth) pair whose buffers intersect.

    Args:
        pred: [N, K, 2] metres (already resampled).
        gt: [M, K', 2] metres (already resampled).
        buffer_width: buffer radius, metres (MapTR: 2).
        cap_style: buffer end caps: "flat" (MapTR) or "round"/"square" (for comparison only).
    Returns:
        [N, M] float64: (mean over pred points of the nearest gt point distance + the reverse) / 2
        where the two buffers intersect, +inf elsewhere.
    """
    pred = _points(pred, "pred", "[N, K, 2]", 3)
    gt = _points(gt, "gt", "[M, K, 2]", 3)
    out = np.full((pred.shape[0], gt.shape[0]), np.inf)
    if pred.shape[0] == 0 or gt.shape[0] == 0:
        return out
    pred_zones = shapely.buffer(shapely.linestrings(pred), buffer_width, cap_style=cap_style,
                                join_style="mitre")
    gt_zones = shapely.buffer(shapely.linestrings(gt), buffer_width, cap_style=cap_style,
                              join_style="mitre")
    gi, pi = shapely.STRtree(pred_zones).query(gt_zones, predicate="intersects")
    for g, p in zip(gi.tolist(), pi.tolist()):
        d = cdist(pred[p], gt[g], "euclidean")
        out[p, g] = (d.min(axis=1).mean() + d.min(axis=0).mean()) / 2.0
    return out


def _tp_fp(cd: np.ndarray, scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """MapTR's greedy matching in one sample and class: [N] TP flags per threshold -> [N, T] bool.

    Predictions in descending score each take the gt with the smallest Chamfer distance (first
    one on ties); TP if that distance <= threshold and the gt is unclaimed, else FP.
    """
    n, m = cd.shape
    tp = np.zeros((n, len(thresholds)), dtype=bool)
    if n == 0 or m == 0:
        return tp
    best = cd.argmin(axis=1)
    best_cd = cd[np.arange(n), best]
    order = np.argsort(-scores, kind="stable")
    for j, thr in enumerate(thresholds):
        claimed = np.zeros(m, dtype=bool)
        for i in order:
            if best_cd[i] <= thr and not claimed[best[i]]:
                claimed[best[i]] = True
                tp[i, j] = True
    return tp


def average_precision(recalls: np.ndarray, precisions: np.ndarray) -> float:
    """VOC "area" AP (mmdet's ``average_precision(mode="area")``): the area under the
    precision-recall curve after making precision monotone non-increasing in recall.

    Args:
        recalls, precisions: [D] in detection order (cumulative), fractions.
    Returns:
        AP as a fraction in [0, 1]; 0 for no detections.
    """
    mrec = np.concatenate([[0.0], recalls, [1.0]])
    mpre = np.concatenate([[0.0], precisions, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


# ----------------------------------------------------------------------------- the metric
class ChamferMapAP:
    """Chamfer-distance AP of vector-map predictions (MapTR's protocol, see the module docstring).

    Args:
        class_names: names in label order (MapTR: divider, ped_crossing, boundary).
        thresholds: Chamfer distance thresholds, metres.
        max_predictions: predictions kept per sample, over all classes (MapTR: 50).
        num_samples: points per line after arc-length resampling (MapTR: 100).
        buffer_width: radius of the flat-capped buffers that must intersect, metres (MapTR: 2).
    """

    def __init__(self, class_names: Sequence[str] = ("divider", "ped_crossing", "boundary"),
                 thresholds: Sequence[float] = (0.5, 1.0, 1.5), max_predictions: int = 50,
                 num_samples: int = 100, buffer_width: float = 2.0) -> None:
        if isinstance(class_names, str) or len(class_names) == 0:
            raise ValueError(f"class_names must be a non-empty sequence of names, "
                             f"got {class_names!r}")
        if len(thresholds) == 0 or any(not (math.isfinite(t) and t > 0) for t in thresholds):
            raise ValueError(f"thresholds must be positive metres, got {tuple(thresholds)}")
        if max_predictions < 1:
            raise ValueError(f"max_predictions must be >= 1, got {max_predictions}")
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {num_samples}")
        if not (math.isfinite(buffer_width) and buffer_width > 0):
            raise ValueError(f"buffer_width must be positive metres, got {buffer_width}")
        self.class_names = tuple(class_names)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.max_predictions = int(max_predictions)
        self.num_samples = int(num_samples)
        self.buffer_width = float(buffer_width)
        self.reset()

    def reset(self) -> None:
        """Forget all samples seen so far."""
        k = len(self.class_names)
        self.num_gts = [0] * k
        # Per class: one entry per updated sample, [n] scores and [n, T] TP flags.
        self.scores: list[list[np.ndarray]] = [[] for _ in range(k)]
        self.tps: list[list[np.ndarray]] = [[] for _ in range(k)]

    def _resample(self, line: np.ndarray, keep_if_sized: bool) -> np.ndarray:
        if keep_if_sized and line.shape[0] == self.num_samples:
            return line  # MapTR uses predictions that already have 100 points as they are
        return resample_polyline(line, self.num_samples)

    def update(self, pred_lines: ArrayLike, pred_scores: ArrayLike, pred_labels: ArrayLike,
               gt_lines: ArrayLike, gt_labels: ArrayLike) -> None:
        """Add one sample.

        Args:
            pred_lines: [N, P, 2] metres, P >= 2 (e.g. from ``MapModel.decode``, MapTR's top 50).
            pred_scores: [N] confidences (any real numbers; only their order matters).
            pred_labels: [N] integer classes in [0, len(class_names)).
            gt_lines: [M, Q, 2] metres, or a list of M arrays [Q_i, 2] (the original clipped
                geometry, Q_i >= 2).
            gt_labels: [M] integer classes.
        """
        k = len(self.class_names)
        pred = _points(pred_lines, "pred_lines", "[N, P, 2]", 3)
        if pred.shape[0] and pred.shape[1] < 2:
            raise ValueError(f"pred_lines must have P >= 2 points per line, got shape "
                             f"{pred.shape}")
        n = pred.shape[0]
        scores = _scores(pred_scores, "pred_scores", n)
        labels = _labels(pred_labels, "pred_labels", n, k)
        gts = _gt_lines(gt_lines, "gt_lines")
        g_labels = _labels(gt_labels, "gt_labels", len(gts), k)

        keep = np.argsort(-scores, kind="stable")[:self.max_predictions]
        pred, scores, labels = pred[keep], scores[keep], labels[keep]

        for c in range(k):
            p_idx = np.nonzero(labels == c)[0]
            g_idx = np.nonzero(g_labels == c)[0]
            self.num_gts[c] += len(g_idx)
            if len(p_idx) == 0:
                continue
            p = np.stack([self._resample(pred[i], True) for i in p_idx])
            g = (np.stack([self._resample(gts[i], False) for i in g_idx]) if len(g_idx)
                 else np.zeros((0, self.num_samples, 2)))
            cd = chamfer_matrix(p, g, self.buffer_width, "flat")
            self.scores[c].append(scores[p_idx])
            self.tps[c].append(_tp_fp(cd, scores[p_idx], self.thresholds))

    def _local_state(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        t = len(self.thresholds)
        state = []
        for c in range(len(self.class_names)):
            s = (np.concatenate(self.scores[c]) if self.scores[c] else np.zeros(0))
            tp = (np.concatenate(self.tps[c]) if self.tps[c] else np.zeros((0, t), dtype=bool))
            state.append((self.num_gts[c], s, tp))
        return state

    def compute(self) -> dict:
        """Returns ``{"mAP": percent, "AP": {class name: {threshold: percent}}}``.

        When torch.distributed is initialised, the per-class (score, TP) lists and ground-truth
        counts of all ranks are gathered first (a collective: every rank must call it), so every
        rank returns the AP of the whole dataset.
        """
        states = [self._local_state()]
        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states[0])
            states = gathered
        ap = np.zeros((len(self.class_names), len(self.thresholds)))
        for c in range(len(self.class_names)):
            num_gts = sum(s[c][0] for s in states)
            scores = np.concatenate([s[c][1] for s in states])
            tp = np.concatenate([s[c][2] for s in states]).astype(np.float64)
            if num_gts == 0 or len(scores) == 0:
                continue  # no ground truth (or no prediction): AP 0, still in the mean
            order = np.argsort(-scores, kind="stable")
            tp_cum = np.cumsum(tp[order], axis=0)
            fp_cum = np.cumsum(1.0 - tp[order], axis=0)
            recalls = tp_cum / num_gts
            precisions = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float32).eps)
            for j in range(len(self.thresholds)):
                ap[c, j] = average_precision(recalls[:, j], precisions[:, j])
        return {
            "mAP": float(ap.mean()) * 100.0,
            "AP": {name: {thr: float(ap[c, j]) * 100.0 for j, thr in enumerate(self.thresholds)}
                   for c, name in enumerate(self.class_names)},
        }
