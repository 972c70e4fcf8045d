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

from setuptools import find_packages, setup

MIN_TORCH = (2, 4)
ROOT = Path(__file__).parent.resolve()


def _fail(message: str) -> None:
    sys.exit(f"\nradocc build error: {message}\n")


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


def _with_cuda() -> bool:
    if os.environ.get("RADOCC_NO_CUDA", "0") not in ("", "0"):
        return False
    cuda_home = _find_cuda_home()
    if cuda_home is None:
        return False
    # torch.utils.cpp_extension reads CUDA_HOME once, at import.
    os.environ["CUDA_HOME"] = cuda_home
    return True


WITH_CUDA = _with_cuda()

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:
    _fail("torch is not installed. Install it first (e.g. `pip install torch==2.14.1 "
          "torchvision==0.29.1`), then `pip install -e . --no-build-isolation`.")

if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < MIN_TORCH:
    _fail(f"radocc needs torch >= {'.'.join(map(str, MIN_TORCH))}, found {torch.__version__}.")
if WITH_CUDA and torch.version.cuda is None:
    print("radocc: torch is a CPU-only build; building the CPU kernels only.", file=sys.stderr)
    WITH_CUDA = False
if WITH_CUDA:
    _nvcc = subprocess.run([os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"), "--version"],
                           capture_output=True, text=True).stdout
    _found = re.search(r"release (\d+)\.(\d+)", _nvcc)
    if _found and _found.group(1) != torch.version.cuda.split(".")[0]:
        _fail(f"the CUDA toolkit at {os.environ['CUDA_HOME']} is CUDA {_found.group(1)}."
              f"{_found.group(2)} but torch {torch.__version__} was built with CUDA "
              f"{torch.version.cuda}; their major versions must match. Point CUDA_HOME at a "
              "matching toolkit, or set RADOCC_NO_CUDA=1 to build the CPU kernels only.")


def extension_kwargs(with_cuda: bool) -> dict:
    """Every compile and link flag of radocc._C, in one place."""
    cxx = ["-O3", "-fopenmp"]  # torch picks the C++ standard its headers need
    kwargs = {
        "sources": ["csrc/ops.cpp", "csrc/render_cpu.cpp"],
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
    against, so that import can spot a torch mismatch."""

    def finalize_options(self) -> None:
        super().finalize_options()
        tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}"
        self.build_temp = str(ROOT / "build" / f"temp-{tag}{'-cuda' if WITH_CUDA else ''}")

    def run(self) -> None:
        super().run()
        info = {"torch": torch.__version__, "cuda": torch.version.cuda if WITH_CUDA else None}
        (ROOT / "radocc" / "_build_info.json").write_text(json.dumps(info) + "\n")


Extension = CUDAExtension if WITH_CUDA else CppExtension
print(f"radocc: building the CPU kernels{' and the CUDA kernels' if WITH_CUDA else ''} "
      f"against torch {torch.__version__}", file=sys.stderr)

setup(
    name="radocc",
    version="0.1.0",
    description="Rendering-assisted cross-modal distillation for 3D occupancy prediction",
    python_requires=">=3.10",
    packages=find_packages(include=["radocc", "radocc.*"]),
    package_data={"radocc": ["_build_info.json"]},
    ext_modules=[Extension("radocc._C", **extension_kwargs(WITH_CUDA))],
    cmdclass={"build_ext": Build.with_options(use_ninja=True)},
    install_requires=[
        f"torch>={'.'.join(map(str, MIN_TORCH))}", "torchvision", "numpy", "tqdm", "pillow",
        "segment-anything>=1.0", "scikit-image>=0.21", "tensorboard",
        "nuscenes-devkit==1.2.0",  # pins numpy < 2
    ],
    extras_require={
        "dev": ["pytest", "hypothesis", "nerfacc==0.5.3", "ninja"],
        # The teacher's LiDAR branch. spconv-cu118 also runs on the CPU (ConvAlgo.Native); on a
        # GPU machine, install the spconv-cu1xx wheel that matches your CUDA instead.
        "lidar": ["spconv-cu118"],
    },
)
