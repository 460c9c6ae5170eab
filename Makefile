# dtools: every target installs what it needs into .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

DEMO_MINUTES ?= 5
DEMO_OUT     ?= demo/out

.PHONY: install test lint docs demo bench bench-kernels bench-threads bench-quality clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check dtools tests bench

docs: install
	$(BIN)/python -m dtools.docgen docs/commands.md

demo: install
	PATH="$(abspath $(BIN)):$$PATH" DEMO_MINUTES=$(DEMO_MINUTES) bash demo/run.sh $(DEMO_OUT)

# docs/performance.md: run on a quiet machine (here: under `flock -x /work/notes/cpu.lock make bench`).
# BENCH_ARGS, e.g. "--configs seed32 --compile"; bench-threads: the CPU thread policies (~15 min)
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/bench_speed.py $(BENCH_ARGS)

bench-kernels bench-threads: install
	$(BIN)/python bench/$(subst -,_,$@).py

# sample quality per CPU-minute against the diffusers recipe (docs/quality.md): about 2.5 hours
bench-quality: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/quality.py $(QUALITY_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
