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
           "BACKBONES", "HEADS", "MODALITIES", "GKTConfig", "MapHeadConfig", "MapModelConfig",
           "MAP_MODALITIES", "MAP_PC_RANGE"]

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


# --- Vector-map branch (MapTR head, GKT, MapDistill teacher / student) -----------------------

MAP_MODALITIES = ("camera", "camera_dual", "fusion")
MAP_PC_RANGE = (-15.0, -30.0, 15.0, 30.0)


def _floats(name: str, values, length: int) -> tuple[float, ...]:
    values = tuple(values)
    if len(values) != length or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                        and math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be {length} finite numbers, got {values!r}")
    return tuple(float(v) for v in values)


@dataclass
class GKTConfig:
    """GKT view transform (MapTR's geometry-guided kernel attention).

    num_heights: height anchors per BEV cell (one attention head each), at the centres of
        ``num_heights`` equal slices of ``z_range`` (map frame, metres): 4 in [-2, 2] gives
        -1.5, -0.5, 0.5, 1.5.
    kernel: (rows, cols) of the fixed feature-pixel kernel around each projection (MapTR: 3 x 5).
    num_layers: encoder layers (cross-attention, norm, FFN, norm); MapTR uses 1.
    ffn_channels: FFN hidden width. dropout: after the attention and inside the FFN.
    """

    num_heights: int = 4
    z_range: tuple[float, float] = (-2.0, 2.0)
    kernel: tuple[int, int] = (3, 5)
    num_layers: int = 1
    ffn_channels: int = 512
    dropout: float = 0.1

    def __post_init__(self) -> None:
        _positive_ints("gkt.num_heights", [self.num_heights], 1)
        self.z_range = _floats("gkt.z_range", self.z_range, 2)
        if not self.z_range[0] < self.z_range[1]:
            raise ValueError(f"gkt.z_range must be (low, high) with low < high, got {self.z_range!r}")
        self.kernel = _positive_ints("gkt.kernel", self.kernel, 2)
        _positive_ints("gkt.num_layers", [self.num_layers], 1)
        _positive_ints("gkt.ffn_channels", [self.ffn_channels], 1)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"gkt.dropout must be in [0, 1), got {self.dropout!r}")


@dataclass
class MapHeadConfig:
    """MapTR head: hierarchical queries and a transformer decoder on the BEV.

    num_vectors: instance queries N_vec; num_points: points per instance P (20 in the ground truth);
    num_classes: 3 (divider, ped_crossing, boundary).
    embed_dims: query width C (the position | content embeddings are 2C wide).
    num_layers: decoder layers (MapDistill / MapTR nano: 2; tiny: 6).
    num_heads: heads of the self-attention and of the BEV cross-attention (nano: 4; tiny: 8).
    num_sampling_points: sampling points per head of the BEV cross-attention (MapTR: 4).
    ffn_channels: FFN hidden width (MapTR: 2C). dropout: attention and FFN dropout.
    """

    num_vectors: int = 100
    num_points: int = 20
    num_classes: int = 3
    embed_dims: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_sampling_points: int = 4
    ffn_channels: int = 512
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("num_vectors", "num_classes", "embed_dims", "num_layers", "num_heads",
                     "num_sampling_points", "ffn_channels"):
            _positive_ints(f"head.{name}", [getattr(self, name)], 1)
        if not (isinstance(self.num_points, int) and self.num_points >= 2):
            raise ValueError(f"head.num_points must be an integer >= 2, got {self.num_points!r}")
        if self.embed_dims % self.num_heads:
            raise ValueError(f"head.embed_dims ({self.embed_dims}) must be divisible by "
                             f"head.num_heads ({self.num_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"head.dropout must be in [0, 1), got {self.dropout!r}")


def _default_map_camera() -> CameraConfig:
    # MapDistill's student: R18, LSS depth [1, 35) step 0.5, 256 context channels.
    return CameraConfig(backbone="resnet18", neck_channels=256, depth_bins=(1.0, 35.0, 0.5),
                        context_channels=256)


def _default_map_lidar() -> LidarConfig:
    # MapTR fusion: 0.1 x 0.1 x 0.2 m voxels over the patch, z in [-5, 3] (LiDAR frame).
    return LidarConfig(point_range=(-15.0, -30.0, -5.0, 15.0, 30.0, 3.0), out_channels=256)


@dataclass
class MapModelConfig:
    """The vector-map model (MapTR-style, MapDistill's teacher and students).

    modality: "camera" (GKT BEV only: the baseline camera MapTR), "camera_dual" (MapDistill's
        student: GKT BEV + LSS BEV fused by conv), "fusion" (the teacher: camera GKT BEV + spconv
        LiDAR BEV fused by conv).
    pc_range: (x_min, y_min, x_max, y_max) metres of the map frame (x lateral right, y forward).
    bev_shape: (H, W): BEV rows along y (row 0 at y_min), columns along x (column 0 at x_min).
    bev_channels: C of every BEV (GKT, LSS, LiDAR, fused) and of the decoder's input; the
        relation distillation compares the two BEVs of a model, so the LSS context channels
        (camera_dual) and the LiDAR out_channels (fusion) must equal it.
    camera: image encoder (backbone, neck) and LSS settings (depth bins, context channels).
        Given as a dict (a TOML table), camera and lidar override the defaults here (MapDistill's
        R18 student camera, MapTR's fusion LiDAR grid), not those of the occupancy model.
    lss_z_range: the single height bin of the LSS pooling, map frame metres (LSS / BEVFusion:
        [-10, 10]); x / y follow pc_range and bev_shape.
    gkt: GKT settings. lidar: LiDAR branch (its point_range x / y must equal pc_range).
    head: MapTR head settings.
    """

    modality: str = "camera_dual"
    pc_range: tuple[float, float, float, float] = MAP_PC_RANGE
    bev_shape: tuple[int, int] = (80, 40)
    bev_channels: int = 256
    camera: CameraConfig = field(default_factory=_default_map_camera)
    lss_z_range: tuple[float, float] = (-10.0, 10.0)
    gkt: GKTConfig = field(default_factory=GKTConfig)
    lidar: LidarConfig = field(default_factory=_default_map_lidar)
    head: MapHeadConfig = field(default_factory=MapHeadConfig)

    def __post_init__(self) -> None:
        if self.modality not in MAP_MODALITIES:
            raise ValueError(f"modality must be one of {MAP_MODALITIES}, got {self.modality!r}")
        self.pc_range = _floats("pc_range", self.pc_range, 4)
        x_min, y_min, x_max, y_max = self.pc_range
        if not (x_min < x_max and y_min < y_max):
            raise ValueError(f"pc_range must be (x_min, y_min, x_max, y_max) with min < max, "
                             f"got {self.pc_range!r}")
        self.bev_shape = _positive_ints("bev_shape", self.bev_shape, 2)
        _positive_ints("bev_channels", [self.bev_channels], 1)
        if self.bev_channels % 2:
            raise ValueError(f"bev_channels must be even (row | column positional halves), "
                             f"got {self.bev_channels}")
        self.lss_z_range = _floats("lss_z_range", self.lss_z_range, 2)
        if not self.lss_z_range[0] < self.lss_z_range[1]:
            raise ValueError(f"lss_z_range must be (low, high) with low < high, "
                             f"got {self.lss_z_range!r}")
        defaults = {"camera": _default_map_camera, "gkt": GKTConfig, "lidar": _default_map_lidar,
                    "head": MapHeadConfig}
        for name, kind in (("camera", CameraConfig), ("gkt", GKTConfig), ("lidar", LidarConfig),
                           ("head", MapHeadConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):  # e.g. a TOML table: it overrides this class's defaults
                setattr(self, name, kind(**{**vars(defaults[name]()), **value}))
            elif not isinstance(value, kind):
                raise TypeError(f"{name} must be a {kind.__name__} (or a dict of its fields), "
                                f"got {type(value).__name__}")
        if self.gkt.num_heights > self.bev_channels or self.bev_channels % self.gkt.num_heights:
            raise ValueError(f"bev_channels ({self.bev_channels}) must be divisible by "
                             f"gkt.num_heights ({self.gkt.num_heights}): one head per anchor")
        if self.modality == "camera_dual" and self.camera.context_channels != self.bev_channels:
            raise ValueError(f"camera.context_channels ({self.camera.context_channels}) must equal "
                             f"bev_channels ({self.bev_channels}) for 'camera_dual' (the GKT and "
                             f"LSS BEVs are compared by the relation distillation)")
        if self.modality == "fusion":
            if self.lidar.out_channels != self.bev_channels:
                raise ValueError(f"lidar.out_channels ({self.lidar.out_channels}) must equal "
                                 f"bev_channels ({self.bev_channels}) for 'fusion' (the camera "
                                 f"and LiDAR BEVs are compared by the relation distillation)")
            point_range = self.lidar_point_range
            if any(abs(a - b) > 1e-6 for a, b in zip(
                    (point_range[0], point_range[1], point_range[3], point_range[4]), self.pc_range)):
                raise ValueError(f"lidar.point_range x / y must equal pc_range {self.pc_range}, "
                                 f"got {point_range}")

    @property
    def lidar_point_range(self) -> tuple[float, ...]:
        """(x0, y0, z0, x1, y1, z1) metres of the LiDAR voxel grid (map frame); without an
        explicit lidar.point_range, pc_range with z in [-5, 3]."""
        if self.lidar.point_range is not None:
            return tuple(self.lidar.point_range)
        x_min, y_min, x_max, y_max = self.pc_range
        return (x_min, y_min, -5.0, x_max, y_max, 3.0)

    @property
    def cell_size(self) -> tuple[float, float]:
        """(x, y) edge of a BEV cell, metres."""
        x_min, y_min, x_max, y_max = self.pc_range
        return (x_max - x_min) / self.bev_shape[1], (y_max - y_min) / self.bev_shape[0]
