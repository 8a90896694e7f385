"""What a step's container may be: an edited clone's ``clearml.images`` and
``clearml.docker_args`` run on the agents (`--privileged -v /:/host` would be root on a GPU
host), so they are held to the deployment's allowlist: ``clearml.allowed`` as conf/ in this
image has it, plus what the agent's deployer adds in ``SLM_QA_EVAL_ALLOWED_DOCKER_ARGS``.
The agents' own ``docker_args_filters`` (docker/clearml.conf.example, `make agent`) hold the
same line on their side."""

from __future__ import annotations

import functools
import os
import re
import shlex
from typing import Any

from pipelines.config import ConfigError, compose, to_container

ALLOW_ENV = "SLM_QA_EVAL_ALLOWED_DOCKER_ARGS"  # whitespace-separated regexes, agent side


def docker_arg_items(text: str) -> list[str]:
    """Docker arguments as items: ``-e X`` and ``--env X`` read as ``-e=X``, ``--env=X``."""
    tokens = shlex.split(text or "")
    items: list[str] = []
    while tokens:
        token = tokens.pop(0)
        if token.startswith("-") and "=" not in token and tokens and not tokens[0].startswith("-"):
            token = f"{token}={tokens.pop(0)}"
        items.append(token)
    return items


@functools.cache
def _conf_allowlist() -> dict[str, list[str]]:
    """conf/'s own, composed once per process (a sweep checks every pipeline against it)."""
    return to_container(compose())["clearml"]["allowed"]


def deployment_allowlist() -> dict[str, list[str]]:
    """This deployment's allowlist: its conf/ (never a task's copy) and its agent's additions."""
    allowed = _conf_allowlist()
    extra = os.environ.get(ALLOW_ENV, "").split()
    return {"images": list(allowed["images"]), "docker_args": [*allowed["docker_args"], *extra]}


def check_containers(clearml: dict[str, Any], allowed: dict[str, list[str]]) -> None:
    """Every image and docker argument of ``clearml`` against ``allowed``; the error names the
    key and the item as written."""
    for kind, image in (clearml.get("images") or {}).items():
        if image and not any(str(image).startswith(p) for p in allowed["images"]):
            raise ConfigError(
                f"clearml.images.{kind}: {image!r} is not an image this deployment runs (names "
                f"starting {allowed['images']}); build it with make docker-build, or ask who "
                "runs the agents to add it to clearml.allowed.images"
            )
    for kind, text in (clearml.get("docker_args") or {}).items():
        for item in docker_arg_items(str(text or "")):
            if not any(re.fullmatch(p, item) for p in allowed["docker_args"]):
                raise ConfigError(
                    f"clearml.docker_args.{kind}: {item!r} is not a docker argument steps may "
                    f"ask for (allowed: {allowed['docker_args']}); agents add mounts and "
                    "environment on their side (make agent AGENT_DOCKER_ARGS=...)"
                )
