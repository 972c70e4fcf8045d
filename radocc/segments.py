"""Pre-extract image segments for the RSC loss (SAM, or a Felzenszwalb fallback).

RadOcc's Rendered Semantic Consistency loss averages rendered semantic features inside image
segments. The segments are computed once, offline, with segment-anything's automatic mask
generator and stored next to the data::

    <root>/samples/<CAM>/<stem>.jpg   ->   <root>/sam_segments/<CAM>/<stem>.png
    <root>/sam_segments/meta.json          which method and parameters made them

Each PNG is 16-bit grayscale, the image's H x W, holding segment ids: 0 = no segment, 1..n = the
segments. Where masks overlap, the smallest mask wins (large masks are painted first, smaller on
top); ids follow painting order, largest visible segment first, with ties broken by the first pixel
in raster order, so the same masks always give the same ids.

Command line::

    python -m radocc.segments --data-root DIR --checkpoint sam_vit_h_4b8939.pth --model-type vit_h
    python -m radocc.segments --data-root DIR --fallback felzenszwalb      # no checkpoint needed

Runs are resumable: images whose PNG exists are skipped unless ``--overwrite``; each PNG is
written to a temporary file and renamed into place, so an interrupted run leaves no broken file.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

CAMERAS: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
SEGMENTS_DIR = "sam_segments"
META_FILE = "meta.json"
MAX_SEGMENTS = int(np.iinfo(np.uint16).max)  # ids must fit a 16-bit PNG

#: Width of the ViT image encoder's tokens for each released SAM checkpoint (to name a mismatch).
_SAM_EMBED_DIMS = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}

Segmenter = Callable[[np.ndarray], np.ndarray]
"""Turns one RGB image [H, W, 3] uint8 into a segment-id map [H, W] uint16."""

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


class MaskGenerator(Protocol):
    """Anything shaped like ``segment_anything.SamAutomaticMaskGenerator``."""

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]: ...


# --------------------------------------------------------------------------- masks -> ids


def masks_to_segment_ids(masks: Sequence[Mapping[str, Any]], shape: tuple[int, int]) -> np.ndarray:
    """Flatten possibly overlapping binary masks into one segment-id map.

    Args:
        masks: records as returned by ``SamAutomaticMaskGenerator.generate`` (output_mode
            "binary_mask"); only ``"segmentation"``, a bool array [H, W], is read. The area used for
            ordering is counted from it.
        shape: (H, W) of the image.

    Returns:
        [H, W] uint16: 0 where no mask covers the pixel, else ids 1..n. A pixel covered by several
        masks gets the smallest one. Ids are ranks in painting order (largest area first; equal
        areas by their first pixel in raster order); masks that are empty or entirely covered by
        smaller ones get no id, so the ids are exactly 1..n.
    """
    height, width = shape
    prepared = []
    for index, record in enumerate(masks):
        mask = np.asarray(record["segmentation"])
        if mask.shape != (height, width):
            raise ValueError(
                f"mask {index} has shape {mask.shape}, expected the image shape {(height, width)}"
            )
        mask = mask.astype(bool, copy=False)
        flat = mask.ravel()
        area = int(flat.sum())
        if area == 0:
            continue
        prepared.append((-area, int(flat.argmax()), index, mask))
    prepared.sort(key=lambda item: item[:3])

    ranks = np.zeros((height, width), dtype=np.int64)
    for rank, (_, _, _, mask) in enumerate(prepared, start=1):
        ranks[mask] = rank
    return _compact_ids(ranks)


def _compact_ids(labels: np.ndarray) -> np.ndarray:
    """Renumber the positive labels of [H, W] ints to 1..n in increasing order; 0 stays 0."""
    present = np.unique(labels)
    present = present[present > 0]
    if len(present) > MAX_SEGMENTS:
        raise ValueError(
            f"{len(present)} segments do not fit a 16-bit PNG (at most {MAX_SEGMENTS})"
        )
    lookup = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint16)
    lookup[present] = np.arange(1, len(present) + 1, dtype=np.uint16)
    return lookup[labels]


def image_to_segment_ids(image: np.ndarray, generator: MaskGenerator) -> np.ndarray:
    """Segment one image with a mask generator.

    Args:
        image: [H, W, 3] uint8 RGB.
        generator: e.g. a ``SamAutomaticMaskGenerator`` (binary_mask output).

    Returns:
        [H, W] uint16 segment ids, see :func:`masks_to_segment_ids`.
    """
    _check_rgb(image)
    return masks_to_segment_ids(generator.generate(image), image.shape[:2])


def felzenszwalb_segment_ids(
    image: np.ndarray, *, scale: float = 100.0, sigma: float = 0.5, min_size: int = 50
) -> np.ndarray:
    """The fallback segmenter: scikit-image's Felzenszwalb graph segmentation.

    Args:
        image: [H, W, 3] uint8 RGB.
        scale, sigma, min_size: passed to ``skimage.segmentation.felzenszwalb``.

    Returns:
        [H, W] uint16 ids 1..n; every pixel belongs to a segment (no 0), numbered in raster order of
        each segment's first pixel.
    """
    from skimage.segmentation import felzenszwalb

    _check_rgb(image)
    labels = felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)
    _, first_pixel, inverse = np.unique(labels.ravel(), return_index=True, return_inverse=True)
    if len(first_pixel) > MAX_SEGMENTS:
        raise ValueError(
            f"{len(first_pixel)} segments do not fit a 16-bit PNG (at most {MAX_SEGMENTS})"
        )
    raster_rank = np.empty(len(first_pixel), dtype=np.uint16)
    raster_rank[np.argsort(first_pixel)] = np.arange(1, len(first_pixel) + 1)
    return raster_rank[inverse].reshape(labels.shape)


def _check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB image [H, W, 3] uint8, got {image.shape} {image.dtype}")


# --------------------------------------------------------------------------- SAM


def load_sam(
    model_type: str,
    checkpoint: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    registry: Mapping[str, Callable[..., torch.nn.Module]] | None = None,
) -> torch.nn.Module:
    """Build a SAM model and load its checkpoint.

    The model is built without weights by segment-anything's ``sam_model_registry[model_type]``
    (or ``registry``), and the checkpoint is read here with ``torch.load(weights_only=True)`` so
    that a missing, corrupt or mismatched file gives an error that says which.

    Args:
        model_type: a key of the registry: "vit_h", "vit_l" or "vit_b" for the released checkpoints.
        checkpoint: path of the state dict (e.g. ``sam_vit_h_4b8939.pth``).
        device: where the model goes.
        registry: model type -> builder called as ``builder(checkpoint=None)`` returning a ``Sam``;
            default ``segment_anything.sam_model_registry``.

    Raises:
        ValueError: unknown model type, unreadable checkpoint, or one for another model type.
        FileNotFoundError: the checkpoint does not exist.
    """
    if registry is None:
        from segment_anything import sam_model_registry

        registry = sam_model_registry
    if model_type not in registry:
        raise ValueError(
            f"unknown --model-type {model_type!r}: expected one of {', '.join(sorted(registry))}"
        )
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"--checkpoint {str(path)!r} not found: expected the segment-anything state dict "
            f"(.pth) for model type {model_type!r}"
        )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"--checkpoint {str(path)!r} could not be read by torch.load(weights_only=True): "
            f"the file is corrupt, truncated or not a plain state dict ({_short(error)})"
        ) from error
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in state_dict.values()
    ):
        raise ValueError(
            f"--checkpoint {str(path)!r} holds a {type(state_dict).__name__}, "
            "expected a state dict (parameter name -> tensor) of a SAM model"
        )

    guessed = _guess_model_type(state_dict)
    if guessed is not None and guessed != model_type and model_type in _SAM_EMBED_DIMS.values():
        raise ValueError(
            f"--checkpoint {str(path)!r} looks like a {guessed} checkpoint but --model-type is "
            f"{model_type!r}: pass --model-type {guessed}"
        )

    model = registry[model_type](checkpoint=None)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(
            f"--checkpoint {str(path)!r} does not match --model-type {model_type!r}: state dict "
            f"mismatch ({_describe_mismatch(model, state_dict)})"
        ) from error
    return model.to(device).eval()


def _guess_model_type(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    pos_embed = state_dict.get("image_encoder.pos_embed")
    if pos_embed is None or pos_embed.ndim != 4:
        return None
    return _SAM_EMBED_DIMS.get(int(pos_embed.shape[-1]))


def _describe_mismatch(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str:
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key}: file {list(state_dict[key].shape)} vs model {list(expected[key].shape)}"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    parts = [
        f"{len(found)} {what}" + (f", e.g. {found[0]}" if found else "")
        for what, found in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", wrong_shape),
        )
    ]
    return "; ".join(parts)


def _short(error: BaseException) -> str:
    if isinstance(error, pickle.UnpicklingError):  # torch's text here suggests weights_only=False
        return "UnpicklingError: not a weights-only torch file"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:120] if lines else ''}"


def build_sam_generator(
    model_type: str,
    checkpoint: str | os.PathLike[str],
    *,
    points_per_side: int = 32,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    device: str | torch.device | None = None,
    registry: Mapping[str, Callable[..., torch.nn.Module]] | None = None,
    **generator_kwargs: Any,
) -> MaskGenerator:
    """A ``SamAutomaticMaskGenerator`` over the checkpoint (see :func:`load_sam` for the errors).

    Args:
        points_per_side, pred_iou_thresh, stability_score_thresh, generator_kwargs: passed to
            ``SamAutomaticMaskGenerator`` (its defaults are those of the SAM paper / ViT-H).
        device: default "cuda" when available, else "cpu".
    """
    from segment_anything import SamAutomaticMaskGenerator

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_sam(model_type, checkpoint, device=device, registry=registry)
    return SamAutomaticMaskGenerator(
        model,
        points_per_side=points_per_side,
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh,
        output_mode="binary_mask",
        **generator_kwargs,
    )


# --------------------------------------------------------------------------- files


def find_camera_images(
    data_root: str | os.PathLike[str], cameras: Iterable[str] = CAMERAS
) -> list[tuple[str, Path]]:
    """All (camera, image path) pairs under ``<root>/samples/<CAM>/*.jpg``, sorted.

    Raises:
        FileNotFoundError: the data root does not exist, or holds no camera image.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data-root {str(root)!r} is not a directory")
    cameras = tuple(cameras)
    found = [
        (camera, path)
        for camera in cameras
        for path in sorted((root / "samples" / camera).glob("*.jpg"))
    ]
    if not found:
        raise FileNotFoundError(
            f"--data-root {str(root)!r} has no camera images: expected nuScenes-style "
            f"samples/<CAM>/*.jpg for CAM in {', '.join(cameras)}"
        )
    return found


def segments_path(
    data_root: str | os.PathLike[str], camera: str, image: str | os.PathLike[str]
) -> Path:
    """``<root>/sam_segments/<camera>/<image stem>.png``."""
    return Path(data_root) / SEGMENTS_DIR / camera / f"{Path(image).stem}.png"


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as [H, W, 3] uint8 RGB."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"could not read image {str(path)!r}: {error}") from error


def save_segments(path: str | os.PathLike[str], segments: np.ndarray) -> None:
    """Write [H, W] uint16 ids as a 16-bit PNG, atomically (temporary file, then rename)."""
    if segments.ndim != 2 or segments.dtype != np.uint16:
        raise ValueError(
            f"expected segment ids [H, W] uint16, got {segments.shape} {segments.dtype}"
        )
    _write_atomic(Path(path), lambda f: Image.fromarray(segments).save(f, format="PNG"))


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_segments(
    path: str | os.PathLike[str], expected_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Read a segment-id PNG written by this module.

    Args:
        path: the 16-bit PNG.
        expected_size: (H, W) the map must have (the camera image's size), or None to skip.

    Returns:
        [H, W] int64 segment ids (0 = no segment).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable PNG, not 16-bit grayscale, or not of ``expected_size``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"segment file {str(path)!r} not found (run python -m radocc.segments)"
        )
    try:
        with Image.open(path) as image:
            image.load()
            mode, fmt = image.mode, image.format
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"segment file {str(path)!r} is corrupt or not a PNG: {error}") from error
    if fmt != "PNG" or mode not in ("I;16", "I;16B", "I;16L") or array.ndim != 2:
        raise ValueError(
            f"segment file {str(path)!r} is a {fmt} of mode {mode}, expected a 16-bit grayscale PNG"
        )
    if expected_size is not None and tuple(array.shape) != tuple(expected_size):
        raise ValueError(
            f"segment file {str(path)!r} is {array.shape[0]}x{array.shape[1]} (HxW), expected "
            f"{expected_size[0]}x{expected_size[1]} (the image size)"
        )
    return array.astype(np.int64)


def resize_segments(segments: ArrayOrTensor, size: tuple[int, int]) -> ArrayOrTensor:
    """Nearest-neighbour resize of segment ids to a render resolution.

    Args:
        segments: [..., H, W] integer ids, numpy array or torch tensor.
        size: (h, w) output size.

    Returns:
        [..., h, w], same type and dtype; output pixel (i, j) takes the input pixel whose cell
        contains the output pixel's centre, so ids are never blended.
    """
    in_h, in_w = segments.shape[-2:]
    out_h, out_w = size
    rows = np.minimum(((np.arange(out_h) + 0.5) * in_h / out_h).astype(np.int64), in_h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * in_w / out_w).astype(np.int64), in_w - 1)
    if isinstance(segments, torch.Tensor):
        rows_t = torch.from_numpy(rows).to(segments.device)
        cols_t = torch.from_numpy(cols).to(segments.device)
        return segments.index_select(-2, rows_t).index_select(-1, cols_t)
    return segments[..., rows[:, None], cols[None, :]]


# --------------------------------------------------------------------------- walker


def pending_images(
    data_root: str | os.PathLike[str], *, overwrite: bool = False
) -> list[tuple[str, Path]]:
    """The (camera, image) pairs whose segment PNG is still to be written."""
    return _pending(data_root, find_camera_images(data_root), overwrite)


def _pending(
    data_root: str | os.PathLike[str], images: list[tuple[str, Path]], overwrite: bool
) -> list[tuple[str, Path]]:
    if overwrite:
        return images
    return [
        (cam, image) for cam, image in images if not segments_path(data_root, cam, image).exists()
    ]


def check_meta(
    data_root: str | os.PathLike[str], meta: Mapping[str, Any], *, overwrite: bool
) -> None:
    """Refuse to mix methods: raise if ``sam_segments/meta.json`` names other settings.

    Only "method", "model_type" and "params" are compared. With ``overwrite`` anything goes.
    """
    path = Path(data_root) / SEGMENTS_DIR / META_FILE
    if overwrite or not path.is_file():
        return
    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{str(path)!r} is unreadable ({error}): pass --overwrite") from error
    keys = ("method", "model_type", "params")
    old = {key: existing.get(key) for key in keys}
    new = {key: meta.get(key) for key in keys}
    if old != new:
        raise ValueError(
            f"{str(path)!r} says the existing segments were made with {old}, not {new}: "
            "pass --overwrite to redo them all, or use the same settings to resume"
        )


def write_meta(data_root: str | os.PathLike[str], meta: Mapping[str, Any]) -> None:
    """Write ``<root>/sam_segments/meta.json`` atomically."""
    text = json.dumps(dict(meta), indent=2, sort_keys=True) + "\n"
    _write_atomic(Path(data_root) / SEGMENTS_DIR / META_FILE, lambda f: f.write(text.encode()))


def segment_data_root(
    data_root: str | os.PathLike[str],
    segmenter: Segmenter,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Segment every camera image of a data root that has no segment PNG yet.

    Args:
        data_root: nuScenes-layout root with ``samples/CAM_*/*.jpg``.
        segmenter: image [H, W, 3] uint8 -> ids [H, W] uint16 of the same H, W.
        overwrite: redo images whose PNG exists.
        progress: show a tqdm bar.

    Returns:
        {"written": n, "skipped": n} image counts.
    """
    images = find_camera_images(data_root)
    todo = _pending(data_root, images, overwrite)
    for camera, image_path in tqdm(todo, desc="segments", unit="img", disable=not progress):
        image = read_rgb(image_path)
        segments = segmenter(image)
        if segments.shape != image.shape[:2] or segments.dtype != np.uint16:
            raise ValueError(
                f"segmenter returned {segments.shape} {segments.dtype} for {str(image_path)!r}, "
                f"expected {image.shape[:2]} uint16"
            )
        save_segments(segments_path(data_root, camera, image_path), segments)
    return {"written": len(todo), "skipped": len(images) - len(todo)}


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m radocc.segments",
        description="Write SAM segment ids for every camera image: "
        "<root>/sam_segments/<CAM>/<stem>.png (uint16, 0 = no segment).",
    )
    parser.add_argument(
        "--data-root", required=True, help="nuScenes-layout root (samples/CAM_*/*.jpg)"
    )
    parser.add_argument("--checkpoint", help="SAM state dict, e.g. sam_vit_h_4b8939.pth")
    parser.add_argument(
        "--model-type", default="vit_h", help="vit_h, vit_l or vit_b (default vit_h)"
    )
    parser.add_argument(
        "--fallback",
        choices=["felzenszwalb"],
        help="segment with scikit-image's felzenszwalb when no --checkpoint is given "
        "(a given --checkpoint always means SAM)",
    )
    parser.add_argument(
        "--points-per-side", type=int, default=32, help="SAM prompt grid (default 32)"
    )
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--box-nms-thresh", type=float, default=0.7)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--felzenszwalb-scale", type=float, default=100.0)
    parser.add_argument("--felzenszwalb-sigma", type=float, default=0.5)
    parser.add_argument("--felzenszwalb-min-size", type=int, default=50)
    parser.add_argument("--overwrite", action="store_true", help="redo images that have a PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 on a usage or input error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.checkpoint is None and args.fallback is None:
        parser.error("--checkpoint is required (or pass --fallback felzenszwalb)")

    if args.checkpoint is not None:
        params = {
            "points_per_side": args.points_per_side,
            "pred_iou_thresh": args.pred_iou_thresh,
            "stability_score_thresh": args.stability_score_thresh,
            "box_nms_thresh": args.box_nms_thresh,
        }
        meta = {
            "method": "sam",
            "model_type": args.model_type,
            "checkpoint": Path(args.checkpoint).name,
            "params": params,
        }
    else:
        params = {
            "scale": args.felzenszwalb_scale,
            "sigma": args.felzenszwalb_sigma,
            "min_size": args.felzenszwalb_min_size,
        }
        meta = {"method": "felzenszwalb", "model_type": None, "checkpoint": None, "params": params}

    try:
        todo = pending_images(args.data_root, overwrite=args.overwrite)
        check_meta(args.data_root, meta, overwrite=args.overwrite)
        if not todo:
            print(f"all segment files under {args.data_root}/{SEGMENTS_DIR} exist; nothing to do")
            return 0
        if meta["method"] == "sam":
            generator = build_sam_generator(
                args.model_type, args.checkpoint, device=args.device, **params
            )
            segmenter: Segmenter = partial(image_to_segment_ids, generator=generator)
        else:
            segmenter = partial(felzenszwalb_segment_ids, **params)
        write_meta(args.data_root, meta)
        counts = segment_data_root(
            args.data_root, segmenter, overwrite=args.overwrite, progress=not args.no_progress
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(f"{meta['method']} segments: {counts['written']} written, {counts['skipped']} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
