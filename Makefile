# Two commands: `make run` (the whole benchmark on config/config.yaml) and `make test`.
# Both create .venv with the pinned dependencies on first use (needs only Python 3.11).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: run test bench install reference estimate

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or: make PYTHON=/path/to/python3.11 ...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) all_tables

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_patchcore.py --out results/benchmarks/patchcore_fit.json
	$(BIN)/python benchmarks/bench_fod_step.py --out results/benchmarks/fod_step.json

# Re-measure CI's gate (results/reference/ci.csv): the CI config with 5 seeds, pinned and native kernels.
reference: $(STAMP)
	$(BIN)/python -m adbench.reference --work build/reference --out results/reference/ci.csv

# What config/paper.yaml costs (CPU and, when measured there, GPU hours; disk), from bench_devices.py's
# per-epoch times at the paper's network sizes.  The CPU measurement is made once (a few minutes); put a
# GPU one at results/benchmarks/devices_cuda.json (README: "What the paper profile costs").
CPU_BENCH := results/benchmarks/devices_cpu.json
GPU_BENCH := results/benchmarks/devices_cuda.json
estimate: $(STAMP)
	test -f $(CPU_BENCH) || $(BIN)/python benchmarks/bench_devices.py --device cpu --budget paper --epochs 2 --n-train 4 --n-test 4 --out $(CPU_BENCH)
	$(BIN)/python -m adbench.estimate --config config/paper.yaml --benchmark cpu=$(CPU_BENCH) $(if $(wildcard $(GPU_BENCH)),--benchmark cuda=$(GPU_BENCH)) --out results/benchmarks/estimate_paper.json
