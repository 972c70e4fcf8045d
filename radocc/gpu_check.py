"""``python -m radocc.gpu_check [--out DIR] [--preflight]``: checks radocc's whole CUDA path at once.

``make gpu-check`` runs it after building (``make install``). On a machine with a GPU it runs, each
in its own process with its output in ``DIR/<step>.log`` (default ``outputs/gpu-check``):

  info          ``python -m radocc.info --json``: the CUDA kernels are compiled, for this GPU
  cuda-tests    every CUDA test: ``pytest tests -k cuda`` (tests parametrised on a ``cuda`` device,
                marked ``cuda`` or named so); at least one must pass
  render-W      ``python -m radocc.bench render --device cuda --stride 8``: workload W as on the CPU
                (134,400 rays), forward + backward, against the pure-torch twin and nerfacc
  render-2.16M  ``python -m radocc.bench render --device cuda``: the CUDA workload (stride 2,
                2.16 M rays), forward + backward
  dataset       a small synthetic Occ3D-nuScenes dataset with felzenszwalb segments in DIR/synthetic
  train-step    ``python -m radocc.bench train-step configs/synthetic/radocc.toml --steps 1`` on it:
                one RadOcc distillation step (teacher, student, rendering, RDC + RSC) on CUDA

then prints one summary and writes it to ``DIR/summary.json``. Every step runs even if one before it
failed. Exit status: 0 when every step passed, 1 when one failed, 2 when no GPU is visible (then
nothing is run: this check never passes without a GPU). ``--preflight`` only checks for a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
"""The checkout: tests/ and configs/ are read from here."""


@dataclass
class Step:
    """One command of the check; ``summarise`` turns its output into the summary's figures."""

    name: str
    argv: list[str]
    timeout_s: int
    summarise: Callable[[str, Path], dict[str, Any]] | None = None


@dataclass
class Outcome:
    name: str
    passed: bool
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def no_gpu_message() -> str | None:
    """Why this machine cannot run the check (no visible CUDA device), or None when it can."""
    if torch.cuda.is_available():
        return None
    cuda = torch.version.cuda or "none (a CPU-only build)"
    return (f"gpu-check: no CUDA device is visible (torch {torch.__version__}, CUDA {cuda}, "
            f"torch.cuda.is_available() is False, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}). Nothing was checked: run "
            "`make gpu-check` on a machine with an NVIDIA GPU and its driver.")


def last_json(stdout: str) -> dict[str, Any]:
    """The last line of ``stdout`` that is a JSON object (the benchmarks print one)."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("the command printed no JSON object")


def junit_counts(path: Path) -> dict[str, int]:
    """Passed / failed / errors / skipped test counts of a pytest ``--junitxml`` report."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        key = ("failed" if "failure" in kinds else "errors" if "error" in kinds
               else "skipped" if "skipped" in kinds else "passed")
        counts[key] += 1
    return counts


def _info_figures(stdout: str, out: Path) -> dict[str, Any]:
    report = json.loads(stdout)
    build = report["build"] or {}
    gpu = report["gpus"][0] if report["gpus"] else {}
    figures = {"gpu": gpu.get("name"), "capability": gpu.get("capability"),
               "cuda_kernels": report["library"]["kernels"]["cuda"],
               "arch_list": build.get("cuda_arch_list"), "nvcc": build.get("nvcc_version"),
               "torch": report["torch"]["version"], "problems": report["problems"]}
    if not figures["cuda_kernels"] or report["problems"]:
        raise RuntimeError("; ".join(report["problems"]) or "radocc has no CUDA kernels")
    return figures


def _test_figures(stdout: str, out: Path) -> dict[str, Any]:
    counts = junit_counts(out / "cuda-tests.xml")
    if counts["passed"] == 0:
        raise RuntimeError(f"no CUDA test passed: {counts}")
    return counts


def _render_figures(stdout: str, out: Path) -> dict[str, Any]:
    r = last_json(stdout)
    return {"rays": round(r["radocc_seconds"] * r["radocc_rays_per_second"]),
            "radocc_ms": round(1000 * r["radocc_seconds"], 2),
            "rays_per_s": f"{r['radocc_rays_per_second']:.3g}",
            "peak_gib": round(r["radocc_peak_bytes"] / 1024 ** 3, 3),
            "speedup_vs_reference": round(r["speedup_vs_reference"], 1),
            "speedup_vs_nerfacc": round(r["speedup_vs_nerfacc"], 1),
            "max_abs_diff_vs_reference": f"{r['max_abs_difference_vs_reference']:.2g}"}


def _train_figures(stdout: str, out: Path) -> dict[str, Any]:
    r = last_json(stdout)
    return {"step_s": round(r["seconds"]["step"], 3),
            "render_share": f"{100 * r['rendering_share']:.1f} %",
            "peak_gib": round(r["peak_bytes"] / 1024 ** 3, 2), "device": r["device"]}


def plan(out: Path, python: str = sys.executable) -> list[Step]:
    """The check's steps, in order (see the module doc)."""
    data = out / "synthetic"
    bench = [python, "-m", "radocc.bench", "render", "--device", "cuda", "--json"]
    return [
        Step("info", [python, "-m", "radocc.info", "--json"], 300, _info_figures),
        Step("cuda-tests", [python, "-m", "pytest", "tests", "-k", "cuda", "-q", "-p",
                            "no:cacheprovider", f"--junitxml={out / 'cuda-tests.xml'}"],
             1800, _test_figures),
        Step("render-W", [*bench, "--stride", "8"], 1200, _render_figures),
        Step("render-2.16M", bench, 1800, _render_figures),
        Step("dataset", [python, "-m", "radocc.data.synthetic", "--out", str(data), "--scenes", "2",
                         "--samples-per-scene", "2", "--overwrite", "--quiet"], 900),
        Step("segments", [python, "-m", "radocc.segments", "--data-root", str(data),
                          "--fallback", "felzenszwalb", "--overwrite", "--no-progress"], 900),
        Step("train-step", [python, "-m", "radocc.bench", "train-step",
                            "configs/synthetic/radocc.toml", "--set", f"data.root={data}",
                            "--steps", "1", "--json"], 1800, _train_figures),
    ]


def run_step(step: Step, out: Path) -> Outcome:
    """Runs one step from the checkout, its output in ``out/<name>.log``; never raises."""
    tic = time.perf_counter()
    log = out / f"{step.name}.log"
    try:
        proc = subprocess.run(step.argv, cwd=ROOT, capture_output=True, text=True,
                              timeout=step.timeout_s)
    except subprocess.TimeoutExpired as err:
        log.write_text(f"$ {' '.join(step.argv)}\n{err.stdout or ''}\n{err.stderr or ''}")
        return Outcome(step.name, False, time.perf_counter() - tic,
                       error=f"timed out after {step.timeout_s} s (log: {log})")
    seconds = time.perf_counter() - tic
    log.write_text(f"$ {' '.join(step.argv)}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0 and step.name != "info":  # info exits 1 on problems: it says which
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return Outcome(step.name, False, seconds,
                       error=f"exit status {proc.returncode}: {tail[0]} (log: {log})")
    try:
        figures = step.summarise(proc.stdout, out) if step.summarise else {}
    except Exception as err:
        return Outcome(step.name, False, seconds, error=f"{err} (log: {log})")
    return Outcome(step.name, True, seconds, figures)


def format_summary(outcomes: list[Outcome]) -> str:
    """One line per step: PASS/FAIL, seconds, and its figures or its error."""
    lines = ["gpu-check summary"]
    for o in outcomes:
        detail = o.error if not o.passed else ", ".join(f"{k}={v}" for k, v in o.figures.items())
        lines.append(f"  {'PASS' if o.passed else 'FAIL'}  {o.name:13} {o.seconds:8.1f} s  {detail}")
    failed = [o.name for o in outcomes if not o.passed]
    lines.append(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed"
                 + (f" ({', '.join(failed)})" if failed else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radocc.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/gpu-check",
                        help="folder for logs, the dataset and summary.json")
    parser.add_argument("--preflight", action="store_true",
                        help="only check that a GPU is visible (before building)")
    args = parser.parse_args(argv)
    why = no_gpu_message()
    if why:
        print(why, file=sys.stderr)
        return 2
    if args.preflight:
        print(f"gpu-check: {torch.cuda.device_count()} CUDA device(s) visible: "
              f"{torch.cuda.get_device_name(0)}")
        return 0
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for step in plan(out):
        print(f"gpu-check: {step.name}: {' '.join(step.argv)}", flush=True)
        outcomes.append(run_step(step, out))
        print(f"gpu-check: {step.name}: {'passed' if outcomes[-1].passed else 'FAILED'} "
              f"({outcomes[-1].seconds:.1f} s)", flush=True)
    summary = format_summary(outcomes)
    print(summary)
    (out / "summary.json").write_text(json.dumps([asdict(o) for o in outcomes], indent=1) + "\n")
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
