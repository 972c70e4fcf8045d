"""Pictures (PNG): Occ3D class colours, depth colour maps, segment overlays, camera mosaics and
bird's-eye views, and the command line that draws a sample, a model's predictions and its renders.

    python -m radocc.viz sample --data-root DIR [--version v1.0-mini] [--split val] [--index 0]
                                [--out sample.png]     (also: python -m radocc.viz --data-root DIR)
    python -m radocc.viz COMMAND --config CFG [--checkpoint PATH] [--set key=value ...]
                         [--teacher-config CFG --teacher-checkpoint PATH] [--split val]
                         [--index I] [--device D] --out FILE.png

COMMAND (on the sample read as the config's [data] reads it for validation):
    segments     the camera images with their SAM segments overlaid
    occupancy    ground truth, teacher and student occupancy from above and in 3D [--region]
    render       rendered depth and semantics of teacher and student [--camera CAM] [--stride S]
                 [--max-depth M]
    termination  teacher and student termination distributions along one pixel's ray
                 [--camera CAM] [--pixel U V]  (RadOcc's Fig. 3)
    affinity     teacher and student segment affinity matrices of one camera image
                 [--camera CAM] [--stride S] [--max-segments K]  (RadOcc's Fig. 4)
    map          the input images and, over the 60 x 30 m BEV patch, the ground-truth, teacher,
                 baseline student and (MapDistill) student vectors (MapDistill's Fig. 4), for a
                 map config (task "map" or "multi") [--baseline-config CFG
                 --baseline-checkpoint PATH] [--score-threshold T] [--top-k K]
    (render, termination and affinity also draw the labels rendered as a model with
    --ground-truth: where the renders should stop, and what they should show)

The models: --config/--checkpoint, and the teacher --teacher-config/--teacher-checkpoint, which
default to the config's [teacher] section (a RadOcc student's config names its teacher; for
``map`` with a multi-task config, its [map_teacher]). Renders
use the config's [render] settings. The figure builders are in :mod:`radocc.pictures`, the arrays
they draw are computed in :mod:`radocc.viz_data`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from radocc.occ3d import FREE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from radocc.config import ExperimentConfig
    from radocc.viz_data import VizModel

# One RGB colour per Occ3D class, index order (the palette common in occupancy papers).
OCC3D_PALETTE = np.array([
    (0, 0, 0), (255, 120, 50), (255, 192, 203), (255, 255, 0), (0, 150, 245), (0, 255, 255),
    (200, 180, 0), (255, 0, 0), (255, 240, 150), (135, 60, 0), (160, 32, 240), (255, 0, 255),
    (139, 137, 137), (75, 0, 75), (150, 240, 80), (230, 230, 250), (0, 175, 0), (255, 255, 255),
], dtype=np.uint8)

# Camera slots of the usual 2 x 3 nuScenes mosaic: front row left to right, then back row.
MOSAIC_ORDER = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT",
                "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")

_DEPTH_STOPS = np.array([(252, 253, 191), (252, 137, 97), (183, 55, 121), (81, 18, 124),
                         (0, 0, 4)], dtype=np.float64)  # near (bright) to far (dark)


def _numpy(array) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def colorize_depth(depth, max_depth: float = 50.0) -> np.ndarray:
    """Depth [H, W] in metres -> uint8 [H, W, 3]; zero or negative depth (no hit) is black."""
    depth = _numpy(depth).astype(np.float64)
    x = np.clip(depth / max_depth, 0, 1) ** 0.5 * (len(_DEPTH_STOPS) - 1)
    low = np.floor(x).astype(int).clip(0, len(_DEPTH_STOPS) - 2)
    frac = (x - low)[..., None]
    rgb = _DEPTH_STOPS[low] * (1 - frac) + _DEPTH_STOPS[low + 1] * frac
    rgb[depth <= 0] = 0
    return rgb.round().astype(np.uint8)


def colorize_labels(labels, shade=None) -> np.ndarray:
    """Class ids [...] -> uint8 [..., 3] Occ3D colours, optionally scaled by ``shade`` in [0, 1]."""
    rgb = OCC3D_PALETTE[_numpy(labels).astype(np.int64)].astype(np.float64)
    if shade is not None:
        rgb *= np.clip(_numpy(shade), 0, 1)[..., None]
    return rgb.round().astype(np.uint8)


def camera_mosaic(images: dict[str, np.ndarray]) -> np.ndarray:
    """Six camera pictures {name: uint8 [H, W, 3]} -> one [2H, 3W, 3] picture, front row on top."""
    rows = [np.concatenate([images[name] for name in MOSAIC_ORDER[i:i + 3]], axis=1)
            for i in (0, 3)]
    return np.concatenate(rows, axis=0)


def bev_labels(semantics, free_index: int = FREE) -> np.ndarray:
    """Top-down view of an occupancy grid [X, Y, Z] (ego frame: x forward, y left, z up).

    Returns class ids [X, Y] of the highest occupied voxel of each column (free where none),
    oriented as a picture: forward is up, left is left.
    """
    semantics = _numpy(semantics)
    occupied = semantics != free_index
    top = semantics.shape[2] - 1 - np.argmax(occupied[:, :, ::-1], axis=2)
    labels = np.take_along_axis(semantics, top[..., None], axis=2)[..., 0]
    labels[~occupied.any(axis=2)] = free_index
    return labels[::-1, ::-1].copy()


def segment_colours(num_ids: int, seed: int = 0) -> np.ndarray:
    """uint8 [num_ids, 3]: a random (seeded) bright colour per segment id."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 256, size=(num_ids, 3)).astype(np.uint8)


def segment_boundaries(segments) -> np.ndarray:
    """bool [H, W]: pixels whose segment id differs from the pixel right of or below them."""
    ids = _numpy(segments)
    edge = np.zeros(ids.shape, bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    return edge


def segment_overlay(image, segments, alpha: float = 0.45, seed: int = 0) -> np.ndarray:
    """A picture uint8 [H, W, 3] with its segment ids [H, W] (0 = no segment) overlaid: each
    segment tinted with a random colour (the same id always gets the same colour for a seed),
    boundaries white, pixels without a segment left as they are."""
    image, ids = _numpy(image), _numpy(segments).astype(np.int64)
    if image.shape[:2] != ids.shape or image.ndim != 3:
        raise ValueError(f"segments must be [H, W] = {image.shape[:2]} (the image's), got {ids.shape}")
    colours = segment_colours(int(ids.max(initial=0)) + 1, seed).astype(np.float64)
    out = image.astype(np.float64)
    inside = ids > 0
    out[inside] = (1 - alpha) * out[inside] + alpha * colours[ids[inside]]
    out[segment_boundaries(ids)] = 255
    return out.round().astype(np.uint8)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Writes a uint8 [H, W, 3] (or [H, W]) array as PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path)
    return path


def bev_points(points, size: int = 600, extent: float = 40.0,
               background: np.ndarray | None = None) -> np.ndarray:
    """LiDAR points [P, >=3] (ego frame, metres) seen from above as uint8 [size, size, 3]:
    forward is up, left is left, colour by height; drawn over ``background`` if given."""
    points = _numpy(points)
    image = np.zeros((size, size, 3), np.uint8) if background is None else background.copy()
    scale = size / (2 * extent)
    rows = ((extent - points[:, 0]) * scale).astype(int)
    cols = ((extent - points[:, 1]) * scale).astype(int)
    keep = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    height = np.clip((points[keep, 2] + 1.0) / 4.0, 0, 1)  # -1 m .. 3 m
    colour = np.stack([255 * height, 255 * (1 - height), np.full_like(height, 255)], -1)
    image[rows[keep], cols[keep]] = colour.astype(np.uint8)
    return image


def sample_overview(item: dict, cameras: tuple[str, ...]) -> np.ndarray:
    """One dataset item (see radocc.data.NuScenesOccDataset) as a picture: the 2 x 3 camera
    mosaic on top; below, the occupancy from above and the LiDAR points over a dimmed copy."""
    images = (_numpy(item["images"]).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
    mosaic = camera_mosaic(dict(zip(cameras, images)))
    bev = colorize_labels(bev_labels(item["semantics"]))
    side = mosaic.shape[1] // 2
    bev = np.asarray(Image.fromarray(bev).resize((side, side), Image.NEAREST))
    lidar = bev_points(item["points"], size=side, background=(bev * 0.35).astype(np.uint8))
    return np.concatenate([mosaic, np.concatenate([bev, lidar], axis=1)], axis=0)


def _images_uint8(batch: dict) -> np.ndarray:
    """[N, H, W, 3] uint8 camera pictures of a batched sample (B = 1)."""
    return (_numpy(batch["images"][0]).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def _sample_title(batch: dict, split: str, index: int) -> str:
    return f"{batch['scene_name'][0]}, {split} sample {index} ({batch['sample_token'][0][:8]})"


def _cmd_sample(args: argparse.Namespace) -> Path:
    from radocc.data import DatasetConfig, NuScenesOccDataset

    config = DatasetConfig(image_size=(args.height, args.width), load_segments=False)
    dataset = NuScenesOccDataset(args.data_root, args.version, args.split, config)
    if not 0 <= args.index < len(dataset):
        raise IndexError(f"--index must be in [0, {len(dataset)}) for split {args.split!r}")
    return save_png(args.out, sample_overview(dataset[args.index], config.cameras))


def _cmd_segments(args: argparse.Namespace, config: ExperimentConfig, batch: dict[str, Any],
                   models: list[VizModel]) -> Figure:
    from radocc.pictures import segments_figure
    from radocc.viz_data import camera_names

    names, images = camera_names(batch), _images_uint8(batch)
    segments = _numpy(batch["segments"][0])
    return segments_figure(dict(zip(names, images)), dict(zip(names, segments)),
                           f"segments over the cameras: {_sample_title(batch, args.split, args.index)}")


def _cmd_occupancy(args: argparse.Namespace, config: ExperimentConfig, batch: dict[str, Any],
                    models: list[VizModel]) -> Figure:
    from radocc.pictures import occupancy_figure
    from radocc.viz_data import predict

    free = config.model.num_classes - 1
    mask = _numpy(batch["mask_camera"][0]) if args.region == "camera" else None

    def region(semantics: np.ndarray) -> np.ndarray:
        return semantics if mask is None else np.where(mask, semantics, free)

    panels = [("ground truth", region(_numpy(batch["semantics"][0])))]
    panels += [(m.label, region(_numpy(predict(m, batch)[0].argmax(-1)))) for m in models]
    where = "camera-visible voxels" if mask is not None else "all voxels"
    return occupancy_figure(panels, lower=config.model.grid_lower, upper=config.model.grid_upper,
                            free=free, title=f"occupancy ({where}): "
                                             f"{_sample_title(batch, args.split, args.index)}")


def _sources(args: argparse.Namespace, config: ExperimentConfig, batch: dict[str, Any],
             models: list[VizModel]) -> list[tuple[str, torch.Tensor]]:
    """(label, voxel logits [1, X, Y, Z, K]) to render: the labels first with --ground-truth,
    then each model's prediction (calibrated as its config says, radocc.train.render_logits)."""
    from radocc.train import render_logits
    from radocc.viz_data import ground_truth_logits, predict

    sources = [(m.label, render_logits(predict(m, batch), m.config)) for m in models]
    if args.ground_truth:
        device = sources[0][1].device if sources else torch.device(args.device)
        labels = ground_truth_logits(batch["semantics"], config.model.num_classes).to(device)
        sources.insert(0, ("ground truth (labels rendered)", labels))
    if not sources:
        raise ValueError(f"{args.command} needs --checkpoint (a model to draw) or --ground-truth")
    return sources


def _cmd_render(args: argparse.Namespace, config: ExperimentConfig, batch: dict[str, Any],
                models: list[VizModel]) -> Figure:
    from radocc.pictures import render_figure
    from radocc.viz_data import camera_index, camera_names, render_cameras

    names = camera_names(batch)
    cameras = [camera_index(batch, args.camera)] if args.camera else list(range(len(names)))
    renders = [(label, render_cameras(config, logits, batch, cameras, args.stride)._asdict())
               for label, logits in _sources(args, config, batch, models)]
    images = _images_uint8(batch)
    return render_figure({names[c]: images[c] for c in cameras}, renders, max_depth=args.max_depth,
                         title=f"rendered depth and semantics (pixel stride {args.stride}): "
                               f"{_sample_title(batch, args.split, args.index)}")


def _cmd_termination(args: argparse.Namespace, config: ExperimentConfig, batch: dict[str, Any],
                     models: list[VizModel]) -> Figure:
    from radocc.pictures import termination_figure
    from radocc.viz_data import (camera_index, camera_names, lidar_depth_at, lidar_pixel_near,
                                 ray_termination)

    camera = camera_index(batch, args.camera)
    height, width = batch["images"].shape[-2:]
    centre = ((width - 1) / 2, (height - 1) / 2)
    pixel = tuple(args.pixel) if args.pixel else (lidar_pixel_near(batch, camera, centre) or centre)
    if not (0 <= pixel[0] <= width - 1 and 0 <= pixel[1] <= height - 1):
        raise ValueError(f"--pixel must lie in the {width} x {height} image (u in [0, {width - 1}], "
                         f"v in [0, {height - 1}]), got {pixel}")
    distributions = []
    for label, logits in _sources(args, config, batch, models):
        edges, probs = ray_termination(config, logits, batch, camera, pixel)
        distributions.append((label, probs))
    return termination_figure(_images_uint8(batch)[camera], pixel, edges, distributions,
                              lidar_depth=lidar_depth_at(batch, camera, pixel),
                              camera=camera_names(batch)[camera])


def _cmd_affinity(args: argparse.Namespace, config: ExperimentConfig, batch: dict[str, Any],
                  models: list[VizModel]) -> Figure:
    from radocc.losses import rsc_loss
    from radocc.pictures import affinity_figure
    from radocc.viz_data import camera_affinity, camera_index, camera_names

    camera = camera_index(batch, args.camera)
    sources = _sources(args, config, batch, models)
    # (affinity of the largest segments, features [1, R, C] and segment ids [1, R] of all rays)
    results = [camera_affinity(config, logits, batch, camera, args.stride, args.max_segments)
               for _, logits in sources]
    rsc = None
    if len(results) >= 2:  # RSC from the second-to-last (teacher) to the last (student)
        (_, t_features, ray_ids), (_, s_features, _) = results[-2:]
        rsc = float(rsc_loss(s_features, t_features, ray_ids, mode="affinity"))
    ids = results[0][0].ids
    name = camera_names(batch)[camera]
    return affinity_figure(_images_uint8(batch)[camera], _numpy(batch["segments"][0, camera]),
                           [(label, r[0].matrix) for (label, _), r in zip(sources, results)],
                           ids, rsc=rsc, camera=name,
                           title=f"segment affinity of rendered semantics, {name} (pixel stride "
                                 f"{args.stride}, the {len(ids)} segments with the most rays): "
                                 f"{_sample_title(batch, args.split, args.index)}")


def _cmd_map(args: argparse.Namespace, config: ExperimentConfig, batch: dict[str, Any],
             models: list[VizModel]) -> Figure:
    from radocc.pictures import map_figure
    from radocc.viz_data import camera_names, ground_truth_vectors, load_viz_model, predict_vectors

    if bool(args.baseline_config) != bool(args.baseline_checkpoint):
        raise ValueError("--baseline-config and --baseline-checkpoint go together")
    if not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    *teacher, student = models if args.checkpoint else [*models, None]
    labelled = [(m, m.label) for m in teacher]
    if args.baseline_config:
        baseline = load_viz_model(args.baseline_config, args.baseline_checkpoint,
                                  torch.device(args.device), "baseline")
        labelled.append((baseline, f"baseline {baseline.label}"))
    if student is not None:
        distils = bool(student.config.map_loss.distill_weights())
        labelled.append((student, f"MapDistill {student.label}" if distils else student.label))
    truth = ground_truth_vectors(batch)
    panels = [(f"ground truth\n{len(truth.labels)} vectors", truth.lines, truth.labels)]
    for model, label in labelled:
        v = predict_vectors(model, batch, args.score_threshold, args.top_k)
        order = np.argsort(v.scores, kind="stable")  # ascending: the surest drawn on top
        shown = (f"top {len(v.labels)}" if len(v.labels) == args.top_k else f"{len(v.labels)} vectors")
        low = f", lowest {v.scores.min():.2f}" if len(v.scores) else ""
        panels.append((f"{label.replace(' (', chr(10) + '(', 1)}\n{shown}, score \u2265 {args.score_threshold:.2f}{low}",
                       [v.lines[i] for i in order], v.labels[order]))
    if len(panels) == 1:
        raise ValueError("map needs a model to draw: --checkpoint, a teacher, or --baseline-*")
    names, images = camera_names(batch), _images_uint8(batch)
    return map_figure(dict(zip(names, images)), panels, pc_range=config.map_model.pc_range,
                      title=f"vector maps (divider / ped_crossing / boundary): "
                            f"{_sample_title(batch, args.split, args.index)}")


# subcommand -> (drawing function, needs segments, help)
_COMMANDS = {
    "segments": (_cmd_segments, True, "the camera images with their SAM segments overlaid"),
    "occupancy": (_cmd_occupancy, False,
                  "ground truth / teacher / student occupancy from above and in 3D"),
    "render": (_cmd_render, False, "rendered depth and semantics of teacher and student"),
    "termination": (_cmd_termination, False,
                    "termination distributions of teacher and student along one pixel's ray"),
    "affinity": (_cmd_affinity, True,
                 "segment affinity matrices of teacher and student for one camera image"),
    "map": (_cmd_map, False, "input images and ground-truth / teacher / baseline / MapDistill "
                             "vectors over the BEV patch"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m radocc.viz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sample = sub.add_parser("sample", help="one sample: cameras, occupancy from above, LiDAR")
    sample.add_argument("--data-root", required=True, help="nuScenes-layout dataset root")
    sample.add_argument("--version", default="v1.0-mini")
    sample.add_argument("--split", default="val")
    sample.add_argument("--index", type=int, default=0, help="sample index within the split")
    sample.add_argument("--height", type=int, default=225, help="camera picture height, pixels")
    sample.add_argument("--width", type=int, default=400, help="camera picture width, pixels")
    sample.add_argument("--out", default="outputs/sample.png")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True,
                        help="experiment config (.toml): its [data] reads the sample, its [model] "
                             "builds the model, its [render] renders")
    common.add_argument("--checkpoint", help="the config's trained model (e.g. runs/<name>/best.pt)")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (e.g. data.root=...)")
    common.add_argument("--teacher-config",
                        help="the teacher's config (default: the config's [teacher] config)")
    common.add_argument("--teacher-checkpoint",
                        help="the teacher's checkpoint (default: the config's [teacher] checkpoint, "
                             "if it names one)")
    common.add_argument("--split", default="val")
    common.add_argument("--index", type=int, default=0, help="sample index within the split")
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the models run (default: cuda when available)")
    common.add_argument("--out", required=True, help="the PNG to write")
    cameras = argparse.ArgumentParser(add_help=False)
    cameras.add_argument("--stride", type=int, default=2, help="render every stride-th pixel")
    for name, (_, _, text) in _COMMANDS.items():
        parents = [common] + ([cameras] if name in ("render", "affinity") else [])
        command = sub.add_parser(name, parents=parents, help=text, description=text)
        if name == "occupancy":
            command.add_argument("--region", choices=("camera", "all"), default="camera",
                                 help="draw the camera-visible voxels (mask_camera, the mIoU "
                                      "region) or all voxels")
        if name == "render":
            command.add_argument("--camera", help="one camera (default: all)")
            command.add_argument("--max-depth", type=float, default=50.0, help="depth colour scale, m")
        if name in ("termination", "affinity"):
            command.add_argument("--camera", default="CAM_FRONT", help="default: CAM_FRONT")
        if name in ("render", "termination", "affinity"):
            command.add_argument("--ground-truth", action="store_true",
                                 help="also render the labels (as a model certain of them)")
        if name == "termination":
            command.add_argument("--pixel", type=float, nargs=2, metavar=("U", "V"),
                                 help="pixel of the ray (default: where the LiDAR return nearest "
                                      "the image centre projects; the centre without LiDAR)")
        if name == "affinity":
            command.add_argument("--max-segments", type=int, default=40,
                                 help="show the segments with the most rays (0: all)")
        if name == "map":
            command.add_argument("--baseline-config", help="the baseline student's config")
            command.add_argument("--baseline-checkpoint", help="the baseline student's checkpoint")
            command.add_argument("--score-threshold", type=float, default=0.3,
                                 help="draw the predicted vectors scoring at least this (of "
                                      "MapTR's top 50; default 0.3)")
            command.add_argument("--top-k", type=int, default=50,
                                 help="draw at most the K highest-scoring vectors of each model "
                                      "(default 50, MapTR's NMS-free top 50)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help",):
        argv = ["sample", *argv]  # the original form: python -m radocc.viz --data-root DIR ...
    parser = _parser()
    args = parser.parse_args(argv)
    from radocc.config import ConfigError, load_config
    from radocc.data import DataError

    try:
        if args.command == "sample":
            path = _cmd_sample(args)
        else:
            draw, needs_segments, _ = _COMMANDS[args.command]
            if getattr(args, "stride", 1) < 1:
                raise ValueError(f"--stride must be >= 1, got {args.stride}")
            config = load_config(args.config, args.set)
            if args.command == "map" and config.task not in ("map", "multi"):  # before any data
                raise ValueError(f"map draws vector maps: --config must be a map config (task "
                                 f"'map' or 'multi'), got task {config.task!r} ({args.config})")
            from radocc.pictures import save_figure
            from radocc.viz_data import load_models, load_sample

            batch = load_sample(config, args.split, args.index, segments=needs_segments,
                                vectors=args.command == "map")
            teacher = (args.teacher_config, args.teacher_checkpoint)
            if args.command == "map" and config.task == "multi":  # its [teacher] is for occupancy
                teacher = (args.teacher_config or config.map_teacher.config or None,
                           args.teacher_checkpoint or config.map_teacher.checkpoint or None)
                config = dataclasses.replace(config, teacher=type(config.teacher)())
            models = [] if args.command == "segments" else load_models(
                config, args.checkpoint, *teacher, torch.device(args.device))
            path = save_figure(draw(args, config, batch, models), args.out)
    except (ConfigError, DataError, FileNotFoundError, IndexError, ValueError) as exc:
        print(f"radocc.viz: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
