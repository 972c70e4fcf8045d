"""Occupancy models: camera student (FlashOcc M1 / BEVDet-occ style) and camera + LiDAR teacher.

Plain ``nn.Module``s built from the config dataclasses in :mod:`radocc.models.config`. Importing
this package never loads the compiled renderer; :func:`render_density` imports it when called.
"""

from radocc.models.config import BEVEncoderConfig, CameraConfig, HeadConfig, LidarConfig, ModelConfig
from radocc.models.occupancy import (ModelOutput, OccupancyModel, build_model, render_density,
                                     semantic_features)

__all__ = ["ModelConfig", "CameraConfig", "BEVEncoderConfig", "HeadConfig", "LidarConfig",
           "OccupancyModel", "ModelOutput", "build_model", "semantic_features", "render_density"]
