"""The pipeline on ClearML: everything here imports the ClearML SDK, nothing here imports
torch. The step logic is in components/ and pipelines/steps.py, run by pipelines/executor.py.

    submit.py      `make enqueue`: checks, then the controller task, enqueued
    controller.py  what the services agent runs: the DAG of pipelines/dag.py as a PipelineController
    step.py        the function every step's script calls; agent.py: what it does on its agent
    failures.py    transient or permanent: the retry policy
    sweep.py       `make enqueue-sweep` and its summary pipeline
    watch.py       `make watch`: each model published in a project evaluated as it appears
    inputs.py      clearml:// datasets and models; local inputs handed over by `make enqueue`
    report.py      what ClearML shows of a finished run or sweep
    tracking.py    `make run` recorded as a task (clearml.mode=offline|server)
    runs.py        finished pipelines read back (their S3 prefix, waiting for them)
    sdk.py         SDK settings, is a server configured and reachable, do the queues exist
"""

CONFIG_NAME = "experiment_config"  # the configuration object a user edits in the web UI
