"""Export a camera-only student to ONNX and check it against PyTorch with onnxruntime.

    python -m radocc.export CONFIG --checkpoint PATH --out student.onnx [--opset 18]
                            [--no-check] [--tolerance 1e-4] [--set key=value ...]

The ONNX model has three inputs and one output (float32):

    images      [B, N, 3, H, W]  RGB in [0, 1] (ImageNet normalisation is inside the model)
    intrinsics  [B, N, 3, 3]     pixels of the H x W input images
    cam2ego     [B, N, 4, 4]     camera -> ego, metres
    logits      [B, X, Y, Z, K]  voxel class logits (free is the last class)

B and N (cameras) are dynamic; H, W are the config's ``data.image_size``. Prepare images and
intrinsics as ``radocc.infer`` does (:func:`radocc.infer.prepare_inputs`).

Export uses ``torch.export`` and the dynamo ONNX exporter (opset >= 17; ``onnx`` and
``onnxscript`` must be installed). The one operator ONNX lacks, the 3 x 3 inverse of the
intrinsics in the LSS view transform, is rewritten as the adjugate over the determinant before
conversion (PyTorch itself keeps ``torch.linalg.inv``). The check (``onnxruntime``) runs the file
on random images of a ring of N cameras and compares the logits with PyTorch's.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from radocc.config import ConfigError, load_config
from radocc.infer import InferenceError, load_student
from radocc.models import OccupancyModel

__all__ = ["ExportError", "LogitsOnly", "ring_rig", "example_inputs", "inverse_3x3",
           "export_onnx", "onnx_parity", "main"]

INPUT_NAMES = ("images", "intrinsics", "cam2ego")
OUTPUT_NAMES = ("logits",)
MIN_OPSET = 17


class ExportError(RuntimeError):
    """The exporter or the parity check failed; the message says what is missing or differs."""


class LogitsOnly(nn.Module):
    """The student with the ONNX model's signature: (images, intrinsics, cam2ego) -> logits."""

    def __init__(self, model: OccupancyModel):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, intrinsics: Tensor, cam2ego: Tensor) -> Tensor:
        """[B, N, 3, H, W], [B, N, 3, 3], [B, N, 4, 4] -> logits [B, X, Y, Z, K]."""
        return self.model(images, intrinsics, cam2ego).logits


def ring_rig(num_cameras: int, image_size: tuple[int, int], height: float = 1.5
             ) -> tuple[Tensor, Tensor]:
    """A ring of cameras looking outwards (evenly spaced yaw, level, ``height`` metres up).

    Returns:
        intrinsics [N, 3, 3] (focal = W / 2 pixels, principal point at the image centre) and
        cam2ego [N, 4, 4] (OpenCV camera axes: x right, y down, z forward), float32.
    """
    h, w = image_size
    intrinsics = torch.tensor([[w / 2, 0.0, (w - 1) / 2], [0.0, w / 2, (h - 1) / 2],
                               [0.0, 0.0, 1.0]]).expand(num_cameras, 3, 3).clone()
    cam2ego = torch.eye(4).repeat(num_cameras, 1, 1)
    for i in range(num_cameras):
        yaw = 2 * math.pi * i / num_cameras
        forward = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
        right = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0])
        down = torch.tensor([0.0, 0.0, -1.0])
        cam2ego[i, :3, :3] = torch.stack([right, down, forward], dim=1)
        cam2ego[i, :3, 3] = torch.tensor([0.0, 0.0, height]) + 0.5 * forward
    return intrinsics, cam2ego


def example_inputs(batch: int, num_cameras: int, image_size: tuple[int, int],
                   seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random images [B, N, 3, H, W] in [0, 1] with a :func:`ring_rig` per sample."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, num_cameras, 3, *image_size, generator=gen)
    intrinsics, cam2ego = ring_rig(num_cameras, image_size)
    return (images, intrinsics.expand(batch, -1, -1, -1).clone(),
            cam2ego.expand(batch, -1, -1, -1).clone())


def inverse_3x3(matrix: Tensor) -> Tensor:
    """[..., 3, 3] -> its inverse, adjugate / determinant (rows' cross products): ONNX has no
    matrix inverse. Matches ``torch.linalg.inv`` up to float rounding for invertible matrices."""
    r0, r1, r2 = matrix[..., 0, :], matrix[..., 1, :], matrix[..., 2, :]

    def cross(a: Tensor, b: Tensor) -> Tensor:
        return torch.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
                            a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                            a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], dim=-1)

    c0, c1, c2 = cross(r1, r2), cross(r2, r0), cross(r0, r1)
    det = (r0 * c0).sum(-1)
    return torch.stack([c0, c1, c2], dim=-1) / det[..., None, None]


def _linalg_inv(matrix: Tensor) -> Tensor:
    if matrix.shape[-2:] != (3, 3):
        raise ExportError(f"only 3x3 matrix inverses can be exported, got {tuple(matrix.shape)}")
    return inverse_3x3(matrix)


def export_onnx(model: OccupancyModel, path: str | Path, image_size: tuple[int, int],
                opset: int = 18) -> Path:
    """Write ``model`` (camera-only, any weights) to ``path`` as ONNX (see the module doc).

    Args:
        model: a camera-only :class:`OccupancyModel` (put in eval mode here).
        path: the .onnx file (parent folders are created).
        image_size: (H, W) of the input images, pixels (fixed in the file).
        opset: ONNX opset version, >= 17.
    Raises:
        ValueError: a fusion model or an opset below 17.
        ExportError: a package is missing or the exporter failed.
    """
    if model.config.modality != "camera":
        raise ValueError(f"model: only a camera-only model exports (it takes no LiDAR input), "
                         f"got modality {model.config.modality!r}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError as exc:
            raise ExportError(f"ONNX export needs the {package!r} package: pip install onnx "
                              f"onnxscript onnxruntime") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = LogitsOnly(model.eval()).cpu()
    # Example batch and camera counts of 2: torch.export specialises sizes 0 and 1.
    args = example_inputs(2, 2, image_size)
    batch, cams = torch.export.Dim("batch", min=1), torch.export.Dim("cameras", min=1)
    dynamic = {name: {0: batch, 1: cams} for name in INPUT_NAMES}
    try:
        with torch.no_grad():
            program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
            table = torch.export.default_decompositions()
            table[torch.ops.aten.linalg_inv.default] = _linalg_inv
            program = program.run_decompositions(table)
            torch.onnx.export(program, args, str(path), dynamo=True, opset_version=opset,
                              input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                              external_data=False, verbose=False)
    except ExportError:
        raise
    except Exception as exc:  # the exporter fails in many ways; say where it happened
        raise ExportError(f"torch.onnx.export failed for {path}: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    return path


def onnx_parity(model: OccupancyModel, path: str | Path, image_size: tuple[int, int],
                num_cameras: int = 2, batch: int = 1, seed: int = 1) -> dict[str, float]:
    """Run the ONNX file with onnxruntime (CPU) and the model with PyTorch on the same random
    inputs (:func:`example_inputs`).

    Returns:
        {"max_abs_diff": max |logits_onnx - logits_torch|, "max_abs_logit": max |logits_torch|,
        "argmax_agreement": share of voxels whose class agrees, in [0, 1]}.
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise ExportError("the parity check needs onnxruntime: pip install onnxruntime "
                          "(or skip it with --no-check)") from exc
    inputs = example_inputs(batch, num_cameras, image_size, seed)
    with torch.no_grad():
        expected = LogitsOnly(model.eval())(*(t.to(next(model.parameters()).device)
                                              for t in inputs)).float().cpu().numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(list(OUTPUT_NAMES), {n: t.numpy() for n, t in zip(INPUT_NAMES, inputs)})
    if got.shape != expected.shape:
        raise ExportError(f"{path}: ONNX logits have shape {got.shape}, PyTorch's {expected.shape}")
    return {"max_abs_diff": float(np.abs(got - expected).max()),
            "max_abs_logit": float(np.abs(expected).max()),
            "argmax_agreement": float((got.argmax(-1) == expected.argmax(-1)).mean())}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radocc.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the camera-only student's experiment config (.toml)")
    parser.add_argument("--checkpoint", required=True, help="e.g. runs/<name>/best.pt")
    parser.add_argument("--out", default="student.onnx", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=18, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    parser.add_argument("--cameras", type=int, default=6, help="cameras in the parity check")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest |logit difference| the check accepts, relative to the "
                             "largest |logit| when that exceeds 1")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    args = parser.parse_args(argv)
    if args.opset < MIN_OPSET:
        parser.error(f"--opset must be >= {MIN_OPSET}, got {args.opset}")
    if args.cameras < 1:
        parser.error(f"--cameras must be >= 1, got {args.cameras}")
    try:
        config = load_config(args.config, args.set)
        model = load_student(config, args.checkpoint, torch.device("cpu"), args.config,
                             "radocc.export")
        path = export_onnx(model, args.out, config.data.image_size, args.opset)
        print(f"wrote {path} (inputs images [B, N, 3, {config.data.image_size[0]}, "
              f"{config.data.image_size[1]}], intrinsics [B, N, 3, 3], cam2ego [B, N, 4, 4]; "
              f"output logits [B, {', '.join(map(str, config.model.grid_shape))}, "
              f"{config.model.num_classes}]; opset {args.opset})")
        if not args.no_check:
            parity = onnx_parity(model, path, config.data.image_size, args.cameras)
            bound = args.tolerance * max(1.0, parity["max_abs_logit"])
            print(f"onnxruntime vs PyTorch ({args.cameras} cameras): max |logit difference| "
                  f"{parity['max_abs_diff']:.3g} (largest |logit| {parity['max_abs_logit']:.3g}), "
                  f"argmax agreement {100 * parity['argmax_agreement']:.4f} %")
            if not parity["max_abs_diff"] <= bound:
                raise ExportError(f"parity check failed: max |logit difference| "
                                  f"{parity['max_abs_diff']:.3g} > {bound:.3g}")
    except (ConfigError, InferenceError, ExportError, FileNotFoundError, ValueError) as exc:
        print(f"radocc.export: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
