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
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@# journald support needs libsystemd headers to build; optional at runtime.
	-$(PY) -m pip install --quiet --disable-pip-version-check -e '.[journald]' 2>/dev/null
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

system-deps:
	scripts/system-deps

test: system-deps $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check dbbackup tests scripts
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
