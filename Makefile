# fibuild: every target runs with the interpreter in $(PYTHON).
PYTHON ?= python3
FIBUILD = $(PYTHON) -m fibuild
DEF ?= rmsnorm_h4096
AXES ?= batch_size=32
# The device whose committed evaluations `make table` and `make resolve` read (the H100's slug;
# `make table DEVICE=<slug>` for another, e.g. the slug `fibuild bench` printed).
DEVICE ?= nvidia-h100-80gb-hbm3-sm90
# torch's CPU-only wheels (a plain `pip install torch` pulls about 2.7 GB of CUDA wheels);
# `make install TORCH_INDEX=https://download.pytorch.org/whl/cu130` for a CUDA build.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# torch's own dependencies (filelock, sympy, ...) come from the package index as usual.
PYPI_INDEX ?= https://pypi.org/simple

.PHONY: install test test-gpu lint validate build-all bench table resolve demo clean-cache benchmarks

install:  ## install fibuild and its dependencies (torch from $(TORCH_INDEX) where none is installed)
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0 --index-url $(TORCH_INDEX) --extra-index-url $(PYPI_INDEX)
	$(PYTHON) -m pip install -e ".[dev,plot,farm]"

test:  ## the test suite (GPU tests skip without a GPU)
	$(PYTHON) -m pytest -q

test-gpu:  ## only the GPU tests (run on a GPU machine)
	$(PYTHON) -m pytest -q -m gpu

lint:  ## ruff over the package, the tests, the examples and the benchmarks (as CI runs it)
	$(PYTHON) -m ruff check fibuild tests examples setup.py .ci benchmarks

validate:  ## validate every manifest of the workspace
	$(FIBUILD) validate

build-all:  ## build every solution this machine can build
	$(FIBUILD) build --all

bench:  ## benchmark every definition on the current device into registry/
	$(FIBUILD) bench

table:  ## leaderboard of $(DEF) on $(DEVICE)
	$(FIBUILD) table $(DEF) --device $(DEVICE)

resolve:  ## which solution runs $(DEF) at $(AXES) on $(DEVICE), with the decision trace
	$(FIBUILD) resolve $(DEF) --axes $(AXES) --device $(DEVICE) --explain

demo: validate build-all resolve  ## the main job on the shipped workspace

clean-cache:  ## remove every unlocked build directory from the cache
	$(FIBUILD) gc --all

benchmarks:  ## fibuild's own benchmarks (build, dispatch, cold start); results under benchmarks/results/
	$(PYTHON) benchmarks/bench_build.py --quick --out benchmarks/results/build-$$(uname -m).md
	$(PYTHON) benchmarks/bench_dispatch.py --out benchmarks/results/dispatch-$$(uname -m).md
	$(PYTHON) benchmarks/bench_coldstart.py --out benchmarks/results/coldstart-$$(uname -m).md
