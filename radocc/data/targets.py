"""Per-sample render and depth targets, prepared in the dataloader workers (not in the step).

For each sample, :func:`render_targets` chooses the pixels whose rays teacher and student are
rendered along (where LiDAR points project, as the RadOcc authors do, or a strided pixel grid),
builds those rays with the project's one ray generator (:func:`radocc.rays.camera_rays`) and looks
up, at the same pixels, the SAM segment ids (offset per camera so they are unique in the sample)
and the LiDAR depth. :func:`lss_depth_targets` gives the LSS depth supervision (min LiDAR depth per
16 x 16 patch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from radocc.rays import camera_rays, pixel_grid

SEGMENT_OFFSET = 1 << 16
"""Camera n's segment ids are offset by n * SEGMENT_OFFSET (SAM ids are 16-bit PNG values)."""


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


def _pixel_index(uv: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Flat row-major index of the pixel containing each (u, v) (nearest pixel centre)."""
    height, width = image_size
    col = uv[:, 0].round().long().clamp(0, width - 1)
    row = uv[:, 1].round().long().clamp(0, height - 1)
    return row * width + col


def sparse_depth(camera: Tensor, uv: Tensor, depth: Tensor, num_cameras: int,
                 image_size: tuple[int, int]) -> Tensor:
    """[N, H, W] the nearest LiDAR depth per pixel (0 where no point projects)."""
    height, width = image_size
    flat = camera * (height * width) + _pixel_index(uv, image_size)
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
    """Rays and per-ray lookups for one dataset item (see ``NuScenesOccDataset``).

    Returns:
        ray_origins, ray_directions [N * P, 3] (ego frame, metres; unit directions), camera-major;
        ray_valid [N * P] bool (False for padding when a camera has fewer LiDAR pixels than P);
        ray_depth [N * P] metres along the ray of the LiDAR return at the pixel (0 = none);
        ray_segments [N * P] int64 segment id + camera * SEGMENT_OFFSET (0 = no segment), only when
        the item has ``segments``.
    """
    images, intrinsics, cam2ego = item["images"], item["intrinsics"], item["cam2ego"]
    num_cams, _, height, width = images.shape
    size = (height, width)
    camera, uv, _, distance = project_points(item["points"], intrinsics, cam2ego, size)
    per_camera = choice.rays_per_image
    pixels, valid, depth = [], [], []
    if choice.pixels == "grid":
        grid = pixel_grid(size, choice.stride)
        lidar = sparse_depth(camera, uv, distance, num_cams, size).view(num_cams, -1)
        wanted = per_camera or len(grid)
        for n in range(num_cams):
            index, ok = _choose(len(grid), wanted, rng)
            pixels.append(grid[index])
            valid.append(ok)
            depth.append(torch.where(ok, lidar[n, _pixel_index(grid[index], size)], torch.zeros(())))
    elif choice.pixels == "lidar":
        if per_camera <= 0:
            raise ValueError("render.rays_per_image must be > 0 for LiDAR pixels (their count varies)")
        for n in range(num_cams):
            mine = (camera == n).nonzero().squeeze(1)
            index, ok = _choose(len(mine), per_camera, rng)
            if len(mine):
                pixels.append(uv[mine[index]])
                depth.append(torch.where(ok, distance[mine[index]], torch.zeros(())))
            else:
                pixels.append(pixel_grid(size, 1)[:per_camera].clone())
                depth.append(torch.zeros(per_camera))
            valid.append(ok)
    else:
        raise ValueError(f"render pixels must be 'lidar' or 'grid', got {choice.pixels!r}")
    pixels_t = torch.stack(pixels)  # [N, P, 2]
    origins, directions = camera_rays(intrinsics[None], cam2ego[None], pixels=pixels_t[None])
    out = dict(ray_origins=origins[0], ray_directions=directions[0], ray_valid=torch.cat(valid),
               ray_depth=torch.cat(depth).float())
    if "segments" in item:
        segments = item["segments"].reshape(num_cams, -1)
        ids = torch.stack([segments[n, _pixel_index(pixels_t[n], size)] for n in range(num_cams)])
        offset = torch.arange(num_cams)[:, None] * SEGMENT_OFFSET
        ids = torch.where(ids > 0, ids + offset, torch.zeros_like(ids)).reshape(-1)
        out["ray_segments"] = torch.where(out["ray_valid"], ids, torch.zeros_like(ids))
    return out


def camera_depth_image(item: dict) -> Tensor:
    """[N, H, W] the nearest LiDAR camera-z depth per pixel of the item's images (0 = none)."""
    num_cams, _, height, width = item["images"].shape
    camera, uv, z, _ = project_points(item["points"], item["intrinsics"], item["cam2ego"], (height, width))
    return sparse_depth(camera, uv, z, num_cams, (height, width))
