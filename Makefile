# The two commands of the README: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test test-quick lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Run the whole factory on the embedded default (synthetic data, tiny models, CPU).
demo: install
	rm -rf .factory/demo-data && $(VENV)/bin/lfactory data synth .factory/demo-data --tiles 24 --size 128 --seed 0
	$(VENV)/bin/lfactory data check .factory/demo-data

## Lint, then the full test suite (slow tests included; about 15 minutes on 2 cores).
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

## Everything but the slow tests.
test-quick: install
	$(VENV)/bin/pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) -m bench.run_all

clean:
	rm -rf .factory .pytest_cache
