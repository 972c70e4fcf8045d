"""Train a teacher, a baseline student or a distilled (RadOcc / MapDistill) student.

    python -m radocc.train CONFIG.toml [--set key=value ...] [--out DIR] [--resume PATH]
    torchrun --nproc-per-node G [--nnodes N ...] -m radocc.train CONFIG.toml   (multi-GPU / node)

One training step, read top to bottom in :meth:`Trainer.step`:
data (images, LiDAR, labels, and the ray pixels and lookups prepared by the dataloader workers)
-> models (student; frozen teacher under no_grad) -> render (teacher and student along the same
rays) and RDC / RSC (both by :class:`radocc.distill.RenderDistillLoss`, the module other codebases
use) -> other losses (occupancy, depth, feature / logit alignment) -> backward (clip, AdamW,
schedule, EMA).

``task = "map"`` (vector maps, MapTR / MapDistill) and ``task = "multi"`` (one camera student with
the occupancy and the map heads) run :class:`radocc.map_train.MapTrainer` and
:class:`radocc.map_train.MultiTaskTrainer`: the same loop, data, optimiser and checkpoints, with
their own models, losses and validation (best checkpoint by val mAP).

Outputs in the run folder (``--out``, default ``runs/<name>``): ``last.pt`` (every epoch),
``best.pt`` (best val mIoU; map tasks: mAP), ``config.toml`` (the resolved config), ``metrics.jsonl`` and
TensorBoard logs in ``tb/``. Checkpoints are written atomically and read with ``weights_only=True``;
``--resume last.pt`` continues with the same model, optimiser, schedule, RNG and data order.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from radocc import losses
from radocc.checkpoint import (CheckpointError, link_checkpoint, load_checkpoint, load_into, rng_state,
                               save_checkpoint, set_rng_state)
from radocc.config import ConfigError, ExperimentConfig, load_config, to_dict
from radocc.data import DataError, DatasetConfig, NuScenesOccDataset, collate
from radocc.data.rig import CAMERA_NAMES
from radocc.data.targets import RayChoice, camera_depth_image, lss_depth_targets, render_targets
from radocc.models import ModelOutput, OccupancyModel, build_model

__all__ = ["Trainer", "TrainingError", "RenderTargetSet", "EMA", "build_dataset", "build_loader",
           "build_render_loss", "render_logits", "load_teacher", "param_groups", "to_device", "trainer_class", "main"]


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, a mismatched teacher, a bad data root)."""


# ----------------------------------------------------------------------------- data
class RenderTargetSet(Dataset):
    """A dataset whose items also carry the render rays and lookups (prepared in the workers).

    Item i of epoch e draws its rays with the generator seeded by (seed, e, i), and the base
    dataset's augmentation is reseeded per epoch, so the data of a run depend only on the seed.
    ``choice=None`` adds no rays (task "map").
    """

    def __init__(self, base: NuScenesOccDataset, choice: RayChoice | None, depth_targets: bool,
                 seed: int):
        self.base, self.choice, self.depth_targets, self.seed = base, choice, depth_targets, seed
        self.epoch = 0
        self._base_config = base.config

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self._base_config.augment:
            self.base.config = replace(self._base_config, seed=self.seed * 100003 + epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        if self.choice is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            item.update(render_targets(item, self.choice, rng))
        if self.depth_targets:
            item["depth_target"] = lss_depth_targets(camera_depth_image(item))
        return item


class ShardSampler(Sampler[int]):
    """This rank's share of the samples: shuffled by (seed, epoch) in training, every world-th
    index from ``rank`` (no padding, so evaluation counts each sample once)."""

    def __init__(self, size: int, rank: int, world: int, shuffle: bool, seed: int):
        self.size, self.rank, self.world, self.shuffle, self.seed = size, rank, world, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def __iter__(self):
        order = self._order()
        if self.shuffle:  # equal shares, so every rank runs the same number of steps
            order = order[: len(order) - len(order) % self.world] or order[: self.world]
        return iter(order[self.rank::self.world])

    def __len__(self) -> int:
        return len(range(self.rank, self.size if not self.shuffle else
                         max(self.world, self.size - self.size % self.world), self.world))


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def build_dataset(config: ExperimentConfig, split: str, train: bool,
                  segments: bool | None = None, vector_cache: str | Path | None = None) -> RenderTargetSet:
    """The render-target dataset of a split (training augmentation on for ``train``). Map tasks
    add the vector-map ground truth (cached in ``data.vector_cache``, else ``vector_cache``);
    task "map" draws no render rays."""
    d = config.data
    vectors = config.task in ("map", "multi")
    cache = d.vector_cache or (str(vector_cache) if vector_cache and vectors else None)
    base = NuScenesOccDataset(d.root, d.version, split, DatasetConfig(
        image_size=tuple(d.image_size), cameras=tuple(d.cameras) or CAMERA_NAMES,
        lidar_sweeps=d.lidar_sweeps, augment=train and d.augment, seed=config.seed,
        load_segments=segments, vectors=vectors, vector_cache=cache if vectors else None))
    limit = d.max_train_samples if train else d.max_val_samples
    if limit:
        base.records = base.records[:limit]
    r = config.render
    rays = None if config.task == "map" else RayChoice(r.pixels, r.stride, r.rays_per_image)
    return RenderTargetSet(base, rays, depth_targets=train and config.task != "map" and config.loss.depth > 0,
                           seed=config.seed)


def build_loader(dataset: RenderTargetSet, config: ExperimentConfig, rank: int, world: int,
                 train: bool) -> DataLoader:
    sampler = ShardSampler(len(dataset), rank, world, shuffle=train, seed=config.seed)
    return DataLoader(dataset, batch_size=config.data.batch_size if train else 1, sampler=sampler,
                      num_workers=config.data.num_workers, collate_fn=collate,
                      worker_init_fn=_seed_worker, drop_last=False,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


# ----------------------------------------------------------------------------- render
def build_render_loss(config: ExperimentConfig):
    """The config's renderer and RDC / RSC losses: a ``radocc.distill.RenderDistillLoss`` over the
    model's grid with [render]'s bins, step and chunking and [loss]'s weights and RSC mode (the
    rays are the workers' pixels, so its ``rays_per_image`` / ``stride`` are only its defaults)."""
    from radocc.distill import RenderDistillLoss  # loads the compiled extension

    m, r, w = config.model, config.render, config.loss
    return RenderDistillLoss((tuple(m.grid_lower), tuple(m.grid_upper)),
                             depth_bins=tuple(r.depth_bins), step=r.step or None,
                             rdc_weight=w.rdc, rsc_weight=w.rsc, rsc_mode=w.rsc_mode,
                             rays_per_image=r.rays_per_image, stride=r.stride,
                             num_classes=m.num_classes, free_index=m.num_classes - 1,
                             chunk_rays=r.chunk_rays, rsc_depth_agreement=w.rsc_depth_agreement,
                             rsc_semantics_only=w.rsc_semantics_only)


def render_logits(logits: Tensor, config: ExperimentConfig) -> Tensor:
    """The voxel logits [..., K] that get rendered for a model trained with ``config``.

    With ``render.calibrated`` and ``loss.class_weights`` w: logits - log w. Class-weighted CE's
    optimum is p(c) proportional to w_c * p_true(c), so every uncertain voxel's occupied classes
    are inflated by their weights (27-35x in the synthetic configs) and, rendered as they are, turn
    opaque: the rays stop within metres of the camera (measured on the synthetic teacher: depth
    delta1 2 %, 60 % calibrated). Only what is rendered changes, not the model's predictions
    (the argmax of its raw logits).
    """
    weights = config.loss.class_weights
    if not (config.render.calibrated and weights):
        return logits
    return logits - torch.tensor(weights, dtype=logits.dtype, device=logits.device).log()


# ----------------------------------------------------------------------------- models
def load_teacher(config: ExperimentConfig, device: torch.device) -> OccupancyModel:
    """The frozen teacher: built from its config's [model], weights from its checkpoint (the EMA
    weights when the teacher was trained with EMA)."""
    full = load_config(config.teacher.config)
    if full.task != "occupancy":
        raise TrainingError(f"teacher config {config.teacher.config} has task = {full.task!r}: RDC / RSC "
                            f"need an occupancy teacher (task = 'occupancy')")
    teacher_config = full.model
    if teacher_config.num_classes != config.model.num_classes:
        raise TrainingError(f"teacher predicts {teacher_config.num_classes} classes, the student "
                            f"{config.model.num_classes}")
    teacher = build_model(teacher_config)
    state = load_checkpoint(config.teacher.checkpoint)
    weights = state.get("ema") or state["model"]
    load_into(teacher, weights, f"teacher checkpoint {config.teacher.checkpoint} "
                                f"(teacher config {config.teacher.config})")
    teacher.eval().requires_grad_(False)
    return teacher.to(device)


class EMA(nn.Module):
    """Exponential moving average of a model's parameters and buffers; ``build()`` makes a fresh
    model of the same architecture (default: ``build_model(model.config)``)."""

    def __init__(self, model: nn.Module, decay: float, build: Callable[[], nn.Module] | None = None):
        super().__init__()
        self.decay = decay
        self.module = (build() if build else build_model(model.config)).to(next(model.parameters()).device)
        self.module.load_state_dict(model.state_dict())
        self.module.eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema = self.module.state_dict()
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                ema[name].lerp_(value.detach(), 1.0 - self.decay)
            else:
                ema[name].copy_(value)


# ----------------------------------------------------------------------------- training
def _lr_lambda(warmup: int, total: int, min_ratio: float):
    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        progress = min(1.0, (it - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def param_groups(modules: Sequence[nn.Module | None], lr: float, backbone_lr_mult: float) -> list[dict]:
    """AdamW parameter groups: the image backbones' parameters at ``lr * backbone_lr_mult``
    (MapTR: 0.1), the rest at ``lr``; one group when the factor is 1."""
    params = [(n, p) for m in modules if m is not None for n, p in m.named_parameters()]
    if backbone_lr_mult == 1.0:
        return [dict(params=[p for _, p in params], lr=lr)]
    backbone = [p for n, p in params if "image_encoder.backbone." in n]
    rest = [p for n, p in params if "image_encoder.backbone." not in n]
    return [dict(params=rest, lr=lr), dict(params=backbone, lr=lr * backbone_lr_mult)]


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank), initialising torch.distributed under torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


class Trainer:
    """Everything one run holds: data, student (+ teacher), optimiser, schedule, logs.

    Subclasses for other tasks (radocc.map_train) replace :meth:`_build_models`, :meth:`step`
    and :meth:`validate`; ``metric`` is the validation result that picks ``best.pt``.
    """

    metric = "mIoU"

    def __init__(self, config: ExperimentConfig, out: str | Path, *, progress: bool = True,
                 teacher: nn.Module | None = None):
        """``teacher``: a ready teacher to use instead of loading [teacher] (benchmarks, tests;
        task "multi": the occupancy teacher)."""
        self.config = config
        self.out = Path(out)
        self.rank, self.world, local_rank = _distributed()
        self.device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.progress = progress and self.rank == 0
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        if config.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self._check_data()

        # data
        needs_segments = (config.task != "map" and config.distills and config.loss.rsc > 0
                          and config.loss.rsc_mode == "affinity")
        self.train_set = build_dataset(config, config.data.train_split, train=True, segments=needs_segments,
                                       vector_cache=self.out / "vector_cache")
        self.val_set = build_dataset(config, config.data.val_split, train=False, segments=False,
                                     vector_cache=self.out / "vector_cache")
        self.train_loader = build_loader(self.train_set, config, self.rank, self.world, train=True)
        self.val_loader = build_loader(self.val_set, config, self.rank, self.world, train=False)
        # models: self.model (trained), self.teacher (frozen or None), self.adapter (trained or None)
        if teacher is not None:
            teacher = teacher.eval().requires_grad_(False).to(self.device)
        self._build_models(teacher)
        if config.train.init_from:
            state = load_checkpoint(config.train.init_from, map_location=self.device)
            load_into(self.model, state.get("ema") or state["model"],
                      f"train.init_from {config.train.init_from}")
        self.net = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        o = config.optim
        lr = o.lr * (self.world if o.scale_lr else 1)
        self.optimizer = torch.optim.AdamW(param_groups([self.model, self.adapter], lr, o.backbone_lr_mult),
                                           lr=lr, weight_decay=o.weight_decay)
        self.total_iters = config.train.epochs * len(self.train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(o.warmup_iters, self.total_iters, o.min_lr_ratio))
        self.ema = EMA(self.model, o.ema_decay, self._new_model) if o.ema_decay > 0 else None
        self.render_loss = build_render_loss(config).to(self.device) if config.task != "map" else None
        self.class_weights = (torch.tensor(config.loss.class_weights, device=self.device)
                              if config.loss.class_weights else None)
        # whose class weights calibrate the teacher's renders: its own config's; a teacher handed
        # over ready-made is taken to share the student's
        self.teacher_config = (load_config(config.teacher.config)
                               if config.distills and teacher is None else config)
        self.epoch, self.iteration, self.best_metric = 0, 0, -math.inf
        self.writer = None
        self.timings: dict[str, float] | None = None

    def _new_model(self) -> nn.Module:
        """A fresh model of the trained architecture (the EMA's copy)."""
        return build_model(self.config.model)

    def _build_models(self, teacher: nn.Module | None) -> None:
        """The student (or teacher being trained), the frozen teacher it distils from (``teacher``
        when given, else [teacher]'s) and the feature-alignment adapter."""
        c = self.config
        self.model = self._new_model().to(self.device)
        self.teacher = teacher or (load_teacher(c, self.device) if c.distills else None)
        self.adapter = None
        if c.loss.feature_alignment > 0:
            t_channels = self.teacher.config.bev_encoder.out_channels
            self.adapter = losses.FeatureAlignment(c.model.bev_encoder.out_channels,
                                                   t_channels).to(self.device)

    def _check_data(self) -> None:
        from radocc.data.check import check_data_root

        c = self.config
        required = ["tables", "samples", "gts"]
        if c.task != "map" and c.loss.rsc > 0 and c.distills and c.loss.rsc_mode == "affinity":
            required.append("segments")
        if c.task in ("map", "multi"):
            required.append("map_expansion")
        for split in {c.data.train_split, c.data.val_split}:
            report = check_data_root(c.data.root, c.data.version, split, require=tuple(required))
            try:
                report.raise_if_missing(required)
            except DataError as exc:
                hint = (" (RSC needs SAM segments: make them with python -m radocc.segments, or set "
                        "loss.rsc = 0)" if "segments" in str(exc) and "segments" in required else "")
                if "map_expansion" in report.missing(required):
                    hint += (f" (task {c.task!r} needs the map expansion maps/expansion/<location>.json "
                             f"for the vector-map ground truth)")
                raise TrainingError(f"data root {c.data.root} is not ready for training{hint}:\n{exc}") from exc

    # ---- the step: data -> models -> render -> losses -> backward
    def step(self, batch: dict[str, Any]) -> dict[str, float]:
        c = self.config
        w = c.loss
        # data
        with self._phase("data_to_device"):
            batch = to_device(batch, self.device)
        images, intrinsics, cam2ego = batch["images"], batch["intrinsics"], batch["cam2ego"]
        with self._autocast():
            # models
            with self._phase("student_forward"):
                lidar = (batch["points"], batch["num_points"]) if c.model.modality == "fusion" else (None, None)
                student: ModelOutput = self.net(images, intrinsics, cam2ego, *lidar)
            teacher: ModelOutput | None = None
            if self.teacher is not None:
                with self._phase("teacher_forward"), torch.no_grad():
                    teacher = self.teacher(images, intrinsics, cam2ego, batch["points"], batch["num_points"])
            # render teacher and student along the workers' rays (RDC, RSC), then the other losses
            terms = self.occupancy_losses(batch, student, teacher, self.adapter)
            total = sum(getattr(w, name) * value for name, value in terms.items())
        self._check_finite(terms)
        # backward
        self._update(total)
        if self.writer is not None and c.train.image_every and self.iteration % c.train.image_every == 1:
            self._log_pictures(batch, student, teacher)
        return _logged(terms, total)

    def occupancy_losses(self, batch: dict[str, Any], student: ModelOutput, teacher: ModelOutput | None,
                         adapter: nn.Module | None) -> dict[str, Tensor]:
        """The unweighted occupancy loss terms of one step: RDC and RSC (the student and the
        teacher rendered along the workers' rays; phases "render", "render_losses"), the CE, and
        the depth and alignment baselines that [loss] switches on."""
        c, w = self.config, self.config.loss
        terms: dict[str, Tensor] = {}
        if teacher is not None and (w.rdc > 0 or w.rsc > 0):
            rendered = self.render_loss(
                render_logits(student.logits, c), render_logits(teacher.logits, self.teacher_config),
                batch["intrinsics"], batch["cam2ego"],
                pixels=batch["ray_pixels"], valid=batch["ray_valid"],
                ray_segments=batch.get("ray_segments") if w.rsc_mode == "affinity" else None,
                timer=self._phase)
            terms.update({k: rendered[k] for k in ("rdc", "rsc") if k in rendered})
        with self._phase("other_losses"):
            terms["occupancy"] = losses.occupancy_loss(student.logits, batch["semantics"],
                                                       batch["mask_camera"], self.class_weights)
            if w.depth > 0:
                terms["depth"] = losses.depth_loss(student.depth, batch["depth_target"],
                                                   c.model.camera.depth_bins)
            if teacher is not None and w.feature_alignment > 0:
                terms["feature_alignment"] = adapter(student.bev, teacher.bev)
            if teacher is not None and w.logit_alignment > 0:
                terms["logit_alignment"] = losses.logit_alignment_loss(
                    student.logits, teacher.logits, batch["mask_camera"])
        return terms

    def _update(self, total: Tensor) -> None:
        """Backward, gradient clipping, AdamW step, schedule step, EMA; counts the iteration."""
        with self._phase("backward_and_update"):
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if self.world > 1 and self.adapter is not None:  # DDP averages only the student's
                for p in self.adapter.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= self.world
            if self.config.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]], self.config.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
        self.iteration += 1

    def _autocast(self):
        """bf16 autocast on CUDA with train.amp = "bf16", else nothing."""
        if self.device.type == "cuda" and self.config.train.amp == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    @contextmanager
    def _phase(self, name: str):
        """Times a part of the step into ``self.timings`` when it is a dict (radocc.bench)."""
        if self.timings is None:
            yield
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        tic = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - tic

    def _check_finite(self, terms: dict[str, Tensor]) -> None:
        bad = [name for name, value in terms.items() if not bool(torch.isfinite(value.detach()).all())]
        if bad:
            last = self.out / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise TrainingError(f"step {self.iteration + 1} (epoch {self.epoch + 1}): loss "
                                f"{', '.join(repr(b) for b in bad)} is not finite "
                                f"({', '.join(f'{b}={float(terms[b].detach())}' for b in bad)}); training stopped "
                                f"before the update; {kept}")

    # ---- epochs, validation, checkpoints
    def fit(self) -> dict[str, Any]:
        """Train until ``train.epochs``; returns the last validation result."""
        c = self.config
        result: dict[str, Any] = {}
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.toml").write_text(_toml(to_dict(c)))
            self.writer = SummaryWriter(str(self.out / "tb"))
        try:
            while self.epoch < c.train.epochs:
                is_best, validated = False, {}
                self._train_epoch()
                self.epoch += 1
                if c.train.val_every and (self.epoch % c.train.val_every == 0
                                          or self.epoch == c.train.epochs):
                    result = validated = self.validate()
                    self._log_scalars({f"val/{k}": v for k, v in result.items()
                                       if isinstance(v, float)}, self.iteration)
                    is_best = result[self.metric] > self.best_metric
                    if is_best:
                        self.best_metric = result[self.metric]
                # best.pt first, as before it was a link: an interruption between the two
                # leaves last.pt at the previous epoch, so a resume redoes this one in full
                if is_best:
                    self._save("best.pt")
                self._save("last.pt", same_as="best.pt" if is_best else None)
                self._append_metrics({"epoch": self.epoch, "iteration": self.iteration, **validated})
        finally:
            if self.writer is not None:
                self.writer.close()
        return result

    def _train_epoch(self) -> None:
        self.model.train()
        self.train_set.set_epoch(self.epoch)
        self.train_loader.sampler.set_epoch(self.epoch)
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.config.train.epochs}",
                   disable=not self.progress, unit="it", dynamic_ncols=True)
        tic, logged_at = time.perf_counter(), self.iteration
        for batch in bar:
            logged = self.step(batch)
            bar.set_postfix({k: f"{v:.3g}" for k, v in logged.items()})
            if self.iteration % self.config.train.log_every == 0 or self.iteration == 1:
                steps = self.iteration - logged_at
                scalars = dict(logged, lr=self.scheduler.get_last_lr()[0],
                               samples_per_s=self.config.data.batch_size * self.world * steps
                               / max(time.perf_counter() - tic, 1e-9))
                self._log_scalars({f"train/{k}": v for k, v in scalars.items()}, self.iteration)
                tic, logged_at = time.perf_counter(), self.iteration

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def validate(self) -> dict[str, Any]:
        from radocc.evaluate import evaluate_model

        return evaluate_model(self.eval_model(), self.val_loader, self.config, self.device,
                              progress=self.progress, rayiou=False)

    def state_dict(self) -> dict[str, Any]:
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(),
                    ema=self.ema.module.state_dict() if self.ema else None, metric=self.metric,
                    adapter=self.adapter.state_dict() if self.adapter else None,
                    epoch=self.epoch, iteration=self.iteration, best_metric=self.best_metric,
                    rng=rng_state(), config=to_dict(self.config))

    def _save(self, name: str, same_as: str | None = None) -> None:
        """Write ``name`` in the run folder; ``same_as``: a checkpoint of this very state, which
        ``name`` becomes a hard link of (a second copy would double the run's disk)."""
        if self.rank == 0:
            if same_as is None:
                save_checkpoint(self.out / name, self.state_dict())
            else:
                link_checkpoint(self.out / same_as, self.out / name)
        if self.world > 1:
            dist.barrier()

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint of this run (model, optimiser, schedule, EMA, RNG, epoch)."""
        state = load_checkpoint(path, map_location=self.device)
        load_into(self.model, state["model"], f"checkpoint {path}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise TrainingError(f"{path} has no EMA weights but optim.ema_decay > 0")
            load_into(self.ema.module, state["ema"], f"EMA of checkpoint {path}")
        if self.adapter is not None:
            if state.get("adapter") is None:
                raise TrainingError(f"{path} has no adapter weights but this run trains one")
            load_into(self.adapter, state["adapter"], f"adapter of checkpoint {path}")
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self.best_metric = state.get("best_metric", state.get("best_miou"))  # best_miou: older runs
        set_rng_state(state["rng"])

    # ---- logs
    def _log_scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def _append_metrics(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record, default=_json_default) + "\n")

    @torch.no_grad()
    def _log_pictures(self, batch: dict[str, Any], student: ModelOutput, teacher: ModelOutput | None) -> None:
        """Rendered depth and semantics of the first camera of the first sample (student, teacher)."""
        from radocc.rays import camera_rays
        from radocc.viz import colorize_depth, colorize_labels

        height, width = batch["images"].shape[-2:]
        stride = 4
        origins, directions = camera_rays(batch["intrinsics"][:1, :1].float(), batch["cam2ego"][:1, :1].float(),
                                          (height, width), stride)
        rows = []
        for out, config in ((student, self.config), (teacher, self.teacher_config)):
            if out is None:
                continue
            r = self.render_loss.render(render_logits(out.logits[:1], config), origins, directions,
                                        termination=False)
            shape = (height // stride, width // stride)
            depth = colorize_depth(r.depth[0].view(shape))
            labels = colorize_labels(r.features[0].argmax(-1).view(shape), shade=r.opacity[0].view(shape))
            rows.append(np.concatenate([depth, labels], axis=1))
        self.writer.add_image("render/depth_semantics_student_teacher", np.concatenate(rows, axis=0),
                              self.iteration, dataformats="HWC")


def _logged(terms: dict[str, Tensor], total: Tensor) -> dict[str, float]:
    """A step's loss terms and total as floats (the tqdm / TensorBoard scalars)."""
    logged = {name: float(value.detach()) for name, value in terms.items()}
    logged["total"] = float(total.detach())
    return logged


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def _toml(data: dict, prefix: str = "") -> str:
    """A config dict as TOML (scalars first, then tables)."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = f"{prefix}.{key}" if prefix else key
        text += f"\n[{name}]\n" + _toml(value, name)
    return text


def trainer_class(config: ExperimentConfig) -> type[Trainer]:
    """The trainer of the config's task."""
    if config.task == "occupancy":
        return Trainer
    from radocc.map_train import MapTrainer, MultiTaskTrainer

    return MapTrainer if config.task == "map" else MultiTaskTrainer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radocc.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment config (.toml), e.g. configs/synthetic/radocc.toml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--out", help="run folder (default runs/<name>)")
    parser.add_argument("--resume", help="checkpoint to continue from (e.g. runs/<name>/last.pt)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.set)
        trainer = trainer_class(config)(config, args.out or f"runs/{config.name}",
                                        progress=not args.no_progress)
        if args.resume:
            trainer.resume(args.resume)
        result = trainer.fit()
    except (ConfigError, DataError, TrainingError, CheckpointError, FileNotFoundError) as exc:
        print(f"radocc.train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if trainer.rank == 0 and result:
        print(f"done: val {trainer.metric} {result[trainer.metric]:.2f} (best {trainer.best_metric:.2f}); "
              f"checkpoints in {trainer.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
