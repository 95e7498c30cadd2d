# Two entry points: `make book` (execute every lab, build the HTML book) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
BUILD := $(CURDIR)/_build
PROFILE ?= $(or $(LLMLAB_PROFILE),cpu)
# Tools write into $HOME by default: tools/env.sh keeps their state in the build dir.
ENV := . $(CURDIR)/tools/env.sh &&
SHELL := /bin/bash


.PHONY: install book test lint lab clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e .
	touch $@

book: install
	$(ENV) LLMLAB_PROFILE=$(PROFILE) $(BIN)/jupyter-book build -W -n --keep-going .
	@echo "book: $(BUILD)/html/index.html"

lint: install
	$(BIN)/ruff check llmlab tests labs
	$(BIN)/ruff format --check llmlab tests labs

test: install lint
	$(ENV) LLMLAB_PROFILE=smoke $(BIN)/python -m pytest tests -q
	$(ENV) LLMLAB_PROFILE=smoke $(BIN)/python -m pytest --nbval-lax labs -q -p no:cacheprovider
	$(MAKE) book PROFILE=smoke

lab: install
	$(ENV) $(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR)/labs

clean:
	rm -rf _build runs
