"""Evaluate saved occupancy predictions with Occ3D's mIoU (camera mask) on a nuScenes split.

    python -m radocc.evaluate_occ --pred-dir DIR --data-root DIR [--version v1.0-trainval]
                                  [--split val] [--allow-missing] [--json]

The samples evaluated are the key frames of the scenes of the official split
(``nuscenes.utils.splits``; 'train' / 'val' mean mini_train / mini_val for v1.0-mini, and any split
name of the devkit is accepted), read from the nuScenes tables with nuscenes-devkit.
Predictions: ``DIR/<sample_token>.npz`` with key ``semantics``: uint8 labels [200, 200, 16], one for
every sample of the split (``--allow-missing`` skips samples without one and reports how many);
predictions of samples outside the split are ignored (and counted).
Ground truth: ``<data-root>/gts/<scene-name>/<sample-token>/labels.npz`` (keys ``semantics``,
``mask_lidar``, ``mask_camera``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from radocc.data import load_labels
from radocc.data.nuscenes_dataset import occ_path, open_split
from radocc.metrics import OCC3D_SHAPE, OccupancyMIoU


def split_gt_files(data_root: Path, version: str, split: str) -> tuple[str, dict[str, Path]]:
    """The devkit name of ``split`` and, for each of its samples (scene then time order), sample
    token -> ``<data_root>/gts/<scene>/<token>/labels.npz``.

    The samples come from the nuScenes tables (``radocc.data.nuscenes_dataset.open_split``).
    Raises DataError (a ValueError) on missing / broken tables, an unknown split or an empty one.
    """
    _, split_name, samples = open_split(str(data_root), version, split)
    return split_name, {sample["token"]: Path(data_root) / occ_path(scene["name"], sample["token"])
                        for scene, sample in samples}


def load_prediction(path: Path) -> np.ndarray:
    """The ``semantics`` array of the prediction npz at `path`, checked to be OCC3D_SHAPE with an
    integer (or bool) dtype. Raises ValueError naming the file when it is unreadable or wrong."""
    try:
        archive = np.load(path)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with archive:
            if "semantics" not in archive.files:
                raise ValueError(f"missing key(s) ['semantics']; has {archive.files}")
            pred = archive["semantics"]
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"{path}: cannot read npz ({e})") from e
    if pred.shape != OCC3D_SHAPE:
        raise ValueError(f"{path}: 'semantics' has shape {pred.shape}, expected {OCC3D_SHAPE}")
    if not (np.issubdtype(pred.dtype, np.integer) or pred.dtype == np.bool_):
        raise ValueError(
            f"{path}: 'semantics' has dtype {pred.dtype}, expected an integer (uint8) or bool array "
            f"of shape {OCC3D_SHAPE}")
    return pred


def evaluate(pred_dir: Path, data_root: Path, version: str = "v1.0-trainval", split: str = "val",
             allow_missing: bool = False, progress: bool = True) -> dict:
    """mIoU of the predictions ``pred_dir/<token>.npz`` of the samples of a nuScenes split against
    their Occ3D gt (camera mask).

    Every sample of the split needs a prediction, unless ``allow_missing`` (then those without one
    are skipped and counted); ``.npz`` files of tokens outside the split are ignored and counted.
    Returns ``{"mIoU": percent, "IoU": {class: percent}, "num_samples": evaluated, "num_missing":
    samples skipped without a prediction, "num_ignored": predictions not in the split, "version",
    "split": the devkit split name}``.
    Raises FileNotFoundError (missing folder, no or missing predictions) or ValueError (bad file or
    table; the data layer's DataError is one).
    """
    pred_dir, data_root = Path(pred_dir), Path(data_root)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_dir} does not exist")
    split_name, gt_files = split_gt_files(data_root, version, split)
    present = {p.stem for p in pred_dir.glob("*.npz")}
    if not present:
        raise FileNotFoundError(f"no <sample_token>.npz predictions in {pred_dir}")
    missing = [token for token in gt_files if token not in present]
    if missing and not allow_missing:
        raise FileNotFoundError(
            f"missing prediction {pred_dir / (missing[0] + '.npz')} for sample {missing[0]} "
            f"(gt {gt_files[missing[0]]}); {len(missing)} of the {len(gt_files)} samples of split "
            f"{split_name!r} ({version}) have no prediction (--allow-missing skips them)")
    tokens = [token for token in gt_files if token in present]
    if not tokens:
        raise FileNotFoundError(
            f"none of the {len(gt_files)} samples of split {split_name!r} ({version}) has a "
            f"prediction in {pred_dir} (expected e.g. {pred_dir / (missing[0] + '.npz')})")
    num_ignored = len(present) - len(tokens)

    metric = OccupancyMIoU()
    for token in tqdm(tokens, desc="mIoU", unit="sample", disable=not progress):
        gt = load_labels(str(gt_files[token]))
        pred_path = pred_dir / f"{token}.npz"
        pred = load_prediction(pred_path)
        try:
            metric.update(pred, gt.semantics, gt.mask_camera)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{pred_path} (gt {gt_files[token]}): {e}") from e
    return {**metric.compute(), "num_samples": len(tokens), "num_missing": len(missing),
            "num_ignored": num_ignored, "version": version, "split": split_name}


def format_table(result: dict) -> str:
    """The per-class IoU table and the mIoU, as text."""
    width = max(len(name) for name in result["IoU"]) + 2
    lines = [f"{'class':<{width}}{'IoU':>8}", "-" * (width + 8)]
    for name, iou in result["IoU"].items():
        lines.append(f"{name:<{width}}{'nan' if math.isnan(iou) else f'{iou:.2f}':>8}")
    lines += ["-" * (width + 8), f"{'mIoU':<{width}}{result['mIoU']:>8.2f}",
              f"({result['num_samples']} samples of split {result['split']} of {result['version']})"]
    if result["num_missing"]:
        lines.append(f"{result['num_missing']} sample(s) of the split had no prediction and were "
                     f"skipped (--allow-missing)")
    if result["num_ignored"]:
        lines.append(f"{result['num_ignored']} prediction(s) not in the split were ignored")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radocc.evaluate_occ", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred-dir", type=Path, required=True,
                        help="folder of <sample_token>.npz predictions (key 'semantics')")
    parser.add_argument("--data-root", type=Path, required=True,
                        help="nuScenes root holding <version>/*.json and gts/<scene>/<token>/labels.npz")
    parser.add_argument("--version", default="v1.0-trainval",
                        help="nuScenes version (tables folder under the data root); default %(default)s")
    parser.add_argument("--split", default="val",
                        help="'train' / 'val' (mini_train / mini_val for v1.0-mini) or a split name of "
                             "nuscenes.utils.splits; default %(default)s")
    parser.add_argument("--allow-missing", action="store_true",
                        help="skip samples of the split without a prediction (and report how many) "
                             "instead of failing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.pred_dir, args.data_root, args.version, args.split,
                          allow_missing=args.allow_missing)
    except (OSError, ValueError) as e:
        print(f"evaluate_occ: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        # nan (a class absent from gt and prediction) is not JSON: write null.
        result["IoU"] = {k: None if math.isnan(v) else v for k, v in result["IoU"].items()}
        if math.isnan(result["mIoU"]):
            result["mIoU"] = None
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
