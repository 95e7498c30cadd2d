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

.PHONY: install book test smoke lint unit executed notebooks pipeline-e2e site browser redis lab gpu-check clean

# What `make test` (and so CI) runs, in order: the README's `make book` on the default profile is
# one of them, and the tests read the notebooks it executed (each lab runs once).
TEST_STAGES := lint unit book executed site pipeline-e2e

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
# The widget manager's script sits next to the lab pages (labs/); the icon fonts it loads for a
# widget's icons are requested from labs/@jupyter-widgets/ itself, so they are copied there too.
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
	cp $(addprefix $(WIDGET_MANAGER)/*.,woff woff2 ttf eot svg) $(SITE_ASSETS)/labs/@jupyter-widgets/
	touch $@

book: install redis $(ASSETS_FETCHED)
	bash tools/book_cache.sh $(LLMLAB_BUILD_DIR)/.jupyter_cache
	$(ENV) $(BIN)/jupyter-book build -W -n --keep-going --path-output $(BOOK_OUT) .
	@echo "book: $(LLMLAB_BUILD_DIR)/html/index.html"

test: install
	@bash tools/stages.sh $(TEST_STAGES)

# Quick local iteration: lint, unit tests and every lab under the smoke profile (nbval).
smoke: install
	@bash tools/stages.sh lint unit
	$(MAKE) PROFILE=smoke notebooks

lint: install
	$(BIN)/ruff check llmlab tests labs
	$(BIN)/ruff format --check llmlab tests labs

unit: install redis
	$(ENV) $(BIN)/python -m pytest tests -q --ignore=tests/site --ignore=tests/book

# The labs as `make book` executed them: no errors, claims passed on this profile, time budget.
executed: install
	$(ENV) $(BIN)/python -m pytest tests/book -q -s -p no:cacheprovider

# The DVC pipeline (dvc.yaml) end to end on the smoke profile in a workspace of its own:
# `llmlab pipeline` makes the workspace and runs `dvc repro`; the test then reruns it (every
# stage cached) and fails the quality gate on purpose (the champion keeps serving).
E2E_DIR := $(CURDIR)/_build/pipeline-e2e
pipeline-e2e: install
	rm -rf $(E2E_DIR)
	export LLMLAB_BUILD_DIR=$(E2E_DIR)/_build LLMLAB_PROFILE=smoke && $(ENV) \
	  $(BIN)/llmlab pipeline --profile smoke --workspace $(E2E_DIR)/workspace && \
	  LLMLAB_PIPELINE_WORKSPACE=$(E2E_DIR)/workspace $(BIN)/python -m pytest tests/test_pipeline.py \
	    -q -p no:cacheprovider -k failing_gate

notebooks: install
	$(ENV) $(BIN)/python -m pytest --nbval-lax labs -q -p no:cacheprovider

# The gpu profile's GPU-only paths (bf16, torch.compile, fused AdamW, MFU, 2:4 sparsity, batching
# on CUDA, NCCL), small, on one CUDA GPU: one JSON report; exits non-zero when a claim fails.
gpu-check: install
	$(ENV) $(BIN)/python -m llmlab.gpucheck --out $(LLMLAB_BUILD_DIR)/gpu-check.json

# The built book in headless Chromium (Debian's package; Playwright drives it).
site: install browser
	$(ENV) $(BIN)/python -m pytest tests/site -q -p no:cacheprovider

# Lab 12's cache: Debian's Redis server, started by the lab on loopback (PyPI's redis-server
# wheel is not on every mirror).
redis:
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } || \
	  { echo "install Debian's redis-server package (sudo apt-get install redis-server)"; exit 1; }

browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "install Debian's chromium package (sudo apt-get install chromium)"; exit 1; }

lab: install
	$(ENV) $(BIN)/llmlab lab

clean:
	rm -rf _build runs
