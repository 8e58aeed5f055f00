# dbbackup developer entry points. `make demo` and `make test` need nothing
# but Debian 12 with python3 and the PostgreSQL 15 server binaries.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all venv demo test test-unit lint system-deps bench clean deb rpm selinux packages

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

bench: $(STAMP)
	$(PY) bench/pg_restore_parallel.py
	$(PY) bench/mysql_vs_mydumper.py
	$(PY) bench/metrics_1000_sets.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache

# --- distribution packages (docs/install.md) ---------------------------------
# Both are built from a copy of the working tree under build/pkg and land in
# dist/. `make packages` also builds the SELinux module and runs lintian and
# rpmlint.

VERSION = $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' dbbackup/__init__.py)
PKG_SOURCES := pyproject.toml README.md CHANGELOG.md dbbackup docs man packaging selinux systemd
PKG_EXCLUDES := --exclude=__pycache__ --exclude='*.pyc' --exclude=selinux/tmp --exclude='*.pp' \
	--exclude='*.pp.bz2' --exclude=dbbackup.egg-info
PKG_BUILD := build/pkg
DIST := dist
DEB_TREE = $(PKG_BUILD)/deb/dbbackup-$(VERSION)
RPM_TOP = $(CURDIR)/$(PKG_BUILD)/rpm
# Packages are built with the distribution's python3 and its modules: a
# python3 from pyenv or an activated venv earlier in PATH must not leak in.
SYSTEM_PATH := PATH=/usr/sbin:/usr/bin:/sbin:/bin
# Extra rpmbuild options, e.g. RPMBUILD_ARGS="--define 'python3_pkgversion 3.11'".
RPMBUILD_ARGS ?=
# Debian's rpm lacks Fedora's macros and cannot see Debian's packages as
# build dependencies; elsewhere the real macros and dependency checks apply.
RPM_COMPAT = $(if $(shell rpm --eval '%{?pyproject_wheel:yes}' 2>/dev/null),,--nodeps \
	--load=$(CURDIR)/packaging/rpm/macros.compat --define '_dbbackup_compat_dir $(CURDIR)/packaging/rpm')

deb:
	rm -rf $(PKG_BUILD)/deb
	mkdir -p $(DEB_TREE) $(DIST)
	tar -cf - $(PKG_EXCLUDES) $(PKG_SOURCES) | tar -xf - -C $(DEB_TREE)
	cp -r packaging/debian $(DEB_TREE)/debian
	cd $(DEB_TREE) && $(SYSTEM_PATH) dpkg-buildpackage -b -us -uc
	cp $(PKG_BUILD)/deb/dbbackup_$(VERSION)_all.deb $(DIST)/

rpm:
	rm -rf $(PKG_BUILD)/rpm
	mkdir -p $(RPM_TOP)/SOURCES $(DIST)
	tar -czf $(RPM_TOP)/SOURCES/dbbackup-$(VERSION).tar.gz $(PKG_EXCLUDES) \
		--transform 's,^,dbbackup-$(VERSION)/,' $(PKG_SOURCES)
	cp systemd/sysusers.d/dbbackup.conf $(RPM_TOP)/SOURCES/dbbackup.sysusers
	$(SYSTEM_PATH) rpmbuild -ba --define '_topdir $(RPM_TOP)' $(RPM_COMPAT) $(RPMBUILD_ARGS) packaging/rpm/dbbackup.spec
	cp $(RPM_TOP)/RPMS/noarch/*.rpm $(RPM_TOP)/SRPMS/*.src.rpm $(DIST)/

selinux:
	$(MAKE) -C selinux

packages: deb rpm selinux
	lintian --fail-on error,warning $(DIST)/dbbackup_$(VERSION)_all.deb
	rpmlint -c packaging/rpm/rpmlint.toml $(DIST)/dbbackup-*$(VERSION)-*.rpm
