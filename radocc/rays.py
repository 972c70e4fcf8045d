"""Camera rays for pinhole cameras (OpenCV convention: x right, y down, z forward), and the
lookup of per-pixel maps (LiDAR depth, SAM segment ids) at ray pixels."""

import torch
from torch import Tensor

SEGMENT_OFFSET = 1 << 16
"""Camera n's segment ids are offset by n * SEGMENT_OFFSET (SAM ids are 16-bit PNG values), so ids
are unique across the cameras of a sample."""


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


def pixel_index(pixels: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Flat row-major index of the pixel containing each point (nearest pixel centre, clamped).

    Args:
        pixels: [..., 2] (u, v) pixel coordinates (integer values are pixel centres).
        image_size: (H, W) in pixels.
    Returns:
        [...] int64 index ``row * W + col`` into a flattened H x W image.
    """
    height, width = image_size
    col = pixels[..., 0].round().long().clamp(0, width - 1)
    row = pixels[..., 1].round().long().clamp(0, height - 1)
    return row * width + col


def lookup_pixels(image: Tensor, pixels: Tensor) -> Tensor:
    """Values of per-pixel maps at pixel coordinates (nearest pixel centre).

    Args:
        image: [..., H, W] maps (any dtype), e.g. [N, H, W] for N cameras.
        pixels: [..., P, 2] (u, v) with the same leading dimensions as ``image``.
    Returns:
        [..., P] the map values, in ``image``'s dtype.
    """
    if image.dim() < 2:
        raise ValueError(f"image must be [..., H, W], got shape {tuple(image.shape)}")
    lead = image.shape[:-2]
    if pixels.dim() != len(lead) + 2 or pixels.shape[:-2] != lead or pixels.shape[-1] != 2:
        raise ValueError(f"pixels must be [..., P, 2] with leading dimensions {tuple(lead)} "
                         f"(from image {tuple(image.shape)}), got {tuple(pixels.shape)}")
    index = pixel_index(pixels, tuple(image.shape[-2:]))  # [..., P]
    flat = image.reshape(-1, image.shape[-2] * image.shape[-1])
    return flat.gather(1, index.reshape(flat.shape[0], -1)).reshape(index.shape)


def lookup_segments(segments: Tensor, pixels: Tensor, valid: Tensor | None = None) -> Tensor:
    """Segment ids at ray pixels, made unique across cameras.

    Args:
        segments: [..., N, H, W] integer segment id maps of N cameras (0 = no segment, ids
            < ``SEGMENT_OFFSET``), e.g. [B, N, H, W].
        pixels: [..., N, P, 2] (u, v) ray pixels, same leading dimensions.
        valid: [..., N, P] bool, rays that count; the others get id 0. None: all.
    Returns:
        [..., N, P] int64: ``id + n * SEGMENT_OFFSET`` for camera n, 0 where the pixel has no
        segment or the ray is not valid.
    """
    if segments.dim() < 3 or segments.is_floating_point() or segments.dtype == torch.bool:
        raise ValueError(f"segments must be integer maps [..., N, H, W], got "
                         f"{segments.dtype} {tuple(segments.shape)}")
    ids = lookup_pixels(segments, pixels).long()
    if ids.numel() and bool(((ids < 0) | (ids >= SEGMENT_OFFSET)).any()):
        raise ValueError(f"segment ids must be in [0, {SEGMENT_OFFSET}) (16-bit, 0 = no segment), "
                         f"got values in [{int(ids.min())}, {int(ids.max())}]")
    camera = torch.arange(ids.shape[-2], device=ids.device)[:, None] * SEGMENT_OFFSET
    keep = ids > 0
    if valid is not None:
        if valid.dtype != torch.bool or valid.shape != ids.shape:
            raise ValueError(f"valid must be a bool tensor {tuple(ids.shape)} (rays of pixels), "
                             f"got {valid.dtype} {tuple(valid.shape)}")
        keep = keep & valid
    return torch.where(keep, ids + camera, torch.zeros_like(ids))
