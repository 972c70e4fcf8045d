"""Pure-torch twin of the renderer: readable, differentiable by autograd, and memory-hungry.

It materialises every sample of every ray ([B, R, S] and [B, R, S, C] tensors), which the
compiled kernels never do. The tests compare the kernels against it; the benchmark times them
against it. Same signature and outputs as :func:`radocc.render.volume_render`.
"""

import math

import torch
from torch import Tensor

from radocc.raycast import clip_to_box
from radocc.render_inputs import RenderOutput, VoxelGrid, prepare_render_inputs


def clip_rays(origins: Tensor, directions: Tensor, grid: VoxelGrid, near: float,
              far: float) -> tuple[Tensor, Tensor]:
    """Where unit rays enter and leave the grid box, clipped to [near, far].

    Args:
        origins, directions: [B, R, 3], directions of unit length.
    Returns:
        t0, t1: [B, R] metres; t0 == t1 == 0 for rays that miss.
    """
    t0, t1, hit = clip_to_box(origins, directions, origins.new_tensor(grid.lower),
                              origins.new_tensor(grid.upper), near, far)
    return torch.where(hit, t0, 0.0), torch.where(hit, t1, 0.0)


def exact_intervals(origins: Tensor, directions: Tensor, grid: VoxelGrid, shape: tuple[int, ...],
                    near: float, far: float) -> tuple[Tensor, Tensor]:
    """Cuts each ray at every voxel boundary plane: [B, R, S] interval starts and ends (metres).

    S = X + Y + Z + 4 for every ray; unused intervals have zero length.
    """
    t0, t1 = clip_rays(origins, directions, grid, near, far)
    cuts = [t0[..., None], t1[..., None]]
    for axis, (low, size) in enumerate(zip(grid.lower, grid.voxel_size(shape))):
        k = torch.arange(shape[axis] + 1, device=origins.device, dtype=origins.dtype)
        planes = low + k * size  # [N + 1]
        d = directions[..., axis:axis + 1]
        t = (planes - origins[..., axis:axis + 1]) / torch.where(d == 0, torch.ones_like(d), d)
        cuts.append(torch.where(d == 0, math.inf, t))
    cuts = torch.cat(cuts, dim=-1)
    cuts = torch.minimum(torch.maximum(cuts, t0[..., None]), t1[..., None]).sort(dim=-1).values
    return cuts[..., :-1], cuts[..., 1:]


def uniform_intervals(origins: Tensor, directions: Tensor, grid: VoxelGrid, near: float,
                      far: float, step: float) -> tuple[Tensor, Tensor]:
    """Intervals of length ``step`` from where each ray enters (the last one cut where it leaves).

    Returns [B, R, S] starts and ends in metres, S = the most samples any ray needs; unused
    intervals have zero length.
    """
    t0, t1 = clip_rays(origins, directions, grid, near, far)
    count = int(torch.ceil((t1 - t0) / step).max().item()) if t0.numel() else 0
    k = torch.arange(max(count, 1), device=origins.device, dtype=origins.dtype)
    starts = t0[..., None] + k * step
    ends = torch.minimum(starts + step, t1[..., None])
    starts = torch.minimum(starts, ends)
    return starts, ends


def voxel_index(points: Tensor, grid: VoxelGrid, shape: tuple[int, ...]) -> Tensor:
    """Linear index into [X, Y, Z] of the voxel holding each point (clamped to the grid): [...]."""
    index = torch.zeros(points.shape[:-1], dtype=torch.long, device=points.device)
    for axis, (low, size) in enumerate(zip(grid.lower, grid.voxel_size(shape))):
        i = torch.floor((points[..., axis] - low) / size).long().clamp(0, shape[axis] - 1)
        index = index * shape[axis] + i
    return index


def trilinear_corners(points: Tensor, grid: VoxelGrid,
                      shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Trilinear interpolation between voxel centres, held constant beyond the border.

    Returns the 8 corner voxels' linear indices [..., 8] and weights [..., 8] of each point
    (the same as grid_sample with align_corners=False, padding_mode="border").
    """
    low_idx, high_idx, fracs = [], [], []
    for axis, (low, size) in enumerate(zip(grid.lower, grid.voxel_size(shape))):
        n = shape[axis]
        u = ((points[..., axis] - low) / size - 0.5).clamp(0, n - 1)
        i = torch.floor(u).clamp(0, max(n - 2, 0))
        low_idx.append(i.long())
        high_idx.append((i.long() + 1).clamp(max=n - 1))
        fracs.append(u - i)
    indices, weights = [], []
    for corner in range(8):
        bits = [(corner >> (2 - axis)) & 1 for axis in range(3)]
        index = torch.zeros_like(low_idx[0])
        weight = torch.ones_like(fracs[0])
        for axis, bit in enumerate(bits):
            index = index * shape[axis] + (high_idx[axis] if bit else low_idx[axis])
            weight = weight * (fracs[axis] if bit else 1 - fracs[axis])
        indices.append(index)
        weights.append(weight)
    return torch.stack(indices, dim=-1), torch.stack(weights, dim=-1)


def _gather(values: Tensor, index: Tensor) -> Tensor:
    """values [B, V, C] at index [B, ...] -> [B, ..., C]."""
    flat = index.reshape(index.shape[0], -1, 1).expand(-1, -1, values.shape[-1])
    return values.gather(1, flat).reshape(*index.shape, values.shape[-1])


def sample_grid(values: Tensor, points: Tensor, grid: VoxelGrid, trilinear: bool) -> Tensor:
    """Reads per-voxel values [B, X, Y, Z, C] at points [B, ..., 3] -> [B, ..., C]."""
    shape = tuple(values.shape[1:4])
    flat = values.reshape(values.shape[0], -1, values.shape[-1])
    if not trilinear:
        return _gather(flat, voxel_index(points, grid, shape))
    index, weight = trilinear_corners(points, grid, shape)
    return (_gather(flat, index) * weight[..., None]).sum(dim=-2)


def weights_from_density(sigmas: Tensor, lengths: Tensor) -> Tensor:
    """w_i = T_i alpha_i with alpha_i = 1 - exp(-sigma_i d_i), T_i = exp(-sum_{j<i} sigma_j d_j).

    sigmas, lengths: [..., S] -> weights [..., S].
    """
    tau = sigmas * lengths
    trans = torch.exp(-(torch.cumsum(tau, dim=-1) - tau))
    return trans * -torch.expm1(-tau)


def volume_render_reference(density: Tensor, origins: Tensor, directions: Tensor,
                            features: Tensor | None = None, *, grid: VoxelGrid | None = None,
                            near: float = 0.0, far: float | None = None,
                            step: float | None = None,
                            depth_bins: Tensor | list[float] | None = None) -> RenderOutput:
    """The renderer in plain torch (see :func:`radocc.render.volume_render` for the contract)."""
    args = prepare_render_inputs(density, origins, directions, features, grid=grid, near=near,
                                 far=far, step=step, depth_bins=depth_bins)
    density, grid = args.density, args.grid
    shape = tuple(density.shape[1:])
    dirs = args.directions / args.directions.norm(dim=-1, keepdim=True)
    if args.step is None:
        starts, ends = exact_intervals(args.origins, dirs, grid, shape, args.near, args.far)
    else:
        starts, ends = uniform_intervals(args.origins, dirs, grid, args.near, args.far, args.step)
    mids = 0.5 * (starts + ends)  # [B, R, S]
    points = args.origins[..., None, :] + mids[..., None] * dirs[..., None, :]
    trilinear = args.step is not None
    sigmas = sample_grid(density[..., None], points, grid, trilinear)[..., 0]
    weights = weights_from_density(sigmas, ends - starts)

    depth = (weights * mids).sum(dim=-1)
    opacity = weights.sum(dim=-1)
    rendered = None
    if args.features is not None:
        rendered = (weights[..., None] * sample_grid(args.features, points, grid, trilinear)).sum(-2)
    termination = None
    if args.edges is not None:
        num_bins = args.edges.numel() - 1
        bins = (torch.searchsorted(args.edges, mids.contiguous(), right=True) - 1).clamp(
            0, num_bins - 1)
        binned = weights.new_zeros(*weights.shape[:-1], num_bins).scatter_add(-1, bins, weights)
        termination = torch.cat([binned, (1 - opacity)[..., None]], dim=-1)
    return RenderOutput(depth, opacity, rendered, termination)
