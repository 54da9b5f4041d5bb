# The two commands of the README: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: install browser postgres demo test test-quick lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Run the whole factory on the embedded default (synthetic data, tiny models, CPU).
demo: install
	$(VENV)/bin/lfactory run configs/tiny.yaml

## Debian chromium for the Prefect UI screenshot test (installed when root and missing;
## without it that one test is skipped with its reason).
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium could not be installed; the UI screenshot test will be skipped"

## Debian PostgreSQL for the Prefect-on-PostgreSQL test (installed when root and missing;
## without it that test is skipped with its reason). Debian keeps initdb off PATH.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		[ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql \
			>/dev/null) || \
		echo "postgresql could not be installed; the PostgreSQL test will be skipped"

## Lint, then the full test suite (slow tests included; about 8 minutes on 2 idle cores).
test: install browser postgres
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
