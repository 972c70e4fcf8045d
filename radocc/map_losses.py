"""Losses of the vector-map branch: MapTR's matching and head losses, MapDistill's distillation.

- `hungarian_match`: MapTR's one-to-one assignment of predictions to ground-truth instances
  (scipy ``linear_sum_assignment`` over the focal class cost + the ordered point L1 cost, the
  minimum over each instance's equivalent orderings).
- `maptr_loss`: MapTR's head losses on every decoder layer (each matched separately): focal
  classification, point L1 against the matched ordering, edge-direction cosine.
- `relation_distillation_loss`: MapDistill's cross-modal relation distillation (C2L / L2C
  attention over BEV patches, KL teacher -> student).
- `feature_distillation_loss`: MSE between student and teacher features (MapDistill's two levels:
  the fused BEV and the map-decoder query features).
- `head_distillation_loss`: score-filtered teacher predictions as pseudo labels, Hungarian-matched
  to the student: focal classification + Manhattan (L1) point loss.

Conventions (shared with the map head and the vector ground truth): points are [..., P, 2] with
(x lateral, y forward); "normalised" means x_n = (x - x_min) / (x_max - x_min), y_n likewise, over
``pc_range = (x_min, y_min, x_max, y_max)`` (default (-15, -30, 15, 30) metres). Class logits are
sigmoid logits, one per class (0 divider, 1 ped_crossing, 2 boundary).

Every loss is computed in float32 (float64 inputs stay float64) with autocast disabled; teacher
inputs are detached. Matching runs without gradient on the CPU (scipy).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from radocc.losses import _acc, _autocast_off

__all__ = [
    "MAP_LOSS_WEIGHTS", "MAP_PC_RANGE", "FOCAL_ALPHA", "FOCAL_GAMMA", "HEAD_SCORE_THRESHOLD",
    "MapTarget", "Match", "normalize_points", "denormalize_points", "focal_cost",
    "hungarian_match", "maptr_loss", "relation_matrices", "relation_distillation_loss",
    "feature_distillation_loss", "head_distillation_loss",
]

MAP_PC_RANGE: tuple[float, float, float, float] = (-15.0, -30.0, 15.0, 30.0)
FOCAL_ALPHA = 0.25  # MapTR's FocalLoss / FocalLossCost
FOCAL_GAMMA = 2.0
# Not in the released MapDistill code (its head distillation uses every query); MapTR's
# prediction pictures (tools/maptr/vis_pred.py) draw predictions scoring above 0.4.
HEAD_SCORE_THRESHOLD = 0.4

# Default weights of the MapDistill terms in the student's total loss
# L = L_map + w_rel L_rel + w_feat L_feat + w_head L_head, as in the released code
# (Ricky-Developer/MapDistill, projects/configs/maptr/mapdistill.py). The map head's own weights
# (focal 2, points 5, direction 0.005) are `maptr_loss`'s defaults.
MAP_LOSS_WEIGHTS: dict[str, float] = {
    # Cross-modal relation distillation: loss_relation, weight 1.0.
    "relation": 1.0,
    # Feature distillation on the fused BEV: loss_low_level_bev (L2), weight 1.0.
    "feature_bev": 1.0,
    # Feature distillation on the map decoder's query features: loss_high_level_bev (L2), 1.0.
    "feature_decoder": 1.0,
    # Map-head distillation, classification: loss_out_class, weight 0.1.
    "head_cls": 0.1,
    # Map-head distillation, Manhattan point loss: loss_out_pts (PtsL1Loss), weight 0.1.
    "head_pts": 0.1,
}


class MapTarget(NamedTuple):
    """The ground truth of one sample (the dataset's ``map_labels``, ``map_orderings``,
    ``map_ordering_valid``).

    labels: [M] int64 classes. orderings: [M, S, P, 2] metres, map frame, every equivalent
    ordering of each instance (padded). ordering_valid: [M, S] bool, which orderings are real.
    """

    labels: Tensor
    orderings: Tensor
    ordering_valid: Tensor


class Match(NamedTuple):
    """A one-to-one assignment: prediction ``pred_idx[k]`` <-> ground truth ``gt_idx[k]`` in its
    ordering ``ordering_idx[k]``; all [K] int64, K = min(N, M), sorted by ``pred_idx``."""

    pred_idx: Tensor
    gt_idx: Tensor
    ordering_idx: Tensor


# ----------------------------------------------------------------------------- input checks
def _float(x: object, name: str, ndim: int, shape: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor {shape}, got dtype {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {shape}, got shape {tuple(x.shape)}")
    return x


def _check_dims(x: Tensor, name: str, shape: str, expected: dict[int, int]) -> None:
    """Check sizes: ``expected`` maps a dimension index to its required size."""
    for dim, size in expected.items():
        if x.shape[dim] != size:
            raise ValueError(f"{name} must be {shape}, got shape {tuple(x.shape)} "
                             f"(dimension {dim} should be {size})")


def _labels(x: object, name: str, count: int, num_classes: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be an int64 torch.Tensor [M], got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name} must be an integer (int64) tensor [M], got dtype {x.dtype}")
    if x.dim() != 1 or (count >= 0 and x.shape[0] != count):
        raise ValueError(f"{name} must be [M]{f' = [{count}]' if count >= 0 else ''}, "
                         f"got shape {tuple(x.shape)}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_classes):
        raise ValueError(f"{name} has labels in [{int(x.min())}, {int(x.max())}], outside "
                         f"[0, {num_classes}) (C = cls_logits.shape[-1])")
    return x.long()


def _same_device(*named: tuple[Tensor, str]) -> None:
    for t, n in named[1:]:
        if t.device != named[0][0].device:
            raise ValueError(f"{n} is on {t.device} but {named[0][1]} is on {named[0][0].device}")


def _pc_range(pc_range: Sequence[float]) -> tuple[float, float, float, float]:
    if (isinstance(pc_range, (str, bytes)) or not isinstance(pc_range, Sequence)
            or len(pc_range) != 4):
        raise ValueError(f"pc_range must be (x_min, y_min, x_max, y_max) metres, got {pc_range!r}")
    x_min, y_min, x_max, y_max = (float(v) for v in pc_range)
    if not (x_min < x_max and y_min < y_max):
        raise ValueError(f"pc_range must have x_min < x_max and y_min < y_max, got {pc_range!r}")
    return x_min, y_min, x_max, y_max


def _weight(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def normalize_points(points: Tensor, pc_range: Sequence[float] = MAP_PC_RANGE) -> Tensor:
    """Metres -> normalised [0, 1] coordinates: [..., 2] (x, y) -> [..., 2]."""
    x_min, y_min, x_max, y_max = _pc_range(pc_range)
    lo = points.new_tensor([x_min, y_min])
    return (points - lo) / points.new_tensor([x_max - x_min, y_max - y_min])


def denormalize_points(points: Tensor, pc_range: Sequence[float] = MAP_PC_RANGE) -> Tensor:
    """Normalised [0, 1] coordinates -> metres: [..., 2] (x, y) -> [..., 2]."""
    x_min, y_min, x_max, y_max = _pc_range(pc_range)
    size = points.new_tensor([x_max - x_min, y_max - y_min])
    return points * size + points.new_tensor([x_min, y_min])


def focal_cost(cls_logits: Tensor, gt_labels: Tensor, alpha: float = FOCAL_ALPHA,
               gamma: float = FOCAL_GAMMA, eps: float = 1e-12) -> Tensor:
    """DETR / mmdet ``FocalLossCost``: [N, C] logits, [M] labels -> [N, M] (unweighted).

    With p = sigmoid(logit of the gt class): alpha (1 - p)^gamma (-log p) minus
    (1 - alpha) p^gamma (-log(1 - p)), i.e. the focal loss of calling it positive minus that of
    calling it negative.
    """
    p = cls_logits.sigmoid()
    neg = -(1 - p + eps).log() * (1 - alpha) * p.pow(gamma)
    pos = -(p + eps).log() * alpha * (1 - p).pow(gamma)
    return pos[:, gt_labels] - neg[:, gt_labels]


# ----------------------------------------------------------------------------- matching
def hungarian_match(cls_logits: Tensor, pred_points: Tensor, gt_labels: Tensor,
                    gt_orderings: Tensor, gt_ordering_valid: Tensor, cls_weight: float = 2.0,
                    pts_weight: float = 5.0) -> Match:
    """MapTR's assignment of N predictions to M ground-truth instances (one sample).

    cost[n, m] = cls_weight * focal_cost[n, m]
                 + pts_weight * min over valid orderings s of sum_{p, xy} |pred[n] - gt[m, s]|
    (MapTR's ``OrderedPtsL1Cost``: the L1 distance of the flattened P x 2 coordinates, i.e. a
    sum over points, not a mean), minimised by ``scipy.optimize.linear_sum_assignment``.

    Args:
        cls_logits: [N, C] sigmoid logits.
        pred_points: [N, P, 2] normalised.
        gt_labels: [M] int64 in [0, C).
        gt_orderings: [M, S, P, 2] normalised, every equivalent ordering of each instance.
        gt_ordering_valid: [M, S] bool; every instance needs at least one valid ordering.
        cls_weight, pts_weight: cost weights (MapTR: 2 and 5).
    Returns:
        `Match` (pred_idx, gt_idx, ordering_idx), [K] int64 each on cls_logits' device,
        K = min(N, M); empty when M = 0 or N = 0.
    """
    cls_logits = _float(cls_logits, "cls_logits", 2, "[N, C]")
    n, c = cls_logits.shape
    pred_points = _float(pred_points, "pred_points", 3, "[N, P, 2]")
    _check_dims(pred_points, "pred_points", "[N, P, 2]", {0: n, 2: 2})
    p = pred_points.shape[1]
    gt_orderings = _float(gt_orderings, "gt_orderings", 4, "[M, S, P, 2]")
    m, s = gt_orderings.shape[:2]
    _check_dims(gt_orderings, "gt_orderings", "[M, S, P, 2] (P as pred_points)", {2: p, 3: 2})
    gt_labels = _labels(gt_labels, "gt_labels", m, c)
    if not isinstance(gt_ordering_valid, Tensor) or gt_ordering_valid.dtype != torch.bool:
        raise TypeError(f"gt_ordering_valid must be a bool tensor [M, S], got "
                        f"{getattr(gt_ordering_valid, 'dtype', type(gt_ordering_valid).__name__)}")
    if tuple(gt_ordering_valid.shape) != (m, s):
        raise ValueError(f"gt_ordering_valid must be [M, S] = [{m}, {s}], got shape "
                         f"{tuple(gt_ordering_valid.shape)}")
    _same_device((cls_logits, "cls_logits"), (pred_points, "pred_points"),
                 (gt_labels, "gt_labels"), (gt_orderings, "gt_orderings"),
                 (gt_ordering_valid, "gt_ordering_valid"))
    cls_weight, pts_weight = _weight(cls_weight, "cls_weight"), _weight(pts_weight, "pts_weight")
    device = cls_logits.device
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if m == 0 or n == 0:
        return Match(empty, empty, empty.clone())
    if not bool(gt_ordering_valid.any(dim=1).all()):
        bad = int((~gt_ordering_valid.any(dim=1)).nonzero()[0, 0])
        raise ValueError(f"gt_ordering_valid: instance {bad} has no valid ordering")

    with torch.no_grad(), _autocast_off():
        logits = _acc(cls_logits.detach())
        pts = _acc(pred_points.detach()).reshape(n, p * 2)
        gts = gt_orderings.detach().to(pts.dtype).reshape(m * s, p * 2)
        pts_cost = torch.cdist(pts, gts, p=1).reshape(n, m, s)
        pts_cost = pts_cost.masked_fill(~gt_ordering_valid[None], math.inf)
        pts_cost, order = pts_cost.min(dim=2)
        cost = cls_weight * focal_cost(logits, gt_labels) + pts_weight * pts_cost
        cost_cpu = cost.cpu().double()
    if not bool(torch.isfinite(cost_cpu).all()):
        for t, name in ((cls_logits, "cls_logits"), (pred_points, "pred_points"),
                        (gt_orderings, "gt_orderings")):
            if not bool(torch.isfinite(t.detach()).all()):
                raise ValueError(f"{name} has non-finite (NaN or inf) values")
        raise ValueError("matching cost is not finite (are cls_weight and pts_weight finite?)")
    rows, cols = linear_sum_assignment(cost_cpu.numpy())
    pred_idx = torch.as_tensor(rows, dtype=torch.long, device=device)
    gt_idx = torch.as_tensor(cols, dtype=torch.long, device=device)
    return Match(pred_idx, gt_idx, order[pred_idx, gt_idx].long())


# ----------------------------------------------------------------------------- MapTR losses
def _target(t: object, b: int) -> MapTarget:
    if isinstance(t, Mapping):
        try:
            return MapTarget(t["map_labels"], t["map_orderings"], t["map_ordering_valid"])
        except KeyError as err:
            raise ValueError(f"targets[{b}] is a mapping without {err.args[0]!r} (expected "
                             f"map_labels, map_orderings, map_ordering_valid)") from None
    if isinstance(t, tuple) and len(t) == 3:
        return MapTarget(*t)
    raise TypeError(f"targets[{b}] must be a MapTarget (labels, orderings, ordering_valid) or a "
                    f"mapping with map_labels / map_orderings / map_ordering_valid, "
                    f"got {type(t).__name__}")


def _pts_l1_and_direction(pred: Tensor, target_m: Tensor,
                          pc_range: tuple[float, float, float, float]) -> tuple[Tensor, Tensor]:
    """Summed point L1 (normalised) and summed edge-direction 1 - cos (metres) of K matched
    instances: pred [K, P, 2] normalised, target_m [K, P, 2] metres."""
    l1 = (pred - normalize_points(target_m, pc_range)).abs().sum()
    pred_m = denormalize_points(pred, pc_range)
    pred_dir = (pred_m[:, 1:] - pred_m[:, :-1]).reshape(-1, 2)
    gt_dir = (target_m[:, 1:] - target_m[:, :-1]).reshape(-1, 2)
    ones = pred_dir.new_ones(pred_dir.shape[0])
    direction = F.cosine_embedding_loss(pred_dir, gt_dir, ones, reduction="sum")
    return l1, direction


def maptr_loss(cls_logits: Tensor, points: Tensor, targets: Sequence[MapTarget | Mapping],
               cls_weight: float = 2.0, pts_weight: float = 5.0, dir_weight: float = 0.005,
               pc_range: Sequence[float] = MAP_PC_RANGE, match_cls_weight: float = 2.0,
               match_pts_weight: float = 5.0) -> dict[str, Tensor]:
    """MapTR's head losses, summed over decoder layers (each layer matched separately).

    Per layer, with N_pos = the number of matched pairs over the batch (at least 1):
    - focal: ``torchvision.ops.sigmoid_focal_loss`` (alpha 0.25, gamma 2) summed over every
      query and class, target one-hot for matched queries and all-zero (background) otherwise,
      / N_pos;
    - points: sum over matched queries, points and x/y of |pred - gt| (normalised, against the
      matched ordering), / N_pos;
    - direction: sum over matched queries and edges of 1 - cos(pred edge, gt edge), both in
      metres (the prediction denormalised), / N_pos.
    N_pos is counted on this process (MapTR averages it over GPUs).

    Args:
        cls_logits: [L, B, N, C] sigmoid logits, one set per decoder layer.
        points: [L, B, N, P, 2] normalised points.
        targets: B ground truths, each a `MapTarget` (labels [M], orderings [M, S, P, 2] metres,
            ordering_valid [M, S] bool) or a mapping with the dataset's keys map_labels,
            map_orderings, map_ordering_valid.
        cls_weight, pts_weight, dir_weight: loss weights (MapTR: 2, 5, 0.005).
        pc_range: (x_min, y_min, x_max, y_max) metres of the normalisation.
        match_cls_weight, match_pts_weight: the matching cost weights (MapTR: 2, 5).
    Returns:
        {"map_cls", "map_pts", "map_dir"}: scalars, weighted and summed over layers; add them for
        the head's loss.
    """
    cls_logits = _float(cls_logits, "cls_logits", 4, "[L, B, N, C]")
    num_layers, batch, n, c = cls_logits.shape
    points = _float(points, "points", 5, "[L, B, N, P, 2]")
    _check_dims(points, "points", "[L, B, N, P, 2]", {0: num_layers, 1: batch, 2: n, 4: 2})
    _same_device((cls_logits, "cls_logits"), (points, "points"))
    p = points.shape[3]
    box = _pc_range(pc_range)
    weights = [_weight(w, name) for w, name in ((cls_weight, "cls_weight"),
                                                (pts_weight, "pts_weight"),
                                                (dir_weight, "dir_weight"))]
    if isinstance(targets, (Mapping, Tensor)) or len(targets) != batch:
        raise ValueError(f"targets must be a sequence of B = {batch} per-sample ground truths, "
                         f"got {type(targets).__name__} of length "
                         f"{len(targets) if hasattr(targets, '__len__') else '?'}")
    dtype = torch.float64 if points.dtype == torch.float64 else torch.float32
    gts = []  # per sample: labels [M], orderings metres and normalised [M, S, P, 2], valid [M, S]
    for b, t in enumerate(targets):
        t = _target(t, b)
        orderings = _float(t.orderings, f"targets[{b}].orderings", 4, "[M, S, P, 2]")
        _check_dims(orderings, f"targets[{b}].orderings", "[M, S, P, 2] (P as points)",
                    {2: p, 3: 2})
        if not bool(torch.isfinite(orderings).all()):
            raise ValueError(f"targets[{b}].orderings has non-finite (NaN or inf) values")
        labels = _labels(t.labels, f"targets[{b}].labels", orderings.shape[0], c)
        valid = t.ordering_valid
        if not isinstance(valid, Tensor) or valid.dtype != torch.bool:
            raise TypeError(f"targets[{b}].ordering_valid must be a bool tensor [M, S], got "
                            f"{getattr(valid, 'dtype', type(valid).__name__)}")
        if valid.shape != orderings.shape[:2]:
            raise ValueError(f"targets[{b}].ordering_valid must be [M, S] = "
                             f"{list(orderings.shape[:2])}, got shape {tuple(valid.shape)}")
        if not bool(valid.any(dim=1).all()):
            raise ValueError(f"targets[{b}].ordering_valid: instance "
                             f"{int((~valid.any(dim=1)).nonzero()[0, 0])} has no valid ordering")
        orderings = orderings.to(points.device, dtype)
        gts.append((labels.to(points.device), orderings, normalize_points(orderings, box),
                    valid.to(points.device)))

    out = {"map_cls": None, "map_pts": None, "map_dir": None}
    with _autocast_off():
        for layer in range(num_layers):
            logits = _acc(cls_logits[layer])
            pts = _acc(points[layer])
            onehot = torch.zeros_like(logits)
            batch_idx, pred_idx, targets_m = [], [], []
            for b, (labels, orderings, orderings_n, valid) in enumerate(gts):
                match = hungarian_match(logits[b], pts[b], labels, orderings_n, valid,
                                        match_cls_weight, match_pts_weight)
                onehot[b, match.pred_idx, labels[match.gt_idx]] = 1.0
                batch_idx.append(torch.full_like(match.pred_idx, b))
                pred_idx.append(match.pred_idx)
                targets_m.append(orderings[match.gt_idx, match.ordering_idx])
            bi, qi = torch.cat(batch_idx), torch.cat(pred_idx)
            num_pos = max(int(bi.numel()), 1)
            focal = sigmoid_focal_loss(logits, onehot, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA,
                                       reduction="sum") / num_pos
            l1, direction = _pts_l1_and_direction(pts[bi, qi], torch.cat(targets_m), box)
            terms = (weights[0] * focal, weights[1] * l1 / num_pos,
                     weights[2] * direction / num_pos)
            for key, value in zip(out, terms):
                out[key] = value if out[key] is None else out[key] + value
    return out


# ----------------------------------------------------------------------------- MapDistill
def _patch_size(patch_size: int | Sequence[int], h: int, w: int) -> tuple[int, int]:
    if isinstance(patch_size, int) and not isinstance(patch_size, bool):
        ph = pw = patch_size
    elif (isinstance(patch_size, Sequence) and len(patch_size) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in patch_size)):
        ph, pw = patch_size
    else:
        raise TypeError(f"patch_size must be an int or (rows, cols), got {patch_size!r}")
    if ph < 1 or pw < 1 or h % ph or w % pw:
        raise ValueError(f"patch_size {patch_size!r} must be >= 1 and divide the BEV "
                         f"[H, W] = [{h}, {w}]")
    return ph, pw


def _patch_tokens(bev: Tensor, ph: int, pw: int, tokens: str) -> Tensor:
    """[B, C, H, W] -> [B, N, D] patch tokens, N = (H / ph) (W / pw), row-major over patches."""
    if tokens == "mean":
        pooled = F.avg_pool2d(bev, (ph, pw), stride=(ph, pw))  # [B, C, H/ph, W/pw]
        return pooled.flatten(2).transpose(1, 2)
    if tokens == "flatten":
        return F.unfold(bev, (ph, pw), stride=(ph, pw)).transpose(1, 2)  # [B, N, C ph pw]
    raise ValueError(f"tokens must be 'mean' or 'flatten', got {tokens!r}")


def _relation_logits(a: Tensor, b: Tensor, ph: int, pw: int,
                     tokens: str) -> tuple[Tensor, Tensor]:
    """Scaled dot products P_a P_b^T / sqrt(d) and their transpose: [B, N, N] each."""
    pa, pb = _patch_tokens(a, ph, pw, tokens), _patch_tokens(b, ph, pw, tokens)
    scores = pa @ pb.transpose(1, 2) / math.sqrt(pa.shape[-1])
    return scores, scores.transpose(1, 2)


def _check_pair(a: object, a_name: str, b: object, b_name: str) -> tuple[Tensor, Tensor]:
    a = _float(a, a_name, 4, "[B, C, H, W]")
    b = _float(b, b_name, 4, "[B, C, H, W]")
    if a.shape != b.shape:
        raise ValueError(f"{a_name} and {b_name} must have the same shape [B, C, H, W], got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def relation_matrices(bev_a: Tensor, bev_b: Tensor, patch_size: int | Sequence[int],
                      tokens: str = "mean") -> tuple[Tensor, Tensor]:
    """MapDistill's cross-modal attention matrices of one BEV pair.

    A_ab = softmax(P_a P_b^T / sqrt(d)) and A_ba = softmax(P_b P_a^T / sqrt(d)), rows summing to
    1, where P are the patch tokens of each BEV (see `relation_distillation_loss`).

    Args:
        bev_a, bev_b: [B, C, H, W], same shape (a: the camera role, b: the LiDAR role).
        patch_size: int or (rows, cols), dividing H and W.
        tokens: "mean" (each patch averaged to a C-dim token) or "flatten" (C ph pw dims).
    Returns:
        (A_ab, A_ba): [B, N, N] each, N = (H / ph) (W / pw) patches in row-major order.
    """
    bev_a, bev_b = _check_pair(bev_a, "bev_a", bev_b, "bev_b")
    ph, pw = _patch_size(patch_size, *bev_a.shape[2:])
    with _autocast_off():
        ab, ba = _relation_logits(_acc(bev_a), _acc(bev_b), ph, pw, tokens)
        return ab.softmax(-1), ba.softmax(-1)


def relation_distillation_loss(student_a: Tensor, student_b: Tensor, teacher_a: Tensor,
                               teacher_b: Tensor, patch_size: int | Sequence[int],
                               tokens: str = "mean") -> Tensor:
    """MapDistill's cross-modal relation distillation.

    Both BEV pairs are split into patches; each patch becomes a token (``tokens="mean"``: its
    features averaged, a C-dim token; ``"flatten"``: its C x ph x pw features). Per pair,
    A_ab = softmax(P_a P_b^T / sqrt(d)) (C2L: each camera patch's attention over the LiDAR
    patches) and A_ba likewise (L2C). The loss is KL(teacher || student) of each row, averaged
    over rows and batch, summed over the two directions:
    mean_rows KL(A_ab^T || A_ab^S) + mean_rows KL(A_ba^T || A_ba^S).

    The default pools patches to tokens: the attention then compares the layout of the scene at
    patch scale, d = C keeps the 1 / sqrt(d) temperature independent of the patch size (with
    flattened 8 x 8 patches of 256 channels, d = 16384 and the softmax is nearly one-hot), and it
    costs N x C instead of N x C ph pw. The relation matrices are N x N, so the student and the
    teacher may have different channel counts.

    Args:
        student_a, student_b: [B, C_s, H, W] the student's BEVs in the camera and LiDAR roles
            (MapDistill: the GKT BEV and the LSS BEV).
        teacher_a, teacher_b: [B, C_t, H, W] the teacher's camera BEV and LiDAR BEV; detached.
        patch_size: int or (rows, cols), dividing H and W (at 80 x 40, e.g. 8 -> 50 patches).
        tokens: "mean" or "flatten".
    Returns:
        Scalar loss, 0 when the student's relations equal the teacher's.
    """
    student_a, student_b = _check_pair(student_a, "student_a", student_b, "student_b")
    teacher_a, teacher_b = _check_pair(teacher_a, "teacher_a", teacher_b, "teacher_b")
    if (student_a.shape[0], *student_a.shape[2:]) != (teacher_a.shape[0], *teacher_a.shape[2:]):
        raise ValueError(f"student and teacher BEVs must share B, H and W, got student "
                         f"{tuple(student_a.shape)} and teacher {tuple(teacher_a.shape)}")
    _same_device((student_a, "student_a"), (student_b, "student_b"), (teacher_a, "teacher_a"),
                 (teacher_b, "teacher_b"))
    ph, pw = _patch_size(patch_size, *student_a.shape[2:])
    with _autocast_off():
        s_ab, s_ba = _relation_logits(_acc(student_a), _acc(student_b), ph, pw, tokens)
        with torch.no_grad():
            dtype = s_ab.dtype
            t_ab, t_ba = _relation_logits(teacher_a.detach().to(dtype),
                                          teacher_b.detach().to(dtype), ph, pw, tokens)
        loss = s_ab.new_zeros(())
        for s, t in ((s_ab, t_ab), (s_ba, t_ba)):
            t_log = t.log_softmax(-1)
            kl = (t_log.exp() * (t_log - s.log_softmax(-1))).sum(-1)  # [B, N]
            loss = loss + kl.mean()
        return loss


def feature_distillation_loss(student: Tensor, teacher: Tensor,
                              adapter: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """MSE between student and teacher features (MapDistill's L2 on the fused BEV and on the
    map-decoder query features): the mean over every element of (adapter(student) - teacher)^2.

    Args:
        student: [B, C_s, H, W] BEV (or any shape, e.g. [B, N, P, C] decoder features).
        teacher: the teacher's features, the shape of adapter(student); detached.
        adapter: optional module applied to the student first (e.g. a 1x1 conv when C_s != C_t).
    Returns:
        Scalar loss.
    """
    if not isinstance(student, Tensor) or not student.is_floating_point():
        raise TypeError(f"student must be a floating-point torch.Tensor, got "
                        f"{getattr(student, 'dtype', type(student).__name__)}")
    if not isinstance(teacher, Tensor) or not teacher.is_floating_point():
        raise TypeError(f"teacher must be a floating-point torch.Tensor, got "
                        f"{getattr(teacher, 'dtype', type(teacher).__name__)}")
    if adapter is not None:
        student = adapter(student)
    if student.shape != teacher.shape:
        what = "adapter(student)" if adapter is not None else "student"
        hint = "" if adapter is not None else " (pass an adapter, e.g. a 1x1 conv, when " \
                                               "the channels differ)"
        raise ValueError(f"{what} and teacher must have the same shape, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}{hint}")
    _same_device((student, "student"), (teacher, "teacher"))
    with _autocast_off():
        s = _acc(student)
        return F.mse_loss(s, teacher.detach().to(s.dtype))


def head_distillation_loss(student_cls: Tensor, student_points: Tensor, teacher_cls: Tensor,
                           teacher_points: Tensor,
                           score_threshold: float = HEAD_SCORE_THRESHOLD,
                           match_cls_weight: float = 2.0,
                           match_pts_weight: float = 5.0) -> dict[str, Tensor]:
    """MapDistill's map-head distillation with the teacher's predictions as pseudo labels.

    Per sample, each teacher query whose best class scores sigmoid > ``score_threshold`` becomes
    a pseudo label (that class, the teacher's points in their own order: one ordering). The
    student's queries are Hungarian-matched to them (`hungarian_match`: focal + ordered point L1
    cost). With K = the number of pseudo labels over the batch (at least 1):
    - "head_cls": ``sigmoid_focal_loss`` (alpha 0.25, gamma 2) over every student query and
      class, target one-hot of the matched pseudo class (all-zero for unmatched queries), / K;
    - "head_pts": Manhattan distance sum |student - teacher| over the matched queries' points
      and x/y (normalised), / K.

    Args:
        student_cls: [B, N, C] sigmoid logits (one decoder layer, usually the last).
        student_points: [B, N, P, 2] normalised.
        teacher_cls: [B, N_t, C] the teacher's logits; detached.
        teacher_points: [B, N_t, P, 2] normalised; detached.
        score_threshold: sigmoid score a teacher prediction needs to become a pseudo label.
        match_cls_weight, match_pts_weight: matching cost weights (MapTR: 2, 5).
    Returns:
        {"head_cls", "head_pts"}: unweighted scalars (weights: `MAP_LOSS_WEIGHTS`).
    """
    student_cls = _float(student_cls, "student_cls", 3, "[B, N, C]")
    batch, n, c = student_cls.shape
    student_points = _float(student_points, "student_points", 4, "[B, N, P, 2]")
    _check_dims(student_points, "student_points", "[B, N, P, 2]", {0: batch, 1: n, 3: 2})
    p = student_points.shape[2]
    teacher_cls = _float(teacher_cls, "teacher_cls", 3, "[B, N_t, C]")
    _check_dims(teacher_cls, "teacher_cls", "[B, N_t, C] (B, C as student_cls)",
                {0: batch, 2: c})
    teacher_points = _float(teacher_points, "teacher_points", 4, "[B, N_t, P, 2]")
    _check_dims(teacher_points, "teacher_points", "[B, N_t, P, 2] (as teacher_cls, P as "
                "student_points)", {0: batch, 1: teacher_cls.shape[1], 2: p, 3: 2})
    _same_device((student_cls, "student_cls"), (student_points, "student_points"),
                 (teacher_cls, "teacher_cls"), (teacher_points, "teacher_points"))
    if (isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float))
            or not 0 <= score_threshold < 1):
        raise ValueError(f"score_threshold must be a number in [0, 1), got {score_threshold!r}")
    with _autocast_off():
        logits = _acc(student_cls)
        pts = _acc(student_points)
        t_scores, t_labels = teacher_cls.detach().to(logits.dtype).sigmoid().max(dim=-1)
        t_points = teacher_points.detach().to(pts.dtype)
        onehot = torch.zeros_like(logits)
        matched_pred, matched_target = [], []
        num_pseudo = 0
        for b in range(batch):
            keep = t_scores[b] > score_threshold
            labels, pseudo = t_labels[b][keep], t_points[b][keep]
            num_pseudo += int(labels.numel())
            valid = torch.ones(labels.numel(), 1, dtype=torch.bool, device=pts.device)
            match = hungarian_match(logits[b], pts[b], labels, pseudo[:, None], valid,
                                    match_cls_weight, match_pts_weight)
            onehot[b, match.pred_idx, labels[match.gt_idx]] = 1.0
            matched_pred.append(pts[b, match.pred_idx])
            matched_target.append(pseudo[match.gt_idx])
        k = max(num_pseudo, 1)
        focal = sigmoid_focal_loss(logits, onehot, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA,
                                   reduction="sum") / k
        l1 = (torch.cat(matched_pred) - torch.cat(matched_target)).abs().sum() / k
        return {"head_cls": focal, "head_pts": l1}
