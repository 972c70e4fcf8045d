"""``python -m radocc.bench infer CONFIG``: inference speed of a config's teacher and student.

Times the forward pass (``torch.inference_mode``, batch 1, float32) of the config's model and, for
a student config with a ``[teacher]``, of its teacher, on the current device after warm-up runs;
for any task: an occupancy model, a vector-map model (``task = "map"``: the MapDistill teacher or
a camera student, given cam2map and map-frame points as in training) or a multi-task student
(``task = "multi"``, timed with its occupancy teacher ``[teacher]`` and map teacher
``[map_teacher]``);
reports the median of the timed runs as ms per frame and frames/s. Inputs are synthetic but of the
real sizes: random images of ``data.image_size`` from the nuScenes rig (six cameras, or the count
``data.cameras`` names) and, for a camera + LiDAR model, one nuScenes-like LiDAR sweep (32 beams x
1085 azimuths hitting the ground or an obstacle 3-60 m away, about 34,700 points). The cost does not
depend on the weights: the config's model loads ``--checkpoint`` when given (checked against the
model) and is random otherwise; the teacher loads its ``teacher.checkpoint`` when that file exists.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Sequence

import numpy as np
import torch

from radocc.checkpoint import load_checkpoint, load_into
from radocc.config import ExperimentConfig, load_config
from radocc.models import MapModelConfig, ModelConfig, build_map_model, build_model

__all__ = ["frame_inputs", "to_map_frame", "time_model", "bench_infer", "print_infer"]

LIDAR_AZIMUTHS = 1085  # x 32 beams = 34,720 points, one nuScenes sweep


def frame_inputs(config: ModelConfig | MapModelConfig, image_size: tuple[int, int], num_cameras: int,
                 device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """One frame (batch 1) of model inputs on ``device``.

    Returns:
        {"images" [1, N, 3, H, W], "intrinsics" [1, N, 3, 3], "cam2ego" [1, N, 4, 4]} and for a
        fusion model also "points" [1, P, 5] (x, y, z metres ego frame, intensity, 0) and
        "num_points" [1].
    """
    from radocc.data.geometry import make_transform
    from radocc.data.rig import LIDAR, camera_matrices, lidar_beam_directions

    rng = np.random.default_rng(seed)
    intrinsics, cam2ego = camera_matrices(image_size)
    index = np.arange(num_cameras) % len(intrinsics)  # more cameras than the rig's six: repeat
    inputs = {
        "images": torch.from_numpy(rng.random((1, num_cameras, 3, *image_size), np.float32)),
        "intrinsics": torch.from_numpy(intrinsics[index]).float()[None],
        "cam2ego": torch.from_numpy(cam2ego[index]).float()[None],
    }
    if config.modality == "fusion":
        directions, _ = lidar_beam_directions(LIDAR_AZIMUTHS)
        lidar2ego = make_transform(LIDAR.rotation, LIDAR.translation)
        rays = directions @ lidar2ego[:3, :3].T                       # ego frame
        origin = lidar2ego[:3, 3]
        ground = np.where(rays[:, 2] < -1e-6, -origin[2] / np.minimum(rays[:, 2], -1e-6), np.inf)
        distance = np.minimum(ground, rng.uniform(3.0, 60.0, len(rays)))
        xyz = origin + rays * distance[:, None]
        points = np.concatenate([xyz, rng.random((len(xyz), 1)), np.zeros((len(xyz), 1))], axis=1)
        inputs["points"] = torch.from_numpy(points).float()[None]
        inputs["num_points"] = torch.tensor([len(points)])
    return {k: v.to(device) for k, v in inputs.items()}


def to_map_frame(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`frame_inputs` in the vector-map frame of the rig's LiDAR (MapTR's frame: x right,
    y forward; :func:`radocc.data.vectors.ego_to_map`), as the map models are fed in training.

    Returns:
        the inputs plus "ego2map" [1, 4, 4], "cam2map" [1, N, 4, 4] = ego2map @ cam2ego and, when
        there are "points", "map_points" [1, P, 5]: them in the map frame (intensity, time kept).
    """
    from radocc.data.geometry import make_transform
    from radocc.data.rig import LIDAR
    from radocc.data.vectors import ego_to_map

    cam2ego = inputs["cam2ego"]
    lidar2ego = make_transform(LIDAR.rotation, LIDAR.translation)
    ego2map = torch.from_numpy(ego_to_map(lidar2ego)).float().to(cam2ego.device)[None]
    out = dict(inputs, ego2map=ego2map, cam2map=ego2map[:, None] @ cam2ego)
    if "points" in inputs:
        points = inputs["points"]
        xyz = points[..., :3] @ ego2map[:, :3, :3].transpose(1, 2) + ego2map[:, None, :3, 3]
        out["map_points"] = torch.cat([xyz, points[..., 3:]], dim=-1)
    return out


def _arguments(task: str, modality: str, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The forward arguments of a model of ``task`` from :func:`to_map_frame`'s inputs."""
    points = inputs.get("map_points" if task == "map" else "points")
    lidar = [points, inputs["num_points"]] if modality == "fusion" else []
    if task == "multi":
        return [inputs["images"], inputs["intrinsics"], inputs["cam2ego"], inputs["ego2map"]]
    pose = inputs["cam2map"] if task == "map" else inputs["cam2ego"]
    return [inputs["images"], inputs["intrinsics"], pose, *lidar]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_model(model: torch.nn.Module, inputs: dict[str, torch.Tensor] | Sequence[torch.Tensor],
               warmup: int = 3, repeats: int = 10) -> list[float]:
    """Seconds of each of ``repeats`` forward passes after ``warmup`` untimed ones.

    ``inputs``: an occupancy model's :func:`frame_inputs`, or the positional arguments of any
    model's forward (e.g. a map model's images, intrinsics, cam2map).
    """
    if isinstance(inputs, dict):
        args = [inputs["images"], inputs["intrinsics"], inputs["cam2ego"]]
        args += [inputs["points"], inputs["num_points"]] if "points" in inputs else []
    else:
        args = list(inputs)
    device = args[0].device
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        tic = time.perf_counter()
        model(*args)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    return times


def _weights(model: torch.nn.Module, checkpoint: str | None, what: str) -> str:
    if not checkpoint:
        return "random"
    state = load_checkpoint(checkpoint)
    load_into(model, state.get("ema") or state["model"], f"{what} checkpoint {checkpoint}")
    return checkpoint


def bench_infer(config_path: str, checkpoint: str | None = None, device: str = "cpu",
                warmup: int = 3, repeats: int = 10, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Median inference time of the config's model (and its teacher), batch 1.

    Returns:
        {"config", "device", "threads", "image_size", "cameras", "warmup", "repeats",
        "models": [{"role", "modality", "weights", "parameters", "ms_per_frame",
        "frames_per_second", "ms_min", "ms_max"}, ...]} (the teacher first when there is one).
    Raises:
        ValueError: a bad device, warmup or repeats; the errors of ``load_config`` and of
            checkpoint loading.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda': no CUDA device is available")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1, got {warmup} and {repeats}")
    config = load_config(config_path, overrides)
    dev = torch.device(device)
    cameras = len(config.data.cameras) or 6
    models = []
    for role, task, model_config, weights in _models(config, checkpoint):
        model = _build(task, model_config)
        source = _weights(model, weights, role)
        model = model.to(dev).eval()
        modality = (model_config[0] if task == "multi" else model_config).modality
        inputs = to_map_frame(frame_inputs(model_config[0] if task == "multi" else model_config,
                                           config.data.image_size, cameras, dev))
        ms = [1000 * t for t in time_model(model, _arguments(task, modality, inputs), warmup, repeats)]
        median = statistics.median(ms)
        models.append({"role": role, "task": task, "modality": modality, "weights": source,
                       "parameters": sum(p.numel() for p in model.parameters()),
                       "ms_per_frame": median, "frames_per_second": 1000 / median,
                       "ms_min": min(ms), "ms_max": max(ms)})
        del model, inputs
    return {"config": config_path, "overrides": list(overrides), "task": config.task,
            "device": "cpu" if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "threads": torch.get_num_threads(), "image_size": list(config.data.image_size),
            "cameras": cameras, "grid_shape": list(config.model.grid_shape),
            "bev_shape": list(config.map_model.bev_shape),
            "warmup": warmup, "repeats": repeats, "models": models}


def _models(config: ExperimentConfig, checkpoint: str | None) -> list[tuple[str, str, Any, str | None]]:
    """(role, task, model config, weights or None) of the models to time, teachers first. A
    teacher loads its checkpoint when the file exists. Model config: ModelConfig (occupancy),
    MapModelConfig (map), or (ModelConfig, MapModelConfig) (multi)."""
    def teacher(role: str, section) -> tuple[str, str, Any, str | None]:
        full = load_config(section.config)
        weights = section.checkpoint if os.path.isfile(section.checkpoint) else None
        if full.task == "map":
            return role, "map", full.map_model, weights
        return role, "occupancy", full.model, weights

    runs = []
    if config.teacher.config:
        runs.append(teacher("teacher", config.teacher))
    if config.task == "multi" and config.map_teacher.config:
        runs.append(teacher("map_teacher", config.map_teacher))
    model_config = {"occupancy": config.model, "map": config.map_model,
                    "multi": (config.model, config.map_model)}[config.task]
    runs.append((config.role, config.task, model_config, checkpoint))
    return runs


def _build(task: str, model_config: Any) -> torch.nn.Module:
    if task == "map":
        return build_map_model(model_config)
    if task == "multi":
        from radocc.multitask import MultiTaskModel

        return MultiTaskModel(*model_config)
    return build_model(model_config)


def print_infer(result: dict[str, Any]) -> None:
    """The result of :func:`bench_infer` as a table."""
    h, w = result["image_size"]
    tasks = {m["task"] for m in result["models"]}
    grids = []
    if tasks & {"occupancy", "multi"}:
        grids.append(f"grid {'x'.join(map(str, result['grid_shape']))}")
    if tasks & {"map", "multi"}:
        grids.append(f"map BEV {'x'.join(map(str, result['bev_shape']))}")
    print(f"config: {result['config']} {' '.join(result['overrides'])}".rstrip())
    print(f"device: {result['device']} ({result['threads']} threads); batch 1, {result['cameras']} "
          f"cameras {h}x{w}, {', '.join(grids)}; median of "
          f"{result['repeats']} runs after {result['warmup']} warm-up, float32")
    print(f"{'model':12} {'task':9} {'modality':11} {'params':>9} {'ms/frame':>10} {'frames/s':>9} "
          f"{'min ms':>8} {'max ms':>8}  weights")
    for m in result["models"]:
        print(f"{m['role']:12} {m['task']:9} {m['modality']:11} {m['parameters'] / 1e6:8.2f}M "
              f"{m['ms_per_frame']:10.1f} {m['frames_per_second']:9.2f} {m['ms_min']:8.1f} "
              f"{m['ms_max']:8.1f}  {m['weights']}")
