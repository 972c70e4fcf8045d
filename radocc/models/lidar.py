"""The teacher's LiDAR branch: voxelisation and a SECOND / BEVFusion sparse encoder to a BEV map.

Points (x, y, z metres in the ego/grid frame, intensity, time lag) are averaged per voxel
(`voxelize`), run through spconv's real sparse 3D convolutions (`LidarEncoder`), scattered to a
dense volume whose z axis is folded into channels, giving a BEV map `[B, C, Y, X]` on the occupancy
model's BEV grid (rows = y, columns = x, index 0 at the grid's lower corner).

Architecture (mit-han-lab/bevfusion `SparseEncoder`, spconv 2.x; tensors z-first, as spconv wants):

    SubMConv3d in -> 16, BN, ReLU
    per stage i: 2 SparseBasicBlocks (SubM 3^3 conv-BN-ReLU x2, residual, one indice_key per stage)
                 + SparseConv3d down to stage_channels[i], stride 2 in z, padding 1
    2 SparseBasicBlocks at stage_channels[-1]
    conv_out: SparseConv3d kernel (3, 1, 1), stride (2, 1, 1), padding (1, 0, 0) (reduces z only)
    dense [B, C, Z', Y', X'] -> fold z into channels [B, C * Z', Y', X']

Choices where the paper code does not fit the Occ3D grid:
- x/y strides. BEVFusion strides 2 in x/y in all 3 stages (1024 -> 128 cells). Here the voxel grid
  (800 x 800 at 0.1 m over the 80 m box) must land on the 200 x 200 BEV (0.4 m): when the ratio is
  2^k with k <= the number of stages, only the first k stages stride in x/y (default: 2 of 3), the
  others stride only in z with a (3, 1, 1) kernel (a 3^3 kernel at stride 1 would dilate the active
  set 9-fold in x/y). Otherwise every stage strides 2 in x/y and the result is resized bilinearly to
  bev_shape (as MapTR's fusion resizes its LiDAR BEV).
- channels. conv_out emits out_channels // Z' channels, so the fold gives out_channels exactly
  (default 128 x 2 = 256, as BEVFusion) and cells without LiDAR stay exactly 0. If out_channels is
  not divisible by Z', conv_out keeps stage_channels[-1] and a 1x1 conv-BN-ReLU maps to out_channels.
- voxel features: the mean of all points in a voxel (dynamic voxelisation, no 10-point cap).
- max_voxels: a per-sample cap; the voxels kept are chosen by a fixed hash of the voxel index (a
  deterministic, spatially uniform subset, the same in training and evaluation), not "first N in
  sorted order", which would drop the top of the scene.
- conv algorithm: `ConvAlgo.Native` on CPU (the only one spconv's CUDA builds run on CPU, and the
  faster one in fp32 without tensor cores), spconv's default on CUDA; chosen at every forward from
  the input's device (spconv >= 2.2 keeps one weight layout for all algorithms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn



@functools.cache
def _spconv():
    """spconv.pytorch, imported on first use (the import takes seconds; camera-only models never
    need it). Raises ImportError saying which wheel to install."""
    try:
        import spconv.pytorch as spconv
    except Exception as error:  # ImportError, or OSError from a wheel built for another CUDA
        raise ImportError(
            "LidarEncoder needs spconv 2.x, which failed to import "
            f"({type(error).__name__}: {error}). Install the wheel matching "
            f"torch's CUDA (torch {torch.__version__}, CUDA {torch.version.cuda}): "
            "`pip install spconv-cu118` (or spconv-cu120/cu121/cu124/cu126), or `pip install spconv` "
            "for a CPU-only build.") from error
    return spconv

_BN = dict(eps=1e-3, momentum=0.01)
# Knuth's multiplicative hash: a fixed pseudo-random priority per voxel for the max_voxels cap.
_HASH_MULT = 2654435761


@dataclass
class LidarConfig:
    """Sizes of the LiDAR branch; the defaults are the paper-scale ones on the Occ3D grid.

    voxel_size: (x, y, z) metres. point_range: (x0, y0, z0, x1, y1, z1) metres, None = the occupancy
    grid's box; its x/y extent must equal the grid's (the BEV output covers the grid), z may differ.
    in_channels: point features (x, y, z, intensity, time lag), averaged per voxel.
    base_channels: the first SubMConv3d's output. stage_channels: each stage's downsampling output.
    out_channels: BEV channels. max_voxels: per-sample cap on non-empty voxels (see module doc).
    """

    voxel_size: tuple[float, float, float] = (0.1, 0.1, 0.2)
    point_range: tuple[float, ...] | None = None
    in_channels: int = 5
    base_channels: int = 16
    stage_channels: tuple[int, ...] = (32, 64, 128)
    out_channels: int = 256
    max_voxels: int = 120000

    def __post_init__(self):  # TOML gives lists
        self.voxel_size = tuple(float(v) for v in self.voxel_size)
        self.stage_channels = tuple(int(c) for c in self.stage_channels)
        if self.point_range is not None:
            self.point_range = tuple(float(v) for v in self.point_range)


def _grid_shape(lower: Tensor, upper: Tensor, voxel_size: Tensor) -> tuple[int, int, int]:
    """(X, Y, Z) voxel counts; the box must hold a whole number of voxels along each axis."""
    ratio = ((upper - lower) / voxel_size).tolist()
    shape = tuple(int(round(r)) for r in ratio)
    if any(s < 1 or abs(r - s) > 1e-4 * max(1.0, r) for r, s in zip(ratio, shape)):
        raise ValueError(f"voxelize: (upper - lower) / voxel_size must be whole positive numbers, "
                         f"got {ratio} (lower {lower.tolist()}, upper {upper.tolist()}, "
                         f"voxel_size {voxel_size.tolist()})")
    return shape  # type: ignore[return-value]


def voxelize(points: Tensor, num_points: Tensor, lower: Sequence[float] | Tensor,
             upper: Sequence[float] | Tensor, voxel_size: Sequence[float] | Tensor,
             max_voxels: int | None = None) -> tuple[Tensor, Tensor, tuple[int, int, int]]:
    """Average the points of each non-empty voxel (pure torch, any device, no loop over points).

    Args:
        points: [B, P, C] float; columns 0..2 are x, y, z metres, zero-padded after num_points rows.
        num_points: [B] integer, valid rows per batch item (0 <= n <= P).
        lower, upper: (x, y, z) metres, the voxelised box; a point is kept when
            lower <= p < upper on every axis (and finite).
        voxel_size: (x, y, z) metres; (upper - lower) / voxel_size must be whole numbers.
        max_voxels: keep at most this many voxels per batch item (a fixed hash of the voxel index
            picks which), None = all.
    Returns:
        features: [V, C] float, the mean of each voxel's points (all C columns).
        indices: [V, 4] int32 (batch, z, y, x), sorted in that order (spconv's layout: columns
            follow spatial_shape's order).
        spatial_shape: (Z, Y, X) voxel counts.
    """
    if points.dim() != 3 or points.shape[-1] < 3 or not points.is_floating_point():
        raise ValueError(f"voxelize: points must be a float [B, P, C>=3] tensor, got "
                         f"{points.dtype} {tuple(points.shape)}")
    B, P, C = points.shape
    if num_points.shape != (B,) or num_points.is_floating_point():
        raise ValueError(f"voxelize: num_points must be an integer [B={B}] tensor, got "
                         f"{num_points.dtype} {tuple(num_points.shape)}")
    if bool((num_points < 0).any()) or bool((num_points > P).any()):
        raise ValueError(f"voxelize: num_points must lie in [0, P={P}], got {num_points.tolist()}")
    if max_voxels is not None and max_voxels < 1:
        raise ValueError(f"voxelize: max_voxels must be >= 1 or None, got {max_voxels}")
    device = points.device
    lower_, upper_, size_ = (torch.as_tensor(v, dtype=torch.float64).reshape(-1).cpu()
                             for v in (lower, upper, voxel_size))
    if lower_.numel() != 3 or upper_.numel() != 3 or size_.numel() != 3 or bool((size_ <= 0).any()):
        raise ValueError(f"voxelize: lower, upper, voxel_size must be 3 numbers (voxel_size > 0), "
                         f"got {lower_.tolist()}, {upper_.tolist()}, {size_.tolist()}")
    X, Y, Z = _grid_shape(lower_, upper_, size_)

    valid = torch.arange(P, device=device)[None, :] < num_points.to(device)[:, None]  # [B, P]
    xyz = points[..., :3].double()
    cell = torch.floor((xyz - lower_.to(device)) / size_.to(device)).long()  # floor, not truncation
    dims = torch.tensor([X, Y, Z], device=device)
    valid &= torch.isfinite(xyz).all(-1) & ((cell >= 0) & (cell < dims)).all(-1)
    batch = torch.arange(B, device=device)[:, None].expand(B, P)[valid]
    cell = cell[valid]
    key = ((batch * Z + cell[:, 2]) * Y + cell[:, 1]) * X + cell[:, 0]
    key, inverse = torch.unique(key, return_inverse=True)  # sorted: (b, z, y, x) order
    V = key.numel()
    feats = points[valid]
    features = feats.new_zeros(V, C).index_add_(0, inverse, feats)
    count = torch.bincount(inverse, minlength=V).to(feats.dtype)
    features = features / count[:, None]

    x, rest = key % X, key // X
    y, rest = rest % Y, rest // Y
    z, b = rest % Z, rest // Z
    indices = torch.stack([b, z, y, x], 1)
    if max_voxels is not None and V > 0:
        # Rank the voxels of each item by a fixed hash; keep the max_voxels first of each item.
        priority = (key * _HASH_MULT) % (1 << 32)
        order = torch.argsort(b * (1 << 32) + priority)
        per_item = torch.bincount(b, minlength=B)
        start = torch.cumsum(per_item, 0) - per_item
        rank = torch.empty_like(order)
        rank[order] = torch.arange(V, device=device) - start[b[order]]
        keep = rank < max_voxels
        features, indices = features[keep], indices[keep]
    return features, indices.int(), (Z, Y, X)


class _SparseConvBNReLU(nn.Module):
    """A spconv convolution (no bias), BatchNorm1d on the active features, ReLU."""

    def __init__(self, conv: nn.Module, channels: int):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm1d(channels, **_BN)

    def forward(self, x):
        x = self.conv(x)
        return x.replace_feature(F.relu(self.bn(x.features)))


class _SparseBasicBlock(nn.Module):
    """SubM 3^3 conv-BN-ReLU, SubM 3^3 conv-BN, + input, ReLU (the active set is unchanged)."""

    def __init__(self, channels: int, indice_key: str):
        super().__init__()
        spconv = _spconv()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn1 = nn.BatchNorm1d(channels, **_BN)
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn2 = nn.BatchNorm1d(channels, **_BN)

    def forward(self, x):
        out = self.conv1(x)
        out = out.replace_feature(F.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(F.relu(self.bn2(out.features) + x.features))


class LidarEncoder(nn.Module):
    """Sparse 3D encoder from points to a BEV map on the occupancy model's grid.

    Args:
        config: LidarConfig.
        grid_lower, grid_upper: (x, y, z) metres, the occupancy grid's box (Occ3D: (-40, -40, -1),
            (40, 40, 5.4)); the BEV output covers its x/y extent.
        bev_shape: (Y, X) cells of the BEV output (Occ3D: (200, 200)).
    Attributes:
        out_channels: C of the output. spatial_shape: (Z, Y, X) of the voxel grid.
        xy_strides: how many stages stride 2 in x/y. resize: whether the output is resized to bev_shape.
    """

    def __init__(self, config: LidarConfig, grid_lower: Sequence[float], grid_upper: Sequence[float],
                 bev_shape: tuple[int, int]):
        super().__init__()
        spconv = _spconv()
        c = config
        if len(c.voxel_size) != 3 or min(c.voxel_size) <= 0:
            raise ValueError(f"LidarConfig.voxel_size must be 3 positive numbers (x, y, z metres), got {c.voxel_size}")
        if len(grid_lower) != 3 or len(grid_upper) != 3:
            raise ValueError(f"LidarEncoder: grid_lower and grid_upper must be (x, y, z), "
                             f"got {grid_lower}, {grid_upper}")
        if len(bev_shape) != 2 or min(bev_shape) < 1:
            raise ValueError(f"LidarEncoder: bev_shape must be (Y, X) positive, got {bev_shape}")
        if not c.stage_channels or min(c.stage_channels) < 1 or c.base_channels < 1 or c.in_channels < 3:
            raise ValueError(f"LidarConfig: stage_channels must be non-empty and positive, base_channels "
                             f">= 1, in_channels >= 3, got {c.stage_channels}, {c.base_channels}, {c.in_channels}")
        if c.out_channels < 1 or c.max_voxels < 1:
            raise ValueError(f"LidarConfig: out_channels and max_voxels must be >= 1, "
                             f"got {c.out_channels}, {c.max_voxels}")
        point_range = tuple(c.point_range) if c.point_range is not None else (*grid_lower, *grid_upper)
        if len(point_range) != 6:
            raise ValueError(f"LidarConfig.point_range must be (x0, y0, z0, x1, y1, z1) or None, got {c.point_range}")
        grid_xy = (grid_lower[0], grid_lower[1], grid_upper[0], grid_upper[1])
        range_xy = (point_range[0], point_range[1], point_range[3], point_range[4])
        if any(abs(float(a) - float(g)) > 1e-6 for a, g in zip(range_xy, grid_xy)):
            raise ValueError(f"LidarConfig.point_range must cover the grid's x/y box {grid_xy} exactly "
                             f"(z may differ), got {point_range}")
        self.config = c
        self.register_buffer("lower", torch.tensor(point_range[:3], dtype=torch.float64), persistent=False)
        self.register_buffer("upper", torch.tensor(point_range[3:], dtype=torch.float64), persistent=False)
        X, Y, Z = _grid_shape(self.lower, self.upper, torch.tensor(c.voxel_size, dtype=torch.float64))
        self.spatial_shape = (Z, Y, X)
        self.bev_shape = (int(bev_shape[0]), int(bev_shape[1]))

        n = len(c.stage_channels)
        ratio_y, ratio_x = Y / self.bev_shape[0], X / self.bev_shape[1]
        k = int(round(math.log2(ratio_x))) if ratio_x >= 1 else -1
        exact = ratio_x == ratio_y and 0 <= k <= n and ratio_x == 2 ** k
        self.xy_strides = k if exact else n

        self.conv_input = _SparseConvBNReLU(
            spconv.SubMConv3d(c.in_channels, c.base_channels, 3, padding=1, bias=False, indice_key="subm0"),
            c.base_channels)
        stages, z, y, x, ch = [], Z, Y, X, c.base_channels
        for i, out_ch in enumerate(c.stage_channels):
            if i < self.xy_strides:  # 3^3 kernel, stride 2 everywhere
                down = spconv.SparseConv3d(ch, out_ch, 3, stride=2, padding=1, bias=False)
                y, x = (y + 1) // 2, (x + 1) // 2
            else:  # z only
                down = spconv.SparseConv3d(ch, out_ch, (3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0), bias=False)
            z = (z + 1) // 2
            stages.append(nn.Sequential(_SparseBasicBlock(ch, f"subm{i}"), _SparseBasicBlock(ch, f"subm{i}"),
                                        _SparseConvBNReLU(down, out_ch)))
            ch = out_ch
        stages.append(nn.Sequential(_SparseBasicBlock(ch, f"subm{n}"), _SparseBasicBlock(ch, f"subm{n}")))
        self.stages = nn.ModuleList(stages)
        z = (z + 1) // 2  # conv_out
        out_ch = c.out_channels // z if c.out_channels % z == 0 else ch
        self.conv_out = _SparseConvBNReLU(
            spconv.SparseConv3d(ch, out_ch, (3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0), bias=False), out_ch)
        self.dense_shape = (z, y, x)
        self.project = nn.Identity() if out_ch * z == c.out_channels else nn.Sequential(
            nn.Conv2d(out_ch * z, c.out_channels, 1, bias=False), nn.BatchNorm2d(c.out_channels), nn.ReLU())
        self.resize = (y, x) != self.bev_shape
        self.out_channels = c.out_channels
        self._convs = [m for m in self.modules() if isinstance(m, spconv.conv.SparseConvolution)]
        self._cuda_algos = [m.algo for m in self._convs]  # spconv's own choice, used on CUDA

    def _set_algorithm(self, device: torch.device) -> None:
        for conv, cuda_algo in zip(self._convs, self._cuda_algos):
            conv.algo = _spconv().ConvAlgo.Native if device.type == "cpu" else cuda_algo

    def forward(self, points: Tensor, num_points: Tensor) -> Tensor:
        """points: [B, P, in_channels] float (x, y, z metres in the grid frame, intensity, time lag),
        zero-padded; num_points: [B] integer, valid rows per item.
        Returns the BEV map [B, out_channels, Y, X] (bev_shape; x = columns, y = rows, index 0 at the
        grid's lower corner). Items without points inside the range give all-zero maps (exactly
        zero when no 1x1 projection is needed, see the module doc)."""
        c = self.config
        if points.dim() != 3 or points.shape[-1] != c.in_channels:
            raise ValueError(f"LidarEncoder: points must be [B, P, {c.in_channels}], got {tuple(points.shape)}")
        B = points.shape[0]
        features, indices, shape = voxelize(points, num_points, self.lower, self.upper, c.voxel_size,
                                            max_voxels=c.max_voxels)
        Z, Y, X = self.dense_shape
        if features.shape[0] == 0:  # spconv cannot convolve an empty set
            bev = points.new_zeros(B, self.conv_out.bn.num_features * Z, Y, X)
        else:
            self._set_algorithm(points.device)
            x = _spconv().SparseConvTensor(features, indices, list(shape), B)
            x = self.conv_input(x)
            for stage in self.stages:
                x = stage(x)
            x = self.conv_out(x)
            assert tuple(x.spatial_shape) == self.dense_shape, (x.spatial_shape, self.dense_shape)
            # Scatter to [B, Z', Y', X', C] (spconv's .dense() indexes with a list, deprecated in torch).
            dense = x.features.new_zeros(B, Z, Y, X, x.features.shape[1])
            b, z, y, xx = x.indices.long().unbind(1)
            dense = dense.index_put((b, z, y, xx), x.features)
            bev = dense.permute(0, 4, 1, 2, 3).reshape(B, -1, Y, X)  # channel = c * Z' + z
        bev = self.project(bev)
        if self.resize:
            bev = F.interpolate(bev, size=self.bev_shape, mode="bilinear", align_corners=False)
        return bev
