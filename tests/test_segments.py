"""radocc.segments: masks -> ids, SAM loading, the data-root walker and CLI, the PNG format.

No SAM checkpoint can be downloaded, so the real SamAutomaticMaskGenerator runs here on a tiny
random-weight Sam assembled from segment_anything's own modules.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import segment_anything
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from radocc import segments as seg

# Settings under which the tiny random Sam below (seed 7) yields several overlapping masks.
TINY_SEED = 7
TINY_GENERATOR = {
    "points_per_side": 8,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 0.95,
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads; 2 threads on a busy 2-core box spin for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_tiny_sam(checkpoint: str | None = None, *, seed: int = TINY_SEED, dim: int = 32) -> Sam:
    """A registry-style builder: a ~100k-parameter Sam on 64x64 inputs."""
    torch.manual_seed(seed)
    img_size, patch = 64, 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=patch,
            embed_dim=dim,
            depth=1,
            num_heads=2,
            mlp_ratio=2,
            out_chans=dim,
            qkv_bias=True,
            use_rel_pos=True,
            window_size=0,
            global_attn_indexes=(),
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(img_size // patch, img_size // patch),
            input_image_size=(img_size, img_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            num_multimask_outputs=3,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
    ).eval()
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, weights_only=True))
    return sam


@pytest.fixture(scope="module")
def tiny_generator() -> SamAutomaticMaskGenerator:
    return SamAutomaticMaskGenerator(build_tiny_sam(), **TINY_GENERATOR)


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_sam.pth"
    torch.save(build_tiny_sam().state_dict(), path)
    return path


def blocky_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """[H, W, 3] uint8: a few flat coloured rectangles plus noise, so segments exist."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for _ in range(5):
        y0, x0 = rng.integers(0, height - 4), rng.integers(0, width - 4)
        image[y0 : y0 + rng.integers(4, height), x0 : x0 + rng.integers(4, width)] = rng.integers(
            0, 256, 3
        )
    noise = rng.integers(-8, 9, image.shape)
    return np.clip(image.astype(np.int64) + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """samples/CAM_FRONT, CAM_BACK, CAM_FRONT_LEFT: two 48x80 JPEGs each (+ a LIDAR folder)."""
    root = tmp_path / "nusc"
    rng = np.random.default_rng(0)
    for camera in ("CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT"):
        folder = root / "samples" / camera
        folder.mkdir(parents=True)
        for k in range(2):
            Image.fromarray(blocky_image(rng, 48, 80)).save(
                folder / f"n008__{camera}__{k}.jpg", quality=95
            )
    (root / "samples" / "LIDAR_TOP").mkdir()
    (root / "samples" / "LIDAR_TOP" / "x.pcd.bin").write_bytes(b"\0" * 16)
    return root


def all_pngs(root: Path) -> list[Path]:
    return sorted((root / seg.SEGMENTS_DIR).glob("CAM_*/*.png"))


def leftover_temp_files(root: Path) -> list[Path]:
    return [p for p in (root / seg.SEGMENTS_DIR).rglob("*") if p.name.startswith(".")]


# --------------------------------------------------------------------------- masks -> ids


def _mask(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def test_masks_to_segment_ids_smallest_mask_wins_and_ids_are_deterministic():
    shape = (6, 8)
    big = _mask(shape, slice(0, 6), slice(0, 8))  # 48 px
    medium = _mask(shape, slice(1, 5), slice(1, 6))  # 20 px
    small = _mask(shape, slice(2, 4), slice(2, 4))  # 4 px, inside medium
    hidden = small | _mask(shape, slice(5, 6), slice(6, 8))  # 6 px, all covered by small+tiny
    tiny = _mask(shape, slice(5, 6), slice(6, 8))  # 2 px
    empty = np.zeros(shape, dtype=bool)
    records = [
        {"segmentation": m, "area": int(m.sum())} for m in (small, empty, big, tiny, hidden, medium)
    ]

    ids = seg.masks_to_segment_ids(records, shape)

    expected = np.ones(shape, dtype=np.uint16)  # big: largest, painted first -> id 1
    expected[medium] = 2
    expected[small] = 3
    expected[tiny] = 4  # "hidden" is entirely covered: no id, the ids stay 1..4
    assert ids.dtype == np.uint16 and ids.shape == shape
    np.testing.assert_array_equal(ids, expected)
    for order in ([5, 4, 3, 2, 1, 0], [2, 0, 4, 1, 5, 3]):
        np.testing.assert_array_equal(
            seg.masks_to_segment_ids([records[i] for i in order], shape), expected
        )


def test_masks_to_segment_ids_ties_and_uncovered_pixels():
    shape = (4, 4)
    left = _mask(shape, slice(0, 2), slice(0, 2))
    right = _mask(shape, slice(0, 2), slice(2, 4))  # same area; first pixel later in raster order
    ids = seg.masks_to_segment_ids([{"segmentation": right}, {"segmentation": left}], shape)
    assert ids[0, 0] == 1 and ids[0, 3] == 2
    assert (ids[2:] == 0).all()
    assert seg.masks_to_segment_ids([], shape).sum() == 0
    with pytest.raises(
        ValueError, match=r"mask 0 has shape \(3, 4\), expected the image shape \(4, 4\)"
    ):
        seg.masks_to_segment_ids([{"segmentation": np.ones((3, 4), bool)}], shape)


def test_image_to_segment_ids_with_the_real_mask_generator(tiny_generator):
    image = blocky_image(np.random.default_rng(3), 48, 80)
    masks = [m["segmentation"] for m in tiny_generator.generate(image)]
    ids = seg.image_to_segment_ids(image, tiny_generator)

    assert len(masks) >= 2, "the tiny Sam settings should yield several masks"
    assert (np.sum(masks, axis=0) > 1).any(), "... and some should overlap"
    assert ids.dtype == np.uint16 and ids.shape == (48, 80)
    covered = np.any(masks, axis=0)
    np.testing.assert_array_equal(ids > 0, covered)
    np.testing.assert_array_equal(np.unique(ids[ids > 0]), np.arange(1, ids.max() + 1))
    # every pixel carries the smallest mask that covers it
    areas = np.array([m.sum() for m in masks])
    smallest_cover = np.where(masks, areas[:, None, None], np.inf).min(axis=0)
    for k in range(1, int(ids.max()) + 1):
        pixels = ids == k
        owners = [
            i
            for i, m in enumerate(masks)
            if m[pixels].all() and (areas[i] == smallest_cover[pixels]).all()
        ]
        assert owners, f"segment {k} is not the smallest covering mask"
    with pytest.raises(ValueError, match=r"RGB image \[H, W, 3\] uint8"):
        seg.image_to_segment_ids(image[..., 0], tiny_generator)


def test_felzenszwalb_segment_ids_cover_the_image_in_raster_order():
    image = blocky_image(np.random.default_rng(4), 40, 60)
    ids = seg.felzenszwalb_segment_ids(image, scale=50, min_size=20)
    assert ids.dtype == np.uint16 and ids.shape == (40, 60)
    assert ids.min() == 1 and ids.max() >= 2
    np.testing.assert_array_equal(np.unique(ids), np.arange(1, ids.max() + 1))
    _, first = np.unique(ids.ravel(), return_index=True)
    assert (np.diff(first) > 0).all(), "id k+1 must first appear after id k in raster order"


# --------------------------------------------------------------------------- SAM loading


def test_load_sam_reads_the_checkpoint_into_the_registry_model(tiny_checkpoint):
    registry = {
        "tiny": partial(build_tiny_sam, seed=123)
    }  # different init: weights must come from the file
    model = seg.load_sam("tiny", tiny_checkpoint, registry=registry)
    saved = torch.load(tiny_checkpoint, weights_only=True)
    assert not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name

    generator = seg.build_sam_generator(
        "tiny", tiny_checkpoint, registry=registry, device="cpu", **TINY_GENERATOR
    )
    assert isinstance(generator, SamAutomaticMaskGenerator)
    assert generator.pred_iou_thresh == 0.0 and len(generator.point_grids[0]) == 64
    image = blocky_image(np.random.default_rng(5), 48, 80)
    direct = SamAutomaticMaskGenerator(build_tiny_sam(), **TINY_GENERATOR)
    np.testing.assert_array_equal(
        seg.image_to_segment_ids(image, generator), seg.image_to_segment_ids(image, direct)
    )


def test_load_sam_errors(tmp_path, tiny_checkpoint):
    registry = {"tiny": build_tiny_sam}
    with pytest.raises(
        ValueError, match=r"unknown --model-type 'vit_x': expected one of .*vit_b, vit_h, vit_l"
    ):
        seg.load_sam("vit_x", tiny_checkpoint)
    with pytest.raises(FileNotFoundError, match=r"--checkpoint '.*nope\.pth' not found.*'tiny'"):
        seg.load_sam("tiny", tmp_path / "nope.pth", registry=registry)

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(
        ValueError,
        match=r"corrupt\.pth' could not be read by torch\.load\(weights_only=True\): the file is",
    ):
        seg.load_sam("tiny", corrupt, registry=registry)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"could not be read by torch\.load.*corrupt, truncated"):
        seg.load_sam("tiny", truncated, registry=registry)

    not_a_state_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], not_a_state_dict)
    with pytest.raises(ValueError, match=r"holds a list, expected a state dict"):
        seg.load_sam("tiny", not_a_state_dict, registry=registry)

    looks_like_vit_b = tmp_path / "vit_b_like.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 4, 4, 768)}, looks_like_vit_b)
    with pytest.raises(
        ValueError, match=r"looks like a vit_b checkpoint but --model-type is 'vit_h'"
    ):
        seg.load_sam("vit_h", looks_like_vit_b)

    wider = {"tiny": partial(build_tiny_sam, dim=48)}
    with pytest.raises(
        ValueError,
        match=r"does not match --model-type 'tiny'.*[1-9]\d* wrong shapes, e\.g\. \S+: file \[",
    ):
        seg.load_sam("tiny", tiny_checkpoint, registry=wider)


def test_a_tiny_checkpoint_given_as_vit_b_is_a_clear_mismatch(tiny_checkpoint):
    # builds segment-anything's real (random) vit_b, then fails on load_state_dict
    with pytest.raises(
        ValueError,
        match=r"does not match --model-type 'vit_b': state dict mismatch \(\d+ missing keys",
    ):
        seg.load_sam("vit_b", tiny_checkpoint)


# --------------------------------------------------------------------------- PNG format


def test_save_and_load_segments_round_trip_16_bit(tmp_path):
    ids = np.arange(5 * 7, dtype=np.uint16).reshape(5, 7) * 1800  # up to 61200: needs 16 bits
    path = tmp_path / "CAM_FRONT" / "a.png"
    seg.save_segments(path, ids)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "I;16" and image.size == (7, 5)
    loaded = seg.load_segments(path, expected_size=(5, 7))
    assert loaded.dtype == np.int64
    np.testing.assert_array_equal(loaded, ids)
    with pytest.raises(ValueError, match=r"expected segment ids \[H, W\] uint16"):
        seg.save_segments(path, ids.astype(np.int32))


def test_load_segments_errors(tmp_path):
    good = tmp_path / "good.png"
    seg.save_segments(good, np.ones((5, 7), dtype=np.uint16))

    with pytest.raises(FileNotFoundError, match=r"segment file '.*missing\.png' not found"):
        seg.load_segments(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"is 5x7 \(HxW\), expected 7x5"):
        seg.load_segments(good, expected_size=(7, 5))

    eight_bit = tmp_path / "eight.png"
    Image.fromarray(np.ones((5, 7), dtype=np.uint8)).save(eight_bit)
    with pytest.raises(ValueError, match=r"mode L, expected a 16-bit grayscale PNG"):
        seg.load_segments(eight_bit)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.ones((5, 7, 3), dtype=np.uint8)).save(rgb)
    with pytest.raises(ValueError, match=r"mode RGB, expected a 16-bit grayscale PNG"):
        seg.load_segments(rgb)

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(np.random.default_rng(1).bytes(300))
    with pytest.raises(ValueError, match=r"garbage\.png' is corrupt or not a PNG"):
        seg.load_segments(garbage)
    big = tmp_path / "big.png"
    seg.save_segments(big, np.random.default_rng(2).integers(0, 60000, (64, 64)).astype(np.uint16))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated\.png' is corrupt or not a PNG"):
        seg.load_segments(truncated)


def test_resize_segments_nearest_neighbour_numpy_and_torch():
    ids = np.arange(1, 7, dtype=np.int64).reshape(2, 3)
    up = seg.resize_segments(ids, (4, 6))
    np.testing.assert_array_equal(up, ids.repeat(2, axis=0).repeat(2, axis=1))

    grid = np.arange(16, dtype=np.int64).reshape(4, 4)
    np.testing.assert_array_equal(seg.resize_segments(grid, (2, 2)), grid[[1, 3]][:, [1, 3]])

    odd = np.random.default_rng(0).integers(0, 500, (2, 9, 13))  # batch of two maps
    out = seg.resize_segments(odd, (5, 7))
    assert out.shape == (2, 5, 7) and set(np.unique(out)) <= set(np.unique(odd))
    as_tensor = seg.resize_segments(torch.from_numpy(odd), (5, 7))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.int64
    np.testing.assert_array_equal(as_tensor.numpy(), out)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "CAM_FRONT" / "x.png"

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        seg.save_segments(path, np.ones((3, 3), dtype=np.uint16))
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


# --------------------------------------------------------------------------- walker and CLI


def test_cli_felzenszwalb_end_to_end_and_resume(data_root, capsys):
    images = seg.find_camera_images(data_root)
    assert len(images) == 6 and images[0][0] == "CAM_FRONT"  # the camera order of CAMERAS
    # a pre-existing file must be left alone by a resumed run
    preexisting = seg.segments_path(data_root, *images[1])
    seg.save_segments(preexisting, np.full((48, 80), 7, dtype=np.uint16))
    before = (preexisting.read_bytes(), preexisting.stat().st_mtime_ns)

    argv = ["--data-root", str(data_root), "--fallback", "felzenszwalb", "--no-progress"]
    assert seg.main(argv) == 0
    assert "5 written, 1 skipped" in capsys.readouterr().out

    pngs = all_pngs(data_root)
    assert len(pngs) == 6 and leftover_temp_files(data_root) == []
    assert (preexisting.read_bytes(), preexisting.stat().st_mtime_ns) == before
    for camera, image_path in images:
        out = seg.segments_path(data_root, camera, image_path)
        with Image.open(out) as png:
            assert png.mode == "I;16"
        ids = seg.load_segments(out, expected_size=(48, 80))
        if out != preexisting:
            expected = seg.felzenszwalb_segment_ids(seg.read_rgb(image_path))
            np.testing.assert_array_equal(ids, expected)
    meta = json.loads((data_root / "sam_segments" / "meta.json").read_text())
    assert meta["method"] == "felzenszwalb" and meta["params"]["min_size"] == 50

    # second run: nothing to do; then changed settings are refused without --overwrite
    assert seg.main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert seg.main(argv + ["--felzenszwalb-scale", "300"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert seg.main(argv + ["--felzenszwalb-scale", "300", "--overwrite"]) == 0
    assert "6 written, 0 skipped" in capsys.readouterr().out
    assert not (seg.load_segments(preexisting) == 7).all()
    assert (
        json.loads((data_root / "sam_segments" / "meta.json").read_text())["params"]["scale"] == 300
    )


def test_walker_skips_existing_files_and_calls_the_segmenter_only_for_new_ones(data_root):
    calls = []

    def segmenter(image):
        calls.append(image.shape)
        return np.full(image.shape[:2], len(calls), dtype=np.uint16)

    assert seg.segment_data_root(data_root, segmenter, progress=False) == {
        "written": 6,
        "skipped": 0,
    }
    assert len(calls) == 6 and calls[0] == (48, 80, 3)
    victim = all_pngs(data_root)[2]
    victim.unlink()
    assert seg.segment_data_root(data_root, segmenter, progress=False) == {
        "written": 1,
        "skipped": 5,
    }
    assert len(calls) == 7 and (seg.load_segments(victim) == 7).all()

    with pytest.raises(
        ValueError, match=r"segmenter returned \(2, 2\) uint16 .* expected \(48, 80\) uint16"
    ):
        seg.segment_data_root(
            data_root, lambda im: np.zeros((2, 2), np.uint16), overwrite=True, progress=False
        )

    def interrupted(image):
        if len(calls) >= 9:
            raise KeyboardInterrupt
        return segmenter(image)

    with pytest.raises(KeyboardInterrupt):
        seg.segment_data_root(data_root, interrupted, overwrite=True, progress=False)
    assert len(all_pngs(data_root)) == 6 and leftover_temp_files(data_root) == []
    for png in all_pngs(data_root):
        seg.load_segments(png, expected_size=(48, 80))  # no truncated file anywhere


def test_cli_with_a_tiny_sam_checkpoint(
    data_root, tiny_checkpoint, monkeypatch, capsys, tiny_generator
):
    monkeypatch.setitem(segment_anything.sam_model_registry, "tiny", build_tiny_sam)
    argv = [
        "--data-root",
        str(data_root),
        "--checkpoint",
        str(tiny_checkpoint),
        "--model-type",
        "tiny",
        "--points-per-side",
        "8",
        "--pred-iou-thresh",
        "0",
        "--stability-score-thresh",
        "0",
        "--box-nms-thresh",
        "0.95",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert seg.main(argv) == 0
    assert "sam segments: 6 written, 0 skipped" in capsys.readouterr().out

    segment_counts = []
    for camera, image_path in seg.find_camera_images(data_root):
        ids = seg.load_segments(
            seg.segments_path(data_root, camera, image_path), expected_size=(48, 80)
        )
        expected = seg.image_to_segment_ids(seg.read_rgb(image_path), tiny_generator)
        np.testing.assert_array_equal(ids, expected)
        segment_counts.append(ids.max())
    assert min(segment_counts) >= 1 and max(segment_counts) >= 2
    meta = json.loads((data_root / "sam_segments" / "meta.json").read_text())
    assert meta == {
        "method": "sam",
        "model_type": "tiny",
        "checkpoint": "tiny_sam.pth",
        "params": {
            "points_per_side": 8,
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
            "box_nms_thresh": 0.95,
        },
    }


def test_cli_errors(tmp_path, data_root, capsys):
    def run(*argv: str) -> tuple[int, str]:
        code = seg.main(list(argv) + ["--no-progress"])
        return code, capsys.readouterr().err

    code, err = run("--data-root", str(data_root), "--checkpoint", str(tmp_path / "sam_vit_h.pth"))
    assert code == 2 and "--checkpoint" in err and "sam_vit_h.pth' not found" in err
    empty_root = tmp_path / "empty"
    (empty_root / "samples" / "LIDAR_TOP").mkdir(parents=True)
    code, err = run("--data-root", str(empty_root), "--fallback", "felzenszwalb")
    assert code == 2 and "has no camera images: expected nuScenes-style samples/<CAM>/*.jpg" in err
    code, err = run("--data-root", str(tmp_path / "nowhere"), "--fallback", "felzenszwalb")
    assert code == 2 and "is not a directory" in err
    code, err = run(
        "--data-root", str(data_root), "--checkpoint", os.devnull, "--model-type", "vit_q"
    )
    assert code == 2 and "unknown --model-type 'vit_q'" in err
    assert not (data_root / "sam_segments").exists()  # failures write nothing, not even meta.json
    with pytest.raises(SystemExit) as exit_info:
        run("--data-root", str(data_root))
    assert exit_info.value.code == 2 and "--checkpoint is required" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["sam", "felzenszwalb"])
def test_segments_of_the_synthetic_dataset_feed_the_loader(
    synthetic_root, tmp_path, tiny_checkpoint, monkeypatch, method
):
    """The tool runs over a generated nuScenes-layout dataset (tiny random SAM and the fallback)
    and the devkit loader returns its segment maps with every camera image."""
    from radocc.data import DatasetConfig, NuScenesOccDataset

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    if method == "sam":
        monkeypatch.setitem(segment_anything.sam_model_registry, "tiny", build_tiny_sam)
        argv = ["--checkpoint", str(tiny_checkpoint), "--model-type", "tiny",
                "--points-per-side", "4", "--pred-iou-thresh", "0",
                "--stability-score-thresh", "0", "--device", "cpu"]
    else:
        argv = ["--fallback", "felzenszwalb"]
    assert seg.main(["--data-root", str(root), "--no-progress", *argv]) == 0
    images = seg.find_camera_images(root)
    assert len(images) == 6 * 4 and len(list((root / "sam_segments").rglob("*.png"))) == 24

    dataset = NuScenesOccDataset(str(root), "v1.0-mini", "val", DatasetConfig(image_size=(45, 80)))
    item = dataset[0]
    assert item["segments"].shape == (6, 45, 80)
    assert item["segments"].dtype == torch.int64
    per_camera = [len(torch.unique(s)) for s in item["segments"]]
    assert min(per_camera) >= 2  # every camera image is cut into several segments
    assert json.loads((root / "sam_segments" / "meta.json").read_text())["method"] == method
