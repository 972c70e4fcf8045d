"""Writing the 13 nuScenes tables (the ``v1.0-*`` JSON files) for a generated dataset.

Only what the synthetic generator needs: records are appended in order and cross-linked by token;
``write`` checks the links before writing so a broken dataset is never produced silently.
"""

from __future__ import annotations

import hashlib
import json
import os

TABLE_NAMES: tuple[str, ...] = (
    "attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
    "sample_annotation", "sample_data", "scene", "sensor", "visibility",
)

CATEGORIES: dict[str, str] = {
    "human.pedestrian.adult": "Adult subcategory.",
    "vehicle.car": "Vehicle designed primarily for personal use.",
    "vehicle.truck": "Vehicles primarily designed to haul cargo.",
    "vehicle.bus.rigid": "Rigid bus.",
    "vehicle.trailer": "Any vehicle trailer.",
    "vehicle.construction": "Vehicles primarily designed for construction.",
    "vehicle.motorcycle": "Gasoline or electric powered 2-wheeled vehicle.",
    "vehicle.bicycle": "Human or electric powered 2-wheeled vehicle.",
    "movable_object.barrier": "Temporary road barrier placed in the scene.",
    "movable_object.trafficcone": "All types of traffic cone.",
}
"""The nuScenes categories the synthetic worlds use, with descriptions."""

ATTRIBUTES: dict[str, str] = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.stopped": "Vehicle, with a driver/rider in/on it, is currently stationary.",
    "vehicle.parked": "Vehicle is stationary (usually for longer duration) with no immediate intent to move.",
    "cycle.with_rider": "There is a rider on the bicycle or motorcycle.",
    "cycle.without_rider": "There is NO rider on the bicycle or motorcycle.",
    "pedestrian.moving": "The human is moving.",
    "pedestrian.standing": "The human is standing.",
    "pedestrian.sitting_lying_down": "The human is sitting or lying down.",
}

VISIBILITY_LEVELS: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)


class TokenMaker:
    """Deterministic 32-hex-digit tokens from a seed and a name (nuScenes tokens look like md5 hashes)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, *parts: object) -> str:
        text = "/".join([str(self.seed)] + [str(p) for p in parts])
        return hashlib.md5(text.encode()).hexdigest()


class TableWriter:
    """Accumulates nuScenes table records and writes them as ``<root>/<version>/<table>.json``."""

    def __init__(self, token: TokenMaker):
        self.token = token
        self.tables: dict[str, list[dict]] = {name: [] for name in TABLE_NAMES}
        self.category_tokens = {name: token("category", name) for name in CATEGORIES}
        self.attribute_tokens = {name: token("attribute", name) for name in ATTRIBUTES}
        for name, desc in CATEGORIES.items():
            self.tables["category"].append(dict(token=self.category_tokens[name], name=name, description=desc))
        for name, desc in ATTRIBUTES.items():
            self.tables["attribute"].append(dict(token=self.attribute_tokens[name], name=name, description=desc))
        for tok, level, desc in VISIBILITY_LEVELS:
            self.tables["visibility"].append(dict(token=tok, level=level, description=desc))
        self.sensor_tokens: dict[str, str] = {}

    def add(self, table: str, record: dict) -> str:
        """Append a record (which must carry its ``token``) and return the token."""
        self.tables[table].append(record)
        return record["token"]

    def sensor(self, channel: str, modality: str) -> str:
        """The token of the sensor record for ``channel``, created on first use."""
        if channel not in self.sensor_tokens:
            self.sensor_tokens[channel] = self.add(
                "sensor", dict(token=self.token("sensor", channel), channel=channel, modality=modality))
        return self.sensor_tokens[channel]

    @staticmethod
    def link_chain(records: list[dict]) -> None:
        """Set ``prev`` / ``next`` tokens along a list of records ('' at the ends)."""
        for i, rec in enumerate(records):
            rec["prev"] = records[i - 1]["token"] if i > 0 else ""
            rec["next"] = records[i + 1]["token"] if i + 1 < len(records) else ""

    def check(self) -> None:
        """Raise ValueError if any token reference points to a missing record."""
        tokens = {name: {r["token"] for r in recs} for name, recs in self.tables.items()}
        refs = {
            "calibrated_sensor": [("sensor_token", "sensor")],
            "instance": [("category_token", "category"), ("first_annotation_token", "sample_annotation"),
                         ("last_annotation_token", "sample_annotation")],
            "sample": [("scene_token", "scene")],
            "sample_data": [("sample_token", "sample"), ("ego_pose_token", "ego_pose"),
                            ("calibrated_sensor_token", "calibrated_sensor")],
            "sample_annotation": [("sample_token", "sample"), ("instance_token", "instance"),
                                  ("visibility_token", "visibility")],
            "scene": [("log_token", "log"), ("first_sample_token", "sample"), ("last_sample_token", "sample")],
        }
        for table, fields in refs.items():
            for rec in self.tables[table]:
                for fieldname, target in fields:
                    if rec[fieldname] not in tokens[target]:
                        raise ValueError(f"{table} {rec['token']}: {fieldname} -> missing {target}")
        for map_rec in self.tables["map"]:
            for log_token in map_rec["log_tokens"]:
                if log_token not in tokens["log"]:
                    raise ValueError(f"map {map_rec['token']}: log {log_token} missing")

    def write(self, table_dir: str) -> None:
        """Check the cross references, then write every table as JSON into ``table_dir``."""
        self.check()
        os.makedirs(table_dir, exist_ok=True)
        for name, records in self.tables.items():
            with open(os.path.join(table_dir, f"{name}.json"), "w") as f:
                json.dump(records, f, indent=0)
