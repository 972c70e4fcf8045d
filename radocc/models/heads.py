"""Occupancy heads: BEV features [B, C, Y, X] -> voxel class logits [B, X, Y, Z, K] (Occ3D order)."""

from __future__ import annotations

from torch import Tensor, nn

from radocc.models.config import HeadConfig

__all__ = ["ChannelToHeightHead", "Conv3DHead", "build_head"]


class ChannelToHeightHead(nn.Module):
    """FlashOcc's channel-to-height head.

    conv3x3 C -> C + ReLU, transposed to [B, X, Y, C], Linear C -> hidden, Softplus,
    Linear hidden -> Z * K, viewed as [B, X, Y, Z, K] (output channel z * K + k is logit k of
    height z).
    """

    def __init__(self, in_channels: int, hidden_channels: int, z_size: int, num_classes: int):
        super().__init__()
        self.z_size, self.num_classes = z_size, num_classes
        self.conv = nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1),
                                  nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden_channels), nn.Softplus(),
                                 nn.Linear(hidden_channels, z_size * num_classes))

    def forward(self, bev: Tensor) -> Tensor:
        """bev [B, C, Y, X] -> logits [B, X, Y, Z, K]."""
        x = self.conv(bev).permute(0, 3, 2, 1)                       # [B, X, Y, C]
        return self.mlp(x).unflatten(-1, (self.z_size, self.num_classes))


class Conv3DHead(nn.Module):
    """A BEVDet-occ-like 3D head for a 2D BEV.

    A 1x1 conv lifts [B, C, Y, X] to Z * c3 channels, viewed as a volume [B, c3, Z, Y, X]
    (channel c * Z + z), then Conv3d 3^3 + ReLU, transposed to [B, X, Y, Z, c3], and per voxel
    Linear c3 -> hidden, Softplus, Linear hidden -> K (BEVDet-occ's predicter).
    """

    def __init__(self, in_channels: int, voxel_channels: int, hidden_channels: int, z_size: int,
                 num_classes: int):
        super().__init__()
        self.z_size, self.voxel_channels = z_size, voxel_channels
        self.lift = nn.Conv2d(in_channels, z_size * voxel_channels, 1)
        self.conv = nn.Sequential(nn.Conv3d(voxel_channels, voxel_channels, 3, padding=1),
                                  nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(nn.Linear(voxel_channels, hidden_channels), nn.Softplus(),
                                 nn.Linear(hidden_channels, num_classes))

    def forward(self, bev: Tensor) -> Tensor:
        """bev [B, C, Y, X] -> logits [B, X, Y, Z, K]."""
        batch, _, y_size, x_size = bev.shape
        volume = self.lift(bev).view(batch, self.voxel_channels, self.z_size, y_size, x_size)
        volume = self.conv(volume).permute(0, 4, 3, 2, 1)            # [B, X, Y, Z, c3]
        return self.mlp(volume)


def build_head(config: HeadConfig, in_channels: int, z_size: int, num_classes: int) -> nn.Module:
    """The head ``config.kind`` names."""
    if config.kind == "channel_to_height":
        return ChannelToHeightHead(in_channels, config.hidden_channels, z_size, num_classes)
    if config.kind == "conv3d":
        return Conv3DHead(in_channels, config.voxel_channels, config.hidden_channels, z_size,
                          num_classes)
    raise ValueError(f"head.kind must be 'channel_to_height' or 'conv3d', got {config.kind!r}")
