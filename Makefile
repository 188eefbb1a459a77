# piapi-bulk: every tool has one entry point here; .ci/run calls the same targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" -ne 0 ] && command -v sudo)

.PHONY: help install install-redis install-chromium run test test-fast lint bench chaos fleet flower emulator clean

help:  ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) install-redis install-chromium  ## Create the venv and install piapi-bulk (and redis-server, chromium)
	@# Byte-compiled now, once (only what changed since): with PYTHONDONTWRITEBYTECODE set, as
	@# on some CI machines, no process writes them, and every process that run, the tests and
	@# the harnesses start compiled the project from source (0.14 s of CPU each).
	@$(BIN)/python -m compileall -q workers scheduler emulator bench chaos fleet tests >/dev/null

install-redis:  ## Install redis-server with apt-get when it is missing
	@if command -v redis-server >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
		echo "installing redis-server with apt-get"; \
		$(SUDO) apt-get install -y redis-server >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y redis-server; }; \
	else \
		echo "redis-server is missing: install it (e.g. 'brew install redis' or your distribution's package) and re-run"; exit 1; \
	fi

install-chromium:  ## Install chromium (the run page's browser test) with apt-get when it is missing
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium with apt-get"; \
		$(SUDO) apt-get install -y chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y chromium; }; \
	else \
		echo "chromium is missing: the browser test of piapi-bulk web will be skipped (install chromium to run it)"; \
	fi

run: install  ## Offline demo: examples/demo.jsonl through the emulator, Redis, Celery and SQLite
	@bash examples/demo.sh

TEST_WORKERS ?= 4
# Most tests wait on processes, sockets and databases rather than compute, so 4 pytest
# workers on 2 cores run them side by side; each has its own Redis, ports, databases and
# temporary folders. Each worker is given one test at a time (--maxschedchunk 1), longest
# first (tests/conftest.py orders them), so no worker is left with a queue of long
# end-to-end runs while the others idle. TEST_WORKERS=0 runs them in one process.
test: install  ## All tests (SQLite always; PostgreSQL too when one is reachable)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --maxschedchunk 1

test-fast: install  ## The quick check, under a minute: every test that starts no process or service
	$(BIN)/pytest -q -m "not integration"

lint: install  ## ruff and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install  ## Benchmarks, about an hour (JSON in bench/results/; BENCH_ARGS=--quick for a short run)
	$(BIN)/python -m bench $(BENCH_ARGS)

chaos: install  ## Chaos run, under 10 minutes: faults, kills, Redis and PostgreSQL restarts (CHAOS_ARGS=--quick: a few minutes)
	$(BIN)/python -m chaos $(CHAOS_ARGS)

fleet: install  ## Multi-host run on network namespaces (root), under 10 minutes (FLEET_ARGS=--quick: ~4)
	$(BIN)/python -m fleet $(FLEET_ARGS)

flower: install  ## Flower on 127.0.0.1:5555 for the running fleet (FLOWER_BASIC_AUTH=user:pass for auth)
	$(BIN)/piapi-bulk flower --port $${FLOWER_PORT:-5555}

emulator: install  ## The PiAPI emulator on 127.0.0.1:8080 (time scale 0.05)
	$(BIN)/piapi-bulk emulator --port $${EMULATOR_PORT:-8080} --time-scale $${TIME_SCALE:-0.05}

clean:  ## Remove the venv, caches and run artifacts
	rm -rf $(VENV) .run .piapi-bulk .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
