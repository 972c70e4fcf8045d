"""Image encoder: torchvision ResNet (stages 3 and 4) and a CustomFPN neck at stride 16.

As in FlashOcc / BEVDet: ResNet layer3 (stride 16) and layer4 (stride 32) feed an FPN whose only
output is the stride-16 level (lateral 1x1 convs, the /32 level upsampled to /16 and added, one
3x3 conv). Images arrive as RGB in [0, 1] and are normalised with the ImageNet mean / std here.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from radocc.models.config import CameraConfig

__all__ = ["ResNetBackbone", "CustomFPN", "ImageEncoder", "load_resnet_state_dict"]

_RESNETS = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_resnet_state_dict(resnet: torchvision.models.ResNet, path: str) -> None:
    """Loads a torchvision ResNet state_dict from a local file into ``resnet`` (in place).

    The classifier (``fc.*``) may be absent from the file. Anything else missing, unexpected or
    of the wrong shape raises a ValueError naming the file. Nothing is ever downloaded.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"camera.pretrained: no such file {path!r} (a local torchvision "
                                f"ResNet state_dict is expected; weights are never downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"camera.pretrained: {path!r} is not a readable torch state_dict "
                         f"({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"camera.pretrained: {path!r} does not hold a state_dict "
                         f"(a dict of parameter name -> tensor), got {type(state).__name__}")
    try:
        missing, unexpected = resnet.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches, e.g. a resnet18 file for a resnet50
        raise ValueError(f"camera.pretrained: {path!r} does not fit this ResNet: {error}") from error
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"camera.pretrained: {path!r} does not fit this ResNet: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")


class ResNetBackbone(nn.Module):
    """torchvision ResNet without its classifier; returns the layer3 (/16) and layer4 (/32) maps.

    ``out_channels`` = (layer3, layer4) channels: (256, 512) for resnet18, (1024, 2048) for
    resnet50.
    """

    def __init__(self, name: str, pretrained: str | None = None):
        super().__init__()
        if name not in _RESNETS:
            raise ValueError(f"camera.backbone must be one of {tuple(_RESNETS)}, got {name!r}")
        resnet = _RESNETS[name](weights=None)
        if pretrained is not None:
            load_resnet_state_dict(resnet, pretrained)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4
        expansion = 4 if name == "resnet50" else 1
        self.out_channels = (256 * expansion, 512 * expansion)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [M, 3, H, W] normalised -> ([M, C3, H/16, W/16], [M, C4, H/32, W/32])."""
        x = self.layer2(self.layer1(self.stem(images)))
        c3 = self.layer3(x)
        return c3, self.layer4(c3)


class CustomFPN(nn.Module):
    """FPN over (/16, /32) with one output, at /16: lateral 1x1 convs, nearest upsampling of the
    /32 level to the /16 size, sum, 3x3 conv (mmdet FPN with out_ids=[0], no norm)."""

    def __init__(self, in_channels: tuple[int, int], out_channels: int):
        super().__init__()
        self.lateral16 = nn.Conv2d(in_channels[0], out_channels, 1)
        self.lateral32 = nn.Conv2d(in_channels[1], out_channels, 1)
        self.output = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, c3: Tensor, c4: Tensor) -> Tensor:
        """c3 [M, C3, h, w], c4 [M, C4, h', w'] -> [M, out_channels, h, w]."""
        top = F.interpolate(self.lateral32(c4), size=c3.shape[-2:], mode="nearest")
        return self.output(self.lateral16(c3) + top)


class ImageEncoder(nn.Module):
    """RGB images in [0, 1] -> stride-16 features: ImageNet normalisation, ResNet, CustomFPN."""

    def __init__(self, config: CameraConfig):
        super().__init__()
        self.backbone = ResNetBackbone(config.backbone, config.pretrained)
        self.neck = CustomFPN(self.backbone.out_channels, config.neck_channels)
        self.out_channels = config.neck_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """images [M, 3, H, W] RGB in [0, 1] -> [M, neck_channels, h, w], h, w = the layer3
        size (ceil(H / 16), ceil(W / 16) for the torchvision strides)."""
        return self.neck(*self.backbone((images - self.mean) / self.std))
