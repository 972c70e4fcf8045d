"""The examples run, and their losses go down (tiny sizes, CPU)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from statistics import mean

import torch

torch.set_num_threads(1)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_distill_your_model_losses_decrease():
    history = _load("distill_your_model").main(steps=20, seed=0, verbose=False)
    assert len(history) == 20
    assert all(set(h) == {"task", "rdc", "rsc", "total"} for h in history)
    assert all(v == v and abs(v) < float("inf") for h in history for v in h.values())
    first, last = history[:3], history[-3:]
    for key in ("total", "rdc", "task"):
        assert mean(h[key] for h in last) < 0.8 * mean(h[key] for h in first), key
    assert all(h["rsc"] > 0 for h in history)  # segments were looked up and compared


def test_distill_your_model_runs_as_a_script():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "distill_your_model.py"), "--steps", "2"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step   2" in proc.stdout and "rdc" in proc.stdout
