"""Training losses: occupancy, depth, RadOcc's rendering distillation and the KD baselines.

- `occupancy_loss`: voxel cross-entropy over camera-visible voxels (FlashOcc / BEVDet-occ).
- `depth_loss`: BEVDet's binary cross-entropy on the LSS depth distribution.
- `rdc_loss`: Rendered Depth Consistency, KL(teacher || student) of ray termination distributions.
- `rsc_loss`: Rendered Semantic Consistency, segment affinity alignment (the paper) or per-ray KL
  of the rendered class distributions (the authors' code); `segment_affinity` is its matrix.
- `feature_alignment_loss` / `FeatureAlignment`, `logit_alignment_loss`: the plain BEV feature and
  voxel logit distillation baselines.

Every loss returns a scalar tensor computed in float32 (float64 inputs stay float64, so gradcheck
works), with autocast disabled inside: bf16 / fp16 inputs are cast up first. Teacher inputs are
detached. A loss over an empty selection (no valid ray, no masked voxel, ...) is 0 and still part
of the student's graph, so ``backward()`` works and gives a zero gradient.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LOSS_WEIGHTS", "RSC_MODES",
    "occupancy_loss", "depth_loss", "rdc_loss", "rsc_loss", "segment_affinity", "SegmentAffinity",
    "feature_alignment_loss", "FeatureAlignment", "logit_alignment_loss",
]

# Default weights of each term in the total loss, as in the RadOcc authors' code
# (zhanghm1995/OCC_Distill, configs/AAAI/aaai-redocc-stbase-ssc-distill-cbp-lp-all.py).
LOSS_WEIGHTS: dict[str, float] = {
    # Voxel CE masked by mask_camera, weight 1 (FlashOcc / BEVDet-occ and the authors' code).
    "occupancy": 1.0,
    # Off: FlashOcc M1 and 1-frame BEVDet-occ have no depth loss; variants with one use 0.05
    # (4D-stereo configs) or 1.0 (panoptic-flashocc-r50-depth.py).
    "depth": 0.0,
    # RDC: KL of the ray termination distributions, weight 100 (authors' code). The authors use
    # mmdet's KnowledgeDistillationKLDivLoss, which averages the KL over the depth bins: 100 is
    # meant for rdc_loss(..., bin_reduction="mean") (radocc.distill uses that). On the per-ray sum
    # it would be (D + 1) times stronger (89x at 88 bins): it collapsed the student, measured.
    "rdc": 100.0,
    # RSC: rendered semantic consistency, weight 10 (authors' code).
    "rsc": 10.0,
    # Baselines, off by default. BEV feature MSE: not in the authors' default config.
    "feature_alignment": 0.0,
    # Voxel logit KL: the authors' optional term uses weight 10.
    "logit_alignment": 0.0,
}

RSC_MODES = ("affinity", "kl")


# ----------------------------------------------------------------------------- input checks
def _float_tensor(x: object, name: str, ndim: int | Sequence[int], shape: str) -> Tensor:
    """A floating-point tensor with one of the given numbers of dimensions."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor {shape}, got dtype {x.dtype}")
    dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.dim() not in dims:
        raise ValueError(f"{name} must be {shape}, got shape {tuple(x.shape)}")
    return x


def _int_tensor(x: object, name: str, shape: tuple[int, ...], shape_doc: str) -> Tensor:
    """An integer tensor (not bool) of exactly ``shape``, returned as int64."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be an int64 torch.Tensor {shape_doc}, "
                        f"got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name} must be an integer (int64) tensor {shape_doc}, "
                        f"got dtype {x.dtype}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must be {shape_doc} = {shape}, got shape {tuple(x.shape)}")
    return x.long()


def _bool_mask(x: Tensor | None, name: str, shape: tuple[int, ...],
               shape_doc: str) -> Tensor | None:
    if x is None:
        return None
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor {shape_doc}, got {type(x).__name__}")
    if x.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor {shape_doc}, got dtype {x.dtype} "
                        f"(use .bool())")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must be {shape_doc} = {shape}, got shape {tuple(x.shape)}")
    return x


def _same_shape(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} and {b_name} must have the same shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")


def _same_device(*named: tuple[Tensor | None, str]) -> None:
    present = [(t, n) for t, n in named if t is not None]
    for t, n in present[1:]:
        if t.device != present[0][0].device:
            raise ValueError(f"{n} is on {t.device} but {present[0][1]} is on "
                             f"{present[0][0].device}")


def _positive(value: float, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------- shared maths
def _acc(x: Tensor) -> Tensor:
    """Accumulation precision: float32, or float64 for float64 inputs."""
    return x if x.dtype == torch.float64 else x.float()


@contextlib.contextmanager
def _autocast_off() -> Iterator[None]:
    with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
        yield


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values`` where ``mask`` is set (everywhere when None); 0 over an empty set.

    Divides by max(count, 1) so nothing syncs with the host and an empty set gives 0 with a zero
    gradient that is still connected to ``values``' graph.
    """
    if mask is None:
        return values.sum() / max(values.numel(), 1)
    count = mask.sum().clamp_min(1).to(values.dtype)
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype,
                                                 device=values.device)).sum() / count


def _kl_rows(teacher: Tensor, student: Tensor, eps: float) -> Tensor:
    """KL(teacher || student) along the last dim of probability rows: [..., D] -> [...].

    sum_b t_b (log max(t_b, eps) - log max(s_b, eps)); bins where t_b = 0 add nothing.
    """
    return (teacher * (teacher.clamp_min(eps).log() - student.clamp_min(eps).log())).sum(-1)


# ----------------------------------------------------------------------------- occupancy
def occupancy_loss(logits: Tensor, labels: Tensor, mask: Tensor | None = None,
                   class_weights: Tensor | None = None) -> Tensor:
    """Voxel cross-entropy over camera-visible voxels (FlashOcc / BEVDet-occ).

    loss = sum over masked voxels of w[label] * CE(logits, label) / number of masked voxels,
    as FlashOcc's CE masked by mask_camera with avg_factor mask_camera.sum().

    Args:
        logits: [B, X, Y, Z, K] class logits, channels last (Occ3D: K = 18, 17 = free).
        labels: [B, X, Y, Z] integer (int64) class indices, all in [0, K).
        mask: [B, X, Y, Z] bool, the voxels that count (Occ3D mask_camera); None: all voxels
            (the loss is then the plain mean).
        class_weights: [K] optional per-class weights w (1 for every class when None).
    Returns:
        Scalar float32 loss; 0 (zero gradient) when no voxel is masked.
    """
    logits = _float_tensor(logits, "logits", 5, "[B, X, Y, Z, K]")
    labels = _int_tensor(labels, "labels", tuple(logits.shape[:-1]), "[B, X, Y, Z]")
    mask = _bool_mask(mask, "mask", tuple(logits.shape[:-1]), "[B, X, Y, Z]")
    num_classes = logits.shape[-1]
    if class_weights is not None:
        class_weights = _float_tensor(class_weights, "class_weights", 1, "[K]")
        if class_weights.shape[0] != num_classes:
            raise ValueError(f"class_weights must be [K] = [{num_classes}] (logits' classes), "
                             f"got shape {tuple(class_weights.shape)}")
    _same_device((logits, "logits"), (labels, "labels"), (mask, "mask"),
                 (class_weights, "class_weights"))
    # A clear error here instead of a CUDA device-side assert inside cross_entropy.
    if labels.numel() and bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(f"labels must lie in [0, {num_classes}) (K = logits.shape[-1]), got "
                         f"values in [{int(labels.min())}, {int(labels.max())}]")
    with _autocast_off():
        x = _acc(logits)
        weight = None if class_weights is None else class_weights.to(x.dtype)
        ce = F.cross_entropy(x.reshape(-1, num_classes), labels.reshape(-1), weight=weight,
                             reduction="none").reshape(labels.shape)
        return _masked_mean(ce, mask)


# ----------------------------------------------------------------------------- depth
def _num_depth_bins(bins: Sequence[float]) -> tuple[float, float, float, int]:
    if (isinstance(bins, (str, bytes)) or not isinstance(bins, Sequence) or len(bins) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bins)):
        raise TypeError(f"bins must be (start, stop, step) in metres, got {bins!r}")
    start, stop, step = (float(v) for v in bins)
    if not (math.isfinite(start) and math.isfinite(stop) and step > 0 and stop > start):
        raise ValueError(f"bins must be (start, stop, step) with step > 0 and stop > start, "
                         f"got {bins!r}")
    # The LSS frustum's own count: len(arange(start, stop, step)), e.g. (1, 45, 0.5) -> 88.
    count = int(torch.arange(start, stop, step, dtype=torch.float64).numel())
    return start, stop, step, count


def depth_loss(depth_probs: Tensor, depth_target: Tensor, bins: Sequence[float],
               eps: float = 1e-6) -> Tensor:
    """BEVDet's depth supervision of the LSS depth distribution.

    Each pixel with LiDAR depth d > 0 has target bin floor((d - start) / step); pixels whose bin
    falls outside [0, D) are ignored. loss = sum over valid pixels and the D bins of
    BCE(p, one_hot(bin)) / max(1, number of valid pixels), with p clamped to [eps, 1 - eps].

    Args:
        depth_probs: [B, N, D, h, w] per-pixel depth distribution (softmax over D), N cameras,
            at the feature resolution (h, w).
        depth_target: [B, N, h, w] LiDAR depth in metres at that resolution, 0 = no LiDAR.
        bins: (start, stop, step) metres; the number of bins len(arange(start, stop, step))
            must equal D, e.g. (1.0, 45.0, 0.5) -> D = 88.
        eps: probability clamp, keeps BCE finite.
    Returns:
        Scalar float32 loss (computed in float32 even under autocast); 0 when no pixel is valid.
    """
    depth_probs = _float_tensor(depth_probs, "depth_probs", 5, "[B, N, D, h, w]")
    depth_target = _float_tensor(depth_target, "depth_target", 4, "[B, N, h, w]")
    batch, cams, num_bins, height, width = depth_probs.shape
    if tuple(depth_target.shape) != (batch, cams, height, width):
        raise ValueError(f"depth_target must be [B, N, h, w] = {(batch, cams, height, width)} "
                         f"(from depth_probs), got shape {tuple(depth_target.shape)}")
    _same_device((depth_probs, "depth_probs"), (depth_target, "depth_target"))
    start, _, step, count = _num_depth_bins(bins)
    if count != num_bins:
        raise ValueError(f"bins {tuple(bins)} give {count} depth bins but depth_probs has "
                         f"D = {num_bins} (dim 2)")
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    with _autocast_off():
        probs = _acc(depth_probs).clamp(eps, 1.0 - eps)
        target = _acc(depth_target).detach()
        index = torch.floor((target - start) / step)
        valid = (target > 0) & (index >= 0) & (index < num_bins)
        one_hot = F.one_hot(torch.where(valid, index, 0).long(), num_bins)  # [B, N, h, w, D]
        one_hot = one_hot.permute(0, 1, 4, 2, 3).to(probs.dtype)
        bce = F.binary_cross_entropy(probs, one_hot, reduction="none").sum(2)  # [B, N, h, w]
        return _masked_mean(bce, valid)


# ----------------------------------------------------------------------------- rendering
def rdc_loss(student_termination: Tensor, teacher_termination: Tensor,
             valid: Tensor | None = None, eps: float = 1e-6, bin_reduction: str = "sum") -> Tensor:
    """Rendered Depth Consistency: KL(teacher || student) of the ray termination distributions.

    Per ray: sum_b t_b (log max(t_b, eps) - log max(s_b, eps)), averaged over the valid rays.
    ``bin_reduction="mean"`` divides each ray's KL by its D + 1 bins, as the RadOcc authors' code
    (mmdet's KnowledgeDistillationKLDivLoss averages over the bins), the scale their weight
    100 (``LOSS_WEIGHTS["rdc"]``) was chosen for; "sum" (default) is the KL itself.

    Args:
        student_termination: [B, R, D + 1] probability rows (``RenderOutput.termination`` of
            ``radocc.render.volume_render``: D depth bins plus "never terminated").
        teacher_termination: [B, R, D + 1] the teacher's rows for the same rays and bins;
            detached (no gradient reaches the teacher).
        valid: [B, R] bool, the rays that count; None: all rays.
        eps: floor of the probabilities inside the logarithms.
    Returns:
        Scalar float32 loss; 0 (zero gradient, still on the student's graph) with no valid ray.
    """
    shape = "[B, R, D + 1]"
    student = _float_tensor(student_termination, "student_termination", 3, shape)
    teacher = _float_tensor(teacher_termination, "teacher_termination", 3, shape)
    _same_shape(student, "student_termination", teacher, "teacher_termination")
    valid = _bool_mask(valid, "valid", tuple(student.shape[:2]), "[B, R]")
    _same_device((student, "student_termination"), (teacher, "teacher_termination"),
                 (valid, "valid"))
    eps = _positive(eps, "eps")
    if bin_reduction not in ("sum", "mean"):
        raise ValueError(f"bin_reduction must be 'sum' or 'mean', got {bin_reduction!r}")
    with _autocast_off():
        kl = _kl_rows(_acc(teacher.detach()), _acc(student), eps)
        if bin_reduction == "mean":
            kl = kl / student.shape[-1]
        return _masked_mean(kl, valid)


def _segment_means(features: Tensor, slot: Tensor, counts: Tensor, slots: int) -> Tensor:
    """Mean feature per slot: features [M, C], slot [M] in [0, slots) -> [slots, C]."""
    sums = features.new_zeros(slots, features.shape[-1]).index_add(0, slot, features)
    return sums / counts.clamp_min(1).unsqueeze(-1).to(features.dtype)


class _Slots(NamedTuple):
    """The segments of a batch of rays, compacted into a padded [B, K_max] layout."""

    keep: Tensor     # [B, R] bool, rays inside a segment (id != 0)
    slot: Tensor     # [M] slot (b * K_max + k) of each kept ray
    counts: Tensor   # [B * K_max] rays per slot
    ids: Tensor      # [B, K_max] int64 segment id of each slot (0 where absent)
    present: Tensor  # [B, K_max] bool, slots holding a segment


def _segment_slots(segment_ids: Tensor) -> _Slots:
    """Compact (batch item, id) pairs: segments numbered 0..K_b-1 per item, in increasing id."""
    batch, rays = segment_ids.shape
    keep = segment_ids != 0
    item = torch.arange(batch, device=segment_ids.device).unsqueeze(1).expand(batch, rays)[keep]
    pairs, inverse = torch.unique(torch.stack([item, segment_ids[keep]], 1), dim=0,
                                  return_inverse=True)
    per_item = torch.bincount(pairs[:, 0], minlength=batch)  # K_b, segments per batch item
    k_max = int(per_item.max()) if batch else 0
    first = per_item.cumsum(0) - per_item  # index of each item's first pair
    pair_slot = pairs[:, 0] * k_max + torch.arange(len(pairs), device=pairs.device) - first[pairs[:, 0]]
    slot = pair_slot[inverse]
    counts = torch.bincount(slot, minlength=batch * k_max)
    ids = pairs.new_zeros(batch * k_max).index_copy(0, pair_slot, pairs[:, 1])
    present = torch.arange(k_max, device=per_item.device) < per_item.unsqueeze(1)  # [B, K_max]
    return _Slots(keep, slot, counts, ids.view(batch, k_max), present)


def _slot_affinity(features: Tensor, slots: _Slots) -> Tensor:
    """[B, R, C] features -> [B, K_max, K_max] cosine affinity of the segment means."""
    batch, k_max = slots.present.shape
    means = _segment_means(features[slots.keep], slots.slot, slots.counts, batch * k_max)
    unit = F.normalize(means, dim=-1).reshape(batch, k_max, features.shape[-1])
    return unit @ unit.transpose(1, 2)


class SegmentAffinity(NamedTuple):
    """Output of :func:`segment_affinity` (K = the most segments in one batch item)."""

    matrix: Tensor
    """[B, K, K] cosine similarity of the segments' mean features; 0 in rows / columns of absent
    slots (and of segments whose mean feature is zero)."""
    ids: Tensor
    """[B, K] int64 segment id of each row, increasing; 0 where the slot is absent."""
    present: Tensor
    """[B, K] bool, the slots that hold a segment."""


def segment_affinity(features: Tensor, segment_ids: Tensor) -> SegmentAffinity:
    """RSC's segment affinity (the paper's Fig. 4): the rays' features averaged inside each
    segment, L2-normalised, and the cosine affinity of every pair of segments.

    This is the matrix :func:`rsc_loss` (``mode="affinity"``) compares between student and
    teacher.

    Args:
        features: [B, R, C] rendered features of R rays.
        segment_ids: [B, R] integer segment id of each ray, 0 = no segment (ignored); only which
            rays share an id matters.
    Returns:
        SegmentAffinity(matrix [B, K, K], ids [B, K], present [B, K]); rows follow the ids in
        increasing order within each batch item.
    """
    features = _float_tensor(features, "features", 3, "[B, R, C]")
    segment_ids = _int_tensor(segment_ids, "segment_ids", tuple(features.shape[:2]), "[B, R]")
    _same_device((features, "features"), (segment_ids, "segment_ids"))
    if segment_ids.numel() and bool((segment_ids < 0).any()):
        raise ValueError(f"segment_ids must be >= 0 (0 = no segment), got minimum "
                         f"{int(segment_ids.min())}")
    with _autocast_off():
        slots = _segment_slots(segment_ids)
        return SegmentAffinity(_slot_affinity(_acc(features), slots), slots.ids, slots.present)


def _affinity_loss(student: Tensor, teacher: Tensor, segment_ids: Tensor) -> Tensor:
    slots = _segment_slots(segment_ids)
    per_item = slots.present.sum(1)
    pair_mask = slots.present.unsqueeze(2) & slots.present.unsqueeze(1)
    diff = (_slot_affinity(student, slots) - _slot_affinity(teacher, slots)).abs()
    zero = torch.zeros((), dtype=diff.dtype, device=diff.device)
    k_sq = (per_item.to(diff.dtype) ** 2).clamp_min(1)
    per_batch = torch.where(pair_mask, diff, zero).sum((1, 2)) / k_sq  # mean over K x K
    return _masked_mean(per_batch, per_item >= 2)


def rsc_loss(student_features: Tensor, teacher_features: Tensor,
             segment_ids: Tensor | None = None, mode: str = "affinity",
             eps: float = 1e-6, valid: Tensor | None = None) -> Tensor:
    """Rendered Semantic Consistency between teacher and student rendered semantics.

    ``mode="affinity"`` (the paper): in each batch item, the rays' features are averaged inside
    each segment (segment id 0 = no segment, ignored), L2-normalised, and the cosine affinity
    matrices [K, K] of student and teacher compared: mean over the K x K entries of
    |A_student - A_teacher|, averaged over the batch items with K >= 2 segments (0 when none).
    Segment ids are compacted internally, so only which rays share an id matters, not the ids'
    values (they may be large and sparse). Student and teacher may have different C.

    ``mode="kl"`` (the authors' code): per-ray KL(teacher || student) of the class distributions,
    mean over all rays; ``segment_ids`` is not used (may be None). radocc's rendered semantics are
    sum_i w_i q_i with q_i a per-voxel class distribution, so a row sums to the ray's opacity:
    each row is divided by its sum (clamped at ``eps``) to make it a distribution first. Features
    must then be non-negative (rendered probabilities, not logits); this is not checked.

    Args:
        student_features: [B, R, C] rendered semantic features of the student.
        teacher_features: [B, R, C'] the teacher's, same rays; detached. C' = C for "kl".
        segment_ids: [B, R] int64 segment id of each ray (SAM segments), 0 = none; ids must be
            unique within a batch item across cameras (the caller offsets them per camera).
            Required for "affinity".
        mode: "affinity" or "kl".
        eps: "kl" only: floor of the row sums and of the probabilities inside the logarithms.
        valid: [B, R] bool, the rays that count (None: all); "affinity" leaves the others out
            of the segment means, "kl" out of the mean over rays.
    Returns:
        Scalar float32 loss.
    """
    if mode not in RSC_MODES:
        raise ValueError(f"mode must be one of {RSC_MODES}, got {mode!r}")
    student = _float_tensor(student_features, "student_features", 3, "[B, R, C]")
    teacher = _float_tensor(teacher_features, "teacher_features", 3, "[B, R, C]")
    if mode == "kl":
        _same_shape(student, "student_features", teacher, "teacher_features")
    elif student.shape[:2] != teacher.shape[:2]:
        raise ValueError(f"student_features and teacher_features must share [B, R], got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if segment_ids is not None:
        segment_ids = _int_tensor(segment_ids, "segment_ids", tuple(student.shape[:2]), "[B, R]")
    elif mode == "affinity":
        raise ValueError("segment_ids [B, R] is required for mode='affinity'")
    valid = _bool_mask(valid, "valid", tuple(student.shape[:2]), "[B, R]")
    _same_device((student, "student_features"), (teacher, "teacher_features"),
                 (segment_ids, "segment_ids"), (valid, "valid"))
    eps = _positive(eps, "eps")
    with _autocast_off():
        student, teacher = _acc(student), _acc(teacher.detach())
        if mode == "kl":
            def normalise(x: Tensor) -> Tensor:
                return x / x.sum(-1, keepdim=True).clamp_min(eps)
            return _masked_mean(_kl_rows(normalise(teacher), normalise(student), eps), valid)
        if segment_ids.numel() and bool((segment_ids < 0).any()):
            raise ValueError(f"segment_ids must be >= 0 (0 = no segment), got minimum "
                             f"{int(segment_ids.min())}")
        if valid is not None:
            segment_ids = torch.where(valid, segment_ids, torch.zeros_like(segment_ids))
        return _affinity_loss(student, teacher, segment_ids)


# ----------------------------------------------------------------------------- KD baselines
def feature_alignment_loss(student: Tensor, teacher: Tensor,
                           adapter: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """MSE between student and teacher BEV or voxel features (the feature distillation baseline).

    Args:
        student: [B, C_s, H, W] BEV or [B, C_s, Z, H, W] voxel features.
        teacher: [B, C_t, H, W] or [B, C_t, Z, H, W], same layout; detached.
        adapter: optional module applied to ``student`` first (e.g. a 1x1 conv C_s -> C_t, see
            :class:`FeatureAlignment`); it runs under the caller's autocast.
    Returns:
        Scalar float32 mean squared error over all elements.
    """
    shape = "[B, C, H, W] or [B, C, Z, H, W]"
    student = _float_tensor(student, "student", (4, 5), shape)
    teacher = _float_tensor(teacher, "teacher", (4, 5), shape)
    if student.dim() != teacher.dim():
        raise ValueError(f"student and teacher must both be BEV [B, C, H, W] or voxel "
                         f"[B, C, Z, H, W], got shapes {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    _same_device((student, "student"), (teacher, "teacher"))
    if adapter is not None:
        student = adapter(student)
    if student.shape != teacher.shape:
        raise ValueError(f"student{' after adapter' if adapter is not None else ''} and teacher "
                         f"must have the same shape, got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}" + ("" if adapter is not None else
                                                      " (pass an adapter when channels differ)"))
    with _autocast_off():
        return F.mse_loss(_acc(student), _acc(teacher.detach()))


class FeatureAlignment(nn.Module):
    """Feature distillation baseline with a learnable 1x1 conv adapter from student channels to
    teacher channels (identity when they are equal).

    Args:
        student_channels: C_s.
        teacher_channels: C_t.
        dims: 2 for BEV features [B, C, H, W] (Conv2d), 3 for voxel features [B, C, Z, H, W]
            (Conv3d).
    """

    def __init__(self, student_channels: int, teacher_channels: int, dims: int = 2) -> None:
        super().__init__()
        for name, value in (("student_channels", student_channels),
                            ("teacher_channels", teacher_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 (BEV, Conv2d) or 3 (voxels, Conv3d), got {dims!r}")
        self.dims = dims
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.adapter: nn.Module = (nn.Identity() if student_channels == teacher_channels
                                   else conv(student_channels, teacher_channels, kernel_size=1))

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """student [B, C_s, (Z,) H, W], teacher [B, C_t, (Z,) H, W] -> scalar MSE."""
        if isinstance(student, Tensor) and student.dim() != self.dims + 2:
            raise ValueError(f"student must have {self.dims + 2} dims for dims={self.dims}, "
                             f"got shape {tuple(student.shape)}")
        return feature_alignment_loss(student, teacher, self.adapter)


def logit_alignment_loss(student_logits: Tensor, teacher_logits: Tensor,
                         mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """Voxel logit distillation baseline: KL(teacher || student) of the class distributions.

    Per voxel KL(softmax(t / T) || softmax(s / T)) over the K classes, mean over the masked
    voxels, times T**2 (standard knowledge distillation scaling).

    Args:
        student_logits: [B, X, Y, Z, K] class logits, channels last.
        teacher_logits: [B, X, Y, Z, K]; detached.
        mask: [B, X, Y, Z] bool, the voxels that count (camera-visible); None: all voxels.
        temperature: T > 0.
    Returns:
        Scalar float32 loss; 0 (zero gradient) when no voxel is masked.
    """
    shape = "[B, X, Y, Z, K]"
    student = _float_tensor(student_logits, "student_logits", 5, shape)
    teacher = _float_tensor(teacher_logits, "teacher_logits", 5, shape)
    _same_shape(student, "student_logits", teacher, "teacher_logits")
    mask = _bool_mask(mask, "mask", tuple(student.shape[:-1]), "[B, X, Y, Z]")
    _same_device((student, "student_logits"), (teacher, "teacher_logits"), (mask, "mask"))
    temperature = _positive(temperature, "temperature")
    with _autocast_off():
        log_t = torch.log_softmax(_acc(teacher.detach()) / temperature, dim=-1)
        log_s = torch.log_softmax(_acc(student) / temperature, dim=-1)
        kl = (log_t.exp() * (log_t - log_s)).sum(-1)
        return _masked_mean(kl, mask) * temperature ** 2
