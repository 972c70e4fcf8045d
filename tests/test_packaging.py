"""The source distribution: what it carries, and that it installs and runs in a clean environment.

The fast tests build the sdist only (no compiling, a few seconds). The slow one is the proof a user
needs: ``python -m build --sdist``, a fresh venv (not --system-site-packages) with nothing but torch,
torchvision, setuptools, wheel and ninja, ``pip install dist/radocc-*.tar.gz --no-build-isolation``,
then a renderer call there that must equal the same call in this (development) install.
``make sdist-check`` runs this file. The clean install compiles the CPU kernels only
(RADOCC_NO_CUDA=1, about a minute); ``RADOCC_NO_CUDA=0 make sdist-check`` compiles the CUDA kernels
too when nvcc is found (minutes longer).
"""

import email.parser
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

import radocc

ROOT = Path(__file__).resolve().parents[1]
BUILD_ARTEFACT = re.compile(r"(\.so|\.o|\.pyc|\.pyd|_build_info\.json)$|(^|/)(__pycache__|build|"
                            r"outputs|runs|\.venv|\.git|\.pytest_cache|\.hypothesis)(/|$)")


def build_sdist(out: Path) -> Path:
    """``python -m build --sdist`` of the checkout into ``out`` (no isolated env: this venv's
    setuptools and torch, which setup.py imports to describe the extension)."""
    pytest.importorskip("build", reason="needs `build` (the dev extra: pip install build)")
    result = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                             "--outdir", str(out), str(ROOT)],
                            capture_output=True, text=True, timeout=300, cwd=out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = out.glob("radocc-*.tar.gz")
    return sdist


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    return build_sdist(tmp_path_factory.mktemp("sdist"))


def members(sdist: Path) -> list[str]:
    """Paths inside the sdist, without its top folder (radocc-X.Y.Z/)."""
    with tarfile.open(sdist) as tar:
        return [name.split("/", 1)[1] for name in tar.getnames() if "/" in name]


def test_sdist_carries_the_kernel_sources_and_configs(sdist):
    names = set(members(sdist))
    csrc = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").iterdir()
                  if p.suffix in (".h", ".cpp", ".cu"))
    assert {".h", ".cpp", ".cu"} <= {Path(p).suffix for p in csrc}
    missing = [p for p in csrc if p not in names]
    assert not missing, f"csrc files missing from the sdist: {missing}"
    configs = [p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.toml")]
    assert configs and all(p in names for p in configs)
    for path in ("README.md", "LICENSE", "pyproject.toml", "setup.py", "MANIFEST.in",
                 "radocc/__init__.py", "radocc/_ext.py", "radocc/render.py", "radocc/info.py"):
        assert path in names, f"{path} missing from the sdist"


def test_sdist_holds_no_build_artefacts(sdist):
    artefacts = [n for n in members(sdist) if BUILD_ARTEFACT.search(n)]
    assert not artefacts, f"build artefacts in the sdist: {artefacts}"


def test_sdist_metadata(sdist):
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        meta = email.parser.Parser().parsestr(tar.extractfile(f"{top}/PKG-INFO").read().decode())
    assert meta["Name"] == "radocc"
    assert meta["Version"] == radocc.__version__ and top == f"radocc-{radocc.__version__}"
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Requires-Python"] == ">=3.10"
    requires = meta.get_all("Requires-Dist")
    assert any(re.fullmatch(r"torch>=2\.\d+", r) for r in requires), requires
    assert any(c.startswith("Programming Language :: Python :: 3.1") for c in meta.get_all("Classifier"))


def test_torch_floor_is_written_once():
    """pyproject's dependencies hold torch's minimum; the build requirement and setup.py's guard
    (which reads it from there) must agree with it."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    floors = {r for r in project["project"]["dependencies"] + project["build-system"]["requires"]
              if re.match(r"torch\b", r)}
    assert len(floors) == 1 and next(iter(floors)).startswith("torch>="), floors
    assert "version" in project["project"]["dynamic"]  # read from radocc.__version__
    assert "version=" not in (ROOT / "setup.py").read_text()  # one place for each fact
    assert "install_requires" not in (ROOT / "setup.py").read_text()


RENDER_SCRIPT = textwrap.dedent("""
    import sys, torch, radocc
    from radocc.render import VoxelGrid, volume_render
    g = torch.Generator().manual_seed(0)
    density = (2 * torch.rand(1, 8, 8, 4, generator=g)).requires_grad_()
    features = torch.rand(1, 8, 8, 4, 3, generator=g)
    origins = 0.3 * torch.randn(1, 64, 3, generator=g)
    directions = torch.randn(1, 64, 3, generator=g)
    out = volume_render(density, origins, directions, features,
                        grid=VoxelGrid(lower=(-2.0, -2.0, -1.0), upper=(2.0, 2.0, 1.0)),
                        depth_bins=[0.0, 0.5, 1.0, 2.0, 4.0])
    (out.depth.sum() + out.features.sum() + out.termination[..., 1].sum()).backward()
    torch.save({"file": radocc.__file__, "depth": out.depth, "opacity": out.opacity,
                "features": out.features, "termination": out.termination,
                "v_density": density.grad}, sys.argv[1])
""")


def _run(argv: list, cwd: Path, env: dict, timeout: int) -> subprocess.CompletedProcess:
    tic = time.perf_counter()
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    print(f"[{time.perf_counter() - tic:6.1f} s] {' '.join(map(str, argv))}")
    assert result.returncode == 0, (f"{argv} failed:\n{result.stdout[-4000:]}\n"
                                    f"{result.stderr[-4000:]}")
    return result


@pytest.mark.slow
def test_sdist_installs_in_a_clean_venv_and_renders_like_the_dev_install(tmp_path):
    sdist = build_sdist(tmp_path)
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["RADOCC_NO_CUDA"] = os.environ.get("RADOCC_NO_CUDA", "1")  # CPU kernels: much faster
    # The same torch as this environment's, so the two installs must agree to the bit.
    pins = [f"torch=={torch.__version__.split('+')[0]}"]
    import torchvision
    pins.append(f"torchvision=={torchvision.__version__.split('+')[0]}")
    _run([sys.executable, "-m", "venv", venv], tmp_path, env, 120)  # no system site packages
    _run([python, "-m", "pip", "install", "-q", "setuptools>=77", "wheel", "ninja", *pins],
         tmp_path, env, 900)
    _run([python, "-m", "pip", "install", "-q", sdist, "--no-build-isolation"], tmp_path, env,
         1800)

    # Run from tmp_path so that the checkout is not importable: radocc must come from the venv.
    script = tmp_path / "render.py"
    script.write_text(RENDER_SCRIPT)
    _run([python, script, tmp_path / "clean.pt"], tmp_path, env, 300)
    _run([sys.executable, script, tmp_path / "dev.pt"], tmp_path, env, 300)
    clean, dev = (torch.load(tmp_path / f"{n}.pt") for n in ("clean", "dev"))
    assert Path(clean.pop("file")).is_relative_to(venv), "radocc was not imported from the venv"
    dev.pop("file")
    for key in dev:
        torch.testing.assert_close(clean[key], dev[key], rtol=1e-6, atol=1e-6, msg=key)
    assert dev["depth"].abs().sum() > 0 and dev["v_density"].abs().sum() > 0

    info = json.loads(_run([python, "-m", "radocc.info", "--json"], tmp_path, env, 300).stdout)
    assert info["radocc"]["version"] == radocc.__version__
    assert info["library"]["loaded"] and info["library"]["kernels"]["cpu"]
    assert info["build"]["torch"] == torch.__version__  # the wheel carries its build record
    if env["RADOCC_NO_CUDA"] != "0":
        assert info["build"]["with_cuda"] is False
        assert info["build"]["cuda_skipped"] == "RADOCC_NO_CUDA=1 was set"
        assert info["library"]["kernels"]["cuda"] is False
    assert info["problems"] == []
