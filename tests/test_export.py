"""radocc.export: the student as ONNX, checked against PyTorch with onnxruntime; the export-friendly
LSS pooling (static shapes) against BEVPoolv2's sparse form; the exported 3 x 3 inverse.

One tiny model (16 x 16 x 4 grid, 32 x 64 images, 2 cameras) is exported once per module.
"""

import contextlib
import io
from pathlib import Path

import pytest
import torch

from radocc.checkpoint import save_checkpoint
from radocc.config import load_config
from radocc.export import example_inputs, export_onnx, inverse_3x3, main, onnx_parity, ring_rig
from radocc.models import build_model
from radocc.models.lss import bev_pool, splat, voxel_cells, voxel_ranks

from tiny import write_tiny_config

torch.set_num_threads(1)

def write_config(path: Path, role: str = "student") -> Path:
    return write_tiny_config(path, role=role, bev_z_bins=2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny student exported once, through the command line (with its parity check)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("export")
    config = write_config(folder / "student.toml")
    torch.manual_seed(0)
    model = build_model(load_config(config).model).eval()
    # Non-trivial BatchNorm statistics, so the exported eval-mode normalisation is exercised.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    checkpoint = folder / "student.pt"
    save_checkpoint(checkpoint, {"model": model.state_dict()})
    path = folder / "student.onnx"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        code = main([str(config), "--checkpoint", str(checkpoint), "--out", str(path),
                     "--cameras", "2"])
    return {"folder": folder, "config": config, "checkpoint": checkpoint, "model": model,
            "path": path, "code": code, "stdout": text.getvalue()}


def test_cli_exports_and_checks(exported):
    assert exported["code"] == 0 and exported["path"].is_file()
    text = exported["stdout"]
    assert "wrote" in text and "max |logit difference|" in text
    assert "argmax agreement 100.0000 %" in text


def test_onnx_file_signature(exported):
    import onnx

    proto = onnx.load(str(exported["path"]))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in proto.graph.input}
    assert list(inputs) == ["images", "intrinsics", "cam2ego"]
    assert inputs["images"][2:] == [3, 32, 64] and inputs["intrinsics"][2:] == [3, 3]
    assert all(isinstance(dims[0], str) and isinstance(dims[1], str) for dims in inputs.values())
    (output,) = proto.graph.output
    assert output.name == "logits"
    assert [d.dim_value for d in output.type.tensor_type.shape.dim][1:] == [16, 16, 4, 18]


@pytest.mark.parametrize("batch, cameras", [(1, 2), (2, 3), (1, 1)])
def test_onnxruntime_matches_pytorch(exported, batch, cameras):
    parity = onnx_parity(exported["model"], exported["path"], (32, 64), cameras, batch)
    print(f"ONNX parity B={batch} N={cameras}: {parity}")
    assert parity["max_abs_logit"] > 0.1  # the comparison is not between near-zero outputs
    assert parity["max_abs_diff"] < 1e-4
    assert parity["argmax_agreement"] == 1.0


def test_cli_refuses_a_teacher_and_bad_arguments(exported, tmp_path, capsys):
    teacher = write_config(tmp_path / "teacher.toml", role="teacher")
    assert main([str(teacher), "--checkpoint", str(exported["checkpoint"]),
                 "--out", str(tmp_path / "t.onnx")]) == 2
    err = capsys.readouterr().err
    assert "camera + LiDAR model" in err and "needs LiDAR points" in err and "radocc.export" in err
    assert not (tmp_path / "t.onnx").exists()
    with pytest.raises(SystemExit):
        main([str(exported["config"]), "--checkpoint", str(exported["checkpoint"]), "--opset", "16"])
    assert "--opset must be >= 17" in capsys.readouterr().err
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export_onnx(exported["model"], tmp_path / "x.onnx", (32, 64), opset=13)


def test_splat_equals_bev_pool_and_drops_points_outside():
    """The model's static-shape pooling gives BEVPoolv2's sums, bit for bit on the CPU."""
    torch.manual_seed(0)
    batch, cams, depth_bins, h, w, channels = 2, 3, 4, 2, 3, 5
    lower, upper, shape = (-2.0, -2.0, -1.0), (2.0, 2.0, 1.0), (2, 4, 4)
    points = torch.rand(batch, cams, depth_bins, h, w, 3) * 5.0 - 2.5  # some outside the box
    depth = torch.rand(batch, cams, depth_bins, h, w)
    context = torch.randn(batch, cams, h, w, channels)
    cells = voxel_cells(points, lower, upper, shape)
    assert cells.shape == (batch * cams * depth_bins * h * w,)
    outside = cells == batch * 2 * 4 * 4
    assert 0 < outside.sum() < cells.numel()
    ranks = voxel_ranks(points, lower, upper, shape)
    torch.testing.assert_close(ranks.ranks_depth, (~outside).nonzero().squeeze(1), rtol=0, atol=0)
    torch.testing.assert_close(splat(depth, context, cells, shape),
                               bev_pool(depth, context, ranks, shape), rtol=0, atol=0)


def test_inverse_3x3_matches_linalg_inv():
    intrinsics, cam2ego = ring_rig(4, (32, 64))
    matrices = torch.cat([intrinsics, cam2ego[:, :3, :3], torch.randn(8, 3, 3, dtype=torch.float64)
                          .float()])
    torch.testing.assert_close(inverse_3x3(matrices), torch.linalg.inv(matrices), rtol=1e-4, atol=1e-5)


def test_example_rig_looks_outwards():
    intrinsics, cam2ego = ring_rig(4, (32, 64))
    forward = cam2ego[:, :3, 2]  # the camera's z axis in the ego frame
    torch.testing.assert_close(forward, torch.tensor([[1.0, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(cam2ego[:, :3, :3]), torch.ones(4))
    images, k, t = example_inputs(2, 4, (32, 64))
    assert images.shape == (2, 4, 3, 32, 64) and k.shape == (2, 4, 3, 3) and t.shape == (2, 4, 4, 4)
