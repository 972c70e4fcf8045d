"""The tiny experiment config the CPU tests train, draw, run and export (``from tiny import ...``:
pytest puts tests/ on sys.path, as it has no __init__.py).

Two scales: "occ3d", the 200 x 200 x 16 Occ3D grid (80 x 80 x 6.4 m, the synthetic dataset's
scenes) with 96 x 160 images, and "small", a 16 x 16 x 4 grid of 1 m voxels with 32 x 64 images, for
tests that need no dataset. The LiDAR branch covers the grid's box.
"""

import json
from pathlib import Path

SCALES = {
    "occ3d": {"image_size": [96, 160], "grid_lower": [-40.0, -40.0, -1.0],
              "grid_upper": [40.0, 40.0, 5.4], "grid_shape": [200, 200, 16],
              "depth_bins": [1.0, 41.0, 4.0], "lidar_voxel_size": [0.8, 0.8, 0.8]},
    "small": {"image_size": [32, 64], "grid_lower": [-8.0, -8.0, -1.0],
              "grid_upper": [8.0, 8.0, 3.0], "grid_shape": [16, 16, 4],
              "depth_bins": [1.0, 9.0, 2.0], "lidar_voxel_size": [1.0, 1.0, 1.0]},
}


def write_tiny_config(path: Path, *, role: str = "student", scale: str = "small",
                      root: str | Path | None = None, cameras: tuple[str, ...] = (), seed: int = 0,
                      channels: int = 8, neck: int = 16, bev_z_bins: int = 1,
                      teacher: tuple[Path, Path] | None = None, loss: str = "rdc = 0.0\nrsc = 0.0",
                      extra: str = "") -> Path:
    """Write a tiny config to ``path`` (named ``path.stem``) and return ``path``.

    role: "teacher" (a camera + LiDAR model) or "student" (camera only). root: a dataset root
    (v1.0-mini, batch 1, no loader workers), or None for none. cameras: the cameras to load (empty:
    all six). channels: the width of the fusion, LiDAR, BEV and head layers; neck: the camera
    neck's. teacher: the (config, checkpoint) a student distils from. loss: the [loss] table's
    body. extra: more tables, appended as they are.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    s = SCALES[scale]
    data = (f'root = {json.dumps(str(root))}\nversion = "v1.0-mini"\nbatch_size = 1\nnum_workers = 0\n'
            if root else "")
    if cameras:
        data += f"cameras = {json.dumps(list(cameras))}\n"
    teacher_table = (f"[teacher]\nconfig = {json.dumps(str(teacher[0]))}\n"
                     f"checkpoint = {json.dumps(str(teacher[1]))}\n" if teacher else "")
    modality = "fusion" if role == "teacher" else "camera"
    path.write_text(f"""
name = "{path.stem}"
role = "{role}"
seed = {seed}

[data]
image_size = {s["image_size"]}
{data}
[model]
modality = "{modality}"
grid_lower = {s["grid_lower"]}
grid_upper = {s["grid_upper"]}
grid_shape = {s["grid_shape"]}
fusion_channels = {channels}

[model.camera]
backbone = "resnet18"
neck_channels = {neck}
depth_bins = {s["depth_bins"]}
context_channels = 8
bev_z_bins = {bev_z_bins}

[model.lidar]
voxel_size = {s["lidar_voxel_size"]}
point_range = {s["grid_lower"] + s["grid_upper"]}
base_channels = 8
stage_channels = [{channels}]
out_channels = {channels}

[model.bev_encoder]
channels = [8, {channels}, {channels}]
out_channels = {channels}

[model.head]
hidden_channels = {channels}

{teacher_table}
[loss]
{loss}

{extra}
""")
    return path
