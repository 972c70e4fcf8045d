"""python -m radocc.info, and what radocc says when its compiled library does not fit the machine:
missing, built for another torch, without CUDA kernels for a CUDA tensor, or for another GPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import radocc
from radocc import _ext, info
from radocc.render import VoxelGrid, volume_render

ROOT = Path(__file__).resolve().parents[1]


def run_info(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "radocc.info", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_reports_this_environment():
    report = info.collect()
    assert report["radocc"]["version"] == radocc.__version__
    assert report["torch"] == {"version": torch.__version__, "cuda": torch.version.cuda}
    assert report["library"]["loaded"] and report["library"]["error"] is None
    assert report["library"]["kernels"]["cpu"] is True
    assert report["library"]["kernels"]["cuda"] is _ext.has_cuda_kernels()
    assert len(report["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert report["build"]["torch"] == torch.__version__
    text = info.format_report(report)
    assert f"radocc     {radocc.__version__}" in text and f"torch      {torch.__version__}" in text
    assert "library    loads; CPU kernels yes" in text


def test_command_line_text_and_json():
    result = run_info("--json")
    report = json.loads(result.stdout)
    assert result.returncode == (1 if report["problems"] else 0), result.stderr
    assert report["radocc"]["version"] == radocc.__version__
    assert set(report) >= {"python", "torch", "build", "library", "gpus", "spconv", "problems"}
    text = run_info()
    assert text.returncode == result.returncode
    assert text.stdout.startswith(f"radocc     {radocc.__version__}") and "spconv" in text.stdout


def test_library_built_for_another_torch_is_reported_not_raised(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "1.0.0")
    report = info.collect()
    assert not report["library"]["loaded"]
    assert report["library"]["kernels"] == {"cpu": None, "cuda": None}
    (problem,) = [p for p in report["problems"] if "does not load" in p]
    assert "built for torch" in problem and "torch 1.0.0" in problem
    assert "pip install -e . --no-build-isolation" in problem
    text = info.format_report(report)
    assert "library    does NOT load" in text and "torch      1.0.0" in text


def test_missing_library_and_build_record_are_reported(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "radocc._C", None)  # makes `from radocc import _C` fail
    monkeypatch.delattr(radocc, "_C")
    monkeypatch.setattr(_ext, "__file__", str(tmp_path / "_ext.py"))  # no _build_info.json there
    report = info.collect(build_record_path=tmp_path / "_build_info.json")
    assert report["build"] is None and not report["library"]["loaded"]
    assert any("_build_info.json) is missing" in p and "--no-build-isolation" in p
               for p in report["problems"])
    assert any("could not be loaded" in p for p in report["problems"])
    assert "built      unknown" in info.format_report(report)


def _copy_package(tmp_path: Path, build_record: dict) -> Path:
    """A copy of the installed radocc package (compiled library included) with another build record."""
    shutil.copytree(Path(radocc.__file__).parent, tmp_path / "radocc",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "radocc" / "_build_info.json").write_text(json.dumps(build_record))
    return tmp_path


def test_mismatched_build_in_a_fresh_interpreter(tmp_path):
    """The real situation: torch was upgraded after radocc was built. Import names the fix;
    python -m radocc.info still prints everything, lists the problem and exits 1."""
    record = {**info.build_record(), "torch": "2.4.0+cu121", "radocc": radocc.__version__}
    cwd = _copy_package(tmp_path, record)
    imported = subprocess.run([sys.executable, "-c", "import radocc.render"], cwd=cwd,
                              capture_output=True, text=True, timeout=300)
    assert imported.returncode != 0
    assert (f"built for torch 2.4.0+cu121, but this environment has torch {torch.__version__}"
            in imported.stderr)
    assert "pip install -e . --no-build-isolation" in imported.stderr
    result = run_info(cwd=cwd)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"radocc     {radocc.__version__} ({cwd / 'radocc'})" in result.stdout
    assert "against torch 2.4.0+cu121" in result.stdout
    assert "library    does NOT load" in result.stdout and "problems:" in result.stdout


def test_old_or_foreign_build_record_still_prints(tmp_path):
    """A record from an older setup.py (only torch and cuda) or another radocc version."""
    cwd = _copy_package(tmp_path, {"torch": torch.__version__, "cuda": None, "radocc": "0.0.1"})
    result = run_info(cwd=cwd)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "built from radocc 0.0.1 but this is radocc" in result.stdout
    assert "library    loads" in result.stdout


@pytest.mark.parametrize("arch_list,capability,runs", [
    ("8.0;9.0", (9, 0), True),
    ("8.0;9.0", (8, 6), True),    # sm_80 machine code runs on later minors of major 8
    ("8.0;9.0", (7, 5), False),
    ("8.6", (8, 0), False),
    ("8.0 9.0", (12, 0), False),
    ("8.0+PTX", (12, 0), True),   # PTX is compiled for the GPU at load
    ("9.0a", (9, 0), True),
    ("9.0a", (10, 0), False),     # arch-specific code runs on that one capability only
    ("Ampere", (8, 0), None),
])
def test_arch_runs_on(arch_list, capability, runs):
    assert info.arch_runs_on(arch_list, capability) is runs


def _report_with_gpu(capability: str, cuda_kernels: bool, build: dict) -> dict:
    report = info.collect()
    report["gpus"] = [{"index": 0, "name": "Test GPU", "capability": capability, "memory_gib": 80.0}]
    report["library"]["kernels"]["cuda"] = cuda_kernels
    report["build"] = {**report["build"], **build}
    return report


def test_gpu_without_cuda_kernels_says_why_and_how_to_fix():
    report = _report_with_gpu("9.0", False, {"with_cuda": False,
                                             "cuda_skipped": "RADOCC_NO_CUDA=1 was set"})
    (problem,) = [p for p in info.problems(report) if "without its CUDA kernels" in p]
    assert "RADOCC_NO_CUDA=1 was set" in problem and "unset RADOCC_NO_CUDA" in problem
    assert "pip install -e . --no-build-isolation" in problem


def test_gpu_outside_the_compiled_architectures_is_named():
    report = _report_with_gpu("7.5", True, {"with_cuda": True, "cuda_arch_list": "8.0;9.0"})
    (problem,) = [p for p in info.problems(report) if "compute capability" in p]
    assert "Test GPU" in problem and 'TORCH_CUDA_ARCH_LIST="7.5"' in problem
    ok = _report_with_gpu("9.0", True, {"with_cuda": True, "cuda_arch_list": "8.0;9.0"})
    assert not [p for p in info.problems(ok) if "compute capability" in p]


class _ReportsCuda(torch.Tensor):
    """A CPU tensor that says it is on a CUDA device (no GPU here)."""

    @property
    def is_cuda(self) -> bool:
        return True


def test_cuda_tensor_with_a_cpu_only_build_says_what_to_do(monkeypatch):
    monkeypatch.setattr(_ext, "has_cuda_kernels", lambda: False)
    density = torch.rand(1, 4, 4, 2).as_subclass(_ReportsCuda)
    with pytest.raises(RuntimeError) as err:
        volume_render(density, torch.zeros(1, 3, 3), torch.ones(1, 3, 3),
                      grid=VoxelGrid(lower=(-1.0, -1.0, -1.0), upper=(1.0, 1.0, 1.0)))
    message = str(err.value)
    assert "density is on a CUDA device" in message and "without its CUDA kernels" in message
    assert "pip install -e . --no-build-isolation" in message
