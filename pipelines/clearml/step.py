"""The function ClearML turns into every step's script (one standalone script per step).

ClearML copies only this function's source and this module's imports into the script an
agent runs: the body hands over to pipelines.clearml.agent, whose import (copied above the
script's Task.init) applies the SDK settings. No ``from __future__`` here: the copied
imports are wrapped in try blocks, where it would be a syntax error.
"""

from pipelines.clearml import agent  # noqa: F401  (imported for its SDK settings)


def run_step(spec: str, config: str, run: str, **parents: str) -> str:
    from pipelines.clearml.agent import run_on_agent

    return run_on_agent(spec, config, run, parents)
