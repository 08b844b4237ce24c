# The README's two commands: `make demo` and `make test`. Each sets up what it
# needs first (a virtualenv, the package, PgBouncer when missing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-latest-pool lint type check bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

setup: $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@.ci/ensure-servers $(BIN)/python

demo: setup
	$(BIN)/python -m example_project

test: setup
	$(BIN)/python -m pytest

test-latest-pool: setup
	$(BIN)/python -m pip install --quiet "tox>=4"
	$(BIN)/tox -e psycopg-pool-latest

lint: setup
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check django_readonly_pool tests example_project benchmarks

type: setup
	$(BIN)/python -m pip install --quiet "mypy>=1.10" "django-stubs>=5.0"
	$(BIN)/mypy

check: lint type test

bench: setup
	$(BIN)/python -m pip install --quiet -e ".[benchmark]"
	$(BIN)/python -m benchmarks

bench-quick: setup
	$(BIN)/python -m pip install --quiet -e ".[benchmark]"
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
