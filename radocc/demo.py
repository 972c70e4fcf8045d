"""Renderer demo: a procedural street in the Occ3D grid seen by six nuScenes-like cameras.

    python -m radocc.demo [--out outputs/demo] [--height 225] [--width 400]

Writes ``bev.png`` (the scene from above), ``depth.png`` and ``semantics.png`` (2 x 3 camera
mosaics of the rendered depth and of the argmax of the rendered one-hot class features).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from radocc import viz
from radocc.rays import camera_rays
from radocc.render import VoxelGrid, volume_render
from radocc.data.rig import CAMERA_NAMES, camera_matrices

FREE, NUM_CLASSES = 17, 18
# Occ3D class ids used by the scene
BARRIER, CAR, PEDESTRIAN, TRUCK, ROAD, SIDEWALK, TERRAIN, MANMADE, VEGETATION = (
    1, 4, 7, 10, 11, 13, 14, 15, 16)


def street_scene(seed: int = 0) -> np.ndarray:
    """Semantics [200, 200, 16] (uint8, 17 = free) of a street along x: road, sidewalks,
    terrain, buildings, trees, parked cars and trucks, pedestrians and barriers."""
    rng = np.random.default_rng(seed)
    grid = VoxelGrid.occ3d()
    x, y, z = (np.asarray(grid.lower[a]) + (np.arange(n) + 0.5) * 0.4
               for a, n in enumerate((200, 200, 16)))
    sem = np.full((200, 200, 16), FREE, dtype=np.uint8)
    ground = int((0.0 - grid.lower[2]) / 0.4) - 1  # the layer just below z = 0
    ay = np.abs(y)
    sem[:, ay < 7, ground] = ROAD
    sem[:, (ay >= 7) & (ay < 10), ground] = SIDEWALK
    sem[:, ay >= 10, ground] = TERRAIN

    def box(x0, x1, y0, y1, z0, z1, label):
        ix = (x >= x0) & (x < x1)
        iy = (y >= y0) & (y < y1)
        iz = (z >= z0) & (z < z1)
        sem[np.ix_(ix, iy, iz)] = label

    for side in (-1, 1):
        for x0 in np.arange(-40, 40, 12.0):  # buildings behind the terrain strip
            depth, height = rng.uniform(6, 10), rng.uniform(3.0, 5.4)
            y0 = side * 16
            box(x0, x0 + rng.uniform(7, 11), min(y0, y0 + side * depth), max(y0, y0 + side * depth),
                0, height, MANMADE)
        for x0 in rng.uniform(-38, 38, 5):  # trees on the terrain
            yc = side * rng.uniform(11, 13.5)
            box(x0 - 1, x0 + 1, yc - 1, yc + 1, 0, 2.0, VEGETATION)
            box(x0 - 2, x0 + 2, yc - 2, yc + 2, 2.0, 4.5, VEGETATION)
        for x0 in rng.uniform(-35, 35, 4):  # parked vehicles on the road edge
            label = TRUCK if rng.random() < 0.25 else CAR
            length, height = (8.0, 3.2) if label == TRUCK else (4.5, 1.6)
            yc = side * 5.2
            box(x0, x0 + length, yc - 1, yc + 1, 0, height, label)
        for x0 in rng.uniform(-30, 30, 3):  # pedestrians on the sidewalk
            yc = side * rng.uniform(7.5, 9.5)
            box(x0, x0 + 0.6, yc, yc + 0.6, 0, 1.8, PEDESTRIAN)
    box(12, 14, -3, 3, 0, 1.0, BARRIER)  # a barrier across the lane ahead
    box(8, 12.5, 1.0, 3.0, 0, 1.6, CAR)  # a car in front of the ego vehicle
    return sem


def render_cameras(semantics: np.ndarray, image_size: tuple[int, int],
                   device: str = "cpu") -> dict[str, dict[str, np.ndarray]]:
    """Renders depth [H, W] and class ids [H, W] for each camera of the rig."""
    labels = torch.from_numpy(semantics.astype(np.int64)).to(device)
    density = torch.where(labels != FREE, 50.0, 0.0)[None]  # opaque voxels, sigma per metre
    onehot = torch.nn.functional.one_hot(labels, NUM_CLASSES).float()[None]
    intrinsics, cam2ego = (torch.from_numpy(m).float()[None].to(device)
                           for m in camera_matrices(image_size))
    origins, directions = camera_rays(intrinsics, cam2ego, image_size)
    out = volume_render(density, origins, directions, onehot)
    height, width = image_size
    depth = out.depth.reshape(len(CAMERA_NAMES), height, width).cpu()
    opacity = out.opacity.reshape(len(CAMERA_NAMES), height, width).cpu()
    classes = out.features.reshape(len(CAMERA_NAMES), height, width, NUM_CLASSES).argmax(-1).cpu()
    classes[opacity < 0.5] = FREE
    return {name: {"depth": depth[i].numpy(), "opacity": opacity[i].numpy(),
                   "classes": classes[i].numpy()} for i, name in enumerate(CAMERA_NAMES)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radocc.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo", help="folder for the PNG pictures")
    parser.add_argument("--height", type=int, default=225, help="camera image height, pixels")
    parser.add_argument("--width", type=int, default=400, help="camera image width, pixels")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.height < 1 or args.width < 1:
        parser.error("--height and --width must be positive")
    out = Path(args.out)
    semantics = street_scene()
    start = time.perf_counter()
    views = render_cameras(semantics, (args.height, args.width), args.device)
    seconds = time.perf_counter() - start
    rays = len(views) * args.height * args.width
    paths = [
        viz.save_png(out / "bev.png", viz.colorize_labels(viz.bev_labels(semantics)).repeat(
            3, axis=0).repeat(3, axis=1)),
        viz.save_png(out / "depth.png", viz.camera_mosaic(
            {n: viz.colorize_depth(v["depth"] / np.maximum(v["opacity"], 1e-6) * (
                v["opacity"] > 0.5)) for n, v in views.items()})),
        viz.save_png(out / "semantics.png", viz.camera_mosaic(
            {n: viz.colorize_labels(v["classes"]) for n, v in views.items()})),
    ]
    print(f"rendered {rays} rays through a 200x200x16 grid in {seconds:.2f} s on {args.device}")
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
