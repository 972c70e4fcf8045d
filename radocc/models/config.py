"""Model configuration: plain dataclasses whose defaults are the paper scale.

Defaults follow FlashOcc M1 (ResNet-50, 256x704 images, LSS with 88 depth bins and 64 context
channels, z collapsed, CustomResNet + FPN_LSS BEV encoder, channel-to-height head) on the Occ3D
grid (x, y in [-40, 40] m, z in [-1, 5.4] m, 200 x 200 x 16 voxels of 0.4 m). Every size comes
from here, so tiny configs (resnet18, a few channels) build the same model for tests and demos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from radocc.models.lidar import LidarConfig
from radocc.occ3d import GRID_LOWER, GRID_SHAPE, GRID_UPPER, NUM_CLASSES

__all__ = ["CameraConfig", "BEVEncoderConfig", "HeadConfig", "LidarConfig", "ModelConfig",
           "BACKBONES", "HEADS", "MODALITIES"]

BACKBONES = ("resnet18", "resnet50")
HEADS = ("channel_to_height", "conv3d")
MODALITIES = ("camera", "fusion")


def _positive_ints(name: str, values, length: int) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) != length or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(f"{name} must be {length} positive integers, got {values!r}")
    return values


@dataclass
class CameraConfig:
    """Image encoder and LSS view transform.

    backbone: "resnet18" | "resnet50" (torchvision, built with weights=None).
    pretrained: local path to a torchvision ResNet state_dict (e.g. resnet50-19c8e357.pth);
        never downloaded.
    neck_channels: FPN output channels at stride 16 (the only level used).
    depth_bins: LSS depth bins (start, stop, step) in metres, ``arange(start, stop, step)``:
        (1, 45, 0.5) gives D = 88.
    context_channels: LSS context channels C.
    bev_z_bins: height bins of the LSS volume over the grid's z range: 1 = FlashOcc (z
        collapsed), 16 = BEVDet-occ (0.4 m); z is folded into channels for the 2D BEV encoder.
    """

    backbone: str = "resnet50"
    pretrained: str | None = None
    neck_channels: int = 256
    depth_bins: tuple[float, float, float] = (1.0, 45.0, 0.5)
    context_channels: int = 64
    bev_z_bins: int = 1

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"camera.backbone must be one of {BACKBONES}, got {self.backbone!r}")
        self.depth_bins = tuple(float(v) for v in self.depth_bins)
        if len(self.depth_bins) != 3:
            raise ValueError(f"camera.depth_bins must be (start, stop, step) metres, "
                             f"got {self.depth_bins!r}")
        start, stop, step = self.depth_bins
        if not (start > 0 and step > 0 and stop > start):
            raise ValueError(f"camera.depth_bins must satisfy 0 < start < stop and step > 0, "
                             f"got {self.depth_bins!r}")
        _positive_ints("camera.neck_channels", [self.neck_channels], 1)
        _positive_ints("camera.context_channels", [self.context_channels], 1)
        _positive_ints("camera.bev_z_bins", [self.bev_z_bins], 1)

    @property
    def num_depth_bins(self) -> int:
        """D = len(arange(start, stop, step))."""
        start, stop, step = self.depth_bins
        return math.ceil((stop - start) / step)  # torch.arange's length


@dataclass
class BEVEncoderConfig:
    """FlashOcc BEV encoder: CustomResNet stage channels (each stage 2 BasicBlocks, stride 2)
    and the FPN_LSS output channels."""

    channels: tuple[int, int, int] = (128, 256, 512)
    out_channels: int = 256

    def __post_init__(self) -> None:
        self.channels = _positive_ints("bev_encoder.channels", self.channels, 3)
        _positive_ints("bev_encoder.out_channels", [self.out_channels], 1)


@dataclass
class HeadConfig:
    """Occupancy head.

    kind: "channel_to_height" (FlashOcc: 2D conv, then an MLP to Z * K channels per BEV cell) or
        "conv3d" (a BEVDet-occ-like 3D head: 1x1 conv to Z * voxel_channels, reshaped to a
        volume, Conv3d 3^3 + ReLU, MLP voxel_channels -> hidden -> K per voxel).
    hidden_channels: MLP hidden width (FlashOcc 512; BEVDet-occ's 3D head uses 64: the conv3d
        head runs its MLP per voxel, so its activations are Z times larger).
    voxel_channels: per-voxel channels of the conv3d head (unused by channel_to_height).
    """

    kind: str = "channel_to_height"
    hidden_channels: int = 512
    voxel_channels: int = 32

    def __post_init__(self) -> None:
        if self.kind not in HEADS:
            raise ValueError(f"head.kind must be one of {HEADS}, got {self.kind!r}")
        _positive_ints("head.hidden_channels", [self.hidden_channels], 1)
        _positive_ints("head.voxel_channels", [self.voxel_channels], 1)


@dataclass
class ModelConfig:
    """The whole occupancy model.

    modality: "camera" (the student) or "fusion" (the teacher: camera + LiDAR BEV, fused by
        concat -> conv3x3-BN-ReLU -> fusion_channels).
    num_classes: K, with free space the last class (Occ3D: 18, free = 17).
    grid_lower, grid_upper: the grid box in the ego frame, metres (x, y, z).
    grid_shape: voxels along (x, y, z); logits are [B, X, Y, Z, K], BEV tensors [B, C, Y, X].
    lidar: LiDAR branch settings, used only when modality == "fusion".
    """

    modality: str = "camera"
    num_classes: int = NUM_CLASSES
    grid_lower: tuple[float, float, float] = GRID_LOWER
    grid_upper: tuple[float, float, float] = GRID_UPPER
    grid_shape: tuple[int, int, int] = GRID_SHAPE
    camera: CameraConfig = field(default_factory=CameraConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    fusion_channels: int = 256
    bev_encoder: BEVEncoderConfig = field(default_factory=BEVEncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if not (isinstance(self.num_classes, int) and self.num_classes >= 2):
            raise ValueError(f"num_classes must be an integer >= 2 (free is the last class), "
                             f"got {self.num_classes!r}")
        self.grid_lower = tuple(float(v) for v in self.grid_lower)
        self.grid_upper = tuple(float(v) for v in self.grid_upper)
        if len(self.grid_lower) != 3 or len(self.grid_upper) != 3 or not all(
                lo < hi for lo, hi in zip(self.grid_lower, self.grid_upper)):
            raise ValueError(f"grid_lower / grid_upper must be 3 numbers each with lower < upper, "
                             f"got {self.grid_lower!r} / {self.grid_upper!r}")
        self.grid_shape = _positive_ints("grid_shape", self.grid_shape, 3)
        _positive_ints("fusion_channels", [self.fusion_channels], 1)
        for name, kind in (("camera", CameraConfig), ("lidar", LidarConfig),
                           ("bev_encoder", BEVEncoderConfig), ("head", HeadConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):  # e.g. a TOML table
                setattr(self, name, kind(**value))
            elif not isinstance(value, kind):
                raise TypeError(f"{name} must be a {kind.__name__} (or a dict of its fields), "
                                f"got {type(value).__name__}")

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths (x, y, z) in metres."""
        return tuple((hi - lo) / n for lo, hi, n in
                     zip(self.grid_lower, self.grid_upper, self.grid_shape))

    @property
    def bev_shape(self) -> tuple[int, int]:
        """(Y, X): the BEV tensor's spatial shape (rows follow y, columns follow x)."""
        return self.grid_shape[1], self.grid_shape[0]
