"""What the pictures of :mod:`radocc.viz` show, as arrays: one sample, the models' voxel
predictions, and their renders through the sample's cameras (depth, semantics, one ray's
termination distribution, segment affinities); the vector-map models' decoded vectors.

Renders use the project's renderer configured as in training (``radocc.train.build_render_loss``:
the config's grid, depth bins, step and chunking), so a picture shows what RDC and RSC compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from radocc.config import ExperimentConfig, load_config
from radocc.models import OccupancyModel
from radocc.rays import lookup_pixels, pixel_grid

__all__ = ["VizModel", "load_sample", "load_models", "load_viz_model", "camera_names", "camera_index",
           "predict", "ground_truth_logits", "MapVectorsView", "ground_truth_vectors", "predict_vectors",
           "CameraRenders", "render_cameras", "ray_termination", "lidar_depth_at",
           "CameraAffinity", "camera_affinity"]


class VizModel(NamedTuple):
    """A trained model and what to call it in a picture."""

    label: str
    """e.g. ``"teacher (synthetic-teacher)"``."""
    config: ExperimentConfig
    model: OccupancyModel


def load_sample(config: ExperimentConfig, split: str, index: int, *,
                segments: bool = False, vectors: bool = False) -> dict[str, Any]:
    """Sample ``index`` of ``split`` read as the config's data section reads it for validation
    (its image size and cameras, no augmentation), batched (B = 1, see ``radocc.data.collate``).

    ``segments``: also load the SAM segment maps (``segments`` [1, N, H, W] int64); the data root
    must hold them (``python -m radocc.segments``). ``vectors``: also the vector-map ground truth
    and ``ego2map`` (``radocc.data.vectors``; the root must hold the map expansion). Raises
    IndexError for a bad index.
    """
    from radocc.data import DatasetConfig, NuScenesOccDataset, collate
    from radocc.data.rig import CAMERA_NAMES

    d = config.data
    dataset = NuScenesOccDataset(d.root, d.version, split, DatasetConfig(
        image_size=tuple(d.image_size), cameras=tuple(d.cameras) or CAMERA_NAMES,
        lidar_sweeps=d.lidar_sweeps, augment=False, load_segments=segments, vectors=vectors))
    if not 0 <= index < len(dataset):
        raise IndexError(f"--index must be in [0, {len(dataset)}) for split {split!r} of "
                         f"{d.root}, got {index}")
    return collate([dataset[index]])


def _label(config: ExperimentConfig) -> str:
    return f"{config.role} ({config.name})"


def load_models(config: ExperimentConfig, checkpoint: str | Path | None,
                teacher_config: str | Path | None, teacher_checkpoint: str | Path | None,
                device: torch.device) -> list[VizModel]:
    """The models a picture compares, teacher first.

    The main model is ``config``'s with ``checkpoint`` (none when ``checkpoint`` is None). The
    teacher is ``teacher_checkpoint`` (default: the config's ``[teacher] checkpoint``) built from
    ``teacher_config`` (default: the config's ``[teacher] config``); no teacher when neither names
    a checkpoint. Checkpoints load as ``radocc.evaluate.load_model`` does (EMA weights first).
    """
    from radocc.evaluate import load_model

    models = []
    teacher_checkpoint = teacher_checkpoint or config.teacher.checkpoint or None
    if teacher_checkpoint:
        teacher_config = teacher_config or config.teacher.config
        if not teacher_config:
            raise ValueError("a teacher checkpoint needs its config: pass --teacher-config")
        for what, path in (("teacher config", teacher_config),
                           ("teacher checkpoint", teacher_checkpoint)):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{what} {path} does not exist (pass --teacher-config / "
                                        f"--teacher-checkpoint, or --set teacher.checkpoint=...)")
        t_config = load_config(teacher_config)
        teacher = load_model(t_config, teacher_checkpoint, device)
        models.append(VizModel(_label(t_config), t_config, teacher))
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        models.append(VizModel(_label(config), config, load_model(config, checkpoint, device)))
    return models


def load_viz_model(config_path: str | Path, checkpoint: str | Path, device: torch.device,
                   what: str = "model") -> VizModel:
    """One more model for a picture (e.g. the baseline student): its config and checkpoint,
    loaded as :func:`radocc.evaluate.load_model` does. ``what`` names it in errors."""
    from radocc.evaluate import load_model

    for kind, path in (("config", config_path), ("checkpoint", checkpoint)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{what} {kind} {path} does not exist")
    config = load_config(config_path)
    return VizModel(_label(config), config, load_model(config, checkpoint, device))


def camera_names(batch: dict[str, Any]) -> list[str]:
    """The camera channels of a batched sample (B = 1), in its order (e.g. "CAM_FRONT")."""
    return [Path(f).parent.name for f in batch["image_files"][0]]


def camera_index(batch: dict[str, Any], camera: str) -> int:
    """Position of camera channel ``camera`` (e.g. "CAM_FRONT") in the sample's cameras."""
    names = camera_names(batch)
    if camera not in names:
        raise ValueError(f"--camera must be one of the sample's cameras {names}, got {camera!r}")
    return names.index(camera)


@torch.no_grad()
def predict(model: VizModel, batch: dict[str, Any]) -> Tensor:
    """The model's voxel logits [1, X, Y, Z, K] (float32) for a batched sample (B = 1); a fusion
    model also sees the sample's LiDAR points."""
    device = next(model.model.parameters()).device
    inputs = [batch[k].to(device) for k in ("images", "intrinsics", "cam2ego")]
    if model.config.model.modality == "fusion":
        inputs += [batch["points"].to(device), batch["num_points"].to(device)]
    return model.model(*inputs).logits.float()


GROUND_TRUTH_LOGIT = 20.0
"""Logit of the labelled class in :func:`ground_truth_logits` (0 for the others)."""


def ground_truth_logits(semantics: Tensor, num_classes: int) -> Tensor:
    """Labels as a model's output, to render the ground truth like a prediction.

    Args:
        semantics: [B, X, Y, Z] class ids (free = num_classes - 1).
    Returns:
        [B, X, Y, Z, K] float32 logits, :data:`GROUND_TRUTH_LOGIT` for the labelled class and 0
        for the others: a ray crossing a whole occupied voxel stops in it with probability
        1 - 2e-9, one crossing a free voxel with probability 4e-8 (K = 18).
    """
    if semantics.is_floating_point() or semantics.dim() != 4:
        raise ValueError(f"semantics must be integer class ids [B, X, Y, Z], got "
                         f"{semantics.dtype} {tuple(semantics.shape)}")
    one_hot = torch.nn.functional.one_hot(semantics.long(), num_classes)
    return one_hot.float() * GROUND_TRUTH_LOGIT


def _renderer(config: ExperimentConfig, device: torch.device):
    from radocc.train import build_render_loss  # loads the compiled extension

    return build_render_loss(config).to(device)


def _rays(renderer, batch: dict[str, Any], cameras: list[int], pixels: Tensor):
    """Rays through ``pixels`` [P, 2] of each of ``cameras``: origins, directions [1, N * P, 3]."""
    device = renderer.edges.device
    intrinsics = batch["intrinsics"][:, cameras].to(device)
    cam2ego = batch["cam2ego"][:, cameras].to(device)
    pixels = pixels.to(device).expand(1, len(cameras), *pixels.shape)
    origins, directions, _ = renderer.rays(intrinsics, cam2ego, pixels=pixels)
    return origins, directions


class CameraRenders(NamedTuple):
    """Renders of N cameras on the ``stride`` pixel grid, [N, h, w] = [N, H // s, W // s]."""

    depth: np.ndarray
    """Rendered depth sum_i w_i t_i, metres along the ray."""
    opacity: np.ndarray
    """sum_i w_i in [0, 1]: the probability that the ray terminates inside the grid."""
    labels: np.ndarray
    """int64 argmax of the rendered class features (Occ3D class ids, free excluded)."""


@torch.no_grad()
def render_cameras(config: ExperimentConfig, logits: Tensor, batch: dict[str, Any],
                   cameras: list[int], stride: int) -> CameraRenders:
    """Renders voxel logits [1, X, Y, Z, K] through the pixel-block centres of ``cameras``
    (indices into the sample's cameras) with ``config``'s renderer."""
    renderer = _renderer(config, logits.device)
    height, width = batch["images"].shape[-2:]
    grid = pixel_grid((height, width), stride)
    shape = (len(cameras), height // stride, width // stride)
    out = renderer.render(logits, *_rays(renderer, batch, cameras, grid), termination=False)
    return CameraRenders(out.depth.view(shape).cpu().numpy(), out.opacity.view(shape).cpu().numpy(),
                         out.features.argmax(-1).view(shape).cpu().numpy())


@torch.no_grad()
def ray_termination(config: ExperimentConfig, logits: Tensor, batch: dict[str, Any], camera: int,
                    pixel: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The termination distribution of the ray through ``pixel`` (u, v) of ``camera``, as RDC
    sees it: (edges [D + 1] metres along the ray, probabilities [D + 1]: D depth bins, then the
    never-terminated bin; they sum to 1)."""
    renderer = _renderer(config, logits.device)
    pixels = torch.tensor([pixel], dtype=torch.float32)
    out = renderer.render(logits, *_rays(renderer, batch, [camera], pixels), features=False)
    return renderer.edges.cpu().numpy(), out.termination[0, 0].cpu().numpy()


def lidar_depth_at(batch: dict[str, Any], camera: int, pixel: tuple[float, float],
                   radius: float = 2.0) -> float | None:
    """Distance along the ray (metres) of the LiDAR point projecting nearest to ``pixel`` (u, v)
    of ``camera``, among those within ``radius`` pixels (max norm); None when there is none."""
    from radocc.data.targets import project_points

    height, width = batch["images"].shape[-2:]
    points = batch["points"][0, : int(batch["num_points"][0])]
    cam, uv, _, distance = project_points(points, batch["intrinsics"][0], batch["cam2ego"][0],
                                          (height, width))
    offset = (uv - torch.tensor(pixel, dtype=uv.dtype)).abs().amax(-1)
    near = (cam == camera) & (offset <= radius)
    if not bool(near.any()):
        return None
    return float(distance[near][offset[near].argmin()])


def lidar_pixel_near(batch: dict[str, Any], camera: int,
                     pixel: tuple[float, float]) -> tuple[float, float] | None:
    """The pixel (u, v) where the LiDAR point projecting nearest to ``pixel`` lands in
    ``camera`` (a ray with a measured depth); None when no point projects into that camera."""
    from radocc.data.targets import project_points

    height, width = batch["images"].shape[-2:]
    points = batch["points"][0, : int(batch["num_points"][0])]
    cam, uv, _, _ = project_points(points, batch["intrinsics"][0], batch["cam2ego"][0],
                                   (height, width))
    uv = uv[cam == camera]
    if not len(uv):
        return None
    nearest = (uv - torch.tensor(pixel, dtype=uv.dtype)).norm(dim=-1).argmin()
    return float(uv[nearest, 0]), float(uv[nearest, 1])


class CameraAffinity(NamedTuple):
    """Segment affinities of one model on one camera (K segments, in increasing id)."""

    matrix: np.ndarray
    """[K, K] cosine affinity of the segments' mean rendered features."""
    ids: np.ndarray
    """[K] the segment ids (SAM ids of the camera's segment map)."""


@torch.no_grad()
def camera_affinity(config: ExperimentConfig, logits: Tensor, batch: dict[str, Any], camera: int,
                    stride: int, max_segments: int = 0) -> tuple[CameraAffinity, Tensor, Tensor]:
    """RSC's segment affinity (:func:`radocc.losses.segment_affinity`) of the features rendered
    through the ``stride`` pixel grid of ``camera``, segments from the sample's ``segments``.

    ``max_segments`` > 0 keeps the rows of that many segments with the most rays (the affinity
    of two segments does not depend on the others, so this is a sub-matrix of the full one).
    Returns the affinity, and the rendered features [1, R, C] and segment ids [1, R] of all the
    rays (for :func:`radocc.losses.rsc_loss` between two models).
    """
    from radocc.losses import segment_affinity

    if "segments" not in batch:
        raise ValueError("the sample has no segments: load it with segments=True")
    renderer = _renderer(config, logits.device)
    grid = pixel_grid(tuple(batch["images"].shape[-2:]), stride)
    ids = lookup_pixels(batch["segments"][0, camera], grid).long()[None].to(logits.device)
    out = renderer.render(logits, *_rays(renderer, batch, [camera], grid), termination=False)
    affinity = segment_affinity(out.features, ids)
    rows = affinity.present[0].nonzero().squeeze(1)  # slots in increasing id
    if 0 < max_segments < len(rows):
        _, rays_per_segment = torch.unique(ids[ids > 0], return_counts=True)  # same order
        rows = rows[rays_per_segment.argsort(descending=True, stable=True)[:max_segments].sort().values]
    result = CameraAffinity(affinity.matrix[0][rows][:, rows].cpu().numpy(),
                            affinity.ids[0][rows].cpu().numpy())
    return result, out.features, ids


class MapVectorsView(NamedTuple):
    """Vectors of one sample in the map frame (x right, y forward, metres), as drawn."""

    lines: list[np.ndarray]
    """Each [Ni, 2] float64 metres (ground truth: the original clipped geometry; predictions:
    the decoded points)."""
    labels: np.ndarray
    """[M] int64 class ids (radocc.data.MAP_CLASSES)."""
    scores: np.ndarray | None
    """[M] float confidence of each prediction in descending order; None for the ground truth."""


def ground_truth_vectors(batch: dict[str, Any]) -> MapVectorsView:
    """The vector ground truth of a batched sample (B = 1) loaded with ``vectors=True``."""
    if "map_lines" not in batch:
        raise ValueError("the sample has no vector ground truth: load it with vectors=True")
    return MapVectorsView([np.asarray(line, np.float64) for line in batch["map_lines"][0]],
                          batch["map_labels"][0].cpu().numpy().astype(np.int64), None)


@torch.no_grad()
def predict_vectors(model: VizModel, batch: dict[str, Any], score_threshold: float = 0.0,
                    top_k: int = 50) -> MapVectorsView:
    """A vector-map model's decoded vectors for a batched sample (B = 1; loaded with
    ``vectors=True``, for ego2map): MapTR's top ``top_k`` over queries x classes, then those
    scoring below ``score_threshold`` dropped. A map model sees map-frame inputs (and a fusion
    model the LiDAR points); a multi-task student its ego-frame inputs and ego2map."""
    from radocc.map_train import map_frame_inputs
    from radocc.train import to_device

    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
    if model.config.task not in ("map", "multi"):
        raise ValueError(f"{model.label} is a task {model.config.task!r} model: vectors need a map "
                         f"model (task 'map') or a multi-task student (task 'multi')")
    device = next(model.model.parameters()).device
    batch = to_device({k: v for k, v in batch.items() if not k.startswith("map_")}, device)
    if model.config.task == "multi":
        output = model.model(batch["images"], batch["intrinsics"], batch["cam2ego"], batch["ego2map"])[1]
    else:
        cam2map, points = map_frame_inputs(batch)
        lidar = ((points, batch["num_points"]) if model.config.map_model.modality == "fusion"
                 else (None, None))
        output = model.model(batch["images"], batch["intrinsics"], cam2map, *lidar)
    prediction = model.model.decode(output, score_threshold, top_k)[0]
    return MapVectorsView(list(prediction.lines.double().cpu().numpy()),
                          prediction.labels.cpu().numpy().astype(np.int64),
                          prediction.scores.float().cpu().numpy())
