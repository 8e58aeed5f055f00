# dbbackup developer entry points. `make demo` and `make test` need nothing
# but Debian 12 with python3 and the PostgreSQL 15 server binaries.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all venv demo test test-unit lint system-deps bench clean

all: lint test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# The journald extra builds against libsystemd-dev (scripts/system-deps installs it).
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,journald]'
	touch $@

venv: $(STAMP)

demo:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	$(PY) scripts/demo.py

system-deps:
	scripts/system-deps

test: system-deps
	$(MAKE) $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-only: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check dbbackup tests scripts
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
