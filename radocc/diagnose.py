"""Why an occupancy model scores what it scores: five checks of a trained model on a split.

    python -m radocc.diagnose CONFIG.toml --checkpoint PATH [--split val] [--tolerance 1.0]
                              [--json] [--set key=value ...]

- ``voxels``: per class, over the camera-visible voxels (``mask_camera``), the ground-truth
  voxels, the predicted voxels and the hits, so precision and recall: a low IoU from a class
  predicted 6x too often (smeared along the camera rays) reads differently from one never predicted.
- ``termination``: the model's voxels rendered along the render rays (the pixels where LiDAR
  points project, as RDC renders them) against each ray's LiDAR return: the termination mass
  within ``tolerance`` metres of the return, the mass that never terminates, and the rendered
  depth's AbsRel; for the logits as the config renders them (``render.calibrated``) and raw. This
  is the geometry RDC hands from a teacher to a student.
- ``semantics``: the model's rendered semantics along the same rays against the labels rendered
  along them (:func:`radocc.viz_data.ground_truth_logits`), on the rays that hit a labelled voxel:
  the share whose rendered class is the labels' (all, ground classes, objects, per class), and,
  when the data root has segments, RSC's affinity loss from the labels to the model (mean
  |A_model - A_labels| over segment pairs): what RSC asks of a student is the teacher's affinity,
  this says how close that and the student's are to the truth.
- ``lss_depth`` (models with a camera branch): the expected depth of the LSS depth distribution
  of each stride-16 feature pixel against the nearest LiDAR depth in its patch (camera z,
  metres): AbsRel, and for scale the AbsRel of one constant guess (the median LiDAR depth).
- ``images``: mIoU (camera mask) with the real images, with every image replaced by its mean
  colour, and with each camera given its neighbour's image: how much of the score comes from
  what the cameras see rather than from where classes usually are.

Returns / prints one JSON-able dict; percentages are percent, depths metres.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from radocc.config import ConfigError, ExperimentConfig, load_config
from radocc.data import DataError
from radocc.metrics import OccupancyMIoU

__all__ = ["IMAGE_MODES", "GROUND_CLASSES", "diagnose_model", "format_diagnosis", "main"]

IMAGE_MODES = ("real", "mean_colour", "neighbour_camera")
"""The image inputs of the ``images`` check."""

GROUND_CLASSES = ("driveable_surface", "other_flat", "sidewalk", "terrain")
"""The ground of the ``semantics`` check; every other labelled class is an object."""


def _images(images: Tensor, mode: str) -> Tensor:
    """[B, N, 3, H, W] -> the same images, or each one's mean colour, or camera n's image at n+1."""
    if mode == "mean_colour":
        return images.mean(dim=(-2, -1), keepdim=True).expand_as(images).contiguous()
    if mode == "neighbour_camera":
        return images.roll(1, dims=1)
    return images


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else 100.0 * num / den


@torch.no_grad()
def diagnose_model(model: torch.nn.Module, loader, config: ExperimentConfig, device: torch.device,
                   *, tolerance: float = 1.0, progress: bool = True) -> dict[str, Any]:
    """The five checks (module docstring) of an occupancy ``model`` over ``loader``.

    Args:
        model: a radocc OccupancyModel (camera or fusion), eval mode.
        loader: a radocc.train render-target loader whose items carry ``depth_target`` when the
            model has a camera branch (:func:`main` switches them on).
        config: the config the model was trained with (grid, class weights, render bins).
        tolerance: metres either side of the LiDAR return that count as "at the surface".
    Returns:
        {"voxels": {class: {"gt", "pred", "hits", "precision", "recall"}}, "termination":
        {"rendered" | "raw": {"mass_at_lidar", "never_terminated", "depth_abs_rel"}},
        "semantics": {"rays", "right", "ground", "objects" (percent), "per_class": {class:
        {"rays", "right"}}, "rsc_to_labels" (None without segments)},
        "lss_depth": {"abs_rel", "median_guess_abs_rel", "pixels"} or None, "images":
        {mode: mIoU}, "num_samples"}.
    """
    from radocc.losses import rsc_loss
    from radocc.train import build_render_loss, render_logits, to_device
    from radocc.viz_data import ground_truth_logits

    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0 metres, got {tolerance!r}")
    fusion = config.model.modality == "fusion"
    renderer = build_render_loss(config).to(device)
    centres = ((renderer.edges[:-1] + renderer.edges[1:]) / 2).to(device)
    bins = torch.arange(*config.model.camera.depth_bins, dtype=torch.float64).float().to(device)
    ious = {mode: OccupancyMIoU() for mode in IMAGE_MODES}
    rays: dict[str, list[Tensor]] = {"rendered": [], "raw": []}
    lss_err, lss_depth = [], []
    truths, saids, rsc_to_labels = [], [], []
    count = 0
    for batch in tqdm(loader, desc="diagnose", unit="sample", disable=not progress):
        batch = to_device(batch, device)
        lidar = (batch["points"], batch["num_points"]) if fusion else (None, None)
        for mode in IMAGE_MODES:
            out = model(_images(batch["images"], mode), batch["intrinsics"], batch["cam2ego"], *lidar)
            ious[mode].update(out.logits.argmax(-1), batch["semantics"], batch["mask_camera"])
            if mode != "real":
                continue
            origins, directions, _ = renderer.rays(batch["intrinsics"], batch["cam2ego"],
                                                   pixels=batch["ray_pixels"])
            gt = batch["ray_depth"].flatten(1)
            ray_ok = batch["ray_valid"].flatten(1)
            valid = ray_ok & (gt > 0)
            logits = out.logits.float()
            renders = {}
            for name, rendered_logits in (("rendered", render_logits(logits, config)), ("raw", logits)):
                r = renderer.render(rendered_logits, origins, directions, termination=True,
                                    features=name == "rendered")  # the semantics check's too
                renders[name] = r
                near = (centres.view(1, 1, -1) - gt[..., None]).abs() <= tolerance
                at_lidar = (r.termination[..., :-1] * near).sum(-1)
                rays[name].append(torch.stack([at_lidar[valid], r.termination[..., -1][valid],
                                               ((r.depth - gt).abs() / gt)[valid]], dim=1))
            labels = ground_truth_logits(batch["semantics"], logits.shape[-1])
            truth = renderer.render(labels, origins, directions, termination=False, features=True)
            said = renders["rendered"]
            hit = ray_ok & (truth.opacity > 0.5)
            truths.append(truth.features.argmax(-1)[hit])
            saids.append(said.features.argmax(-1)[hit])
            if "ray_segments" in batch:
                rsc_to_labels.append(float(rsc_loss(said.features, truth.features,
                                                     batch["ray_segments"].flatten(1), valid=ray_ok)))
            if out.depth is not None and "depth_target" in batch:
                target = batch["depth_target"]                                # [B, N, h, w]
                expected = (out.depth * bins.view(1, 1, -1, 1, 1)).sum(2)
                has = target > 0
                lss_err.append((expected[has] - target[has]).abs() / target[has])
                lss_depth.append(target[has])
        count += len(batch["sample_token"])
    confusion = ious["real"].confusion          # rows ground truth, columns prediction
    voxels = {}
    for k, name in enumerate(ious["real"].class_names):
        gt, pred, hits = (int(confusion[k].sum()), int(confusion[:, k].sum()), int(confusion[k, k]))
        voxels[name] = {"gt": gt, "pred": pred, "hits": hits,
                            "precision": _ratio(hits, pred), "recall": _ratio(hits, gt)}
    termination = {}
    for name, parts in rays.items():
        values = torch.cat(parts) if parts else torch.zeros(0, 3)
        mean = values.mean(0).tolist() if len(values) else [None] * 3
        termination[name] = {"mass_at_lidar": mean[0], "never_terminated": mean[1],
                             "depth_abs_rel": mean[2], "rays": len(values)}
    semantics = _semantics(torch.cat(truths) if truths else torch.zeros(0, dtype=torch.long),
                           torch.cat(saids) if saids else torch.zeros(0, dtype=torch.long),
                           ious["real"].class_names)
    semantics["rsc_to_labels"] = (sum(rsc_to_labels) / len(rsc_to_labels)) if rsc_to_labels else None
    lss = None
    if lss_err:
        err, depth = torch.cat(lss_err), torch.cat(lss_depth)
        lss = {"abs_rel": float(err.mean()), "median_guess_abs_rel":
               float(((depth - depth.median()).abs() / depth).mean()), "pixels": int(err.numel())}
    return {"voxels": voxels, "termination": termination, "semantics": semantics, "lss_depth": lss,
            "images": {mode: iou.compute()["mIoU"] for mode, iou in ious.items()},
            "num_samples": count, "tolerance_m": tolerance}


def _semantics(truth: Tensor, said: Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """Rendered class ``said`` [M] against the labels' ``truth`` [M] (class indices) of M rays."""
    truth, said = truth.cpu(), said.cpu()
    right = truth == said

    def share(rays: Tensor) -> float | None:
        return _ratio(float(right[rays].sum()), float(rays.sum()))

    ground = torch.isin(truth, torch.tensor([class_names.index(c) for c in GROUND_CLASSES]))
    per_class = {name: {"rays": int((truth == k).sum()), "right": share(truth == k)}
                 for k, name in enumerate(class_names) if bool((truth == k).any())}
    return {"rays": len(truth), "right": share(torch.ones_like(right)), "ground": share(ground),
            "objects": share(~ground), "per_class": per_class}


def format_diagnosis(result: dict[str, Any]) -> str:
    """A plain-text report of :func:`diagnose_model`'s result."""
    pct = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [f"{result['num_samples']} samples", "",
             "camera-visible voxels: ground truth / predicted / hits, precision / recall (%)"]
    for name, v in result["voxels"].items():
        if v["gt"] or v["pred"]:
            lines.append(f"  {name:22s} {v['gt']:9d} {v['pred']:9d} {v['hits']:9d}  "
                         f"{pct(v['precision']):>5s} / {pct(v['recall']):>5s}")
    lines += ["", f"rendered termination along the LiDAR rays (mass within {result['tolerance_m']} m "
                  "of the return / never terminated / rendered depth AbsRel)"]
    for name, t in result["termination"].items():
        if t["rays"]:
            lines.append(f"  {name:9s} {t['mass_at_lidar']:.3f} / {t['never_terminated']:.3f} / "
                         f"{t['depth_abs_rel']:.3f}  ({t['rays']} rays)")
    sem = result["semantics"]
    if sem["rays"]:
        lines += ["", f"rendered class along the LiDAR rays = the labels' rendered class: "
                      f"{pct(sem['right'])} % of {sem['rays']} rays (ground {pct(sem['ground'])} %, "
                      f"objects {pct(sem['objects'])} %)"]
        lines += [f"  {name:22s} {pct(v['right']):>5s} % of {v['rays']}"
                  for name, v in sem["per_class"].items()]
        if sem["rsc_to_labels"] is not None:
            lines.append("  RSC (affinity) from the labels' segment affinities: "
                         f"{sem['rsc_to_labels']:.3f}")
    if result["lss_depth"]:
        d = result["lss_depth"]
        lines += ["", f"LSS depth vs LiDAR: AbsRel {d['abs_rel']:.3f} (one constant guess, the median: "
                      f"{d['median_guess_abs_rel']:.3f}; {d['pixels']} feature pixels)"]
    lines += ["", "mIoU (camera mask, %) by image input: " + ", ".join(
        f"{mode} {value:.2f}" for mode, value in result["images"].items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from radocc.checkpoint import CheckpointError
    from radocc.evaluate import _jsonable, add_model_arguments, load_model
    from radocc.train import TrainingError, build_dataset, build_loader

    parser = argparse.ArgumentParser(prog="python -m radocc.diagnose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, "e.g. runs/<name>/last.pt")
    parser.add_argument("--split", help="the split to check (default: the config's data.val_split)")
    parser.add_argument("--tolerance", type=float, default=1.0,
                        help="metres either side of the LiDAR return that count (default 1)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.set)
        if config.task != "occupancy":
            raise ConfigError(f"radocc.diagnose checks occupancy models; the config is task {config.task!r}")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(config, args.checkpoint, device)
        dataset = build_dataset(config, args.split or config.data.val_split, train=False)
        dataset.depth_targets = True          # the LSS depth check's LiDAR targets
        loader = build_loader(dataset, config, 0, 1, train=False)
        result = diagnose_model(model, loader, config, device, tolerance=args.tolerance,
                                progress=not args.no_progress)
    except (ConfigError, DataError, TrainingError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"radocc.diagnose: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(_jsonable(result), indent=2) if args.json else format_diagnosis(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
