"""The assembled occupancy model (camera student or camera + LiDAR teacher) and the two maps
from its voxel logits to the renderer's inputs (density and semantic features).

Camera path (FlashOcc M1 / BEVDet-occ, one frame):
    images [B, N, 3, H, W] -> ResNet + CustomFPN (/16) -> LSS (depth x context, BEV pooling)
    -> [B, C * Zb, Y, X] (fusion: concat LiDAR BEV, conv3x3-BN-ReLU) -> CustomResNet + FPN_LSS
    -> [B, C_bev, Y, X] -> head -> logits [B, X, Y, Z, K].
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from radocc.models.bev import BEVEncoder, ConvFuser
from radocc.models.camera import ImageEncoder
from radocc.models.config import ModelConfig
from radocc.models.heads import build_head
from radocc.models.lidar import LidarEncoder
from radocc.models.lss import LSSViewTransform

__all__ = ["ModelOutput", "OccupancyModel", "build_model", "render_density", "semantic_features"]


class ModelOutput(NamedTuple):
    """logits: [B, X, Y, Z, K] voxel class logits (Occ3D order; free is the last class).
    bev: [B, C_bev, Y, X] the BEV features fed to the head (for feature alignment).
    depth: [B, N, D, h, w] LSS depth probabilities (softmax over D), h, w = the /16 feature size.
    """

    logits: Tensor
    bev: Tensor
    depth: Tensor | None


def _check_shape(name: str, tensor, expected: tuple, what: str) -> None:
    """expected: ints or None (any size) per dimension."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {what}, got {type(tensor).__name__}")
    if tensor.dim() != len(expected) or any(
            e is not None and s != e for s, e in zip(tensor.shape, expected)):
        raise ValueError(f"{name} must be {what}, got shape {tuple(tensor.shape)}")


def check_camera_inputs(images: Tensor, intrinsics: Tensor, cam2frame: Tensor,
                        pose_name: str) -> tuple[int, int, int, int]:
    """Checks a model's camera inputs (images [B, N, 3, H, W] float, intrinsics [B, N, 3, 3], the
    camera poses ``pose_name`` [B, N, 4, 4]); returns (B, N, H, W). Raises ValueError / TypeError
    naming the argument."""
    _check_shape("images", images, (None, None, 3, None, None), "[B, N, 3, H, W]")
    if not images.is_floating_point():
        raise TypeError(f"images must be float RGB in [0, 1], got dtype {images.dtype}")
    batch, cams, _, height, width = images.shape
    _check_shape("intrinsics", intrinsics, (batch, cams, 3, 3), f"[B, N, 3, 3] = [{batch}, {cams}, 3, 3]")
    _check_shape(pose_name, cam2frame, (batch, cams, 4, 4), f"[B, N, 4, 4] = [{batch}, {cams}, 4, 4]")
    return batch, cams, height, width


def check_lidar_inputs(points: Tensor | None, num_points: Tensor | None, batch: int,
                       frame: str) -> None:
    """Checks a fusion model's LiDAR inputs: points [B, P, 5] and num_points [B], both given.
    ``frame``: the points' frame as said in the error (e.g. " (map frame)")."""
    if points is None or num_points is None:
        raise ValueError(f"modality 'fusion' needs points [B, P, 5]{frame} and num_points [B]; got None")
    _check_shape("points", points, (batch, None, 5), f"[B, P, 5] with B = {batch}")
    _check_shape("num_points", num_points, (batch,), f"[B] = [{batch}]")


class OccupancyModel(nn.Module):
    """Camera-only (``modality="camera"``) or camera + LiDAR (``"fusion"``) occupancy model."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        x_size, y_size, z_size = config.grid_shape
        camera = config.camera
        self.image_encoder = ImageEncoder(camera)
        self.view_transform = LSSViewTransform(
            config.camera.neck_channels, camera.depth_bins, camera.context_channels,
            config.grid_lower, config.grid_upper, (camera.bev_z_bins, y_size, x_size))
        bev_channels = self.view_transform.out_channels
        self.lidar_encoder: LidarEncoder | None = None
        self.fuser: ConvFuser | None = None
        if config.modality == "fusion":
            self.lidar_encoder = LidarEncoder(config.lidar, config.grid_lower, config.grid_upper,
                                              (y_size, x_size))
            self.fuser = ConvFuser(bev_channels, self.lidar_encoder.out_channels,
                                   config.fusion_channels)
            bev_channels = config.fusion_channels
        self.bev_encoder = BEVEncoder(bev_channels, config.bev_encoder)
        self.head = build_head(config.head, config.bev_encoder.out_channels, z_size,
                               config.num_classes)

    def forward(self, images: Tensor, intrinsics: Tensor, cam2ego: Tensor,
                points: Tensor | None = None, num_points: Tensor | None = None) -> ModelOutput:
        """
        Args:
            images: [B, N, 3, H, W] float RGB in [0, 1] (ImageNet-normalised inside).
            intrinsics: [B, N, 3, 3] camera matrices in pixels of these images (image
                augmentation folded in).
            cam2ego: [B, N, 4, 4] camera -> ego (grid) frame, metres (BEV flips folded in).
            points: [B, P, 5] LiDAR points (x, y, z metres ego frame, intensity, time lag),
                zero-padded; required for ``modality="fusion"``, ignored otherwise.
            num_points: [B] int64 valid points per sample; required with points.
        Returns:
            ModelOutput(logits [B, X, Y, Z, K], bev [B, C_bev, Y, X], depth [B, N, D, h, w]).
        """
        batch, cams, height, width = check_camera_inputs(images, intrinsics, cam2ego, "cam2ego")
        features = self.image_encoder(images.flatten(0, 1)).unflatten(0, (batch, cams))
        bev, depth = self.view_transform(features, intrinsics, cam2ego, (height, width))
        if self.lidar_encoder is not None:
            check_lidar_inputs(points, num_points, batch, "")
            bev = self.fuser(bev, self.lidar_encoder(points, num_points))
        bev = self.bev_encoder(bev)
        return ModelOutput(self.head(bev), bev, depth)


def build_model(config: ModelConfig) -> OccupancyModel:
    """The model a config describes."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    return OccupancyModel(config)


def render_density(logits: Tensor, config: ModelConfig) -> Tensor:
    """Renderer density from voxel logits: sigma = -log p_free / voxel edge (per metre).

    Uses ``radocc.render.density_from_logits`` with free = the last class and the voxel edge
    along x (Occ3D's voxels are 0.4 m cubes; for a non-cubic grid the x edge is the unit a whole
    voxel's crossing is measured in).

    Args:
        logits: [B, X, Y, Z, K] voxel class logits.
        config: the model's config (grid and K).
    Returns:
        [B, X, Y, Z] density >= 0, per metre.
    """
    from radocc.render import density_from_logits  # loads the compiled extension: only here

    _check_shape("logits", logits, (None, *config.grid_shape, config.num_classes),
                 f"[B, X, Y, Z, K] = [B, {', '.join(map(str, config.grid_shape))}, "
                 f"{config.num_classes}]")
    return density_from_logits(logits, free_index=config.num_classes - 1,
                               voxel_size=config.voxel_size[0])


def semantic_features(logits: Tensor) -> Tensor:
    """Per-voxel features to render: the class distribution given occupied (free last).

    The renderer's one implementation, :func:`radocc.distill.semantic_features`: softmax over
    the K - 1 non-free logits, so a ray's rendered features sum to its opacity.

    Args:
        logits: [..., K] class logits with free last (e.g. [B, X, Y, Z, K]).
    Returns:
        [..., K - 1] probabilities.
    """
    from radocc.distill import semantic_features as features  # loads the compiled extension

    return features(logits, free_index=-1)
