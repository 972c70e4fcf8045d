"""The renderer's argument types and their validation, shared by the kernels and the torch twin."""

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from radocc.occ3d import GRID_LOWER, GRID_UPPER


@dataclass(frozen=True)
class VoxelGrid:
    """An axis-aligned box cut into the voxels of a density grid.

    ``lower`` and ``upper`` are the box corners in metres (grid frame). A density of shape
    [X, Y, Z] gives voxel size ``(upper - lower) / (X, Y, Z)`` and voxel (i, j, k) is centred at
    ``lower + ((i, j, k) + 0.5) * voxel_size``. The default is Occ3D-nuScenes' ego-frame grid.
    """

    lower: tuple[float, float, float] = GRID_LOWER
    upper: tuple[float, float, float] = GRID_UPPER

    def __post_init__(self) -> None:
        for name in ("lower", "upper"):
            value = getattr(self, name)
            if len(value) != 3 or not all(math.isfinite(float(v)) for v in value):
                raise ValueError(f"VoxelGrid.{name} must be 3 finite numbers, got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if not all(u > l for l, u in zip(self.lower, self.upper)):
            raise ValueError(f"VoxelGrid.upper must exceed lower on every axis, got "
                             f"lower={self.lower}, upper={self.upper}")

    @classmethod
    def occ3d(cls) -> "VoxelGrid":
        """Occ3D-nuScenes: (-40, -40, -1) to (40, 40, 5.4) m, 200 x 200 x 16 voxels of 0.4 m."""
        return cls()

    def voxel_size(self, shape: Sequence[int]) -> tuple[float, float, float]:
        """Voxel edge lengths in metres for a grid of ``shape`` = (X, Y, Z) voxels."""
        return tuple((u - l) / n for l, u, n in zip(self.lower, self.upper, shape))


class RenderOutput(NamedTuple):
    """What :func:`radocc.render.volume_render` returns.

    depth: [B, R] expected termination distance, metres (sum of w_i t_i).
    opacity: [B, R] probability the ray terminates inside the grid (sum of w_i).
    features: [B, R, C] sum of w_i f_i, or None without features.
    termination: [B, R, D + 1] weights summed into the D depth bins by sample midpoint, then
        ``1 - opacity``; each row sums to 1. None without ``depth_bins``.
    """

    depth: Tensor
    opacity: Tensor
    features: Tensor | None
    termination: Tensor | None


class RenderInputs(NamedTuple):
    """Validated, canonical arguments: contiguous tensors of one float dtype on one device."""

    density: Tensor  # [B, X, Y, Z]
    features: Tensor | None  # [B, X, Y, Z, C]
    origins: Tensor  # [B, R, 3]
    directions: Tensor  # [B, R, 3], not normalised
    edges: Tensor | None  # [D + 1]
    grid: VoxelGrid
    near: float
    far: float  # inf for "until the ray leaves the grid"
    step: float | None


def _check_tensor(name: str, value, ndim: int, shape_text: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_text}, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must be {shape_text}, got shape {tuple(value.shape)}")
    return value


def _check_finite(name: str, value: Tensor) -> None:
    # NaN and inf propagate into a sum, so a finite sum proves every entry finite at the cost of
    # one reduction; only an overflowing sum needs the element-wise check.
    if bool(torch.isfinite(value.sum())):
        return
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite, found NaN or inf")


def prepare_render_inputs(density, origins, directions, features=None, *, grid=None,
                          near=0.0, far=None, step=None, depth_bins=None) -> RenderInputs:
    """Checks the renderer's arguments and brings them to one dtype, device and layout.

    Raises TypeError for a wrong type or dtype and ValueError for a wrong shape, device or value,
    naming the argument. Computation runs in density's dtype (float16 / bfloat16 are computed in
    float32). Value checks (NaN, negative density, zero directions) need a device sync and are
    skipped while torch.compile traces.
    """
    density = _check_tensor("density", density, 4, "[B, X, Y, Z]")
    origins = _check_tensor("origins", origins, 3, "[B, R, 3]")
    directions = _check_tensor("directions", directions, 3, "[B, R, 3]")
    batch = density.shape[0]
    if origins.shape[0] != batch or origins.shape[2] != 3:
        raise ValueError(f"origins must be [B, R, 3] with B = {batch} (density's batch), "
                         f"got shape {tuple(origins.shape)}")
    if directions.shape != origins.shape:
        raise ValueError(f"directions must have origins' shape {tuple(origins.shape)}, "
                         f"got {tuple(directions.shape)}")
    if min(density.shape[1:]) < 1:
        raise ValueError(f"density needs at least one voxel per axis, got {tuple(density.shape)}")
    if features is not None:
        features = _check_tensor("features", features, 5, "[B, X, Y, Z, C]")
        if features.shape[:4] != density.shape or features.shape[4] < 1:
            raise ValueError(f"features must be [B, X, Y, Z, C] with [B, X, Y, Z] = "
                             f"{tuple(density.shape)} and C >= 1, got {tuple(features.shape)}")
    if grid is None:
        grid = VoxelGrid()
    if not isinstance(grid, VoxelGrid):
        raise TypeError(f"grid must be a radocc.render.VoxelGrid, got {type(grid).__name__}")

    device = density.device
    for name, value in (("origins", origins), ("directions", directions), ("features", features)):
        if value is not None and value.device != device:
            raise ValueError(f"{name} is on {value.device} but density is on {device}; "
                             "all tensors must be on one device")

    near = float(near)
    if not (math.isfinite(near) and near >= 0):
        raise ValueError(f"near must be a finite distance >= 0 in metres, got {near}")
    far = math.inf if far is None else float(far)
    if not far > near:
        raise ValueError(f"far must be greater than near ({near}), got {far}")
    if step is not None:
        step = float(step)
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"step must be a finite length > 0 in metres (or None), got {step}")

    dtype = density.dtype if density.dtype in (torch.float32, torch.float64) else torch.float32
    edges = None
    if depth_bins is not None:
        edges = torch.as_tensor(depth_bins, device=device)
        if edges.dtype == torch.bool or edges.is_complex():
            raise TypeError(f"depth_bins must hold numbers, got dtype {edges.dtype}")
        edges = edges.to(dtype).contiguous()
        if edges.dim() != 1 or edges.numel() < 2:
            raise ValueError(f"depth_bins must be a 1-D sequence of at least 2 edges (metres), "
                             f"got shape {tuple(edges.shape)}")

    density = density.to(dtype).contiguous()
    features = None if features is None else features.to(dtype).contiguous()
    origins = origins.detach().to(dtype).contiguous()
    directions = directions.detach().to(dtype).contiguous()

    if not torch.compiler.is_compiling():
        _check_finite("density", density)
        if bool((density < 0).any()):
            raise ValueError(f"density must be >= 0 (sigma per metre), found minimum "
                             f"{density.min().item():.4g}; use density_from_logits for logits")
        if features is not None:
            _check_finite("features", features)
        _check_finite("origins", origins)
        _check_finite("directions", directions)
        if bool((directions.abs().amax(dim=-1) == 0).any()):
            raise ValueError("directions must be non-zero vectors, found a zero-length direction")
        if edges is not None:
            _check_finite("depth_bins", edges)
            if bool((edges[1:] <= edges[:-1]).any()):
                raise ValueError(f"depth_bins must be strictly increasing, got {edges.tolist()}")
    return RenderInputs(density, features, origins, directions, edges, grid, near, far, step)
