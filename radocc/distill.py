"""RadOcc's rendering distillation (RDC + RSC) as one module any occupancy codebase can call.

    distill = RenderDistillLoss(VoxelGrid((-40, -40, -1), (40, 40, 5.4)), rays_per_image=1024)
    out = distill(student_logits, teacher_logits, intrinsics, cam2ego, image_size=(256, 704),
                  segments=sam_segments)          # optional: SAM segment ids [B, N, H, W]
    (occupancy_loss + out["loss"]).backward()

The module builds camera rays (:func:`radocc.rays.camera_rays`: a strided pixel grid, a random
subset per camera, or the pixels the caller gives, e.g. where LiDAR points project), renders
student and teacher voxels along the same rays (:func:`radocc.render.volume_render`; the teacher
under ``no_grad``), looks the segment ids up at the ray pixels (offset per camera,
:func:`radocc.rays.lookup_segments`) and returns RDC and RSC (:mod:`radocc.losses`) with the
renders. radocc's own training (``radocc.train.Trainer.step``) uses this module.

Voxels are class logits [B, X, Y, Z, K] (density from the free class's probability, rendered
features = the class distribution given occupied: :func:`voxel_fields`), or a (density, features)
pair. It has no parameters (only a non-persistent buffer), so it sits outside DDP beside a
DDP-wrapped student; everything it computes is float32 with autocast disabled (inputs may be bf16).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from radocc import losses
from radocc.losses import LOSS_WEIGHTS, RSC_MODES
from radocc.rays import camera_rays, lookup_segments, pixel_grid
from radocc.render import RenderOutput, VoxelGrid, density_from_logits, volume_render

__all__ = ["RenderDistillLoss", "Voxels", "voxel_fields", "semantic_features", "bin_edges"]

Voxels = Tensor | tuple[Tensor, Tensor | None]
"""Logits [B, X, Y, Z, K], or (density [B, X, Y, Z] per metre >= 0, features [B, X, Y, Z, C])."""


def semantic_features(logits: Tensor, free_index: int = -1) -> Tensor:
    """Per-voxel features to render: the class distribution given occupied.

    softmax over the K - 1 non-free logits, so each voxel's row sums to 1 and a ray's rendered
    feature sum_i w_i q_i has row sum equal to its opacity. RadOcc's authors render the raw class
    logits; probabilities keep the rendered features bounded and make the RSC affinity and any KL
    on rendered semantics well defined.

    Args:
        logits: [..., K] class logits, K >= 2.
        free_index: index of the free (empty) class in the last dimension (-1: last).
    Returns:
        [..., K - 1] probabilities, the other classes in their order.
    """
    if not isinstance(logits, Tensor) or logits.dim() < 1 or logits.shape[-1] < 2:
        raise ValueError("logits must be a tensor [..., K] with K >= 2 (one of them free)")
    classes = logits.shape[-1]
    if not -classes <= free_index < classes:
        raise ValueError(f"free_index {free_index} is out of range for K = {classes} classes")
    free = free_index % classes
    if free == classes - 1:
        occupied = logits[..., :-1]
    else:
        occupied = torch.cat([logits[..., :free], logits[..., free + 1:]], dim=-1)
    return occupied.softmax(dim=-1)


class _LogitFields(torch.autograd.Function):
    """density_from_logits and semantic_features of logits [..., K] with free last, in one pass.

    With a = logsumexp(occupied logits) - free logit (the log-odds of "occupied"):
    density = softplus(a) / voxel_size = -log p_free / voxel_size, q = softmax(occupied logits).
    The backward is written out (grad_occ = q * (g_q - <g_q, q> + g_a), grad_free = -g_a with
    g_a = g_density * sigmoid(a) / voxel_size), so the dense [..., K] work is a few passes instead
    of autograd's log-softmax, softmax, slice and accumulation: this conversion of the whole grid,
    not the ray marching, is most of the rendering cost of a training step.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, voxel_size: float) -> tuple[Tensor, Tensor]:
        occupied, free = logits[..., :-1], logits[..., -1]
        top = occupied.amax(-1, keepdim=True)
        q = torch.sub(occupied, top).exp_()
        total = q.sum(-1, keepdim=True)
        q.div_(total)
        log_odds = (top + total.log()).squeeze(-1) - free
        ctx.save_for_backward(q, log_odds)
        ctx.voxel_size = voxel_size
        return torch.nn.functional.softplus(log_odds) / voxel_size, q

    @staticmethod
    def backward(ctx, g_density: Tensor | None, g_q: Tensor | None):
        q, log_odds = ctx.saved_tensors
        grad = q.new_empty(*q.shape[:-1], q.shape[-1] + 1)
        occupied = grad[..., :-1]
        g_a = (torch.zeros_like(log_odds) if g_density is None
               else g_density * torch.sigmoid(log_odds) / ctx.voxel_size)
        if g_q is None:
            torch.mul(q, g_a[..., None], out=occupied)
        else:
            # <g_q, q> per voxel as a batched matmul: several times faster on CPU than (g_q * q).sum(-1)
            dot = torch.bmm(g_q.reshape(-1, 1, q.shape[-1]), q.reshape(-1, q.shape[-1], 1))
            torch.add(g_q, (g_a - dot.view(g_a.shape))[..., None], out=occupied)
            occupied.mul_(q)
        torch.neg(g_a, out=grad[..., -1])
        return grad, None


def voxel_fields(voxels: Voxels, grid: VoxelGrid, *, free_index: int = -1,
                 features: bool = True, name: str = "voxels") -> tuple[Tensor, Tensor | None]:
    """The renderer's inputs from an occupancy model's output.

    Args:
        voxels: logits [B, X, Y, Z, K] (density = -log p_free / voxel edge along x, see
            :func:`radocc.render.density_from_logits`; features = :func:`semantic_features`), or
            a pair (density [B, X, Y, Z] per metre >= 0, features [B, X, Y, Z, C] or None).
        grid: the box the voxels fill (gives the voxel edge, metres).
        free_index: the free class of logits (-1: last).
        features: False skips the features (returns None).
        name: the argument's name in error messages.
    Returns:
        density [B, X, Y, Z] and features [B, X, Y, Z, C] (or None), float32 (float64 stays).
    """
    if isinstance(voxels, Tensor):
        if not voxels.is_floating_point() or voxels.dim() != 5:
            raise ValueError(f"{name} must be float logits [B, X, Y, Z, K] or a pair (density "
                             f"[B, X, Y, Z], features [B, X, Y, Z, C]), got {voxels.dtype} "
                             f"{tuple(voxels.shape)}")
        logits = voxels if voxels.dtype == torch.float64 else voxels.float()
        edge = grid.voxel_size(logits.shape[1:4])[0]
        free = free_index % logits.shape[-1]
        if features and free == logits.shape[-1] - 1:
            return _LogitFields.apply(logits, edge)  # the same values as the two calls below
        density = density_from_logits(logits, free, edge)
        return density, semantic_features(logits, free_index) if features else None
    if not (isinstance(voxels, (tuple, list)) and len(voxels) == 2):
        raise TypeError(f"{name} must be logits [B, X, Y, Z, K] or a pair (density, features), "
                        f"got {type(voxels).__name__}")
    density, feats = voxels
    if not isinstance(density, Tensor) or not density.is_floating_point() or density.dim() != 4:
        raise ValueError(f"{name}[0] (density) must be a float tensor [B, X, Y, Z], got "
                         f"{_describe(density)}")
    if features and feats is None:
        raise ValueError(f"{name}[1] (features) is None but RSC needs features [B, X, Y, Z, C]")
    if feats is not None and (not isinstance(feats, Tensor) or not feats.is_floating_point()
                              or feats.dim() != 5 or feats.shape[:4] != density.shape):
        raise ValueError(f"{name}[1] (features) must be a float tensor [B, X, Y, Z, C] with "
                         f"[B, X, Y, Z] = {tuple(density.shape)}, got {_describe(feats)}")

    def acc(x: Tensor) -> Tensor:
        return x if x.dtype == torch.float64 else x.float()
    return acc(density), acc(feats) if features else None


def bin_edges(start: float, stop: float, step: float) -> Tensor:
    """RDC's termination bin edges in metres: start, start + step, ..., up to stop (inclusive
    when it falls on the grid): [D + 1] float32, e.g. (1, 45, 0.5) -> 89 edges, 88 bins."""
    values = (start, stop, step)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in values) or not (step > 0 and stop > start):
        raise ValueError(f"depth_bins must be (start, stop, step) in metres with step > 0 and "
                         f"stop > start, got {values!r}")
    return torch.arange(start, stop + step / 2, step, dtype=torch.float64).float()


def _describe(x: object) -> str:
    return f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def _check(x: object, name: str, shape: Sequence[int | None], doc: str, *,
           kind: str = "float") -> Tensor:
    """A tensor of ``kind`` ("float", "int", "bool") with ``shape`` (None: any size)."""
    ok_kind = isinstance(x, Tensor) and {
        "float": lambda t: t.is_floating_point(),
        "int": lambda t: not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
        "bool": lambda t: t.dtype == torch.bool}[kind](x)
    if not ok_kind or x.dim() != len(shape) or any(
            e is not None and s != e for s, e in zip(x.shape, shape)):
        sizes = ", ".join("?" if e is None else str(e) for e in shape)
        raise ValueError(f"{name} must be a {kind} tensor {doc} = [{sizes}], got {_describe(x)}")
    return x


class RenderDistillLoss(nn.Module):
    """RDC + RSC between a student's and a teacher's voxels, rendered along shared camera rays.

    Args:
        grid: the box the voxels fill (metres, ego/grid frame): a :class:`radocc.render.VoxelGrid`
            or a pair (lower, upper). Default: Occ3D-nuScenes, (-40, -40, -1) to (40, 40, 5.4).
        depth_bins: RDC's termination bins as (start, stop, step) metres (default (1, 45, 0.5),
            the authors'); or give ``depth_edges`` instead.
        depth_edges: the D + 1 increasing bin edges in metres (instead of ``depth_bins``).
        step: None for exact voxel traversal, or the uniform sample length in metres (the
            authors use 0.2).
        rdc_weight, rsc_weight: weights in ``out["loss"]`` (defaults: the authors' 100 and 10);
            a term with weight 0 is neither rendered nor computed. RDC is each ray's KL averaged
            over its D + 1 bins (``rdc_loss(..., bin_reduction="mean")``), as in the authors'
            code, so their weight keeps its meaning whatever the number of bins.
        rsc_mode: "affinity" (the paper: segment affinity, needs segments) or "kl" (the authors'
            code: per-ray KL of the rendered class distributions).
        rays_per_image: rays per camera drawn at random from the pixel grid when no pixels are
            given (0 or more than the grid holds: the whole grid).
        stride: pixel block size of that grid (:func:`radocc.rays.pixel_grid`).
        num_classes: when set, logits must have K = num_classes.
        free_index: the free class of the logits (-1: last, Occ3D's 17).
        near, far: metres along the rays (far None: until they leave the grid).
        chunk_rays: render at most this many rays per call (0 = all): bounds peak memory.
        rsc_depth_agreement: 0 (the paper): RSC compares every ray. > 0: only the rays whose
            rendered depths agree, |d_student - d_teacher| <= this fraction of d_teacher, so
            that both models' semantics come from the same place along the ray (not in RadOcc).
        rsc_semantics_only: False (the paper): RSC's gradient reaches the student's density and
            its semantic features. True: only the features; RSC's render of the student uses its
            density detached (the same values), so RSC cannot meet the teacher's affinities by
            moving where the student's rays stop, only by what they render there (not in RadOcc;
            costs one more render of the student).
    """

    edges: Tensor

    def __init__(self, grid: VoxelGrid | tuple[Sequence[float], Sequence[float]] | None = None,
                 *, depth_bins: Sequence[float] | None = None,
                 depth_edges: Tensor | Sequence[float] | None = None,
                 step: float | None = None,
                 rdc_weight: float = LOSS_WEIGHTS["rdc"], rsc_weight: float = LOSS_WEIGHTS["rsc"],
                 rsc_mode: str = "affinity", rays_per_image: int = 1024, stride: int = 4,
                 num_classes: int | None = None, free_index: int = -1,
                 near: float = 0.0, far: float | None = None, chunk_rays: int = 0,
                 rsc_depth_agreement: float = 0.0, rsc_semantics_only: bool = False) -> None:
        super().__init__()
        if grid is None:
            grid = VoxelGrid.occ3d()
        elif not isinstance(grid, VoxelGrid):
            if not (isinstance(grid, (tuple, list)) and len(grid) == 2):
                raise TypeError(f"grid must be a radocc.render.VoxelGrid or (lower, upper), "
                                f"got {grid!r}")
            grid = VoxelGrid(tuple(grid[0]), tuple(grid[1]))
        self.grid = grid
        if depth_edges is not None and depth_bins is not None:
            raise ValueError("give depth_bins (start, stop, step) or depth_edges, not both")
        if depth_edges is None:
            bins = (1.0, 45.0, 0.5) if depth_bins is None else tuple(depth_bins)
            if len(bins) != 3:
                raise ValueError(f"depth_bins must be (start, stop, step) in metres, got {bins!r} "
                                 "(pass edges as depth_edges=...)")
            edges = bin_edges(*bins)
        else:
            edges = torch.as_tensor(depth_edges, dtype=torch.float32).detach().clone()
            if edges.dim() != 1 or edges.numel() < 2 or not bool((edges[1:] > edges[:-1]).all()):
                raise ValueError(f"depth_edges must be >= 2 strictly increasing edges in metres, "
                                 f"got {edges.tolist()}")
        self.register_buffer("edges", edges, persistent=False)
        for name, value in (("rdc_weight", rdc_weight), ("rsc_weight", rsc_weight)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if rsc_mode not in RSC_MODES:
            raise ValueError(f"rsc_mode must be one of {RSC_MODES}, got {rsc_mode!r}")
        if not (isinstance(rays_per_image, int) and rays_per_image >= 0):
            raise ValueError(f"rays_per_image must be an integer >= 0, got {rays_per_image!r}")
        if not (isinstance(stride, int) and stride >= 1):
            raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
        if num_classes is not None and not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"num_classes must be an integer >= 2 or None, got {num_classes!r}")
        if num_classes is not None and not -num_classes <= free_index < num_classes:
            raise ValueError(f"free_index {free_index} is out of range for {num_classes} classes")
        if step is not None and not (isinstance(step, (int, float)) and step > 0):
            raise ValueError(f"step must be None (exact traversal) or a length > 0 in metres, "
                             f"got {step!r}")
        if not (isinstance(chunk_rays, int) and chunk_rays >= 0):
            raise ValueError(f"chunk_rays must be an integer >= 0, got {chunk_rays!r}")
        if (not isinstance(rsc_depth_agreement, (int, float)) or isinstance(rsc_depth_agreement, bool)
                or not rsc_depth_agreement >= 0):
            raise ValueError(f"rsc_depth_agreement must be a number >= 0 (0 = off), got "
                             f"{rsc_depth_agreement!r}")
        self.rsc_depth_agreement = float(rsc_depth_agreement)
        if not isinstance(rsc_semantics_only, bool):
            raise ValueError(f"rsc_semantics_only must be True or False, got {rsc_semantics_only!r}")
        self.rsc_semantics_only = rsc_semantics_only
        self.step = None if step is None else float(step)
        self.rdc_weight, self.rsc_weight, self.rsc_mode = float(rdc_weight), float(rsc_weight), rsc_mode
        self.rays_per_image, self.stride, self.chunk_rays = rays_per_image, stride, chunk_rays
        self.num_classes, self.free_index = num_classes, free_index
        self.near, self.far = near, far

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, bins={self.edges.numel() - 1}, step={self.step}, "
                f"rdc_weight={self.rdc_weight}, rsc_weight={self.rsc_weight}, "
                f"rsc_mode={self.rsc_mode!r}, rsc_depth_agreement={self.rsc_depth_agreement}, "
                f"rsc_semantics_only={self.rsc_semantics_only}, "
                f"rays_per_image={self.rays_per_image}, "
                f"stride={self.stride}")

    # ------------------------------------------------------------------ parts
    def rays(self, intrinsics: Tensor, cam2ego: Tensor, image_size: tuple[int, int] | None = None,
             pixels: Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Camera rays through ``pixels``, or through ``rays_per_image`` random pixels per camera
        of the ``stride`` pixel grid of ``image_size``.

        Args:
            intrinsics: [B, N, 3, 3] pixels; cam2ego: [B, N, 4, 4] metres (grid frame).
            image_size: (H, W) pixels; needed without ``pixels``.
            pixels: [B, N, P, 2] (u, v) pixels.
            generator: draws the random subset (its device may differ from the cameras').
        Returns:
            origins [B, N * P, 3] metres, unit directions [B, N * P, 3] (camera-major), and the
            pixels [B, N, P, 2] float32.
        """
        batch, cams = intrinsics.shape[:2]
        if pixels is None:
            if image_size is None:
                raise ValueError("image_size (H, W) is needed to draw grid pixels when no pixels "
                                 "are given")
            grid = pixel_grid(tuple(image_size), self.stride, device=intrinsics.device)
            count = len(grid)
            if 0 < self.rays_per_image < count:
                noise = torch.rand(batch, cams, count, generator=generator,
                                   device=generator.device if generator is not None else grid.device)
                index = noise.argsort(dim=-1)[..., :self.rays_per_image].to(grid.device)
                pixels = grid[index]
            else:
                pixels = grid.expand(batch, cams, count, 2)
        pixels = pixels.float()
        with torch.autocast(intrinsics.device.type, enabled=False):  # float32 rays
            origins, directions = camera_rays(intrinsics.float(), cam2ego.float(), pixels=pixels)
        return origins, directions, pixels

    def render(self, voxels: Voxels, origins: Tensor, directions: Tensor, *,
               termination: bool = True, features: bool = True) -> RenderOutput:
        """Renders voxels along rays (float32, autocast off; gradients to the voxels).

        Args:
            voxels: logits [B, X, Y, Z, K] or (density [B, X, Y, Z], features [B, X, Y, Z, C]).
            origins, directions: [B, R, 3] metres, grid frame (from :meth:`rays`).
            termination: render the [B, R, D + 1] termination distributions (RDC).
            features: render the [B, R, C] features (RSC; C = K - 1 for logits).
        Returns:
            RenderOutput(depth [B, R] metres, opacity [B, R], features or None, termination or None).
        """
        with torch.autocast(origins.device.type, enabled=False):
            density, feats = self._fields(voxels, "voxels", features)
            edges = self.edges.to(density.device) if termination else None
            chunk = self.chunk_rays or max(origins.shape[1], 1)
            parts = [volume_render(density, origins[:, i:i + chunk], directions[:, i:i + chunk],
                                   feats, grid=self.grid, near=self.near, far=self.far,
                                   step=self.step, depth_bins=edges)
                     for i in range(0, max(origins.shape[1], 1), chunk)]
        if len(parts) == 1:
            return parts[0]
        return RenderOutput(*(None if parts[0][j] is None else torch.cat([p[j] for p in parts], 1)
                              for j in range(4)))

    def _fields(self, voxels: Voxels, name: str, features: bool) -> tuple[Tensor, Tensor | None]:
        """:func:`voxel_fields` with this module's grid and classes; errors name ``name``."""
        if (self.num_classes is not None and isinstance(voxels, Tensor) and voxels.dim() == 5
                and voxels.shape[-1] != self.num_classes):
            raise ValueError(f"{name} has K = {voxels.shape[-1]} classes (last dim), expected "
                             f"num_classes = {self.num_classes}")
        return voxel_fields(voxels, self.grid, free_index=self.free_index, features=features,
                            name=name)

    # ------------------------------------------------------------------ forward
    def forward(self, student: Voxels, teacher: Voxels, intrinsics: Tensor, cam2ego: Tensor,
                image_size: tuple[int, int] | None = None, *, pixels: Tensor | None = None,
                valid: Tensor | None = None, segments: Tensor | None = None,
                ray_segments: Tensor | None = None, generator: torch.Generator | None = None,
                timer: Callable[[str], AbstractContextManager[Any]] | None = None
                ) -> dict[str, Any]:
        """Renders student and teacher along the same rays and compares the renders.

        Args:
            student: logits [B, X, Y, Z, K] or (density [B, X, Y, Z], features [B, X, Y, Z, C]):
                gradients flow back to it.
            teacher: the same forms (its grid resolution and C may differ); rendered under
                no_grad, so it gets no gradient.
            intrinsics: [B, N, 3, 3] camera matrices in pixels of the images the pixels refer to.
            cam2ego: [B, N, 4, 4] camera -> grid frame, metres.
            image_size: (H, W) pixels; needed when ``pixels`` is None (grid rays).
            pixels: [B, N, P, 2] (u, v) ray pixels (e.g. where LiDAR points project); None:
                ``rays_per_image`` random pixels per camera of the ``stride`` grid.
            valid: [B, N, P] bool, rays that count (False: padding); only with ``pixels``.
            segments: [B, N, H, W] integer SAM segment ids (0 = none, < 2**16), looked up at the
                ray pixels and offset per camera (:func:`radocc.rays.lookup_segments`).
            ray_segments: [B, N, P] int64 ids already looked up and offset (instead of
                ``segments``; only with ``pixels``).
            generator: random source of the grid subset.
            timer: optional context-manager factory, entered as ``timer("render")`` and
                ``timer("render_losses")`` around those parts (radocc.train times its step).
        Returns:
            {"loss": scalar float32, rdc_weight * rdc + rsc_weight * rsc;
             "rdc", "rsc": the unweighted scalar float32 terms (only those with weight > 0);
             "student", "teacher": RenderOutput [B, R = N * P, ...] (depth metres, opacity,
             features [B, R, C] when RSC is on, termination [B, R, D + 1] when RDC is on);
             "pixels": [B, N, P, 2] the ray pixels; "valid": [B, R] bool or None;
             "segments": [B, R] int64 per-ray segment ids or None}.
        """
        timer = timer or (lambda name: nullcontext())
        if not isinstance(student, Tensor) and not isinstance(student, (tuple, list)):
            raise TypeError(f"student must be logits [B, X, Y, Z, K] or (density, features), "
                            f"got {type(student).__name__}")
        first = student if isinstance(student, Tensor) else student[0]
        if not isinstance(first, Tensor) or first.dim() < 4:
            raise ValueError(f"student must be logits [B, X, Y, Z, K] or (density [B, X, Y, Z], "
                             f"features), got {_describe(first)}")
        batch, device = first.shape[0], first.device
        intrinsics = _check(intrinsics, "intrinsics", (batch, None, 3, 3), "[B, N, 3, 3]")
        cams = intrinsics.shape[1]
        cam2ego = _check(cam2ego, "cam2ego", (batch, cams, 4, 4), "[B, N, 4, 4]")
        if image_size is not None and not (len(image_size) == 2 and all(
                isinstance(v, int) and v > 0 for v in image_size)):
            raise ValueError(f"image_size must be (H, W) positive ints, got {image_size!r}")
        if pixels is not None:
            pixels = _check(pixels, "pixels", (batch, cams, None, 2), "[B, N, P, 2]")
        elif valid is not None or ray_segments is not None:
            raise ValueError("valid and ray_segments describe given rays: pass pixels [B, N, P, 2] "
                             "with them")
        per_ray = None if pixels is None else (batch, cams, pixels.shape[2])
        if valid is not None:
            valid = _check(valid, "valid", per_ray, "[B, N, P]", kind="bool")
        if segments is not None and ray_segments is not None:
            raise ValueError("give segments [B, N, H, W] or ray_segments [B, N, P], not both")
        if segments is not None:
            segments = _check(segments, "segments", (batch, cams, None, None), "[B, N, H, W]",
                              kind="int")
            if image_size is not None and tuple(segments.shape[-2:]) != tuple(image_size):
                raise ValueError(f"segments are {tuple(segments.shape[-2:])} maps but image_size "
                                 f"is {tuple(image_size)}")
            image_size = image_size or tuple(segments.shape[-2:])
        if ray_segments is not None:
            ray_segments = _check(ray_segments, "ray_segments", per_ray, "[B, N, P]", kind="int")
        rdc_on, rsc_on = self.rdc_weight > 0, self.rsc_weight > 0
        affinity = rsc_on and self.rsc_mode == "affinity"
        if affinity and segments is None and ray_segments is None:
            raise ValueError("rsc_mode 'affinity' needs segment ids: pass segments [B, N, H, W] "
                             "(or ray_segments [B, N, P]), or use rsc_mode='kl' / rsc_weight=0")
        for name, tensor in (("intrinsics", intrinsics), ("cam2ego", cam2ego), ("pixels", pixels),
                             ("valid", valid), ("segments", segments),
                             ("ray_segments", ray_segments)):
            if tensor is not None and tensor.device != device:
                raise ValueError(f"{name} is on {tensor.device} but student is on {device}")

        with timer("render"), torch.autocast(device.type, enabled=False):
            origins, directions, pixels = self.rays(intrinsics, cam2ego, image_size, pixels,
                                                    generator)
            student = self._fields(student, "student", rsc_on)
            detached = rsc_on and self.rsc_semantics_only
            s_render = self.render(student, origins, directions, termination=rdc_on,
                                   features=rsc_on and not detached)
            if detached:  # RSC's features: the same values, no gradient to the density
                features = self.render((student[0].detach(), student[1]), origins, directions,
                                       termination=False, features=True).features
                s_render = s_render._replace(features=features)
            with torch.no_grad():
                teacher = self._fields(teacher, "teacher", rsc_on)
                if teacher[0].shape[0] != batch:
                    raise ValueError(f"teacher has batch size {teacher[0].shape[0]} but student "
                                     f"has {batch}")
                t_render = self.render(teacher, origins, directions, termination=rdc_on,
                                       features=rsc_on)
            if affinity and segments is not None:
                ray_segments = lookup_segments(segments, pixels, valid)
            elif ray_segments is not None and valid is not None:
                ray_segments = torch.where(valid, ray_segments, torch.zeros_like(ray_segments))
            ray_valid = None if valid is None else valid.reshape(batch, -1)
            ids = None if ray_segments is None else ray_segments.long().reshape(batch, -1)

        out: dict[str, Any] = {}
        with timer("render_losses"):
            loss = s_render.depth.sum() * 0.0  # on the student's graph even with no term
            if rdc_on:
                out["rdc"] = losses.rdc_loss(s_render.termination, t_render.termination, ray_valid,
                                             bin_reduction="mean")
                loss = loss + self.rdc_weight * out["rdc"]
            if rsc_on:
                rsc_valid = ray_valid
                if self.rsc_depth_agreement > 0:
                    agree = ((s_render.depth.detach() - t_render.depth).abs()
                             <= self.rsc_depth_agreement * t_render.depth)
                    rsc_valid = agree if ray_valid is None else agree & ray_valid
                out["rsc"] = losses.rsc_loss(s_render.features, t_render.features,
                                             ids if affinity else None, mode=self.rsc_mode,
                                             valid=rsc_valid)
                loss = loss + self.rsc_weight * out["rsc"]
        out.update(loss=loss, student=s_render, teacher=t_render, pixels=pixels, valid=ray_valid,
                   segments=ids)
        return out
