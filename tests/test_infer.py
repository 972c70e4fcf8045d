"""radocc.infer (a student on the user's own images and calibration) and radocc.bench infer.

Tiny models (16 x 16 x 4 grid, 32 x 64 images) with random weights, images written here.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from radocc.checkpoint import save_checkpoint
from radocc.config import load_config
from radocc.infer import (InferenceError, inference_picture, load_calibration, load_student,
                          main, predict, prepare_inputs)
from radocc.models import build_model
from radocc.viz import OCC3D_PALETTE, bev_labels, colorize_labels

from tiny import write_tiny_config

torch.set_num_threads(1)

# OpenCV camera axes (x right, y down, z forward) in the ego frame (x forward, y left, z up),
# for a camera looking along ego +x, and one looking along ego -x.
FRONT = [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]
BACK = [[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]


def write_config(folder: Path, name: str, role: str = "student", neck: int = 16,
                 teacher: tuple[Path, Path] | None = None) -> Path:
    return write_tiny_config(folder / f"{name}.toml", role=role, neck=neck, teacher=teacher)


def write_checkpoint(config: Path, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_checkpoint(path, {"model": build_model(load_config(config).model).state_dict()})
    return path


def pose(rotation, translation) -> list:
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = rotation, translation
    return t.tolist()


def intrinsics(width: int, height: int) -> list:
    return [[width / 2, 0.0, (width - 1) / 2], [0.0, width / 2, (height - 1) / 2], [0.0, 0.0, 1.0]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny student config + checkpoint and a frame of three images of different sizes."""
    root = tmp_path_factory.mktemp("infer")
    config = write_config(root, "student")
    checkpoint = write_checkpoint(config, root / "student.pt")
    frame = root / "frame7"
    frame.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"front.jpg": (120, 60), "back.png": (80, 40), "left.jpg": (64, 48)}
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(frame / name)
    left = np.array(FRONT) @ np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]])  # yawed 90 degrees
    cameras = [
        {"image": "front.jpg", "intrinsics": intrinsics(120, 60), "cam2ego": pose(FRONT, [1.5, 0, 1.5])},
        {"name": "back", "intrinsics": intrinsics(80, 40), "cam2ego": pose(BACK, [-0.5, 0, 1.5])},
        {"image": "left.jpg", "name": "CAM_LEFT", "intrinsics": intrinsics(64, 48),
         "cam2ego": pose(left, [0.5, 0.5, 1.5])},
    ]
    calib = root / "calib.json"
    calib.write_text(json.dumps({"cameras": cameras}))
    return {"root": root, "config": config, "checkpoint": checkpoint, "frame": frame,
            "calib": calib, "cameras": cameras}


def run(setup, tmp_path, *extra, calib=None, frame=None, config=None, checkpoint=None):
    return main([str(config or setup["config"]), "--checkpoint", str(checkpoint or setup["checkpoint"]),
                 "--images", str(frame or setup["frame"]), "--calib", str(calib or setup["calib"]),
                 "--out", str(tmp_path / "out"), *extra])


def test_writes_occupancy_and_picture(setup, tmp_path, capsys):
    assert run(setup, tmp_path, "--probabilities") == 0
    assert "wrote" in capsys.readouterr().out
    saved = np.load(tmp_path / "out" / "frame7.npz")
    semantics, probabilities = saved["semantics"], saved["probabilities"]
    assert semantics.shape == (16, 16, 4) and semantics.dtype == np.uint8
    assert probabilities.shape == (16, 16, 4, 18) and probabilities.dtype == np.float16
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(-1), 1.0, atol=1e-2)
    assert saved["cameras"].tolist() == ["front", "back", "CAM_LEFT"]
    assert saved["grid_lower"].tolist() == [-8.0, -8.0, -1.0] and saved["class_names"][-1] == "free"
    # The saved classes are the model's argmax on the prepared inputs.
    config = load_config(setup["config"])
    model = load_student(config, setup["checkpoint"], torch.device("cpu"))
    cameras = load_calibration(setup["calib"], setup["frame"])
    expected, probs = predict(model, *prepare_inputs(cameras, config.data.image_size))
    np.testing.assert_array_equal(semantics, expected)
    np.testing.assert_array_equal(probs.argmax(-1), expected)
    picture = np.asarray(Image.open(tmp_path / "out" / "frame7.png"))
    assert picture.shape == (32 + 400, 400, 3)  # one row of three 32 x 64 cameras above a 400 px BEV
    centres = picture[32 + 12::25, 12::25]  # the BEV's 16 x 16 cells are 25 px squares
    np.testing.assert_array_equal(centres, colorize_labels(bev_labels(semantics, 17)))


def test_picture_shows_the_top_voxel_forward_up_left_left():
    semantics = np.full((16, 16, 4), 17, np.uint8)
    semantics[15, 15, 0] = 4       # front-left corner (x max, y max): a car on the ground
    semantics[0, 0, 1] = 7         # back-right corner: a pedestrian ...
    semantics[0, 0, 3] = 16        # ... under vegetation: seen from above, vegetation
    images = torch.rand(2, 3, 32, 64)
    picture = inference_picture(images, semantics, free_index=17, bev_size=160)
    assert picture.shape == (32 + 160, 128 + 32, 3)  # cameras padded to the BEV's width
    np.testing.assert_array_equal(picture[:32, :64], (images[0].permute(1, 2, 0).numpy() * 255).round())
    bev = picture[32:]
    assert bev[5, 5].tolist() == OCC3D_PALETTE[4].tolist()         # top-left: car
    assert bev[-5, -5].tolist() == OCC3D_PALETTE[16].tolist()      # bottom-right: vegetation
    assert bev[80, 80].tolist() == OCC3D_PALETTE[17].tolist()      # free elsewhere


@pytest.mark.parametrize("count", [1, 2])
def test_any_number_of_cameras(setup, tmp_path, count):
    frame = tmp_path / "frame"
    frame.mkdir()
    cameras = setup["cameras"][:count]
    for entry in cameras:
        name = entry.get("image") or "back.png"
        (frame / name).write_bytes((setup["frame"] / name).read_bytes())
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps({"cameras": cameras}))
    assert run(setup, tmp_path, calib=calib, frame=frame) == 0
    assert np.load(tmp_path / "out" / "frame.npz")["semantics"].shape == (16, 16, 4)


def test_intrinsics_follow_the_resize(tmp_path):
    """A 3D point drawn where the file's intrinsics project it lands where the returned
    intrinsics project it in the network image (scale to cover, centred, bottom-aligned crop)."""
    width, height = 200, 90
    k = np.array([[150.0, 0.0, 97.0], [0.0, 140.0, 40.0], [0.0, 0.0, 1.0]])
    point = np.array([1.2, 0.3, 10.0])  # camera frame, metres
    u, v, _ = k @ point / point[2]
    image = np.zeros((height, width, 3), np.uint8)
    image[int(round(v)) - 2:int(round(v)) + 3, int(round(u)) - 2:int(round(u)) + 3] = 255
    Image.fromarray(image).save(tmp_path / "cam.png")
    cam2ego = np.eye(4)
    cam2ego[:3, :3] = FRONT
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps({"cameras": [{"image": "cam.png", "intrinsics": k.tolist(),
                                              "cam2ego": cam2ego.tolist()}]}))
    cameras = load_calibration(calib, tmp_path)
    images, new_k, new_cam2ego = prepare_inputs(cameras, (32, 64))
    assert images.shape == (1, 1, 3, 32, 64) and 0.0 <= images.min() and images.max() <= 1.0
    torch.testing.assert_close(new_cam2ego[0, 0], torch.from_numpy(cam2ego).float())
    u2, v2, _ = new_k[0, 0].double().numpy() @ point / point[2]
    bright = images[0, 0].mean(0).numpy()
    rows, cols = np.nonzero(bright > 0.3)
    assert abs(rows.mean() - v2) < 0.6 and abs(cols.mean() - u2) < 0.6
    # 200 x 90 is scaled by 32 / 90 (to 71 x 32) to cover 64 x 32, then cropped in x.
    assert new_k[0, 0, 0, 0].item() == pytest.approx(150.0 * 71 / 200, rel=1e-5)
    assert new_k[0, 0, 1, 1].item() == pytest.approx(140.0 * 32 / 90, rel=1e-5)


def _calib_with(setup, tmp_path, change) -> Path:
    cameras = json.loads(json.dumps(setup["cameras"]))
    data = change(cameras)
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps({"cameras": cameras}))
    return path


def _set(index, key, value):
    def change(cameras):
        cameras[index][key] = value
    return change


BAD_CALIBRATIONS = {
    "missing camera": (lambda c: c.pop(2) and None, "no camera for image(s) left.jpg"),
    "image not found": (_set(0, "image", "side.jpg"), "image 'side.jpg' not found"),
    "camera name without image": (lambda c: c[1].update(name="CAM_SIDE"), "camera 'CAM_SIDE' has no image"),
    "same image twice": (_set(1, "image", "front.jpg"), "already used by cameras[0]"),
    "no image key": (lambda c: c[0].pop("image") and None, "names no image"),
    "no intrinsics": (lambda c: c[0].pop("intrinsics") and None, "cameras[0] has no 'intrinsics'"),
    "intrinsics 3x4": (_set(0, "intrinsics", [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]),
                       "cameras[0].intrinsics must be 3x3, got shape (3, 4)"),
    "cam2ego 3x3": (_set(1, "cam2ego", FRONT), "cameras[1].cam2ego must be 4x4, got shape (3, 3)"),
    "ragged matrix": (_set(0, "intrinsics", [[1.0, 0], [0, 1.0, 0], [0, 0, 1.0]]),
                      "cameras[0].intrinsics must be a 3x3 list of numbers"),
    "singular intrinsics": (_set(0, "intrinsics", [[0.0, 0, 30], [0, 60.0, 20], [0, 0, 1.0]]),
                            "cameras[0].intrinsics is not invertible"),
    "singular cam2ego": (_set(2, "cam2ego", [[0.0] * 4, [0.0] * 4, [0.0] * 4, [0, 0, 0, 1.0]]),
                         "cameras[2].cam2ego is not invertible"),
    "scaled cam2ego": (_set(0, "cam2ego", (2 * np.array(pose(FRONT, [0, 0, 0]))).tolist()),
                       "last row must be [0, 0, 0, 1]"),
    "non-rigid cam2ego": (_set(0, "cam2ego", pose(2 * np.array(FRONT), [0, 0, 1.5])),
                          "not a rotation"),
    "NaN": (_set(0, "intrinsics", [[float("nan"), 0, 30], [0, 60.0, 20], [0, 0, 1.0]]),
            "non-finite"),
    "no cameras": (lambda c: c.clear(), "with at least one camera"),
    "not JSON": (lambda c: "{cameras: oops", "is not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_CALIBRATIONS))
def test_calibration_that_does_not_match_the_images(setup, tmp_path, capsys, case):
    change, message = BAD_CALIBRATIONS[case]
    calib = _calib_with(setup, tmp_path, change)
    assert run(setup, tmp_path, calib=calib) == 2
    err = capsys.readouterr().err
    assert err.startswith("radocc.infer: error:") and message in err, err
    assert "bad.json" in err or case == "missing camera"
    with pytest.raises(InferenceError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace("]", r"\]")):
        load_calibration(calib, setup["frame"])
    assert not (tmp_path / "out").exists()


def test_missing_files(setup, tmp_path, capsys):
    assert run(setup, tmp_path, calib=tmp_path / "none.json") == 2
    assert "--calib: no such file" in capsys.readouterr().err
    assert run(setup, tmp_path, frame=tmp_path / "nowhere") == 2
    assert "--images: no such folder" in capsys.readouterr().err
    assert run(setup, tmp_path, checkpoint=tmp_path / "none.pt") == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_undecodable_image(setup, tmp_path, capsys):
    frame = tmp_path / "frame"
    frame.mkdir()
    (frame / "front.jpg").write_bytes(b"not a jpeg")
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps({"cameras": setup["cameras"][:1]}))
    assert run(setup, tmp_path, calib=calib, frame=frame) == 2
    assert "front.jpg cannot be decoded" in capsys.readouterr().err


def test_checkpoint_of_another_model_names_the_tensors(setup, tmp_path, capsys):
    other = write_config(tmp_path, "wider", neck=8)
    checkpoint = write_checkpoint(other, tmp_path / "wider.pt")
    assert run(setup, tmp_path, checkpoint=checkpoint) == 2
    err = capsys.readouterr().err
    assert "does not match the model" in err and "shape mismatch" in err
    assert "image_encoder.neck.lateral16.weight: checkpoint [8, 256, 1, 1] vs model [16, 256, 1, 1]" in err
    assert "a teacher's checkpoint does not fit a student" in err


def test_teacher_checkpoint_and_teacher_config_are_refused(setup, tmp_path, capsys):
    teacher = write_config(tmp_path, "teacher", role="teacher")
    checkpoint = write_checkpoint(teacher, tmp_path / "teacher.pt")
    assert run(setup, tmp_path, checkpoint=checkpoint) == 2
    err = capsys.readouterr().err
    assert "unexpected key(s): lidar_encoder." in err or "unexpected key(s): fuser." in err
    assert run(setup, tmp_path, config=teacher, checkpoint=checkpoint) == 2
    err = capsys.readouterr().err
    assert "camera + LiDAR model" in err and "needs LiDAR points" in err and "teacher.toml" in err


def test_bench_infer_times_teacher_and_student(setup, tmp_path, capsys):
    from radocc.bench import main as bench_main

    teacher = write_config(tmp_path, "teacher", role="teacher")
    student = write_config(tmp_path, "distilled", teacher=(teacher, tmp_path / "missing.pt"))
    args = ["infer", str(student), "--checkpoint", str(setup["checkpoint"]), "--warmup", "1",
            "--repeats", "2", "--json"]
    assert bench_main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [m["role"] for m in result["models"]] == ["teacher", "student"]
    assert [m["modality"] for m in result["models"]] == ["fusion", "camera"]
    assert [m["weights"] for m in result["models"]] == ["random", str(setup["checkpoint"])]
    assert result["cameras"] == 6 and result["image_size"] == [32, 64] and result["device"] == "cpu"
    for m in result["models"]:
        assert 0 < m["ms_min"] <= m["ms_per_frame"] <= m["ms_max"]
        assert m["frames_per_second"] == pytest.approx(1000 / m["ms_per_frame"])
    assert bench_main(args[:-1]) == 0
    table = capsys.readouterr().out
    assert "ms/frame" in table and "frames/s" in table and "teacher" in table
    other = write_checkpoint(write_config(tmp_path, "wider", neck=8), tmp_path / "wider.pt")
    assert bench_main(["infer", str(setup["config"]), "--checkpoint", str(other)]) == 2
    assert "shape mismatch" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert bench_main(["infer", str(setup["config"]), "--device", "cuda"]) == 2
        assert "no CUDA device is available" in capsys.readouterr().err


def test_inputs_equal_the_validation_loaders(synthetic_root, tmp_path):
    """A frame of the synthetic dataset, given as files + calibration JSON, becomes exactly the
    tensors the validation loader makes of it."""
    from radocc.data import DatasetConfig, NuScenesOccDataset

    dataset = NuScenesOccDataset(synthetic_root, "v1.0-mini", "val",
                                 DatasetConfig(image_size=(32, 64), load_segments=False, augment=False))
    record = dataset.records[0]
    entries = []
    for cam in record["cameras"]:
        name = Path(cam["filename"]).name
        (tmp_path / name).write_bytes((Path(synthetic_root) / cam["filename"]).read_bytes())
        entries.append({"image": name, "intrinsics": np.asarray(cam["intrinsics"]).tolist(),
                        "cam2ego": np.asarray(cam["cam2ego"]).tolist()})
    (tmp_path / "calib.json").write_text(json.dumps({"cameras": entries}))
    images, intrinsics_, cam2ego = prepare_inputs(load_calibration(tmp_path / "calib.json", tmp_path),
                                                  (32, 64))
    item = dataset[0]
    assert images.shape == (1, 6, 3, 32, 64)
    torch.testing.assert_close(images[0], item["images"], rtol=0, atol=0)
    torch.testing.assert_close(intrinsics_[0], item["intrinsics"], rtol=0, atol=0)
    torch.testing.assert_close(cam2ego[0], item["cam2ego"], rtol=0, atol=0)
