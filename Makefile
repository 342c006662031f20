# Two commands on a fresh machine: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export TF_CPP_MIN_LOG_LEVEL ?= 2
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: install run test lint bench ui clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

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

clean:
	rm -rf $(VENV) mlflow.db mlartifacts outputs .pytest_cache
