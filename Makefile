# Two commands on a fresh machine: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: install lock run test lint bench ui ui-check chromium clean

LOCK   := requirements.lock
# The lock pins the whole dependency set (every extra) for CPython 3.11 on x86_64 Linux; pip installs exactly it.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check --constraint $(LOCK)

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[dev]'
	touch $(STAMP)

lock: install  ## re-resolve requirements.lock from pyproject.toml (then commit both)
	$(BIN)/uv pip compile pyproject.toml --all-extras --upgrade --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" --output-file $(LOCK)

install: $(STAMP)

run: install  ## train, evaluate and register the default ensemble (SQLite MLflow store in ./mlflow.db)
	$(BIN)/ensemble train $(ARGS)

test: install  ## lint + the whole test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check ensemble tasks flows tests benchmarks

bench: install  ## performance scripts (about 40 min in all on 2 cores): each prints ratios against its baseline
	for script in benchmarks/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

ui: install
	$(BIN)/ensemble ui

chromium:  ## headless Chromium from the Debian packages, for the MLflow UI check (tests/pipeline/test_mlflow_ui.py)
	command -v chromium >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

ui-check: install chromium  ## the MLflow UI in a real browser: run names and grouped metric sections (a tiny run)
	$(BIN)/python scripts/check_mlflow_ui.py --train

clean:
	rm -rf $(VENV) mlflow.db mlartifacts outputs .pytest_cache
