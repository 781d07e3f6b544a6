# Two commands: `make run` (the whole benchmark on config/config.yaml) and `make test`.
# Both create .venv with the pinned dependencies on first use (needs only Python 3.11).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
# A config file to lay over config/config.yaml (e.g. `make run CONFIG=config/ci.yaml`: the tiny CI run).
CONFIG ?=

.PHONY: run test bench install reference reference-default reseeding estimate

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or: make PYTHON=/path/to/python3.11 ...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) all_tables $(if $(CONFIG),--configfile $(CONFIG))

# Two pytest workers (pytest-xdist): the workflow tests spend much of their time waiting (SLURM's polling,
# process starts), so two share the 2 cores well.  TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# BENCH_ARGS: more arguments for the benchmark scripts of `bench` and `estimate`; `BENCH_ARGS=--quick` makes
# each a tiny run that only checks it works (tests/test_readme.py runs `make bench` so, and `make estimate`
# with `BENCH_ARGS="--quick --methods patchcore,mkd"`).
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_patchcore.py --out results/benchmarks/patchcore_fit.json $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_fod_step.py --out results/benchmarks/fod_step.json $(BENCH_ARGS)

# The exact gate's golden files (README: "The CI gate"), each from a fresh pinned run in build/.
# `make reference`: the CI config -> results/reference/ci (what `make test` compares with; ~3 min).
# `make reference-default`: the default config -> results/reference/default (what `make run` compares
# with; as long as `make run`).  Commit the result only for an intended change of the numbers, saying why:
# its diff is the review.
reference: $(STAMP)
	rm -rf build/reference
	$(BIN)/snakemake -d build/reference --cores $(CORES) all_tables --configfile $(CURDIR)/config/ci.yaml
	$(BIN)/python -m adbench.operations.golden write --results build/reference/results --reference results/reference/ci --config config/ci.yaml

reference-default: $(STAMP)
	rm -rf build/reference-default
	$(BIN)/snakemake -d build/reference-default --cores $(CORES) all_tables
	$(BIN)/python -m adbench.operations.golden write --results build/reference-default/results --reference results/reference/default

# The reseeding check's seed spreads (results/reference/reseeding_ci.csv): the CI config with seeds 0-4.
# `make reseeding METHODS="patchsvdd"` re-measures only the methods whose behaviour changed (their rows
# are replaced, every other row is kept).
METHODS ?=
reseeding: $(STAMP)
	$(BIN)/python -m adbench.operations.reseeding measure --work build/reseeding --out results/reference/reseeding_ci.csv $(if $(METHODS),--methods $(METHODS))

# What config/paper.yaml costs (CPU and, when measured there, GPU hours; disk), from bench_devices.py's
# per-epoch times at the paper's network sizes.  The CPU measurement is made once (a few minutes); put a
# GPU one at results/benchmarks/devices_cuda.json (README: "What the paper profile costs").
CPU_BENCH := results/benchmarks/devices_cpu.json
GPU_BENCH := results/benchmarks/devices_cuda.json
estimate: $(STAMP)
	test -f $(CPU_BENCH) || $(BIN)/python benchmarks/bench_devices.py --device cpu --budget paper --epochs 2 --n-train 4 --n-test 4 --out $(CPU_BENCH) $(BENCH_ARGS)
	$(BIN)/python -m adbench.operations.estimate --config config/paper.yaml --benchmark cpu=$(CPU_BENCH) $(if $(wildcard $(GPU_BENCH)),--benchmark cuda=$(GPU_BENCH)) --out results/benchmarks/estimate_paper.json
