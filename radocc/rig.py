"""A nuScenes-like six-camera rig (values close to the real calibration of the nuScenes cars)."""

import math

import torch
from torch import Tensor

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
           "CAM_BACK_RIGHT")

# name: (x, y, z) metres in the ego frame (x forward, y left, z up), yaw in degrees, focal in
# pixels at 1600 x 900.
_RIG = {
    "CAM_FRONT": ((1.70, 0.02, 1.51), 0.0, 1266.0),
    "CAM_FRONT_RIGHT": ((1.55, -0.49, 1.50), -55.0, 1260.0),
    "CAM_FRONT_LEFT": ((1.52, 0.49, 1.51), 55.0, 1257.0),
    "CAM_BACK": ((0.03, 0.00, 1.58), 180.0, 809.0),
    "CAM_BACK_LEFT": ((1.04, 0.48, 1.56), 110.0, 1256.0),
    "CAM_BACK_RIGHT": ((1.04, -0.48, 1.57), -110.0, 1260.0),
}
FULL_SIZE = (900, 1600)  # (H, W) of nuScenes camera images


def camera_to_ego(translation: tuple[float, float, float], yaw_degrees: float) -> Tensor:
    """[4, 4] transform from an OpenCV camera frame (x right, y down, z forward) looking
    horizontally along ``yaw`` (counter-clockwise from the ego x axis) to the ego frame."""
    yaw = math.radians(yaw_degrees)
    forward = (math.cos(yaw), math.sin(yaw), 0.0)
    right = (math.sin(yaw), -math.cos(yaw), 0.0)
    down = (0.0, 0.0, -1.0)
    transform = torch.eye(4, dtype=torch.float64)
    transform[:3, 0], transform[:3, 1], transform[:3, 2] = (torch.tensor(v, dtype=torch.float64)
                                                           for v in (right, down, forward))
    transform[:3, 3] = torch.tensor(translation, dtype=torch.float64)
    return transform


def nuscenes_rig(image_size: tuple[int, int] = FULL_SIZE) -> tuple[Tensor, Tensor]:
    """Intrinsics [6, 3, 3] (pixels, for images of ``image_size`` = (H, W)) and cam2ego
    [6, 4, 4] (metres) of the six cameras, in :data:`CAMERAS` order, float64."""
    height, width = image_size
    scale_x, scale_y = width / FULL_SIZE[1], height / FULL_SIZE[0]
    intrinsics, cam2ego = [], []
    for name in CAMERAS:
        translation, yaw, focal = _RIG[name]
        # principal point at the image centre; integer pixel coordinates are pixel centres
        k = torch.tensor([[focal * scale_x, 0.0, width / 2 - 0.5],
                          [0.0, focal * scale_y, height / 2 - 0.5],
                          [0.0, 0.0, 1.0]], dtype=torch.float64)
        intrinsics.append(k)
        cam2ego.append(camera_to_ego(translation, yaw))
    return torch.stack(intrinsics), torch.stack(cam2ego)
