"""The nuScenes sensor rig: six cameras and the roof LiDAR (values like the real calibration).

Camera frame: x right, y down, z forward (OpenCV). LiDAR frame: x right, y forward, z up.
Ego frame: x forward, y left, z up, origin on the ground under the rear axle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radocc.data.geometry import make_transform

CAMERA_NAMES: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
)
"""The six nuScenes cameras, in the order the loader returns them."""

LIDAR_NAME = "LIDAR_TOP"
NATIVE_IMAGE_SIZE: tuple[int, int] = (900, 1600)
"""(H, W) of nuScenes camera images in pixels."""


@dataclass(frozen=True)
class SensorCalibration:
    """One sensor's extrinsics (sensor -> ego) and, for cameras, intrinsics at 1600x900 pixels."""

    channel: str
    translation: tuple[float, float, float]
    rotation: tuple[float, float, float, float]  # [w, x, y, z]
    focal: float = 0.0
    principal_point: tuple[float, float] = (0.0, 0.0)

    def intrinsics(self, image_size: tuple[int, int] = NATIVE_IMAGE_SIZE) -> np.ndarray:
        """Pinhole matrix [3, 3] for an image of ``image_size`` = (H, W) pixels.

        Scaled from 1600x900 with pixel centres at integer coordinates: c' = (c + 0.5) * s - 0.5.
        """
        sy = image_size[0] / NATIVE_IMAGE_SIZE[0]
        sx = image_size[1] / NATIVE_IMAGE_SIZE[1]
        return np.array([
            [self.focal * sx, 0.0, (self.principal_point[0] + 0.5) * sx - 0.5],
            [0.0, self.focal * sy, (self.principal_point[1] + 0.5) * sy - 0.5],
            [0.0, 0.0, 1.0],
        ])


CAMERAS: dict[str, SensorCalibration] = {c.channel: c for c in (
    SensorCalibration("CAM_FRONT", (1.7008, 0.0159, 1.5110),
                      (0.4998015, -0.5030316, 0.4997798, -0.4973708), 1266.42, (816.27, 491.51)),
    SensorCalibration("CAM_FRONT_RIGHT", (1.5508, -0.4934, 1.4957),
                      (0.2060348, -0.2026941, 0.6824508, -0.6713611), 1260.85, (807.97, 495.33)),
    SensorCalibration("CAM_FRONT_LEFT", (1.5239, 0.4946, 1.5093),
                      (0.6757265, -0.6736267, 0.2121402, -0.2112283), 1272.60, (826.62, 479.75)),
    SensorCalibration("CAM_BACK", (0.0283, 0.0035, 1.5791),
                      (0.5037873, -0.4974025, -0.4941850, 0.5045496), 809.22, (829.22, 481.78)),
    SensorCalibration("CAM_BACK_LEFT", (1.0357, 0.4848, 1.5910),
                      (0.6924186, -0.7031619, -0.1164834, 0.1120332), 1256.74, (792.11, 492.78)),
    SensorCalibration("CAM_BACK_RIGHT", (1.0149, -0.4806, 1.5624),
                      (0.1228098, -0.1324008, -0.7004306, 0.6904960), 1259.51, (807.25, 501.20)),
)}

def camera_matrices(image_size: tuple[int, int] = NATIVE_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics [6, 3, 3] (pixels, for images of ``image_size`` = (H, W)) and cam2ego
    [6, 4, 4] (metres) of the six cameras in :data:`CAMERA_NAMES` order, float64."""
    intrinsics = np.stack([CAMERAS[c].intrinsics(image_size) for c in CAMERA_NAMES])
    cam2ego = np.stack([make_transform(CAMERAS[c].rotation, CAMERAS[c].translation)
                        for c in CAMERA_NAMES])
    return intrinsics, cam2ego


LIDAR = SensorCalibration(LIDAR_NAME, (0.9437, 0.0, 1.8402), (0.7077955, -0.0064922, 0.0106462, -0.7063073))

LIDAR_ELEVATIONS_DEG: np.ndarray = np.linspace(-30.67, 10.67, 32)
"""Elevation of each of the 32 beams (Velodyne HDL-32E), ring 0 lowest, degrees."""


def lidar_beam_directions(num_azimuths: int = 1080) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions [32 * A, 3] in the LiDAR frame (x right, y forward, z up) and their ring ids [32 * A]."""
    elev = np.radians(LIDAR_ELEVATIONS_DEG)[:, None]
    az = np.linspace(0.0, 2 * np.pi, num_azimuths, endpoint=False)[None, :]
    dirs = np.stack([np.cos(elev) * np.cos(az), np.cos(elev) * np.sin(az),
                     np.broadcast_to(np.sin(elev), (32, num_azimuths))], axis=-1)
    rings = np.broadcast_to(np.arange(32)[:, None], (32, num_azimuths))
    return dirs.reshape(-1, 3), rings.reshape(-1).copy()
