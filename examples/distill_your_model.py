"""Add RadOcc's rendering distillation to the training loop of an occupancy model that is not radocc's.

    python examples/distill_your_model.py [--steps 30]

``YourOccupancyNet`` stands for your model (BEVDet, FlashOcc, SparseOcc, ...): anything that turns
camera images into voxel class logits [B, X, Y, Z, K] with the free class last. Here it is a tiny
per-camera CNN whose features are lifted to the voxels by projecting each voxel centre into the
cameras. The teacher is another instance, frozen, that already knows the toy scene (in practice: your
trained camera + LiDAR model). The data are random images of a fixed two-camera rig and a toy
scene (ground and a few pillars); the segment maps stand in for SAM segments (``python -m
radocc.segments`` makes real ones). The integration is the lines marked ``RadOcc``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radocc.distill import RenderDistillLoss
from radocc.render import VoxelGrid

GRID = VoxelGrid(lower=(-8.0, -8.0, -1.0), upper=(8.0, 8.0, 3.0))  # metres, ego frame
SHAPE = (16, 16, 4)  # voxels along x, y, z: 1 m cubes
CLASSES = 5  # 4 semantic classes + free (last)
IMAGE = (32, 48)  # (H, W) pixels


class YourOccupancyNet(nn.Module):
    """Images [B, N, 3, H, W] + cameras -> voxel logits [B, X, Y, Z, K] (a stand-in for your model)."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(3, channels, 3, 2, 1), nn.ReLU(),
                                 nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU())  # /4
        self.head = nn.Linear(channels, CLASSES)
        self.bias = nn.Parameter(torch.randn(*SHAPE, CLASSES))
        size = torch.tensor(GRID.voxel_size(SHAPE))
        index = torch.stack(torch.meshgrid(*(torch.arange(n) for n in SHAPE), indexing="ij"), -1)
        self.register_buffer("centres", torch.tensor(GRID.lower) + (index.reshape(-1, 3) + 0.5) * size)

    def forward(self, images: Tensor, intrinsics: Tensor, cam2ego: Tensor) -> Tensor:
        batch, cams, _, height, width = images.shape
        features = self.cnn(images.flatten(0, 1))  # [B N, C, H/4, W/4]
        # lift: project every voxel centre into every camera, sample its feature, average
        ego2cam = torch.linalg.inv(cam2ego).flatten(0, 1)  # [B N, 4, 4]
        points = self.centres @ ego2cam[:, :3, :3].transpose(1, 2) + ego2cam[:, None, :3, 3]
        uvw = points @ intrinsics.flatten(0, 1).transpose(1, 2)  # [B N, V, 3]
        uv = uvw[..., :2] / uvw[..., 2:].clamp_min(1e-3)
        norm = uv / uv.new_tensor([width - 1, height - 1]) * 2 - 1  # grid_sample's [-1, 1]
        seen = (uvw[..., 2] > 0.1) & (norm.abs() <= 1).all(-1)  # [B N, V]
        sampled = F.grid_sample(features, norm[:, None], align_corners=True)[:, :, 0]  # [B N, C, V]
        sampled = (sampled * seen[:, None]).unflatten(0, (batch, cams)).sum(1)
        sampled = sampled / seen.unflatten(0, (batch, cams)).sum(1).clamp_min(1)[:, None]
        return self.head(sampled.transpose(1, 2)).view(batch, *SHAPE, CLASSES) + self.bias


def rig(batch: int) -> tuple[Tensor, Tensor]:
    """intrinsics [B, 2, 3, 3] and cam2ego [B, 2, 4, 4]: cameras 1 m up looking along ego +x and -x."""
    height, width = IMAGE
    k = torch.tensor([[24.0, 0.0, (width - 1) / 2], [0.0, 24.0, (height - 1) / 2], [0.0, 0.0, 1.0]])
    front = torch.eye(4)
    front[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    front[2, 3] = 1.0
    back = front.clone()
    back[:2, :3] *= -1  # turned around the vertical axis
    return k.expand(batch, 2, 3, 3), torch.stack([front, back]).expand(batch, 2, 4, 4)


def toy_scene(generator: torch.Generator) -> Tensor:
    """[X, Y, Z] int64 labels: ground (class 0) at the bottom layer, pillars of classes 1-3, free."""
    labels = torch.full(SHAPE, CLASSES - 1)
    labels[..., 0] = 0
    x, y = torch.randint(0, SHAPE[0], (2, 12), generator=generator)
    labels[x, y, 1:] = torch.randint(1, CLASSES - 1, (12, 1), generator=generator)
    return labels


def main(steps: int = 30, seed: int = 0, verbose: bool = True) -> list[dict[str, float]]:
    """Trains a tiny student for ``steps`` steps; returns each step's losses."""
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    student = YourOccupancyNet().to(device)
    scene = toy_scene(torch.Generator().manual_seed(seed))
    teacher = YourOccupancyNet()
    teacher.bias.data = 4.0 * F.one_hot(scene, CLASSES).float()  # a teacher that knows the scene
    teacher = teacher.to(device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)

    # RadOcc: RDC + RSC on rendered teacher / student voxels along shared camera rays
    distill = RenderDistillLoss(GRID, depth_bins=(0.5, 12.0, 0.5), rays_per_image=256, stride=2,
                                rdc_weight=100.0, rsc_weight=10.0, rsc_mode="affinity").to(device)
    generator = torch.Generator(device).manual_seed(seed)

    images = torch.rand(2, 2, 3, *IMAGE, device=device)  # [B, N, 3, H, W]: a fixed toy batch
    intrinsics, cam2ego = (x.to(device) for x in rig(batch=2))
    labels = scene.expand(2, *SHAPE).to(device)  # your occupancy labels [B, X, Y, Z]
    rows = torch.arange(IMAGE[0], device=device)[:, None] // 8
    cols = torch.arange(IMAGE[1], device=device)[None, :] // 8
    segments = (rows * 8 + cols + 1).expand(2, 2, *IMAGE)  # [B, N, H, W] segment ids, 0 = none

    history = []
    for step in range(steps):
        logits = student(images, intrinsics, cam2ego)  # [B, X, Y, Z, K]
        with torch.no_grad():
            teacher_logits = teacher(images, intrinsics, cam2ego)
        task = F.cross_entropy(logits.flatten(0, 3), labels.flatten())  # your own loss
        out = distill(logits, teacher_logits, intrinsics, cam2ego, IMAGE, segments=segments,
                      generator=generator)
        loss = task + out["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({name: float(value.detach()) for name, value in
                        dict(task=task, rdc=out["rdc"], rsc=out["rsc"], total=loss).items()})
        if verbose:
            print(f"step {step + 1:3d}  " + "  ".join(f"{k} {v:.4f}" for k, v in history[-1].items()))
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.seed)
