"""``python -m radocc.info [--json]``: how radocc was built and what it finds on this machine.

Prints radocc's version, Python, torch and its CUDA version; how the compiled library was built
(the record ``setup.py`` writes beside it, ``radocc/_build_info.json``: the torch it was compiled
against, whether nvcc was found and its version, whether the CUDA kernels were compiled and for
which GPU architectures, or why not); whether the library loads and which kernels it registers
(CPU, CUDA); the visible GPUs (name, compute capability, memory); and whether spconv (the LiDAR
teacher's sparse convolutions) imports. Anything wrong is listed under ``problems`` with its fix;
nothing here raises, so it also works when the compiled library is missing or was built for another
torch. Exit status: 0 when there are no problems, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

import torch

import radocc

REBUILD = "pip install -e . --no-build-isolation"
"""The command that rebuilds the compiled library from a radocc checkout (as radocc._ext says)."""


def build_record(path: Path | None = None) -> dict[str, Any] | None:
    """The build record ``setup.py`` wrote beside the compiled library, or None if there is none."""
    path = path or Path(radocc.__file__).with_name("_build_info.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _arch_entries(arch_list: str) -> list[tuple[int, int, str]]:
    """'8.0;8.6+PTX 9.0a' -> [(8, 0, ''), (8, 6, '+PTX'), (9, 0, 'a')]; names it cannot read skipped."""
    entries = []
    for item in re.split(r"[;\s]+", arch_list.strip()):
        found = re.fullmatch(r"(\d+)\.(\d+)(a|f)?(\+PTX)?", item)
        if found:
            entries.append((int(found.group(1)), int(found.group(2)),
                            (found.group(3) or "") + (found.group(4) or "")))
    return entries


def arch_runs_on(arch_list: str, capability: tuple[int, int]) -> bool | None:
    """Whether kernels compiled for ``arch_list`` (TORCH_CUDA_ARCH_LIST syntax) run on a GPU of this
    compute capability: machine code for X.Y runs on X.Z with Z >= Y (an 'a'/'f' suffix pins it to
    X.Y), PTX for X.Y on any capability >= X.Y. None when the list names no version it can read.
    """
    entries = _arch_entries(arch_list)
    if not entries:
        return None
    major, minor = capability
    for arch_major, arch_minor, suffix in entries:
        if "+PTX" in suffix and (major, minor) >= (arch_major, arch_minor):
            return True
        exact = suffix.startswith(("a", "f"))
        if arch_major == major and (arch_minor == minor if exact else arch_minor <= minor):
            return True
    return False


def _load_library() -> tuple[Any, str | None]:
    """radocc._ext after loading the compiled library, or (None, what went wrong)."""
    try:
        ext = importlib.import_module("radocc._ext")
        ext.load()  # again: the module may have been imported before something changed
        return ext, None
    except Exception as err:  # ImportError above all, but this report must never crash
        return None, f"{type(err).__name__}: {err}"


def _gpus() -> tuple[list[dict[str, Any]], str | None]:
    try:
        if not torch.cuda.is_available():
            return [], None
        gpus = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"index": index, "name": props.name,
                         "capability": f"{props.major}.{props.minor}",
                         "memory_gib": round(props.total_memory / 1024 ** 3, 1)})
        return gpus, None
    except Exception as err:
        return [], f"{type(err).__name__}: {err}"


def _spconv() -> dict[str, Any]:
    dists = importlib.metadata.packages_distributions().get("spconv", [])
    if not dists:
        return {"installed": False, "version": None, "package": None, "error": None}
    try:
        version = getattr(importlib.import_module("spconv"), "__version__", "unknown")
        return {"installed": True, "version": version, "package": dists[0], "error": None}
    except Exception as err:
        return {"installed": True, "version": None, "package": dists[0],
                "error": f"{type(err).__name__}: {err}"}


def collect(build_record_path: Path | None = None) -> dict[str, Any]:
    """Everything ``python -m radocc.info`` reports, as a JSON-able dict (see the module doc)."""
    build = build_record(build_record_path)
    ext, library_error = _load_library()
    kernels = {"cpu": None, "cuda": None}
    if ext is not None:
        kernels["cpu"] = torch._C._dispatch_has_kernel_for_dispatch_key(
            "radocc::render_forward", "CPU")
        kernels["cuda"] = ext.has_cuda_kernels()
    gpus, gpu_error = _gpus()
    report = {
        "radocc": {"version": radocc.__version__, "path": str(Path(radocc.__file__).parent)},
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda},
        "build": build,
        "library": {"loaded": ext is not None, "error": library_error, "kernels": kernels},
        "gpus": gpus,
        "gpu_error": gpu_error,
        "spconv": _spconv(),
    }
    report["problems"] = problems(report)
    return report


def problems(report: dict[str, Any]) -> list[str]:
    """What is wrong in a ``collect()`` report, each with how to fix it."""
    found = []
    build, library = report["build"], report["library"]
    if build is None:
        found.append("radocc's build record (radocc/_build_info.json) is missing, so how the "
                     "compiled library was built is unknown (not built, or built by an older "
                     f"setup.py). Fix: rebuild it, `{REBUILD}` from the radocc checkout.")
    elif build.get("radocc") not in (None, report["radocc"]["version"]):
        found.append(f"the compiled library was built from radocc {build['radocc']} but this is "
                     f"radocc {report['radocc']['version']}. Fix: `{REBUILD}`.")
    if not library["loaded"]:
        found.append(f"the compiled library does not load: {library['error']}")
    if report["gpu_error"]:
        found.append(f"torch cannot query the GPUs ({report['gpu_error']}): check the NVIDIA "
                     "driver (nvidia-smi) against torch's CUDA "
                     f"{report['torch']['cuda']}.")
    if report["gpus"] and library["loaded"] and not library["kernels"]["cuda"]:
        why = (build or {}).get("cuda_skipped") or "unknown"
        cuda = report["torch"]["cuda"]
        found.append(f"a GPU is visible but radocc was built without its CUDA kernels (why: "
                     f"{why}). Fix: put nvcc from a CUDA {cuda.split('.')[0] if cuda else ''} "
                     "toolkit on PATH (or set CUDA_HOME), unset RADOCC_NO_CUDA, and rebuild: "
                     f"`{REBUILD}`.")
    arch_list = (build or {}).get("cuda_arch_list")
    if library["kernels"]["cuda"] and arch_list:
        for gpu in report["gpus"]:
            capability = tuple(int(v) for v in gpu["capability"].split("."))
            if arch_runs_on(arch_list, capability) is False:
                found.append(f"GPU {gpu['index']} ({gpu['name']}) has compute capability "
                             f"{gpu['capability']} but the CUDA kernels were compiled for "
                             f"{arch_list}. Fix: rebuild for it, `TORCH_CUDA_ARCH_LIST="
                             f"\"{gpu['capability']}\" {REBUILD}`.")
    spconv = report["spconv"]
    if spconv["installed"] and spconv["error"]:
        found.append(f"spconv ({spconv['package']}) is installed but does not import "
                     f"({spconv['error']}); the LiDAR teacher needs it. Fix: install the "
                     "spconv-cu1xx wheel that matches torch's CUDA.")
    return found


def _yes(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of a ``collect()`` report."""
    r, build, lib = report, report["build"], report["library"]
    lines = [f"radocc     {r['radocc']['version']} ({r['radocc']['path']})",
             f"python     {r['python']['version']} ({r['python']['executable']})",
             f"torch      {r['torch']['version']}, CUDA {r['torch']['cuda'] or 'none (CPU-only build)'}"]
    if build is None:
        lines.append("built      unknown (no radocc/_build_info.json)")
    else:
        if build.get("nvcc"):
            nvcc = f"nvcc {build.get('nvcc_version') or '(version unknown)'} at {build['nvcc']}"
        elif "RADOCC_NO_CUDA" in (build.get("cuda_skipped") or ""):
            nvcc = "nvcc not looked for (RADOCC_NO_CUDA=1)"
        else:
            nvcc = "nvcc not found" if "nvcc" in build else "nvcc unknown (an older build record)"
        lines.append(f"built      against torch {build.get('torch')}"
                     f"{', python ' + build['python'] if build.get('python') else ''}; {nvcc}")
        if build.get("with_cuda") or build.get("cuda"):
            lines.append(f"           CUDA kernels compiled for {build.get('cuda_arch_list') or 'unknown'}"
                         f" architectures (CUDA {build.get('cuda')})")
        else:
            lines.append(f"           CUDA kernels not compiled: {build.get('cuda_skipped') or 'unknown'}")
    if lib["loaded"]:
        lines.append(f"library    loads; CPU kernels {_yes(lib['kernels']['cpu'])}, "
                     f"CUDA kernels {_yes(lib['kernels']['cuda'])}")
    else:
        lines.append("library    does NOT load (see problems)")
    if r["gpus"]:
        for gpu in r["gpus"]:
            lines.append(f"{'GPU' if gpu['index'] == 0 else '':10} {gpu['index']}: {gpu['name']}, "
                         f"capability {gpu['capability']}, {gpu['memory_gib']} GiB")
    else:
        lines.append("GPU        none visible (torch.cuda.is_available() is False)")
    sp = r["spconv"]
    if not sp["installed"]:
        lines.append("spconv     not installed (the LiDAR teacher needs it: the 'lidar' extra)")
    else:
        lines.append(f"spconv     {sp['version'] or 'does NOT import'} ({sp['package']})")
    if r["problems"]:
        lines.append("problems:")
        lines.extend(f"  - {p}" for p in r["problems"])
    else:
        lines.append("problems   none")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radocc.info", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report = collect()
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
