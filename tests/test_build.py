"""setup.py's guards: a wrong CUDA toolkit is reported before anything compiles."""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_setup(env_changes: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_changes}
    env.pop("RADOCC_NO_CUDA", None)
    return subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def fake_toolkit(root: Path, release: str) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f'#!/bin/sh\necho "Cuda compilation tools, release {release}, V{release}.1"\n')
    nvcc.chmod(0o755)
    return root


def test_cuda_home_without_a_toolkit_is_named(tmp_path):
    result = run_setup({"CUDA_HOME": str(tmp_path)})
    assert result.returncode != 0
    assert f"CUDA_HOME={tmp_path} has no bin/nvcc" in result.stderr
    assert "RADOCC_NO_CUDA=1" in result.stderr


def test_toolkit_major_version_must_match_torch(tmp_path):
    if torch.version.cuda is None:  # a CPU-only torch builds CPU kernels whatever the toolkit
        result = run_setup({"CUDA_HOME": str(fake_toolkit(tmp_path / "cuda", "1.0"))})
        assert result.returncode == 0 and "CPU kernels only" in result.stderr
        return
    major = int(torch.version.cuda.split(".")[0])
    result = run_setup({"CUDA_HOME": str(fake_toolkit(tmp_path / "cuda", f"{major - 1}.4"))})
    assert result.returncode != 0
    assert f"is CUDA {major - 1}.4 but torch" in result.stderr
    assert f"built with CUDA {torch.version.cuda}" in result.stderr


def test_no_cuda_switch_builds_cpu_only(tmp_path):
    env = {"CUDA_HOME": str(tmp_path), "RADOCC_NO_CUDA": "1"}
    result = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr  # the bad CUDA_HOME is never looked at
    assert "building the CPU kernels against" in result.stderr
