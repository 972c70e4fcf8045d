"""MapTR head: hierarchical instance x point queries, a transformer decoder on the BEV, per-layer
point refinement in normalised coordinates and sigmoid class logits.

Queries: Embedding(N_vec, 2C) + Embedding(P, 2C) summed -> N_vec * P queries, split into a
position half and a content half (MapTR's order: position | content); the initial reference
points are sigmoid(Linear(position)).

Decoder layer (post-norm, MapTR's operation order): self-attention over all N_vec * P queries
(``nn.MultiheadAttention``, query = key = content + position), norm; cross-attention on the BEV,
norm; FFN, norm. After layer l, reg branch l (Linear-ReLU x2, Linear -> 2) + inverse_sigmoid(ref)
-> sigmoid gives the layer's normalised points, detached as the next layer's reference; cls
branch l (Linear-LN-ReLU x2, Linear -> K) on the mean of the P point features gives the logits.

Cross-attention: MapTR's single-level deformable attention (per head, ``num_points`` learned
offsets around the reference point, softmax weights, both from Linear(content + position)), with
the sampling done by ``F.grid_sample`` (bilinear, zero padding, align_corners=False: normalised 0
and 1 are the outer edges of the BEV, as in the point coordinates) instead of mmcv's CUDA kernel.
This is what mmcv's pure-torch fallback computes; it needs no compiled op and exports (ONNX
GridSample). Offsets are in BEV cells (divided by (W, H)), as in MapTR.

Normalised points: x_n = (x - x_min) / (x_max - x_min) along BEV columns, y_n along rows (row 0 at
y_min), so grid_sample's (x, y) = (2 x_n - 1, 2 y_n - 1) reads a [B, C, H, W] map-frame BEV.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["inverse_sigmoid", "BEVDeformableAttention", "MapDecoderLayer", "MapHeadOutput",
           "MapTRHead"]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both terms to >= eps (MapTR's)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class BEVDeformableAttention(nn.Module):
    """Single-level deformable attention of queries on a BEV map, in plain torch.

    Args:
        embed_dims: C of the queries and of the output.
        in_channels: C of the BEV.
        num_heads: heads (C / num_heads channels each).
        num_points: sampling points per head.
        dropout: on the attention output, before the residual.
    """

    def __init__(self, embed_dims: int, in_channels: int, num_heads: int, num_points: int,
                 dropout: float = 0.1):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.num_points = num_heads, num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_points)
        self.value_proj = nn.Linear(in_channels, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Deformable DETR's init: offsets start on rings around the reference, one direction per
        # head, point i at distance i + 1 cells; uniform weights.
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([angles.cos(), angles.sin()], dim=-1)
        grid = grid / grid.abs().max(dim=-1, keepdim=True).values
        grid = grid[:, None, :] * torch.arange(1, self.num_points + 1, dtype=torch.float32)[:, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, query: Tensor, query_pos: Tensor, reference: Tensor, bev: Tensor) -> Tensor:
        """
        Args:
            query: [B, Q, C] content; query_pos: [B, Q, C] or [1, Q, C] position.
            reference: [B, Q, 2] normalised (x_n, y_n) in [0, 1].
            bev: [B, C_bev, H, W] map-frame BEV.
        Returns:
            [B, Q, C] = query + dropout(attention).
        """
        batch, queries, _ = query.shape
        heads, points = self.num_heads, self.num_points
        height, width = bev.shape[-2:]
        attend = query + query_pos
        value = self.value_proj(bev.flatten(2).transpose(1, 2))                 # [B, HW, C]
        head_dims = value.shape[-1] // heads
        value = value.view(batch, height, width, heads, head_dims).permute(0, 3, 4, 1, 2)
        offsets = self.sampling_offsets(attend).view(batch, queries, heads, points, 2)
        scale = torch.tensor([width, height], device=bev.device, dtype=offsets.dtype)
        locations = reference[:, :, None, None, :].to(offsets.dtype) + offsets / scale
        weights = self.attention_weights(attend).view(batch, queries, heads, points).softmax(-1)
        grid = (2.0 * locations - 1.0).permute(0, 2, 1, 3, 4).flatten(0, 1)     # [B heads, Q, pts, 2]
        sampled = F.grid_sample(value.flatten(0, 1), grid.to(value.dtype), mode="bilinear",
                                padding_mode="zeros", align_corners=False)      # [B heads, Ch, Q, pts]
        weights = weights.permute(0, 2, 1, 3).flatten(0, 1)[:, None]            # [B heads, 1, Q, pts]
        out = (sampled * weights).sum(-1).view(batch, heads * head_dims, queries).transpose(1, 2)
        return query + self.dropout(self.output_proj(out))


class MapDecoderLayer(nn.Module):
    """Self-attention, norm, BEV deformable cross-attention, norm, FFN, norm (post-norm)."""

    def __init__(self, embed_dims: int, in_channels: int, num_heads: int, num_points: int,
                 ffn_channels: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.cross_attn = BEVDeformableAttention(embed_dims, in_channels, num_heads, num_points, dropout)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = nn.Sequential(nn.Linear(embed_dims, ffn_channels), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(ffn_channels, embed_dims),
                                 nn.Dropout(dropout))
        self.norm3 = nn.LayerNorm(embed_dims)

    def forward(self, query: Tensor, query_pos: Tensor, reference: Tensor, bev: Tensor) -> Tensor:
        """query [B, Q, C], query_pos [B or 1, Q, C], reference [B, Q, 2] normalised,
        bev [B, C_bev, H, W] -> [B, Q, C]."""
        q = query + query_pos
        attended = self.self_attn(q, q, query, need_weights=False)[0]
        query = self.norm1(query + self.dropout(attended))
        query = self.norm2(self.cross_attn(query, query_pos, reference, bev))
        return self.norm3(query + self.ffn(query))


class MapHeadOutput(NamedTuple):
    """cls_logits: [L, B, N, K] sigmoid logits per decoder layer.
    points: [L, B, N, P, 2] normalised (x_n, y_n) per decoder layer.
    query_features: [B, N, P, C] the last decoder layer's query features."""

    cls_logits: Tensor
    points: Tensor
    query_features: Tensor


def _reg_branch(dims: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dims, dims), nn.ReLU(inplace=True), nn.Linear(dims, dims),
                         nn.ReLU(inplace=True), nn.Linear(dims, 2))


def _cls_branch(dims: int, num_classes: int) -> nn.Sequential:
    head = nn.Sequential(nn.Linear(dims, dims), nn.LayerNorm(dims), nn.ReLU(inplace=True),
                         nn.Linear(dims, dims), nn.LayerNorm(dims), nn.ReLU(inplace=True),
                         nn.Linear(dims, num_classes))
    nn.init.constant_(head[-1].bias, -math.log((1 - 0.01) / 0.01))  # prior probability 0.01
    return head


class MapTRHead(nn.Module):
    """BEV [B, C_bev, H, W] -> vector-map predictions (see the module doc).

    Args:
        in_channels: C_bev.
        num_vectors: N instance queries; num_points: P points per instance; num_classes: K.
        embed_dims: C of the queries; num_layers: L decoder layers; num_heads: heads of both
            attentions; num_sampling_points: deformable points per head; ffn_channels, dropout.
    """

    def __init__(self, in_channels: int, *, num_vectors: int = 100, num_points: int = 20,
                 num_classes: int = 3, embed_dims: int = 256, num_layers: int = 2,
                 num_heads: int = 4, num_sampling_points: int = 4, ffn_channels: int = 512,
                 dropout: float = 0.1):
        super().__init__()
        self.num_vectors, self.num_points, self.num_classes = num_vectors, num_points, num_classes
        self.embed_dims = embed_dims
        self.instance_embedding = nn.Embedding(num_vectors, 2 * embed_dims)
        self.point_embedding = nn.Embedding(num_points, 2 * embed_dims)
        self.reference_points = nn.Linear(embed_dims, 2)
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)
        self.layers = nn.ModuleList(
            MapDecoderLayer(embed_dims, in_channels, num_heads, num_sampling_points, ffn_channels,
                            dropout) for _ in range(num_layers))
        self.reg_branches = nn.ModuleList(_reg_branch(embed_dims) for _ in range(num_layers))
        self.cls_branches = nn.ModuleList(_cls_branch(embed_dims, num_classes)
                                          for _ in range(num_layers))

    def forward(self, bev: Tensor) -> MapHeadOutput:
        """bev [B, C_bev, H, W] (row 0 at y_min, column 0 at x_min) -> MapHeadOutput."""
        batch = bev.shape[0]
        vectors, points, dims = self.num_vectors, self.num_points, self.embed_dims
        embedding = (self.instance_embedding.weight[:, None] + self.point_embedding.weight[None])
        query_pos, query = embedding.flatten(0, 1).split(dims, dim=-1)          # [N P, C] each
        query_pos = query_pos[None]
        query = query[None].expand(batch, -1, -1)
        reference = self.reference_points(query_pos).sigmoid().expand(batch, -1, -1)
        all_logits, all_points = [], []
        for layer, reg, cls in zip(self.layers, self.reg_branches, self.cls_branches):
            query = layer(query, query_pos, reference, bev)
            refined = (reg(query) + inverse_sigmoid(reference)).sigmoid()        # [B, N P, 2]
            all_points.append(refined.view(batch, vectors, points, 2))
            all_logits.append(cls(query.view(batch, vectors, points, dims).mean(dim=2)))
            reference = refined.detach()
        return MapHeadOutput(torch.stack(all_logits), torch.stack(all_points),
                             query.view(batch, vectors, points, dims))
