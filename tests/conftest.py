"""Shared fixtures."""

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
