"""Occupancy models: camera student (FlashOcc M1 / BEVDet-occ style) and camera + LiDAR teacher;
vector-map models (MapTR head, GKT; MapDistill's camera students and fusion teacher).

Plain ``nn.Module``s built from the config dataclasses in :mod:`radocc.models.config`. Importing
this package never loads the compiled renderer; :func:`render_density` imports it when called.
"""

from radocc.models.config import (BEVEncoderConfig, CameraConfig, GKTConfig, HeadConfig, LidarConfig,
                                  MapHeadConfig, MapModelConfig, ModelConfig)
from radocc.models.gkt import GKTViewTransform
from radocc.models.map_model import MapModel, MapOutput, MapPrediction, build_map_model
from radocc.models.maptr_head import MapTRHead
from radocc.models.occupancy import (ModelOutput, OccupancyModel, build_model, render_density,
                                     semantic_features)

__all__ = ["ModelConfig", "CameraConfig", "BEVEncoderConfig", "HeadConfig", "LidarConfig",
           "OccupancyModel", "ModelOutput", "build_model", "semantic_features", "render_density",
           "MapModelConfig", "GKTConfig", "MapHeadConfig", "GKTViewTransform", "MapTRHead",
           "MapModel", "MapOutput", "MapPrediction", "build_map_model"]
