"""FlashOcc's BEV encoder: CustomResNet (2D) + FPN_LSS, and the camera-LiDAR ConvFuser."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from radocc.models.config import BEVEncoderConfig

__all__ = ["conv_bn_relu", "CustomResNet", "FPNLSS", "BEVEncoder", "ConvFuser"]


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """Conv2d (no bias, 'same' padding) -> BatchNorm2d -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class CustomResNet(nn.Module):
    """Three stages of 2 BasicBlocks, each stage strided by 2; the first block's shortcut is a
    3x3 stride-2 conv (FlashOcc's CustomResNet). Returns the three stage outputs (/2, /4, /8)."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int], blocks_per_stage: int = 2):
        super().__init__()
        stages, current = [], in_channels
        for out in channels:
            shortcut = nn.Conv2d(current, out, 3, stride=2, padding=1)
            blocks = [BasicBlock(current, out, stride=2, downsample=shortcut)]
            blocks += [BasicBlock(out, out) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            current = out
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x [B, C_in, Y, X] -> [B, c_i, Y / 2^(i+1), X / 2^(i+1)] for the three stages."""
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class FPNLSS(nn.Module):
    """FlashOcc's FPN_LSS: stage 3 upsampled (bilinear, align_corners) to stage 1's size and
    concatenated with it, two conv3x3-BN-ReLU to 2 * out, upsampled to the output size,
    conv3x3-BN-ReLU to out, then a plain 1x1 conv (with bias, as in FlashOcc)."""

    def __init__(self, low_channels: int, high_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(conv_bn_relu(low_channels + high_channels, 2 * out_channels),
                                  conv_bn_relu(2 * out_channels, 2 * out_channels))
        self.up = nn.Sequential(conv_bn_relu(2 * out_channels, out_channels),
                                nn.Conv2d(out_channels, out_channels, 1))

    def forward(self, low: Tensor, high: Tensor, size: tuple[int, int]) -> Tensor:
        """low [B, c1, y1, x1], high [B, c3, y3, x3] -> [B, out, *size]."""
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        x = self.conv(torch.cat([low, high], dim=1))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.up(x)


class BEVEncoder(nn.Module):
    """[B, C_in, Y, X] -> [B, out_channels, Y, X] (CustomResNet + FPN_LSS).

    Upsampling goes to explicit sizes rather than fixed factors, so any Y, X works (200 x 200:
    stages at 100, 50, 25; 25 -> 100 -> 200)."""

    def __init__(self, in_channels: int, config: BEVEncoderConfig):
        super().__init__()
        self.backbone = CustomResNet(in_channels, config.channels)
        self.neck = FPNLSS(config.channels[0], config.channels[2], config.out_channels)
        self.out_channels = config.out_channels

    def forward(self, bev: Tensor) -> Tensor:
        low, _, high = self.backbone(bev)
        return self.neck(low, high, bev.shape[-2:])


class ConvFuser(nn.Module):
    """Camera BEV and LiDAR BEV -> concat -> conv3x3-BN-ReLU -> out_channels (BEVFusion)."""

    def __init__(self, camera_channels: int, lidar_channels: int, out_channels: int):
        super().__init__()
        self.fuse = conv_bn_relu(camera_channels + lidar_channels, out_channels)

    def forward(self, camera_bev: Tensor, lidar_bev: Tensor) -> Tensor:
        """[B, Cc, Y, X], [B, Cl, Y, X] -> [B, out_channels, Y, X]."""
        if camera_bev.shape[-2:] != lidar_bev.shape[-2:] or camera_bev.shape[0] != lidar_bev.shape[0]:
            raise ValueError(f"camera BEV {tuple(camera_bev.shape)} and LiDAR BEV "
                             f"{tuple(lidar_bev.shape)} must share B, Y, X")
        return self.fuse(torch.cat([camera_bev, lidar_bev], dim=1))
