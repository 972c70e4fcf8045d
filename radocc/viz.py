"""Pictures: Occ3D class colours, depth colour maps, camera mosaics and bird's-eye views (PNG).

    python -m radocc.viz --data-root DIR [--version v1.0-mini] [--split val] [--index 0]
                         [--out sample.png]

draws one sample of a nuScenes-layout dataset: the six cameras, the Occ3D occupancy from above,
and the LiDAR points over it.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from radocc.occ3d import FREE

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radocc.viz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="nuScenes-layout dataset root")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--split", default="val")
    parser.add_argument("--index", type=int, default=0, help="sample index within the split")
    parser.add_argument("--height", type=int, default=225, help="camera picture height, pixels")
    parser.add_argument("--width", type=int, default=400, help="camera picture width, pixels")
    parser.add_argument("--out", default="outputs/sample.png")
    args = parser.parse_args(argv)
    from radocc.data import DatasetConfig, NuScenesOccDataset

    config = DatasetConfig(image_size=(args.height, args.width), load_segments=False)
    dataset = NuScenesOccDataset(args.data_root, args.version, args.split, config)
    if not 0 <= args.index < len(dataset):
        parser.error(f"--index must be in [0, {len(dataset)}) for split {args.split!r}")
    path = save_png(args.out, sample_overview(dataset[args.index], config.cameras))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
