# Two commands do everything on a fresh machine:
#   make repro   virtualenv + pinned dependencies, then `dvc repro` (the whole pipeline)
#   make test    the same + the test tools (requirements-dev.txt), then the whole test suite
#   make test-quick  the edit loop: unit-level tests of every package, no server, browser,
#                PostgreSQL or dvc (the markers in pyproject.toml say what a test needs)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev

.PHONY: venv repro test test-quick chromium lint bench bench-scale bench-train gpu-check exp-gpu ui mlflow-server retrain clean-venv

venv: $(STAMP)

# --no-compile: pip would byte-compile all ~20,000 modules (45 s to 105 s); Python compiles
# the few thousand that are imported, once, on first import, and caches them. That cache is
# why PYTHONDONTWRITEBYTECODE (set on some machines and CI images) is unset here: with it,
# every stage recompiles torch, timm and mlflow from source, about 20 s a process.
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Tests and linters on top (requirements-dev.txt); make repro does not need them.
$(DEV): $(STAMP) requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-compile -r requirements-dev.txt
	touch $(DEV)

repro: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# pytest-xdist runs the tests in $(JOBS) processes: most of a test's time is Python and
# process start-up, which the two cores share well. A module's tests run in one process
# (--dist loadscope), so no module-scoped set-up is built twice; the session's tiny
# pipeline (conftest.tiny_pipeline) is read by one module only, tests/test_pipeline.py.
JOBS ?= 2
PYTEST := PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n $(JOBS) --dist loadscope

test: $(DEV) chromium
	$(PYTEST) $(ARGS)

QUICK := not slow and not dvc and not server and not chromium and not postgres and not gpu
test-quick: $(DEV)
	$(PYTEST) -m "$(QUICK)" $(ARGS)

# The browser tests drive Debian's chromium (Playwright cannot download its own browsers
# here): installed with apt-get when running as root, else a message saying what to install.
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium (apt-get) for the browser tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
	  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	else \
	  echo "error: the browser tests need chromium at $(CHROMIUM): run 'sudo apt-get install chromium'" \
	       "(Debian/Ubuntu), or set CHROMIUM=/path/to/chromium" >&2; exit 1; \
	fi

lint: $(DEV)
	$(BIN)/ruff check src stages tests benchmarks
	$(BIN)/lint-imports

bench: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_convert.py

# The data stages at the real dataset's size, 1,975 studies (about 23 GB of scratch space;
# ARGS="--studies 200" for a shorter run, ARGS="--help" for options).
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/bench_scale.py $(ARGS)

# Data loader vs training step, images/s, per backbone and precision (ARGS="--help").
bench-train: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py $(ARGS)

# One fold, one epoch per backbone and precision on the GPU; exit 1 on a non-finite loss
# (ARGS="--device cpu" runs it on the CPU, ARGS="--help" for options).
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

# The GPU preset for the real dataset as one DVC experiment (presets/gpu-rsna.yaml; more
# `dvc exp run` arguments in ARGS, e.g. ARGS="-S engine.nproc_per_node=4").
exp-gpu: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m spinegrade.cli.preset presets/gpu-rsna.yaml -- $(ARGS)

# The MLflow UI on the workspace's store; prints the link to the runs table (Ctrl-C stops it).
ui: $(STAMP)
	$(BIN)/python -m spinegrade.cli.ui

# A team tracking server (SQLite + local artifacts by default; PostgreSQL/S3 via ARGS or env,
# see README "Team set-up"): make mlflow-server ARGS="--backend-store-uri postgresql://..."
mlflow-server: $(STAMP)
	$(BIN)/python -m spinegrade.cli.server $(ARGS)

# What CI runs (.github/workflows/retrain.yml): pull data and run-cache from the default DVC
# remote, dvc repro, push outputs and run-cache, print a summary (ARGS="--help" for options).
retrain: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m spinegrade.cli.retrain $(ARGS)

clean-venv:
	rm -rf $(VENV)
