# Two entry points: `make book` (execute every lab, build the HTML book) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= $(or $(LLMLAB_PROFILE),cpu)
# Each profile keeps its own artifacts, results and execution cache; cpu builds into _build/.
BOOK_OUT := $(if $(filter cpu,$(PROFILE)),.,_build/profiles/$(PROFILE))
export LLMLAB_BUILD_DIR := $(CURDIR)/$(BOOK_OUT)/_build
export LLMLAB_PROFILE := $(PROFILE)
# Tools write into $HOME by default: tools/env.sh keeps their state in the build dir.
ENV := . $(CURDIR)/tools/env.sh &&

.PHONY: install book test lint unit notebooks lab clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e .
	touch $@

book: install
	$(ENV) $(BIN)/jupyter-book build -W -n --keep-going --path-output $(BOOK_OUT) .
	@echo "book: $(LLMLAB_BUILD_DIR)/html/index.html"

test: install
	$(MAKE) PROFILE=smoke lint unit notebooks book

lint: install
	$(BIN)/ruff check llmlab tests labs
	$(BIN)/ruff format --check llmlab tests labs

unit: install
	$(ENV) $(BIN)/python -m pytest tests -q

notebooks: install
	$(ENV) $(BIN)/python -m pytest --nbval-lax labs -q -p no:cacheprovider

lab: install
	$(ENV) $(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR)/labs

clean:
	rm -rf _build runs
