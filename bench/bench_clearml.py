"""Where the time of a small ClearML pipeline goes, on the local server with agents.

    make bench-clearml        # writes bench/results/clearml_pipeline.json

Runs `make enqueue QUEUE=gpu ARGS="dataset.limit=4 ..."` (the README's command) against a
real ClearML server (../shared/tools/clearml-server, moto's S3 server as MinIO), once with
agents in docker mode as users run them (`make agent`: every step in its own container of
the images `make docker-build` made on ../shared/tools/docker-local's stand-ins) and once in
venv mode (the steps in this environment, for comparison), and splits each step's time into
queue wait (created -> started by an agent), start (the agent's setup, the container, Python
and imports until the step's own code runs), work (the step's code) and finish (its outputs
reported, the task closed).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.atomic import write_json_atomic  # noqa: E402
from pipelines.dag import pipeline_steps  # noqa: E402
from tests.clearml_stack import BUCKET, Stack, server_home, why_not_available  # noqa: E402
from tests.conftest import make, s3_client  # noqa: E402
from tests.docker_stack import build_images, setup_docker, why_docker_unavailable  # noqa: E402

OUT = ROOT / "bench" / "results" / "clearml_pipeline.json"
STEPS = tuple(spec.name for spec in pipeline_steps())


def seconds(later: str | None, earlier: str | None) -> float | None:
    if not later or not earlier:
        return None
    parse = dt.datetime.fromisoformat
    return round((parse(later) - parse(earlier)).total_seconds(), 2)


def breakdown(api, pipeline_id: str) -> dict:
    controller = api.task(pipeline_id)
    steps = api.children(pipeline_id)
    rows = {}
    for name in STEPS:
        task = steps[name]
        ran = json.loads(task["hyperparams"]["return"]["outputs"]["value"])["ran"]
        rows[name] = {
            "queue_wait_s": seconds(task["started"], task["created"]),
            "start_s": seconds(ran["started_at"], task["started"]),
            "work_s": seconds(ran["finished_at"], ran["started_at"]),
            "finish_s": seconds(task["completed"], ran["finished_at"]),
            "total_s": seconds(task["completed"], task["created"]),
        }
    first = min(steps[n]["created"] for n in STEPS)
    return {
        "end_to_end_s": seconds(controller["completed"], controller["created"]),
        "controller_start_s": seconds(first, controller["created"]),
        "controller_finish_s": seconds(controller["completed"], steps["publish"]["completed"]),
        "steps": rows,
    }


def measure(stack: Stack, endpoint: str, mode: str, runs: int = 3) -> dict:
    """``runs`` pipelines one after another on one agent per queue; the first imports cold.
    ``mode``: docker (`make agent`), bare (`clearml-agent daemon --queue Q --docker` with
    the example conf alone) or venv."""
    for queue in ("services", "cpu", "gpu"):
        if mode == "bare":
            stack.start_bare_agent(queue, queue, services=queue == "services")
        else:
            stack.start_agent(queue, queue, services=queue == "services", docker=mode == "docker")
    api = stack.api()
    measured = []
    try:
        for _ in range(runs):
            started = time.monotonic()
            proc = make(
                "enqueue",
                "QUEUE=gpu",
                f"ARGS=dataset.limit=4 storage.endpoint={endpoint}",
                base_env=stack.env,
            )
            assert proc.returncode == 0, proc.stderr
            line = next(x for x in proc.stdout.splitlines() if x.startswith("pipeline "))
            pipeline_id = line.split("(", 1)[1].split(")", 1)[0]
            submitted = time.monotonic() - started
            task = api.wait(pipeline_id, 600)
            assert task["status"] == "completed", task.get("status_message")
            measured.append({"make_enqueue_s": round(submitted, 2), **breakdown(api, pipeline_id)})
            print(json.dumps(measured[-1], indent=2), flush=True)
    finally:
        stack.stop_agents()
    return {
        "runs": measured,
        "median_end_to_end_s": sorted(r["end_to_end_s"] for r in measured)[len(measured) // 2],
    }


def main() -> int:
    from moto.server import ThreadedMotoServer

    reason = why_not_available()
    if reason:
        print(f"skipped: {reason}")
        return 0
    docker_reason = why_docker_unavailable()
    if not docker_reason:
        print(f"make docker-build: {build_images(setup_docker()):.0f} s", flush=True)
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    stack = Stack(server_home(), Path(tempfile.mkdtemp()), endpoint).start()
    modes = {}
    try:
        for mode in ("docker", "bare"):
            skipped = {"skipped": docker_reason} if docker_reason else None
            modes[mode] = skipped or measure(stack, endpoint, mode)
        modes["venv"] = measure(stack, endpoint, "venv")
    finally:
        stack.stop()
        s3.stop()
    result = {
        "what": "make enqueue QUEUE=gpu ARGS='dataset.limit=4', SmolLM2-135M, the local "
        "clearml-server 2.0.0 code with one agent per queue polling every second, "
        "moto S3; docker: `make agent` (every step in its container, the gpu queue served on "
        "the CPU by the CUDA image); bare: `clearml-agent daemon --queue Q --docker --cpu-only` "
        "(services: --services-mode) with docker/clearml.conf.example alone; venv: the steps "
        "in this environment",
        "measured": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, no GPU; the gpu queue served on the CPU",
        "target_end_to_end_s": 60,
        **modes,
    }
    write_json_atomic(OUT, result)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
