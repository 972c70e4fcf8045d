"""radocc.data.stats: class counts over a split's camera-visible voxels, ENet class weights."""

import json
import math
import os

import numpy as np
import pytest

from radocc.data import occ3d
from radocc.data.nuscenes_dataset import occ_path, open_split
from radocc.data.stats import class_counts, class_weights, main


def test_counts_are_the_camera_visible_voxels_of_the_split(synthetic_root):
    counts = class_counts(synthetic_root, "v1.0-mini", "train")
    visible, hist = 0, np.zeros(occ3d.NUM_CLASSES, dtype=np.int64)
    for scene, sample in open_split(synthetic_root, "v1.0-mini", "train").samples:
        labels = occ3d.load_labels(os.path.join(synthetic_root, occ_path(scene["name"], sample["token"])))
        mask = labels.mask_camera.astype(bool)
        visible += int(mask.sum())
        hist += np.bincount(labels.semantics[mask], minlength=occ3d.NUM_CLASSES)
    assert counts.sum() == visible > 0
    np.testing.assert_array_equal(counts, hist)
    assert counts[occ3d.FREE] > counts[:occ3d.FREE].sum()  # mostly free space, as in Occ3D


def test_weights_follow_enet_and_free_weighs_one():
    counts = np.array([0, 10, 90, 900])
    w = class_weights(counts, free_index=3)
    f = counts / counts.sum()
    np.testing.assert_allclose(w, (1 / np.log(1.02 + f)) / (1 / math.log(1.02 + 0.9)))
    assert w[3] == 1.0 and w[0] > w[1] > w[2] > w[3]  # rarer -> heavier, an absent class heaviest


@pytest.mark.parametrize("counts, c", [([1, -1, 5], 1.02), ([0, 0, 0], 1.02), ([1, 2], 1.02),
                                       ([1, 2, 3], 1.0)])
def test_bad_weights_input(counts, c):
    with pytest.raises(ValueError, match="counts|c:"):
        class_weights(counts, free_index=2, c=c)


def test_cli_prints_weights_in_config_form(synthetic_root, capsys):
    assert main([synthetic_root, "--version", "v1.0-mini", "--split", "train", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["class_weights"]) == occ3d.NUM_CLASSES and out["class_weights"][occ3d.FREE] == 1.0
    assert main([synthetic_root, "--version", "v1.0-mini"]) == 0
    assert "class_weights = [" in capsys.readouterr().out


def test_cli_missing_root(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), "--version", "v1.0-mini"]) == 1
    assert "error" in capsys.readouterr().err
