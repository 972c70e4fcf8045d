"""``python -m radocc.bench train-step CONFIG``: where the time of one distillation step goes.

Runs real training steps of the config (``radocc.train.Trainer.step``, timed by phase) on its data
root, after warm-up steps, and reports the median of each phase: data (loading and preparing one
batch in this process; in training, dataloader workers overlap it), student forward, teacher forward,
render (teacher and student, forward), render losses (RDC + RSC), other losses, backward + update.
The renderer's backward runs inside the step's backward; it is measured separately (render both
models' logits again and backpropagate RDC + RSC alone) and reported as ``render_backward``, so
``rendering_share`` = (render + render losses + render backward) / step, data excluded.

The teacher's weights are random unless its checkpoint exists (the cost does not depend on them).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch

from radocc.config import load_config, load_model_config
from radocc.models import build_model

PHASES = ("data", "data_to_device", "student_forward", "teacher_forward", "render", "render_losses", "other_losses",
          "backward_and_update")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _render_backward_seconds(trainer, batch: dict[str, Any]) -> float:
    """The backward of rendering + RDC + RSC alone (student logits -> the step's
    ``RenderDistillLoss``): the renderer's share of the step's backward, in seconds."""
    from radocc.train import to_device

    c, w = trainer.config, trainer.config.loss
    batch = to_device(batch, trainer.device)
    with torch.no_grad():  # in eval mode: this extra pass must not move the BatchNorm statistics
        lidar = (batch["points"], batch["num_points"]) if c.model.modality == "fusion" else (None, None)
        trainer.model.eval()
        s_logits = trainer.model(batch["images"], batch["intrinsics"], batch["cam2ego"], *lidar).logits
        trainer.model.train()
        t_logits = trainer.teacher(batch["images"], batch["intrinsics"], batch["cam2ego"],
                                   batch["points"], batch["num_points"]).logits
    s_logits = s_logits.float().requires_grad_()
    loss = trainer.render_loss(
        s_logits, t_logits, batch["intrinsics"], batch["cam2ego"], pixels=batch["ray_pixels"],
        valid=batch["ray_valid"],
        ray_segments=batch.get("ray_segments") if w.rsc_mode == "affinity" else None)["loss"]
    _sync(trainer.device)
    tic = time.perf_counter()
    loss.backward()
    _sync(trainer.device)
    return time.perf_counter() - tic


def bench_train_step(config_path: str, overrides: list[str], steps: int = 3, warmup: int = 1,
                     out: str = "runs/bench-train-step") -> dict[str, Any]:
    """Median phase times (seconds) of ``steps`` training steps of the config after ``warmup``."""
    from radocc.train import Trainer

    config = load_config(config_path, ["data.num_workers=0", *overrides])
    teacher = None
    teacher_weights = config.teacher.checkpoint or "no teacher"
    if config.distills and not os.path.isfile(config.teacher.checkpoint):
        # The cost does not depend on the weights: a random teacher of the teacher config.
        teacher = build_model(load_model_config(config.teacher.config))
        teacher_weights = f"random (no checkpoint at {config.teacher.checkpoint})"
    trainer = Trainer(config, out, progress=False, teacher=teacher)
    trainer.model.train()
    trainer.train_set.set_epoch(0)
    loader = iter(trainer.train_loader)
    records = []
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    for i in range(warmup + steps):
        tic = time.perf_counter()
        try:
            batch = next(loader)
        except StopIteration:
            loader = iter(trainer.train_loader)
            batch = next(loader)
        data = time.perf_counter() - tic
        trainer.timings = {}
        tic = time.perf_counter()
        trainer.step(batch)
        _sync(trainer.device)
        total = time.perf_counter() - tic
        timings = dict(trainer.timings, data=data, step=total)
        if trainer.teacher is not None and (config.loss.rdc > 0 or config.loss.rsc > 0):
            timings["render_backward"] = _render_backward_seconds(trainer, batch)
        if i >= warmup:
            records.append(timings)
    keys = sorted({k for r in records for k in r})
    median = {k: statistics.median(r.get(k, 0.0) for r in records) for k in keys}
    rendering = median.get("render", 0.0) + median.get("render_losses", 0.0) + median.get("render_backward", 0.0)
    result = {
        "config": config_path, "overrides": overrides,
        "device": str(trainer.device) if trainer.device.type == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(), "batch_size": config.data.batch_size,
        "image_size": list(config.data.image_size), "rays_per_sample": int(batch["ray_pixels"][0, ..., 0].numel()),
        "teacher_weights": teacher_weights, "steps": steps,
        "seconds": median,
        "rendering_seconds": rendering,
        "rendering_share": rendering / median["step"],
        "peak_bytes": (torch.cuda.max_memory_allocated(trainer.device) if trainer.device.type == "cuda"
                       else _peak_rss()),
    }
    return result


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def print_train_step(result: dict[str, Any]) -> None:
    s = result["seconds"]
    print(f"config: {result['config']} {' '.join(result['overrides'])}")
    print(f"device: {result['device']} ({result['threads']} threads), batch {result['batch_size']}, "
          f"images {result['image_size'][0]}x{result['image_size'][1]}, {result['rays_per_sample']} "
          f"rays per sample, teacher weights: {result['teacher_weights']}")
    print(f"median of {result['steps']} steps, seconds:")
    for key in (*PHASES, "render_backward", "step"):
        if key in s:
            share = "" if key == "data" else f"{100 * s[key] / s['step']:6.1f} %"
            print(f"  {key:22} {s[key]:8.3f} {share}")
    print(f"rendering + RDC + RSC (forward and backward): {result['rendering_seconds']:.3f} s = "
          f"{100 * result['rendering_share']:.1f} % of the step (target <= 10 %)")
    print(f"peak memory: {result['peak_bytes'] / 1024 ** 3:.2f} GiB")
