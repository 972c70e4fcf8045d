"""Evaluate a trained occupancy (or vector-map) model on the validation split.

    python -m radocc.evaluate CONFIG.toml --checkpoint PATH [--save-predictions DIR] [--json]
                              [--set key=value ...] [--no-rayiou]

A config with ``task = "map"`` reports MapTR's Chamfer AP instead (mAP and AP per class x
threshold 0.5 / 1.0 / 1.5 m, percent; :mod:`radocc.evaluate_map`); ``task = "multi"`` reports both
(AP and Occ3D mIoU).

Reports, each labelled with its protocol:
- Occ3D mIoU per class over camera-visible voxels (``mask_camera``: the Occ3D-nuScenes benchmark),
  and over all voxels (no mask);
- RayIoU per class at 1 / 2 / 4 m (SparseOcc: LiDAR-origin rays, no mask);
- rendered depth against LiDAR (the model's voxels rendered along rays through the pixels where
  LiDAR points project; depth along the ray, metres).
Saved predictions are ``DIR/<sample_token>.npz`` (key ``semantics``, uint8 [200, 200, 16]), the files
``python -m radocc.evaluate_occ`` scores. Under torchrun every rank evaluates its share and the
metrics are summed over ranks.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from radocc.checkpoint import CheckpointError, load_checkpoint, load_into
from radocc.config import ConfigError, ExperimentConfig, load_config
from radocc.data import DataError
from radocc.metrics import DepthMetrics, OccupancyMIoU, RayIoU
from radocc.models import OccupancyModel, build_model

__all__ = ["evaluate_model", "scene_lidar_origins", "format_report", "build_task_model", "load_model",
           "add_model_arguments", "main"]


def scene_lidar_origins(records: list[dict]) -> dict[str, np.ndarray]:
    """Sample token -> [M, 3] the LiDAR origins of the key frames of its scene, in its ego frame
    (RayIoU's ray origins)."""
    by_scene: dict[str, list[np.ndarray]] = {}
    for rec in records:
        origin = np.asarray(rec["ego2global"]) @ np.asarray(rec["lidar2ego"])[:, 3]
        by_scene.setdefault(rec["scene_token"], []).append(origin)
    out = {}
    for rec in records:
        world = np.stack(by_scene[rec["scene_token"]])  # [M, 4] homogeneous, global frame
        out[rec["sample_token"]] = (world @ np.linalg.inv(np.asarray(rec["ego2global"])).T)[:, :3]
    return out


@torch.no_grad()
def evaluate_model(model: OccupancyModel, loader, config: ExperimentConfig, device: torch.device,
                   *, progress: bool = True, rayiou: bool = True,
                   save_predictions: str | Path | None = None) -> dict[str, Any]:
    """Occ3D mIoU (camera mask and none), RayIoU and rendered-depth metrics of ``model`` over
    ``loader`` (a radocc.train render-target loader; batches of 1 or more).

    Returns ``{"mIoU", "IoU", "mIoU_no_mask", "IoU_no_mask", "RayIoU", "RayIoU@1", ...,
    "depth": {...}, "num_samples", "protocols": {...}}``; mIoU values are percent.
    """
    from radocc.train import build_render_loss, render_logits, to_device

    model.eval()
    miou, miou_all = OccupancyMIoU(), OccupancyMIoU(use_camera_mask=False)
    depth = DepthMetrics()
    rays = RayIoU() if rayiou else None
    origins = scene_lidar_origins(loader.dataset.base.records) if rayiou else {}
    if save_predictions:
        Path(save_predictions).mkdir(parents=True, exist_ok=True)
    fusion = config.model.modality == "fusion"
    renderer = build_render_loss(config).to(device)
    count = 0
    for batch in tqdm(loader, desc="evaluate", unit="sample", disable=not progress):
        batch = to_device(batch, device)
        lidar = (batch["points"], batch["num_points"]) if fusion else (None, None)
        out = model(batch["images"], batch["intrinsics"], batch["cam2ego"], *lidar)
        logits = out.logits.float()
        pred = logits.argmax(-1)
        for b, token in enumerate(batch["sample_token"]):
            miou.update(pred[b], batch["semantics"][b], batch["mask_camera"][b])
            miou_all.update(pred[b], batch["semantics"][b])
            if rays is not None:
                rays.update(pred[b], batch["semantics"][b], origins[token])
            if save_predictions:
                np.savez_compressed(Path(save_predictions) / f"{token}.npz",
                                    semantics=pred[b].to(torch.uint8).cpu().numpy())
        ray_origins, directions, _ = renderer.rays(batch["intrinsics"], batch["cam2ego"],
                                                   pixels=batch["ray_pixels"])
        rendered = renderer.render(render_logits(logits, config), ray_origins, directions,
                                   termination=False, features=False)
        valid = (batch["ray_valid"] & (batch["ray_depth"] > 0)).flatten(1)
        depth.update(rendered.depth[valid], batch["ray_depth"].flatten(1)[valid])
        count += len(batch["sample_token"])
    result: dict[str, Any] = {}
    cam, full = miou.compute(), miou_all.compute()
    result.update(mIoU=cam["mIoU"], IoU=cam["IoU"], mIoU_no_mask=full["mIoU"], IoU_no_mask=full["IoU"])
    if rays is not None:
        result.update(rays.compute())
    try:
        result["depth"] = depth.compute()
    except ValueError:
        result["depth"] = {}
    total = torch.tensor(count)
    if dist.is_initialized():
        dist.all_reduce(total)
    result["num_samples"] = int(total)
    result["protocols"] = {
        "mIoU": "Occ3D-nuScenes: voxels with mask_camera, classes 0-16, one confusion matrix",
        "mIoU_no_mask": "Occ3D classes 0-16 over every voxel (no visibility mask)",
        "RayIoU": "SparseOcc: rays from the scene's LiDAR origins, exit depth of the first "
                  "occupied voxel, thresholds 1/2/4 m, no mask",
        "depth": "volume-rendered depth along rays through LiDAR pixels vs the LiDAR range, metres",
    }
    return result


def format_report(result: dict[str, Any]) -> str:
    """The per-class tables and the summary lines, as text."""
    def fmt(v: float) -> str:
        return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    names = list(result["IoU"])
    width = max(len(n) for n in names) + 2
    ray_cols = [k for k in ("IoU@1", "IoU@2", "IoU@4") if k in result]
    head = f"{'class':<{width}}{'IoU cam':>9}{'IoU all':>9}" + "".join(f"{'Ray' + k[3:]:>9}" for k in ray_cols)
    lines = [head, "-" * len(head)]
    for n in names:
        lines.append(f"{n:<{width}}{fmt(result['IoU'][n]):>9}{fmt(result['IoU_no_mask'][n]):>9}"
                     + "".join(f"{fmt(result[k][n]):>9}" for k in ray_cols))
    lines.append("-" * len(head))
    lines.append(f"mIoU (camera mask, Occ3D protocol)  {fmt(result['mIoU'])}")
    lines.append(f"mIoU (no mask)                      {fmt(result['mIoU_no_mask'])}")
    if "RayIoU" in result:
        lines.append(f"RayIoU (SparseOcc, 1/2/4 m)         {fmt(result['RayIoU'])}  ("
                     + ", ".join(fmt(result[f'RayIoU@{t}']) for t in (1, 2, 4)) + ")")
    if result.get("depth"):
        d = result["depth"]
        lines.append(f"rendered depth vs LiDAR             AbsRel {d['abs_rel']:.3f}  RMSE "
                     f"{d['rmse']:.2f} m  delta1 {d['delta1']:.3f}")
    lines.append(f"({result['num_samples']} samples)")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def build_task_model(config: ExperimentConfig) -> torch.nn.Module:
    """The model the config's task trains: OccupancyModel, MapModel or MultiTaskModel."""
    if config.task == "map":
        from radocc.models import build_map_model

        return build_map_model(config.map_model)
    if config.task == "multi":
        from radocc.multitask import MultiTaskModel

        return MultiTaskModel(config.model, config.map_model)
    return build_model(config.model)


def load_model(config: ExperimentConfig, checkpoint: str | Path, device: torch.device) -> torch.nn.Module:
    """The config's model with the checkpoint's weights (its EMA weights when it has them)."""
    model = build_task_model(config)
    state = load_checkpoint(checkpoint)
    trained = (state.get("config") or {}).get("task", "occupancy")
    if trained != config.task:
        raise CheckpointError(f"checkpoint {checkpoint} was written by a task {trained!r} run, but "
                              f"the config is task {config.task!r}")
    load_into(model, state.get("ema") or state["model"], f"checkpoint {checkpoint}")
    return model.to(device).eval()


def add_model_arguments(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """The arguments of a command that loads one trained model: config, --checkpoint, --json,
    --set and --no-progress (python -m radocc.evaluate, python -m radocc.diagnose)."""
    parser.add_argument("config", help="the experiment config the model was trained with")
    parser.add_argument("--checkpoint", required=True, help=checkpoint_help)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (e.g. data.root=...)")
    parser.add_argument("--no-progress", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    from radocc.evaluate_map import evaluate_map_model, evaluate_multitask_model, format_map_report
    from radocc.train import TrainingError, _distributed, build_dataset, build_loader

    parser = argparse.ArgumentParser(prog="python -m radocc.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, "e.g. runs/<name>/best.pt")
    parser.add_argument("--save-predictions", metavar="DIR",
                        help="write <sample_token>.npz predictions (for python -m radocc.evaluate_occ)")
    parser.add_argument("--no-rayiou", action="store_true", help="skip RayIoU (the slowest metric)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.set)
        if args.save_predictions and config.task == "map":
            raise ConfigError("--save-predictions writes occupancy voxels; a task 'map' model has none")
        rank, world, local_rank = _distributed()
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        model = load_model(config, args.checkpoint, device)
        dataset = build_dataset(config, config.data.val_split, train=False, segments=False)
        loader = build_loader(dataset, config, rank, world, train=False)
        progress = not args.no_progress and rank == 0
        if config.task == "map":
            result = evaluate_map_model(model, loader, config, device, progress=progress)
        elif config.task == "multi":
            result = evaluate_multitask_model(model, loader, config, device, progress=progress,
                                              save_predictions=args.save_predictions)
        else:
            result = evaluate_model(model, loader, config, device, progress=progress,
                                    rayiou=not args.no_rayiou, save_predictions=args.save_predictions)
    except (ConfigError, DataError, TrainingError, FileNotFoundError, ValueError) as exc:
        print(f"radocc.evaluate: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        report = format_report if config.task == "occupancy" else format_map_report
        print(json.dumps(_jsonable(result), indent=2) if args.json else report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
