"""Run a trained camera-only student on your own images, with any number of cameras.

    python -m radocc.infer CONFIG --checkpoint PATH --images DIR --calib FILE [--out DIR]
                           [--device cpu|cuda] [--probabilities] [--set key=value ...]

DIR holds the images of one frame (one file per camera: .jpg, .jpeg, .png, .bmp or .webp, any
size); FILE (JSON) says where each camera is and how it projects:

    {"cameras": [
        {"image": "front.jpg",
         "intrinsics": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
         "cam2ego": [[r11, r12, r13, tx], [r21, r22, r23, ty], [r31, r32, r33, tz], [0, 0, 0, 1]]},
        {"name": "CAM_BACK", ...},
        ...]}

- ``image``: the file name inside DIR; or ``name`` alone: the file of DIR whose stem is that name
  (``"CAM_BACK"`` -> ``CAM_BACK.jpg``). With both, ``name`` only labels the picture.
- ``intrinsics``: 3 x 3 pinhole matrix in pixels of the image file as it is on disk (OpenCV
  camera frame: x right, y down, z forward; pixel centres at integer coordinates).
- ``cam2ego``: 4 x 4 rigid transform camera -> ego frame (x forward, y left, z up, metres, origin
  on the ground under the ego, as in nuScenes / Occ3D): the occupancy grid
  (``model.grid_lower`` .. ``model.grid_upper``) is laid out in this frame.

Every image in DIR must have exactly one camera entry and every entry an image. Each image is
scaled to cover the config's ``data.image_size`` and cropped (centred horizontally, bottom-aligned:
the validation loader's transform, :func:`radocc.data.transforms.image_transform`), and its
intrinsics follow the same pixel map.

Writes ``OUT/<DIR name>.npz``: ``semantics`` uint8 [X, Y, Z] (class ids, free = the last class),
``grid_lower`` / ``grid_upper`` float32 [3] (metres), ``class_names``, ``cameras`` (the names),
and with ``--probabilities`` ``probabilities`` float16 [X, Y, Z, K] (softmax over classes); and
``OUT/<DIR name>.png``: the network's input images above the occupancy seen from above in Occ3D
colours (forward up, left on the left).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from radocc.checkpoint import CheckpointError
from radocc.config import ConfigError, ExperimentConfig, load_config
from radocc.data.transforms import image_transform
from radocc.evaluate import load_model
from radocc.models import OccupancyModel
from radocc.occ3d import CLASS_NAMES
from radocc.viz import OCC3D_PALETTE, bev_labels, colorize_labels, save_png

__all__ = ["InferenceError", "Camera", "IMAGE_SUFFIXES", "load_calibration", "prepare_inputs",
           "check_camera_only", "load_student", "predict", "inference_picture", "run_inference", "main"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_RIGID_TOLERANCE = 1e-3  # |R^T R - I| and |det R - 1| allowed in a cam2ego rotation


class InferenceError(ValueError):
    """Inputs of ``radocc.infer`` that do not fit together: the message names the file and entry."""


@dataclass(frozen=True)
class Camera:
    """One camera of the user's rig.

    name: label (the ``name`` entry, else the image's stem).
    image: path of the image file.
    intrinsics: [3, 3] float64, pixels of the image file.
    cam2ego: [4, 4] float64, camera -> ego, metres.
    """

    name: str
    image: Path
    intrinsics: np.ndarray
    cam2ego: np.ndarray


# ----------------------------------------------------------------------------- calibration
def _matrix(entry: dict, key: str, size: int, where: str) -> np.ndarray:
    if key not in entry:
        raise InferenceError(f"{where} has no {key!r} (expected a {size}x{size} list of numbers)")
    try:
        matrix = np.array(entry[key], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InferenceError(f"{where}.{key} must be a {size}x{size} list of numbers: {exc}") from exc
    if matrix.shape != (size, size):
        raise InferenceError(f"{where}.{key} must be {size}x{size}, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise InferenceError(f"{where}.{key} holds non-finite values (NaN or inf)")
    return matrix


def _check_intrinsics(k: np.ndarray, where: str) -> None:
    if abs(np.linalg.det(k)) < 1e-9 * max(1.0, np.abs(k).max()) ** 3:
        raise InferenceError(f"{where}.intrinsics is not invertible (determinant "
                             f"{np.linalg.det(k):.3g}): expected [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] "
                             f"with fx, fy != 0, in pixels")
    if not np.allclose(k[2], (0.0, 0.0, 1.0)):
        raise InferenceError(f"{where}.intrinsics last row must be [0, 0, 1], got {k[2].tolist()}")


def _check_cam2ego(t: np.ndarray, where: str) -> None:
    if not np.allclose(t[3], (0.0, 0.0, 0.0, 1.0)):
        raise InferenceError(f"{where}.cam2ego last row must be [0, 0, 0, 1], got {t[3].tolist()}")
    rotation = t[:3, :3]
    det = np.linalg.det(rotation)
    if abs(det) < 1e-9:
        raise InferenceError(f"{where}.cam2ego is not invertible (its 3x3 rotation part is singular)")
    if (np.abs(rotation.T @ rotation - np.eye(3)).max() > _RIGID_TOLERANCE
            or abs(det - 1.0) > _RIGID_TOLERANCE):
        raise InferenceError(f"{where}.cam2ego must be a rigid transform (rotation + translation in "
                             f"metres): its 3x3 part is not a rotation (det {det:.4g}); a scaled or "
                             f"mirrored matrix is not a camera pose")


def _images_in(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def load_calibration(path: str | Path, images_dir: str | Path) -> list[Camera]:
    """Read a calibration JSON (see the module doc) and match it with the images of ``images_dir``.

    Returns:
        The cameras in the file's order.
    Raises:
        FileNotFoundError: the file or the folder does not exist.
        InferenceError: unreadable JSON; no cameras; an entry without an image or with a matrix of
            the wrong shape, non-finite, non-invertible or (cam2ego) not rigid; an entry whose
            image is not in the folder; two entries for one image; an image of the folder that no
            entry names. The message names the file and the entry.
    """
    path, images_dir = Path(path), Path(images_dir)
    if not path.is_file():
        raise FileNotFoundError(f"--calib: no such file {path}")
    if not images_dir.is_dir():
        raise FileNotFoundError(f"--images: no such folder {images_dir}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InferenceError(f"{path} is not valid JSON: {exc}") from exc
    entries = data.get("cameras") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InferenceError(f"{path}: expected {{\"cameras\": [{{\"image\": ..., \"intrinsics\": "
                             f"3x3, \"cam2ego\": 4x4}}, ...]}} with at least one camera")
    available = _images_in(images_dir)
    cameras, used = [], {}
    for i, entry in enumerate(entries):
        where = f"{path}: cameras[{i}]"
        if not isinstance(entry, dict):
            raise InferenceError(f"{where} must be an object with image, intrinsics, cam2ego")
        name, image = entry.get("name"), entry.get("image")
        if image is None and name is None:
            raise InferenceError(f"{where} names no image: give \"image\" (a file in {images_dir}) "
                                 f"or \"name\" (the file's stem)")
        if image is None:
            matches = [f for f in available if Path(f).stem == name]
            if len(matches) != 1:
                found = "no" if not matches else f"{len(matches)} ({', '.join(matches)})"
                raise InferenceError(f"{where}: camera {name!r} has {found} image named {name}.* "
                                     f"in {images_dir} (expected one of {', '.join(IMAGE_SUFFIXES)}); "
                                     f"images there: {', '.join(available) or 'none'}")
            image = matches[0]
        image = str(image)
        if image not in available:
            raise InferenceError(f"{where}: image {image!r} not found in {images_dir} (images "
                                 f"there: {', '.join(available) or 'none'})")
        if image in used:
            raise InferenceError(f"{where}: image {image!r} is already used by cameras[{used[image]}]")
        used[image] = i
        intrinsics = _matrix(entry, "intrinsics", 3, where)
        cam2ego = _matrix(entry, "cam2ego", 4, where)
        _check_intrinsics(intrinsics, where)
        _check_cam2ego(cam2ego, where)
        cameras.append(Camera(str(name or Path(image).stem), available[image], intrinsics, cam2ego))
    extra = [name for name in available if name not in used]
    if extra:
        raise InferenceError(f"{path}: no camera for image(s) {', '.join(extra)} in {images_dir}: "
                             f"add an entry for each (or move the image out of the folder)")
    return cameras


# ----------------------------------------------------------------------------- model inputs
def _read_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InferenceError(f"image {path} cannot be decoded: {exc}") from exc


def prepare_inputs(cameras: Sequence[Camera], image_size: tuple[int, int]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images and matrices for the model (batch of one frame).

    Args:
        cameras: from :func:`load_calibration`.
        image_size: (H, W) of the network input, pixels (``config.data.image_size``).
    Returns:
        images [1, N, 3, H, W] float RGB in [0, 1], intrinsics [1, N, 3, 3] (pixels of the
        network input), cam2ego [1, N, 4, 4] metres; float32.
    """
    output = (image_size[1], image_size[0])  # (W, H), as the transform takes it
    images, intrinsics = [], []
    for camera in cameras:
        picture = _read_rgb(camera.image)
        transform = image_transform(tuple(picture.size), output)
        images.append(np.asarray(transform.apply_image(picture)))
        intrinsics.append(transform.apply_intrinsics(camera.intrinsics))
    images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    cam2ego = np.stack([camera.cam2ego for camera in cameras])
    return (images[None], torch.from_numpy(np.stack(intrinsics)).float()[None],
            torch.from_numpy(cam2ego).float()[None])


# ----------------------------------------------------------------------------- model
def check_camera_only(config: ExperimentConfig, config_path: str | Path, tool: str) -> None:
    """Raise InferenceError unless the config's model is camera-only (``model.modality``)."""
    if config.model.modality != "camera":
        raise InferenceError(
            f"{config_path} describes a camera + LiDAR model (model.modality = "
            f"{config.model.modality!r}, e.g. a teacher): it needs LiDAR points, which {tool} "
            f"does not take; use a camera-only student config (model.modality = 'camera') and "
            f"its checkpoint")


def load_student(config: ExperimentConfig, checkpoint: str | Path, device: torch.device,
                 config_path: str | Path = "the config", tool: str = "radocc.infer") -> OccupancyModel:
    """The config's camera-only model with the checkpoint's weights (EMA when saved), in eval mode.

    ``config_path`` and ``tool`` (the command) only word the error messages.

    Raises:
        InferenceError: the config describes a camera + LiDAR (fusion) model, or the checkpoint
            does not fit the config's model (the message lists the tensors that differ).
        FileNotFoundError: no checkpoint file.
    """
    check_camera_only(config, config_path, tool)
    try:
        return load_model(config, checkpoint, device)
    except CheckpointError as exc:
        raise InferenceError(f"{exc}\n(is {checkpoint} a checkpoint of the model {config_path} "
                             f"describes? a teacher's checkpoint does not fit a student)") from exc
    except KeyError as exc:
        raise InferenceError(f"checkpoint {checkpoint} has no {exc} entry: expected a checkpoint "
                             f"written by python -m radocc.train") from exc


@torch.no_grad()
def predict(model: OccupancyModel, images: torch.Tensor, intrinsics: torch.Tensor,
            cam2ego: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Class ids uint8 [X, Y, Z] and probabilities float32 [X, Y, Z, K] of one frame
    (inputs as :func:`prepare_inputs` returns them; moved to the model's device)."""
    device = next(model.parameters()).device
    logits = model(images.to(device), intrinsics.to(device), cam2ego.to(device)).logits[0].float()
    probabilities = logits.softmax(dim=-1)
    return logits.argmax(-1).to(torch.uint8).cpu().numpy(), probabilities.cpu().numpy()


# ----------------------------------------------------------------------------- picture
def _tile(images: Sequence[np.ndarray], columns: int = 3) -> np.ndarray:
    """Equal-size uint8 [H, W, 3] pictures in rows of ``columns`` (a short last row is padded black)."""
    blank = np.zeros_like(images[0])
    cells = list(images) + [blank] * (-len(images) % columns)
    rows = [np.concatenate(cells[i:i + columns], axis=1) for i in range(0, len(cells), columns)]
    return np.concatenate(rows, axis=0)


def inference_picture(images: torch.Tensor, semantics: np.ndarray, free_index: int,
                      bev_size: int = 400) -> np.ndarray:
    """The input cameras (up to 3 per row) above the occupancy from above, as uint8 [H', W', 3].

    Args:
        images: [N, 3, H, W] RGB in [0, 1] (the network inputs).
        semantics: [X, Y, Z] class ids.
        free_index: the free class id (the last class).
        bev_size: side of the BEV picture, pixels.
    """
    cams = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    mosaic = _tile(list(cams), columns=min(3, len(cams)))
    labels = bev_labels(semantics, free_index)
    # Colours are Occ3D's: free shows as the palette's free colour, other ids wrap past its end.
    labels = np.where(labels == free_index, len(OCC3D_PALETTE) - 1, labels % (len(OCC3D_PALETTE) - 1))
    bev = np.asarray(Image.fromarray(colorize_labels(labels)).resize((bev_size, bev_size),
                                                                      Image.NEAREST))
    width = max(mosaic.shape[1], bev_size)
    pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)))  # noqa: E731
    return np.concatenate([pad(mosaic), pad(bev)], axis=0)


# ----------------------------------------------------------------------------- run
def run_inference(config_path: str | Path, checkpoint: str | Path, images_dir: str | Path,
                  calib: str | Path, out: str | Path = "outputs/infer",
                  device: str | torch.device = "cpu", probabilities: bool = False,
                  overrides: Sequence[str] = ()) -> dict[str, Path]:
    """Load, check, predict, write; returns {"npz": path, "png": path}. Raises the errors of
    :func:`load_calibration` and :func:`load_student`, and ConfigError for a bad config."""
    config = load_config(config_path, overrides)
    check_camera_only(config, config_path, "radocc.infer")
    cameras = load_calibration(calib, images_dir)
    model = load_student(config, checkpoint, torch.device(device), config_path)
    images, intrinsics, cam2ego = prepare_inputs(cameras, config.data.image_size)
    semantics, probs = predict(model, images, intrinsics, cam2ego)
    stem = Path(images_dir).resolve().name
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = dict(
        semantics=semantics,
        grid_lower=np.array(config.model.grid_lower, np.float32),
        grid_upper=np.array(config.model.grid_upper, np.float32),
        cameras=np.array([c.name for c in cameras]))
    if config.model.num_classes == len(CLASS_NAMES):
        arrays["class_names"] = np.array(CLASS_NAMES)
    if probabilities:
        arrays["probabilities"] = probs.astype(np.float16)
    np.savez_compressed(out / f"{stem}.npz", **arrays)
    picture = inference_picture(images[0], semantics, config.model.num_classes - 1)
    return {"npz": out / f"{stem}.npz", "png": save_png(out / f"{stem}.png", picture)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radocc.infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the camera-only student's experiment config (.toml)")
    parser.add_argument("--checkpoint", required=True, help="e.g. runs/<name>/best.pt")
    parser.add_argument("--images", required=True, metavar="DIR", help="the images of one frame")
    parser.add_argument("--calib", required=True, metavar="FILE", help="calibration JSON")
    parser.add_argument("--out", default="outputs/infer", metavar="DIR")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--probabilities", action="store_true",
                        help="also save the class probabilities (float16 [X, Y, Z, K])")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    try:
        written = run_inference(args.config, args.checkpoint, args.images, args.calib, args.out,
                                args.device, args.probabilities, args.set)
    except (ConfigError, InferenceError, FileNotFoundError) as exc:
        print(f"radocc.infer: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {written['npz']} and {written['png']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
