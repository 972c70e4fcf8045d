"""Tests of radocc.losses: hand-made values, torch references, gradients, detached teachers,
segment numbering invariance, empty selections and input errors."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from radocc.losses import (LOSS_WEIGHTS, FeatureAlignment, depth_loss, feature_alignment_loss,
                           logit_alignment_loss, occupancy_loss, rdc_loss, rsc_loss)

torch.set_num_threads(1)


def _distributions(*shape: int, dtype=torch.float32, generator=None) -> torch.Tensor:
    """Random probability rows along the last dim, no zeros."""
    return torch.softmax(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- module hygiene
def test_imports_only_torch():
    code = ("import sys, radocc.losses; "
            "print(sorted(m for m in sys.modules if m.startswith('radocc')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['radocc', 'radocc.losses']"


def test_loss_weights_are_the_authors_defaults():
    assert LOSS_WEIGHTS == {"occupancy": 1.0, "depth": 0.0, "rdc": 100.0, "rsc": 10.0,
                            "feature_alignment": 0.0, "logit_alignment": 0.0}


# ----------------------------------------------------------------------------- RDC
def test_rdc_hand_made_kl():
    teacher = torch.tensor([[[0.5, 0.25, 0.25]]])
    student = torch.tensor([[[0.25, 0.5, 0.25]]])
    # 0.5 ln(0.5/0.25) + 0.25 ln(0.25/0.5) + 0.25 ln 1 = 0.25 ln 2
    assert rdc_loss(student, teacher).item() == pytest.approx(0.25 * math.log(2), rel=1e-6)
    # Reversed: 0.25 ln(0.5) + 0.5 ln 2 = 0.25 ln 2 as well; a third pair breaks the symmetry.
    student2 = torch.tensor([[[0.5, 0.5, 0.0]]])
    expected = 0.5 * math.log(1.0) + 0.25 * math.log(0.5) + 0.25 * (math.log(0.25) - math.log(1e-6))
    assert rdc_loss(student2, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_rdc_teacher_zero_bins_add_nothing():
    teacher = torch.tensor([[[1.0, 0.0, 0.0]]])
    student = torch.tensor([[[0.5, 0.25, 0.25]]])
    assert rdc_loss(student, teacher).item() == pytest.approx(math.log(2), rel=1e-6)


def test_rdc_matches_torch_kl_div():
    g = _gen(1)
    student, teacher = _distributions(2, 5, 7, generator=g), _distributions(2, 5, 7, generator=g)
    expected = F.kl_div(student.log(), teacher, reduction="sum") / (2 * 5)
    assert torch.allclose(rdc_loss(student, teacher), expected, rtol=1e-5, atol=1e-7)
    valid = torch.rand(2, 5, generator=g) > 0.4
    valid[0, 0] = True
    per_ray = F.kl_div(student.log(), teacher, reduction="none").sum(-1)
    assert torch.allclose(rdc_loss(student, teacher, valid), per_ray[valid].mean(), rtol=1e-5)


def test_rdc_gradients_and_detached_teacher():
    g = _gen(2)
    student = _distributions(1, 4, 5, dtype=torch.float64, generator=g).requires_grad_()
    teacher = _distributions(1, 4, 5, dtype=torch.float64, generator=g)
    valid = torch.tensor([[True, False, True, True]])
    assert torch.autograd.gradcheck(lambda s: rdc_loss(s, teacher, valid), (student,))
    teacher.requires_grad_()
    rdc_loss(student, teacher, valid).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert torch.all(student.grad[0, 1] == 0)  # the invalid ray gets nothing


def test_rdc_bin_mean_is_the_kl_over_the_bins():
    torch.manual_seed(0)
    student = torch.rand(2, 5, 7).softmax(-1)
    teacher = torch.rand(2, 5, 7).softmax(-1)
    assert torch.allclose(rdc_loss(student, teacher, bin_reduction="mean"),
                          rdc_loss(student, teacher) / 7, rtol=1e-6)
    with pytest.raises(ValueError, match="bin_reduction"):
        rdc_loss(student, teacher, bin_reduction="max")


def test_rdc_no_valid_ray_is_zero_with_zero_gradient():
    student = _distributions(2, 3, 4, generator=_gen(3)).requires_grad_()
    teacher = _distributions(2, 3, 4, generator=_gen(4))
    loss = rdc_loss(student, teacher, torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert student.grad is not None and torch.all(student.grad == 0)


def test_rdc_bf16_inputs_give_float32():
    student = _distributions(1, 3, 4, generator=_gen(5))
    teacher = _distributions(1, 3, 4, generator=_gen(6))
    loss = rdc_loss(student.bfloat16(), teacher.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(rdc_loss(student, teacher).item(), rel=0.05, abs=1e-3)


def test_rdc_errors():
    s = _distributions(1, 3, 4)
    with pytest.raises(ValueError, match="teacher_termination"):
        rdc_loss(s, _distributions(1, 3, 5))
    with pytest.raises(ValueError, match="student_termination"):
        rdc_loss(s[0], s[0])
    with pytest.raises(TypeError, match="valid"):
        rdc_loss(s, s, torch.ones(1, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="valid"):
        rdc_loss(s, s, torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="student_termination"):
        rdc_loss(s.long(), s)
    with pytest.raises(ValueError, match="eps"):
        rdc_loss(s, s, eps=0.0)


# ----------------------------------------------------------------------------- RSC
def _rsc_reference(student, teacher, ids):
    """Loops over batch items and segments: the plain definition."""
    losses = []
    for b in range(ids.shape[0]):
        segments = [int(i) for i in torch.unique(ids[b]) if i != 0]
        if len(segments) < 2:
            continue
        mats = []
        for feats in (student[b], teacher[b]):
            means = torch.stack([feats[ids[b] == i].mean(0) for i in segments])
            unit = means / means.norm(dim=-1, keepdim=True)
            mats.append(unit @ unit.T)
        losses.append((mats[0] - mats[1]).abs().mean())
    return torch.stack(losses).mean() if losses else torch.tensor(0.0)


def test_rsc_affinity_orthogonal_teacher_parallel_student():
    # Segment 3: rays 0, 1; segment 9: ray 2; ray 3 has no segment.
    ids = torch.tensor([[3, 3, 9, 0]])
    teacher = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    student = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [0.5, 0.5], [1.0, -7.0]]])
    # A_teacher = identity, A_student = all ones: the two off-diagonal entries differ by 1.
    assert rsc_loss(student, teacher, ids).item() == pytest.approx(0.5, abs=1e-6)
    # Rays with segment id 0 are ignored.
    student[0, 3], teacher[0, 3] = torch.tensor([-4.0, 9.0]), torch.tensor([0.0, -1.0])
    assert rsc_loss(student, teacher, ids).item() == pytest.approx(0.5, abs=1e-6)


def test_rsc_affinity_uses_segment_means():
    # Teacher segment 1 averages [1, 0] and [0, 1] to [0.5, 0.5]: parallel to segment 2.
    ids = torch.tensor([[1, 1, 2]])
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    student = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    # A_teacher = all ones, A_student = identity.
    assert rsc_loss(student, teacher, ids).item() == pytest.approx(0.5, abs=1e-6)


def test_rsc_affinity_matches_reference():
    g = _gen(7)
    student = torch.randn(3, 12, 4, generator=g)
    teacher = torch.randn(3, 12, 6, generator=g)  # channel counts may differ in "affinity"
    ids = torch.randint(0, 5, (3, 12), generator=g)
    ids[2] = torch.tensor([0] * 11 + [4])  # one segment only: not averaged in
    expected = _rsc_reference(student, teacher, ids)
    assert torch.allclose(rsc_loss(student, teacher, ids), expected, rtol=1e-5, atol=1e-6)


def test_rsc_affinity_invariant_to_segment_numbering():
    g = _gen(8)
    student, teacher = torch.randn(2, 20, 3, generator=g), torch.randn(2, 20, 3, generator=g)
    ids = torch.randint(0, 6, (2, 20), generator=g)
    base = rsc_loss(student, teacher, ids)
    # Map 1..5 to a random permutation of large, sparse ids (0 stays 0).
    new_ids = torch.tensor([0, 70001, 12, 999999, 4, 31337])[1:][torch.randperm(5, generator=g)]
    relabelled = torch.where(ids == 0, 0, torch.cat([torch.zeros(1, dtype=torch.long),
                                                     new_ids])[ids])
    assert not torch.equal(relabelled, ids)
    assert torch.allclose(rsc_loss(student, teacher, relabelled), base, rtol=1e-5, atol=1e-7)
    # And to the order of the rays.
    perm = torch.randperm(20, generator=g)
    assert torch.allclose(rsc_loss(student[:, perm], teacher[:, perm], relabelled[:, perm]),
                          base, rtol=1e-5, atol=1e-7)


def test_rsc_affinity_fewer_than_two_segments_is_zero():
    student = torch.randn(2, 5, 3, generator=_gen(9)).requires_grad_()
    teacher = torch.randn(2, 5, 3, generator=_gen(10))
    for ids in (torch.zeros(2, 5, dtype=torch.long),
                torch.tensor([[0, 7, 7, 0, 0], [2, 0, 0, 0, 2]])):
        student.grad = None
        loss = rsc_loss(student, teacher, ids)
        assert loss.item() == 0.0
        loss.backward()
        assert student.grad is not None and torch.all(student.grad == 0)


def test_rsc_affinity_gradients_and_detached_teacher():
    g = _gen(11)
    student = torch.randn(2, 8, 3, dtype=torch.float64, generator=g).requires_grad_()
    teacher = torch.randn(2, 8, 3, dtype=torch.float64, generator=g)
    ids = torch.tensor([[1, 1, 2, 2, 3, 0, 3, 1], [5, 5, 0, 6, 6, 6, 0, 5]])
    assert torch.autograd.gradcheck(lambda s: rsc_loss(s, teacher, ids), (student,))
    teacher.requires_grad_()
    rsc_loss(student, teacher, ids).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert torch.all(student.grad[0, 5] == 0)  # a ray with no segment


def test_rsc_kl_hand_made():
    # Rendered rows sum to the opacity (0.5 and 0.8): normalised first.
    teacher = torch.tensor([[[0.25, 0.125, 0.125]]])
    student = torch.tensor([[[0.2, 0.4, 0.2]]])
    loss = rsc_loss(student, teacher, None, mode="kl")
    assert loss.item() == pytest.approx(0.25 * math.log(2), rel=1e-5)
    # Equals rdc_loss on the normalised rows, whatever the segment ids.
    g = _gen(12)
    s, t = torch.rand(2, 6, 4, generator=g) + 0.1, torch.rand(2, 6, 4, generator=g) + 0.1
    ids = torch.randint(0, 3, (2, 6), generator=g)
    expected = rdc_loss(s / s.sum(-1, keepdim=True), t / t.sum(-1, keepdim=True))
    assert torch.allclose(rsc_loss(s, t, ids, mode="kl"), expected, rtol=1e-5)


def test_rsc_kl_gradients_and_detached_teacher():
    g = _gen(13)
    student = (torch.rand(1, 5, 4, dtype=torch.float64, generator=g) + 0.1).requires_grad_()
    teacher = torch.rand(1, 5, 4, dtype=torch.float64, generator=g) + 0.1
    assert torch.autograd.gradcheck(lambda s: rsc_loss(s, teacher, mode="kl"), (student,))
    teacher.requires_grad_()
    rsc_loss(student, teacher, mode="kl").backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_rsc_valid_leaves_rays_out():
    g = _gen(14)
    s, t = torch.rand(2, 8, 4, generator=g) + 0.1, torch.rand(2, 8, 4, generator=g) + 0.1
    ids = torch.randint(1, 4, (2, 8), generator=g)
    valid = torch.rand(2, 8, generator=g) > 0.3
    # kl: the mean over the valid rays only
    kl_all = rsc_loss(s, t, mode="kl")
    per_ray = [rsc_loss(s[b:b + 1, r:r + 1], t[b:b + 1, r:r + 1], mode="kl")
               for b in range(2) for r in range(8) if valid[b, r]]
    kl_valid = rsc_loss(s, t, mode="kl", valid=valid)
    assert torch.allclose(kl_valid, torch.stack(per_ray).mean(), rtol=1e-5)
    assert not torch.allclose(kl_valid, kl_all)
    # affinity: invalid rays are out of their segments' means, as if their id were 0
    expected = rsc_loss(s, t, torch.where(valid, ids, 0))
    assert torch.allclose(rsc_loss(s, t, ids, valid=valid), expected)
    with pytest.raises(ValueError, match="valid"):
        rsc_loss(s, t, ids, valid=valid[:, :4])


def test_rsc_errors():
    f = torch.rand(1, 4, 3)
    ids = torch.tensor([[1, 2, 0, 1]])
    with pytest.raises(ValueError, match="affinity.*kl"):
        rsc_loss(f, f, ids, mode="cosine")
    with pytest.raises(TypeError, match="segment_ids"):
        rsc_loss(f, f, ids.float())
    with pytest.raises(ValueError, match="segment_ids"):
        rsc_loss(f, f, None)
    with pytest.raises(ValueError, match="segment_ids"):
        rsc_loss(f, f, torch.tensor([[1, 2, 0]]))
    with pytest.raises(ValueError, match="segment_ids"):
        rsc_loss(f, f, torch.tensor([[1, -2, 0, 1]]))
    with pytest.raises(ValueError, match="teacher_features"):
        rsc_loss(f, torch.rand(1, 5, 3), ids)
    with pytest.raises(ValueError, match="teacher_features"):
        rsc_loss(f, torch.rand(1, 4, 2), mode="kl")
    with pytest.raises(ValueError, match="student_features"):
        rsc_loss(f[0], f[0], ids[0])


# ----------------------------------------------------------------------------- occupancy
def test_occupancy_matches_cross_entropy_on_masked_voxels():
    g = _gen(14)
    logits = torch.randn(2, 3, 4, 2, 5, generator=g)
    labels = torch.randint(0, 5, (2, 3, 4, 2), generator=g)
    mask = torch.rand(2, 3, 4, 2, generator=g) > 0.5
    expected = F.cross_entropy(logits[mask], labels[mask])
    assert torch.allclose(occupancy_loss(logits, labels, mask), expected, rtol=1e-5)
    assert torch.allclose(occupancy_loss(logits, labels),
                          F.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1)), rtol=1e-5)
    # Class weights: weighted sum divided by the NUMBER of masked voxels (not the weight sum).
    weights = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.1])
    weighted = F.cross_entropy(logits[mask], labels[mask], weight=weights, reduction="sum")
    assert torch.allclose(occupancy_loss(logits, labels, mask, weights),
                          weighted / mask.sum(), rtol=1e-5)


def test_occupancy_gradients_and_empty_mask():
    g = _gen(15)
    logits = torch.randn(1, 2, 2, 2, 3, dtype=torch.float64, generator=g).requires_grad_()
    labels = torch.randint(0, 3, (1, 2, 2, 2), generator=g)
    mask = torch.tensor([True, False] * 4).reshape(1, 2, 2, 2)
    weights = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: occupancy_loss(x, labels, mask, weights), (logits,))
    loss = occupancy_loss(logits, labels, torch.zeros_like(mask))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_occupancy_errors():
    logits = torch.randn(1, 2, 2, 2, 3)
    labels = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    with pytest.raises(TypeError, match="labels"):
        occupancy_loss(logits, labels.float())
    with pytest.raises(ValueError, match="labels"):
        occupancy_loss(logits, labels[..., :1])
    with pytest.raises(ValueError, match="labels"):
        occupancy_loss(logits, labels + 3)
    with pytest.raises(ValueError, match="logits"):
        occupancy_loss(logits[0], labels[0])
    with pytest.raises(TypeError, match="mask"):
        occupancy_loss(logits, labels, labels)
    with pytest.raises(ValueError, match="class_weights"):
        occupancy_loss(logits, labels, class_weights=torch.ones(4))


# ----------------------------------------------------------------------------- depth
def test_depth_single_pixel_by_hand():
    bins = (1.0, 3.0, 0.5)  # edges 1, 1.5, 2, 2.5 -> D = 4
    probs = torch.tensor([0.1, 0.2, 0.6, 0.1]).reshape(1, 1, 4, 1, 1).repeat(1, 1, 1, 1, 4)
    # Pixel 0: 2.2 m -> bin floor(1.2 / 0.5) = 2. Pixel 1: no LiDAR. Pixels 2, 3: outside [0, D).
    target = torch.tensor([2.2, 0.0, 3.0, 0.9]).reshape(1, 1, 1, 4)
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.9))
    assert depth_loss(probs, target, bins).item() == pytest.approx(expected, rel=1e-5)
    assert depth_loss(probs, torch.zeros_like(target), bins).item() == 0.0


def test_depth_matches_bevdet_formula():
    g = _gen(16)
    probs = torch.softmax(torch.randn(2, 3, 88, 2, 3, generator=g), dim=2)
    target = torch.rand(2, 3, 2, 3, generator=g) * 50.0
    target[0, 0] = 0.0
    index = torch.floor((target - 1.0) / 0.5)
    valid = (target > 0) & (index >= 0) & (index < 88)
    one_hot = F.one_hot(index.clamp(0, 87).long(), 88).permute(0, 1, 4, 2, 3).float()
    pick = valid.unsqueeze(2).expand_as(probs)
    expected = F.binary_cross_entropy(probs[pick], one_hot[pick], reduction="sum") / valid.sum()
    assert torch.allclose(depth_loss(probs, target, (1.0, 45.0, 0.5)), expected, rtol=1e-5)


def test_depth_gradients_and_float32_under_autocast():
    g = _gen(17)
    probs = torch.softmax(torch.randn(1, 1, 4, 2, 2, dtype=torch.float64, generator=g), dim=2)
    probs.requires_grad_()
    target = torch.tensor([[[[1.2, 2.6], [0.0, 1.9]]]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: depth_loss(p, target, (1.0, 3.0, 0.5)), (probs,))
    p32, t32 = probs.detach().float(), target.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = depth_loss(p32.bfloat16(), t32, (1.0, 3.0, 0.5))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(depth_loss(p32, t32, (1.0, 3.0, 0.5)).item(), rel=0.02)


def test_depth_errors():
    probs = torch.full((1, 1, 4, 2, 2), 0.25)
    target = torch.ones(1, 1, 2, 2)
    with pytest.raises(ValueError, match="D = 4"):
        depth_loss(probs, target, (1.0, 45.0, 0.5))
    with pytest.raises(ValueError, match="depth_target"):
        depth_loss(probs, torch.ones(1, 1, 2, 3), (1.0, 3.0, 0.5))
    with pytest.raises(ValueError, match="depth_probs"):
        depth_loss(probs[0], target, (1.0, 3.0, 0.5))
    with pytest.raises(TypeError, match="bins"):
        depth_loss(probs, target, (1.0, 3.0))
    with pytest.raises(ValueError, match="bins"):
        depth_loss(probs, target, (1.0, 3.0, -0.5))


# ----------------------------------------------------------------------------- KD baselines
def test_feature_alignment_value_adapter_and_gradients():
    g = _gen(18)
    student = torch.randn(2, 3, 4, 5, generator=g)
    teacher = torch.randn(2, 3, 4, 5, generator=g)
    assert torch.allclose(feature_alignment_loss(student, teacher),
                          ((student - teacher) ** 2).mean(), rtol=1e-6)
    s64 = student.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda s: feature_alignment_loss(s, teacher.double()), (s64,))
    # A learnable adapter when channels differ (Conv2d for BEV, Conv3d for voxels).
    module = FeatureAlignment(3, 6)
    assert isinstance(module.adapter, torch.nn.Conv2d)
    assert isinstance(FeatureAlignment(3, 3).adapter, torch.nn.Identity)
    assert isinstance(FeatureAlignment(2, 4, dims=3).adapter, torch.nn.Conv3d)
    student.requires_grad_()
    teacher6 = torch.randn(2, 6, 4, 5, generator=g, requires_grad=True)
    loss = module(student, teacher6)
    with torch.no_grad():
        expected = ((module.adapter(student) - teacher6) ** 2).mean()
    assert torch.allclose(loss, expected, rtol=1e-6)
    loss.backward()
    assert teacher6.grad is None
    assert student.grad.abs().sum() > 0 and module.adapter.weight.grad.abs().sum() > 0
    voxels = FeatureAlignment(2, 4, dims=3)(torch.randn(1, 2, 2, 3, 3), torch.randn(1, 4, 2, 3, 3))
    assert voxels.ndim == 0 and voxels.item() > 0


def test_feature_alignment_errors():
    with pytest.raises(ValueError, match="adapter"):
        feature_alignment_loss(torch.randn(1, 3, 2, 2), torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="student"):
        feature_alignment_loss(torch.randn(1, 3, 2), torch.randn(1, 3, 2))
    with pytest.raises(ValueError, match="student"):
        FeatureAlignment(3, 4)(torch.randn(1, 3, 2, 2, 2), torch.randn(1, 4, 2, 2, 2))
    with pytest.raises(ValueError, match="dims"):
        FeatureAlignment(3, 4, dims=1)


def test_logit_alignment_matches_kl_div():
    g = _gen(19)
    student = torch.randn(2, 2, 3, 2, 4, generator=g)
    teacher = torch.randn(2, 2, 3, 2, 4, generator=g)
    mask = torch.rand(2, 2, 3, 2, generator=g) > 0.5
    for temperature in (1.0, 2.0):
        per_voxel = F.kl_div(torch.log_softmax(student / temperature, -1),
                             torch.softmax(teacher / temperature, -1), reduction="none").sum(-1)
        expected = per_voxel[mask].mean() * temperature ** 2
        loss = logit_alignment_loss(student, teacher, mask, temperature)
        assert torch.allclose(loss, expected, rtol=1e-5)
    assert torch.allclose(logit_alignment_loss(student, teacher),
                          F.kl_div(torch.log_softmax(student, -1), torch.softmax(teacher, -1),
                                   reduction="none").sum(-1).mean(), rtol=1e-5)


def test_logit_alignment_gradients_empty_mask_and_errors():
    g = _gen(20)
    student = torch.randn(1, 2, 2, 1, 3, dtype=torch.float64, generator=g).requires_grad_()
    teacher = torch.randn(1, 2, 2, 1, 3, dtype=torch.float64, generator=g)
    mask = torch.tensor([[[[True], [False]], [[True], [True]]]])
    assert torch.autograd.gradcheck(lambda s: logit_alignment_loss(s, teacher, mask, 2.0),
                                    (student,))
    teacher.requires_grad_()
    logit_alignment_loss(student, teacher, mask).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    student.grad = None
    loss = logit_alignment_loss(student, teacher, torch.zeros_like(mask))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(student.grad == 0)
    with pytest.raises(ValueError, match="teacher_logits"):
        logit_alignment_loss(student, teacher[..., :2])
    with pytest.raises(ValueError, match="temperature"):
        logit_alignment_loss(student, teacher, temperature=0.0)
    with pytest.raises(ValueError, match="mask"):
        logit_alignment_loss(student, teacher, mask[..., 0])


# ----------------------------------------------------------------------------- all losses
def test_identical_teacher_and_student_give_zero():
    g = _gen(21)
    rows = _distributions(2, 6, 5, generator=g)
    assert rdc_loss(rows, rows.clone()).item() == pytest.approx(0.0, abs=1e-7)
    ids = torch.randint(0, 4, (2, 6), generator=g)
    features = torch.rand(2, 6, 3, generator=g)
    assert rsc_loss(features, features.clone(), ids).item() == pytest.approx(0.0, abs=1e-6)
    assert rsc_loss(features, features.clone(), mode="kl").item() == pytest.approx(0.0, abs=1e-7)
    bev = torch.randn(1, 3, 4, 4, generator=g)
    assert feature_alignment_loss(bev, bev.clone()).item() == 0.0
    assert FeatureAlignment(3, 3)(bev, bev.clone()).item() == 0.0
    logits = torch.randn(1, 2, 2, 2, 4, generator=g)
    assert logit_alignment_loss(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-7)
    # The supervised losses are 0 when the prediction is the (one-hot) target.
    labels = torch.randint(0, 4, (1, 2, 2, 2), generator=g)
    confident = F.one_hot(labels, 4).float() * 200.0
    assert occupancy_loss(confident, labels).item() == pytest.approx(0.0, abs=1e-6)
    target = torch.tensor([[[[1.2, 2.6]]]])
    one_hot = F.one_hot(torch.tensor([[[[0, 3]]]]), 4).permute(0, 1, 4, 2, 3).float()
    assert depth_loss(one_hot, target, (1.0, 3.0, 0.5)).item() == pytest.approx(0.0, abs=1e-4)
