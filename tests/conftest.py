"""Shared fixtures."""

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> str:
    """A tiny synthetic Occ3D-nuScenes dataset (v1.0-mini layout: 2 scenes x 2 samples, 160x90 images),
    generated once per test session. Tests must not modify it: copy it first (see test_data.py)."""
    from radocc.data.synthetic import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(str(root), SyntheticConfig(scenes=2, samples_per_scene=2, seed=7, image_size=(90, 160),
                                        lidar_azimuths=720), verbose=False)
    return str(root)


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory) -> Path:
    """An empty folder for the runs one test module shares, removed when the module is done: the
    suite trains dozens of tiny models, and their checkpoints (tens of MB each) would otherwise
    pile up until the session ends. (A passing test's own ``tmp_path`` goes right away:
    ``tmp_path_retention_policy = "failed"`` in pyproject.toml.)"""
    folder = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
