"""radocc.distill.RenderDistillLoss: rays, renders and RDC / RSC in one call, for any codebase."""

import pytest
import torch
import torch.distributed as dist
from torch import nn

from radocc import losses
from radocc.distill import RenderDistillLoss, bin_edges, semantic_features, voxel_fields
from radocc.rays import SEGMENT_OFFSET, camera_rays, lookup_pixels, lookup_segments, pixel_grid
from radocc.render import VoxelGrid, density_from_logits, volume_render

torch.set_num_threads(1)

GRID = VoxelGrid((-8.0, -8.0, -1.0), (8.0, 8.0, 3.0))
SHAPE = (16, 16, 4)  # 1 m voxels
K = 5  # 4 classes + free (last)
IMAGE = (24, 32)
BINS = (0.5, 12.0, 0.5)


def cameras(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """intrinsics [B, 2, 3, 3], cam2ego [B, 2, 4, 4]: at (0, 0, 1) m looking along ego +x and -x
    (camera x = -ego y, y = -ego z, z = ego +-x)."""
    intrinsics = torch.tensor([[16.0, 0.0, 15.5], [0.0, 16.0, 11.5], [0.0, 0.0, 1.0]])
    front = torch.eye(4)
    front[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    front[:3, 3] = torch.tensor([0.0, 0.0, 1.0])
    back = front.clone()
    back[:3, :3] = torch.diag(torch.tensor([-1.0, -1.0, 1.0])) @ front[:3, :3]
    return (intrinsics.expand(batch, 2, 3, 3).clone(),
            torch.stack([front, back]).expand(batch, 2, 4, 4).clone())


def logits(batch: int = 2, seed: int = 0, requires_grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *SHAPE, K, generator=g) * 2.0
    x[..., -1] += 1.5  # mostly free, so rays cross several voxels
    return x.requires_grad_(requires_grad)


def random_pixels(batch: int, cams: int, count: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, cams, count, 2, generator=g) * torch.tensor([IMAGE[1] - 1.0, IMAGE[0] - 1.0])


def block_segments(batch: int, cams: int) -> torch.Tensor:
    """[B, N, H, W] int64: 8 x 8 blocks numbered from 1, the left column of blocks 0."""
    rows = torch.arange(IMAGE[0])[:, None] // 8
    cols = torch.arange(IMAGE[1])[None, :] // 8
    ids = torch.where(cols == 0, 0, rows * 4 + cols + 1)
    return ids.expand(batch, cams, *IMAGE).clone()


def make(**kwargs) -> RenderDistillLoss:
    kwargs = dict(dict(depth_bins=BINS, rays_per_image=48, stride=2, num_classes=K), **kwargs)
    return RenderDistillLoss(GRID, **kwargs)


# ----------------------------------------------------------------------------- equal to the parts
@pytest.mark.parametrize("mode", ["affinity", "kl"])
def test_losses_equal_radocc_losses_on_the_same_renders(mode):
    intrinsics, cam2ego = cameras()
    pixels = random_pixels(2, 2, 40)
    valid = torch.ones(2, 2, 40, dtype=torch.bool)
    valid[0, 1, 30:] = False  # padding
    segments = block_segments(2, 2)
    student, teacher = logits(seed=0, requires_grad=True), logits(seed=1)
    out = make(rsc_mode=mode)(student, teacher, intrinsics, cam2ego, IMAGE, pixels=pixels,
                              valid=valid, segments=segments)

    # the same by hand: one ray generator, density from the free class, features given occupied
    origins, directions = camera_rays(intrinsics, cam2ego, pixels=pixels)
    edges = torch.arange(0.5, 12.25, 0.5)
    renders = [volume_render(density_from_logits(x, K - 1, 1.0), origins, directions,
                             x[..., :-1].softmax(-1), grid=GRID, depth_bins=edges)
               for x in (student, teacher)]
    ids = lookup_pixels(segments, pixels)
    ids = torch.where((ids > 0) & valid, ids + torch.tensor([0, SEGMENT_OFFSET])[:, None], 0)
    rdc = losses.rdc_loss(renders[0].termination, renders[1].termination, valid.flatten(1),
                          bin_reduction="mean")  # the authors' scale, which the weight 100 is for
    rsc = losses.rsc_loss(renders[0].features, renders[1].features, ids.flatten(1), mode=mode,
                          valid=valid.flatten(1))
    for name, mine, theirs in (("student", out["student"], renders[0]),
                               ("teacher", out["teacher"], renders[1])):
        for field in ("depth", "opacity", "features", "termination"):
            torch.testing.assert_close(getattr(mine, field), getattr(theirs, field).detach(),
                                       msg=f"{name}.{field}")
    torch.testing.assert_close(out["rdc"], rdc)
    torch.testing.assert_close(out["rsc"], rsc)
    torch.testing.assert_close(out["loss"], 100.0 * rdc + 10.0 * rsc)
    assert out["rdc"] > 0 and out["rsc"] > 0
    assert out["loss"].dtype == torch.float32 and out["loss"].dim() == 0
    assert torch.equal(out["valid"], valid.flatten(1))
    if mode == "affinity":
        assert torch.equal(out["segments"], ids.flatten(1))
    else:  # "kl" does not use segments
        assert out["segments"] is None
    assert out["student"].termination.shape == (2, 80, len(edges))


def test_density_features_pair_equals_logits():
    intrinsics, cam2ego = cameras()
    student, teacher = logits(seed=0), logits(seed=1)
    loss = make(rsc_mode="kl")
    a = loss(student, teacher, intrinsics, cam2ego, IMAGE, generator=torch.Generator().manual_seed(5))
    pairs = [voxel_fields(x, GRID) for x in (student, teacher)]
    b = loss(pairs[0], pairs[1], intrinsics, cam2ego, IMAGE, generator=torch.Generator().manual_seed(5))
    for key in ("loss", "rdc", "rsc"):
        torch.testing.assert_close(a[key], b[key])
    density, features = pairs[0]
    torch.testing.assert_close(density, -student.log_softmax(-1)[..., -1] / 1.0)
    torch.testing.assert_close(features.sum(-1), torch.ones(2, *SHAPE))


def test_semantic_features_one_implementation_and_free_index():
    from radocc.models import semantic_features as model_features

    x = logits(batch=1)
    torch.testing.assert_close(model_features(x), semantic_features(x))
    torch.testing.assert_close(semantic_features(x, free_index=0), x[..., 1:].softmax(-1))
    middle = semantic_features(x, free_index=2)
    torch.testing.assert_close(middle, x[..., [0, 1, 3, 4]].softmax(-1))
    with pytest.raises(ValueError, match="free_index"):
        semantic_features(x, free_index=K)


def test_chunked_render_equals_whole():
    intrinsics, cam2ego = cameras()
    pixels = random_pixels(2, 2, 30)
    student, teacher = logits(seed=0), logits(seed=1)
    whole = make(rsc_mode="kl")(student, teacher, intrinsics, cam2ego, pixels=pixels)
    chunked = make(rsc_mode="kl", chunk_rays=7)(student, teacher, intrinsics, cam2ego, pixels=pixels)
    torch.testing.assert_close(whole["loss"], chunked["loss"])
    torch.testing.assert_close(whole["student"].termination, chunked["student"].termination)


@pytest.mark.parametrize("mode", ["affinity", "kl"])
def test_rsc_depth_agreement_keeps_the_rays_whose_depths_agree(mode):
    intrinsics, cam2ego = cameras()
    pixels = random_pixels(2, 2, 40)
    valid = torch.ones(2, 2, 40, dtype=torch.bool)
    valid[1, 0, 35:] = False
    student, teacher = logits(seed=0, requires_grad=True), logits(seed=1)
    args = (student, teacher, intrinsics, cam2ego, IMAGE)
    kwargs = dict(pixels=pixels, valid=valid, segments=block_segments(2, 2))
    out = make(rsc_mode=mode, rsc_depth_agreement=0.2)(*args, **kwargs)
    s, t = out["student"], out["teacher"]
    agree = (s.depth.detach() - t.depth).abs() <= 0.2 * t.depth
    assert 0 < int(agree.sum()) < agree.numel()  # the gate keeps some rays, not all
    expected = losses.rsc_loss(s.features, t.features, out["segments"], mode=mode,
                               valid=agree & valid.flatten(1))
    torch.testing.assert_close(out["rsc"], expected)
    # a gate that every ray passes is no gate
    wide = make(rsc_mode=mode, rsc_depth_agreement=1e9)(*args, **kwargs)
    torch.testing.assert_close(wide["rsc"], make(rsc_mode=mode)(*args, **kwargs)["rsc"])
    assert not torch.allclose(out["rsc"], wide["rsc"])


@pytest.mark.parametrize("rdc_weight", [0.0, 2.0])
def test_rsc_semantics_only_sends_rsc_gradient_to_the_features_not_the_density(rdc_weight):
    intrinsics, cam2ego = cameras()
    grid_logits = logits(seed=0)
    density0 = density_from_logits(grid_logits, K - 1, 1.0)
    features0 = semantic_features(grid_logits, -1)
    teacher = logits(seed=1)
    kwargs = dict(pixels=random_pixels(2, 2, 40), segments=block_segments(2, 2))

    def run(**options):
        density = density0.clone().requires_grad_(True)
        features = features0.clone().requires_grad_(True)
        out = make(rdc_weight=rdc_weight, **options)((density, features), teacher, intrinsics,
                                                     cam2ego, IMAGE, **kwargs)
        out["loss"].backward()
        return out, density.grad, features.grad

    paper, d_paper, f_paper = run()
    only, d_only, f_only = run(rsc_semantics_only=True)
    torch.testing.assert_close(only["loss"], paper["loss"])  # the same values
    torch.testing.assert_close(only["student"].features, paper["student"].features)
    torch.testing.assert_close(f_only, f_paper)  # RSC reaches the features as before ...
    if rdc_weight:  # ... and the density gets RDC's gradient alone
        _, d_rdc, _ = run(rsc_weight=0.0)
        torch.testing.assert_close(d_only, d_rdc)
        assert not torch.allclose(d_only, d_paper)
    else:
        assert d_only is None or not bool(d_only.any())
        assert bool(d_paper.abs().sum() > 0)


def test_bin_edges():
    assert bin_edges(1.0, 45.0, 0.5).numel() == 89
    torch.testing.assert_close(make().edges, torch.arange(0.5, 12.25, 0.5))
    explicit = RenderDistillLoss(GRID, depth_edges=[1.0, 2.0, 4.0])
    assert explicit.edges.tolist() == [1.0, 2.0, 4.0]


# ----------------------------------------------------------------------------- gradients
def test_teacher_gets_no_gradient():
    intrinsics, cam2ego = cameras()
    student, teacher = logits(seed=0, requires_grad=True), logits(seed=1, requires_grad=True)
    out = make()(student, teacher, intrinsics, cam2ego, IMAGE, segments=block_segments(2, 2))
    out["loss"].backward()
    assert teacher.grad is None
    assert not out["teacher"].depth.requires_grad and not out["teacher"].termination.requires_grad
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert torch.isfinite(student.grad).all()


def test_zero_weight_terms_are_skipped():
    intrinsics, cam2ego = cameras()
    student = logits(seed=0, requires_grad=True)
    out = make(rsc_weight=0.0)(student, logits(seed=1), intrinsics, cam2ego, IMAGE)  # no segments needed
    assert "rsc" not in out and "rdc" in out and out["student"].features is None
    out = make(rdc_weight=0.0, rsc_weight=0.0)(student, logits(seed=1), intrinsics, cam2ego, IMAGE)
    assert float(out["loss"].detach()) == 0.0 and out["student"].termination is None
    out["loss"].backward()  # still on the student's graph
    assert student.grad is not None


# ----------------------------------------------------------------------------- rays and segments
def test_grid_pixels_given_or_generated():
    intrinsics, cam2ego = cameras()
    student, teacher = logits(seed=0), logits(seed=1)
    grid = pixel_grid(IMAGE, 2)  # 12 x 16 = 192
    everything = make(rays_per_image=0, rsc_mode="kl")(student, teacher, intrinsics, cam2ego, IMAGE)
    given = make(rsc_mode="kl")(student, teacher, intrinsics, cam2ego, pixels=grid.expand(2, 2, -1, -1))
    assert torch.equal(everything["pixels"], grid.expand(2, 2, -1, -1))
    torch.testing.assert_close(everything["loss"], given["loss"])
    torch.testing.assert_close(everything["student"].depth, given["student"].depth)

    # a random subset of rays_per_image distinct grid pixels per camera, reproducible by generator
    loss = make(rays_per_image=48, rsc_mode="kl")
    runs = [loss(student, teacher, intrinsics, cam2ego, IMAGE, generator=torch.Generator().manual_seed(s))
            for s in (3, 3, 4)]
    pixels = runs[0]["pixels"]
    assert pixels.shape == (2, 2, 48, 2) and runs[0]["student"].depth.shape == (2, 96)
    on_grid = (pixels[..., None, :] == grid).all(-1)  # [B, N, P, G]
    assert (on_grid.sum(-1) == 1).all()
    assert (on_grid.sum(-2) <= 1).all()  # distinct within a camera
    assert not torch.equal(pixels[0, 0], pixels[0, 1])  # each camera draws its own
    assert torch.equal(runs[0]["pixels"], runs[1]["pixels"])
    assert not torch.equal(runs[0]["pixels"], runs[2]["pixels"])
    # the rays go through those pixels
    subset = make(rsc_mode="kl")(student, teacher, intrinsics, cam2ego, pixels=pixels)
    torch.testing.assert_close(subset["loss"], runs[0]["loss"])


def test_segments_are_offset_per_camera():
    intrinsics, cam2ego = cameras(batch=1)
    pixels = random_pixels(1, 2, 50)
    valid = torch.ones(1, 2, 50, dtype=torch.bool)
    valid[0, 0, :5] = False
    segments = torch.full((1, 2, *IMAGE), 7, dtype=torch.int64)
    segments[0, 1] = 9
    out = make()(logits(1, 0), logits(1, 1), intrinsics, cam2ego, pixels=pixels, valid=valid,
                 segments=segments)
    ids = out["segments"].view(2, 50)
    assert (ids[0, :5] == 0).all() and (ids[0, 5:] == 7).all()  # camera 0: no offset
    assert (ids[1] == 9 + SEGMENT_OFFSET).all()  # camera 1: offset once
    # the same lookup the dataloader workers run gives the same ids and losses
    worker_ids = lookup_segments(segments[0], pixels[0], valid[0])
    assert torch.equal(worker_ids.flatten(), out["segments"][0])
    again = make()(logits(1, 0), logits(1, 1), intrinsics, cam2ego, pixels=pixels, valid=valid,
                   ray_segments=worker_ids[None])
    torch.testing.assert_close(again["rsc"], out["rsc"])


def test_lookup_pixels_nearest_centre_and_batched():
    image = torch.arange(2 * 3 * 4).view(2, 3, 4)
    pixels = torch.tensor([[[0.0, 0.0], [3.0, 2.0], [1.4, 0.6]], [[-5.0, 9.0], [2.0, 1.0], [0.0, 0.0]]])
    assert lookup_pixels(image, pixels).tolist() == [[0, 11, 5], [20, 18, 12]]  # clamped at the border
    with pytest.raises(ValueError, match="pixels"):
        lookup_pixels(image, pixels[:1])
    with pytest.raises(ValueError, match="segment ids"):
        lookup_segments(image * SEGMENT_OFFSET, pixels)


# ----------------------------------------------------------------------------- precision, DDP
def test_bf16_autocast_on_cpu():
    intrinsics, cam2ego = cameras()
    pixels = random_pixels(2, 2, 40)
    segments = block_segments(2, 2)
    student = logits(seed=0).bfloat16().requires_grad_()
    teacher = logits(seed=1).bfloat16()
    loss = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(student, teacher, intrinsics, cam2ego, pixels=pixels, segments=segments)
    assert out["loss"].dtype == out["rdc"].dtype == out["rsc"].dtype == torch.float32
    assert out["student"].depth.dtype == out["student"].termination.dtype == torch.float32
    # computed in float32 from the bf16 values: the float32 run on the same values agrees
    reference = loss(student.detach().float(), teacher.float(), intrinsics, cam2ego, pixels=pixels,
                     segments=segments)
    for key in ("loss", "rdc", "rsc"):
        torch.testing.assert_close(out[key], reference[key], rtol=1e-5, atol=1e-6)
    out["loss"].backward()
    assert student.grad.dtype == torch.bfloat16 and student.grad.float().abs().sum() > 0


class TinyStudent(nn.Module):
    """Learnable voxel logits (a stand-in for a user's model)."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(logits(batch=1, seed=2)[0])

    def forward(self, batch: int) -> torch.Tensor:
        return self.logits.expand(batch, *self.logits.shape)


def test_ddp_world_size_one(tmp_path):
    loss = make()
    assert list(loss.parameters()) == [] and loss.state_dict() == {}  # nothing for DDP to sync
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        student = nn.parallel.DistributedDataParallel(TinyStudent())
        intrinsics, cam2ego = cameras()
        out = loss(student(2), logits(seed=1), intrinsics, cam2ego, IMAGE,
                   segments=block_segments(2, 2))
        out["loss"].backward()
        grad = student.module.logits.grad
        assert grad is not None and grad.abs().sum() > 0 and torch.isfinite(grad).all()
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("change, match", [
    (dict(intrinsics=torch.eye(3).expand(2, 2, 3, 3)[..., :2]), "intrinsics"),
    (dict(intrinsics=torch.eye(3).expand(1, 2, 3, 3)), "intrinsics"),  # batch 1, logits batch 2
    (dict(cam2ego=torch.eye(4).expand(2, 3, 4, 4)), "cam2ego"),
    (dict(pixels=torch.zeros(2, 2, 10, 3)), "pixels"),
    (dict(pixels=torch.zeros(2, 1, 10, 2)), "pixels"),
    (dict(pixels=torch.zeros(2, 2, 10, 2), valid=torch.ones(2, 2, 9, dtype=torch.bool)), "valid"),
    (dict(pixels=torch.zeros(2, 2, 10, 2), valid=torch.ones(2, 2, 10)), "valid"),
    (dict(segments=torch.zeros(2, 2, 24, dtype=torch.long)), "segments"),
    (dict(segments=torch.zeros(2, 2, 24, 32)), "segments"),  # float ids
    (dict(segments=torch.zeros(2, 2, 12, 16, dtype=torch.long)), "image_size"),
    (dict(segments=None), "segments"),  # affinity RSC needs them
    (dict(ray_segments=torch.zeros(2, 2, 10, dtype=torch.long)), "pixels"),
    (dict(segments=None, pixels=torch.zeros(2, 2, 10, 2),
          ray_segments=torch.zeros(2, 20, dtype=torch.long)), "ray_segments"),
    (dict(student=torch.zeros(2, 16, 16, 4, K, dtype=torch.long)), "student"),
    (dict(student=logits()[..., :4]), "classes"),
    (dict(teacher=(torch.rand(2, *SHAPE), None)), "features"),
    (dict(teacher=logits(batch=1)), "batch"),
    (dict(image_size=(24,)), "image_size"),
])
def test_bad_input_names_the_argument(change, match):
    intrinsics, cam2ego = cameras()
    args = dict(student=logits(seed=0), teacher=logits(seed=1), intrinsics=intrinsics,
                cam2ego=cam2ego, image_size=IMAGE, segments=block_segments(2, 2))
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        make()(**args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rsc_mode="cosine"), "rsc_mode"),
    (dict(depth_bins=(1.0, 2.0)), "depth_bins"),
    (dict(depth_bins=(1.0, 45.0, 0.5), depth_edges=[1.0, 2.0]), "not both"),
    (dict(depth_bins=None, depth_edges=[2.0, 1.0]), "depth_edges"),
    (dict(rdc_weight=-1.0), "rdc_weight"),
    (dict(rays_per_image=-1), "rays_per_image"),
    (dict(stride=0), "stride"),
    (dict(step=0.0), "step"),
    (dict(num_classes=K, free_index=K), "free_index"),
    (dict(rsc_depth_agreement=-0.1), "rsc_depth_agreement"),
    (dict(rsc_semantics_only=1), "rsc_semantics_only"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)
    with pytest.raises(TypeError, match="grid"):
        RenderDistillLoss("occ3d")


def test_fused_logit_fields_equal_the_definitions():
    """voxel_fields' one-pass conversion = density_from_logits + semantic_features, values and
    gradients (float64), and passes gradcheck."""
    from radocc.distill import _LogitFields, semantic_features
    from radocc.render import density_from_logits

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 4, 3, 5, 7, generator=g, dtype=torch.float64) * 6).requires_grad_()
    logits.data[0, 0, 0, 0, -1] = 80.0   # surely free: density ~ 0, no overflow
    logits.data[0, 0, 0, 1, -1] = -80.0  # surely occupied
    density, q = _LogitFields.apply(logits, 0.4)
    ref_density = density_from_logits(logits, free_index=6, voxel_size=0.4)
    ref_q = semantic_features(logits)
    torch.testing.assert_close(density, ref_density)
    torch.testing.assert_close(q, ref_q)
    g_d, g_q = torch.randn_like(density), torch.randn_like(q)
    for weights in ((g_d, g_q), (g_d, None), (None, g_q)):
        def loss(d, f):
            return sum((t * w).sum() for t, w in zip((d, f), weights) if w is not None)
        got, = torch.autograd.grad(loss(*_LogitFields.apply(logits, 0.4)), logits)
        want, = torch.autograd.grad(loss(ref_density, ref_q), logits, retain_graph=True)
        torch.testing.assert_close(got, want)
    small = torch.randn(1, 2, 2, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: _LogitFields.apply(x, 0.4), (small,))
