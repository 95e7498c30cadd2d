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

.PHONY: install book test lint unit notebooks site browser lab clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e .
	touch $@

# MathJax is served with the book (from the npm registry), so math renders offline too.
MATHJAX := _static/mathjax/tex-mml-chtml.js
$(MATHJAX):
	rm -rf _build/npm && mkdir -p _build/npm _static/mathjax
	cd _build/npm && npm pack --silent mathjax@3.2.2 >/dev/null
	tar xzf _build/npm/mathjax-3.2.2.tgz -C _static/mathjax --strip-components=2 \
	  package/es5/tex-mml-chtml.js package/es5/output/chtml package/es5/input/tex/extensions \
	  package/es5/ui package/es5/a11y

book: install $(MATHJAX)
	$(ENV) $(BIN)/jupyter-book build -W -n --keep-going --path-output $(BOOK_OUT) .
	@echo "book: $(LLMLAB_BUILD_DIR)/html/index.html"

test: install
	$(MAKE) PROFILE=smoke lint unit notebooks book site

lint: install
	$(BIN)/ruff check llmlab tests labs
	$(BIN)/ruff format --check llmlab tests labs

unit: install
	$(ENV) $(BIN)/python -m pytest tests -q --ignore=tests/site

notebooks: install
	$(ENV) $(BIN)/python -m pytest --nbval-lax labs -q -p no:cacheprovider

# The built book in headless Chromium (Debian's package; Playwright drives it).
site: install browser
	$(ENV) $(BIN)/python -m pytest tests/site -q -p no:cacheprovider

browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "install Debian's chromium package (sudo apt-get install chromium)"; exit 1; }

lab: install
	$(ENV) $(BIN)/llmlab lab

clean:
	rm -rf _build runs
