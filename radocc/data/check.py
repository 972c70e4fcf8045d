"""What of the Occ3D-nuScenes layout a data root holds, and how to get what it lacks.

    python -m radocc.data.check DATA_ROOT [--version V] [--split S] [--require PART ...] [--json]

Parts (see DESIGN.md, "Data on disk"), counted for the key frames of one split:

- ``tables``: the 13 nuScenes tables ``<root>/<version>/*.json`` (opened with the devkit).
- ``samples``: the key frames' six camera JPEGs and LIDAR_TOP ``.pcd.bin`` (``samples/``).
- ``sweeps``: the LIDAR_TOP sweeps between them (``sweeps/``), only for ``lidar_sweeps > 0``.
- ``gts``: Occ3D labels ``gts/<scene>/<sample token>/labels.npz``, one per key frame.
- ``masks``: ``mask_lidar`` and ``mask_camera`` in a few of those files (not all are opened).
- ``segments``: SAM segment maps ``sam_segments/<CAM>/<image stem>.png``, one per camera image.
- ``map_expansion``: ``maps/expansion/<location>.json`` for the locations of the split's logs.

`check_data_root` returns a `CheckReport`; ``report.raise_if_missing(parts)`` raises
`radocc.data.DataError` with the readable report, so training can refuse a root before it starts.
The CLI prints one line per part and exits 0 when the required parts (default: tables, samples,
gts) are all present, 1 otherwise.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import zipfile
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from radocc.data.errors import DataError
from radocc.data.nuscenes_dataset import (
    SEGMENTS_DIR, occ_path, open_split, resolve_split,
)
from radocc.data.nuscenes_tables import TABLE_NAMES
from radocc.data.rig import CAMERA_NAMES, LIDAR_NAME

__all__ = ["PARTS", "DEFAULT_REQUIRE", "PartStatus", "CheckReport", "check_data_root", "main"]

PARTS: tuple[str, ...] = (
    "tables", "samples", "sweeps", "gts", "masks", "segments", "map_expansion",
)
DEFAULT_REQUIRE: tuple[str, ...] = ("tables", "samples", "gts")
MASK_FILES_CHECKED = 3
"""How many labels.npz files (evenly spread over the present ones) are opened for the masks."""
MASK_KEYS = ("mask_lidar", "mask_camera")
NUSCENES_DOWNLOAD = "the nuScenes download page (https://www.nuscenes.org/nuscenes#download)"


def _hints(root: str, version: str) -> dict[str, str]:
    """Where each part comes from."""
    synthetic = f"or python -m radocc.data.synthetic --out {root} for a synthetic root"
    return {
        "tables": f"nuScenes metadata for {version} from {NUSCENES_DOWNLOAD}, unpacked into "
                  f"{os.path.join(root, version)}/ ({synthetic})",
        "samples": f"nuScenes file blobs (samples/CAM_*/*.jpg, samples/LIDAR_TOP/*.pcd.bin) from "
                   f"{NUSCENES_DOWNLOAD}, unpacked into {root}/ ({synthetic})",
        "sweeps": f"nuScenes file blobs (sweeps/LIDAR_TOP/*.pcd.bin) from {NUSCENES_DOWNLOAD}, "
                  f"unpacked into {root}/; needed only with lidar_sweeps > 0",
        "gts": f"Occ3D-nuScenes gts from the Occ3D project (github.com/Tsinghua-MARS-Lab/Occ3D), "
               f"unpacked into {os.path.join(root, 'gts')}/ ({synthetic})",
        "masks": "Occ3D-nuScenes labels.npz carry mask_lidar and mask_camera: take gts from the "
                 "Occ3D project (github.com/Tsinghua-MARS-Lab/Occ3D)",
        "segments": f"python -m radocc.segments --data-root {root} --checkpoint "
                    f"sam_vit_h_4b8939.pth --model-type vit_h (or --fallback felzenszwalb, no "
                    f"checkpoint needed)",
        "map_expansion": f"the map expansion pack (v1.3) from {NUSCENES_DOWNLOAD}, unpacked into "
                         f"{os.path.join(root, 'maps')}/ (maps/expansion/<location>.json)",
    }


@dataclass(frozen=True)
class PartStatus:
    """One part of a data root.

    present: files (or tables) found; expected: how many the split needs (None when that cannot
    be told, e.g. without the tables); ok: everything expected is there; required: the check was
    asked to require it; hint: where the part comes from; detail: what is wrong (e.g. the first
    missing files), empty when ok.
    """

    name: str
    present: int
    expected: int | None
    ok: bool
    required: bool
    hint: str
    detail: str = ""

    def line(self) -> str:
        """One readable line: status, counts, what is wrong and how to get it."""
        status = "ok" if self.ok else ("MISSING" if self.required else "missing (optional)")
        counts = f"{self.present} / {'?' if self.expected is None else self.expected}"
        text = f"{self.name:<14} {counts:>13}  {status}"
        if self.detail:
            text += f": {self.detail}"
        if not self.ok:
            text += f"; get it: {self.hint}"
        return text


@dataclass(frozen=True)
class CheckReport:
    """What `check_data_root` found; ``parts`` in `PARTS` order."""

    root: str
    version: str
    split: str
    """The devkit split name (e.g. 'mini_train' for 'train' of v1.0-mini)."""
    require: tuple[str, ...]
    parts: tuple[PartStatus, ...]

    def part(self, name: str) -> PartStatus:
        """The status of part ``name`` (one of `PARTS`)."""
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(f"unknown part {name!r}: expected one of {list(PARTS)}")

    def missing(self, parts: Iterable[str] | None = None) -> list[str]:
        """Names of the not-ok parts among ``parts`` (default: the required ones)."""
        names = _check_part_names(self.require if parts is None else parts, "parts")
        return [n for n in names if not self.part(n).ok]

    @property
    def ok(self) -> bool:
        """Every required part is present."""
        return not self.missing()

    def format(self) -> str:
        """The readable report: a header, one line per part, a verdict."""
        lines = [f"data root {self.root} ({self.version}, split {self.split}):"]
        lines += ["  " + p.line() for p in self.parts]
        missing = self.missing()
        lines.append(f"missing required part(s): {', '.join(missing)}" if missing else
                     f"ready: required part(s) {', '.join(self.require)} present")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-able: root, version, split, require, ok and the parts as dicts."""
        return dict(root=self.root, version=self.version, split=self.split,
                    require=list(self.require), ok=self.ok,
                    parts=[asdict(p) for p in self.parts])

    def raise_if_missing(self, required_parts: Iterable[str] | None = None) -> None:
        """Raise DataError with the readable report unless every part of ``required_parts``
        (default: ``require``) is present."""
        missing = self.missing(required_parts)
        if missing:
            raise DataError(f"data root {self.root} ({self.version}, split {self.split}) lacks "
                            f"{', '.join(missing)}:\n" + self.format())


def _check_part_names(parts: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(parts, str):
        parts = (parts,)
    parts = tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"{what} has unknown part(s) {unknown}: expected some of {list(PARTS)}")
    return parts


# ----------------------------------------------------------------------------- file counting
class _Listing:
    """Existence checks through one directory listing per folder (millions of stat calls on a
    network file system are slow; a few thousand listings are not)."""

    def __init__(self, root: str):
        self.root = root
        self.cache: dict[str, frozenset[str]] = {}

    def exists(self, rel: str) -> bool:
        folder, name = os.path.split(os.path.join(self.root, rel))
        if folder not in self.cache:
            try:
                self.cache[folder] = frozenset(os.listdir(folder))
            except OSError:  # missing folder (or not a folder)
                self.cache[folder] = frozenset()
        return name in self.cache[folder]

    def count(self, rels: Sequence[str]) -> tuple[int, str]:
        """(how many of ``rels`` exist, a detail naming the first missing one)."""
        missing = [r for r in rels if not self.exists(r)]
        if not missing:
            return len(rels), ""
        return len(rels) - len(missing), f"{len(missing)} missing, e.g. {missing[0]}"


def _check_masks(root: str, gt_files: Sequence[str]) -> tuple[int, int, str]:
    """Open a few present labels.npz: (how many have both masks, how many opened, detail)."""
    if not gt_files:
        return 0, 0, "no labels.npz to look into"
    pick = np.unique(np.linspace(0, len(gt_files) - 1, MASK_FILES_CHECKED).round().astype(int))
    good, problems = 0, []
    for rel in (gt_files[i] for i in pick):
        try:
            with np.load(os.path.join(root, rel), allow_pickle=False) as npz:
                lacking = [k for k in MASK_KEYS if k not in npz.files]
                keys = npz.files
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            problems.append(f"{rel} cannot be read ({type(exc).__name__})")
            continue
        if lacking:
            problems.append(f"{rel} lacks {', '.join(lacking)} (has {', '.join(keys)})")
        else:
            good += 1
    return good, len(pick), "; ".join(problems)


# ----------------------------------------------------------------------------- the check
def check_data_root(root: str | os.PathLike[str], version: str = "v1.0-trainval",
                    split: str = "train",
                    require: Iterable[str] = DEFAULT_REQUIRE) -> CheckReport:
    """Count what of the Occ3D-nuScenes layout ``root`` holds for the key frames of ``split``.

    Args:
        root: the nuScenes root.
        version: the tables' version ('v1.0-trainval', 'v1.0-mini', 'v1.0-test').
        split: 'train' / 'val' (mini_train / mini_val for v1.0-mini) or a devkit split name.
        require: parts (of `PARTS`) that must be present for ``report.ok``.
    Returns:
        A `CheckReport`. Without usable tables the split's files cannot be listed: the other
        parts then count the matching files on disk, with ``expected`` None and not ok.
    Raises:
        DataError: ``root`` is not a directory, or ``split`` is unknown for ``version``.
        ValueError: ``require`` names an unknown part.
    """
    require = _check_part_names(require, "require")
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DataError(f"dataset root {root} does not exist or is not a directory (expected a "
                        f"nuScenes root holding {version}/, samples/, gts/)")
    split_name = resolve_split(version, split)
    hints = _hints(root, version)
    found: dict[str, tuple[int, int | None, str]] = {}  # name -> present, expected, detail

    table_dir = os.path.join(root, version)
    tables_present = sum(os.path.isfile(os.path.join(table_dir, f"{t}.json")) for t in TABLE_NAMES)
    try:
        nusc, _, samples = open_split(root, version, split_name)
    except DataError as exc:
        found["tables"] = (tables_present, len(TABLE_NAMES), str(exc))
        found.update(_count_on_disk(root))
    else:
        found["tables"] = (tables_present, len(TABLE_NAMES), "")
        found.update(_count_for_split(root, nusc, samples))

    parts = []
    for name in PARTS:
        present, expected, detail = found[name]
        ok = expected is not None and present == expected and not detail
        parts.append(PartStatus(name, present, expected, ok, name in require, hints[name], detail))
    return CheckReport(root, version, split_name, require, tuple(parts))


def _count_for_split(root: str, nusc, samples) -> dict[str, tuple[int, int | None, str]]:
    """Every part's (present, expected, detail) for the split's key frames, from the tables."""
    files = _Listing(root)
    sample_files, segment_files, gt_files, no_record = [], [], [], []
    for scene, sample in samples:
        for channel in CAMERA_NAMES + (LIDAR_NAME,):
            if channel not in sample["data"]:
                no_record.append(f"sample {sample['token']} has no {channel} record")
                continue
            filename = nusc.get("sample_data", sample["data"][channel])["filename"]
            sample_files.append(filename)
            if channel != LIDAR_NAME:
                stem = os.path.splitext(os.path.basename(filename))[0]
                segment_files.append(f"{SEGMENTS_DIR}/{channel}/{stem}.png")
        gt_files.append(occ_path(scene["name"], sample["token"]))

    def counted(rels: Sequence[str]) -> tuple[int, int, str]:
        present, detail = files.count(rels)
        return present, len(rels), detail

    present, expected, detail = counted(sample_files)
    if no_record:
        detail = "; ".join(filter(None, [detail, no_record[0]]))
    out = {"samples": (present, expected + len(no_record), detail)}
    tokens = {sample["token"] for _, sample in samples}
    out["sweeps"] = counted([sd["filename"] for sd in nusc.sample_data
                             if not sd["is_key_frame"] and sd["channel"] == LIDAR_NAME
                             and sd["sample_token"] in tokens])
    out["gts"] = counted(gt_files)
    out["masks"] = _check_masks(root, [g for g in gt_files if files.exists(g)])
    out["segments"] = counted(segment_files)
    scenes = {scene["token"]: scene for scene, _ in samples}.values()
    locations = sorted({nusc.get("log", scene["log_token"])["location"] for scene in scenes})
    out["map_expansion"] = counted([f"maps/expansion/{loc}.json" for loc in locations])
    return out


def _count_on_disk(root: str) -> dict[str, tuple[int, int | None, str]]:
    """Without tables: the files of each part found on disk; none can be checked."""
    def n(pattern: str) -> int:
        return len(glob.glob(os.path.join(glob.escape(root), pattern)))

    unknown = "files on disk; which ones the split needs cannot be told without the tables"
    gts = sorted(os.path.relpath(p, root)
                 for p in glob.glob(os.path.join(glob.escape(root), "gts/*/*/labels.npz")))
    good, opened, detail = _check_masks(root, gts)
    return {
        "samples": (n("samples/CAM_*/*.jpg") + n(f"samples/{LIDAR_NAME}/*.pcd.bin"), None, unknown),
        "sweeps": (n(f"sweeps/{LIDAR_NAME}/*.pcd.bin"), None, unknown),
        "gts": (len(gts), None, unknown),
        "masks": (good, opened, detail),
        "segments": (n(f"{SEGMENTS_DIR}/CAM_*/*.png"), None, unknown),
        "map_expansion": (n("maps/expansion/*.json"), None, unknown),
    }


# ----------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m radocc.data.check",
        description="Report which parts of the Occ3D-nuScenes layout a data root holds for a "
                    "split, and how to get the missing ones. Exit status 0 when the required "
                    "parts are present, 1 otherwise.")
    p.add_argument("data_root", metavar="DATA_ROOT", help="the nuScenes root")
    p.add_argument("--version", default="v1.0-trainval",
                   help="tables version (default v1.0-trainval; v1.0-mini for the synthetic root)")
    p.add_argument("--split", default="train", help="train / val or a devkit split (default train)")
    p.add_argument("--require", nargs="+", choices=PARTS, default=list(DEFAULT_REQUIRE),
                   metavar="PART", help=f"parts that must be present, of {', '.join(PARTS)} "
                                        f"(default: {' '.join(DEFAULT_REQUIRE)})")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        report = check_data_root(args.data_root, args.version, args.split, require=args.require)
    except DataError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
