# Two commands do all set-up on a fresh machine (python3 + pip only):
#   make run   -> creates .venv, installs torch==2.13.0 then segblocks, runs the main job
#   make test  -> same install (with the dev extra, and Debian's chromium for the demo test), runs the whole test-suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: run test install browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/lightning fit -c recipes/pro_scale.yaml

# tests/test_demo.py drives Debian's chromium headless through Playwright (skipped, with the reason, without it).
browser:
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
		{ SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; } || \
		echo "chromium could not be installed: the headless-browser demo test will be skipped"

test: install browser
	$(BIN)/python -m pytest -q -p no:cacheprovider
