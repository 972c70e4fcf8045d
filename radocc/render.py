"""Differentiable volume rendering over voxel grids: the public API.

``volume_render`` turns per-voxel densities (and optional per-voxel features) into per-ray
depth, opacity, rendered features and ray termination distributions, with gradients to density
and features. It runs the compiled kernels (``torch.ops.radocc.render_forward/backward``) on CPU
or CUDA; ``radocc.render_reference.volume_render_reference`` is its readable pure-torch twin.
"""

import torch
from torch import Tensor

from radocc import _ext
from radocc.occ3d import FREE, VOXEL_SIZE
from radocc.render_inputs import RenderOutput, VoxelGrid, prepare_render_inputs

__all__ = ["VoxelGrid", "RenderOutput", "volume_render", "density_from_logits"]


def volume_render(density: Tensor, origins: Tensor, directions: Tensor,
                  features: Tensor | None = None, *, grid: VoxelGrid | None = None,
                  near: float = 0.0, far: float | None = None, step: float | None = None,
                  depth_bins: Tensor | list[float] | None = None) -> RenderOutput:
    """Renders rays through a voxel grid of densities.

    The part of each ray inside the grid box and inside [near, far] is cut into samples i of
    length d_i with midpoint t_i: at every voxel boundary (``step=None``, exact traversal, the
    voxel's density) or every ``step`` metres (density and features trilinearly interpolated
    between voxel centres, clamped at the border). alpha_i = 1 - exp(-sigma_i d_i),
    T_i = prod_{j<i} (1 - alpha_j), w_i = T_i alpha_i.

    Args:
        density: [B, X, Y, Z] sigma >= 0 per metre (see :func:`density_from_logits`).
        origins: [B, R, 3] ray origins, metres, grid frame. No gradient flows to rays.
        directions: [B, R, 3] ray directions, normalised inside (so depths are metres).
        features: [B, X, Y, Z, C] optional per-voxel features (channels-last).
        grid: the box the density fills (default: Occ3D's ``VoxelGrid.occ3d()``).
        near, far: metres along the ray; far=None renders until the ray leaves the grid.
        step: None for exact voxel traversal, or the uniform sample length in metres.
        depth_bins: D + 1 increasing bin edges in metres. Samples are binned by midpoint;
            those before the first edge count in bin 0, those past the last in bin D - 1.
    Returns:
        RenderOutput(depth [B, R] metres, opacity [B, R], features [B, R, C] or None,
        termination [B, R, D + 1] or None), in density's dtype (float32 for half inputs).

    Memory is O(B R (C + D)): the backward pass re-marches the rays instead of storing samples.
    """
    args = prepare_render_inputs(density, origins, directions, features, grid=grid, near=near,
                                 far=far, step=step, depth_bins=depth_bins)
    density = args.density
    if density.is_cuda and not _ext.has_cuda_kernels():
        raise RuntimeError("density is on a CUDA device but radocc was built without its CUDA "
                           "kernels; rebuild with a CUDA toolkit present: "
                           "`pip install -e . --no-build-isolation`")
    features = args.features if args.features is not None else density.new_empty(
        (*density.shape, 0))
    edges = args.edges if args.edges is not None else density.new_empty((0,))
    depth, opacity, rendered, termination = torch.ops.radocc.render_forward(
        density, features, args.origins, args.directions, edges, list(args.grid.lower),
        list(args.grid.upper), args.near, args.far, args.step or 0.0)
    return RenderOutput(depth, opacity, rendered if args.features is not None else None,
                        termination if args.edges is not None else None)


def density_from_logits(logits: Tensor, free_index: int = FREE, voxel_size: float = VOXEL_SIZE) -> Tensor:
    """Density from per-voxel class logits: sigma = -log(p_free) / voxel_size.

    A ray crossing a whole voxel (``voxel_size`` metres) then stops inside it with probability
    1 - p_free, the voxel's occupancy probability.

    Args:
        logits: [..., K] class logits, channels last (Occ3D: K = 18, free = 17).
        free_index: index of the free (empty) class in the last dimension.
        voxel_size: voxel edge length in metres.
    Returns:
        [...] density, per metre, >= 0.
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point torch.Tensor [..., K]")
    if logits.dim() < 1 or not -logits.shape[-1] <= free_index < logits.shape[-1]:
        raise ValueError(f"free_index {free_index} is out of range for logits with "
                         f"K = {logits.shape[-1] if logits.dim() else 0} classes")
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be > 0 metres, got {voxel_size}")
    return -torch.log_softmax(logits, dim=-1)[..., free_index] / voxel_size


@torch.library.register_fake("radocc::render_forward")
def _render_forward_fake(density, features, origins, directions, edges, lower, upper, near, far,
                         step):
    batch, rays = origins.shape[:2]
    return (density.new_empty(batch, rays), density.new_empty(batch, rays),
            density.new_empty(batch, rays, features.shape[-1]),
            density.new_empty(batch, rays, edges.shape[0]))


@torch.library.register_fake("radocc::render_backward")
def _render_backward_fake(v_depth, v_opacity, v_features_out, v_termination, depth, opacity,
                          features_out, termination, density, features, origins, directions,
                          edges, lower, upper, near, far, step):
    return torch.empty_like(density), torch.empty_like(features)


def _setup_context(ctx, inputs, output) -> None:
    density, features, origins, directions, edges, *params = inputs
    ctx.save_for_backward(density, features, origins, directions, edges, *output)
    ctx.params = params


def _backward(ctx, v_depth, v_opacity, v_features, v_termination):
    density, features, origins, directions, edges, *outputs = ctx.saved_tensors
    grads = [torch.zeros_like(out) if g is None else g.contiguous()
             for g, out in zip((v_depth, v_opacity, v_features, v_termination), outputs)]
    v_density, v_feats = torch.ops.radocc.render_backward(
        *grads, *outputs, density, features, origins, directions, edges, *ctx.params)
    return v_density, v_feats, None, None, None, None, None, None, None, None


def _double_backward(ctx, *grads):
    raise NotImplementedError("radocc's renderer does not support double backward "
                              "(create_graph=True through volume_render)")


torch.library.register_autograd("radocc::render_forward", _backward,
                                setup_context=_setup_context)
torch.library.register_autograd("radocc::render_backward", _double_backward)
