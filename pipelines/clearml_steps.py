"""The functions ClearML turns into step tasks (one standalone script each).

ClearML copies only a function's source and this module's imports into the script an
agent runs, so each body imports what it needs and delegates to pipelines.remote; no
module constants, no relative imports, no ``from __future__`` (it would be wrapped in try).
"""


def load_dataset(
    config_json: str,
    eval_model: str,
    eval_dataset: str,
    eval_dataset_path: str,
    eval_limit: str,
    eval_batch_size: str,
    eval_max_new_tokens: str,
    eval_temperature: str,
    dataset_sha256: str,
) -> str:
    from pipelines.remote import first_step

    knobs = {
        "eval_model": eval_model,
        "eval_dataset": eval_dataset,
        "eval_dataset_path": eval_dataset_path,
        "eval_limit": eval_limit,
        "eval_batch_size": eval_batch_size,
        "eval_max_new_tokens": eval_max_new_tokens,
        "eval_temperature": eval_temperature,
    }
    return first_step(config_json, knobs, dataset_sha256)


def inference(previous: str) -> str:
    from pipelines.remote import next_step

    return next_step("inference", previous)


def inference_shard(previous: str, shard: int) -> str:
    from pipelines.remote import next_step

    return next_step(f"inference_shard_{int(shard)}", previous)


def merge_shards(previous: str) -> str:
    from pipelines.remote import merge_step

    return merge_step(previous)


def score(previous: str) -> str:
    from pipelines.remote import next_step

    return next_step("score", previous)


def publish(previous: str) -> str:
    from pipelines.remote import next_step

    return next_step("publish", previous)


def sweep_summary(runs_json: str, config_json: str, name: str) -> str:
    from pipelines.clearml_sweep import summary_step

    return summary_step(runs_json, config_json, name)
