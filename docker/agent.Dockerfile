# The agents themselves (compose services agent-services, agent-cpu, agent-gpu): clearml-agent
# plus the Docker CLI, so an agent can start each step in a worker image beside itself.
ARG DOCKER_CLI_IMAGE=docker:27.5-cli
ARG PYTHON_BASE_IMAGE=python:3.11-slim-bookworm
FROM ${DOCKER_CLI_IMAGE} AS docker-cli

FROM ${PYTHON_BASE_IMAGE}
ARG CLEARML_AGENT_VERSION=3.0.3
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=docker-cli /usr/local/bin/docker /usr/local/bin/docker
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "clearml-agent==${CLEARML_AGENT_VERSION}"
