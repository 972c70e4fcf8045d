"""The vector-map model: MapTR-style camera baseline, MapDistill student and fusion teacher.

    images [B, N, 3, H, W] -> ResNet + CustomFPN (/16)
        camera:      -> GKT BEV                                   = bev
        camera_dual: -> GKT BEV (bev_a), LSS BEV (bev_b) -> ConvFuser = bev   (MapDistill student)
        fusion:      -> GKT BEV (bev_a); points -> spconv LiDAR BEV (bev_b) -> ConvFuser = bev
    bev [B, C, H_bev, W_bev] -> MapTR head -> class logits, normalised points, query features.

Everything is in the map frame (MapTR's LiDAR frame: x lateral right, y forward, metres), over
``pc_range`` = (x_min, y_min, x_max, y_max); every BEV is [B, C, H, W] with row i along y (row 0 at
y_min) and column j along x (column 0 at x_min). The LSS and LiDAR branches pool on that grid
directly: their (x, y, z) grid box is (x_min, y_min, z_low) - (x_max, y_max, z_high) with
(Z, Y, X) = (1, H, W), and both already emit [B, C, Y, X] = [B, C, H, W].
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from radocc.map_losses import denormalize_points
from radocc.models.bev import ConvFuser
from radocc.models.camera import ImageEncoder
from radocc.models.config import MapModelConfig
from radocc.models.gkt import GKTViewTransform
from radocc.models.lidar import LidarEncoder
from radocc.models.lss import LSSViewTransform
from radocc.models.maptr_head import MapTRHead
from radocc.models.occupancy import check_camera_inputs, check_lidar_inputs

__all__ = ["FEATURE_STRIDE", "MapOutput", "MapPrediction", "MapModel", "build_map_model", "decode_vectors"]

FEATURE_STRIDE = 16
"""Image pixels per feature pixel of :class:`~radocc.models.camera.ImageEncoder` (layer3)."""


class MapOutput(NamedTuple):
    """bev: [B, C, H, W] the BEV fed to the head (fused for camera_dual / fusion).
    bev_a, bev_b: [B, C, H, W] the two BEVs before fusion (fusion: camera GKT, LiDAR; camera_dual:
        GKT, LSS); None for modality "camera".
    cls_logits: [L, B, N, K] sigmoid logits per decoder layer.
    points: [L, B, N, P, 2] normalised (x_n, y_n) in [0, 1] per decoder layer.
    query_features: [B, N, P, C] the last decoder layer's query features.
    """

    bev: Tensor
    bev_a: Tensor | None
    bev_b: Tensor | None
    cls_logits: Tensor
    points: Tensor
    query_features: Tensor


class MapPrediction(NamedTuple):
    """One sample's decoded vectors, best score first.
    lines: [M, P, 2] metres, map frame; scores: [M] sigmoid probabilities; labels: [M] int64."""

    lines: Tensor
    scores: Tensor
    labels: Tensor


class MapModel(nn.Module):
    """Vector-map model for ``config.modality`` in ("camera", "camera_dual", "fusion")."""

    def __init__(self, config: MapModelConfig):
        super().__init__()
        if not isinstance(config, MapModelConfig):
            raise TypeError(f"config must be a MapModelConfig, got {type(config).__name__}")
        self.config = config
        height, width = config.bev_shape
        x_min, y_min, x_max, y_max = config.pc_range
        channels = config.bev_channels
        gkt = config.gkt
        self.image_encoder = ImageEncoder(config.camera)
        self.gkt = GKTViewTransform(
            config.camera.neck_channels, channels, config.bev_shape, config.pc_range,
            num_heights=gkt.num_heights, z_range=gkt.z_range, kernel=gkt.kernel,
            num_layers=gkt.num_layers, ffn_channels=gkt.ffn_channels, dropout=gkt.dropout,
            feature_stride=FEATURE_STRIDE)
        self.lss: LSSViewTransform | None = None
        self.lidar_encoder: LidarEncoder | None = None
        self.fuser: ConvFuser | None = None
        if config.modality == "camera_dual":
            z_low, z_high = config.lss_z_range
            self.lss = LSSViewTransform(config.camera.neck_channels, config.camera.depth_bins,
                                        config.camera.context_channels, (x_min, y_min, z_low),
                                        (x_max, y_max, z_high), (1, height, width))
            self.fuser = ConvFuser(channels, self.lss.out_channels, channels)
        elif config.modality == "fusion":
            point_range = config.lidar_point_range
            self.lidar_encoder = LidarEncoder(config.lidar, point_range[:3], point_range[3:],
                                              (height, width))
            self.fuser = ConvFuser(channels, self.lidar_encoder.out_channels, channels)
        head = config.head
        self.head = MapTRHead(channels, num_vectors=head.num_vectors, num_points=head.num_points,
                              num_classes=head.num_classes, embed_dims=head.embed_dims,
                              num_layers=head.num_layers, num_heads=head.num_heads,
                              num_sampling_points=head.num_sampling_points,
                              ffn_channels=head.ffn_channels, dropout=head.dropout)

    def forward(self, images: Tensor, intrinsics: Tensor, cam2map: Tensor,
                points: Tensor | None = None, num_points: Tensor | None = None) -> MapOutput:
        """
        Args:
            images: [B, N, 3, H, W] float RGB in [0, 1] (ImageNet-normalised inside).
            intrinsics: [B, N, 3, 3] camera matrices in pixels of these images.
            cam2map: [B, N, 4, 4] camera (OpenCV) -> map frame, metres (= ego2map @ cam2ego).
            points: [B, P, 5] LiDAR points (x, y, z metres in the map frame, intensity, time
                lag), zero-padded; required for modality "fusion", ignored otherwise.
            num_points: [B] integer valid points per sample; required with points.
        Returns:
            MapOutput.
        """
        batch, cams, height, width = check_camera_inputs(images, intrinsics, cam2map, "cam2map")
        features = self.image_encoder(images.flatten(0, 1)).unflatten(0, (batch, cams))
        bev_a = self.gkt(features, intrinsics, cam2map, (height, width))
        bev_b = None
        if self.lss is not None:
            bev_b = self.lss(features, intrinsics, cam2map, (height, width))[0]
        elif self.lidar_encoder is not None:
            check_lidar_inputs(points, num_points, batch, " (map frame)")
            bev_b = self.lidar_encoder(points, num_points)
        if bev_b is None:
            bev, bev_a = bev_a, None
        else:
            bev = self.fuser(bev_a, bev_b.to(bev_a.dtype))
        cls_logits, pred_points, query_features = self.head(bev)
        return MapOutput(bev, bev_a, bev_b, cls_logits, pred_points, query_features)

    @torch.no_grad()
    def decode(self, output: MapOutput, score_threshold: float = 0.0,
               top_k: int = 50) -> list[MapPrediction]:
        """:func:`decode_vectors` of this model's output in its ``config.pc_range``."""
        return decode_vectors(output, self.config.pc_range, score_threshold, top_k)


def decode_vectors(output: MapOutput, pc_range: tuple[float, float, float, float],
                   score_threshold: float = 0.0, top_k: int = 50) -> list[MapPrediction]:
    """The last decoder layer's predictions per sample, as MapTR's NMS-free coder: sigmoid
    scores, the top_k over all N * K (query, class) pairs, points in metres, then the pairs
    scoring below score_threshold dropped.

    Args:
        output: a :class:`MapOutput` (its cls_logits and points).
        pc_range: (x_min, y_min, x_max, y_max) metres of the normalised points.
        score_threshold: keep scores >= this.
        top_k: at most this many per sample (MapTR: 50); capped at N * K.
    Returns:
        One :class:`MapPrediction` per sample (lines [M, P, 2] metres, scores [M], labels [M]).
    """
    if not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    logits, points = output.cls_logits[-1], output.points[-1]       # [B, N, K], [B, N, P, 2]
    num_classes = logits.shape[-1]
    scores, flat = logits.sigmoid().flatten(1).topk(min(top_k, logits.shape[1] * num_classes), dim=1)
    labels, queries = flat % num_classes, flat // num_classes
    lines = denormalize_points(
        torch.gather(points, 1, queries[..., None, None].expand(-1, -1, *points.shape[2:])),
        pc_range)
    keep = scores >= score_threshold
    return [MapPrediction(lines[b][keep[b]], scores[b][keep[b]], labels[b][keep[b]])
            for b in range(scores.shape[0])]


def build_map_model(config: MapModelConfig) -> MapModel:
    """The vector-map model a config describes."""
    return MapModel(config)
