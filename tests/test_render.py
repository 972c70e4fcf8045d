"""The compiled renderer against its pure-torch twin, closed-form cases, autograd and the op API."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radocc import _ext
from radocc.render import RenderOutput, VoxelGrid, density_from_logits, volume_render
from radocc.render_reference import uniform_intervals, volume_render_reference

GRID = VoxelGrid(lower=(-2.0, -3.0, -1.0), upper=(2.0, 3.0, 1.0))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and _ext.has_cuda_kernels() else [])


def random_scene(batch=2, shape=(5, 7, 3), channels=4, rays=64, dtype=torch.float64, seed=0,
                 device="cpu"):
    """Random density/features and rays: some start inside the box, some outside, some miss,
    some run parallel to an axis."""
    gen = torch.Generator().manual_seed(seed)
    density = torch.rand(batch, *shape, generator=gen, dtype=dtype) * 3
    density[density < 0.6] = 0  # empty voxels too
    features = torch.randn(batch, *shape, channels, generator=gen, dtype=dtype)
    origins = torch.randn(batch, rays, 3, generator=gen, dtype=dtype) * 3
    directions = torch.randn(batch, rays, 3, generator=gen, dtype=dtype)
    directions[:, :4, 1:] = 0  # along x
    directions[:, 4:8, :2] = 0  # along z
    directions[:, 8:12, 2] = 0  # in a horizontal plane
    origins[:, 12:16] = torch.tensor([10.0, 10.0, 10.0], dtype=dtype)  # outside, pointing away
    directions[:, 12:16] = torch.tensor([1.0, 0.5, 0.2], dtype=dtype)
    return [t.to(device) for t in (density, features, origins, directions)]


def assert_outputs_close(a: RenderOutput, b: RenderOutput, atol: float) -> None:
    for name in RenderOutput._fields:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            torch.testing.assert_close(x, y, atol=atol, rtol=atol, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("step", [None, 0.17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,channels", [(1, 1), (2, 18), (3, 32)])
def test_matches_reference(device, step, dtype, batch, channels):
    density, features, origins, directions = random_scene(batch, channels=channels, dtype=dtype,
                                                          device=device)
    density.requires_grad_()
    features.requires_grad_()
    kwargs = dict(grid=GRID, step=step, near=0.2, far=7.5, depth_bins=torch.linspace(0, 8, 11))
    ours = volume_render(density, origins, directions, features, **kwargs)
    ref = volume_render_reference(density, origins, directions, features, **kwargs)
    atol = 1e-5 if dtype == torch.float32 else 1e-10
    assert_outputs_close(ours, ref, atol)

    incoming = [torch.randn_like(x) for x in ours]
    got = torch.autograd.grad(ours, (density, features), incoming)
    want = torch.autograd.grad(ref, (density, features), incoming)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=10 * atol, rtol=10 * atol)
    assert want[0].abs().sum() > 0 and want[1].abs().sum() > 0


@pytest.mark.parametrize("step", [None, 0.17])
def test_opaque_scene_matches_reference(step):
    """Transmittance underflows to exactly 0 behind opaque voxels (marching stops there)."""
    density, features, origins, directions = random_scene(dtype=torch.float32)
    density = (density * 1000).requires_grad_()
    features.requires_grad_()
    kwargs = dict(grid=GRID, step=step, depth_bins=torch.linspace(0, 8, 11))
    ours = volume_render(density, origins, directions, features, **kwargs)
    ref = volume_render_reference(density, origins, directions, features, **kwargs)
    assert_outputs_close(ours, ref, 1e-5)
    assert (ours.opacity == 1).sum() > 10
    incoming = [torch.randn_like(x) for x in ours]
    for g, w in zip(torch.autograd.grad(ours, (density, features), incoming),
                    torch.autograd.grad(ref, (density, features), incoming)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("step", [None, 0.1])
def test_uniform_slab_closed_form(step):
    """Constant density sigma along an x ray inside [near, far]: opacity = 1 - exp(-sigma L), and
    depth = sum_i w_i t_i over equal samples of length h: w_i = e^{-sigma h i} (1 - e^{-sigma h})
    at midpoints t_i = near + (i + 1/2) h."""
    sigma, near, far = 0.7, 0.5, 3.5
    density = torch.full((1, 8, 2, 2), sigma, dtype=torch.float64)  # voxels 0.5 m along x
    origins = torch.tensor([[[-2.0, 0.1, 0.2]]], dtype=torch.float64)
    directions = torch.tensor([[[3.0, 0.0, 0.0]]], dtype=torch.float64)  # normalised inside
    out = volume_render(density, origins, directions, grid=GRID, near=near, far=far, step=step)
    h = 0.5 if step is None else step  # planes at x = -2 + 0.5 k cut [near, far] evenly
    count = round((far - near) / h)
    depth = sum(math.exp(-sigma * h * i) * -math.expm1(-sigma * h) * (near + (i + 0.5) * h)
                for i in range(count))
    assert out.opacity.item() == pytest.approx(1 - math.exp(-sigma * (far - near)), abs=1e-12)
    assert out.depth.item() == pytest.approx(depth, abs=1e-12)


def test_rays_inside_outside_and_missing():
    density = torch.ones(1, 4, 6, 2, dtype=torch.float64)
    origins = torch.tensor([[[0.0, 0.0, 0.0],     # inside, exits at x = 2
                             [-5.0, 0.0, 0.0],    # outside, enters at x = -2
                             [-5.0, 0.0, 3.0],    # above the box: misses
                             [5.0, 0.0, 0.0]]], dtype=torch.float64)  # behind the ray: misses
    directions = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0]]],
                              dtype=torch.float64)
    features = torch.ones(1, 4, 6, 2, 3, dtype=torch.float64)
    out = volume_render(density, origins, directions, features, grid=GRID,
                        depth_bins=[0.0, 5.0, 10.0])
    assert out.opacity[0, 0].item() == pytest.approx(1 - math.exp(-2.0))
    assert out.opacity[0, 1].item() == pytest.approx(1 - math.exp(-4.0))
    assert out.opacity[0, 2:].tolist() == [0.0, 0.0]
    assert out.depth[0, 2:].tolist() == [0.0, 0.0]
    assert out.termination[0, 2:].tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    torch.testing.assert_close(out.features[0, :, 0], out.opacity[0])  # features all ones
    # entering at t = 3, four 1 m voxels: samples at t = 3.5 ... 6.5, w_i = e^{-i} (1 - e^{-1})
    expected = sum(math.exp(-i) * (1 - math.exp(-1)) * (3.5 + i) for i in range(4))
    assert out.depth[0, 1].item() == pytest.approx(expected)


def test_exact_mode_reads_each_voxel_over_its_chord():
    """A diagonal ray through voxel corners stops in the one occupied voxel by its chord (sqrt 2)
    and its sample sits at the chord's midpoint."""
    density = torch.zeros(1, 4, 6, 2, dtype=torch.float64)
    density[0, 2, 3, 1] = 5.0  # x in [0, 1], y in [0, 1], z in [0, 1]
    origins = torch.tensor([[[-1.0, -1.0, 0.5]]], dtype=torch.float64)
    directions = torch.tensor([[[1.0, 1.0, 0.0]]], dtype=torch.float64)
    out = volume_render(density, origins, directions, grid=GRID)
    chord = math.sqrt(2)
    assert out.opacity.item() == pytest.approx(1 - math.exp(-5.0 * chord), abs=1e-12)
    assert out.depth.item() / out.opacity.item() == pytest.approx(1.5 * chord, abs=1e-12)


@pytest.mark.parametrize("step", [None, 0.25])
def test_termination_rows_are_distributions(step):
    density, features, origins, directions = random_scene(rays=128)
    out = volume_render(density, origins, directions, grid=GRID, step=step,
                        depth_bins=torch.linspace(1, 4, 7))  # samples outside [1, 4] are clamped
    assert out.termination.shape == (2, 128, 7)
    assert (out.termination >= 0).all()
    torch.testing.assert_close(out.termination.sum(-1), torch.ones(2, 128, dtype=torch.float64))
    torch.testing.assert_close(out.termination[..., :-1].sum(-1), out.opacity)


@pytest.mark.parametrize("step", [None, 0.3])
def test_gradcheck(step):
    density, features, origins, directions = random_scene(batch=1, shape=(3, 4, 2), channels=2,
                                                          rays=12)
    density = (density + 0.2).requires_grad_()  # no kinks at zero density
    features.requires_grad_()
    bins = torch.tensor([0.0, 1.5, 3.0, 6.0], dtype=torch.float64)

    def fn(d, f):
        return tuple(volume_render(d, origins, directions, f, grid=GRID, step=step,
                                   depth_bins=bins))

    assert torch.autograd.gradcheck(fn, (density, features), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    density, features, origins, directions = random_scene(batch=1, rays=16, device=device)
    density.requires_grad_()
    features.requires_grad_()
    edges = torch.linspace(0, 6, 5, dtype=torch.float64, device=device)
    lower, upper = list(GRID.lower), list(GRID.upper)
    for step in (0.0, 0.2):
        args = (density, features, origins, directions, edges, lower, upper, 0.0, math.inf, step)
        torch.library.opcheck(torch.ops.radocc.render_forward.default, args)
        outputs = [o.detach() for o in torch.ops.radocc.render_forward(*args)]
        grads = [torch.randn_like(o) for o in outputs]
        torch.library.opcheck(torch.ops.radocc.render_backward.default,
                              (*grads, *outputs, density.detach(), features.detach(),
                               *args[2:]))


def test_torch_compile_matches_eager():
    density, features, origins, directions = random_scene(dtype=torch.float32)
    bins = torch.linspace(0, 8, 9)

    def loss(d, f):
        out = volume_render(d, origins, directions, f, grid=GRID, depth_bins=bins)
        return out.depth.sum() + out.features.square().sum() + out.termination[..., 2].sum()

    compiled = torch.compile(loss, fullgraph=True)
    d1, f1 = density.clone().requires_grad_(), features.clone().requires_grad_()
    d2, f2 = density.clone().requires_grad_(), features.clone().requires_grad_()
    eager, got = loss(d1, f1), compiled(d2, f2)
    eager.backward()
    got.backward()
    torch.testing.assert_close(got, eager)
    torch.testing.assert_close(d2.grad, d1.grad)
    torch.testing.assert_close(f2.grad, f1.grad)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4)),
    batch=st.integers(1, 2),
    rays=st.integers(1, 20),
    channels=st.integers(1, 5),
    step=st.one_of(st.none(), st.floats(0.05, 1.5)),
    near=st.floats(0.0, 2.0),
    span=st.one_of(st.none(), st.floats(0.1, 10.0)),
    axis_rays=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(shape, batch, rays, channels, step, near, span, axis_rays,
                                    seed):
    density, features, origins, directions = random_scene(batch, shape, channels, rays, seed=seed)
    if axis_rays:  # rays exactly on voxel boundary planes, along an axis
        origins = origins.round()
        directions = torch.nn.functional.one_hot(
            torch.randint(0, 3, (batch, rays)), 3).to(origins) * torch.sign(
            torch.randn(batch, rays, 1, dtype=origins.dtype))
    far = None if span is None else near + span
    bins = torch.linspace(near, near + 8, 6)
    kwargs = dict(grid=GRID, step=step, near=near, far=far, depth_bins=bins)
    ours = volume_render(density, origins, directions, features, **kwargs)
    ref = volume_render_reference(density, origins, directions, features, **kwargs)
    assert_outputs_close(ours, ref, 1e-9)
    assert ((ours.opacity >= 0) & (ours.opacity <= 1 + 1e-12)).all()
    torch.testing.assert_close(ours.termination.sum(-1), torch.ones(batch, rays,
                                                                    dtype=torch.float64))
    # the mean termination depth lies within [near, far]
    assert (ours.depth >= near * ours.opacity - 1e-9).all()
    if far is not None:
        assert (ours.depth <= far * ours.opacity + 1e-9).all()


def test_uniform_weights_match_nerfacc():
    """Per-sample weights of the uniform mode, read out through one depth bin per sample, equal
    nerfacc's weights for the same intervals and (grid_sample-interpolated) densities."""
    import nerfacc  # a dev dependency
    density, _, _, _ = random_scene(batch=1, shape=(6, 8, 4), dtype=torch.float32)
    rays = 50
    gen = torch.Generator().manual_seed(3)
    origins = (torch.rand(1, rays, 3, generator=gen) - 0.5) * torch.tensor([3.0, 5.0, 1.5])
    directions = torch.randn(1, rays, 3, generator=gen)
    step = 0.2
    bins = torch.arange(0, 12, step)  # every ray starts inside, so sample k is bin k
    out = volume_render(density, origins, directions, grid=GRID, step=step, depth_bins=bins)

    unit = directions / directions.norm(dim=-1, keepdim=True)
    starts, ends = uniform_intervals(origins, unit, GRID, 0.0, math.inf, step)
    mids = 0.5 * (starts + ends)
    points = origins[..., None, :] + mids[..., None] * unit[..., None, :]
    lower, upper = torch.tensor(GRID.lower), torch.tensor(GRID.upper)
    normalised = (points - lower) / (upper - lower) * 2 - 1
    # grid_sample reads a [N, C, X, Y, Z] volume at (z, y, x) coordinates
    sigmas = torch.nn.functional.grid_sample(
        density[:, None], normalised.flip(-1)[:, :, :, None],
        mode="bilinear", padding_mode="border", align_corners=False)[:, 0, :, :, 0]
    weights, _, _ = nerfacc.render_weight_from_density(starts[0], ends[0], sigmas[0])
    samples = weights.shape[-1]
    assert samples > 5
    torch.testing.assert_close(out.termination[0, :, :samples], weights, atol=2e-6, rtol=1e-4)


def test_density_from_logits_is_occupancy_probability():
    logits = torch.randn(1, 4, 6, 2, 18, dtype=torch.float64)
    voxel = GRID.voxel_size((4, 6, 2))[0]
    assert voxel == pytest.approx(1.0)
    sigma = density_from_logits(logits, free_index=17, voxel_size=voxel)
    p_free = logits.softmax(-1)[..., 17]
    torch.testing.assert_close(sigma, -torch.log(p_free) / voxel)
    # a ray crossing exactly voxel (1, 2, 0) along x stops in it with probability 1 - p_free
    single = torch.zeros_like(sigma)
    single[0, 1, 2, 0] = sigma[0, 1, 2, 0]
    out = volume_render(single, torch.tensor([[[-3.0, -0.5, -0.5]]], dtype=torch.float64),
                        torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64), grid=GRID)
    assert out.opacity.item() == pytest.approx(1 - p_free[0, 1, 2, 0].item())


def test_half_inputs_render_in_float32():
    density, features, origins, directions = random_scene(dtype=torch.float32)
    out = volume_render(density.half(), origins.half(), directions, features.bfloat16(),
                        grid=GRID)
    assert out.depth.dtype == torch.float32 and out.features.dtype == torch.float32


def test_occ3d_default_grid():
    assert VoxelGrid.occ3d() == VoxelGrid()
    assert VoxelGrid.occ3d().voxel_size((200, 200, 16)) == pytest.approx((0.4, 0.4, 0.4))
    density = torch.zeros(1, 200, 200, 16)
    density[0, :, :, 0] = 100.0  # the ground layer z in [-1, -0.6]
    out = volume_render(density, torch.zeros(1, 1, 3), torch.tensor([[[0.0, 0.0, -1.0]]]))
    assert out.depth.item() == pytest.approx(0.8, abs=1e-5)  # the ground voxel chord midpoint


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("step", [None, 0.2])
def test_cuda_matches_cpu(step):
    assert _ext.has_cuda_kernels(), "a CUDA device is present but radocc has no CUDA kernels"
    density, features, origins, directions = random_scene(channels=18, rays=500,
                                                          dtype=torch.float32)
    bins = torch.linspace(0, 8, 17)
    results = []
    for device in ("cpu", "cuda"):
        d = density.to(device).requires_grad_()
        f = features.to(device).requires_grad_()
        out = volume_render(d, origins.to(device), directions.to(device), f, grid=GRID,
                            step=step, depth_bins=bins.to(device))
        loss = out.depth.sum() + out.features.sum() + out.termination[..., 3].sum()
        loss.backward()
        results.append([t.detach().cpu() for t in (*out, d.grad, f.grad)])
    for cpu, cuda in zip(*results):
        torch.testing.assert_close(cuda, cpu, atol=1e-4, rtol=1e-4)


def test_float32_alpha_is_accurate_from_tiny_to_large_optical_depth():
    """alpha = 1 - exp(-sigma d) in float32 (the kernels' own expm1) against float64, relative."""
    sigma = torch.logspace(-8, 1.5, 4000, dtype=torch.float64)
    density = sigma.reshape(-1, 1, 1, 1)  # one 1 m voxel per batch item
    grid = VoxelGrid(lower=(0.0, 0.0, 0.0), upper=(1.0, 1.0, 1.0))
    origins = torch.tensor([-1.0, 0.5, 0.5]).expand(len(sigma), 1, 3)
    directions = torch.tensor([1.0, 0.0, 0.0]).expand(len(sigma), 1, 3)
    out = volume_render(density.float(), origins, directions, grid=grid)
    expected = -torch.expm1(-sigma)
    relative = (out.opacity[:, 0].double() - expected).abs() / expected
    assert relative.max() < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("step", [None, 0.2])
def test_occ3d_workload_matches_reference(step):
    """The benchmark's workload (Occ3D grid, 18 channels, the nuScenes rig), a slice of its rays,
    in float64: outputs and gradients agree with the twin."""
    from radocc.bench import workload

    density, features, origins, directions, g_depth, g_feat = (
        t.double() for t in workload("cpu", stride=8, fraction=1 / 64))
    density.requires_grad_()
    features.requires_grad_()
    bins = torch.linspace(0, 60, 61, dtype=torch.float64)
    ours = volume_render(density, origins, directions, features, step=step, depth_bins=bins)
    ref = volume_render_reference(density, origins, directions, features, step=step,
                                  depth_bins=bins)
    assert_outputs_close(ours, ref, 1e-9)
    incoming = (g_depth, torch.zeros_like(ours.opacity), g_feat,
                torch.randn_like(ours.termination))
    for g, w in zip(torch.autograd.grad(ours, (density, features), incoming),
                    torch.autograd.grad(ref, (density, features), incoming)):
        torch.testing.assert_close(g, w, atol=1e-8, rtol=1e-8)
