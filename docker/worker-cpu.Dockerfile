# Slim CPU image for the pipeline controller and the load/score/publish steps: no torch, no vLLM.
ARG PYTHON_BASE_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_BASE_IMAGE}

ARG CLEARML_VERSION=2.1.12
ARG CLEARML_AGENT_VERSION=3.0.3

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL=1 \
    CLEARML_AGENT_SKIP_PIP_VENV_INSTALL=/usr/local/bin/python

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN pip install --no-cache-dir "clearml==${CLEARML_VERSION}" "clearml-agent==${CLEARML_AGENT_VERSION}"

# The interpreter clearml-agent's container bootstrap runs (it then searches no PATH).
ENV LOCAL_PYTHON=/usr/local/bin/python

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
# Dependencies first: a change of the code below rebuilds in seconds.
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[hf]"
COPY components ./components
COPY pipelines ./pipelines
COPY conf ./conf
COPY data ./data
COPY docker/versions.env ./docker/versions.env
RUN pip install --no-cache-dir --no-deps -e .

# clearml-agent's bootstrap runs `pip install` twice in every container (both install
# nothing: docs/deploy.md); each then checks every installed package's requirements for
# conflicts, about 1 s here. pip sets a store_false option's variable as the value itself:
# "false" turns the check off (`--no-warn-conflicts`). Set last, so the builds above still
# warn.
ENV PIP_NO_WARN_CONFLICTS=false
