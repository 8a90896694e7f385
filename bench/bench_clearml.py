"""Where the time of a small ClearML pipeline goes, on the local server with agents.

    make bench-clearml        # writes bench/results/clearml_pipeline.json

Runs `make enqueue QUEUE=gpu ARGS="dataset.limit=4 ..."` (the README's command) against a
real ClearML server (../shared/tools/clearml-server; agents in venv mode on this machine,
moto's S3 server as MinIO) and splits each step's time into queue wait (created ->
started by an agent), start (the agent's setup, Python and imports until the step's own
code runs), work (the step's code) and finish (its outputs reported, the task closed).
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

from components.artifacts import write_json_atomic  # noqa: E402
from pipelines.dag import pipeline_steps  # noqa: E402
from tests.clearml_stack import BUCKET, Stack, server_home, why_not_available  # noqa: E402
from tests.conftest import make, s3_client  # noqa: E402

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


def main() -> int:
    from moto.server import ThreadedMotoServer

    reason = why_not_available()
    if reason:
        print(f"skipped: {reason}")
        return 0
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    stack = Stack(server_home(), Path(tempfile.mkdtemp()), endpoint).start()
    try:
        stack.start_agent("services", "services", services=True)
        stack.start_agent("cpu", "cpu")
        stack.start_agent("gpu", "gpu")
        api = stack.api()
        runs = []
        for _ in range(3):  # the first converts nothing (the model cache is warm) but imports cold
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
            runs.append({"make_enqueue_s": round(submitted, 2), **breakdown(api, pipeline_id)})
            print(json.dumps(runs[-1], indent=2), flush=True)
    finally:
        stack.stop()
        s3.stop()
    result = {
        "what": "make enqueue QUEUE=gpu ARGS='dataset.limit=4', SmolLM2-135M, the local "
        "clearml-server 2.0.0 code with one agent per queue in venv mode, "
        "CLEARML_AGENT_QUEUE_POLL_FREQ_SEC=1, moto S3",
        "measured": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, no GPU; the gpu queue served on the CPU",
        "target_end_to_end_s": 60,
        "runs": runs,
        "median_end_to_end_s": sorted(r["end_to_end_s"] for r in runs)[len(runs) // 2],
    }
    write_json_atomic(OUT, result)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
