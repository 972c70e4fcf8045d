"""Tests of radocc.data.check on the session's synthetic v1.0-mini root (copied before any change)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from radocc import segments as seg
from radocc.data import DataError
from radocc.data.check import DEFAULT_REQUIRE, PARTS, check_data_root, main

REPO = Path(__file__).resolve().parents[1]
VERSION = "v1.0-mini"
TRAIN_SCENE = "scene-0061"  # mini_train's scene in the synthetic root (mini_val: scene-0103)


@pytest.fixture
def root(synthetic_root, tmp_path) -> Path:
    """A private copy of the synthetic root, free to break."""
    copy = tmp_path / "root"
    shutil.copytree(synthetic_root, copy)
    return copy


def counts(report) -> dict[str, tuple[int, int | None, bool]]:
    return {p.name: (p.present, p.expected, p.ok) for p in report.parts}


def train_tokens(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "gts" / TRAIN_SCENE).iterdir())


def test_complete_root_counts_every_part(synthetic_root):
    report = check_data_root(synthetic_root, VERSION, "train")
    assert report.split == "mini_train" and report.require == DEFAULT_REQUIRE
    # 2 key frames of 6 cameras + 1 LiDAR; no sweeps referenced; one location (boston-seaport)
    assert counts(report) == {
        "tables": (13, 13, True), "samples": (14, 14, True), "sweeps": (0, 0, True),
        "gts": (2, 2, True), "masks": (2, 2, True), "segments": (0, 12, False),
        "map_expansion": (1, 1, True),
    }
    assert report.ok and report.missing() == []
    report.raise_if_missing()  # tables, samples, gts: present
    # The fixture has no segments: required, they are reported with how to make them.
    assert report.missing(["segments"]) == ["segments"]
    with pytest.raises(DataError) as info:
        report.raise_if_missing(["tables", "segments"])
    message = str(info.value)
    assert "lacks segments" in message
    assert f"python -m radocc.segments --data-root {synthetic_root}" in message
    assert "--fallback felzenszwalb" in message
    assert check_data_root(synthetic_root, VERSION, "val").split == "mini_val"


def test_segments_present_after_radocc_segments_then_missing_when_deleted(root):
    assert seg.main(["--data-root", str(root), "--fallback", "felzenszwalb", "--no-progress"]) == 0
    report = check_data_root(root, VERSION, "train", require=PARTS[:2] + ("segments",))
    assert counts(report)["segments"] == (12, 12, True)
    assert all(p.ok for p in report.parts) and report.ok
    shutil.rmtree(root / "sam_segments")
    report = check_data_root(root, VERSION, "train", require=PARTS[:2] + ("segments",))
    segments = report.part("segments")
    assert (segments.present, segments.expected, segments.ok) == (0, 12, False)
    assert segments.required and not report.ok
    assert "sam_segments/CAM_" in segments.detail and "radocc.segments" in segments.hint
    assert "segments" in report.format().splitlines()[-1]


def test_deleted_files_are_reported_missing_with_their_hints(root):
    token = train_tokens(root)[1]
    gt = Path("gts") / TRAIN_SCENE / token / "labels.npz"
    (root / gt).unlink()
    for path in (root / "samples" / "CAM_BACK").glob("*.jpg"):
        path.unlink()  # 4 images: 2 of mini_train's key frames, 2 of mini_val's
    for loc in (root / "maps" / "expansion").glob("*.json"):
        loc.unlink()

    report = check_data_root(root, VERSION, "train")
    c = counts(report)
    assert c["gts"] == (1, 2, False) and c["samples"] == (12, 14, False)
    assert c["map_expansion"] == (0, 1, False) and c["masks"] == (1, 1, True)
    assert c["tables"] == (13, 13, True)
    assert report.missing() == ["samples", "gts"] and not report.ok
    gts, samples, maps = report.part("gts"), report.part("samples"), report.part("map_expansion")
    assert str(gt) in gts.detail and "Tsinghua-MARS-Lab/Occ3D" in gts.hint
    assert "2 missing, e.g. samples/CAM_BACK/" in samples.detail
    assert "nuScenes download page" in samples.hint
    assert "maps/expansion/boston-seaport.json" in maps.detail
    assert "map expansion pack" in maps.hint and not maps.required
    with pytest.raises(DataError) as info:
        report.raise_if_missing()
    message = str(info.value)
    assert "lacks samples, gts" in message and str(gt) in message
    lines = message.splitlines()
    assert any(l.strip().startswith("gts") and "MISSING" in l and "Occ3D" in l for l in lines)
    assert any(l.strip().startswith("map_expansion") and "missing (optional)" in l
               for l in lines)


def test_labels_without_masks_are_reported(root):
    token = train_tokens(root)[0]
    path = root / "gts" / TRAIN_SCENE / token / "labels.npz"
    with np.load(path) as npz:
        semantics = npz["semantics"]
    np.savez_compressed(path, semantics=semantics, mask_lidar=np.ones_like(semantics))
    masks = check_data_root(root, VERSION, "train").part("masks")
    assert (masks.present, masks.expected, masks.ok) == (1, 2, False)
    assert f"gts/{TRAIN_SCENE}/{token}/labels.npz lacks mask_camera" in masks.detail
    path.write_bytes(b"not an npz")
    masks = check_data_root(root, VERSION, "train").part("masks")
    assert not masks.ok and "cannot be read" in masks.detail


def test_lidar_sweeps_are_counted_when_referenced(root):
    tables = root / VERSION / "sample_data.json"
    records = json.loads(tables.read_text())
    sensors = {c["token"]: c["sensor_token"] for c in
               json.loads((root / VERSION / "calibrated_sensor.json").read_text())}
    lidar = {s["token"] for s in json.loads((root / VERSION / "sensor.json").read_text())
             if s["channel"] == "LIDAR_TOP"}
    key = next(r for r in records if sensors[r["calibrated_sensor_token"]] in lidar)
    sweep = dict(key, token="f" * 32, is_key_frame=False, prev="", next="",
                 filename="sweeps/LIDAR_TOP/sweep0.pcd.bin")
    tables.write_text(json.dumps(records + [sweep]))
    splits = {check_data_root(root, VERSION, s).part("sweeps").expected for s in ("train", "val")}
    assert splits == {0, 1}  # the sweep belongs to one split's key frame
    split = "train" if check_data_root(root, VERSION, "train").part("sweeps").expected else "val"
    sweeps = check_data_root(root, VERSION, split).part("sweeps")
    assert (sweeps.present, sweeps.expected, sweeps.ok) == (0, 1, False)
    assert "sweeps/LIDAR_TOP/sweep0.pcd.bin" in sweeps.detail and "lidar_sweeps" in sweeps.hint
    (root / "sweeps" / "LIDAR_TOP").mkdir(parents=True)
    (root / "sweeps" / "LIDAR_TOP" / "sweep0.pcd.bin").write_bytes(b"\0" * 20)
    assert check_data_root(root, VERSION, split).part("sweeps").ok


def test_missing_tables_leave_the_split_unknown(root, synthetic_root):
    (root / VERSION / "sample.json").unlink()
    report = check_data_root(root, VERSION, "train")
    tables = report.part("tables")
    assert (tables.present, tables.expected, tables.ok) == (12, 13, False)
    assert "sample.json" in tables.detail and "nuScenes download page" in tables.hint
    assert "python -m radocc.data.synthetic --out" in tables.hint
    c = counts(report)
    # what lies on disk (both splits), nothing checked against the split
    assert c["samples"] == (28, None, False) and c["gts"] == (4, None, False)
    assert report.missing() == ["tables", "samples", "gts"]
    # another version than the tables': the versions present are named
    tables = check_data_root(synthetic_root, "v1.0-trainval", "train").part("tables")
    assert tables.present == 0 and "v1.0-mini" in tables.detail


def test_bad_arguments_give_clear_errors(synthetic_root, tmp_path):
    with pytest.raises(DataError, match=r"dataset root .*nope does not exist"):
        check_data_root(tmp_path / "nope", VERSION)
    with pytest.raises(DataError, match=r"unknown split 'nope' for v1\.0-mini"):
        check_data_root(synthetic_root, VERSION, "nope")
    with pytest.raises(ValueError, match=r"require has unknown part\(s\) \['gt'\]"):
        check_data_root(synthetic_root, VERSION, require=("tables", "gt"))
    report = check_data_root(synthetic_root, VERSION)
    with pytest.raises(ValueError, match=r"parts has unknown part"):
        report.raise_if_missing(["sam"])
    with pytest.raises(KeyError, match="unknown part"):
        report.part("sam")


def test_cli_exit_codes_text_and_json(synthetic_root, tmp_path, capsys):
    assert main([synthetic_root, "--version", VERSION]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"data root {synthetic_root} ({VERSION}, split mini_train):"
    assert len(out) == 2 + len(PARTS)  # header, one line per part, verdict
    assert out[-1].startswith("ready: ")
    assert main([synthetic_root, "--version", VERSION, "--require", "gts", "segments"]) == 1
    assert "missing required part(s): segments" in capsys.readouterr().out

    assert main([synthetic_root, "--version", VERSION, "--split", "val", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["split"], result["ok"], result["require"]) == ("mini_val", True,
                                                                  list(DEFAULT_REQUIRE))
    parts = {p["name"]: p for p in result["parts"]}
    assert list(parts) == list(PARTS)
    assert parts["gts"]["present"] == parts["gts"]["expected"] == 2
    assert parts["segments"]["ok"] is False and "radocc.segments" in parts["segments"]["hint"]

    assert main([str(tmp_path / "nope")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("python -m radocc.data.check: error: dataset root")


def test_cli_as_a_module(synthetic_root):
    proc = subprocess.run([sys.executable, "-m", "radocc.data.check", synthetic_root],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1  # the default v1.0-trainval tables are not there
    assert "no nuScenes tables for version 'v1.0-trainval'" in proc.stdout
    assert "missing required part(s): tables, samples, gts" in proc.stdout
