"""Benchmarks against the reference implementations, timed in one run.

    python -m radocc.bench render [--device cpu|cuda] [--json] [--fraction F] [--repeats N]
    python -m radocc.bench train-step CONFIG [--set key=value ...] [--steps N] [--json]
    python -m radocc.bench infer CONFIG [--checkpoint PATH] [--device cpu|cuda] [--json]

``train-step`` times one training step of a config by phase (see :mod:`radocc.bench_train`).
``infer`` times inference (batch 1) of a config's teacher and student (see :mod:`radocc.bench_infer`).

``render`` times forward + backward of exact-traversal rendering on workload W: the Occ3D grid
(200 x 200 x 16) with 18 feature channels and 6 cameras of a nuScenes rig at the grid centre,
112 x 200 pixel rays each on CPU (134,400 rays; stride 8 of 900 x 1600) and 450 x 800 each on
CUDA (2.16 M rays; stride 2). It compares radocc with its pure-torch twin and with a nerfacc
pipeline (torch sampling + ``nerfacc.render_weight_from_density`` + ``accumulate_along_rays``).
Both peers materialise every sample, so they run on a fixed fraction of the rays and their time
and peak memory are scaled up by 1 / fraction (both grow linearly with the number of rays); the
output says so. Each measurement runs in a fresh process so peak memory is its own.
"""

import argparse
import json
import multiprocessing
import statistics
import sys
import time

import torch

FEATURES = 18
SHAPE = (200, 200, 16)
STRIDE = {"cpu": 8, "cuda": 2}


def workload(device: str, stride: int, fraction: float, seed: int = 0):
    """Density [1, 200, 200, 16], features [1, ..., 18], rays [1, R, 3] and incoming gradients.

    The density comes from random class logits through ``density_from_logits`` (mostly free
    space); ``fraction`` < 1 keeps an evenly spaced subset of the rays.
    """
    from radocc.rays import camera_rays
    from radocc.render import density_from_logits
    from radocc.data.rig import camera_matrices

    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, *SHAPE, FEATURES, generator=gen)
    logits[..., 17] += 3.0
    density = density_from_logits(logits, free_index=17, voxel_size=0.4)
    features = torch.randn(1, *SHAPE, FEATURES, generator=gen)
    intrinsics, cam2ego = (torch.from_numpy(m).float()[None] for m in camera_matrices())
    origins, directions = camera_rays(intrinsics, cam2ego, (900, 1600), stride=stride)
    keep = max(1, round(1 / fraction))
    origins, directions = origins[:, ::keep].contiguous(), directions[:, ::keep].contiguous()
    rays = origins.shape[1]
    grads = (torch.randn(1, rays, generator=gen), torch.randn(1, rays, FEATURES, generator=gen))
    return [t.to(device) for t in (density, features, origins, directions, *grads)]


def _radocc(density, features, origins, directions):
    from radocc.render import volume_render
    out = volume_render(density, origins, directions, features)
    return out.depth, out.features


def _twin(density, features, origins, directions):
    from radocc.render_reference import volume_render_reference
    out = volume_render_reference(density, origins, directions, features)
    return out.depth, out.features


def _nerfacc(density, features, origins, directions):
    """A nerfacc pipeline: exact voxel intervals sampled in torch, weights and sums by nerfacc."""
    import nerfacc

    from radocc.render_inputs import VoxelGrid
    from radocc.render_reference import exact_intervals, sample_grid

    grid = VoxelGrid.occ3d()
    unit = directions / directions.norm(dim=-1, keepdim=True)
    starts, ends = exact_intervals(origins, unit, grid, SHAPE, 0.0, float("inf"))
    mids = 0.5 * (starts + ends)
    points = origins[..., None, :] + mids[..., None] * unit[..., None, :]
    sigmas = sample_grid(density[..., None], points, grid, trilinear=False)[..., 0]
    values = sample_grid(features, points, grid, trilinear=False)
    weights, _, _ = nerfacc.render_weight_from_density(starts[0], ends[0], sigmas[0])
    depth = nerfacc.accumulate_along_rays(weights, mids[0, ..., None])[..., 0]
    rendered = nerfacc.accumulate_along_rays(weights, values[0])
    return depth[None], rendered[None]


METHODS = {"radocc": _radocc, "reference": _twin, "nerfacc": _nerfacc}


def _peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM, the peak resident set
        f.write("5")


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure(method: str, device: str, stride: int, fraction: float, repeats: int,
             threads: int) -> dict:
    """Runs in a child process: median forward + backward time and peak memory above baseline."""
    torch.set_num_threads(threads)
    density, features, origins, directions, g_depth, g_feat = workload(device, stride, fraction)
    fn = METHODS[method]

    def step():
        d = density.detach().requires_grad_()
        f = features.detach().requires_grad_()
        depth, rendered = fn(d, f, origins, directions)
        torch.autograd.backward((depth, rendered), (g_depth, g_feat))
        if device == "cuda":
            torch.cuda.synchronize()
        return depth.detach(), rendered.detach(), d.grad, f.grad

    result = step()  # warm-up (and the outputs for the agreement check)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _rss("VmRSS")
        _peak_rss_reset()
        step()
        peak = _rss("VmHWM") - base
    return {"seconds": statistics.median(times), "peak_bytes": peak, "rays": origins.shape[1],
            "outputs": [t.cpu() for t in result]}


def _in_child(*args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_measure, args)


def bench_render(device: str, fraction: float, repeats: int, stride: int | None) -> dict:
    stride = stride or STRIDE[device]
    threads = torch.get_num_threads()
    full = _in_child("radocc", device, stride, 1.0, repeats, threads)
    radocc_part = _in_child("radocc", device, stride, fraction, 1, threads)
    twin = _in_child("reference", device, stride, fraction, repeats, threads)
    peer = _in_child("nerfacc", device, stride, fraction, repeats, threads)
    scale = full["rays"] / twin["rays"]
    agreement = max((a - b).abs().max().item()
                    for a, b in zip(radocc_part["outputs"], twin["outputs"]))
    rays = full["rays"]
    return {
        "workload": f"exact traversal, grid {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, {FEATURES} "
                    f"channels, {rays} rays (6 cameras, stride {stride} of 900x1600), "
                    "forward + backward",
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "threads": threads,
        "peer_fraction": twin["rays"] / rays,
        "radocc_seconds": full["seconds"],
        "reference_seconds_scaled": twin["seconds"] * scale,
        "nerfacc_seconds_scaled": peer["seconds"] * scale,
        "radocc_rays_per_second": rays / full["seconds"],
        "radocc_peak_bytes": full["peak_bytes"],
        "reference_peak_bytes_scaled": twin["peak_bytes"] * scale,
        "nerfacc_peak_bytes_scaled": peer["peak_bytes"] * scale,
        "speedup_vs_reference": twin["seconds"] * scale / full["seconds"],
        "speedup_vs_nerfacc": peer["seconds"] * scale / full["seconds"],
        "memory_ratio_vs_reference": full["peak_bytes"] / (twin["peak_bytes"] * scale),
        "max_abs_difference_vs_reference": agreement,
    }


def _print_table(result: dict) -> None:
    gib = 1024 ** 3
    print(f"workload: {result['workload']}")
    print(f"device: {result['device']} ({result['threads']} threads)")
    print(f"peers run on {result['peer_fraction']:.4f} of the rays; their time and memory are "
          "scaled by 1/fraction")
    print(f"{'':12} {'seconds':>10} {'peak GiB':>10}")
    for name in ("radocc", "reference", "nerfacc"):
        suffix = "" if name == "radocc" else "_scaled"
        print(f"{name:12} {result[f'{name}_seconds{suffix}']:10.3f} "
              f"{result[f'{name}_peak_bytes{suffix}'] / gib:10.3f}")
    print(f"radocc rays/s: {result['radocc_rays_per_second']:.3g}")
    for key in ("speedup_vs_reference", "speedup_vs_nerfacc", "memory_ratio_vs_reference",
                "max_abs_difference_vs_reference"):
        print(f"{key}: {result[key]:.4g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radocc.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    render = sub.add_parser("render", help="volume rendering, forward + backward, workload W")
    render.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    render.add_argument("--json", action="store_true", help="print one JSON object")
    render.add_argument("--fraction", type=float, default=1 / 16,
                        help="share of the rays the materialising peers run on (default 1/16)")
    render.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    render.add_argument("--stride", type=int, default=None,
                        help="pixel stride of the rays (default: 8 on CPU, 2 on CUDA)")
    step = sub.add_parser("train-step", help="one training step of a config, timed by phase")
    step.add_argument("config", help="experiment config (.toml)")
    step.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value (repeatable), e.g. data.root=outputs/synthetic")
    step.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    step.add_argument("--json", action="store_true", help="print one JSON object")
    infer = sub.add_parser("infer", help="inference ms/frame and frames/s of teacher and student")
    infer.add_argument("config", help="experiment config (.toml)")
    infer.add_argument("--checkpoint", default=None, help="weights of the config's model (default random)")
    infer.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    infer.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    infer.add_argument("--repeats", type=int, default=10, help="timed runs (median reported)")
    infer.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value (repeatable)")
    infer.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.bench == "infer":
        from radocc.bench_infer import bench_infer, print_infer

        try:
            result = bench_infer(args.config, args.checkpoint, args.device, args.warmup,
                                 args.repeats, args.set)
        except (ValueError, FileNotFoundError) as exc:  # ConfigError, CheckpointError included
            print(f"radocc.bench infer: error: {exc}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(result))
        else:
            print_infer(result)
        return 0
    if args.bench == "train-step":
        from radocc.bench_train import bench_train_step, print_train_step

        result = bench_train_step(args.config, args.set, steps=args.steps)
        if args.json:
            print(json.dumps(result))
        else:
            print_train_step(result)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if not 0 < args.fraction <= 1:
        parser.error(f"--fraction must be in (0, 1], got {args.fraction}")
    result = bench_render(args.device, args.fraction, args.repeats, args.stride)
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
