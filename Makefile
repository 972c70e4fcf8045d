# `make test` and `make demo` work on a fresh machine with nothing but Python 3.10+:
# they create .venv/, install torch, build radocc (CPU kernels, and CUDA kernels when nvcc is
# found) and run. Rebuilds are incremental (ninja) and only happen when csrc/ or setup.py change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
INSTALLED := $(VENV)/.radocc-installed
INSTALL_RADOCC := $(PIP) install -e ".[dev,lidar,export]" --no-build-isolation

.PHONY: install test test-all demo ablation bench sdist-check gpu-check clean

$(VENV)/.torch-installed:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "setuptools>=77" wheel ninja
	$(PIP) install $(TORCH_PINS)
	touch $@

$(INSTALLED): $(VENV)/.torch-installed setup.py pyproject.toml $(wildcard csrc/*)
	$(INSTALL_RADOCC)
	rm -f $(CPU_INSTALLED)
	touch $@

# `make demo` on a machine without a GPU builds the CPU kernels only: compiling the CUDA kernels
# takes minutes on 2 cores and nothing there would run them. A later `make install` / `make test`
# adds them (ninja compiles only the CUDA objects); a full build is never replaced by a CPU one.
CPU_INSTALLED := $(VENV)/.radocc-installed-cpu
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
DEMO_INSTALLED := $(if $(or $(HAS_GPU),$(wildcard $(INSTALLED))),$(INSTALLED),$(CPU_INSTALLED))

$(CPU_INSTALLED): $(VENV)/.torch-installed setup.py pyproject.toml $(wildcard csrc/*)
	RADOCC_NO_CUDA=1 $(INSTALL_RADOCC)
	rm -f $(INSTALLED)
	touch $@

install: $(INSTALLED)

test: install
	$(PY) -m pytest -m "not slow" -q

test-all: install
	$(PY) -m pytest -q

# The whole pipeline on 2 CPU cores: a synthetic Occ3D-nuScenes dataset, its segments (SAM when
# SAM_CHECKPOINT names a SAM state dict, e.g. `make demo SAM_CHECKPOINT=sam_vit_h_4b8939.pth
# SAM_MODEL_TYPE=vit_h`; else scikit-image's felzenszwalb: nothing is downloaded), then the teacher
# and a camera model trained from scratch, the baseline and the RadOcc student fine-tuned from that
# camera model with the same budget and seed, evaluated on val (outputs/demo/results.md,
# results.json) and drawn (outputs/demo/*.png). A fresh run each time. BUDGET=short and
# BUDGET=long are the earlier budgets of the README's tables (the long one 22-28 min on 2 CPU
# cores; radocc.experiments.BUDGETS).
BUDGET ?= demo
SAM_CHECKPOINT ?=
SAM_MODEL_TYPE ?= vit_h
ifneq ($(SAM_CHECKPOINT),)
SEGMENTER := --checkpoint $(SAM_CHECKPOINT) --model-type $(SAM_MODEL_TYPE)
SEGMENTER_SAYS := SAM $(SAM_MODEL_TYPE) from $(SAM_CHECKPOINT)
else
SEGMENTER := --fallback felzenszwalb
SEGMENTER_SAYS := felzenszwalb fallback (no SAM_CHECKPOINT given)
endif

demo: $(DEMO_INSTALLED)
	rm -rf outputs/demo
	$(PY) -m radocc.data.synthetic --out outputs/synthetic --overwrite --quiet
	@echo "segments: $(SEGMENTER_SAYS)"
	$(PY) -m radocc.segments --data-root outputs/synthetic $(SEGMENTER) --overwrite --no-progress
	$(PY) -m radocc.experiments demo --out outputs/demo --budget $(BUDGET)

# The paper's ablation on the synthetic dataset (resumable: run it again to continue); needs the
# dataset and segments of `make demo`. SEEDS=3 by default; BUDGET=long writes outputs/ablation-long.
SEEDS ?= 3
ablation: install
	$(PY) -m radocc.experiments ablation --seeds $(SEEDS) --budget $(BUDGET)

bench: install
	$(PY) -m radocc.bench render

# The source distribution: builds it, checks what it carries, installs it in a fresh venv under /tmp
# (torch, torchvision, setuptools, wheel, ninja, then `pip install radocc-*.tar.gz
# --no-build-isolation`) and compares a render there with this install (tests/test_packaging.py).
# The fresh install compiles the CPU kernels only, RADOCC_NO_CUDA=1, about 2 minutes in all;
# `RADOCC_NO_CUDA=0 make sdist-check` also compiles the CUDA kernels when nvcc is found (longer).
sdist-check: install
	$(PY) -m pytest tests/test_packaging.py -q -s

# The whole CUDA path, on a machine with a GPU: build, every CUDA test, the CUDA render benchmarks,
# one distillation train step, one summary (outputs/gpu-check/). Without a GPU it says so and fails
# before building anything.
gpu-check: $(VENV)/.torch-installed
	$(PY) -m radocc.gpu_check --preflight
	$(MAKE) install
	$(PY) -m radocc.gpu_check --out outputs/gpu-check

clean:
	rm -rf build radocc/_C*.so radocc/_build_info.json $(INSTALLED) $(CPU_INSTALLED)
