"""ChamferMapAP (MapTR's Chamfer-distance AP) on hand-made cases, against an independent
loop-by-loop reference written from MapTR's description, and across 2 gloo ranks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from shapely.geometry import CAP_STYLE, JOIN_STYLE, LineString

import radocc.metrics
from radocc.map_metrics import (ChamferMapAP, average_precision, chamfer_matrix,
                                resample_polyline)

DIVIDER, PED, BOUNDARY = 0, 1, 2


def straight(x: float = 0.0, y0: float = -10.0, y1: float = 10.0, n: int = 20) -> np.ndarray:
    """A line along y (forward) at lateral offset x, metres."""
    return np.stack([np.full(n, x), np.linspace(y0, y1, n)], axis=1)


def ring(cx: float, cy: float, r: float = 3.0, n: int = 20) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)


def single(pred: np.ndarray, gt: np.ndarray, label: int = DIVIDER, **kw) -> dict:
    m = ChamferMapAP(**kw)
    m.update(pred[None], [0.9], [label], [gt], [label])
    return m.compute()


# ----------------------------------------------------------------------------- hand-made cases
def test_reexported_from_radocc_metrics():
    assert radocc.metrics.ChamferMapAP is ChamferMapAP
    assert "ChamferMapAP" in radocc.metrics.__all__


def test_perfect_prediction_gives_100():
    gts = [straight(-5.0), ring(5.0, 10.0), straight(8.0, -25.0, 25.0, n=3)]
    labels = [DIVIDER, PED, BOUNDARY]
    m = ChamferMapAP()
    # Predictions with 20 points; the gt as its original geometry (the boundary has 3 vertices).
    preds = np.stack([resample_polyline(g, 20) for g in gts])
    m.update(preds, [0.9, 0.8, 0.7], labels, gts, labels)
    out = m.compute()
    assert out["mAP"] == pytest.approx(100.0)
    assert out["AP"] == {n: {0.5: pytest.approx(100.0), 1.0: pytest.approx(100.0),
                             1.5: pytest.approx(100.0)}
                         for n in ("divider", "ped_crossing", "boundary")}


@pytest.mark.parametrize("d, expected", [
    (0.5 - 1e-6, (100, 100, 100)), (0.5 + 1e-6, (0, 100, 100)),
    (1.0 - 1e-6, (0, 100, 100)), (1.0 + 1e-6, (0, 0, 100)),
    (1.5 - 1e-6, (0, 0, 100)), (1.5 + 1e-6, (0, 0, 0)),
])
def test_lateral_shift_crosses_each_threshold_where_expected(d, expected):
    gt = straight(0.0)
    out = single(straight(d), gt)
    assert [out["AP"]["divider"][t] for t in (0.5, 1.0, 1.5)] == pytest.approx(list(expected))
    # The other classes have no gt: 0, and they count in the mean over 3 x 3.
    assert out["mAP"] == pytest.approx(sum(expected) / 9)


def test_chamfer_of_shifted_line_is_the_shift_until_buffers_separate():
    gt = resample_polyline(straight(0.0), 100)[None]
    for d in (0.3, 1.7, 3.9):
        cd = chamfer_matrix(resample_polyline(straight(d), 100)[None], gt)
        assert cd[0, 0] == pytest.approx(d, abs=1e-9)
    # 2 m buffers: 4 m apart they no longer intersect.
    assert chamfer_matrix(resample_polyline(straight(4.01), 100)[None], gt)[0, 0] == np.inf


def test_duplicate_becomes_false_positive():
    # Two gts; p1 (0.9) matches g1, p2 (0.8) duplicates g1 -> FP, p3 (0.7) matches g2.
    # tp = [1, 0, 1], fp = [0, 1, 0]: recall [.5, .5, 1], precision [1, .5, 2/3];
    # envelope over recall steps: 0.5 * 1 + 0.5 * 2/3 = 5/6.
    g1, g2 = straight(-5.0), straight(5.0)
    m = ChamferMapAP()
    m.update(np.stack([g1, straight(-5.1), straight(5.2)]), [0.9, 0.8, 0.7], [0, 0, 0],
             [g1, g2], [0, 0])
    ap = m.compute()["AP"]["divider"]
    assert ap[0.5] == pytest.approx(100 * 5 / 6)
    # With the duplicate scored last it costs nothing: 1.0 at recall 1 comes first.
    m.reset()
    m.update(np.stack([g1, straight(-5.1), straight(5.2)]), [0.9, 0.1, 0.7], [0, 0, 0],
             [g1, g2], [0, 0])
    assert m.compute()["AP"]["divider"][0.5] == pytest.approx(100.0)


def test_no_fall_back_to_the_next_gt():
    # p2 is closest to g1 (claimed by p1) though within 1.0 m of g2 too: FP, g2 stays missed.
    g1, g2 = straight(0.0), straight(1.4)
    m = ChamferMapAP()
    m.update(np.stack([straight(0.0), straight(0.6)]), [0.9, 0.8], [0, 0], [g1, g2], [0, 0])
    ap = m.compute()["AP"]["divider"]
    # tp = [1, 0]: recall 0.5 at precision 1 -> AP 0.5 at every threshold.
    assert ap == {0.5: pytest.approx(50.0), 1.0: pytest.approx(50.0), 1.5: pytest.approx(50.0)}


def test_end_to_end_lines_pass_round_caps_but_fail_flat_caps():
    # Short lines 0.3 m apart end to end: Chamfer distance 0.4 (< 0.5), but flat-capped
    # buffers do not reach past the line ends.
    gt = straight(0.0, 0.0, 0.2)
    pred = straight(0.0, 0.5, 0.7)
    p, g = resample_polyline(pred, 100)[None], resample_polyline(gt, 100)[None]
    assert chamfer_matrix(p, g, cap_style="round")[0, 0] == pytest.approx(0.4, abs=1e-9)
    assert chamfer_matrix(p, g, cap_style="flat")[0, 0] == np.inf
    out = single(pred, gt)
    assert out["AP"]["divider"] == {0.5: 0.0, 1.0: 0.0, 1.5: 0.0}
    # Sanity: the same pair side by side (0.4 m lateral) does match.
    assert single(straight(0.4, 0.0, 0.2), gt)["AP"]["divider"][0.5] == pytest.approx(100.0)


def test_top_50_over_all_classes():
    gt = straight(0.0)
    decoys = np.stack([straight(12.0, -28.0 + i, -27.5 + i) for i in range(50)])  # far away
    preds = np.concatenate([decoys, gt[None]])
    scores = np.concatenate([np.linspace(0.9, 0.5, 50), [0.1]])
    labels = np.concatenate([np.full(50, BOUNDARY), [DIVIDER]])
    m = ChamferMapAP()
    m.update(preds, scores, labels, [gt], [DIVIDER])
    assert m.compute()["AP"]["divider"][0.5] == 0.0  # the true line is the 51st
    m = ChamferMapAP(max_predictions=51)
    m.update(preds, scores, labels, [gt], [DIVIDER])
    assert m.compute()["AP"]["divider"][0.5] == pytest.approx(100.0)
    # Ranked 51st within the class (50 divider decoys first): recall 1 at precision 1/51.
    m.reset()
    m.update(preds, scores, np.zeros(51, dtype=np.int64), [gt], [DIVIDER])
    assert m.compute()["AP"]["divider"][0.5] == pytest.approx(100 / 51)


def test_prediction_with_exactly_100_points_is_used_as_is():
    # 99 points bunched at one end and one at the other: as given (MapTR keeps 100-point
    # predictions) the gt's middle is far from every predicted point; resampled it would match.
    bunched = np.stack([np.full(100, 0.2), np.r_[np.linspace(-10, -9.9, 99), 10.0]], axis=1)
    assert single(bunched, straight(0.0))["AP"]["divider"][1.5] == 0.0
    assert single(bunched[1:], straight(0.0))["AP"]["divider"][0.5] == pytest.approx(100.0)


def test_class_without_gt_is_zero_and_counts_in_the_mean():
    gt = straight(0.0)
    m = ChamferMapAP()
    m.update(np.stack([gt, straight(5.0)]), [0.9, 0.8], [DIVIDER, PED], [gt], [DIVIDER])
    out = m.compute()
    assert out["AP"]["ped_crossing"] == {0.5: 0.0, 1.0: 0.0, 1.5: 0.0}
    assert out["AP"]["boundary"] == {0.5: 0.0, 1.0: 0.0, 1.5: 0.0}
    assert out["mAP"] == pytest.approx(100 / 3)


def test_gt_missed_in_one_sample_lowers_recall_across_samples():
    # Sample 1: one gt found; sample 2: one gt, no prediction. Recall 0.5 -> AP 50.
    gt = straight(0.0)
    m = ChamferMapAP()
    m.update(gt[None], [0.9], [0], [gt], [0])
    m.update(np.zeros((0, 20, 2)), [], [], [gt], [0])
    assert m.compute()["AP"]["divider"][1.0] == pytest.approx(50.0)


def test_gt_list_of_varying_length_equals_array_and_torch_inputs():
    gts = [straight(0.0, n=7), straight(4.0, n=33), ring(-6.0, 5.0, n=11)]
    preds = np.stack([straight(0.3), straight(4.7), ring(-6.0, 5.4)])
    scores, labels, g_labels = [0.9, 0.5, 0.7], [0, 0, 1], [0, 0, 1]
    a = ChamferMapAP()
    a.update(preds, scores, labels, gts, g_labels)
    b = ChamferMapAP()
    b.update(torch.tensor(preds, dtype=torch.float32), torch.tensor(scores),
             torch.tensor(labels), [torch.tensor(g) for g in gts], torch.tensor(g_labels))
    ra, rb = a.compute(), b.compute()
    assert ra["mAP"] == pytest.approx(rb["mAP"], abs=1e-6)
    assert 0 < ra["mAP"] < 100
    # Same-length gts as one [M, Q, 2] array.
    c = ChamferMapAP()
    c.update(preds[:2], scores[:2], labels[:2], np.stack([straight(0.0), straight(4.0)]), [0, 0])
    d = ChamferMapAP()
    d.update(preds[:2], scores[:2], labels[:2], [straight(0.0), straight(4.0)], [0, 0])
    assert c.compute() == d.compute()


def test_compute_is_repeatable_and_reset_forgets():
    m = ChamferMapAP()
    m.update(straight(0.7)[None], [0.9], [0], [straight(0.0)], [0])
    first = m.compute()
    assert m.compute() == first
    m.reset()
    assert m.compute()["mAP"] == 0.0


def test_resample_polyline_by_arc_length():
    line = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [3.0, 1.0]])  # length 4, a repeat
    out = resample_polyline(line, 5)
    np.testing.assert_allclose(out, [[0, 0], [1, 0], [2, 0], [3, 0], [3, 1]], atol=1e-12)
    ls = LineString(line)
    ref = np.array([ls.interpolate(t).coords[0] for t in np.linspace(0, ls.length, 100)])
    np.testing.assert_allclose(resample_polyline(line, 100), ref, atol=1e-12)
    np.testing.assert_allclose(resample_polyline(np.zeros((3, 2)), 4), np.zeros((4, 2)))


def test_average_precision_envelope():
    # precision [1, .5, 2/3] at recall [.5, .5, 1] -> 0.5 * 1 + 0.5 * 2/3.
    ap = average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(5 / 6)
    assert average_precision(np.zeros(0), np.zeros(0)) == 0.0


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(pred_lines=np.zeros((2, 20, 3))), "pred_lines must be"),
    (dict(pred_lines=np.zeros((2, 1, 2))), "pred_lines must have P >= 2"),
    (dict(pred_lines=np.full((2, 20, 2), np.nan)), "pred_lines has non-finite"),
    (dict(pred_scores=[0.5]), "pred_scores must be \\[2\\]"),
    (dict(pred_scores=[0.5, float("nan")]), "pred_scores has non-finite"),
    (dict(pred_labels=[0, 3]), "pred_labels has labels in \\[0, 3\\], outside \\[0, 3\\)"),
    (dict(pred_labels=[0, -1]), "pred_labels has labels"),
    (dict(gt_lines=np.zeros((1, 20))), "gt_lines must be"),
    (dict(gt_lines=[np.zeros((1, 2))]), "gt_lines\\[0\\] must have at least 2 points"),
    (dict(gt_lines=[np.array([[0.0, 0.0], [np.inf, 1.0]])]), "gt_lines\\[0\\] has non-finite"),
    (dict(gt_labels=[0, 1]), "gt_labels must be \\[1\\]"),
    (dict(gt_labels=[5]), "gt_labels has labels"),
])
def test_bad_input_names_the_argument(kwargs, match):
    args = dict(pred_lines=np.zeros((2, 20, 2)), pred_scores=[0.5, 0.4], pred_labels=[0, 1],
                gt_lines=[straight(0.0)], gt_labels=[0])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ChamferMapAP().update(**args)


def test_bad_dtypes_name_the_argument():
    m = ChamferMapAP()
    with pytest.raises(TypeError, match="pred_labels must hold integer"):
        m.update(np.zeros((1, 20, 2)), [0.5], [0.0], [straight()], [0])
    with pytest.raises(TypeError, match="gt_labels must hold integer"):
        m.update(np.zeros((1, 20, 2)), [0.5], [0], [straight()], np.array([True]))
    with pytest.raises(TypeError, match="pred_lines must hold real"):
        m.update(np.array([["a", "b"]] * 2)[None], [0.5], [0], [straight()], [0])


def test_bad_settings():
    with pytest.raises(ValueError, match="thresholds"):
        ChamferMapAP(thresholds=(0.5, -1.0))
    with pytest.raises(ValueError, match="class_names"):
        ChamferMapAP(class_names=())
    with pytest.raises(ValueError, match="max_predictions"):
        ChamferMapAP(max_predictions=0)


# ----------------------------------------------------------------------------- reference
def reference_map_ap(samples, num_classes=3, thresholds=(0.5, 1.0, 1.5)):
    """MapTR's evaluation written out plainly with shapely objects and loops: per sample top-50,
    shapely interpolate, flat-cap buffers, -CD score matrix with -100 for disjoint pairs,
    argmax, greedy, VOC area AP. Returns [C, T] fractions."""
    per_class = [[] for _ in range(num_classes)]  # (scores, tp [n, T], fp [n, T]) per sample
    num_gts = [0] * num_classes

    def interp(line, n=100):
        ls = LineString(line)
        return np.array([ls.interpolate(t).coords[0] for t in np.linspace(0, ls.length, n)])

    for pred, scores, labels, gts, g_labels in samples:
        top = np.argsort(-np.asarray(scores), kind="stable")[:50]
        for c in range(num_classes):
            p_idx = [i for i in top if labels[i] == c]
            g_list = [interp(g) for g, lab in zip(gts, g_labels) if lab == c]
            num_gts[c] += len(g_list)
            p_list = [np.asarray(pred[i]) if len(pred[i]) == 100 else interp(pred[i])
                      for i in p_idx]
            s = np.array([scores[i] for i in p_idx])
            tp = np.zeros((len(p_idx), len(thresholds)))
            fp = np.zeros((len(p_idx), len(thresholds)))
            if not p_idx:
                per_class[c].append((s, tp, fp))
                continue
            if not g_list:
                fp[:] = 1
                per_class[c].append((s, tp, fp))
                continue
            score = np.full((len(p_list), len(g_list)), -100.0)
            for i, p in enumerate(p_list):
                bp = LineString(p).buffer(2.0, cap_style=CAP_STYLE.flat,
                                          join_style=JOIN_STYLE.mitre)
                for j, g in enumerate(g_list):
                    bg = LineString(g).buffer(2.0, cap_style=CAP_STYLE.flat,
                                              join_style=JOIN_STYLE.mitre)
                    if bp.intersects(bg):
                        d = np.sqrt(((p[:, None] - g[None]) ** 2).sum(-1))
                        score[i, j] = -(d.min(1).mean() + d.min(0).mean()) / 2
            for t, thr in enumerate(thresholds):
                covered = [False] * len(g_list)
                for i in np.argsort(-s, kind="stable"):
                    j = int(np.argmax(score[i]))
                    if score[i, j] >= -thr and not covered[j]:
                        covered[j] = True
                        tp[i, t] = 1
                    else:
                        fp[i, t] = 1
            per_class[c].append((s, tp, fp))
    ap = np.zeros((num_classes, len(thresholds)))
    for c in range(num_classes):
        s = np.concatenate([x[0] for x in per_class[c]])
        order = np.argsort(-s, kind="stable")
        for t in range(len(thresholds)):
            tp = np.cumsum(np.concatenate([x[1][:, t] for x in per_class[c]])[order])
            fp = np.cumsum(np.concatenate([x[2][:, t] for x in per_class[c]])[order])
            rec = tp / max(num_gts[c], np.finfo(np.float32).eps)
            prec = tp / np.maximum(tp + fp, np.finfo(np.float32).eps)
            mrec = np.concatenate([[0], rec, [1]])
            mpre = np.concatenate([[0], prec, [0]])
            for i in range(len(mpre) - 1, 0, -1):
                mpre[i - 1] = max(mpre[i - 1], mpre[i])
            idx = np.where(mrec[1:] != mrec[:-1])[0]
            ap[c, t] = np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])
    return ap


def random_samples(seed: int, count: int):
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        m = int(rng.integers(0, 6))
        gts, g_labels = [], []
        for _ in range(m):
            n = int(rng.integers(2, 12))
            start = rng.uniform([-14, -28], [14, 28])
            steps = rng.normal(0, 2.0, size=(n - 1, 2)) + rng.normal(0, 3.0, size=2)
            gts.append(np.concatenate([start[None], start + np.cumsum(steps, 0)]))
            g_labels.append(int(rng.integers(0, 3)))
        preds, labels = [], []
        for g, lab in zip(gts, g_labels):  # noisy copies, some reversed, some relabelled
            for _ in range(int(rng.integers(0, 3))):
                p = resample_polyline(g, 20) + rng.normal(0, rng.uniform(0.05, 1.2), size=(20, 2))
                preds.append(p[::-1] if rng.random() < 0.5 else p)
                labels.append(lab if rng.random() < 0.85 else int(rng.integers(0, 3)))
        for _ in range(int(rng.integers(0, 30))):  # clutter
            start = rng.uniform([-14, -28], [14, 28])
            preds.append(start + np.cumsum(rng.normal(0, 1.0, size=(20, 2)), 0))
            labels.append(int(rng.integers(0, 3)))
        scores = rng.random(len(preds))
        pred = np.stack(preds) if preds else np.zeros((0, 20, 2))
        samples.append((pred, scores, np.array(labels, dtype=np.int64), gts,
                        np.array(g_labels, dtype=np.int64)))
    return samples


def test_matches_reference_on_random_scenes():
    samples = random_samples(0, 12)
    # One sample with more than 50 predictions, so the top-50 matters.
    big = random_samples(1, 1)[0]
    extra = np.stack([resample_polyline(straight(x), 20) for x in np.linspace(-14, 14, 60)])
    samples.append((np.concatenate([big[0], extra]),
                    np.concatenate([big[1], np.linspace(0.99, 0.01, 60)]),
                    np.concatenate([big[2], np.zeros(60, dtype=np.int64)]), big[3], big[4]))
    # One 100-point prediction (used as is, not resampled).
    pts100 = np.stack([np.zeros(100), np.geomspace(1, 51, 100) - 26], axis=1)
    samples.append((pts100[None], [0.8], [0], [straight(0.2)], [0]))
    m = ChamferMapAP()
    for s in samples:
        m.update(*s)
    got = m.compute()
    ref = reference_map_ap(samples)
    names = ("divider", "ped_crossing", "boundary")
    table = np.array([[got["AP"][n][t] for t in (0.5, 1.0, 1.5)] for n in names])
    np.testing.assert_allclose(table, ref * 100, atol=1e-9)
    assert got["mAP"] == pytest.approx(ref.mean() * 100)
    assert 5 < got["mAP"] < 95  # a non-trivial case


# ----------------------------------------------------------------------------- distributed
def _dist_worker(rank: int, world: int, init_file: str, out_dir: str, samples: list) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m = ChamferMapAP()
        for s in samples[rank]:
            m.update(*s)
        first = m.compute()
        second = m.compute()
        torch.save({"first": first, "second": second}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_compute_gathers_over_ranks(tmp_path):
    samples = random_samples(3, 6)
    split = [samples[:3], samples[3:]]
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path), split), nprocs=2)
    whole = ChamferMapAP()
    for s in samples:
        whole.update(*s)
    expected = whole.compute()
    alone = ChamferMapAP()
    for s in split[0]:
        alone.update(*s)
    assert alone.compute()["mAP"] != pytest.approx(expected["mAP"])  # the gather matters
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for result in (got["first"], got["second"]):
            assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
            for name, per_t in expected["AP"].items():
                assert result["AP"][name] == pytest.approx(per_t, abs=1e-9)
