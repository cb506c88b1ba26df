# Two commands on a fresh machine:  `make bench`  and  `make test`.
# Everything perwatt needs is installed here, into .venv; nothing by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch only where the engine needs it. Without an NVIDIA GPU we pin the CPU build (a local
# wheel on these machines) *before* resolving extras, so no CUDA wheels are ever downloaded.
HAS_NVIDIA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC := $(if $(HAS_NVIDIA),torch,torch==2.13.0)
BENCH_DIR ?= bench-results

.PHONY: setup bench test lint typecheck clean

$(VENV)/.installed: pyproject.toml setup.py Makefile perwatt/train/_sweep.c
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[engine,server,train,dev]"
	touch $@

setup: $(VENV)/.installed

bench: setup
	$(BIN)/perwatt env
	$(BIN)/python benchmarks/main.py --result-dir $(BENCH_DIR)

lint: setup
	$(BIN)/ruff check perwatt tests benchmarks
	$(BIN)/ruff format --check perwatt tests benchmarks

typecheck: setup
	$(BIN)/mypy

# PERWATT_FULL_REFERENCE=1: check every point of all 16 Perseus reference frontiers, not a sample.
# PERWATT_REQUIRE_COMPILED=1: fail if the compiled frontier sweep (setup.py) was not built.
test: setup lint typecheck
	PERWATT_FULL_REFERENCE=1 PERWATT_REQUIRE_COMPILED=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache $(BENCH_DIR)
