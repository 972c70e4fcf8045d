"""MapTR matching and losses, MapDistill distillation losses (radocc.map_losses)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from radocc.map_losses import (MAP_LOSS_WEIGHTS, MapTarget, denormalize_points,
                               feature_distillation_loss, focal_cost, head_distillation_loss,
                               hungarian_match, maptr_loss, normalize_points,
                               relation_distillation_loss, relation_matrices)

P = 20


def line(x0: float, y0: float, x1: float, y1: float, n: int = P) -> torch.Tensor:
    """[n, 2] points from (x0, y0) to (x1, y1)."""
    t = torch.linspace(0, 1, n)[:, None]
    return torch.tensor([x0, y0]) * (1 - t) + torch.tensor([x1, y1]) * t


def open_orderings(pts: torch.Tensor, s: int = 19) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's padding for an open polyline: forward, reversed, then row 0 repeated."""
    rows = [pts, pts.flip(0)] + [pts] * (s - 2)
    valid = torch.zeros(s, dtype=torch.bool)
    valid[:2] = True
    return torch.stack(rows), valid


def ring_orderings(pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A closed ring of P points (last == first): its P - 1 cyclic shifts."""
    body = pts[:-1]
    rows = [torch.cat([body.roll(-k, 0), body.roll(-k, 0)[:1]]) for k in range(len(body))]
    return torch.stack(rows), torch.ones(len(rows), dtype=torch.bool)


def ring(cx: float, cy: float, r: float) -> torch.Tensor:
    a = torch.linspace(0, 2 * math.pi, P)
    pts = torch.stack([cx + r * a.cos(), cy + r * a.sin()], 1)
    pts[-1] = pts[0]
    return pts


def confident(labels: list[int], num_classes: int = 3) -> torch.Tensor:
    """Logits: +4 on the given class of each query, -4 elsewhere."""
    logits = torch.full((len(labels), num_classes), -4.0)
    logits[torch.arange(len(labels)), torch.tensor(labels)] = 4.0
    return logits


# ----------------------------------------------------------------------------- matching
def test_permutation_is_recovered():
    gts = torch.stack([line(0.1, 0.1, 0.2, 0.9), line(0.5, 0.2, 0.6, 0.3),
                       line(0.9, 0.9, 0.7, 0.1), line(0.3, 0.5, 0.4, 0.5)])
    labels = torch.tensor([0, 2, 1, 0])
    perm = torch.tensor([2, 0, 3, 1])  # prediction i is gt perm[i]
    valid = torch.zeros(4, 2, dtype=torch.bool)
    valid[:, 0] = True
    m = hungarian_match(confident(labels[perm].tolist()), gts[perm],
                        labels, torch.stack([gts, gts], 1), valid)
    assert m.pred_idx.tolist() == [0, 1, 2, 3]
    assert m.gt_idx.tolist() == perm.tolist()
    assert m.ordering_idx.tolist() == [0, 0, 0, 0]
    assert m.pred_idx.dtype == m.gt_idx.dtype == m.ordering_idx.dtype == torch.int64


def test_reversed_polyline_matches_ordering_1_with_zero_point_cost():
    gt = line(0.2, 0.1, 0.4, 0.8)
    orderings, valid = open_orderings(gt)
    pred = torch.stack([line(0.9, 0.9, 0.8, 0.8), gt.flip(0)])
    m = hungarian_match(confident([0, 0]), pred, torch.tensor([0]), orderings[None], valid[None])
    assert (m.pred_idx.tolist(), m.gt_idx.tolist(), m.ordering_idx.tolist()) == ([1], [0], [1])
    assert (pred[1] - orderings[m.ordering_idx[0]]).abs().sum() == 0


def test_shifted_ring_matches_its_cyclic_shift():
    gt = ring(0.5, 0.5, 0.2)
    orderings, valid = ring_orderings(gt)
    assert orderings.shape == (19, P, 2)
    pred = orderings[7].clone()
    m = hungarian_match(confident([1]), pred[None], torch.tensor([1]), orderings[None],
                        valid[None])
    assert m.ordering_idx.tolist() == [7]
    assert torch.equal(orderings[0, 0], gt[0]) and not torch.equal(pred[0], gt[0])


def test_invalid_orderings_are_never_chosen():
    gt = line(0.2, 0.1, 0.4, 0.8)
    pred = line(0.6, 0.1, 0.6, 0.8)
    orderings, valid = open_orderings(gt, s=4)
    orderings[3] = pred  # padding that happens to equal the prediction, but marked invalid
    m = hungarian_match(confident([0]), pred[None], torch.tensor([0]), orderings[None],
                        valid[None])
    assert m.ordering_idx.item() in (0, 1)


def test_class_cost_decides_between_identical_geometries():
    gt = line(0.2, 0.2, 0.8, 0.8)
    gts = torch.stack([gt, gt])[:, None]
    valid = torch.ones(2, 1, dtype=torch.bool)
    m = hungarian_match(confident([2, 1]), torch.stack([gt, gt]), torch.tensor([1, 2]), gts, valid)
    assert m.gt_idx.tolist() == [1, 0]  # query 0 says boundary (gt 1), query 1 ped (gt 0)


def test_empty_ground_truth_and_fewer_predictions():
    m = hungarian_match(torch.randn(5, 3), torch.rand(5, P, 2), torch.zeros(0, dtype=torch.long),
                        torch.zeros(0, 2, P, 2), torch.zeros(0, 2, dtype=torch.bool))
    assert [t.numel() for t in m] == [0, 0, 0]
    gts = torch.rand(4, 1, P, 2)
    m = hungarian_match(torch.randn(2, 3), torch.rand(2, P, 2), torch.tensor([0, 1, 2, 0]), gts,
                        torch.ones(4, 1, dtype=torch.bool))
    assert m.pred_idx.tolist() == [0, 1] and len(set(m.gt_idx.tolist())) == 2


def test_focal_cost_formula():
    logits = torch.tensor([[0.3, -1.2, 2.0]])
    p = logits.sigmoid()[0, 2]
    pos = -0.25 * (1 - p) ** 2 * torch.log(p)
    neg = -0.75 * p ** 2 * torch.log(1 - p)
    torch.testing.assert_close(focal_cost(logits, torch.tensor([2]))[0, 0], pos - neg)


def test_matching_is_optimal_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        n, m, s = 5, 3, 2
        logits = torch.randn(n, 3, generator=gen)
        pred = torch.rand(n, P, 2, generator=gen)
        labels = torch.randint(0, 3, (m,), generator=gen)
        orderings = torch.rand(m, s, P, 2, generator=gen)
        valid = torch.ones(m, s, dtype=torch.bool)
        valid[0, 1] = False
        match = hungarian_match(logits, pred, labels, orderings, valid)

        def cost(i: int, j: int) -> float:
            pts = min(float((pred[i] - orderings[j, k]).abs().sum()) for k in range(s)
                      if valid[j, k])
            return 2.0 * float(focal_cost(logits, labels)[i, j]) + 5.0 * pts

        best = min(sum(cost(i, j) for j, i in enumerate(rows))
                   for rows in itertools.permutations(range(n), m))
        got = sum(cost(i, j) for i, j in zip(match.pred_idx.tolist(), match.gt_idx.tolist()))
        assert got == pytest.approx(best, rel=1e-5)
        for i, j, k in zip(*[t.tolist() for t in match]):
            d = [float((pred[i] - orderings[j, kk]).abs().sum()) if valid[j, kk] else math.inf
                 for kk in range(s)]
            assert k == min(range(s), key=d.__getitem__)


@pytest.mark.parametrize("change, match", [
    (dict(cls_logits=torch.randn(3)), "cls_logits must be \\[N, C\\]"),
    (dict(pred_points=torch.rand(2, P, 2)), "pred_points must be \\[N, P, 2\\]"),
    (dict(gt_orderings=torch.rand(1, 2, P + 1, 2)), "gt_orderings must be"),
    (dict(gt_labels=torch.tensor([3])), "gt_labels has labels in \\[3, 3\\], outside \\[0, 3\\)"),
    (dict(gt_labels=torch.tensor([0.0])), "gt_labels must be an integer"),
    (dict(gt_ordering_valid=torch.ones(1, 2)), "gt_ordering_valid must be a bool"),
    (dict(gt_ordering_valid=torch.zeros(1, 2, dtype=torch.bool)), "instance 0 has no valid"),
    (dict(cls_logits=torch.full((3, 3), math.nan)), "cls_logits has non-finite"),
    (dict(pred_points=torch.full((3, P, 2), math.inf)), "pred_points has non-finite"),
])
def test_matching_bad_input(change, match):
    args = dict(cls_logits=torch.randn(3, 3), pred_points=torch.rand(3, P, 2),
                gt_labels=torch.tensor([1]), gt_orderings=torch.rand(1, 2, P, 2),
                gt_ordering_valid=torch.ones(1, 2, dtype=torch.bool))
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        hungarian_match(**args)


# ----------------------------------------------------------------------------- MapTR losses
def one_gt_target(gt_m: torch.Tensor, label: int = 0, reversible: bool = True) -> MapTarget:
    orderings, valid = open_orderings(gt_m, s=2)
    if not reversible:
        valid[1] = False
    return MapTarget(torch.tensor([label]), orderings[None], valid[None])


def test_focal_loss_value_on_a_known_case():
    gt_m = line(-5.0, -20.0, 5.0, 20.0)
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, -2.0], [0.0, 0.0, 0.0]])
    pts = torch.rand(3, P, 2)
    pts[1] = normalize_points(gt_m)  # query 1 matches the gt (class 0) by its points
    out = maptr_loss(logits[None, None], pts[None, None], [one_gt_target(gt_m)])
    target = torch.zeros(3, 3)
    target[1, 0] = 1.0
    p = logits.sigmoid()
    by_hand = torch.where(target > 0, -0.25 * (1 - p) ** 2 * p.log(),
                          -0.75 * p ** 2 * (1 - p).log()).sum()
    torch.testing.assert_close(out["map_cls"], 2.0 * by_hand)
    torch.testing.assert_close(
        out["map_cls"], 2.0 * sigmoid_focal_loss(logits, target, 0.25, 2.0, reduction="sum"))
    assert out["map_pts"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["map_dir"].item() == pytest.approx(0.0, abs=1e-6)


def test_point_loss_is_summed_l1_per_matched_instance():
    gt_m = line(-5.0, -20.0, 5.0, 20.0)
    pred = normalize_points(gt_m) + torch.tensor([0.01, -0.02])
    out = maptr_loss(confident([0])[None, None], pred[None, None, None], [one_gt_target(gt_m)])
    assert out["map_pts"].item() == pytest.approx(5.0 * P * 0.03, rel=1e-4)
    assert out["map_dir"].item() == pytest.approx(0.0, abs=1e-6)  # shifted: edges parallel


def test_direction_loss_zero_for_parallel_positive_for_reversed_edges():
    gt_m = line(-5.0, -20.0, 5.0, 20.0)
    rev = normalize_points(gt_m).flip(0)
    # Only the forward ordering is valid: the reversed prediction keeps reversed edges.
    out = maptr_loss(confident([0])[None, None], rev[None, None, None],
                     [one_gt_target(gt_m, reversible=False)])
    assert out["map_dir"].item() == pytest.approx(0.005 * 2.0 * (P - 1), rel=1e-5)
    # Allowed to reverse, it matches ordering 1: no point or direction loss.
    out = maptr_loss(confident([0])[None, None], rev[None, None, None], [one_gt_target(gt_m)])
    assert out["map_pts"].item() == pytest.approx(0.0, abs=1e-5)
    assert out["map_dir"].item() == pytest.approx(0.0, abs=1e-6)


def test_direction_loss_is_on_metric_edges():
    gt_m = line(-10.0, -10.0, 10.0, 10.0)  # 45 degrees in metres
    diag_n = line(0.2, 0.2, 0.8, 0.8)  # 45 degrees in normalised coordinates: not in metres
    metric = normalize_points(line(-10.0, -10.0, 10.0, 10.0)) + torch.tensor([0.1, 0.0])
    target = [one_gt_target(gt_m, reversible=False)]
    skewed = maptr_loss(confident([0])[None, None], diag_n[None, None, None], target)
    parallel = maptr_loss(confident([0])[None, None], metric[None, None, None], target)
    cos = (30 * 1 + 60 * 1) / (math.hypot(30, 60) * math.sqrt(2))
    assert skewed["map_dir"].item() == pytest.approx(0.005 * (P - 1) * (1 - cos), rel=1e-4)
    assert parallel["map_dir"].item() == pytest.approx(0.0, abs=1e-6)


def test_each_layer_matched_separately_and_summed():
    g0, g1 = line(-10.0, -20.0, -10.0, 20.0), line(10.0, -20.0, 10.0, 20.0)
    target = MapTarget(torch.tensor([0, 0]), torch.stack([g0, g1])[:, None],
                       torch.ones(2, 1, dtype=torch.bool))
    layer0 = normalize_points(torch.stack([g0, g1]))
    layer1 = layer0.flip(0)  # the queries swap roles in the second layer
    points = torch.stack([layer0, layer1])[:, None]
    logits = confident([0, 0])[None, None].expand(2, 1, 2, 3)
    out = maptr_loss(logits, points, [target])
    assert out["map_pts"].item() == pytest.approx(0.0, abs=1e-5)
    single = maptr_loss(logits[:1], points[:1], [target])
    torch.testing.assert_close(out["map_cls"], 2 * single["map_cls"])


def test_normalised_by_number_of_gt_over_the_batch():
    gt_m = line(-5.0, -20.0, 5.0, 20.0)
    pred = (normalize_points(gt_m) + 0.01)[None, None, None]
    logits = torch.randn(1, 1, 1, 3)
    one = maptr_loss(logits, pred, [one_gt_target(gt_m)])
    two = maptr_loss(logits.expand(1, 2, 1, 3), pred.expand(1, 2, 1, P, 2),
                     [one_gt_target(gt_m)] * 2)
    for key in one:
        torch.testing.assert_close(two[key], one[key])


def test_no_ground_truth_gives_background_loss_and_zero_point_loss():
    logits = torch.randn(2, 2, 4, 3, requires_grad=True)
    points = torch.rand(2, 2, 4, P, 2, requires_grad=True)
    empty = MapTarget(torch.zeros(0, dtype=torch.long), torch.zeros(0, 19, P, 2),
                      torch.zeros(0, 19, dtype=torch.bool))
    out = maptr_loss(logits, points, [empty, empty])
    expect = sum(2.0 * sigmoid_focal_loss(logits[i], torch.zeros(2, 4, 3), reduction="sum")
                 for i in range(2))
    torch.testing.assert_close(out["map_cls"], expect)
    assert out["map_pts"].item() == 0.0 and out["map_dir"].item() == 0.0
    sum(out.values()).backward()
    assert points.grad is not None and points.grad.abs().sum() == 0
    assert logits.grad.abs().sum() > 0


def test_dataset_mapping_targets_and_gradients():
    gen = torch.Generator().manual_seed(1)
    ring_m = ring(3.0, 5.0, 2.0)
    orderings, valid = ring_orderings(ring_m)
    item = {"map_labels": torch.tensor([1]), "map_orderings": orderings[None],
            "map_ordering_valid": valid[None]}
    logits = torch.randn(2, 1, 6, 3, generator=gen, requires_grad=True)
    points = torch.rand(2, 1, 6, P, 2, generator=gen, requires_grad=True)
    a = maptr_loss(logits, points, [item])
    b = maptr_loss(logits, points, [MapTarget(torch.tensor([1]), orderings[None], valid[None])])
    for key in a:
        torch.testing.assert_close(a[key], b[key])
        assert a[key].item() > 0
    sum(a.values()).backward()
    assert logits.grad.abs().sum() > 0 and points.grad.abs().sum() > 0


def test_maptr_loss_bad_input():
    logits, points = torch.randn(1, 1, 3, 3), torch.rand(1, 1, 3, P, 2)
    good = one_gt_target(line(0.0, 0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="targets must be a sequence of B = 1"):
        maptr_loss(logits, points, [good, good])
    with pytest.raises(ValueError, match="points must be \\[L, B, N, P, 2\\]"):
        maptr_loss(logits, torch.rand(1, 1, 4, P, 2), [good])
    with pytest.raises(ValueError, match="targets\\[0\\].orderings must be"):
        maptr_loss(logits, points, [MapTarget(good.labels, good.orderings[:, :, :5],
                                              good.ordering_valid)])
    with pytest.raises(ValueError, match="targets\\[0\\].labels has labels"):
        maptr_loss(logits, points, [MapTarget(torch.tensor([7]), good.orderings,
                                              good.ordering_valid)])
    with pytest.raises(ValueError, match="targets\\[0\\].orderings has non-finite"):
        maptr_loss(logits, points, [MapTarget(good.labels, good.orderings * math.nan,
                                              good.ordering_valid)])
    with pytest.raises(TypeError, match="targets\\[0\\].ordering_valid must be a bool"):
        maptr_loss(logits, points, [MapTarget(good.labels, good.orderings,
                                              good.ordering_valid.float())])
    with pytest.raises(ValueError, match="targets\\[0\\].ordering_valid: instance 0 has no"):
        maptr_loss(logits, points, [MapTarget(good.labels, good.orderings,
                                              good.ordering_valid & False)])
    with pytest.raises(ValueError, match="without 'map_orderings'"):
        maptr_loss(logits, points, [{"map_labels": good.labels}])
    with pytest.raises(ValueError, match="pc_range"):
        maptr_loss(logits, points, [good], pc_range=(15, -30, -15, 30))
    with pytest.raises(ValueError, match="dir_weight"):
        maptr_loss(logits, points, [good], dir_weight=-1.0)


def test_normalize_round_trip():
    x = torch.tensor([[-15.0, -30.0], [15.0, 30.0], [0.0, 0.0]])
    torch.testing.assert_close(normalize_points(x), torch.tensor([[0.0, 0.0], [1.0, 1.0],
                                                                 [0.5, 0.5]]))
    torch.testing.assert_close(denormalize_points(normalize_points(x)), x)


# ----------------------------------------------------------------------------- relation
def bev(seed: int, b: int = 2, c: int = 6, h: int = 8, w: int = 4) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_relation_matrices_by_hand():
    a, b = bev(0), bev(1)
    a_ab, a_ba = relation_matrices(a, b, 2)
    assert a_ab.shape == (2, 8, 8)
    torch.testing.assert_close(a_ab.sum(-1), torch.ones(2, 8))
    # Patch tokens by hand: 2 x 2 means, patches in row-major order (4 rows x 2 cols).
    tok = lambda x: torch.stack([x[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].mean((2, 3))  # noqa
                                 for r in range(4) for c in range(2)], 1)
    ta, tb = tok(a), tok(b)
    torch.testing.assert_close(a_ab, (ta @ tb.transpose(1, 2) / math.sqrt(6)).softmax(-1))
    torch.testing.assert_close(a_ba, (tb @ ta.transpose(1, 2) / math.sqrt(6)).softmax(-1))
    flat_ab, _ = relation_matrices(a, b, (2, 2), tokens="flatten")
    fa = torch.stack([a[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].flatten(1)
                      for r in range(4) for c in range(2)], 1)
    fb = torch.stack([b[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].flatten(1)
                      for r in range(4) for c in range(2)], 1)
    torch.testing.assert_close(flat_ab, (fa @ fb.transpose(1, 2) / math.sqrt(24)).softmax(-1))


def test_relation_loss_zero_for_equal_relations_positive_otherwise():
    sa, sb, ta, tb = bev(0), bev(1), bev(2), bev(3)
    assert relation_distillation_loss(ta, tb, ta, tb, 2).item() == pytest.approx(0.0, abs=1e-6)
    loss = relation_distillation_loss(sa, sb, ta, tb, 2)
    assert loss.item() > 1e-3
    # By hand: KL of each row, mean over rows, both directions summed.
    s_ab, s_ba = relation_matrices(sa, sb, 2)
    t_ab, t_ba = relation_matrices(ta, tb, 2)
    kl = lambda t, s: (t * (t.log() - s.log())).sum(-1).mean()  # noqa: E731
    torch.testing.assert_close(loss, kl(t_ab, s_ab) + kl(t_ba, s_ba))


def test_relation_loss_invariances():
    sa, sb, ta, tb = bev(0), bev(1), bev(2), bev(3)
    base = relation_distillation_loss(sa, sb, ta, tb, 2)
    # An orthogonal change of the student's channels (the same for both BEVs) keeps every
    # relation: the loss distils relations, not features.
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(9)))
    rot = lambda x: torch.einsum("dc,bchw->bdhw", q, x)  # noqa: E731
    torch.testing.assert_close(relation_distillation_loss(rot(sa), rot(sb), ta, tb, 2), base)
    assert relation_distillation_loss(rot(ta), rot(tb), ta, tb, 2).item() < 1e-6
    # Batch order does not matter; the teacher may have another channel count.
    torch.testing.assert_close(
        relation_distillation_loss(sa.flip(0), sb.flip(0), ta.flip(0), tb.flip(0), 2), base)
    wide_t = torch.cat([ta, torch.zeros_like(ta)], 1)
    wide_tb = torch.cat([tb, torch.zeros_like(tb)], 1)
    # Zero channels add nothing to the dot products but change d (sqrt(12) vs sqrt(6)).
    assert relation_distillation_loss(sa, sb, wide_t, wide_tb, 2).item() > 0


def test_relation_loss_gradients_reach_the_student_only():
    sa, sb = bev(0).requires_grad_(), bev(1).requires_grad_()
    ta, tb = bev(2).requires_grad_(), bev(3).requires_grad_()
    relation_distillation_loss(sa, sb, ta, tb, (4, 2)).backward()
    assert sa.grad.abs().sum() > 0 and sb.grad.abs().sum() > 0
    assert ta.grad is None and tb.grad is None


def test_relation_loss_gradcheck():
    sa = bev(0, 1, 3, 4, 4).double().requires_grad_()
    sb = bev(1, 1, 3, 4, 4).double().requires_grad_()
    ta, tb = bev(2, 1, 3, 4, 4).double(), bev(3, 1, 3, 4, 4).double()
    assert torch.autograd.gradcheck(
        lambda a, b: relation_distillation_loss(a, b, ta, tb, 2), (sa, sb), fast_mode=True)


def test_relation_loss_low_precision_inputs_give_float32():
    sa, sb, ta, tb = (bev(i).bfloat16() for i in range(4))
    assert relation_distillation_loss(sa, sb, ta, tb, 2).dtype == torch.float32


@pytest.mark.parametrize("args, match", [
    (dict(student_b=bev(1, c=5)), "student_a and student_b must have the same shape"),
    (dict(teacher_a=bev(2, h=4), teacher_b=bev(3, h=4)), "share B, H and W"),
    (dict(patch_size=3), "must be >= 1 and divide the BEV"),
    (dict(patch_size=(2, 2, 2)), "patch_size must be an int or"),
    (dict(student_a=torch.zeros(2, 6, 8)), "student_a must be \\[B, C, H, W\\]"),
    (dict(tokens="max"), "tokens must be 'mean' or 'flatten'"),
])
def test_relation_loss_bad_input(args, match):
    kw = dict(student_a=bev(0), student_b=bev(1), teacher_a=bev(2), teacher_b=bev(3),
              patch_size=2)
    kw.update(args)
    with pytest.raises((ValueError, TypeError), match=match):
        relation_distillation_loss(**kw)


# ----------------------------------------------------------------------------- feature
def test_feature_loss_is_mse_with_adapter_and_teacher_detached():
    s = bev(0, c=4).requires_grad_()
    t = bev(1, c=6).requires_grad_()
    adapter = torch.nn.Conv2d(4, 6, 1)
    loss = feature_distillation_loss(s, t, adapter)
    torch.testing.assert_close(loss, ((adapter(s) - t) ** 2).mean())
    loss.backward()
    assert s.grad.abs().sum() > 0 and adapter.weight.grad.abs().sum() > 0 and t.grad is None
    assert feature_distillation_loss(t, t).item() == 0.0
    q = torch.randn(2, 5, P, 8)  # decoder query features [B, N, P, C]
    torch.testing.assert_close(feature_distillation_loss(q, q + 0.5), torch.tensor(0.25))
    with pytest.raises(ValueError, match="pass an adapter"):
        feature_distillation_loss(s, t)
    with pytest.raises(ValueError, match="adapter\\(student\\) and teacher"):
        feature_distillation_loss(s, t[:, :5], adapter)
    with pytest.raises(TypeError, match="teacher must be a floating-point"):
        feature_distillation_loss(s, t.long())


# ----------------------------------------------------------------------------- head
def test_head_distillation_matches_pseudo_labels():
    gen = torch.Generator().manual_seed(4)
    t_pts = torch.rand(1, 4, P, 2, generator=gen)
    t_cls = torch.tensor([[[3.0, -3, -3], [-3, -3, -3], [-3, -3, 2.0], [-3, -1.0, -3]]])
    # Pseudo labels: queries 0 (class 0) and 2 (class 2); query 3 scores 0.27 < 0.4.
    perm = torch.tensor([2, 3, 0, 1])  # student query i holds teacher query perm[i]
    s_pts = t_pts[:, perm].clone().requires_grad_()
    s_cls = torch.randn(1, 4, 3, generator=gen).requires_grad_()
    t_pts.requires_grad_()
    t_cls.requires_grad_()
    out = head_distillation_loss(s_cls, s_pts, t_cls, t_pts, score_threshold=0.4)
    assert out["head_pts"].item() == pytest.approx(0.0, abs=1e-6)
    target = torch.zeros(1, 4, 3)
    target[0, 2, 0] = 1.0  # student query 2 holds teacher query 0 (class 0)
    target[0, 0, 2] = 1.0  # student query 0 holds teacher query 2 (class 2)
    torch.testing.assert_close(out["head_cls"],
                               sigmoid_focal_loss(s_cls, target, reduction="sum") / 2)
    # Manhattan distance per pseudo label.
    shifted = head_distillation_loss(s_cls, s_pts + 0.01, t_cls, t_pts, 0.4)
    assert shifted["head_pts"].item() == pytest.approx(P * 2 * 0.01, rel=1e-4)
    (shifted["head_cls"] + shifted["head_pts"]).backward()
    assert s_cls.grad.abs().sum() > 0 and s_pts.grad.abs().sum() > 0
    assert t_cls.grad is None and t_pts.grad is None


def test_head_distillation_threshold_and_empty():
    t_cls = torch.full((2, 3, 3), -5.0)
    s_cls, s_pts, t_pts = torch.randn(2, 3, 3), torch.rand(2, 3, P, 2), torch.rand(2, 3, P, 2)
    out = head_distillation_loss(s_cls, s_pts, t_cls, t_pts, 0.4)
    torch.testing.assert_close(out["head_cls"],
                               sigmoid_focal_loss(s_cls, torch.zeros(2, 3, 3), reduction="sum"))
    assert out["head_pts"].item() == 0.0
    # Threshold 0: every teacher query is a pseudo label.
    out0 = head_distillation_loss(s_cls, s_pts, t_cls, t_pts, 0.0)
    assert out0["head_pts"].item() > 0


def test_head_distillation_bad_input():
    s_cls, s_pts = torch.randn(2, 3, 3), torch.rand(2, 3, P, 2)
    with pytest.raises(ValueError, match="teacher_cls must be"):
        head_distillation_loss(s_cls, s_pts, torch.randn(2, 3, 4), s_pts)
    with pytest.raises(ValueError, match="teacher_points must be"):
        head_distillation_loss(s_cls, s_pts, s_cls, torch.rand(2, 3, P + 1, 2))
    with pytest.raises(ValueError, match="score_threshold"):
        head_distillation_loss(s_cls, s_pts, s_cls, s_pts, 1.5)
    with pytest.raises(ValueError, match="student_points must be"):
        head_distillation_loss(s_cls, torch.rand(2, 4, P, 2), s_cls, s_pts)


def test_map_loss_weights_are_the_released_defaults():
    assert MAP_LOSS_WEIGHTS == {"relation": 1.0, "feature_bev": 1.0, "feature_decoder": 1.0,
                                "head_cls": 0.1, "head_pts": 0.1}
    out = head_distillation_loss(torch.randn(1, 2, 3), torch.rand(1, 2, P, 2),
                                 torch.randn(1, 2, 3), torch.rand(1, 2, P, 2))
    assert set(out) <= set(MAP_LOSS_WEIGHTS)
