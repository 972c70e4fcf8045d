"""Occupancy models: shapes, gradients, LSS geometry and pooling, head layout, weight loading."""

import math
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from radocc.models import (BEVEncoderConfig, CameraConfig, HeadConfig, LidarConfig, ModelConfig,
                           OccupancyModel, build_model, render_density, semantic_features)
from radocc.models.camera import ImageEncoder, ResNetBackbone
from radocc.models.heads import ChannelToHeightHead, Conv3DHead
from radocc.models.lss import bev_pool, frustum, frustum_to_ego, voxel_ranks

torch.set_num_threads(1)

# Looking along +x: camera x (right) -> ego -y, camera y (down) -> ego -z, camera z -> ego x.
FORWARD = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def tiny_config(**overrides) -> ModelConfig:
    """resnet18, 32-channel neck, 20 depth bins, 16 context channels, a coarse 20 x 16 x 4 grid."""
    settings = dict(
        grid_lower=(-40.0, -32.0, -1.0), grid_upper=(40.0, 32.0, 5.4), grid_shape=(20, 16, 4),
        camera=CameraConfig(backbone="resnet18", neck_channels=32, depth_bins=(1.0, 41.0, 2.0),
                            context_channels=16),
        bev_encoder=BEVEncoderConfig(channels=(16, 32, 64), out_channels=32),
        head=HeadConfig(hidden_channels=32))
    settings.update(overrides)
    return ModelConfig(**settings)


def rig(batch: int, cams: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Intrinsics and cam2ego of ``cams`` cameras 1.5 m up, spread evenly in yaw."""
    intrinsics = torch.tensor([[0.6 * width, 0.0, width / 2], [0.0, 0.6 * width, height / 2],
                               [0.0, 0.0, 1.0]]).expand(batch, cams, 3, 3).clone()
    cam2ego = torch.eye(4).repeat(batch, cams, 1, 1)
    for n in range(cams):
        yaw = 2 * math.pi * n / cams
        rz = torch.tensor([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0],
                           [0.0, 0.0, 1.0]])
        cam2ego[:, n, :3, :3] = rz @ FORWARD
        cam2ego[:, n, :3, 3] = torch.tensor([0.5 * math.cos(yaw), 0.5 * math.sin(yaw), 1.5])
    return intrinsics, cam2ego


def test_camera_model_shapes_depth_and_gradients():
    torch.manual_seed(0)
    config = tiny_config()
    model = build_model(config)
    images = torch.rand(2, 3, 3, 64, 120)
    intrinsics, cam2ego = rig(2, 3, 64, 120)
    out = model(images, intrinsics, cam2ego)
    assert out.logits.shape == (2, 20, 16, 4, 18)
    assert out.bev.shape == (2, 32, 16, 20)
    assert out.depth.shape == (2, 3, 20, 4, 8)  # h, w = ceil(64 / 16), ceil(120 / 16)
    torch.testing.assert_close(out.depth.sum(dim=2), torch.ones(2, 3, 4, 8))
    out.logits.square().mean().backward()
    for name in ("image_encoder.backbone.stem.0.weight", "image_encoder.backbone.layer3.0.conv1.weight",
                 "view_transform.depth_net.weight", "bev_encoder.backbone.stages.0.0.conv1.weight",
                 "head.mlp.2.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_samples_of_a_batch_do_not_mix():
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    images = torch.rand(2, 2, 3, 48, 80)
    intrinsics, cam2ego = rig(2, 2, 48, 80)
    with torch.no_grad():
        first = model(images, intrinsics, cam2ego).logits
        images[1] = torch.rand(2, 3, 48, 80)
        cam2ego[1, :, 2, 3] = 3.0
        second = model(images, intrinsics, cam2ego).logits
    torch.testing.assert_close(first[0], second[0])
    assert not torch.allclose(first[1], second[1])


def test_occ3d_grid_and_conv3d_head_shapes():
    config = tiny_config(grid_lower=(-40.0, -40.0, -1.0), grid_upper=(40.0, 40.0, 5.4),
                         grid_shape=(200, 200, 16), head=HeadConfig(kind="conv3d", hidden_channels=8,
                                                                    voxel_channels=4))
    model = build_model(config).eval()
    intrinsics, cam2ego = rig(1, 2, 32, 64)
    with torch.no_grad():
        out = model(torch.rand(1, 2, 3, 32, 64), intrinsics, cam2ego)
    assert out.logits.shape == (1, 200, 200, 16, 18)
    assert out.bev.shape == (1, 32, 200, 200)
    assert out.depth.shape == (1, 2, 20, 2, 4)


def test_bev_z_bins_fold_into_channels():
    config = tiny_config(camera=CameraConfig(backbone="resnet18", neck_channels=16,
                                             depth_bins=(1.0, 41.0, 4.0), context_channels=8,
                                             bev_z_bins=4))
    model = build_model(config)
    assert model.view_transform.out_channels == 32
    assert model.bev_encoder.backbone.stages[0][0].conv1.in_channels == 32
    intrinsics, cam2ego = rig(1, 1, 32, 64)
    bev, depth = model.view_transform(torch.rand(1, 1, 16, 2, 4), intrinsics, cam2ego, (32, 64))
    assert bev.shape == (1, 32, 16, 20) and depth.shape == (1, 1, 10, 2, 4)


def test_fusion_model_uses_lidar():
    torch.manual_seed(0)
    lidar = LidarConfig(voxel_size=(0.8, 0.8, 0.8), base_channels=4, stage_channels=(8, 8, 16),
                        out_channels=16, max_voxels=5000)
    config = tiny_config(modality="fusion", grid_lower=(-40.0, -40.0, -1.0),
                         grid_upper=(40.0, 40.0, 5.4), grid_shape=(50, 50, 4), lidar=lidar,
                         fusion_channels=24)
    model = build_model(config)
    images = torch.rand(2, 2, 3, 32, 64)
    intrinsics, cam2ego = rig(2, 2, 32, 64)
    points = torch.zeros(2, 600, 5)
    points[..., :3] = torch.rand(2, 600, 3) * torch.tensor([78.0, 78.0, 6.0]) + torch.tensor(
        [-39.0, -39.0, -0.8])
    points[..., 3] = torch.rand(2, 600)
    num_points = torch.tensor([600, 400])
    out = model(images, intrinsics, cam2ego, points, num_points)
    assert out.logits.shape == (2, 50, 50, 4, 18) and out.bev.shape == (2, 32, 50, 50)
    assert model.fuser.fuse[0].in_channels == 16 * 1 + 16
    out.logits.square().mean().backward()
    grad = model.lidar_encoder.conv_input.conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="points"):
        model(images, intrinsics, cam2ego)
    with pytest.raises(ValueError, match="points must be"):
        model(images, intrinsics, cam2ego, points[..., :4], num_points)


def test_input_errors():
    model = build_model(tiny_config())
    intrinsics, cam2ego = rig(1, 2, 32, 64)
    with pytest.raises(ValueError, match="images"):
        model(torch.rand(1, 2, 4, 32, 64), intrinsics, cam2ego)
    with pytest.raises(ValueError, match="intrinsics"):
        model(torch.rand(1, 2, 3, 32, 64), intrinsics[:, :1], cam2ego)
    with pytest.raises(ValueError, match="cam2ego"):
        model(torch.rand(1, 2, 3, 32, 64), intrinsics, cam2ego[..., :3, :])
    with pytest.raises(ValueError, match="backbone"):
        CameraConfig(backbone="resnet34")
    with pytest.raises(ValueError, match="head.kind"):
        HeadConfig(kind="mlp")
    with pytest.raises(ValueError, match="modality"):
        ModelConfig(modality="lidar")
    with pytest.raises(TypeError, match="camera"):
        ModelConfig(camera="resnet18")
    assert ModelConfig(head={"kind": "conv3d"}).head == HeadConfig(kind="conv3d")


def test_frustum_unprojects_to_hand_computed_points():
    height, width, fx, fy, cx, cy, z0 = 64, 96, 80.0, 70.0, 47.5, 31.5, 1.6
    intrinsics = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    cam2ego = torch.eye(4).view(1, 1, 4, 4).clone()
    cam2ego[0, 0, :3, :3] = FORWARD
    cam2ego[0, 0, :3, 3] = torch.tensor([1.0, 0.0, z0])
    points = frustum((height, width), (4, 6), (1.0, 45.0, 0.5))
    assert points.shape == (88, 4, 6, 3)
    torch.testing.assert_close(points[0, :, 0, 0], torch.zeros(4))
    torch.testing.assert_close(points[0, -1, -1, :2], torch.tensor([95.0, 63.0]))
    torch.testing.assert_close(points[:, 0, 0, 2], torch.arange(1.0, 45.0, 0.5))
    ego = frustum_to_ego(points, intrinsics, cam2ego)[0, 0]
    u, v, d = points.unbind(-1)
    expected = torch.stack([1.0 + d, -(u - cx) * d / fx, z0 - (v - cy) * d / fy], dim=-1)
    torch.testing.assert_close(ego, expected, rtol=1e-5, atol=1e-4)
    # A point on the optical axis at depth d lies d metres straight ahead of the camera.
    on_axis = frustum_to_ego(torch.tensor([[[[cx, cy, 7.0]]]]), intrinsics, cam2ego)
    torch.testing.assert_close(on_axis.view(3), torch.tensor([8.0, 0.0, z0]))


def test_horizontal_flip_with_intrinsics_gives_the_same_points():
    height, width = 48, 80
    intrinsics, cam2ego = rig(1, 2, height, width)
    flip = torch.tensor([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    points = frustum((height, width), (3, 5), (1.0, 21.0, 2.0))
    ego = frustum_to_ego(points, intrinsics, cam2ego)
    flipped = frustum_to_ego(points, flip @ intrinsics, cam2ego)
    assert not torch.allclose(ego, flipped, atol=1e-3)
    # Feature column j of the flipped image sees what column w - 1 - j of the original saw.
    torch.testing.assert_close(flipped.flip(-2), ego, rtol=1e-5, atol=1e-4)


def test_voxel_ranks_floor_and_orientation():
    lower, upper, shape = (-4.0, -2.0, -1.0), (4.0, 2.0, 1.0), (2, 4, 8)  # (Z, Y, X), 1 m cells
    points = torch.tensor([[3.5, -1.5, 0.5],     # x cell 7, y cell 0, z cell 1
                           [-4.1, 0.0, 0.0],     # just below x range: dropped (truncation -> cell 0)
                           [-3.9, 1.9, -0.9],    # x 0, y 3, z 0
                           [4.0, 0.0, 0.0]])     # on the upper bound: dropped
    ranks = voxel_ranks(points.view(1, 1, 4, 1, 1, 3), lower, upper, shape)
    assert ranks.ranks_depth.tolist() == [0, 2]
    assert ranks.ranks_bev.tolist() == [(1 * 4 + 0) * 8 + 7, (0 * 4 + 3) * 8 + 0]
    depth = torch.ones(1, 1, 4, 1, 1)
    context = torch.tensor([2.0, 3.0]).expand(1, 1, 1, 1, 2)
    bev = bev_pool(depth, context, ranks, shape)
    assert bev.shape == (1, 2, 2, 4, 8)
    assert bev[0, :, 1, 0, 7].tolist() == [2.0, 3.0] and bev[0, :, 0, 3, 0].tolist() == [2.0, 3.0]
    assert bev.abs().sum() == 10.0


def test_bev_pool_matches_a_naive_loop():
    torch.manual_seed(0)
    batch, cams, depth_bins, h, w, channels = 2, 2, 3, 2, 3, 4
    lower, upper, shape = (-2.0, -2.0, -1.0), (2.0, 2.0, 1.0), (2, 4, 4)
    points = torch.rand(batch, cams, depth_bins, h, w, 3) * 5.0 - 2.5  # some outside the box
    depth = torch.rand(batch, cams, depth_bins, h, w, dtype=torch.float64, requires_grad=True)
    context = torch.randn(batch, cams, h, w, channels, dtype=torch.float64, requires_grad=True)
    pooled = bev_pool(depth, context, voxel_ranks(points, lower, upper, shape), shape)

    naive = torch.zeros(batch, channels, *shape, dtype=torch.float64)
    count = 0
    for b in range(batch):
        for n in range(cams):
            for k in range(depth_bins):
                for i in range(h):
                    for j in range(w):
                        x, y, z = points[b, n, k, i, j].tolist()
                        ix, iy, iz = math.floor(x + 2.0), math.floor(y + 2.0), math.floor(z + 1.0)
                        if 0 <= ix < 4 and 0 <= iy < 4 and 0 <= iz < 2:
                            naive[b, :, iz, iy, ix] = (naive[b, :, iz, iy, ix]
                                                       + depth[b, n, k, i, j] * context[b, n, i, j])
                            count += 1
    assert 0 < count < points[..., 0].numel()
    torch.testing.assert_close(pooled, naive)
    weights = torch.randn_like(naive)
    grads = torch.autograd.grad((pooled * weights).sum(), (depth, context))
    naive_grads = torch.autograd.grad((naive * weights).sum(), (depth, context))
    for grad, naive_grad in zip(grads, naive_grads):
        torch.testing.assert_close(grad, naive_grad)


def test_channel_to_height_layout():
    z_size, classes, y_size, x_size = 3, 4, 5, 7
    head = ChannelToHeightHead(z_size * classes, 8, z_size, classes)
    head.conv, head.mlp = nn.Identity(), nn.Identity()  # keep only the layout
    bev = torch.randn(2, z_size * classes, y_size, x_size)
    logits = head(bev)
    assert logits.shape == (2, x_size, y_size, z_size, classes)
    b, z, k, y, x = 1, 2, 3, 4, 6
    assert logits[b, x, y, z, k] == bev[b, z * classes + k, y, x]
    torch.testing.assert_close(logits, bev.view(2, z_size, classes, y_size, x_size)
                               .permute(0, 4, 3, 1, 2))


def test_conv3d_head_keeps_bev_orientation():
    torch.manual_seed(0)
    head = Conv3DHead(6, voxel_channels=4, hidden_channels=8, z_size=3, num_classes=5)
    bev = torch.zeros(1, 6, 9, 11)  # Y = 9, X = 11
    base = head(bev)
    bev[0, :, 2, 8] = 5.0            # row y = 2, column x = 8
    changed = (head(bev) - base).abs().amax(dim=(0, 3, 4)) > 1e-6  # [X, Y]
    assert base.shape == (1, 11, 9, 3, 5)
    assert changed[8, 2]
    xs, ys = changed.nonzero().unbind(1)
    assert (xs - 8).abs().max() <= 1 and (ys - 2).abs().max() <= 1


def test_pretrained_resnet_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        reference.bn1.running_mean.uniform_()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    encoder = ImageEncoder(CameraConfig(backbone="resnet18", pretrained=str(path), neck_channels=8))
    backbone = encoder.backbone
    torch.testing.assert_close(backbone.stem[0].weight, reference.conv1.weight)
    torch.testing.assert_close(backbone.stem[1].running_mean, reference.bn1.running_mean)
    torch.testing.assert_close(backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ResNetBackbone("resnet18", str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        ResNetBackbone("resnet18", str(garbage))
    state = reference.state_dict()
    del state["layer2.0.conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="partial.pth.*layer2.0.conv1.weight"):
        ResNetBackbone("resnet18", str(tmp_path / "partial.pth"))
    state = reference.state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, tmp_path / "misshapen.pth")
    with pytest.raises(ValueError, match="misshapen.pth"):
        ResNetBackbone("resnet18", str(tmp_path / "misshapen.pth"))
    no_fc = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    torch.save(no_fc, tmp_path / "no_fc.pth")
    ResNetBackbone("resnet18", str(tmp_path / "no_fc.pth"))  # the classifier may be absent


def test_paper_scale_student_builds():
    config = ModelConfig()
    assert config.camera.num_depth_bins == 88 and config.voxel_size == pytest.approx((0.4, 0.4, 0.4))
    model = OccupancyModel(config)
    assert model.image_encoder.backbone.out_channels == (1024, 2048)
    assert model.view_transform.depth_net.out_channels == 88 + 64
    assert model.bev_encoder.neck.conv[0][0].in_channels == 128 + 512
    assert model.head.mlp[2].out_features == 16 * 18
    assert model.lidar_encoder is None and model.fuser is None
    parameters = sum(p.numel() for p in model.parameters())
    assert 35e6 < parameters < 60e6, parameters


def test_render_density_and_semantic_features():
    config = ModelConfig(grid_shape=(4, 3, 2), grid_upper=(-38.4, -38.8, -0.2))  # 0.4 m cubes
    logits = torch.randn(2, 4, 3, 2, 18)
    density = render_density(logits, config)
    assert density.shape == (2, 4, 3, 2) and (density >= 0).all()
    torch.testing.assert_close(density, -logits.log_softmax(-1)[..., 17] / 0.4)
    features = semantic_features(logits)
    assert features.shape == (2, 4, 3, 2, 17)
    torch.testing.assert_close(features.sum(-1), torch.ones(2, 4, 3, 2))
    torch.testing.assert_close(features[0, 1, 2, 1], logits[0, 1, 2, 1, :17].softmax(0))
    with pytest.raises(ValueError, match="logits"):
        render_density(logits[..., :17], config)


def test_importing_models_does_not_load_the_extension():
    code = ("import sys, radocc.models; "
            "assert 'radocc.render' not in sys.modules and 'radocc._ext' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
