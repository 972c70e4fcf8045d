"""Rigid transforms and quaternions in the nuScenes conventions.

Quaternions are ``[w, x, y, z]`` (scalar first, as in the nuScenes tables and pyquaternion).
A transform ``a2b`` is a 4x4 homogeneous matrix mapping points in frame ``a`` to frame ``b``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def quaternion_to_matrix(q: Sequence[float]) -> np.ndarray:
    """Unit quaternion ``[w, x, y, z]`` -> rotation matrix [3, 3] (float64)."""
    w, x, y, z = (float(v) for v in q)
    n = np.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quaternion(m: np.ndarray) -> list[float]:
    """Rotation matrix [3, 3] -> unit quaternion ``[w, x, y, z]`` with w >= 0."""
    m = np.asarray(m, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q = q / np.linalg.norm(q)
    if q[0] < 0:
        q = -q
    return [float(v) for v in q]


def yaw_quaternion(yaw: float) -> list[float]:
    """Rotation by ``yaw`` radians about +z as ``[w, x, y, z]``."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def make_transform(rotation: np.ndarray | Sequence[float], translation: Sequence[float]) -> np.ndarray:
    """4x4 transform from a rotation (matrix [3, 3] or quaternion ``[w, x, y, z]``) and a translation [3] (m)."""
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape == (4,):
        r = quaternion_to_matrix(r)
    t = np.eye(4)
    t[:3, :3] = r
    t[:3, 3] = np.asarray(translation, dtype=np.float64)
    return t


def record_to_transform(record: dict) -> np.ndarray:
    """A nuScenes ``ego_pose`` / ``calibrated_sensor`` record -> 4x4 transform (child -> parent frame)."""
    return make_transform(record["rotation"], record["translation"])


def invert_transform(t: np.ndarray) -> np.ndarray:
    """Inverse of a rigid (or reflected-rigid) 4x4 transform."""
    out = np.eye(4, dtype=t.dtype)
    r = t[:3, :3]
    out[:3, :3] = r.T
    out[:3, 3] = -r.T @ t[:3, 3]
    return out


def transform_points(t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points [..., 3] (other trailing columns are not allowed)."""
    return points @ t[:3, :3].T + t[:3, 3]
