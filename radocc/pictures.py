"""Figure builders of :mod:`radocc.viz`: numpy arrays in, a matplotlib ``Figure`` out.

Every figure is laid out in pixels at :data:`DPI` (its docstring gives its size) and saved
without cropping by :func:`save_figure`, so a PNG's size is known before it is drawn. Class
colours are the Occ3D palette (:data:`radocc.viz.OCC3D_PALETTE`); the bird's-eye views are
:func:`radocc.viz.bev_labels` (forward up, left left).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import matplotlib.style
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from radocc.occ3d import CLASS_NAMES, FREE
from radocc.viz import (MOSAIC_ORDER, OCC3D_PALETTE, bev_labels, colorize_depth, colorize_labels,
                        segment_overlay)

__all__ = ["DPI", "save_figure", "depth_colormap", "segments_figure", "occupancy_figure",
           "render_figure", "termination_figure", "affinity_figure", "MAP_PALETTE", "map_figure",
           "map_figure_layout"]

DPI = 100
_TITLE = 11  # font sizes, points
_SMALL = 8


_F = TypeVar("_F", bound=Callable)


def _default_style(fn: _F) -> _F:
    """Build / save under matplotlib's default style: other libraries change the global rcParams
    (nuscenes-devkit's map API turns on axes grids and greys), which would change the pictures."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.style.context("default"):
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def _figure(width: int, height: int) -> Figure:
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI)


def _axes(fig: Figure, left: float, top: float, width: float, height: float, **kwargs) -> Axes:
    """Axes at a rectangle given in pixels from the figure's top-left corner."""
    w, h = fig.get_size_inches() * DPI
    return fig.add_axes((left / w, 1 - (top + height) / h, width / w, height / h), **kwargs)


def _image(ax: Axes, image: np.ndarray, title: str | None = None, **kwargs):
    artist = ax.imshow(image, interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=_SMALL + 1, pad=3)
    return artist


def _suptitle(fig: Figure, text: str) -> None:
    fig.text(0.5, 1 - 8 / (fig.get_size_inches()[1] * DPI), text, ha="center", va="top",
             fontsize=_TITLE, weight="bold")


def _class_legend(fig: Figure, classes: Sequence[int], left: float, top: float,
                  height: float) -> None:
    """Occ3D class swatches in a band of the figure from ``left`` to the right edge (pixels)."""
    handles = [Patch(facecolor=OCC3D_PALETTE[c] / 255, edgecolor="0.3", label=CLASS_NAMES[c])
               for c in sorted(set(int(c) for c in classes))]
    if not handles:
        return
    ax = _axes(fig, left, top, fig.get_size_inches()[0] * DPI - left, height)
    ax.axis("off")
    ax.legend(handles=handles, loc="center", ncol=min(len(handles), 6), fontsize=_SMALL,
              frameon=False, handlelength=1.2, columnspacing=1.2)


@_default_style
def save_figure(fig: Figure, path: str | Path) -> Path:
    """Writes ``fig`` as a PNG at its own size (no cropping), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def depth_colormap(max_depth: float = 50.0) -> ListedColormap:
    """:func:`radocc.viz.colorize_depth`'s colours as a colormap over [0, max_depth] metres."""
    return ListedColormap(colorize_depth(np.linspace(1e-6, max_depth, 256), max_depth) / 255.0)


def _role(label: str) -> str:
    """"student (synthetic-radocc)" -> "student"."""
    return label.split(" (")[0]


def _mosaic(names: Sequence[str]) -> list[str]:
    """Cameras in the 2 x 3 nuScenes mosaic order when they are the six, else as given."""
    return list(MOSAIC_ORDER) if sorted(names) == sorted(MOSAIC_ORDER) else list(names)


# ----------------------------------------------------------------------------- segments
@_default_style
def segments_figure(images: dict[str, np.ndarray], segments: dict[str, np.ndarray],
                    title: str = "", panel: int = 400) -> Figure:
    """Camera images with their segments overlaid (random colour per id, white boundaries).

    Args:
        images: {camera: uint8 [H, W, 3]}; segments: {camera: int [H, W]} ids, 0 = none.
        panel: width of one picture, pixels.
    Size: W = 3 * (panel + 10) + 10, H = 40 + rows * (round(panel * H / W) + 30) with
    rows = ceil(cameras / 3) (pixels).
    """
    names = _mosaic(list(images))
    first = images[names[0]]
    height = round(panel * first.shape[0] / first.shape[1])
    rows = -(-len(names) // 3)
    fig = _figure(3 * (panel + 10) + 10, 40 + rows * (height + 30))
    _suptitle(fig, title or "camera images with their segments")
    for i, name in enumerate(names):
        ax = _axes(fig, 10 + (i % 3) * (panel + 10), 40 + (i // 3) * (height + 30) + 22,
                   panel, height)
        count = len(np.unique(segments[name][segments[name] > 0]))
        _image(ax, segment_overlay(images[name], segments[name]), f"{name}: {count} segments")
    return fig


# ----------------------------------------------------------------------------- occupancy
_OCC_CELL = 460  # one panel's square cell, pixels
_BEV_SIZE = 400  # the BEV picture inside it: 2 px per Occ3D column


@_default_style
def occupancy_figure(panels: Sequence[tuple[str, np.ndarray]], *,
                     lower: Sequence[float] = (-40.0, -40.0, -1.0),
                     upper: Sequence[float] = (40.0, 40.0, 5.4), free: int = FREE,
                     title: str = "", max_points: int = 25000, seed: int = 0) -> Figure:
    """Occupancy grids side by side, from above (top row) and in 3D (bottom row).

    Args:
        panels: (title, class ids [X, Y, Z]) per grid; free voxels are not drawn, so mask a
            region out by setting it free first.
        lower, upper: the grid box, metres (ego frame: x forward, y left, z up).
        free: the free class (Occ3D: 17).
        max_points: the 3D scatter draws at most this many occupied voxel centres per grid
            (a seeded random subset; the same voxels of every grid are kept for the same seed).
    Top: the class of the highest occupied voxel of each column (:func:`radocc.viz.bev_labels`),
    white = free column, black triangle = ego. Bottom: occupied voxel centres.
    Size: W = 460 * len(panels) + 20, H = 40 + 2 * 460 + 60 (pixels); each BEV is 400 x 400 px.
    """
    if not panels:
        raise ValueError("occupancy_figure needs at least one (title, semantics) panel")
    fig = _figure(_OCC_CELL * len(panels) + 20, 40 + 2 * _OCC_CELL + 60)
    _suptitle(fig, title or "occupancy: from above (highest occupied voxel) and in 3D")
    present: set[int] = set()
    for i, (name, semantics) in enumerate(panels):
        semantics = np.asarray(semantics)
        left = 10 + i * _OCC_CELL
        bev = _axes(fig, left + 45, 40 + 25, _BEV_SIZE, _BEV_SIZE)
        _bev_panel(bev, semantics, lower, upper, free, name)
        scatter = _axes(fig, left, 40 + _OCC_CELL, _OCC_CELL, _OCC_CELL, projection="3d")
        present |= _voxel_panel(scatter, semantics, lower, upper, free, max_points, seed)
    _class_legend(fig, present, 0, 40 + 2 * _OCC_CELL, 60)
    return fig


def _bev_panel(ax: Axes, semantics: np.ndarray, lower, upper, free: int, title: str) -> None:
    # bev_labels puts +x (forward) at the top and +y (left) at the left; free columns white.
    ax.imshow(colorize_labels(bev_labels(semantics, free)), interpolation="nearest",
              extent=(upper[1], lower[1], lower[0], upper[0]))
    ax.plot([0], [0], marker="^", color="black", markersize=6)
    ax.set_title(title, fontsize=_SMALL + 2, pad=4)
    ax.set_xlabel("y (left), m", fontsize=_SMALL, labelpad=1)
    ax.set_ylabel("x (forward), m", fontsize=_SMALL, labelpad=1)
    ax.tick_params(labelsize=_SMALL - 1)


def _voxel_panel(ax, semantics: np.ndarray, lower, upper, free: int, max_points: int,
                 seed: int) -> set[int]:
    """Occupied voxel centres in 3D, coloured by class; returns the classes drawn."""
    shape = np.array(semantics.shape)
    size = (np.asarray(upper) - np.asarray(lower)) / shape
    index = np.argwhere(semantics != free)
    if len(index) > max_points:
        keep = np.random.default_rng(seed).random(len(index)).argsort()[:max_points]
        index = index[np.sort(keep)]
    labels = semantics[tuple(index.T)]
    centres = np.asarray(lower) + (index + 0.5) * size
    ax.scatter(centres[:, 0], centres[:, 1], centres[:, 2], c=OCC3D_PALETTE[labels] / 255.0,
               s=1.5, marker="s", linewidths=0, depthshade=False)
    ax.set_xlim(lower[0], upper[0])
    ax.set_ylim(lower[1], upper[1])
    ax.set_zlim(lower[2], upper[2])
    ax.set_box_aspect((upper[0] - lower[0], upper[1] - lower[1], 3 * (upper[2] - lower[2])))
    ax.view_init(elev=35, azim=200)  # from behind-left of the ego, looking forward
    ax.tick_params(labelsize=_SMALL - 2, pad=0)
    ax.set_xlabel("x", fontsize=_SMALL, labelpad=-6)
    ax.set_ylabel("y", fontsize=_SMALL, labelpad=-6)
    ax.set_zticks([])
    return set(np.unique(labels).tolist())


# ----------------------------------------------------------------------------- render
@_default_style
def render_figure(images: dict[str, np.ndarray], renders: Sequence[tuple[str, dict[str, np.ndarray]]],
                  *, max_depth: float = 50.0, title: str = "", panel: int = 260) -> Figure:
    """Rendered depth and semantics of models side by side, one row per camera.

    Args:
        images: {camera: uint8 [H, W, 3]} the input pictures (first column).
        renders: (model label, {"depth", "opacity", "labels"}: [N, h, w] per camera, in the
            order of ``images``) per model: depth metres, opacity in [0, 1], class ids.
        max_depth: depth colour scale, metres.
        panel: width of one picture, pixels.
    Columns: image, then each model's depth (grey where opacity < 0.5: the ray leaves the grid
    more likely than not), then each model's semantics (argmax class, shaded by opacity).
    Size: W = (1 + 2 * len(renders)) * (panel + 8) + 40, H = 50 + N * (round(panel * H / W) + 8)
    + 70 (pixels).
    """
    names = list(images)
    first = images[names[0]]
    height = round(panel * first.shape[0] / first.shape[1])
    columns = [("input image", None, None)]
    columns += [(f"{label}\nrendered depth", "depth", r) for label, r in renders]
    columns += [(f"{label}\nrendered semantics", "labels", r) for label, r in renders]
    fig = _figure(len(columns) * (panel + 8) + 40, 50 + len(names) * (height + 8) + 70)
    _suptitle(fig, title or "volume-rendered depth and semantics")
    cmap = depth_colormap(max_depth).with_extremes(bad=(0.6, 0.6, 0.6))
    classes: set[int] = set()
    depth_artist = None
    for row, name in enumerate(names):
        for col, (heading, kind, render) in enumerate(columns):
            ax = _axes(fig, 40 + col * (panel + 8), 50 + row * (height + 8), panel, height)
            if kind is None:
                _image(ax, images[name])
                ax.set_ylabel(name, fontsize=_SMALL - 1)
            elif kind == "depth":
                depth = np.where(render["opacity"][row] >= 0.5, render["depth"][row], np.nan)
                depth_artist = _image(ax, depth, cmap=cmap, vmin=0.0, vmax=max_depth, aspect="auto")
            else:
                labels = render["labels"][row]
                _image(ax, colorize_labels(labels, shade=render["opacity"][row]), aspect="auto")
                classes |= set(np.unique(labels[render["opacity"][row] >= 0.5]).tolist())
            if row == 0:
                ax.set_title(heading, fontsize=_SMALL, pad=3)
    bottom = 50 + len(names) * (height + 8)
    if depth_artist is not None:
        bar = _axes(fig, 40, bottom + 12, panel, 10)
        fig.colorbar(depth_artist, cax=bar, orientation="horizontal")
        bar.tick_params(labelsize=_SMALL - 1)
        bar.set_xlabel("depth along the ray, m (grey: opacity < 0.5)", fontsize=_SMALL - 1,
                       labelpad=1)
    _class_legend(fig, classes, panel + 60, bottom, 70)
    return fig


# ----------------------------------------------------------------------------- termination
@_default_style
def termination_figure(image: np.ndarray, pixel: tuple[float, float], edges: np.ndarray,
                       distributions: Sequence[tuple[str, np.ndarray]], *,
                       lidar_depth: float | None = None, camera: str = "",
                       title: str = "") -> Figure:
    """Termination distributions of one pixel's ray (RadOcc's Fig. 3).

    Args:
        image: uint8 [H, W, 3] the camera picture (left, the pixel marked).
        pixel: (u, v) pixels.
        edges: [D + 1] the depth bin edges, metres along the ray.
        distributions: (model label, probabilities [D + 1]: D bins then never-terminated) each.
        lidar_depth: metres along the ray of the LiDAR return at the pixel (a dashed line).
    Middle: each distribution as a step plot over the bins; right: the never-terminated bin.
    Size: 1300 x 460 pixels.
    """
    fig = _figure(1300, 460)
    _suptitle(fig, title or f"ray termination distribution at pixel ({pixel[0]:.0f}, "
                            f"{pixel[1]:.0f}) of {camera or 'the camera'}")
    ax = _axes(fig, 20, 70, 380, round(380 * image.shape[0] / image.shape[1]))
    _image(ax, image, camera)
    ax.plot([pixel[0]], [pixel[1]], marker="o", markersize=10, markerfacecolor="none",
            markeredgecolor="red", markeredgewidth=2)
    plot = _axes(fig, 470, 50, 640, 340)
    miss = _axes(fig, 1160, 50, 110, 340)
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for i, (label, probs) in enumerate(distributions):
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(edges),):
            raise ValueError(f"distribution {label!r} must have D + 1 = {len(edges)} values "
                             f"(bins then never-terminated), got shape {probs.shape}")
        colour = colours[i % len(colours)]
        # dashed from the third on, so curves that coincide stay visible
        plot.stairs(probs[:-1], edges, label=label, color=colour, linewidth=1.8,
                    linestyle="-" if i < 2 else "--", fill=i == 0, alpha=0.35 if i == 0 else 1.0)
        miss.bar([i], [probs[-1]], color=colour, alpha=0.35 if i == 0 else 1.0, label=label)
        miss.text(i, probs[-1] + 0.02, f"{probs[-1]:.2f}", ha="center", fontsize=_SMALL - 1)
    if lidar_depth is not None:
        plot.axvline(lidar_depth, color="black", linestyle="--", linewidth=1.2,
                     label=f"LiDAR return ({lidar_depth:.1f} m)")
    else:
        plot.text(0.98, 0.95, "no LiDAR return at this pixel", transform=plot.transAxes,
                  ha="right", va="top", fontsize=_SMALL)
    plot.set_xlim(edges[0], edges[-1])
    plot.set_xlabel("depth along the ray, m", fontsize=_SMALL + 1)
    plot.set_ylabel("probability of terminating in the bin", fontsize=_SMALL + 1)
    plot.legend(fontsize=_SMALL, loc="upper left")
    plot.tick_params(labelsize=_SMALL)
    top = max(max(np.max(p) for _, p in distributions), 1e-3) * 1.1
    plot.set_ylim(0, top)
    miss.set_ylim(0, 1)
    miss.set_xticks(range(len(distributions)))
    miss.set_xticklabels([_role(label) for label, _ in distributions], fontsize=_SMALL - 1,
                         rotation=30, ha="right")
    miss.set_title("never\nterminates", fontsize=_SMALL + 1)
    miss.tick_params(labelsize=_SMALL)
    return fig


# ----------------------------------------------------------------------------- affinity
@_default_style
def affinity_figure(image: np.ndarray, segments: np.ndarray,
                    affinities: Sequence[tuple[str, np.ndarray]], ids: np.ndarray, *,
                    rsc: float | None = None, camera: str = "", title: str = "") -> Figure:
    """Segment affinity matrices (RadOcc's Fig. 4) for one camera image.

    Args:
        image: uint8 [H, W, 3]; segments: int [H, W] the image's segment ids (0 = none).
        affinities: (model label, [K, K] cosine affinity) per model, rows in ``ids`` order;
            a teacher then its student last.
        ids: [K] the segment id of each row; the image labels segment ``ids[k]`` with k.
        rsc: the RSC loss between the last two models, shown in the difference's title.
    Panels: the image with the K segments numbered, each model's matrix (0..1), and with two
    models or more the difference of the last two (last minus second to last).
    Size: W = 420 * (1 + len(affinities) + (len(affinities) >= 2)) + 20, H = 500 pixels.
    """
    ids = np.asarray(ids)
    panels = len(affinities) + (len(affinities) >= 2)
    fig = _figure(420 * (1 + panels) + 20, 500)
    _suptitle(fig, title or f"segment affinity of rendered semantics ({camera or 'camera'}, "
                            f"{len(ids)} segments)")
    ax = _axes(fig, 20, 60, 380, round(380 * image.shape[0] / image.shape[1]))
    shown = np.where(np.isin(segments, ids), segments, 0)
    _image(ax, segment_overlay(image, shown), f"{camera}: the segments, numbered as the rows")
    rows, cols = np.indices(segments.shape)
    flat = segments.ravel().astype(np.int64)
    size = np.bincount(flat, minlength=int(ids.max(initial=0)) + 1).clip(min=1)
    centre_u = np.bincount(flat, weights=cols.ravel(), minlength=len(size)) / size
    centre_v = np.bincount(flat, weights=rows.ravel(), minlength=len(size)) / size
    for k, segment in enumerate(ids):  # one label artist per segment
        ax.text(centre_u[segment], centre_v[segment], str(k), fontsize=6, ha="center",
                va="center", color="black",
                bbox=dict(boxstyle="round,pad=0.1", facecolor="white", alpha=0.7, linewidth=0))
    matrices = [(f"{label}", m, "viridis", 0.0, 1.0) for label, m in affinities]
    if len(affinities) >= 2:
        (first, a), (second, b) = affinities[-2:]
        diff = np.asarray(b) - np.asarray(a)
        note = f"; RSC loss {rsc:.4f}" if rsc is not None else ""
        matrices.append((f"{_role(second)} \u2212 {_role(first)} (mean |.| {np.abs(diff).mean():.3f}"
                         f"{note})", diff, "RdBu_r", -1.0, 1.0))
    for i, (label, matrix, cmap, low, high) in enumerate(matrices):
        ax = _axes(fig, 420 * (i + 1) + 30, 60, 340, 340)
        image_artist = ax.imshow(matrix, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(label, fontsize=_SMALL + 1, pad=4)
        step = max(1, len(ids) // 10)
        ax.set_xticks(range(0, len(ids), step))
        ax.set_yticks(range(0, len(ids), step))
        ax.tick_params(labelsize=_SMALL - 1)
        ax.set_xlabel("segment", fontsize=_SMALL)
        bar = _axes(fig, 420 * (i + 1) + 30, 440, 340, 10)
        fig.colorbar(image_artist, cax=bar, orientation="horizontal")
        bar.tick_params(labelsize=_SMALL - 1)
    return fig


# ----------------------------------------------------------------------------- vector map
MAP_PALETTE = np.array([(255, 140, 0), (0, 90, 255), (0, 160, 60)], dtype=np.uint8)
"""One RGB colour per vector-map class, radocc.data.MAP_CLASSES order: divider orange,
ped_crossing blue, boundary green (MapTR's colours)."""
_MAP_CLASS_NAMES = ("divider", "ped_crossing", "boundary")
_MAP_PX_PER_M = 6  # the BEV panels: 30 x 60 m -> 180 x 360 px
_MAP_CELL_EXTRA = 70  # axis labels beside each BEV panel


def map_figure_layout(num_panels: int, image_size: tuple[int, int], num_cameras: int,
                      pc_range: Sequence[float] = (-15.0, -30.0, 15.0, 30.0)) -> dict[str, object]:
    """Where :func:`map_figure` puts things, in pixels from the top-left corner: "size" (W, H),
    "camera" (width, height of one picture), "bev" (list of (left, top, width, height) per panel)."""
    x_min, y_min, x_max, y_max = pc_range
    bev_w, bev_h = round((x_max - x_min) * _MAP_PX_PER_M), round((y_max - y_min) * _MAP_PX_PER_M)
    cell = bev_w + _MAP_CELL_EXTRA
    width = max(num_panels * cell + 20, 3 * 250 + 40)
    cam_w = (width - 40) // 3
    cam_h = round(cam_w * image_size[0] / image_size[1])
    rows = -(-num_cameras // 3)
    top = 40 + rows * (cam_h + 22) + 50  # three-line panel titles
    left0 = (width - num_panels * cell) // 2 + 55
    return {"size": (width, top + bev_h + 45 + 40), "camera": (cam_w, cam_h),
            "bev": [(left0 + i * cell, top, bev_w, bev_h) for i in range(num_panels)]}


@_default_style
def map_figure(images: dict[str, np.ndarray],
               panels: Sequence[tuple[str, Sequence[np.ndarray], np.ndarray]], *,
               pc_range: Sequence[float] = (-15.0, -30.0, 15.0, 30.0), title: str = "") -> Figure:
    """The input images and vector maps side by side over the BEV patch (MapDistill's Fig. 4).

    Args:
        images: {camera: uint8 [H, W, 3]} the input pictures (2 x 3 nuScenes mosaic for six).
        panels: (title, lines, labels) per map: lines a list of [Ni, 2] metres in the map frame
            (x right, y forward), labels [M] class ids (0 divider, 1 ped_crossing, 2 boundary);
            e.g. the ground truth, then the teacher's and the students' predictions (drawn in the
            given order, so pass predictions in ascending score to put the surest on top).
        pc_range: (x_min, y_min, x_max, y_max) of the patch, metres.
    Each map: its patch at 6 px per metre (forward up, right right), each vector a 2 px line
    with its points as dots in its class colour (:data:`MAP_PALETTE`), the ego car as a grey box
    at the origin. Size and positions: :func:`map_figure_layout`.
    """
    if not panels:
        raise ValueError("map_figure needs at least one (title, lines, labels) panel")
    names = _mosaic(list(images))
    first = images[names[0]]
    layout = map_figure_layout(len(panels), first.shape[:2], len(names), pc_range)
    fig = _figure(*layout["size"])
    _suptitle(fig, title or "vector maps over the BEV patch")
    cam_w, cam_h = layout["camera"]
    for i, name in enumerate(names):
        ax = _axes(fig, 20 + (i % 3) * cam_w, 40 + (i // 3) * (cam_h + 22) + 18, cam_w - 4, cam_h)
        _image(ax, images[name], name, aspect="auto")
    x_min, y_min, x_max, y_max = pc_range
    colours = MAP_PALETTE / 255.0
    for (heading, lines, labels), box in zip(panels, layout["bev"]):
        labels = np.asarray(labels, dtype=np.int64)
        if len(lines) != len(labels):
            raise ValueError(f"panel {heading!r}: {len(lines)} lines but {len(labels)} labels")
        if len(labels) and not ((labels >= 0) & (labels < len(MAP_PALETTE))).all():
            raise ValueError(f"panel {heading!r}: labels must be class ids in [0, "
                             f"{len(MAP_PALETTE)}), got {sorted(set(labels.tolist()))}")
        ax = _axes(fig, *box)
        ax.set_xlim(x_min, x_max)
        ax.set_ylim(y_min, y_max)
        ax.add_patch(Rectangle((-0.9, -2.25), 1.8, 4.5, facecolor="0.55", edgecolor="none"))
        for line, label in zip(lines, labels):
            line = np.asarray(line, dtype=np.float64).reshape(-1, 2)
            ax.plot(line[:, 0], line[:, 1], color=colours[label], linewidth=2,
                    solid_capstyle="butt", marker="o", markersize=2.5, antialiased=False)
        ax.set_title(heading, fontsize=_SMALL + 1, pad=4)
        ax.set_xlabel("x (right), m", fontsize=_SMALL, labelpad=1)
        ax.set_ylabel("y (forward), m", fontsize=_SMALL, labelpad=1)
        ax.tick_params(labelsize=_SMALL - 1)
    handles = [Line2D([], [], color=colours[c], linewidth=3, label=name)
               for c, name in enumerate(_MAP_CLASS_NAMES)]
    legend = _axes(fig, 0, layout["size"][1] - 40, layout["size"][0], 36)
    legend.axis("off")
    legend.legend(handles=handles, loc="center", ncol=3, fontsize=_SMALL + 1, frameon=False)
    return fig
