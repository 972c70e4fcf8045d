"""Per-sample render and depth targets, prepared in the dataloader workers (not in the step).

For each sample, :func:`render_targets` chooses the pixels whose rays teacher and student are
rendered along (where LiDAR points project, as the RadOcc authors do, or a strided pixel grid) and
looks up, at the same pixels, the SAM segment ids (offset per camera so they are unique in the
sample, :func:`radocc.rays.lookup_segments`) and the LiDAR depth. The rays themselves are built in
the step from these pixels by :class:`radocc.distill.RenderDistillLoss` (with the project's one ray
generator, :func:`radocc.rays.camera_rays`). :func:`lss_depth_targets` gives the LSS depth
supervision (min LiDAR depth per 16 x 16 patch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from radocc.rays import SEGMENT_OFFSET, lookup_pixels, lookup_segments, pixel_grid, pixel_index

__all__ = ["SEGMENT_OFFSET", "RayChoice", "project_points", "sparse_depth", "lss_depth_targets",
           "render_targets", "camera_depth_image"]


@dataclass(frozen=True)
class RayChoice:
    """How render rays are chosen (the [render] section's data-side settings).

    pixels: "lidar" (pixels where LiDAR points project) or "grid" (every ``stride``-th pixel).
    rays_per_image: rays per camera (drawn without replacement; 0 = every candidate pixel, which
        needs the same count for every camera and sample: only for "grid").
    """

    pixels: str = "lidar"
    stride: int = 4
    rays_per_image: int = 1024

    def __post_init__(self) -> None:
        if self.pixels not in ("lidar", "grid"):
            raise ValueError(f"RayChoice.pixels must be 'lidar' or 'grid', got {self.pixels!r}")
        if not (isinstance(self.stride, int) and self.stride >= 1):
            raise ValueError(f"RayChoice.stride must be an integer >= 1, got {self.stride!r}")
        if not (isinstance(self.rays_per_image, int) and self.rays_per_image >= 0):
            raise ValueError(f"RayChoice.rays_per_image must be an integer >= 0, got {self.rays_per_image!r}")


def project_points(points: Tensor, intrinsics: Tensor, cam2ego: Tensor,
                   image_size: tuple[int, int], min_depth: float = 0.5) -> tuple[Tensor, ...]:
    """Project ego-frame points into N pinhole cameras.

    Args:
        points: [P, >=3] metres, ego frame (x, y, z first).
        intrinsics: [N, 3, 3]; cam2ego: [N, 4, 4].
        image_size: (H, W) pixels; points outside the image or nearer than ``min_depth`` (camera z,
            metres) are dropped.
    Returns:
        camera [M] int64, uv [M, 2] pixels (continuous), z [M] camera depth (metres),
        distance [M] metres from the camera centre (depth along the ray).
    """
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be [P, >=3], got {tuple(points.shape)}")
    if intrinsics.dim() != 3 or intrinsics.shape[1:] != (3, 3):
        raise ValueError(f"intrinsics must be [N, 3, 3], got {tuple(intrinsics.shape)}")
    if cam2ego.shape != (intrinsics.shape[0], 4, 4):
        raise ValueError(f"cam2ego must be [N, 4, 4] with N = {intrinsics.shape[0]}, got {tuple(cam2ego.shape)}")
    height, width = image_size
    xyz = points[:, :3].float()
    ego2cam = torch.linalg.inv(cam2ego.float())
    cam = xyz[None] @ ego2cam[:, :3, :3].transpose(1, 2) + ego2cam[:, None, :3, 3]  # [N, P, 3]
    z = cam[..., 2]
    uvw = cam @ intrinsics.float().transpose(1, 2)
    uv = uvw[..., :2] / uvw[..., 2:].clamp_min(1e-6)
    keep = ((z > min_depth) & (uv[..., 0] >= 0) & (uv[..., 0] <= width - 1)
            & (uv[..., 1] >= 0) & (uv[..., 1] <= height - 1))
    camera, index = keep.nonzero(as_tuple=True)
    return camera, uv[camera, index], z[camera, index], cam[camera, index].norm(dim=-1)


def sparse_depth(camera: Tensor, uv: Tensor, depth: Tensor, num_cameras: int,
                 image_size: tuple[int, int]) -> Tensor:
    """[N, H, W] the nearest LiDAR depth per pixel (0 where no point projects)."""
    height, width = image_size
    flat = camera * (height * width) + pixel_index(uv, image_size)
    out = torch.full((num_cameras * height * width,), float("inf"))
    out.scatter_reduce_(0, flat, depth.float(), reduce="amin")
    out[torch.isinf(out)] = 0.0
    return out.view(num_cameras, height, width)


def lss_depth_targets(depth_image: Tensor, downsample: int = 16) -> Tensor:
    """[N, H, W] camera-z depth -> [N, H / d, W / d]: the nearest non-zero depth in each
    ``downsample`` x ``downsample`` patch (0 where the patch has none), as BEVDet's depth loss."""
    if depth_image.dim() != 3:
        raise ValueError(f"depth_image must be [N, H, W], got {tuple(depth_image.shape)}")
    n, height, width = depth_image.shape
    if height % downsample or width % downsample:
        raise ValueError(f"depth image {height}x{width} is not a multiple of {downsample}")
    d = torch.where(depth_image > 0, depth_image, torch.full_like(depth_image, float("inf")))
    d = d.reshape(n, height // downsample, downsample, width // downsample, downsample)
    d = d.amin(dim=(2, 4))
    return torch.where(torch.isinf(d), torch.zeros_like(d), d)


def _choose(count: int, wanted: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """``wanted`` indices into ``count`` candidates (random, without replacement) and a validity
    mask: when there are fewer candidates, the rest are padding (index 0, invalid)."""
    if count >= wanted:
        return torch.from_numpy(rng.choice(count, size=wanted, replace=False)), torch.ones(wanted, dtype=torch.bool)
    index = torch.zeros(wanted, dtype=torch.long)
    index[:count] = torch.from_numpy(rng.permutation(count))
    valid = torch.zeros(wanted, dtype=torch.bool)
    valid[:count] = True
    return index, valid


def render_targets(item: dict, choice: RayChoice, rng: np.random.Generator) -> dict[str, Tensor]:
    """Ray pixels and per-ray lookups for one dataset item (see ``NuScenesOccDataset``).

    Returns:
        ray_pixels [N, P, 2] float32 (u, v) pixels of the N cameras' rays (P = rays per camera);
        ray_valid [N, P] bool (False for padding when a camera has fewer candidate pixels than P);
        ray_depth [N, P] metres along the ray of the LiDAR return at the pixel (0 = none);
        ray_segments [N, P] int64 segment id + camera * SEGMENT_OFFSET (0 = no segment or
        padding), only when the item has ``segments``.
    """
    images, intrinsics, cam2ego = item["images"], item["intrinsics"], item["cam2ego"]
    num_cams, _, height, width = images.shape
    size = (height, width)
    camera, uv, _, distance = project_points(item["points"], intrinsics, cam2ego, size)
    per_camera = choice.rays_per_image
    pixels, valid, depth = [], [], []
    if choice.pixels == "grid":
        grid = pixel_grid(size, choice.stride)
        wanted = per_camera or len(grid)
        for _ in range(num_cams):
            index, ok = _choose(len(grid), wanted, rng)
            pixels.append(grid[index])
            valid.append(ok)
        lidar = sparse_depth(camera, uv, distance, num_cams, size)
        depth_t = lookup_pixels(lidar, torch.stack(pixels))
    elif choice.pixels == "lidar":
        if per_camera <= 0:
            raise ValueError("render.rays_per_image must be > 0 for LiDAR pixels (their count varies)")
        for n in range(num_cams):
            mine = (camera == n).nonzero().squeeze(1)
            index, ok = _choose(len(mine), per_camera, rng)
            if len(mine):
                pixels.append(uv[mine[index]])
                depth.append(distance[mine[index]])
            else:
                pixels.append(pixel_grid(size, 1)[:per_camera].clone())
                depth.append(torch.zeros(per_camera))
            valid.append(ok)
        depth_t = torch.stack(depth)
    else:
        raise ValueError(f"render pixels must be 'lidar' or 'grid', got {choice.pixels!r}")
    pixels_t, valid_t = torch.stack(pixels).float(), torch.stack(valid)
    out = dict(ray_pixels=pixels_t, ray_valid=valid_t,
               ray_depth=torch.where(valid_t, depth_t.float(), torch.zeros(())))
    if "segments" in item:
        out["ray_segments"] = lookup_segments(item["segments"], pixels_t, valid_t)
    return out


def camera_depth_image(item: dict) -> Tensor:
    """[N, H, W] the nearest LiDAR camera-z depth per pixel of the item's images (0 = none)."""
    num_cams, _, height, width = item["images"].shape
    camera, uv, z, _ = project_points(item["points"], item["intrinsics"], item["cam2ego"], (height, width))
    return sparse_depth(camera, uv, z, num_cams, (height, width))
