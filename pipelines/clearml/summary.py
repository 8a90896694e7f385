"""A ClearML sweep's summary pipeline: what the services agent runs for `sweep <name>`.

    python -m pipelines.clearml.summary      (started by clearml-agent, never by hand)

Its controller waits for every pipeline of the sweep here, on the services queue (which runs
controllers side by side), then starts one CPU step, ``leaderboard`` (pipelines/dag.py).
"""

from __future__ import annotations

import sys

from pipelines.clearml.controller import (
    attach,
    attached_config,
    build_controller,
    fail,
    run_pipeline,
)
from pipelines.clearml.failures import RetryPolicy
from pipelines.clearml.runs import wait_for
from pipelines.config import ConfigError
from pipelines.dag import summary_steps


def main() -> int:
    task = attach()
    if task is None:
        return 2
    try:
        cfg = attached_config(task)
        poll = float(cfg["clearml"]["poll_s"])
        runs = cfg["runs"]
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        return fail(task, f"config: {exc!r}")
    print(f"waiting for {len(runs)} pipelines", flush=True)
    for run in runs:
        run["status"] = wait_for(run["id"], poll)
        print(f"{run['model']} x {run['dataset']}: {run['status']}", flush=True)
    policy = RetryPolicy(int(cfg["clearml"]["retry_on_failure"]))
    try:
        pipe = build_controller(
            cfg, task.name, summary_steps(), policy, experiment=f"sweep-{cfg['name']}"
        )
    except ConfigError as exc:
        return fail(task, f"config: {exc}")
    return run_pipeline(task, pipe, policy)


if __name__ == "__main__":
    sys.exit(main())
