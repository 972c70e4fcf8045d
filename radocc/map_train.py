"""Training of the vector-map tasks with ``python -m radocc.train``.

- ``task = "map"``: :class:`MapTrainer` trains a MapTR-style :class:`~radocc.models.MapModel`: a
  fusion teacher, a camera baseline student, or a MapDistill student distilled from a frozen
  teacher (relation, feature and head distillation, :mod:`radocc.map_losses`).
- ``task = "multi"``: :class:`MultiTaskTrainer` trains one camera student with the occupancy head
  and the map head on a shared BEV (:class:`radocc.multitask.MultiTaskModel`), distilled with
  RDC + RSC from an occupancy teacher and the MapDistill losses from a map teacher.

Both reuse :class:`radocc.train.Trainer`'s loop, data order, optimiser, schedule, EMA, checkpoints,
logs and NaN guard; the best checkpoint is chosen by val mAP (:mod:`radocc.evaluate_map`).

One map step (:meth:`MapTrainer.step`), top to bottom: data (images; cam2map = ego2map @ cam2ego;
LiDAR points in the map frame; the vector ground truth) -> models (student; frozen teacher under
no_grad) -> losses (:func:`map_head_losses`: MapTR's focal / point / direction, already weighted;
:func:`map_distill_losses`: MapDistill's terms, unweighted, weighted by [map_loss] in the total)
-> backward (clip, AdamW, schedule, EMA).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from radocc.checkpoint import load_checkpoint, load_into
from radocc.config import ExperimentConfig, MapLossSection, TeacherSection, load_config
from radocc.map_losses import (MapTarget, feature_distillation_loss, head_distillation_loss,
                               maptr_loss, relation_distillation_loss)
from radocc.models import MapModel, MapModelConfig, MapOutput, build_map_model
from radocc.train import Trainer, TrainingError, _logged, load_teacher, to_device

__all__ = ["MapTrainer", "MultiTaskTrainer", "map_frame_inputs", "map_targets", "load_map_teacher",
           "build_map_adapters", "map_head_losses", "map_distill_losses", "map_loss_total"]


# ----------------------------------------------------------------------------- data
def map_frame_inputs(batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """The map-frame camera poses and LiDAR points of a (collated) batch.

    Returns:
        cam2map [B, N, 4, 4] = ego2map @ cam2ego; points [B, P, 5] with x, y, z moved to the map
        frame (intensity and time lag kept; zero padding beyond ``num_points`` is meaningless).
    """
    ego2map = batch["ego2map"].float()                      # [B, 4, 4]
    cam2map = ego2map[:, None] @ batch["cam2ego"].float()   # [B, N, 4, 4]
    points = batch["points"]
    xyz = points[..., :3] @ ego2map[:, :3, :3].transpose(1, 2) + ego2map[:, None, :3, 3]
    return cam2map, torch.cat([xyz, points[..., 3:]], dim=-1)


def map_targets(batch: dict[str, Any]) -> list[MapTarget]:
    """The batch's vector ground truth, one :class:`~radocc.map_losses.MapTarget` per sample."""
    return [MapTarget(labels, orderings, valid) for labels, orderings, valid in
            zip(batch["map_labels"], batch["map_orderings"], batch["map_ordering_valid"])]


# ----------------------------------------------------------------------------- models
def load_map_teacher(section: TeacherSection, student: ExperimentConfig,
                     device: torch.device) -> MapModel:
    """The frozen map teacher named by ``section`` (config + checkpoint; the EMA weights when the
    teacher was trained with them), checked against what the student's losses compare."""
    teacher_config = load_config(section.config)
    if teacher_config.task != "map":
        raise TrainingError(f"teacher config {section.config} has task = {teacher_config.task!r}: "
                            f"MapDistill needs a map teacher (task = 'map')")
    t, s, w = teacher_config.map_model, student.map_model, student.map_loss
    if w.relation > 0 and t.modality != "fusion":
        raise TrainingError(f"map_loss.relation compares the teacher's camera and LiDAR BEVs: the "
                            f"teacher ({section.config}) must be map_model.modality = 'fusion', "
                            f"got {t.modality!r}")
    if t.pc_range != s.pc_range:
        raise TrainingError(f"teacher map_model.pc_range {t.pc_range} differs from the student's "
                            f"{s.pc_range}")
    if (w.relation > 0 or w.feature_bev > 0) and t.bev_shape != s.bev_shape:
        raise TrainingError(f"BEV distillation needs the same map_model.bev_shape: teacher "
                            f"{t.bev_shape}, student {s.bev_shape}")
    if t.head.num_points != s.head.num_points or t.head.num_classes != s.head.num_classes:
        raise TrainingError(f"teacher head predicts {t.head.num_classes} classes x "
                            f"{t.head.num_points} points, the student "
                            f"{s.head.num_classes} x {s.head.num_points}")
    if w.feature_decoder > 0 and t.head.num_vectors != s.head.num_vectors:
        raise TrainingError(f"map_loss.feature_decoder compares query features one to one: "
                            f"head.num_vectors must match (teacher {t.head.num_vectors}, "
                            f"student {s.head.num_vectors})")
    state = load_checkpoint(section.checkpoint)
    trained_task = (state.get("config") or {}).get("task", "occupancy")
    if trained_task != "map":
        raise TrainingError(f"teacher checkpoint {section.checkpoint} was written by a task "
                            f"{trained_task!r} run, not by a map model (task = 'map')")
    teacher = build_map_model(t)
    load_into(teacher, state.get("ema") or state["model"],
              f"teacher checkpoint {section.checkpoint} (teacher config {section.config})")
    teacher.eval().requires_grad_(False)
    return teacher.to(device)


def build_map_adapters(student: MapModelConfig, teacher: MapModelConfig | None,
                       w: MapLossSection) -> nn.ModuleDict | None:
    """1x1 adapters from the student's channels to the teacher's for the feature distillation
    (only where the channels differ): "bev" (a 1x1 conv on the fused BEV) and "decoder" (a linear
    layer on the query features). None when no adapter is needed."""
    if teacher is None:
        return None
    adapters = nn.ModuleDict()
    if w.feature_bev > 0 and student.bev_channels != teacher.bev_channels:
        adapters["bev"] = nn.Conv2d(student.bev_channels, teacher.bev_channels, 1)
    if w.feature_decoder > 0 and student.head.embed_dims != teacher.head.embed_dims:
        adapters["decoder"] = nn.Linear(student.head.embed_dims, teacher.head.embed_dims)
    return adapters or None


# ----------------------------------------------------------------------------- losses
def map_head_losses(student: MapOutput, targets: list[MapTarget], config: ExperimentConfig
                    ) -> dict[str, Tensor]:
    """MapTR's head losses on every decoder layer: {"map_cls", "map_pts", "map_dir"}, weighted
    by map_loss.cls / pts / dir."""
    w = config.map_loss
    return maptr_loss(student.cls_logits, student.points, targets, cls_weight=w.cls,
                      pts_weight=w.pts, dir_weight=w.dir, pc_range=config.map_model.pc_range)


def map_distill_losses(student: MapOutput, teacher: MapOutput, adapters: nn.ModuleDict | None,
                       w: MapLossSection) -> dict[str, Tensor]:
    """MapDistill's terms with weight > 0, unweighted: "relation" (student GKT / LSS BEVs vs the
    teacher's camera / LiDAR BEVs), "feature_bev" (fused BEVs), "feature_decoder" (last decoder
    layer's query features), "head_cls" / "head_pts" (teacher predictions as pseudo labels)."""
    def adapter(name: str) -> nn.Module | None:
        return adapters[name] if adapters is not None and name in adapters else None

    terms: dict[str, Tensor] = {}
    if w.relation > 0:
        terms["relation"] = relation_distillation_loss(student.bev_a, student.bev_b, teacher.bev_a,
                                                       teacher.bev_b, w.relation_patch_size,
                                                       w.relation_tokens)
    if w.feature_bev > 0:
        terms["feature_bev"] = feature_distillation_loss(student.bev, teacher.bev, adapter("bev"))
    if w.feature_decoder > 0:
        terms["feature_decoder"] = feature_distillation_loss(
            student.query_features, teacher.query_features, adapter("decoder"))
    if w.head_cls > 0 or w.head_pts > 0:
        head = head_distillation_loss(student.cls_logits[-1], student.points[-1],
                                      teacher.cls_logits[-1], teacher.points[-1],
                                      w.head_score_threshold)
        terms.update({k: v for k, v in head.items() if getattr(w, k) > 0})
    return terms


def map_loss_total(terms: dict[str, Tensor], w: MapLossSection) -> Tensor:
    """The map loss: the (already weighted) head terms plus the weighted MapDistill terms."""
    return sum(value * (getattr(w, name) if name in w.DISTILL_TERMS else 1.0)
               for name, value in terms.items())


# ----------------------------------------------------------------------------- trainers
class MapTrainer(Trainer):
    """Trainer of ``task = "map"``: a MapModel (teacher, baseline or MapDistill student)."""

    metric = "mAP"

    def _new_model(self) -> nn.Module:
        return build_map_model(self.config.map_model)

    def _build_models(self, teacher: nn.Module | None) -> None:
        c = self.config
        self.model = self._new_model().to(self.device)
        self.teacher = teacher or (load_map_teacher(c.teacher, c, self.device) if c.map_distills else None)
        adapters = build_map_adapters(c.map_model, self.teacher.config if self.teacher else None, c.map_loss)
        self.adapter = adapters.to(self.device) if adapters is not None else None

    # ---- the step: data -> models -> losses -> backward
    def step(self, batch: dict[str, Any]) -> dict[str, float]:
        c = self.config
        # data
        with self._phase("data_to_device"):
            batch = to_device(batch, self.device)
        images, intrinsics = batch["images"], batch["intrinsics"]
        cam2map, points = map_frame_inputs(batch)
        lidar = (points, batch["num_points"])
        with self._autocast():
            # models
            with self._phase("student_forward"):
                student: MapOutput = self.net(images, intrinsics, cam2map,
                                              *(lidar if c.map_model.modality == "fusion" else (None, None)))
            teacher: MapOutput | None = None
            if self.teacher is not None:
                with self._phase("teacher_forward"), torch.no_grad():
                    teacher = self.teacher(images, intrinsics, cam2map, *lidar)
            # losses
            with self._phase("map_losses"):
                terms = map_head_losses(student, map_targets(batch), c)
                if teacher is not None:
                    terms.update(map_distill_losses(student, teacher, self.adapter, c.map_loss))
                total = map_loss_total(terms, c.map_loss)
        self._check_finite(terms)
        # backward
        self._update(total)
        return _logged(terms, total)

    def validate(self) -> dict[str, Any]:
        from radocc.evaluate_map import evaluate_map_model

        return evaluate_map_model(self.eval_model(), self.val_loader, self.config, self.device,
                                  progress=self.progress)


class MultiTaskTrainer(Trainer):
    """Trainer of ``task = "multi"``: one camera student with the occupancy and the map heads on a
    shared BEV (:class:`radocc.multitask.MultiTaskModel`); RDC + RSC (and the other occupancy
    losses of [loss]) from the occupancy teacher [teacher], the MapDistill losses of [map_loss]
    from the map teacher [map_teacher]. Validation reports both mIoU and mAP; best.pt follows mAP."""

    metric = "mAP"

    def _new_model(self) -> nn.Module:
        from radocc.multitask import MultiTaskModel

        return MultiTaskModel(self.config.model, self.config.map_model)

    def _build_models(self, teacher: nn.Module | None) -> None:
        c = self.config
        self.model = self._new_model().to(self.device)
        self.teacher = teacher or (load_teacher(c, self.device) if c.distills else None)
        self.map_teacher = (load_map_teacher(c.map_teacher, c, self.device) if c.map_distills else None)
        adapters = build_map_adapters(c.map_model, self.map_teacher.config if self.map_teacher else None,
                                      c.map_loss)
        if c.loss.feature_alignment > 0:
            from radocc.losses import FeatureAlignment

            adapters = adapters if adapters is not None else nn.ModuleDict()
            adapters["occupancy"] = FeatureAlignment(c.model.bev_encoder.out_channels,
                                                     self.teacher.config.bev_encoder.out_channels)
        self.adapter = adapters.to(self.device) if adapters is not None else None

    # ---- the step: data -> models -> render / losses -> backward
    def step(self, batch: dict[str, Any]) -> dict[str, float]:
        c, w = self.config, self.config.loss
        # data
        with self._phase("data_to_device"):
            batch = to_device(batch, self.device)
        images, intrinsics, cam2ego = batch["images"], batch["intrinsics"], batch["cam2ego"]
        cam2map, map_points = map_frame_inputs(batch)
        with self._autocast():
            # models: the student's occupancy output (ego frame) and map output (map frame)
            with self._phase("student_forward"):
                occ, vec = self.net(images, intrinsics, cam2ego, batch["ego2map"])
            teacher = map_teacher = None
            with self._phase("teacher_forward"), torch.no_grad():
                if self.teacher is not None:
                    teacher = self.teacher(images, intrinsics, cam2ego, batch["points"], batch["num_points"])
                if self.map_teacher is not None:
                    map_teacher = self.map_teacher(images, intrinsics, cam2map, map_points, batch["num_points"])
            # occupancy: render teacher and student along the workers' rays (RDC, RSC), CE, ...
            occupancy_adapter = (self.adapter["occupancy"] if self.adapter is not None
                                 and "occupancy" in self.adapter else None)
            terms = self.occupancy_losses(batch, occ, teacher, occupancy_adapter)
            occupancy_total = sum(getattr(w, name) * value for name, value in terms.items())
            # map: MapTR head losses and MapDistill
            with self._phase("map_losses"):
                map_terms = map_head_losses(vec, map_targets(batch), c)
                if map_teacher is not None:
                    map_terms.update(map_distill_losses(vec, map_teacher, self.adapter, c.map_loss))
                total = occupancy_total + map_loss_total(map_terms, c.map_loss)
        terms.update(map_terms)
        self._check_finite(terms)
        # backward
        self._update(total)
        return _logged(terms, total)

    def validate(self) -> dict[str, Any]:
        from radocc.evaluate_map import evaluate_multitask_model

        return evaluate_multitask_model(self.eval_model(), self.val_loader, self.config, self.device,
                                        progress=self.progress)
