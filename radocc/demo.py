"""Renderer demo: a procedural street in the Occ3D grid seen by the six nuScenes cameras.

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
from radocc.data import occ3d
from radocc.data.rig import CAMERA_NAMES, camera_matrices
from radocc.data.world import build_world, downsample_labels, rasterise
from radocc.rays import camera_rays
from radocc.render import volume_render


def street_scene(seed: int = 0) -> np.ndarray:
    """Semantics [200, 200, 16] (uint8, 17 = free) of a procedural street (the synthetic dataset's
    world generator: road, lanes, crossings, sidewalks, buildings, trees, vehicles, pedestrians),
    rasterised on the Occ3D grid around the ego vehicle at the start of its drive."""
    world = build_world(np.random.default_rng(seed), duration=4.0, road2global=(0.0, 0.0, 0.0))
    fine = rasterise(world, 0.0, voxel_size=occ3d.VOXEL_SIZE / 2)  # as the dataset generator does
    return downsample_labels(fine.labels, 2)


def render_cameras(semantics: np.ndarray, image_size: tuple[int, int],
                   device: str = "cpu") -> dict[str, dict[str, np.ndarray]]:
    """Renders depth [H, W] and class ids [H, W] for each camera of the rig."""
    labels = torch.from_numpy(semantics.astype(np.int64)).to(device)
    density = torch.where(labels != occ3d.FREE, 50.0, 0.0)[None]  # opaque voxels, sigma per metre
    onehot = torch.nn.functional.one_hot(labels, occ3d.NUM_CLASSES).float()[None]
    intrinsics, cam2ego = (torch.from_numpy(m).float()[None].to(device)
                           for m in camera_matrices(image_size))
    origins, directions = camera_rays(intrinsics, cam2ego, image_size)
    out = volume_render(density, origins, directions, onehot)
    height, width = image_size
    depth = out.depth.reshape(len(CAMERA_NAMES), height, width).cpu()
    opacity = out.opacity.reshape(len(CAMERA_NAMES), height, width).cpu()
    classes = out.features.reshape(len(CAMERA_NAMES), height, width, occ3d.NUM_CLASSES).argmax(-1).cpu()
    classes[opacity < 0.5] = occ3d.FREE
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
