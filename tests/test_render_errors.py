"""Bad input to the renderer: a clear TypeError/ValueError naming the argument, never a crash."""

import math
import sys

import pytest
import torch

import radocc
from radocc import _ext
from radocc.render import VoxelGrid, density_from_logits, volume_render
from radocc.rays import camera_rays

GRID = VoxelGrid(lower=(-2.0, -2.0, -1.0), upper=(2.0, 2.0, 1.0))


def good():
    return dict(density=torch.rand(2, 4, 4, 2), origins=torch.zeros(2, 5, 3),
                directions=torch.ones(2, 5, 3), features=torch.rand(2, 4, 4, 2, 3))


def render(**changes):
    args = good()
    kwargs = {k: changes.pop(k) for k in ("near", "far", "step", "depth_bins", "grid")
              if k in changes}
    args.update(changes)
    return volume_render(args["density"], args["origins"], args["directions"], args["features"],
                         grid=kwargs.pop("grid", GRID), **kwargs)


def test_good_input_renders():
    out = render(depth_bins=[0.0, 1.0, 2.0])
    assert out.depth.shape == (2, 5) and out.termination.shape == (2, 5, 3)


@pytest.mark.parametrize("changes,error,match", [
    (dict(density=torch.rand(4, 4, 2)), ValueError, r"density must be \[B, X, Y, Z\]"),
    (dict(density=torch.rand(2, 4, 0, 2)), ValueError, "density needs at least one voxel"),
    (dict(origins=torch.zeros(2, 5)), ValueError, r"origins must be \[B, R, 3\]"),
    (dict(origins=torch.zeros(2, 5, 2), directions=torch.ones(2, 5, 2)), ValueError,
     r"origins must be \[B, R, 3\]"),
    (dict(origins=torch.zeros(3, 5, 3), directions=torch.ones(3, 5, 3)), ValueError,
     r"origins must be \[B, R, 3\] with B = 2"),
    (dict(directions=torch.ones(2, 4, 3)), ValueError, "directions must have origins' shape"),
    (dict(features=torch.rand(2, 4, 4, 3, 3)), ValueError, r"features must be \[B, X, Y, Z, C\]"),
    (dict(features=torch.rand(2, 4, 4, 2)), ValueError, r"features must be \[B, X, Y, Z, C\]"),
    (dict(features=torch.rand(2, 4, 4, 2, 0)), ValueError, "C >= 1"),
    (dict(density=torch.ones(2, 4, 4, 2, dtype=torch.int64)), TypeError,
     "density must be a floating-point tensor"),
    (dict(origins=torch.zeros(2, 5, 3, dtype=torch.int32)), TypeError,
     "origins must be a floating-point tensor"),
    (dict(features=torch.ones(2, 4, 4, 2, 3, dtype=torch.bool)), TypeError,
     "features must be a floating-point tensor"),
    (dict(density=[[1.0]]), TypeError, "density must be a torch.Tensor"),
    (dict(origins=torch.zeros(2, 5, 3, device="meta")), ValueError,
     "origins is on meta but density is on cpu"),
    (dict(features=torch.rand(2, 4, 4, 2, 3, device="meta")), ValueError,
     "features is on meta but density is on cpu"),
    (dict(density=torch.full((2, 4, 4, 2), math.nan)), ValueError,
     "density must be finite, found NaN"),
    (dict(density=torch.full((2, 4, 4, 2), math.inf)), ValueError, "density must be finite"),
    (dict(density=-torch.rand(2, 4, 4, 2)), ValueError, "density must be >= 0"),
    (dict(features=torch.full((2, 4, 4, 2, 3), math.nan)), ValueError, "features must be finite"),
    (dict(origins=torch.full((2, 5, 3), math.nan)), ValueError, "origins must be finite"),
    (dict(directions=torch.zeros(2, 5, 3)), ValueError, "zero-length direction"),
    (dict(directions=torch.full((2, 5, 3), math.inf)), ValueError, "directions must be finite"),
    (dict(step=0.0), ValueError, "step must be a finite length > 0"),
    (dict(step=-0.2), ValueError, "step must be a finite length > 0"),
    (dict(step=math.nan), ValueError, "step must be a finite length > 0"),
    (dict(near=-1.0), ValueError, "near must be a finite distance >= 0"),
    (dict(near=2.0, far=1.0), ValueError, r"far must be greater than near \(2.0\)"),
    (dict(depth_bins=[0.0, 2.0, 1.0]), ValueError, "depth_bins must be strictly increasing"),
    (dict(depth_bins=[0.0, 1.0, 1.0]), ValueError, "depth_bins must be strictly increasing"),
    (dict(depth_bins=[1.0]), ValueError, "depth_bins must be a 1-D sequence of at least 2"),
    (dict(depth_bins=torch.zeros(2, 2)), ValueError, "depth_bins must be a 1-D sequence"),
    (dict(depth_bins=[0.0, math.nan]), ValueError, "depth_bins must be finite"),
    (dict(depth_bins=[True, False]), TypeError, "depth_bins must hold numbers"),
    (dict(grid=((0, 0, 0), (1, 1, 1))), TypeError, "grid must be a radocc.render.VoxelGrid"),
])
def test_bad_input_is_named(changes, error, match):
    with pytest.raises(error, match=match):
        render(**changes)


@pytest.mark.parametrize("lower,upper,match", [
    ((0, 0, 0), (1, 1, 0), "upper must exceed lower"),
    ((0, 0, 0), (-1, 1, 1), "upper must exceed lower"),
    ((0, 0), (1, 1, 1), "lower must be 3 finite numbers"),
    ((0, 0, math.nan), (1, 1, 1), "lower must be 3 finite numbers"),
])
def test_bad_grid(lower, upper, match):
    with pytest.raises(ValueError, match=match):
        VoxelGrid(lower=lower, upper=upper)


def test_direct_op_calls_are_checked_in_cpp():
    """Callers of torch.ops.radocc.* bypass the Python checks; the C++ checks still hold."""
    a = good()
    d, f, o, r = a["density"], a["features"], a["origins"], a["directions"]
    edges, lo, hi = torch.zeros(0), list(GRID.lower), list(GRID.upper)
    op = torch.ops.radocc.render_forward
    with pytest.raises(RuntimeError, match=r"density must be \[B, X, Y, Z\]"):
        op(d[0], f, o, r, edges, lo, hi, 0.0, math.inf, 0.0)
    with pytest.raises(RuntimeError, match="directions must match origins"):
        op(d, f, o, r[:, :2], edges, lo, hi, 0.0, math.inf, 0.0)
    with pytest.raises(RuntimeError, match="must have density's dtype"):
        op(d, f.double(), o, r, edges, lo, hi, 0.0, math.inf, 0.0)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        op(d, f, o[:, ::2], r[:, ::2], edges, lo, hi, 0.0, math.inf, 0.0)
    with pytest.raises(RuntimeError, match="upper must exceed lower"):
        op(d, f, o, r, edges, hi, lo, 0.0, math.inf, 0.0)
    with pytest.raises(RuntimeError, match="depth bin edges"):
        op(d, f, o, r, torch.zeros(1), lo, hi, 0.0, math.inf, 0.0)
    outs = op(d, f, o, r, edges, lo, hi, 0.0, math.inf, 0.0)
    grads = [torch.ones_like(t) for t in outs]
    grads[0] = torch.ones(2, 4)
    with pytest.raises(RuntimeError, match="the gradient of depth must be"):
        torch.ops.radocc.render_backward(*grads, *outs, d, f, o, r, edges, lo, hi, 0.0, math.inf,
                                         0.0)


def test_double_backward_is_refused():
    a = good()
    density = a["density"].requires_grad_()
    out = volume_render(density, a["origins"], a["directions"], grid=GRID)
    (grad,) = torch.autograd.grad(out.depth.sum(), density, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        grad.sum().backward()


def test_density_from_logits_errors():
    with pytest.raises(ValueError, match="free_index 18 is out of range"):
        density_from_logits(torch.randn(2, 18), free_index=18)
    with pytest.raises(ValueError, match="voxel_size must be > 0"):
        density_from_logits(torch.randn(2, 18), voxel_size=0.0)
    with pytest.raises(TypeError, match="floating-point"):
        density_from_logits(torch.ones(2, 18, dtype=torch.long))


def test_camera_rays_errors():
    k, pose = torch.eye(3).expand(1, 2, 3, 3), torch.eye(4).expand(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"intrinsics must be \[B, N, 3, 3\]"):
        camera_rays(torch.eye(3), pose, (4, 4))
    with pytest.raises(ValueError, match=r"cam2ego must be \[B, N, 4, 4\]"):
        camera_rays(k, torch.eye(4).expand(1, 3, 4, 4), (4, 4))
    with pytest.raises(ValueError, match="needs image_size"):
        camera_rays(k, pose)
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        camera_rays(k, pose, (4, 4), stride=0)
    with pytest.raises(ValueError, match=r"pixels must be \[B, N, P, 2\]"):
        camera_rays(k, pose, pixels=torch.zeros(1, 2, 5, 3))


def test_library_built_for_another_torch_is_reported(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "1.0.0")
    with pytest.raises(ImportError, match=r"built for torch .* but this environment has torch "
                                          r"1\.0\.0 .*pip install -e \. --no-build-isolation"):
        _ext.load()


def test_missing_library_is_reported(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "radocc._C", None)  # makes `from radocc import _C` fail
    monkeypatch.delattr(radocc, "_C")
    monkeypatch.setattr(_ext, "__file__", str(tmp_path / "_ext.py"))  # no _build_info.json
    with pytest.raises(ImportError, match=r"could not be loaded .* torch .* with CUDA .*"
                                          r"pip install -e \. --no-build-isolation"):
        _ext.load()


def test_huge_finite_values_are_not_mistaken_for_inf():
    """The finiteness check sums first; a sum that overflows must not raise for finite input."""
    density = torch.full((2, 4, 4, 2), 3e38)
    out = render(density=density)
    assert torch.isfinite(out.depth).all()


def test_zero_rays_render_and_backpropagate():
    a = good()
    density = a["density"].requires_grad_()
    out = volume_render(density, torch.zeros(2, 0, 3), torch.ones(2, 0, 3), a["features"],
                        grid=GRID, depth_bins=[0.0, 1.0])
    assert out.depth.shape == (2, 0) and out.termination.shape == (2, 0, 2)
    (out.depth.sum() + out.features.sum()).backward()
    assert density.grad.shape == density.shape and density.grad.abs().sum() == 0
