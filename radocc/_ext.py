"""Loads the compiled library that registers ``torch.ops.radocc.*``.

The library is compiled by ``pip install -e . --no-build-isolation``, never at import time.
"""

import json
from pathlib import Path

import torch

_FIX = (
    "Rebuild it against the torch in this environment: "
    "`pip install -e . --no-build-isolation` from the radocc checkout "
    "(add RADOCC_NO_CUDA=1 to skip the CUDA kernels)."
)


def _torch_description() -> str:
    cuda = torch.version.cuda or "none (CPU-only build)"
    return f"torch {torch.__version__} with CUDA {cuda}"


def load() -> None:
    """Imports radocc._C, or raises ImportError saying what is wrong and how to fix it."""
    info_path = Path(__file__).with_name("_build_info.json")
    built = json.loads(info_path.read_text()) if info_path.exists() else None
    if built is not None and built.get("torch") != torch.__version__:
        raise ImportError(
            f"radocc's compiled library was built for torch {built.get('torch')}, but this "
            f"environment has {_torch_description()}. {_FIX}"
        )
    try:
        from radocc import _C  # noqa: F401  (registers the ops)
    except ImportError as err:
        raise ImportError(
            f"radocc's compiled library (radocc._C) could not be loaded ({err}). "
            f"This environment has {_torch_description()}. {_FIX}"
        ) from err


def has_cuda_kernels() -> bool:
    """True when the library was compiled with its CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("radocc::render_forward", "CUDA")


load()
