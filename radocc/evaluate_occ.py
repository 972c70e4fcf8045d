"""Evaluate saved occupancy predictions with Occ3D's mIoU (camera mask).

    python -m radocc.evaluate_occ --pred-dir DIR --data-root DIR [--version v1.0-trainval]
                                  [--split val] [--json]

Predictions: ``DIR/<sample_token>.npz`` with key ``semantics``: uint8 labels [200, 200, 16].
Ground truth: ``<data-root>/gts/<scene-name>/<sample-token>/labels.npz`` (keys ``semantics``,
``mask_lidar``, ``mask_camera``). Every prediction in DIR is evaluated; each needs its gt.
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

from radocc.metrics import OCC3D_SHAPE, OccupancyMIoU


def find_gt_files(data_root: Path) -> dict[str, Path]:
    """Sample token -> its ``gts/<scene>/<token>/labels.npz`` under data_root.

    Found by globbing (a token names one sample of one scene). This is the one place to switch to
    the nuScenes tables (sample -> scene name) once nuscenes-devkit is wired in.
    """
    gts = Path(data_root) / "gts"
    if not gts.is_dir():
        raise FileNotFoundError(f"no gts/ folder under data root {data_root}")
    found: dict[str, Path] = {}
    for path in sorted(gts.glob("*/*/labels.npz")):
        token = path.parent.name
        if token in found:
            raise ValueError(f"sample token {token} has two gt files: {found[token]} and {path}")
        found[token] = path
    return found


def load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Arrays `keys` of the npz at `path`, each checked to be OCC3D_SHAPE with an integer or bool
    dtype. Raises ValueError naming the file when it is unreadable or an array is wrong."""
    try:
        archive = np.load(path)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise ValueError(f"missing key(s) {missing}; has {archive.files}")
            arrays = {k: archive[k] for k in keys}
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"{path}: cannot read npz ({e})") from e
    for key, a in arrays.items():
        if a.shape != OCC3D_SHAPE:
            raise ValueError(f"{path}: '{key}' has shape {a.shape}, expected {OCC3D_SHAPE}")
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(
                f"{path}: '{key}' has dtype {a.dtype}, expected an integer (uint8) or bool array "
                f"of shape {OCC3D_SHAPE}")
    return arrays


def evaluate(pred_dir: Path, data_root: Path, progress: bool = True) -> dict:
    """mIoU of every ``pred_dir/<token>.npz`` against its Occ3D gt (camera mask).

    Returns ``{"mIoU": percent, "IoU": {class: percent}, "num_samples": int}``.
    Raises FileNotFoundError (missing folder, no predictions, missing gt) or ValueError (bad file).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_dir} does not exist")
    preds = sorted(pred_dir.glob("*.npz"))
    if not preds:
        raise FileNotFoundError(f"no <sample_token>.npz predictions in {pred_dir}")
    gt_files = find_gt_files(Path(data_root))
    missing = [p for p in preds if p.stem not in gt_files]
    if missing:
        raise FileNotFoundError(
            f"no gt for prediction {missing[0]} (expected {data_root}/gts/<scene>/{missing[0].stem}"
            f"/labels.npz); {len(missing)} of {len(preds)} predictions have none")

    metric = OccupancyMIoU()
    for pred_path in tqdm(preds, desc="mIoU", unit="sample", disable=not progress):
        gt = load_npz(gt_files[pred_path.stem], ("semantics", "mask_camera"))
        pred = load_npz(pred_path, ("semantics",))["semantics"]
        try:
            metric.update(pred, gt["semantics"], gt["mask_camera"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{pred_path} (gt {gt_files[pred_path.stem]}): {e}") from e
    return {**metric.compute(), "num_samples": len(preds)}


def format_table(result: dict) -> str:
    """The per-class IoU table and the mIoU, as text."""
    width = max(len(name) for name in result["IoU"]) + 2
    lines = [f"{'class':<{width}}{'IoU':>8}", "-" * (width + 8)]
    for name, iou in result["IoU"].items():
        lines.append(f"{name:<{width}}{'nan' if math.isnan(iou) else f'{iou:.2f}':>8}")
    lines += ["-" * (width + 8), f"{'mIoU':<{width}}{result['mIoU']:>8.2f}",
              f"({result['num_samples']} samples)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radocc.evaluate_occ", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred-dir", type=Path, required=True,
                        help="folder of <sample_token>.npz predictions (key 'semantics')")
    parser.add_argument("--data-root", type=Path, required=True,
                        help="nuScenes root holding gts/<scene>/<token>/labels.npz")
    parser.add_argument("--version", default="v1.0-trainval",
                        help="nuScenes version; not used yet (gts are found by globbing)")
    parser.add_argument("--split", default="val",
                        help="nuScenes split; not used yet (every prediction is evaluated)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.pred_dir, args.data_root)
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
