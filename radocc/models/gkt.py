"""GKT view transform: BEV queries attend to a fixed kernel of image-feature pixels around the
projections of their height anchors (MapTR's geometry-guided kernel attention, plain torch).

For every BEV cell of the map-frame grid (rows along y, row 0 at y_min; columns along x, column 0
at x_min), ``num_heights`` anchors at the centres of equal slices of ``z_range`` are projected into
every camera. A camera sees an anchor when it lies in front of it (depth > 1e-5 m) and inside
the image (pixel centres are integers, OpenCV: the image spans [-0.5, W - 0.5) x [-0.5, H - 0.5)).
Around the projection, rounded to the nearest feature pixel, a fixed k_h x k_w kernel of feature
pixels (clamped to the map) is gathered: no learned offsets. Each anchor has one attention head
(C / num_heights channels); the weights are a softmax over the kernel of Linear(query + pos) (the
same for every camera, as in BEVFormer / MapTR's spatial cross-attention). Per camera, the heads'
weighted sums are concatenated; the cameras that see the cell (any anchor) are averaged; then a
Linear projection, dropout, residual, LayerNorm, FFN, LayerNorm (post-norm, as MapTR's encoder).

Differences from MapTR's ``GeometryKernelAttention``: an anchor a camera does not see contributes
nothing to that camera's head (MapTR gathers its clamped border pixels); the per-camera sums use a
static-shape gather over all cameras instead of MapTR's per-camera re-batching of the visible
queries (no ``nonzero``, so the module exports), at the cost of memory O(B N Q K C) in the gather.

Feature pixel (i, j) of a stride-s map covers image pixels [s j, s j + s) and is centred at
u = s j + (s - 1) / 2, so image pixel u lies at feature coordinate (u + 0.5) / s - 0.5.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["bev_anchors", "project_anchors", "kernel_indices", "GeometryKernelAttention",
           "GKTLayer", "GKTViewTransform"]

_DEPTH_EPS = 1e-5


def bev_anchors(bev_shape: tuple[int, int], pc_range: tuple[float, float, float, float],
                z_range: tuple[float, float], num_heights: int, *, device=None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Height anchors of every BEV cell, map frame.

    Args:
        bev_shape: (H, W) cells; row i along y, column j along x.
        pc_range: (x_min, y_min, x_max, y_max) metres.
        z_range: (z_low, z_high) metres; the anchors sit at the centres of ``num_heights`` equal
            slices (MapTR: 4 in [-2, 2] -> -1.5, -0.5, 0.5, 1.5).
    Returns:
        [H * W, num_heights, 3] (x, y, z) metres; cell q = i * W + j is centred at
        (x_min + (j + 0.5) dx, y_min + (i + 0.5) dy).
    """
    (height, width), (x_min, y_min, x_max, y_max) = bev_shape, pc_range
    z_low, z_high = z_range

    def centres(low: float, high: float, n: int) -> Tensor:
        return low + (torch.arange(n, device=device, dtype=torch.float64) + 0.5) * (high - low) / n

    y, x, z = centres(y_min, y_max, height), centres(x_min, x_max, width), centres(z_low, z_high, num_heights)
    yy, xx, zz = torch.meshgrid(y, x, z, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1).reshape(height * width, num_heights, 3).to(dtype)


def project_anchors(anchors: Tensor, intrinsics: Tensor, cam2map: Tensor,
                    image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Projects map-frame points into N pinhole cameras (OpenCV: x right, y down, z forward).

    Args:
        anchors: [Q, Z, 3] map-frame points, metres.
        intrinsics: [B, N, 3, 3] pixels of the (H, W) input images.
        cam2map: [B, N, 4, 4] camera -> map frame, metres.
        image_size: (H, W) pixels.
    Returns:
        pixels [B, N, Q, Z, 2] (u, v) image pixels (meaningless where not valid) and valid
        [B, N, Q, Z] bool: in front of the camera and inside the image.
    """
    # map -> camera: A^-1 (x - t) for cam2map = [A | t] (a 3x3 inverse, which the ONNX export
    # decomposes); then K: one 3x3 per camera, applied to every anchor at once.
    projection = intrinsics @ torch.linalg.inv(cam2map[..., :3, :3])           # [B, N, 3, 3]
    points = anchors.reshape(1, 1, -1, 3) - cam2map[..., None, :3, 3]          # [B, N, QZ, 3]
    uvw = points @ projection.transpose(-1, -2)
    depth = uvw[..., 2]
    pixels = uvw[..., :2] / depth.clamp(min=_DEPTH_EPS)[..., None]
    height, width = image_size
    u, v = pixels.unbind(-1)
    valid = (depth > _DEPTH_EPS) & (u >= -0.5) & (u < width - 0.5) & (v >= -0.5) & (v < height - 0.5)
    batch, cams = intrinsics.shape[:2]
    shape = (batch, cams, *anchors.shape[:2])
    return pixels.reshape(*shape, 2), valid.reshape(shape)


def kernel_indices(pixels: Tensor, feature_size: tuple[int, int], feature_stride: int,
                   kernel: tuple[int, int]) -> Tensor:
    """Flat feature-pixel indices of the fixed kernel around each projection.

    Args:
        pixels: [..., 2] (u, v) image pixels.
        feature_size: (h, w) of the feature map.
        feature_stride: image pixels per feature pixel (16 for the stride-16 encoder).
        kernel: (k_h, k_w) rows x columns, centred on the rounded feature pixel (the extra row /
            column of an even size goes before the centre).
    Returns:
        [..., k_h * k_w] int64 row * w + col (rows slowest), rows and columns clamped to the map.
    """
    h, w = feature_size
    k_h, k_w = kernel
    feature = (pixels + 0.5) / feature_stride - 0.5
    centre = torch.floor(feature + 0.5).long()                                 # round half up
    dy = torch.arange(k_h, device=pixels.device) - k_h // 2
    dx = torch.arange(k_w, device=pixels.device) - k_w // 2
    rows = (centre[..., 1, None, None] + dy[:, None]).clamp(0, h - 1)          # [..., k_h, 1]
    cols = (centre[..., 0, None, None] + dx[None, :]).clamp(0, w - 1)          # [..., 1, k_w]
    return (rows * w + cols).flatten(-2)


class GeometryKernelAttention(nn.Module):
    """The cross-attention of GKT: one head per height anchor over its fixed kernel of pixels.

    Args:
        embed_dims: C of the queries and of the output.
        in_channels: C_in of the image features.
        num_heads: heads = height anchors; each head reads C / num_heads value channels.
        kernel_points: k_h * k_w.
    """

    def __init__(self, embed_dims: int, in_channels: int, num_heads: int, kernel_points: int):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.kernel_points = num_heads, kernel_points
        self.value_proj = nn.Linear(in_channels, embed_dims)
        self.attention_weights = nn.Linear(embed_dims, num_heads * kernel_points)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        nn.init.zeros_(self.attention_weights.weight)    # uniform over the kernel at first
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, query: Tensor, features: Tensor, index: Tensor, valid: Tensor) -> Tensor:
        """
        Args:
            query: [B, Q, C] BEV queries with their positional encoding added.
            features: [B, N, h * w, C_in] image features, pixels row-major.
            index: [B, N, Q, Z, K] int64 flat pixel index (into h * w) of each kernel point.
            valid: [B, N, Q, Z] bool, camera n sees anchor z of cell q.
        Returns:
            [B, Q, C]: the averaged attention over the cameras seeing each cell, projected
            (cells no camera sees get the projection's bias).
        """
        batch, cams, pixels, _ = features.shape
        queries, heads = query.shape[1], self.num_heads
        value = self.value_proj(features)                                       # [B, N, hw, C]
        head_dims = value.shape[-1] // heads
        value = value.reshape(-1, head_dims)                                    # [B N hw Z, Ch]
        # Row of (b, n, pixel, head) in the flat value table.
        camera = torch.arange(batch * cams, device=index.device).view(batch, cams, 1, 1, 1)
        head = torch.arange(heads, device=index.device).view(1, 1, 1, heads, 1)
        rows = (camera * pixels + index) * heads + head                         # [B, N, Q, Z, K]
        sampled = value.index_select(0, rows.reshape(-1)).view(*rows.shape, head_dims)
        weights = self.attention_weights(query).view(batch, queries, heads, self.kernel_points)
        weights = weights.softmax(dim=-1)
        per_camera = torch.einsum("bnqzkc,bqzk->bnqzc", sampled, weights)
        per_camera = per_camera * valid[..., None].to(per_camera.dtype)
        seen = valid.any(dim=-1).sum(dim=1).clamp(min=1).to(per_camera.dtype)   # [B, Q]
        out = per_camera.sum(dim=1) / seen[..., None, None]                     # [B, Q, Z, Ch]
        return self.output_proj(out.flatten(-2))


class GKTLayer(nn.Module):
    """Cross-attention (GKT), dropout, residual, LayerNorm, FFN (Linear-ReLU-Dropout-Linear-
    Dropout), residual, LayerNorm."""

    def __init__(self, embed_dims: int, in_channels: int, num_heads: int, kernel_points: int,
                 ffn_channels: int, dropout: float):
        super().__init__()
        self.attention = GeometryKernelAttention(embed_dims, in_channels, num_heads, kernel_points)
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.ffn = nn.Sequential(nn.Linear(embed_dims, ffn_channels), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(ffn_channels, embed_dims),
                                 nn.Dropout(dropout))
        self.norm2 = nn.LayerNorm(embed_dims)

    def forward(self, query: Tensor, pos: Tensor, features: Tensor, index: Tensor,
                valid: Tensor) -> Tensor:
        """query, pos [B, Q, C]; features, index, valid as :class:`GeometryKernelAttention`."""
        query = self.norm1(query + self.dropout(self.attention(query + pos, features, index, valid)))
        return self.norm2(query + self.ffn(query))


class GKTViewTransform(nn.Module):
    """Image features of N cameras -> a map-frame BEV [B, C, H, W] by geometry-guided kernel
    attention (see the module doc).

    Args:
        in_channels: C_in of the image features.
        embed_dims: C of the BEV queries and of the output (even: the positional encoding is a
            learned row half and column half).
        bev_shape: (H, W) cells (rows along y, columns along x).
        pc_range: (x_min, y_min, x_max, y_max) metres, map frame.
        num_heights, z_range: height anchors (one attention head each) and their z range, metres.
        kernel: (k_h, k_w) feature pixels gathered around each projection.
        num_layers, ffn_channels, dropout: encoder layers, FFN width, dropout.
        feature_stride: image pixels per feature pixel.
    """

    def __init__(self, in_channels: int, embed_dims: int, bev_shape: tuple[int, int],
                 pc_range: tuple[float, float, float, float], *, num_heights: int = 4,
                 z_range: tuple[float, float] = (-2.0, 2.0), kernel: tuple[int, int] = (3, 5),
                 num_layers: int = 1, ffn_channels: int = 512, dropout: float = 0.1,
                 feature_stride: int = 16):
        super().__init__()
        if embed_dims % 2:
            raise ValueError(f"GKTViewTransform: embed_dims must be even, got {embed_dims}")
        self.bev_shape = (int(bev_shape[0]), int(bev_shape[1]))
        self.pc_range = tuple(float(v) for v in pc_range)
        self.kernel = (int(kernel[0]), int(kernel[1]))
        self.feature_stride = int(feature_stride)
        self.out_channels = embed_dims
        height, width = self.bev_shape
        self.bev_embedding = nn.Embedding(height * width, embed_dims)
        self.row_embedding = nn.Embedding(height, embed_dims // 2)
        self.col_embedding = nn.Embedding(width, embed_dims // 2)
        self.register_buffer("anchors", bev_anchors(self.bev_shape, self.pc_range, z_range, num_heights),
                             persistent=False)
        kernel_points = self.kernel[0] * self.kernel[1]
        self.layers = nn.ModuleList(
            GKTLayer(embed_dims, in_channels, num_heights, kernel_points, ffn_channels, dropout)
            for _ in range(num_layers))

    def positional_encoding(self) -> Tensor:
        """[H * W, C]: cell (i, j) gets column embedding j | row embedding i (MapTR's learned
        positional encoding)."""
        height, width = self.bev_shape
        cols = self.col_embedding.weight[None].expand(height, width, -1)
        rows = self.row_embedding.weight[:, None].expand(height, width, -1)
        return torch.cat([cols, rows], dim=-1).reshape(height * width, -1)

    @torch.no_grad()
    def sampling(self, intrinsics: Tensor, cam2map: Tensor, image_size: tuple[int, int],
                 feature_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Kernel indices [B, N, Q, Z, K] (into the h * w feature pixels) and visibility
        [B, N, Q, Z] of every anchor: the geometry only, no gradient."""
        pixels, valid = project_anchors(self.anchors.float(), intrinsics.float(), cam2map.float(),
                                        image_size)
        return kernel_indices(pixels, feature_size, self.feature_stride, self.kernel), valid

    def forward(self, features: Tensor, intrinsics: Tensor, cam2map: Tensor,
                image_size: tuple[int, int]) -> Tensor:
        """
        Args:
            features: [B, N, C_in, h, w] image features at ``feature_stride``.
            intrinsics: [B, N, 3, 3] pixels of the (H, W) input images.
            cam2map: [B, N, 4, 4] camera -> map frame, metres.
            image_size: (H, W) of the input images.
        Returns:
            [B, C, H_bev, W_bev] BEV features (row i along y, column j along x).
        """
        batch, cams, _, h, w = features.shape
        index, valid = self.sampling(intrinsics, cam2map, image_size, (h, w))
        flat = features.flatten(3).transpose(2, 3)                                # [B, N, hw, C_in]
        query = self.bev_embedding.weight[None].expand(batch, -1, -1)
        pos = self.positional_encoding()[None].to(query.dtype)
        for layer in self.layers:
            query = layer(query, pos, flat, index, valid)
        height, width = self.bev_shape
        return query.transpose(1, 2).reshape(batch, -1, height, width)
