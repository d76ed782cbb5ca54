# One environment (.venv/) serves every target; `make install` builds it once (stamp file).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PROJECTS := $(sort $(notdir $(patsubst %/__main__.py,%,$(wildcard projects/*/__main__.py))))
# `make train-rams-trans` and `make train-rams_trans` both name projects/rams_trans.
project = $(subst -,_,$*)
CONFIG  ?= toy.yaml
ARGS    ?=
BENCH   ?=
PYTEST_ARGS ?=

export PYTHONUNBUFFERED := 1
export WANDB_SILENT := true

.PHONY: help install train test test-slow coverage bench bench-pipeline bench-gpu lint clean claims pretrain

help: ## List the targets
	@grep -hE '^[a-zA-Z_%-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'
	@echo "  train-<project>    Train one project: $(or $(subst _,-,$(PROJECTS)),none yet)"
	@echo "                     CONFIG=<yaml under its configs/, default toy.yaml>  ARGS=<CLI overrides>"

install: $(STAMP) ## Create .venv/ and install the project (editable) with its pinned dependencies

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

train: $(STAMP) ## Train every project on its toy default, then print and save a summary table
	@if [ -z "$(PROJECTS)" ]; then echo "make train: no project exists yet under projects/ (nothing to train)."; \
	else set -e; for p in $(PROJECTS); do \
	  echo "=== $$p: $(PY) -m projects.$$p fit --config projects/$$p/configs/toy.yaml --overwrite true $(ARGS)"; \
	  $(PY) -m projects.$$p fit --config projects/$$p/configs/toy.yaml --overwrite true $(ARGS); done; \
	  $(PY) -m shared.summary --projects $(PROJECTS); fi

# the name and the config are checked before anything is installed
train-%:
	@test -f projects/$(project)/__main__.py || { echo "no project projects/$(project) (have: $(PROJECTS))"; exit 2; }
	@test -f projects/$(project)/configs/$(CONFIG) || \
	  { echo "no config projects/$(project)/configs/$(CONFIG) (have: $$(ls projects/$(project)/configs))"; exit 2; }
	@$(MAKE) --no-print-directory $(STAMP)
	$(PY) -m projects.$(project) fit --config projects/$(project)/configs/$(CONFIG) --overwrite true $(ARGS)

test: $(STAMP) ## Run the test suite (fast tests; `slow` ones excluded)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

coverage: $(STAMP) ## Line coverage of shared/ and projects/ by the fast suite (subprocesses included); logs/coverage/
	$(PY) -m coverage erase
	$(PY) -m coverage run -m pytest -m "not slow" -p no:xdist $(PYTEST_ARGS)
	$(PY) -m coverage combine -q
	$(PY) -m coverage report | tail -n 1
	$(PY) -m coverage json -q -o logs/coverage/coverage.json

test-slow: $(STAMP) ## Run only the slow tests (longer training runs)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: $(STAMP) ## Time each method against its baseline, then each loader against its step (BENCH=<filter>, e.g. pipeline); logs/bench.json
	$(PY) -m shared.bench $(BENCH)

bench-pipeline: $(STAMP) ## Only the input-pipeline rows: training loader images/s (a worker a core) vs step images/s; logs/bench_pipeline.json
	$(PY) -m shared.bench.pipeline $(BENCH)

bench-gpu: $(STAMP) ## Paper-size rows of the 4 projects on one CUDA GPU, fp32 + bf16, then 3 loaders vs those steps, then the speed switches (bf16), < 8 min (BENCH=<filter>); logs/bench_gpu.json
	$(PY) -m shared.bench.gpu --bf16 --switches $(BENCH)

claims: $(STAMP) ## Render CLAIMS.md + plots from the committed study results (FULL=1 re-runs the studies: hours)
	$(PY) -m shared.claims $(if $(FULL),--full,)

pretrain: $(STAMP) ## Re-run the toy world's pretraining tier (about 35 min on one core; resumable)
	$(PY) -m shared.pretrain $(ARGS)

lint: $(STAMP) ## Lint with ruff
	$(VENV)/bin/ruff check shared projects tests

clean: ## Remove logs, caches and the toy datasets (keeps .venv/)
	rm -rf logs data .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
