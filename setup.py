"""Builds radocc._C: the CPU kernels always, the CUDA kernels whenever a CUDA toolkit is found.

Environment:
  RADOCC_NO_CUDA=1        skip the CUDA kernels even when nvcc is present
  TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0": A100, H100/H200)
  MAX_JOBS                parallel compile jobs (ninja)
  CUDA_HOME               the CUDA toolkit (found from nvcc or /usr/local/cuda otherwise)
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()


def _fail(message: str) -> None:
    sys.exit(f"\nradocc build error: {message}\n")


def _min_torch() -> tuple[int, ...]:
    """torch's minimum version, read from pyproject.toml's [project] dependencies (its one place)."""
    deps = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", (ROOT / "pyproject.toml").read_text(),
                     re.MULTILINE | re.DOTALL)
    found = re.search(r"[\"']torch>=([0-9.]+)[\"']", deps.group(1)) if deps else None
    if found is None:
        _fail("pyproject.toml's [project] dependencies must name torch as \"torch>=X.Y\"")
    return tuple(int(v) for v in found.group(1).split("."))


MIN_TORCH = _min_torch()


def _find_cuda_home() -> str | None:
    """The CUDA toolkit root: CUDA_HOME / CUDA_PATH, else next to nvcc, else /usr/local/cuda.

    A candidate counts only if it has bin/nvcc and include/cuda_runtime.h (an nvcc wrapper
    script in /usr/local/bin must not make /usr/local look like a toolkit).
    """
    def is_toolkit(path: str | None) -> bool:
        return bool(path) and (Path(path) / "bin" / "nvcc").exists() and (
            Path(path) / "include" / "cuda_runtime.h").exists()

    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            if not is_toolkit(os.environ[var]):
                _fail(f"{var}={os.environ[var]} has no bin/nvcc or include/cuda_runtime.h; "
                      "point it at a CUDA toolkit or set RADOCC_NO_CUDA=1")
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    candidates = [str(Path(nvcc).resolve().parent.parent)] if nvcc else []
    candidates.append("/usr/local/cuda")
    return next((c for c in candidates if is_toolkit(c)), None)


NO_CUDA = os.environ.get("RADOCC_NO_CUDA", "0") not in ("", "0")
CUDA_HOME = None if NO_CUDA else _find_cuda_home()  # RADOCC_NO_CUDA=1: not even looked for
if CUDA_HOME is not None:
    os.environ["CUDA_HOME"] = CUDA_HOME  # torch.utils.cpp_extension reads it once, at import

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:
    _fail("torch is not installed. Install it first (e.g. `pip install torch==2.14.1 "
          "torchvision==0.29.1`), then `pip install -e . --no-build-isolation`.")

if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < MIN_TORCH:
    _fail(f"radocc needs torch >= {'.'.join(map(str, MIN_TORCH))}, found {torch.__version__}.")

NVCC = str(Path(CUDA_HOME) / "bin" / "nvcc") if CUDA_HOME else None
_release = re.search(r"release (\d+)\.(\d+)", subprocess.run(
    [NVCC, "--version"], capture_output=True, text=True).stdout) if NVCC else None
NVCC_VERSION = f"{_release.group(1)}.{_release.group(2)}" if _release else None

# Why the CUDA kernels are not built (None: they are); recorded in _build_info.json.
if NO_CUDA:
    CUDA_SKIPPED = "RADOCC_NO_CUDA=1 was set"
elif CUDA_HOME is None:
    CUDA_SKIPPED = "no CUDA toolkit was found (nvcc on PATH, CUDA_HOME, /usr/local/cuda)"
elif torch.version.cuda is None:
    print("radocc: torch is a CPU-only build; building the CPU kernels only.", file=sys.stderr)
    CUDA_SKIPPED = f"torch {torch.__version__} is a CPU-only build"
else:
    CUDA_SKIPPED = None
    if _release and _release.group(1) != torch.version.cuda.split(".")[0]:
        _fail(f"the CUDA toolkit at {CUDA_HOME} is CUDA {NVCC_VERSION} but torch "
              f"{torch.__version__} was built with CUDA {torch.version.cuda}; their major "
              "versions must match. Point CUDA_HOME at a matching toolkit, or set "
              "RADOCC_NO_CUDA=1 to build the CPU kernels only.")
WITH_CUDA = CUDA_SKIPPED is None


def extension_kwargs(with_cuda: bool) -> dict:
    """Every compile and link flag of radocc._C, in one place."""
    cxx = ["-O3", "-fopenmp"]  # torch picks the C++ standard its headers need
    kwargs = {
        "sources": ["csrc/ops.cpp", "csrc/render_cpu.cpp", "csrc/traverse_cpu.cpp"],
        "include_dirs": [str(ROOT / "csrc")],
        "extra_compile_args": {"cxx": cxx},
        "extra_link_args": ["-fopenmp"],
        "py_limited_api": False,
    }
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        kwargs["sources"].append("csrc/render_cuda.cu")
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        kwargs["define_macros"] = [("RADOCC_WITH_CUDA", "1")]
    return kwargs


class Build(BuildExtension):
    """Builds in ./build (so that ninja recompiles only what changed, even under pip's editable
    installs, which would use a fresh temporary folder) and records what the library was built
    against beside it, so that import can spot a torch mismatch and ``python -m radocc.info``
    can say how it was built."""

    def finalize_options(self) -> None:
        super().finalize_options()
        tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}"
        self.build_temp = str(ROOT / "build" / f"temp-{tag}{'-cuda' if WITH_CUDA else ''}")

    def run(self) -> None:
        super().run()
        info = {
            "radocc": self.distribution.get_version(),
            "python": ".".join(map(str, sys.version_info[:3])),
            "torch": torch.__version__,
            "cuda": torch.version.cuda if WITH_CUDA else None,
            "with_cuda": WITH_CUDA,
            "cuda_skipped": CUDA_SKIPPED,
            "nvcc": NVCC,
            "nvcc_version": NVCC_VERSION,
            "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if WITH_CUDA else None,
        }
        # Beside the library: the source tree for editable installs, build/lib for wheels.
        target = Path(self.get_ext_fullpath("radocc._C")).with_name("_build_info.json")
        target.write_text(json.dumps(info, indent=1) + "\n")


Extension = CUDAExtension if WITH_CUDA else CppExtension
print(f"radocc: building the CPU kernels{' and the CUDA kernels' if WITH_CUDA else ''} "
      f"against torch {torch.__version__}", file=sys.stderr)

# Name, version, dependencies and package list are in pyproject.toml.
setup(
    ext_modules=[Extension("radocc._C", **extension_kwargs(WITH_CUDA))],
    cmdclass={"build_ext": Build.with_options(use_ninja=True)},
)
