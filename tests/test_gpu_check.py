"""python -m radocc.gpu_check: refuses honestly without a GPU; its plan, its parsing and its summary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from radocc import gpu_check
from radocc.gpu_check import Outcome, Step

ROOT = Path(__file__).resolve().parents[1]


def run_check(*args: str, hide_gpus: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU, on any machine
    return subprocess.run([sys.executable, "-m", "radocc.gpu_check", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [[], ["--preflight"]])
def test_without_a_gpu_it_says_so_and_fails(args, tmp_path):
    out = tmp_path / "gpu-check"
    result = run_check(*args, "--out", str(out))
    assert result.returncode == 2
    assert "no CUDA device is visible" in result.stderr and "Nothing was checked" in result.stderr
    assert "passed" not in result.stdout + result.stderr and "PASS" not in result.stdout
    assert not out.exists()  # nothing ran, nothing was written


def test_no_gpu_message_is_none_only_with_a_gpu():
    assert (gpu_check.no_gpu_message() is None) == torch.cuda.is_available()


def test_plan_covers_the_whole_cuda_path(tmp_path):
    steps = {s.name: s.argv for s in gpu_check.plan(tmp_path, python="py")}
    assert list(steps) == ["info", "cuda-tests", "render-W", "render-2.16M", "dataset", "segments",
                           "train-step"]
    assert steps["cuda-tests"][:6] == ["py", "-m", "pytest", "tests", "-k", "cuda"]
    assert steps["render-2.16M"][3:7] == ["render", "--device", "cuda", "--json"]
    assert "--stride" not in steps["render-2.16M"]  # the CUDA default: stride 2, 2.16 M rays
    assert steps["render-W"][-2:] == ["--stride", "8"]
    train = steps["train-step"]
    assert "configs/synthetic/radocc.toml" in train and f"data.root={tmp_path / 'synthetic'}" in train
    assert train[train.index("--steps") + 1] == "1"
    assert steps["dataset"][steps["dataset"].index("--out") + 1] == str(tmp_path / "synthetic")
    for name, argv in steps.items():  # every module it names exists in the checkout
        module = argv[argv.index("-m") + 1]
        assert module == "pytest" or (ROOT / (module.replace(".", "/") + ".py")).is_file(), name


def test_cuda_test_selection_finds_cuda_tests():
    """`-k cuda` selects CUDA tests only. The renderer's [cuda] parameters exist only where a GPU
    is; its CUDA-against-CPU comparison is collected everywhere (and skipped without a GPU)."""
    result = subprocess.run([sys.executable, "-m", "pytest", "tests/test_render.py", "-k", "cuda",
                             "--collect-only", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    selected = [line for line in result.stdout.splitlines() if "::" in line]
    assert selected and all("cuda" in line for line in selected), result.stdout[-2000:]


def test_junit_counts(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text("""<?xml version="1.0"?><testsuites><testsuite name="pytest">
        <testcase name="a[cuda]"/><testcase name="b[cuda]"/>
        <testcase name="c[cuda]"><failure message="x"/></testcase>
        <testcase name="d"><skipped message="no gpu"/></testcase>
        <testcase name="e"><error message="fixture"/></testcase>
        </testsuite></testsuites>""")
    assert gpu_check.junit_counts(xml) == {"passed": 2, "failed": 1, "errors": 1, "skipped": 1}


def test_last_json():
    assert gpu_check.last_json('warming up\n{"a": 1}\n{"b": 2}\n') == {"b": 2}
    with pytest.raises(ValueError, match="no JSON object"):
        gpu_check.last_json("Traceback ...\n")


def test_run_step_records_failures_and_figures(tmp_path):
    ok = Step("ok", [sys.executable, "-c", "print('{\"x\": 3}')"], 60,
              lambda stdout, out: {"x": gpu_check.last_json(stdout)["x"]})
    crash = Step("crash", [sys.executable, "-c", "raise SystemExit('kernel launch failed')"], 60)
    slow = Step("slow", [sys.executable, "-c", "import time; time.sleep(30)"], 1)
    empty = Step("empty", [sys.executable, "-c", "pass"], 60,
                 lambda stdout, out: gpu_check.last_json(stdout))
    outcomes = [gpu_check.run_step(s, tmp_path) for s in (ok, crash, slow, empty)]
    assert outcomes[0].passed and outcomes[0].figures == {"x": 3}
    assert not outcomes[1].passed and "kernel launch failed" in outcomes[1].error
    assert not outcomes[2].passed and "timed out after 1 s" in outcomes[2].error
    assert not outcomes[3].passed and "no JSON object" in outcomes[3].error
    assert "kernel launch failed" in (tmp_path / "crash.log").read_text()
    summary = gpu_check.format_summary(outcomes)
    assert summary.splitlines()[-1] == "1 passed, 3 failed (crash, slow, empty)"
    assert "PASS  ok" in summary and "x=3" in summary and "FAIL  crash" in summary


def test_bench_figures_from_the_benchmarks_json(tmp_path):
    render = {"radocc_seconds": 0.5, "radocc_rays_per_second": 4.32e6, "radocc_peak_bytes": 2 ** 30,
              "speedup_vs_reference": 41.23, "speedup_vs_nerfacc": 12.0,
              "max_abs_difference_vs_reference": 3e-6}
    figures = gpu_check._render_figures(json.dumps(render), tmp_path)
    assert figures["rays"] == 2160000 and figures["radocc_ms"] == 500.0
    assert figures["peak_gib"] == 1.0 and figures["speedup_vs_reference"] == 41.2
    train = {"seconds": {"step": 0.25}, "rendering_share": 0.08, "peak_bytes": 3 * 2 ** 30,
             "device": "NVIDIA H100"}
    assert gpu_check._train_figures(json.dumps(train), tmp_path) == {
        "step_s": 0.25, "render_share": "8.0 %", "peak_gib": 3.0, "device": "NVIDIA H100"}


def test_info_step_fails_on_problems(tmp_path):
    report = {"build": {"cuda_arch_list": "8.0;9.0", "nvcc_version": "13.0"},
              "gpus": [{"name": "H100", "capability": "9.0"}], "torch": {"version": "2.14.1"},
              "library": {"kernels": {"cuda": False}},
              "problems": ["a GPU is visible but radocc was built without its CUDA kernels"]}
    with pytest.raises(RuntimeError, match="without its CUDA kernels"):
        gpu_check._info_figures(json.dumps(report), tmp_path)
    report.update(problems=[], library={"kernels": {"cuda": True}})
    assert gpu_check._info_figures(json.dumps(report), tmp_path)["gpu"] == "H100"
