"""One RadOcc training step at paper scale on CPU (slow: ``pytest -m slow tests/test_paper_scale.py``).

The real config file configs/occ3d/radocc_r50.toml (ResNet-50 student, 6 x 256 x 704 images, LSS
with 88 depth bins, the 200 x 200 x 16 Occ3D grid, 2048 rays per camera, RDC 100 + RSC 10 from a
camera + LiDAR teacher), with only the data root swapped for the tiny synthetic dataset, batch 1,
no loader workers, and a randomly initialised teacher (no teacher checkpoint exists here).
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "occ3d" / "radocc_r50.toml"


@pytest.fixture(scope="module")
def segmented_root(synthetic_root, tmp_path_factory) -> str:
    """A copy of the session's synthetic dataset with felzenszwalb segments (RSC needs segments)."""
    from radocc.segments import main as segments_main

    root = tmp_path_factory.mktemp("paper_scale_data") / "root"
    shutil.copytree(synthetic_root, root)
    assert segments_main(["--data-root", str(root), "--fallback", "felzenszwalb", "--no-progress"]) == 0
    return str(root)


@pytest.mark.slow
def test_one_paper_scale_step_on_cpu(segmented_root, tmp_path):
    from radocc.config import load_config, load_model_config
    from radocc.models import build_model
    from radocc.train import Trainer

    config = load_config(CONFIG, [f"data.root={json.dumps(segmented_root)}", 'data.version="v1.0-mini"',
                                  "data.num_workers=0", "data.batch_size=1"])
    # the paper scale is what runs
    assert config.model.camera.backbone == "resnet50" and config.model.grid_shape == (200, 200, 16)
    assert tuple(config.data.image_size) == (256, 704) and config.render.rays_per_image == 2048
    assert config.loss.rdc > 0 and config.loss.rsc > 0 and config.loss.rsc_mode == "affinity"
    teacher_config = load_model_config(REPO / config.teacher.config)
    assert teacher_config.modality == "fusion"
    trainer = Trainer(config, tmp_path / "run", progress=False, teacher=build_model(teacher_config))
    trainer.model.train()
    trainer.train_set.set_epoch(0)
    batch = next(iter(trainer.train_loader))
    assert batch["images"].shape == (1, 6, 3, 256, 704)
    assert batch["ray_pixels"].shape == (1, 6, 2048, 2)

    logged = trainer.step(batch)

    assert set(logged) == {"occupancy", "rdc", "rsc", "total"}
    assert all(math.isfinite(v) for v in logged.values()), logged
    assert logged["rdc"] > 0  # a random student renders differently from a random teacher
    missing = [name for name, p in trainer.model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"student parameters without a gradient: {missing[:10]}"
    for name, p in trainer.model.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    student = dict(trainer.model.named_parameters())
    for name in ("image_encoder.backbone.stem.0.weight",     # ResNet-50 conv1
                 "image_encoder.backbone.layer4.2.conv3.weight",
                 "view_transform.depth_net.weight",           # LSS depth + context
                 "bev_encoder.neck.up.1.weight",
                 "head.mlp.2.weight"):
        assert student[name].grad.abs().sum() > 0, name
    # the depth half of the LSS conv learns through the pooling and the rendered losses
    depth_rows = trainer.model.view_transform.num_depth
    assert trainer.model.view_transform.depth_net.weight.grad[:depth_rows].abs().sum() > 0
    assert not trainer.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
