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

# What the book's pages load (MathJax; RequireJS and the widget manager that renders progress
# bars) comes from the npm registry and is served with the book, so pages work offline. It is
# copied as an extra path, not from _static/, where Jupyter Book would load every .js file.
SITE_ASSETS := _build/site-assets
ASSETS_FETCHED := _build/npm/.fetched
# The widget manager loads its icon fonts from @jupyter-widgets/... next to the page: labs/.
WIDGET_MANAGER := $(SITE_ASSETS)/labs/@jupyter-widgets/html-manager/dist
$(ASSETS_FETCHED):
	rm -rf _build/npm $(SITE_ASSETS) && mkdir -p _build/npm $(SITE_ASSETS)/mathjax $(SITE_ASSETS)/widgets
	cd _build/npm && npm pack --silent mathjax@3.2.2 requirejs@2.3.4 \
	  @jupyter-widgets/html-manager@1.0.6 >/dev/null
	tar xzf _build/npm/mathjax-3.2.2.tgz -C $(SITE_ASSETS)/mathjax --strip-components=2 \
	  package/es5/tex-mml-chtml.js package/es5/output/chtml package/es5/input/tex/extensions \
	  package/es5/ui package/es5/a11y
	tar xzf _build/npm/requirejs-2.3.4.tgz -C $(SITE_ASSETS)/widgets --strip-components=1 \
	  package/require.js
	mkdir -p $(WIDGET_MANAGER)
	tar xzf _build/npm/jupyter-widgets-html-manager-1.0.6.tgz -C $(WIDGET_MANAGER) \
	  --strip-components=2 --exclude='*.map' package/dist
	touch $@

book: install $(ASSETS_FETCHED)
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
