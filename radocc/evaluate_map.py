"""Vector-map evaluation (task "map" / "multi"): MapTR's Chamfer-distance AP of a model's decoded
vectors against each validation sample's ground-truth lines.

``python -m radocc.evaluate CONFIG --checkpoint PATH [--json]`` runs :func:`evaluate_map_model`
for a map config and prints :func:`format_map_report` (or the JSON). Predictions are
``model.decode(output)`` (MapTR's NMS-free top 50 over queries x classes, metres, map frame);
ground truth is the item's ``map_lines`` (the original clipped geometry) and ``map_labels``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from radocc.config import ExperimentConfig
from radocc.data import MAP_CLASSES
from radocc.metrics import ChamferMapAP

__all__ = ["MAP_THRESHOLDS", "evaluate_map_model", "evaluate_multitask_model", "format_map_report"]

MAP_THRESHOLDS = (0.5, 1.0, 1.5)
"""Chamfer distance thresholds, metres (MapTR)."""


@torch.no_grad()
def evaluate_map_model(model: torch.nn.Module, loader, config: ExperimentConfig, device: torch.device,
                       *, progress: bool = True,
                       forward: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """Chamfer AP of ``model`` over ``loader`` (a radocc.train loader of a map config).

    Args:
        model: a :class:`~radocc.models.MapModel` (or any module with its ``decode``).
        loader: batches with the vector ground truth (``map_lines``, ``map_labels``).
        forward: batch (on ``device``) -> MapOutput; default: the MapModel on map-frame inputs
            (:func:`radocc.map_train.map_frame_inputs`).
    Returns:
        {"mAP": percent, "AP": {class: {threshold: percent}}, "num_samples", "protocols"}.
    """
    from radocc.map_train import map_frame_inputs
    from radocc.train import to_device

    def default_forward(batch: dict[str, Any]):
        cam2map, points = map_frame_inputs(batch)
        lidar = (points, batch["num_points"]) if model.config.modality == "fusion" else (None, None)
        return model(batch["images"], batch["intrinsics"], cam2map, *lidar)

    forward = forward or default_forward
    model.eval()
    metric = ChamferMapAP(MAP_CLASSES, MAP_THRESHOLDS)
    count = 0
    for batch in tqdm(loader, desc="evaluate map", unit="sample", disable=not progress):
        batch = to_device(batch, device)
        for pred, lines, labels in zip(model.decode(forward(batch)), batch["map_lines"], batch["map_labels"]):
            metric.update(pred.lines.float().cpu().numpy(), pred.scores.float().cpu().numpy(),
                          pred.labels.cpu().numpy(), lines, labels.cpu().numpy())
            count += 1
    result: dict[str, Any] = metric.compute()
    total = torch.tensor(count)
    if dist.is_initialized():
        dist.all_reduce(total)
    result["num_samples"] = int(total)
    result["protocols"] = {
        "mAP": "MapTR Chamfer AP: top 50 predictions per sample, 100-point arc-length "
               "resampling, flat-cap 2 m buffers, thresholds 0.5 / 1.0 / 1.5 m, VOC area AP, "
               "mean over 3 classes x 3 thresholds (percent)",
    }
    return result


def format_map_report(result: dict[str, Any]) -> str:
    """The AP table (classes x thresholds, percent) and the mAP line, as text."""
    ap = result["AP"]
    names = list(ap)
    thresholds = list(next(iter(ap.values())))
    width = max(len(n) for n in names) + 2
    head = f"{'class':<{width}}" + "".join(f"{f'AP@{t:g}m':>10}" for t in thresholds) + f"{'mean':>10}"
    lines = [head, "-" * len(head)]
    for name in names:
        values = [ap[name][t] for t in thresholds]
        lines.append(f"{name:<{width}}" + "".join(f"{v:>10.2f}" for v in values)
                     + f"{sum(values) / len(values):>10.2f}")
    lines.append("-" * len(head))
    lines.append(f"mAP (MapTR Chamfer AP, {' / '.join(f'{t:g}' for t in thresholds)} m)  {result['mAP']:.2f}")
    if "mIoU" in result:
        lines.append(f"mIoU (occupancy head, camera mask)      {result['mIoU']:.2f}")
    lines.append(f"({result['num_samples']} samples)")
    return "\n".join(lines)


@torch.no_grad()
def evaluate_multitask_model(model: torch.nn.Module, loader, config: ExperimentConfig,
                             device: torch.device, *, progress: bool = True,
                             save_predictions: str | None = None) -> dict[str, Any]:
    """A multi-task student (:class:`radocc.multitask.MultiTaskModel`): the map head's Chamfer AP
    (:func:`evaluate_map_model`) plus the occupancy head's Occ3D mIoU and rendered depth
    (:func:`radocc.evaluate.evaluate_model`, without RayIoU) under "occupancy"; "mIoU" is copied
    to the top level. ``save_predictions``: a folder for the occupancy head's voxels (as
    ``python -m radocc.evaluate --save-predictions``)."""
    from radocc.evaluate import evaluate_model

    occupancy = evaluate_model(model.occupancy, loader, config, device, progress=progress,
                               rayiou=False, save_predictions=save_predictions)
    result = evaluate_map_model(model, loader, config, device, progress=progress, forward=lambda b: model(
        b["images"], b["intrinsics"], b["cam2ego"], b["ego2map"])[1])
    result["mIoU"] = occupancy["mIoU"]
    result["occupancy"] = {k: v for k, v in occupancy.items() if k != "protocols"}
    result["protocols"].update(occupancy["protocols"])
    return result
