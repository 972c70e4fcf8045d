"""Geometric augmentation that keeps images, intrinsics, LiDAR, occupancy and poses consistent.

Image side (per camera): resize by a scale, crop a window, optionally flip left-right; the same
pixel map updates the intrinsics (``K' = A @ K``) and warps segment maps by nearest neighbour.
Pixel centres are at integer coordinates (OpenCV): resizing by s maps u to (u + 0.5) s - 0.5.

BEV side (per sample): mirror the ego frame in x and/or y with F = diag(+-1, +-1, 1, 1). The
occupancy arrays flip on dims 0 / 1, points are multiplied by F, ``cam2ego`` and ``lidar2ego``
become F @ T and ``ego2global`` becomes ``ego2global @ F``, so every sensor sees the mirrored world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ImageTransform:
    """One camera's image transform: resize to ``resized`` (W, H), crop at ``crop`` (x0, y0) to
    ``output`` (W, H), then flip left-right if ``flip``."""

    source: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int]
    output: tuple[int, int]
    flip: bool = False

    def matrix(self) -> np.ndarray:
        """[3, 3] affine map from source pixel coordinates to output pixel coordinates."""
        sx = self.resized[0] / self.source[0]
        sy = self.resized[1] / self.source[1]
        a = np.array([[sx, 0.0, 0.5 * sx - 0.5 - self.crop[0]],
                      [0.0, sy, 0.5 * sy - 0.5 - self.crop[1]],
                      [0.0, 0.0, 1.0]])
        if self.flip:
            a = np.array([[-1.0, 0.0, self.output[0] - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ a
        return a

    def apply_intrinsics(self, intrinsics: np.ndarray) -> np.ndarray:
        """Intrinsics [3, 3] of the source image -> of the output image (fx < 0 after a flip)."""
        return self.matrix() @ intrinsics

    def apply_image(self, image: Image.Image) -> Image.Image:
        """Bilinear resize, crop (zero padding outside), flip of an RGB PIL image of size ``source``."""
        out = image if tuple(image.size) == tuple(self.resized) else image.resize(self.resized, Image.BILINEAR)
        x0, y0 = self.crop
        if (x0, y0) != (0, 0) or tuple(out.size) != tuple(self.output):
            out = out.crop((x0, y0, x0 + self.output[0], y0 + self.output[1]))
        if self.flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return out

    def apply_nearest(self, array: np.ndarray) -> np.ndarray:
        """Warp an integer map [H, W] of the source size by nearest neighbour (0 outside the source)."""
        inv = np.linalg.inv(self.matrix())
        vv, uu = np.meshgrid(np.arange(self.output[1]), np.arange(self.output[0]), indexing="ij")
        u = np.rint(inv[0, 0] * uu + inv[0, 2]).astype(np.int64)
        v = np.rint(inv[1, 1] * vv + inv[1, 2]).astype(np.int64)
        inside = (u >= 0) & (u < array.shape[1]) & (v >= 0) & (v < array.shape[0])
        out = np.zeros((self.output[1], self.output[0]), dtype=array.dtype)
        out[inside] = array[v[inside], u[inside]]
        return out


def image_transform(source: tuple[int, int], output: tuple[int, int], scale_jitter: float = 1.0,
                    crop_jitter: tuple[float, float] = (0.0, 0.0), flip: bool = False) -> ImageTransform:
    """Build an ImageTransform from ``source`` (W, H) to ``output`` (W, H).

    The image is first scaled to cover the output (scale = max of the two ratios) times
    ``scale_jitter``. The crop window is centred horizontally and bottom-aligned (the sky is cut
    first, as BEVDet does); ``crop_jitter`` = (dx in [-1, 1]: shift from the centre as a fraction of
    half the horizontal slack, dy in [0, 1]: fraction of the vertical slack left below the window).
    Where the scaled image is smaller than the output the window is centred and padded with zeros.
    """
    base = max(output[0] / source[0], output[1] / source[1]) * scale_jitter
    resized = (max(1, int(round(source[0] * base))), max(1, int(round(source[1] * base))))
    slack_x, slack_y = resized[0] - output[0], resized[1] - output[1]
    x0 = slack_x / 2 + (crop_jitter[0] * slack_x / 2 if slack_x > 0 else 0.0)
    y0 = slack_y * (1.0 - crop_jitter[1]) if slack_y > 0 else slack_y / 2
    return ImageTransform(source=tuple(source), resized=resized, crop=(int(round(x0)), int(round(y0))),
                          output=tuple(output), flip=flip)


def bev_flip_matrix(flip_x: bool, flip_y: bool) -> np.ndarray:
    """F = diag(-1 if flip_x, -1 if flip_y, 1, 1): the mirror applied to the ego frame."""
    return np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0, 1.0])


def flip_occupancy(array: np.ndarray, flip_x: bool, flip_y: bool) -> np.ndarray:
    """Mirror an [X, Y, ...] grid (symmetric about the ego origin in x and y) on dims 0 and/or 1."""
    if flip_x:
        array = array[::-1]
    if flip_y:
        array = array[:, ::-1]
    return np.ascontiguousarray(array)


def flip_points(points: np.ndarray, flip_x: bool, flip_y: bool) -> np.ndarray:
    """Mirror points [P, >=3] (ego frame) in x and/or y; the other columns are kept."""
    out = points.copy()
    if flip_x:
        out[:, 0] = -out[:, 0]
    if flip_y:
        out[:, 1] = -out[:, 1]
    return out
