"""Vector-map models: GKT geometry, MapTR head, the three modalities of MapModel, decode, errors."""

import math

import pytest
import torch

from radocc.models import (CameraConfig, GKTConfig, GKTViewTransform, LidarConfig, MapHeadConfig,
                           MapModel, MapModelConfig, MapTRHead)
from radocc.models.gkt import GeometryKernelAttention, bev_anchors, kernel_indices, project_anchors
from radocc.map_losses import denormalize_points
from radocc.models.map_model import MapOutput
from radocc.models.maptr_head import BEVDeformableAttention, inverse_sigmoid

torch.set_num_threads(1)

PC_RANGE = (-15.0, -30.0, 15.0, 30.0)
# An OpenCV camera looking along map +y: camera x (right) -> map +x, camera y (down) -> map -z,
# camera z (forward) -> map +y.
FORWARD = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def rig(batch: int, cams: int, height: int, width: int, focal: float = 0.5):
    """Intrinsics and cam2map of ``cams`` cameras at (0, 0, 0), spread evenly in yaw (camera 0
    looks along +y); focal length ``focal * width`` pixels, principal point at the image centre."""
    intrinsics = torch.tensor([[focal * width, 0.0, (width - 1) / 2],
                               [0.0, focal * width, (height - 1) / 2],
                               [0.0, 0.0, 1.0]]).expand(batch, cams, 3, 3).clone()
    cam2map = torch.eye(4).repeat(batch, cams, 1, 1)
    for n in range(cams):
        yaw = 2 * math.pi * n / cams
        rz = torch.tensor([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0],
                           [0.0, 0.0, 1.0]])
        cam2map[:, n, :3, :3] = rz @ FORWARD
    return intrinsics, cam2map


def tiny_config(modality: str, **overrides) -> MapModelConfig:
    """BEV 20 x 10 (3 m cells), 32 channels, resnet18, 8 vectors, 2 decoder layers."""
    settings = dict(
        modality=modality, bev_shape=(20, 10), bev_channels=32,
        camera=CameraConfig(backbone="resnet18", neck_channels=32, depth_bins=(1.0, 31.0, 2.0),
                            context_channels=32),
        gkt=GKTConfig(ffn_channels=64),
        lidar=LidarConfig(voxel_size=(0.75, 0.75, 1.0), point_range=(-15, -30, -5, 15, 30, 3),
                          base_channels=8, stage_channels=(8, 16), out_channels=32, max_voxels=5000),
        head=MapHeadConfig(num_vectors=8, embed_dims=32, num_layers=2, num_heads=4, ffn_channels=64))
    settings.update(overrides)
    return MapModelConfig(**settings)


def random_points(batch: int, count: int) -> torch.Tensor:
    """[B, count, 5] points spread over the patch (z in [-2, 2]), intensity in [0, 1], lag 0."""
    scale = torch.tensor([30.0, 60.0, 4.0, 1.0, 0.0])
    return torch.rand(batch, count, 5) * scale - torch.tensor([15.0, 30.0, 2.0, 0.0, 0.0])


@pytest.mark.parametrize("modality", ["camera", "camera_dual", "fusion"])
def test_map_model_shapes_and_gradients(modality):
    torch.manual_seed(0)
    model = MapModel(tiny_config(modality))
    # Zero-initialised layers (attention weights, sampling offsets) block gradients at step 0
    # by design; perturb every parameter so the test checks the wiring, not the init.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    images = torch.rand(2, 3, 3, 64, 112)
    intrinsics, cam2map = rig(2, 3, 64, 112)
    out = model(images, intrinsics, cam2map, random_points(2, 400), torch.tensor([400, 250]))
    assert isinstance(out, MapOutput)
    assert out.bev.shape == (2, 32, 20, 10)
    if modality == "camera":
        assert out.bev_a is None and out.bev_b is None
    else:
        assert out.bev_a.shape == out.bev_b.shape == (2, 32, 20, 10)
    assert out.cls_logits.shape == (2, 2, 8, 3)
    assert out.points.shape == (2, 2, 8, 20, 2)
    assert out.query_features.shape == (2, 8, 20, 32)
    for tensor in out:
        if tensor is not None:
            assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all()
    assert ((out.points > 0) & (out.points < 1)).all()
    loss = out.cls_logits.square().mean() + out.points.mean() + out.query_features.square().mean()
    if out.bev_b is not None:  # the distillation losses read bev_a / bev_b directly
        loss = loss + out.bev_a.square().mean() + out.bev_b.square().mean()
    loss.backward()
    dead = [name for name, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not dead, dead


def test_samples_of_a_batch_do_not_mix():
    torch.manual_seed(0)
    model = MapModel(tiny_config("camera_dual")).eval()
    images = torch.rand(2, 2, 3, 64, 112)
    intrinsics, cam2map = rig(2, 2, 64, 112)
    with torch.no_grad():
        first = model(images, intrinsics, cam2map)
        images[1] = torch.rand(2, 3, 64, 112)
        cam2map[1, :, 2, 3] = 1.0
        second = model(images, intrinsics, cam2map)
    torch.testing.assert_close(first.bev[0], second.bev[0])
    torch.testing.assert_close(first.points[:, 0], second.points[:, 0])
    torch.testing.assert_close(first.cls_logits[:, 0], second.cls_logits[:, 0])
    assert not torch.allclose(first.bev_a[1], second.bev_a[1])
    assert not torch.allclose(first.bev_b[1], second.bev_b[1])


def test_lss_and_lidar_branches_only_where_asked():
    camera = MapModel(tiny_config("camera"))
    dual = MapModel(tiny_config("camera_dual"))
    fusion = MapModel(tiny_config("fusion"))
    assert camera.lss is None and camera.lidar_encoder is None and camera.fuser is None
    assert dual.lss is not None and dual.lidar_encoder is None
    assert dual.lss.bev_shape == (1, 20, 10)
    assert dual.lss.grid_lower[:2] == (-15.0, -30.0) and dual.lss.grid_upper[:2] == (15.0, 30.0)
    assert fusion.lidar_encoder is not None and fusion.lss is None
    assert fusion.lidar_encoder.bev_shape == (20, 10)


def test_lidar_point_lights_the_cell_of_its_x_and_y():
    torch.manual_seed(0)
    model = MapModel(tiny_config("fusion")).eval()
    intrinsics, cam2map = rig(1, 1, 64, 112)
    voxel = 0.75
    # A point in voxel (4 j, 4 i) of the 0.75 m grid stays in BEV cell (i, j) of the 3 m grid
    # through the two stride-2 stages (an odd voxel index would also reach the next cell).
    cells = [(3, 7), (15, 2)]  # (row i along y, column j along x)
    points = torch.zeros(1, 2, 5)
    for k, (i, j) in enumerate(cells):
        points[0, k, :3] = torch.tensor([-15 + (4 * j + 0.5) * voxel, -30 + (4 * i + 0.5) * voxel, 0.3])
        points[0, k, 3] = 1.0
    with torch.no_grad():
        out = model(torch.rand(1, 1, 3, 64, 112), intrinsics, cam2map, points, torch.tensor([2]))
    lit = out.bev_b[0].abs().sum(dim=0) > 0                                  # [H, W]
    expected = torch.zeros(20, 10, dtype=torch.bool)
    for i, j in cells:
        expected[i, j] = True
    assert torch.equal(lit, expected)


def test_lss_bev_rows_follow_y_and_columns_follow_x():
    torch.manual_seed(0)
    lss = MapModel(tiny_config("camera_dual")).lss
    intrinsics, cam2map = rig(1, 4, 64, 112)        # cameras look along +y, -x, -y, +x
    features = torch.rand(1, 1, 32, 4, 7)
    with torch.no_grad():
        ahead = lss(features, intrinsics[:, :1], cam2map[:, :1], (64, 112))[0][0].abs().sum(0)
        right = lss(features, intrinsics[:, 3:], cam2map[:, 3:], (64, 112))[0][0].abs().sum(0)
    assert ahead.shape == right.shape == (20, 10)
    assert (ahead[:10] == 0).all() and (ahead[10:] > 0).any()           # rows 10.. have y > 0
    assert (right[:, :5] == 0).all() and (right[:, 5:] > 0).any()       # columns 5.. have x > 0


def test_bev_anchors_layout():
    anchors = bev_anchors((20, 10), PC_RANGE, (-2.0, 2.0), 4)
    assert anchors.shape == (200, 4, 3)
    cell = anchors.view(20, 10, 4, 3)[3, 7]                                  # row 3, column 7
    torch.testing.assert_close(cell[:, 0], torch.full((4,), -15 + 7.5 * 3.0))
    torch.testing.assert_close(cell[:, 1], torch.full((4,), -30 + 3.5 * 3.0))
    torch.testing.assert_close(cell[:, 2], torch.tensor([-1.5, -0.5, 0.5, 1.5]))


def test_project_anchors_matches_a_pinhole_by_hand():
    intrinsics, cam2map = rig(1, 2, 64, 128)                       # camera 1 looks along -y
    cam2map[0, :, :3, 3] = torch.tensor([0.5, -1.0, 0.2])
    anchors = torch.tensor([[[3.0, 10.0, -1.0]], [[-2.0, -8.0, 0.5]], [[40.0, 5.0, 0.0]]])
    pixels, valid = project_anchors(anchors, intrinsics, cam2map, (64, 128))
    assert pixels.shape == (1, 2, 3, 1, 2) and valid.shape == (1, 2, 3, 1)
    f, cx, cy = 64.0, 63.5, 31.5
    # Camera 0 (forward): depth = y - t_y, right = x - t_x, down = -(z - t_z).
    x, y, z = 3.0 - 0.5, 10.0 + 1.0, -1.0 - 0.2
    torch.testing.assert_close(pixels[0, 0, 0, 0], torch.tensor([cx + f * x / y, cy - f * z / y]))
    # Camera 1 (backward): depth = -(y - t_y), right = -(x - t_x).
    x, y, z = -2.0 - 0.5, -8.0 + 1.0, 0.5 - 0.2
    torch.testing.assert_close(pixels[0, 1, 1, 0], torch.tensor([cx + f * x / y, cy - f * z / -y]))
    assert valid[0, :, :, 0].tolist() == [[True, False, False], [False, True, False]]  # 3rd: off image


def test_kernel_indices_round_and_clamp():
    pixels = torch.tensor([[40.0, 20.0], [0.0, 0.0], [127.0, 63.0]])       # image 64 x 128, stride 16
    index = kernel_indices(pixels, (4, 8), 16, (3, 5))
    assert index.shape == (3, 15)
    # (40.5 / 16 - 0.5, 20.5 / 16 - 0.5) = (2.03, 0.78) -> feature pixel (row 1, col 2).
    rows, cols = index[0] // 8, index[0] % 8
    assert rows.view(3, 5)[:, 0].tolist() == [0, 1, 2] and cols.view(3, 5)[0].tolist() == [0, 1, 2, 3, 4]
    assert (index[1] // 8).min() == 0 and (index[1] % 8).min() == 0          # clamped at the top left
    assert (index[2] // 8).max() == 3 and (index[2] % 8).max() == 7          # and bottom right
    assert (index[2] // 8).view(3, 5)[:, 0].tolist() == [2, 3, 3]


def expected_feature_pixel(x: float, y: float, z: float, focal: float, cx: float, cy: float,
                           stride: int) -> tuple[int, int] | None:
    """Feature pixel (row, col) of a map point seen by the forward camera at the origin."""
    if y <= 1e-5:
        return None
    u, v = cx + focal * x / y, cy - focal * z / y
    return math.floor((v + 0.5) / stride - 0.5 + 0.5), math.floor((u + 0.5) / stride - 0.5 + 0.5)


def test_gkt_cell_attends_to_the_pixel_its_anchor_projects_to():
    height, width, stride = 64, 128, 16
    h, w = height // stride, width // stride
    gkt = GKTViewTransform(8, 8, (20, 10), PC_RANGE, num_heights=1, z_range=(-1.0, 0.0),
                           kernel=(1, 1), dropout=0.0, feature_stride=stride)
    attention = gkt.layers[0].attention
    with torch.no_grad():  # value and output projections = identity, so outputs are pixel values
        attention.value_proj.weight.copy_(torch.eye(8))
        attention.output_proj.weight.copy_(torch.eye(8))
    intrinsics, cam2map = rig(1, 1, height, width)
    index, valid = gkt.sampling(intrinsics, cam2map, (height, width), (h, w))
    anchors = bev_anchors((20, 10), PC_RANGE, (-1.0, 0.0), 1)
    focal, cx, cy = 0.5 * width, (width - 1) / 2, (height - 1) / 2
    seen = 0
    for q in range(200):
        x, y, z = anchors[q, 0].tolist()
        pixel = expected_feature_pixel(x, y, z, focal, cx, cy, stride)
        inside = pixel is not None and -0.5 <= cx + focal * x / y < width - 0.5 \
            and -0.5 <= cy - focal * z / y < height - 0.5
        assert bool(valid[0, 0, q, 0]) == inside, q
        if inside:
            seen += 1
            assert index[0, 0, q, 0, 0].item() == pixel[0] * w + pixel[1], q
    assert seen > 20
    seen_cells = valid[0, 0, :, 0].view(20, 10)                          # [H rows (y), W columns (x)]
    assert not seen_cells[:10].any() and seen_cells[10:].any()             # the camera looks along +y
    # One lit feature pixel: exactly the cells whose anchor lands on it read it.
    target = (2, 5)  # every anchor lies below the horizon: rows 2 and 3
    features = torch.zeros(1, 1, 8, h, w)
    features[0, 0, :, target[0], target[1]] = torch.arange(1.0, 9.0)
    query = gkt.bev_embedding.weight[None]
    read = attention(query, features.flatten(3).transpose(2, 3), index, valid)[0]   # [Q, 8]
    reads = (read - torch.arange(1.0, 9.0)).abs().sum(-1) < 1e-4
    expected = torch.tensor([bool(valid[0, 0, q, 0]) and index[0, 0, q, 0, 0].item() == target[0] * w + target[1]
                             for q in range(200)])
    assert expected.sum() > 0
    assert torch.equal(reads, expected)
    assert (read[~expected].abs().sum(-1) < 1e-6).all()


def test_gkt_kernel_weights_and_camera_average():
    torch.manual_seed(0)
    attention = GeometryKernelAttention(4, 4, num_heads=2, kernel_points=3)
    with torch.no_grad():
        attention.value_proj.weight.copy_(torch.eye(4))
        attention.output_proj.weight.copy_(torch.eye(4))
    features = torch.randn(1, 2, 6, 4)                                     # 2 cameras, 6 pixels
    index = torch.tensor([[0, 1, 2], [3, 4, 5]]).view(1, 1, 1, 2, 3).repeat(1, 2, 1, 1, 1)
    valid = torch.tensor([[[[True, True]], [[True, False]]]])                 # camera 1 sees anchor 0
    out = attention(torch.randn(1, 1, 4), features, index, valid)[0, 0]
    # Zero-initialised weights: uniform over the kernel. Head z reads channels 2z, 2z+1.
    cam0 = torch.cat([features[0, 0, 0:3, 0:2].mean(0), features[0, 0, 3:6, 2:4].mean(0)])
    cam1 = torch.cat([features[0, 1, 0:3, 0:2].mean(0), torch.zeros(2)])
    torch.testing.assert_close(out, (cam0 + cam1) / 2)


def test_deformable_attention_reads_the_bev_at_the_reference():
    attention = BEVDeformableAttention(4, 4, num_heads=1, num_points=1, dropout=0.0)
    with torch.no_grad():
        attention.sampling_offsets.bias.zero_()                            # sample at the reference
        attention.value_proj.weight.copy_(torch.eye(4))
        attention.output_proj.weight.copy_(torch.eye(4))
    bev = torch.zeros(1, 4, 20, 10)
    bev[0, :, 3, 7] = torch.tensor([1.0, 2.0, 3.0, 4.0])                    # row 3 (y), column 7 (x)
    # Cell centre (row 3, column 7) = normalised ((7 + 0.5) / 10, (3 + 0.5) / 20).
    reference = torch.tensor([[[0.75, 0.175], [0.175, 0.75]]])
    out = attention(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), reference, bev)[0]
    torch.testing.assert_close(out[0], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(out[1], torch.zeros(4))


def test_maptr_head_refines_from_a_detached_reference():
    torch.manual_seed(0)
    head = MapTRHead(16, num_vectors=3, num_points=5, embed_dims=16, num_layers=3, num_heads=2,
                     ffn_channels=32, dropout=0.0)
    out = head(torch.randn(2, 16, 8, 4))
    assert out.cls_logits.shape == (3, 2, 3, 3) and out.points.shape == (3, 2, 3, 5, 2)
    assert out.query_features.shape == (2, 3, 5, 16)
    # Layer 2's points depend on layer 1's only through the detached reference: no gradient
    # from layer 2's points reaches layer 1's regression branch.
    out.points[2].sum().backward()
    grad = head.reg_branches[1][-1].weight.grad   # zeros: the stacked output's other slices
    assert grad is None or grad.abs().sum() == 0
    assert head.reg_branches[2][-1].weight.grad.abs().sum() > 0
    # The initial classification prior is 0.01.
    torch.testing.assert_close(head.cls_branches[0][-1].bias, torch.full((3,), math.log(0.01 / 0.99)))
    torch.testing.assert_close(inverse_sigmoid(torch.tensor([0.25, 0.0])),
                               torch.tensor([math.log(1 / 3), math.log(1e-5)]))


def test_decode_top_k_over_queries_and_classes_in_metres():
    model = MapModel(tiny_config("camera"))
    logits = torch.full((2, 2, 4, 3), -10.0)   # [L, B, N, K]; only the last layer counts
    logits[0] = torch.randn(2, 4, 3) + 5.0
    logits[1, 1, 2, 1] = 3.0        # best: query 2, class 1
    logits[1, 1, 0, 2] = 1.0        # second: query 0, class 2
    logits[1, 1, 2, 0] = 0.0        # third: query 2 again, class 0
    points = torch.rand(2, 2, 4, 20, 2)
    points[1, 1, 2, 0] = torch.tensor([0.0, 1.0])
    points[1, 1, 0, 0] = torch.tensor([0.5, 0.25])
    output = MapOutput(torch.zeros(1), None, None, logits, points, torch.zeros(1))
    first, second = model.decode(output, score_threshold=0.0, top_k=3)
    assert second.labels.tolist() == [1, 2, 0]
    torch.testing.assert_close(second.scores, torch.sigmoid(torch.tensor([3.0, 1.0, 0.0])))
    assert second.lines.shape == (3, 20, 2)
    torch.testing.assert_close(second.lines[0, 0], torch.tensor([-15.0, 30.0]))
    torch.testing.assert_close(second.lines[1, 0], torch.tensor([0.0, -15.0]))
    torch.testing.assert_close(second.lines[2], denormalize_points(points[1, 1, 2], PC_RANGE))
    assert first.lines.shape == (3, 20, 2)
    kept = model.decode(output, score_threshold=0.6, top_k=50)            # capped at N * K = 12
    assert kept[0].scores.numel() == 0 and kept[1].labels.tolist() == [1, 2]
    assert model.decode(output, top_k=50)[0].scores.numel() == 12
    with pytest.raises(ValueError, match="top_k"):
        model.decode(output, top_k=0)


def test_bad_inputs_name_the_argument():
    model = MapModel(tiny_config("fusion"))
    images = torch.rand(1, 2, 3, 64, 112)
    intrinsics, cam2map = rig(1, 2, 64, 112)
    points, count = random_points(1, 10), torch.tensor([10])
    with pytest.raises(ValueError, match="images"):
        model(images[:, :, :2], intrinsics, cam2map, points, count)
    with pytest.raises(ValueError, match="intrinsics"):
        model(images, intrinsics[:, :1], cam2map, points, count)
    with pytest.raises(ValueError, match="cam2map"):
        model(images, intrinsics, cam2map[..., :3, :], points, count)
    with pytest.raises(ValueError, match="points"):
        model(images, intrinsics, cam2map)
    with pytest.raises(ValueError, match="points"):
        model(images, intrinsics, cam2map, points[..., :4], count)
    with pytest.raises(TypeError, match="images"):
        model((images * 255).to(torch.uint8), intrinsics, cam2map, points, count)


def test_config_errors():
    with pytest.raises(ValueError, match="modality"):
        MapModelConfig(modality="lidar")
    with pytest.raises(ValueError, match="context_channels"):
        tiny_config("camera_dual", camera=CameraConfig(backbone="resnet18", neck_channels=32,
                                                       context_channels=16))
    with pytest.raises(ValueError, match="lidar.out_channels"):
        tiny_config("fusion", lidar=LidarConfig(out_channels=64))
    with pytest.raises(ValueError, match="point_range"):
        tiny_config("fusion", lidar=LidarConfig(point_range=(-20, -30, -5, 20, 30, 3), out_channels=32))
    with pytest.raises(ValueError, match="num_heights"):
        tiny_config("camera", gkt=GKTConfig(num_heights=3))
    with pytest.raises(ValueError, match="pc_range"):
        MapModelConfig(pc_range=(15, -30, -15, 30))
    config = MapModelConfig(modality="fusion", gkt={"kernel": [3, 5]}, head={"num_vectors": 50},
                            camera={"backbone": "resnet50"}, lidar={"max_voxels": 1000})
    assert config.gkt.kernel == (3, 5) and config.head.num_vectors == 50
    # TOML tables override the map defaults, not the occupancy model's.
    assert config.camera.backbone == "resnet50" and config.camera.depth_bins == (1.0, 35.0, 0.5)
    assert config.camera.context_channels == 256
    assert config.lidar.max_voxels == 1000 and config.lidar.point_range == (-15, -30, -5, 15, 30, 3)
    assert config.cell_size == (0.75, 0.75)


def test_mapdistill_scale_builds():
    config = MapModelConfig(modality="camera_dual")              # the defaults: MapDistill's student
    assert config.bev_shape == (80, 40) and config.head.num_vectors == 100
    assert config.head.num_layers == 2 and config.camera.backbone == "resnet18"
    model = MapModel(config)
    assert model.gkt.anchors.shape == (3200, 4, 3)
    assert model.lss.bev_shape == (1, 80, 40)
    teacher = MapModelConfig(modality="fusion", camera=CameraConfig(backbone="resnet50"))
    assert teacher.lidar_point_range == (-15.0, -30.0, -5.0, 15.0, 30.0, 3.0)


@pytest.mark.slow
def test_student_exports_to_onnx(tmp_path):
    """GKT (index_select), LSS (static splat) and the head (grid_sample) export; onnxruntime
    agrees with PyTorch."""
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    from radocc.export import inverse_3x3

    class Outputs(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images, intrinsics, cam2map):
            out = self.model(images, intrinsics, cam2map)
            return out.cls_logits[-1], out.points[-1], out.bev

    torch.manual_seed(0)
    module = Outputs(MapModel(tiny_config("camera_dual")).eval())
    intrinsics, cam2map = rig(2, 2, 64, 112)
    args = (torch.rand(2, 2, 3, 64, 112), intrinsics, cam2map)
    path = tmp_path / "student.onnx"
    with torch.no_grad():
        program = torch.export.export(module, args, strict=False)
        table = torch.export.default_decompositions()
        table[torch.ops.aten.linalg_inv.default] = inverse_3x3
        torch.onnx.export(program.run_decompositions(table), args, str(path), dynamo=True,
                          opset_version=18, input_names=["images", "intrinsics", "cam2map"],
                          external_data=False, verbose=False)
        expected = module(*args)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": args[0].numpy(), "intrinsics": intrinsics.numpy(),
                             "cam2map": cam2map.numpy()})
    for array, tensor in zip(got, expected):
        torch.testing.assert_close(torch.from_numpy(array), tensor, rtol=1e-4, atol=1e-4)
