# Two commands do everything on a fresh machine:
#   make repro   virtualenv + pinned dependencies, then `dvc repro` (the whole pipeline)
#   make test    the same + the test tools (requirements-dev.txt), then the whole test suite
# `make` alone lists every target with its `## ` line (make help); add one to each new target.
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev

.PHONY: help venv repro test test-quick chromium lint bench bench-scale bench-train bench-serve gpu-check exp-gpu sweep serve ui mlflow-server retrain clean-venv

# The `## text` after each target is its line in `make help`.
help: ## list the targets with one line each (the default goal)
	@echo "usage: make <target> [ARGS=...]   (ARGS: extra arguments of the command)"
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-zA-Z0-9_.-]+:[^=]*## / {printf "  %-14s %s\n", $$1, $$2}' \
	  $(firstword $(MAKEFILE_LIST))

venv: $(STAMP) ## .venv/ with the pinned runtime (requirements.txt) and this package, editable

# --no-compile: pip would byte-compile all ~20,000 modules (45 s to 105 s); Python compiles
# the few thousand that are imported, once, on first import, and caches them. That cache is
# why PYTHONDONTWRITEBYTECODE (set on some machines and CI images) is unset here: with it,
# every stage recompiles torch, timm and mlflow from source, about 20 s a process.
unexport PYTHONDONTWRITEBYTECODE

# A command-line `make test ARGS=-v` would otherwise reach every recipe's environment, and a
# make run inside a test (test_team's `make retrain`) would take the outer ARGS as its own.
unexport ARGS

# pip -qq prints errors only: its warnings (a machine's pip.conf naming index folders that
# do not exist printed 250 lines here) would bury the pipeline's own output.
PIP := $(BIN)/python -m pip install -qq

$(STAMP): requirements.txt pyproject.toml
	@echo "installing requirements.txt and spinegrade into $(VENV)/"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) --upgrade pip
	@$(PIP) --no-compile -r requirements.txt
	@$(PIP) --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Tests and linters on top (requirements-dev.txt); make repro does not need them.
$(DEV): $(STAMP) requirements-dev.txt
	@echo "installing the test tools (requirements-dev.txt) into $(VENV)/"
	@$(PIP) --no-compile -r requirements-dev.txt
	@touch $(DEV)

repro: $(STAMP) ## .venv/, then the whole pipeline: dvc repro (synthetic data by default)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# pytest-xdist runs the tests in $(JOBS) processes: most of a test's time is Python and
# process start-up, which the two cores share well (3 processes measured slower on 2
# cores). A module's tests run in one process (--dist loadscope), so no module-scoped
# set-up is built twice; the session's tiny pipeline (conftest.tiny_pipeline) is read by
# one module only, tests/test_pipeline.py. The two modules that run whole pipelines start
# first, one per process (conftest.FIRST; --no-loadscope-reorder keeps that order).
JOBS ?= 2
PYTEST := PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n $(JOBS) --dist loadscope \
	--no-loadscope-reorder

test: $(DEV) chromium ## the whole test suite, as CI runs it (needs PostgreSQL and chromium)
	$(PYTEST) $(ARGS)

# The markers (pyproject.toml) say what a test needs beyond the package.
QUICK := not slow and not dvc and not server and not chromium and not postgres and not gpu
test-quick: $(DEV) ## the edit loop: unit-level tests, no server, browser, PostgreSQL or dvc
	$(PYTEST) -m "$(QUICK)" $(ARGS)

# The browser tests drive Debian's chromium (Playwright cannot download its own browsers
# here): installed with apt-get when running as root, else a message saying what to install.
CHROMIUM ?= /usr/bin/chromium
chromium: ## the browser for the browser tests: apt-get as root, else say what to install
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium (apt-get) for the browser tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
	  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	else \
	  echo "error: the browser tests need chromium at $(CHROMIUM): run 'sudo apt-get install chromium'" \
	       "(Debian/Ubuntu), or set CHROMIUM=/path/to/chromium" >&2; exit 1; \
	fi

lint: $(DEV) ## ruff and the layer contract (import-linter)
	$(BIN)/ruff check src stages tests benchmarks
	$(BIN)/lint-imports

bench: $(STAMP) ## convert-dicom against per-file dcmread + PNG, slices/s
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_convert.py

# ARGS="--studies 200" for a shorter run, ARGS="--help" for options.
bench-scale: $(STAMP) ## the data stages at the real dataset's size (1,975 studies, ~23 GB scratch)
	$(BIN)/python benchmarks/bench_scale.py $(ARGS)

bench-train: $(STAMP) ## data loader against training step, images/s per backbone and precision
	$(BIN)/python benchmarks/bench_train.py $(ARGS)

# In a finished `make repro` workspace (ARGS="--workspace DIR" elsewhere, "--help" for options).
bench-serve: $(STAMP) ## spinegrade serve under 1, 4, 8 clients against predict's batch rate
	$(BIN)/python benchmarks/bench_serve.py $(ARGS)

# Exit 1 on a non-finite loss (ARGS="--device cpu" runs it on the CPU, ARGS="--help").
gpu-check: $(STAMP) ## one-minute GPU smoke run: one fold, one epoch per backbone and precision
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

# More `dvc exp run` arguments in ARGS, e.g. ARGS="-S engine.nproc_per_node=4".
exp-gpu: $(STAMP) ## the GPU preset (presets/gpu-rsna.yaml) as one DVC experiment
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m spinegrade.cli.preset presets/gpu-rsna.yaml -- $(ARGS)

# One DVC experiment per value, queued and run one after another, then `dvc exp show`;
# several params: ARGS="-S 'a=1,2' -S 'b=x,y'" (docs/pipeline.md#sweeps).
sweep: $(STAMP) ## a grid of DVC experiments: SET='key=v1,v2,...' [NAME=prefix] (ARGS=--help)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m spinegrade.cli.sweep \
	  $(if $(SET),-S '$(SET)') $(if $(NAME),--name '$(NAME)') $(ARGS)

# The model from the workspace's DVC outputs by default; ARGS="--model
# models:/spinegrade-study@champion" serves the registered one (docs/serve.md).
serve: $(STAMP) ## grade studies over HTTP: an upload page and POST /v1/grade (ARGS=--help)
	$(BIN)/spinegrade serve $(ARGS)

# Ctrl-C stops it and all its worker processes.
ui: $(STAMP) ## the MLflow UI on the workspace's store; prints the comparison's link
	$(BIN)/python -m spinegrade.cli.ui

# SQLite + local artifacts by default; PostgreSQL/S3 via ARGS or MLflow's own MLFLOW_*
# variables: make mlflow-server ARGS="--backend-store-uri postgresql://..."
mlflow-server: $(STAMP) ## a team MLflow tracking server (docs/team.md; options: ARGS=--help)
	$(BIN)/python -m spinegrade.cli.server $(ARGS)

# .github/workflows/retrain.yml runs this: data and run-cache from the default DVC remote.
retrain: $(STAMP) ## what CI runs: dvc pull, dvc repro, dvc push, a summary (ARGS=--help)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m spinegrade.cli.retrain $(ARGS)

clean-venv: ## remove .venv/
	rm -rf $(VENV)
