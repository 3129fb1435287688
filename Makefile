# The two commands of the Quickstart: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= development.ini

.PHONY: run test lint bench bench-quick clean

run: $(VENV)/.installed  ## start a worker on development.ini (no server needed)
	$(BIN)/host celeryd --config $(CONFIG)

# One pytest-xdist process per core, a test module per process at a time (its worker
# subprocesses and fixtures stay together); tests that stop a broker own theirs.
test: $(VENV)/.installed-test  ## install what the tests need and run the whole suite
	$(BIN)/python -m pytest -n auto --dist loadfile $(PYTEST_ARGS)

lint: $(VENV)/.installed-lint  ## ruff (lint and format), mypy, and the layers (import-linter)
	$(BIN)/ruff check core plugins example_ext tests bench
	$(BIN)/ruff format --check core plugins example_ext tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

bench: $(VENV)/.installed-bench  ## the host against plain Celery, kombu and CKAN's discovery; writes bench/RESULTS.md
	$(BIN)/python -m bench

bench-quick: $(VENV)/.installed-bench  ## every benchmark row with small workloads, in under two minutes
	$(BIN)/python -m bench --quick

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The framework and example_ext are installed editable, each as its own distribution,
# so their entry points come from real *.dist-info folders.
$(VENV)/.installed: $(BIN)/python setup.py example_ext/setup.py
	$(BIN)/python -m pip install -q -e . -e ./example_ext
	touch $@

# The suite runs bench-quick's command once, at --smoke size (tests/test_bench.py): its packages come
# with the test ones;
# and `host new-extension` once (tests/test_scaffold.py): the scaffold extra.
$(VENV)/.installed-test: $(VENV)/.installed setup.py
	$(BIN)/python -m pip install -q -e '.[test,redis,bench,scaffold]'
	touch $@ $(VENV)/.installed-bench

$(VENV)/.installed-bench: $(VENV)/.installed setup.py
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $@

$(VENV)/.installed-lint: $(VENV)/.installed setup.py
	$(BIN)/python -m pip install -q -e '.[lint]'
	touch $@

clean:
	rm -rf $(VENV) data .pytest_cache build *.egg-info example_ext/*.egg-info
