# cratebridge developer entry points. `make setup` is idempotent and fast when
# everything is already in place; `demo` and `test` run it first.
#
#   make setup           run-setup, then .venv-runcrate and the validator cache (tests)
#   make run-setup       system packages, dockerd, .venv, local images: what runs need
#   make runcrate-venv   .venv-runcrate: runcrate and its cwltool, for the reference-tool tests
#   make images          build the local fixture images (nothing is pulled)
#   make client          compile the broker's client (runs use the Python one without it)
#   make fixture-crates  rebuild the committed request crates in fixtures/crates/
#   make demo            run the demo request through the cratebridge CLI
#   make slurm           install and start the test Slurm cluster on localhost (two nodes)
#   make postgres        install and start PostgreSQL for the service tests
#   make test            setup + slurm + postgres, then pytest, then lint
#   make lint            ruff and mypy
#   make bench           the benchmarks (BENCH_ARGS=--skip-intake leaves out the 1 GiB one)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
# shared/ sits beside the repository, here and in CI.
SHARED := $(CURDIR)/../shared
# gcc and libc6-dev: the compiled broker client (`make client`)
APT_PACKAGES := docker.io busybox-static debootstrap nodejs bubblewrap chromium gcc libc6-dev
# Only the tests need these: `cratebridge serve`'s suite runs on PostgreSQL too.
TEST_APT_PACKAGES := postgresql
# The venv is reinstalled when a pyproject changes.
PYPROJECTS := pyproject.toml $(wildcard plugins/*/pyproject.toml)
PLUGINS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
VENV_STAMP := $(VENV)/.cratebridge-setup-stamp
# runcrate pins cwl-utils 0.40, which the main venv's cwltool cannot use: it gets a venv of
# its own, with the last cwltool that accepts 0.40 (`runcrate run` calls a CWL runner).
RUNCRATE_VENV := $(CURDIR)/.venv-runcrate
RUNCRATE_PINS := runcrate==0.6.2 cwltool==3.1.20260315121657
RUNCRATE_STAMP := $(RUNCRATE_VENV)/.cratebridge-setup-stamp
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup run-setup system-packages dockerd slurm postgres venv client runcrate-venv images validator-cache fixture-crates demo test lint bench

setup: run-setup
	@$(MAKE) --no-print-directory runcrate-venv
	@$(MAKE) --no-print-directory validator-cache

# What running needs (the demo): nothing from shared/, which only the tests use.
run-setup:
	@$(MAKE) --no-print-directory system-packages
	@$(MAKE) --no-print-directory dockerd
	@$(MAKE) --no-print-directory venv
	@$(MAKE) --no-print-directory client
	@$(MAKE) --no-print-directory images

system-packages:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
		dpkg -s "$$pkg" 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $$missing; \
	fi

dockerd:
	@scripts/start-dockerd

venv: $(VENV_STAMP)
	@:

$(VENV_STAMP): $(PYPROJECTS)
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q -e '.[test]' $(foreach p,$(PLUGINS),-e '$(p)$(if $(filter plugins/cwl,$(p)),[toil])')
	@touch $@

# The docker a confined engine runs, in C beside client.c (its name carries the source's
# digest; an up-to-date one is left alone).
client: venv
	@$(PY) -m cratebridge.containers.client

runcrate-venv: $(RUNCRATE_STAMP)
	@:

$(RUNCRATE_STAMP): Makefile
	@test -x $(RUNCRATE_VENV)/bin/python || { echo "creating $(RUNCRATE_VENV) with $(PYTHON)"; $(PYTHON) -m venv $(RUNCRATE_VENV); }
	$(RUNCRATE_VENV)/bin/pip install -q $(RUNCRATE_PINS)
	@touch $@

images: dockerd venv
	@$(VENV)/bin/cratebridge images build

validator-cache: venv
	@test -d $(SHARED) || { echo "error: $(SHARED) not found; shared/ must sit beside the repository" >&2; exit 1; }
	@$(PY) $(SHARED)/tools/seed-validator-cache >/dev/null
	@echo "validator cache seeded from $(SHARED)/rocrate-contexts"

fixture-crates: venv
	$(PY) scripts/make-fixture-crates

demo: run-setup
	@rm -rf demo-result.zip
	$(VENV)/bin/cratebridge run fixtures/crates/demo-request.zip --out demo-result.zip
	@echo "result crate: $(CURDIR)/demo-result.zip"

# The scale-out tests (Toil and Snakemake on Slurm) run on a real cluster: this host's node
# (partition debug) and a second node, a host of its own to its jobs (partition twohosts).
slurm:
	@scripts/setup-slurm
	@scripts/start-slurm

# The service tests run on SQLite and on this PostgreSQL (scripts/start-postgresql prints
# the URL they use by default).
postgres:
	@$(MAKE) --no-print-directory system-packages APT_PACKAGES="$(TEST_APT_PACKAGES)"
	@scripts/start-postgresql

# Two workers, one test file each at a time (--dist loadfile keeps a file's module and
# class fixtures, such as the built wheels or a conformance class's runs, on one worker).
# PYTEST_WORKERS=0 runs the suite in this process, one test after another.
PYTEST_WORKERS ?= 2
test: setup slurm postgres
	$(VENV)/bin/pytest -q --durations=25 -n $(PYTEST_WORKERS) --dist loadfile
	@$(MAKE) --no-print-directory lint

# Runs both tools even when the first fails, then fails if either did.
lint: venv
	@status=0; \
	echo "ruff check src plugins tests"; $(VENV)/bin/ruff check src plugins tests || status=1; \
	echo "mypy (strict: core and plugins)"; $(VENV)/bin/mypy || status=1; \
	exit $$status

BENCH_ARGS ?=
bench: setup
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)
