# Two commands do all set-up on a fresh machine (python3 + pip only):
#   make run   -> creates .venv, installs torch==2.13.0 then segblocks, runs the main job
#   make test  -> same install (with the dev extra), runs the whole test-suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: run test install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/lightning fit -c recipes/pro_scale.yaml

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider
