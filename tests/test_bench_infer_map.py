"""python -m radocc.bench infer on vector-map configs (MapDistill teacher and student) and on the
multi-task student (with its occupancy and map teachers): tiny random models, CPU."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test_map_train import write_map_config
from tiny import write_tiny_config

torch.set_num_threads(1)


def _checkpoint(config: Path, path: Path) -> Path:
    """A random model of the config saved as a checkpoint (what the timing loads)."""
    from radocc.checkpoint import save_checkpoint
    from radocc.config import load_config
    from radocc.evaluate import build_task_model

    torch.manual_seed(0)
    save_checkpoint(path, {"model": build_task_model(load_config(config)).state_dict()})
    return path


def _bench(*args) -> int:
    from radocc.bench import main

    return main(["infer", *[str(a) for a in args]])


def test_to_map_frame_puts_the_lidar_at_the_origin_looking_along_y():
    from radocc.bench_infer import frame_inputs, to_map_frame
    from radocc.config import load_config
    from radocc.data.geometry import make_transform
    from radocc.data.rig import LIDAR

    config = load_config(Path(__file__).parents[1] / "configs" / "synthetic" / "map_teacher.toml")
    inputs = to_map_frame(frame_inputs(config.map_model, (32, 64), 6, torch.device("cpu")))
    ego2map = inputs["ego2map"][0].double().numpy()
    lidar = make_transform(LIDAR.rotation, LIDAR.translation)
    np.testing.assert_allclose(ego2map @ lidar[:, 3], [0, 0, 0, 1], atol=1e-5)
    forward = ego2map[:3, :3] @ np.array([1.0, 0.0, 0.0])  # ego x (forward) -> map y
    np.testing.assert_allclose(forward, [0, 1, 0], atol=0.03)  # the LiDAR tilts ~1.4 deg
    torch.testing.assert_close(inputs["cam2map"], inputs["ego2map"][:, None] @ inputs["cam2ego"])
    points, moved = inputs["points"][0], inputs["map_points"][0]
    expected = points[:, :3].double() @ torch.from_numpy(ego2map[:3, :3]).T + torch.from_numpy(ego2map[:3, 3])
    torch.testing.assert_close(moved[:, :3].double(), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(moved[:, 3:], points[:, 3:])  # intensity and time kept


def test_bench_infer_times_map_teacher_and_student(synthetic_root, tmp_path, capsys):
    teacher = write_map_config(tmp_path / "map_teacher.toml", synthetic_root, role="teacher")
    teacher_pt = _checkpoint(teacher, tmp_path / "map_teacher.pt")
    student = write_map_config(tmp_path / "map_student.toml", synthetic_root,
                               teacher=(teacher, teacher_pt),
                               distill="feature_bev = 1.0\nfeature_decoder = 0.0\nrelation = 0.0")
    student_pt = _checkpoint(student, tmp_path / "map_student.pt")
    args = [student, "--checkpoint", student_pt, "--warmup", "1", "--repeats", "2"]
    assert _bench(*args, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "map" and result["bev_shape"] == [20, 10] and result["cameras"] == 2
    assert [(m["role"], m["task"], m["modality"]) for m in result["models"]] == [
        ("teacher", "map", "fusion"), ("student", "map", "camera_dual")]
    assert [m["weights"] for m in result["models"]] == [str(teacher_pt), str(student_pt)]
    for m in result["models"]:
        assert 0 < m["ms_min"] <= m["ms_per_frame"] <= m["ms_max"]
        assert m["frames_per_second"] == pytest.approx(1000 / m["ms_per_frame"])
    assert _bench(*args) == 0
    table = capsys.readouterr().out
    assert "map BEV 20x10" in table and "grid" not in table.split("\n")[1]
    assert "camera_dual" in table and "frames/s" in table
    # the teacher's checkpoint does not fit the student: named, not a crash
    assert _bench(student, "--checkpoint", teacher_pt, "--repeats", "1") == 2
    assert "student checkpoint" in capsys.readouterr().err


def test_bench_infer_times_the_multitask_student_and_both_teachers(synthetic_root, tmp_path, capsys):
    occupancy = write_tiny_config(tmp_path / "occ_teacher.toml", role="teacher", scale="small",
                                  root=synthetic_root, channels=16)
    map_teacher = write_map_config(tmp_path / "map_teacher.toml", synthetic_root, role="teacher")
    multitask = Path(__file__).parents[1] / "configs" / "synthetic" / "multitask.toml"
    sets = [f'teacher.config="{occupancy}"', f'teacher.checkpoint="{tmp_path / "none.pt"}"',
            f'map_teacher.config="{map_teacher}"', f'map_teacher.checkpoint="{tmp_path / "none.pt"}"',
            "data.image_size=[32, 64]", 'data.cameras=["CAM_FRONT"]',
            "model.grid_lower=[-8.0, -8.0, -1.0]", "model.grid_upper=[8.0, 8.0, 3.0]",
            "model.grid_shape=[16, 16, 4]", "model.camera.depth_bins=[1.0, 9.0, 2.0]",
            "model.camera.neck_channels=16", "model.camera.context_channels=8",
            "model.bev_encoder.channels=[8, 16, 16]", "model.bev_encoder.out_channels=16",
            "model.head.hidden_channels=16", "map_model.bev_channels=16",
            "map_model.bev_shape=[20, 10]", "map_model.head.num_vectors=8",
            "map_model.head.embed_dims=16", "map_model.head.ffn_channels=32"]
    assert _bench(multitask, "--warmup", "0", "--repeats", "1", "--json",
                  *[a for s in sets for a in ("--set", s)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(m["role"], m["task"], m["modality"], m["weights"]) for m in result["models"]] == [
        ("teacher", "occupancy", "fusion", "random"), ("map_teacher", "map", "fusion", "random"),
        ("student", "multi", "camera", "random")]
    assert all(m["ms_per_frame"] > 0 for m in result["models"])
