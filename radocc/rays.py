"""Camera rays for pinhole cameras (OpenCV convention: x right, y down, z forward)."""

import torch
from torch import Tensor


def pixel_grid(image_size: tuple[int, int], stride: int = 1, *, device=None,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """Pixel coordinates of the centres of the ``stride x stride`` blocks of an image.

    Integer coordinates are pixel centres (OpenCV), so block (i, j) is centred at
    ``(j * stride + (stride - 1) / 2, i * stride + (stride - 1) / 2)``.

    Args:
        image_size: (H, W) in pixels.
        stride: block size in pixels; the grid has (H // stride) x (W // stride) entries.
    Returns:
        [(H // stride) * (W // stride), 2] (u, v) in pixels, row-major (v slowest).
    """
    height, width = image_size
    if not (isinstance(stride, int) and stride >= 1):
        raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
    if height < stride or width < stride:
        raise ValueError(f"image_size {image_size} holds no {stride}x{stride} block")
    offset = (stride - 1) / 2
    v = torch.arange(height // stride, device=device, dtype=dtype) * stride + offset
    u = torch.arange(width // stride, device=device, dtype=dtype) * stride + offset
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=-1)


def camera_rays(intrinsics: Tensor, cam2ego: Tensor, image_size: tuple[int, int] | None = None,
                stride: int = 1, pixels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Rays through pixels of N pinhole cameras, in the ego (grid) frame.

    Args:
        intrinsics: [B, N, 3, 3] camera matrices, pixels.
        cam2ego: [B, N, 4, 4] camera-to-ego transforms, metres.
        image_size: (H, W); rays go through the ``pixel_grid(image_size, stride)`` pixels.
        stride: pixel block size (see :func:`pixel_grid`).
        pixels: [B, N, P, 2] (u, v) pixel coordinates to use instead of a grid.
    Returns:
        origins [B, N * P, 3] (metres) and unit directions [B, N * P, 3], ordered camera-major,
        then pixel (for a grid: row, then column).
    """
    if intrinsics.dim() != 4 or intrinsics.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must be [B, N, 3, 3], got {tuple(intrinsics.shape)}")
    if cam2ego.shape != intrinsics.shape[:2] + (4, 4):
        raise ValueError(f"cam2ego must be [B, N, 4, 4] = {tuple(intrinsics.shape[:2]) + (4, 4)}, "
                         f"got {tuple(cam2ego.shape)}")
    batch, cams = intrinsics.shape[:2]
    if pixels is None:
        if image_size is None:
            raise ValueError("camera_rays needs image_size (for a pixel grid) or pixels")
        grid = pixel_grid(image_size, stride, device=intrinsics.device, dtype=intrinsics.dtype)
        pixels = grid.expand(batch, cams, -1, -1)
    elif pixels.dim() != 4 or pixels.shape[:2] != (batch, cams) or pixels.shape[-1] != 2:
        raise ValueError(f"pixels must be [B, N, P, 2] with B, N = {batch}, {cams}, "
                         f"got {tuple(pixels.shape)}")
    pixels = pixels.to(intrinsics.dtype)
    homogeneous = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)  # [B, N, P, 3]
    in_camera = homogeneous @ torch.linalg.inv(intrinsics).transpose(-1, -2)
    directions = in_camera @ cam2ego[..., :3, :3].transpose(-1, -2)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    origins = cam2ego[..., None, :3, 3].expand_as(directions)
    return origins.reshape(batch, -1, 3), directions.reshape(batch, -1, 3)
