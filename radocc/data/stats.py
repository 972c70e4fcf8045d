"""Class frequencies of a split's Occ3D labels, and cross-entropy class weights from them.

    python -m radocc.data.stats DATA_ROOT [--version V] [--split S] [--json]

Counts the voxels of each class where ``mask_camera`` is set (the voxels the occupancy loss and
the mIoU see) over every key frame of the split, and prints the frequencies and the class weights
of :func:`class_weights` in the TOML form ``loss.class_weights`` takes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import numpy as np

from radocc.data import occ3d
from radocc.data.errors import DataError
from radocc.data.nuscenes_dataset import occ_path, open_split

__all__ = ["class_counts", "class_weights", "main"]


def class_counts(root: str, version: str, split: str, num_classes: int = occ3d.NUM_CLASSES) -> np.ndarray:
    """Camera-visible voxels per class over the split's key frames: int64 [num_classes].

    Raises DataError when a label file is missing or broken (it names the file).
    """
    samples = open_split(root, version, split)
    counts = np.zeros(num_classes, dtype=np.int64)
    for scene, sample in samples.samples:
        labels = occ3d.load_labels(os.path.join(root, occ_path(scene["name"], sample["token"])))
        visible = labels.semantics[labels.mask_camera.astype(bool)]
        if visible.size and int(visible.max()) >= num_classes:
            raise DataError(f"labels of sample {sample['token']} hold class {int(visible.max())}, "
                            f"expected < {num_classes}")
        counts += np.bincount(visible.ravel(), minlength=num_classes)
    return counts


def class_weights(counts: Sequence[int] | np.ndarray, free_index: int = occ3d.FREE,
                  c: float = 1.02) -> np.ndarray:
    """ENet's class weights 1 / ln(c + f_k) of the class frequencies f_k, divided by the free class's
    weight (so free space weighs 1 and a rare class about 1 / ln(c) / 1.4 ~ 35 for c = 1.02).

    A class that never occurs gets the largest weight (f = 0). float64 [K].
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size <= free_index or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"counts: expected K > {free_index} non-negative class counts with a "
                         f"positive sum, got {counts.tolist()}")
    if c <= 1.0:
        raise ValueError(f"c: expected > 1 (weights 1 / ln(c + f) must be finite), got {c}")
    weights = 1.0 / np.log(c + counts / counts.sum())
    return weights / weights[free_index]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radocc.data.stats", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_root")
    parser.add_argument("--version", default="v1.0-trainval")
    parser.add_argument("--split", default="train")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        counts = class_counts(args.data_root, args.version, args.split)
    except DataError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    weights = class_weights(counts)
    freq = counts / counts.sum()
    if args.json:
        print(json.dumps({"classes": list(occ3d.CLASS_NAMES), "counts": counts.tolist(),
                          "frequency": freq.tolist(), "class_weights": weights.tolist()}, indent=2))
        return 0
    print(f"{'class':22s} {'voxels':>12s} {'frequency':>10s} {'weight':>8s}")
    for name, n, f, w in zip(occ3d.CLASS_NAMES, counts, freq, weights):
        print(f"{name:22s} {n:12d} {100 * f:9.3f}% {w:8.2f}")
    print("class_weights = [" + ", ".join(f"{w:.2f}" for w in weights) + "]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
