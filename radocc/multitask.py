"""The multi-task camera student (task "multi"): one occupancy model whose BEV also feeds a MapTR
head, so RDC + RSC (occupancy) and MapDistill (vector map) distil into the same BEV.

Shared-BEV design:
    images -> OccupancyModel (ResNet + FPN -> LSS -> BEV encoder) -> bev [B, C, Y, X], ego frame
        -> occupancy head -> voxel logits                               (the occupancy student)
        -> resampled onto the map grid through ego2map (bilinear grid_sample) -> [B, C, H, W]
           -> MapTR head -> class logits, points, query features        (the map student)

The map grid is the map frame's BEV (rows along y forward from y_min, columns along x from x_min,
``map_model.pc_range`` / ``bev_shape``): each map cell centre (x, y, 0) is taken to the ego frame
with inv(ego2map) and read from the ego BEV (zeros outside it). The occupancy BEV covers 80 x 80 m
at 0.4 m and the map patch 30 x 60 m inside it, so the map head sees the same features the voxel
head decodes, and the map losses' gradients reach the view transform and the image encoder through
that shared BEV. Only the map head is added; ``map_model`` gives its sizes, ``pc_range`` and
``bev_shape`` (its camera / GKT settings are unused; modality "camera").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radocc.models import MapModelConfig, MapOutput, MapPrediction, MapTRHead, ModelConfig
from radocc.models import ModelOutput, OccupancyModel
from radocc.models.map_model import decode_vectors

__all__ = ["MultiTaskModel", "ego_bev_to_map"]


def ego_bev_to_map(bev: Tensor, ego2map: Tensor, grid_lower: tuple[float, ...], grid_upper: tuple[float, ...],
                   pc_range: tuple[float, float, float, float], bev_shape: tuple[int, int]) -> Tensor:
    """Resample an ego-frame BEV onto the map frame's BEV grid.

    Args:
        bev: [B, C, Y, X] ego frame, rows along y, columns along x, over grid_lower..grid_upper (x, y).
        ego2map: [B, 4, 4] ego -> map frame, metres.
        pc_range: (x_min, y_min, x_max, y_max) metres of the map grid; bev_shape: its (H, W).
    Returns:
        [B, C, H, W] map frame (row i along y from y_min, column j along x from x_min); bilinear,
        zeros where a map cell falls outside the ego BEV.
    """
    x_min, y_min, x_max, y_max = pc_range
    height, width = bev_shape
    device = bev.device
    ys = y_min + (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * (y_max - y_min) / height
    xs = x_min + (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * (x_max - x_min) / width
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    cells = torch.stack([xx, yy, torch.zeros_like(xx), torch.ones_like(xx)], dim=-1)   # [H, W, 4]
    map2ego = torch.linalg.inv(ego2map.float())                                        # [B, 4, 4]
    ego = torch.einsum("bij,hwj->bhwi", map2ego, cells)[..., :2]                       # [B, H, W, 2]
    lower = ego.new_tensor(grid_lower[:2])
    upper = ego.new_tensor(grid_upper[:2])
    grid = (ego - lower) / (upper - lower) * 2 - 1     # (x -> columns, y -> rows), align_corners=False
    return F.grid_sample(bev, grid.to(bev.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


class MultiTaskModel(nn.Module):
    """A camera occupancy model plus a MapTR head on its BEV resampled to the map frame."""

    def __init__(self, occupancy: ModelConfig, map_config: MapModelConfig):
        super().__init__()
        if occupancy.modality != "camera":
            raise ValueError(f"the multi-task student is camera-only, got modality {occupancy.modality!r}")
        self.config = occupancy
        self.map_config = map_config
        self.occupancy = OccupancyModel(occupancy)
        head = map_config.head
        self.map_head = MapTRHead(occupancy.bev_encoder.out_channels, num_vectors=head.num_vectors,
                                  num_points=head.num_points, num_classes=head.num_classes,
                                  embed_dims=head.embed_dims, num_layers=head.num_layers,
                                  num_heads=head.num_heads, num_sampling_points=head.num_sampling_points,
                                  ffn_channels=head.ffn_channels, dropout=head.dropout)

    def forward(self, images: Tensor, intrinsics: Tensor, cam2ego: Tensor,
                ego2map: Tensor) -> tuple[ModelOutput, MapOutput]:
        """
        Args:
            images: [B, N, 3, H, W] RGB in [0, 1]; intrinsics: [B, N, 3, 3] pixels;
            cam2ego: [B, N, 4, 4] camera -> ego, metres; ego2map: [B, 4, 4] ego -> map frame.
        Returns:
            the occupancy output (logits [B, X, Y, Z, K], bev [B, C, Y, X] ego frame, depth) and the
            map output (bev [B, C, H, W] map frame, bev_a = bev_b = None, class logits, points,
            query features).
        """
        occ = self.occupancy(images, intrinsics, cam2ego)
        m = self.map_config
        bev = ego_bev_to_map(occ.bev, ego2map, self.config.grid_lower, self.config.grid_upper,
                             m.pc_range, m.bev_shape)
        cls_logits, points, query_features = self.map_head(bev)
        return occ, MapOutput(bev, None, None, cls_logits, points, query_features)

    @torch.no_grad()
    def decode(self, output: MapOutput, score_threshold: float = 0.0,
               top_k: int = 50) -> list[MapPrediction]:
        """:func:`radocc.models.map_model.decode_vectors` (top-k over queries x classes, metres) of
        this model's map output in its map grid."""
        return decode_vectors(output, self.map_config.pc_range, score_threshold, top_k)
