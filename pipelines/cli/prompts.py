"""`make prompts ARGS="..."`: the first few prompts exactly as the model would see them, and
where their template and system prompt came from, without loading the model (its tokenizer
only): a prompt setting can be checked before a run spends anything on it.

python -m pipelines.cli.prompts model=gemma3_270m dataset.limit=3
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from components.contexts import fit_contexts, load_with_passages
from components.dataset import DatasetConfig
from components.inference.config import InferenceConfig
from components.model_files import ModelConfig, resolve_model
from components.modes import ModeConfig
from components.prompts import PromptFormat, load_tokenizer, render
from pipelines.cli import finish, launch
from pipelines.config import ConfigError, section, to_container, validate

SHOWN = 3  # prompts shown without a dataset.limit


def show_prompts(cfg: dict) -> int:
    cfg = validate(cfg)
    mode = section(ModeConfig, cfg["experiment_mode"], "experiment_mode")
    if mode.retrieves:
        raise ConfigError(
            f"experiment_mode: {mode.name} shows what the retriever finds, which a run finds "
            "first: see inference.prompt.first in a run's results.json"
        )
    limit = cfg["dataset"]["limit"] or SHOWN
    dataset = section(DatasetConfig, {**cfg["dataset"], "limit": limit}, "dataset")
    model = section(ModelConfig, cfg["model"], "model")
    inference = section(InferenceConfig, cfg["inference"], "inference")
    records: list[dict] = []
    load_with_passages(dataset, mode, records.append)
    files = resolve_model(model)
    tokenizer = load_tokenizer(files.path, model.revision)
    fmt = PromptFormat.from_config(model.prompt, inference, mode)
    for note in fmt.unused_settings(inference):
        print(f"note: inference.{note}")
    origin = dict(fmt.origin)
    print(f"template from {origin['template']}, system prompt from {origin['system_prompt']}")
    contexts = fit_contexts(tokenizer, records, mode)
    for i, record in enumerate(records):
        text = render(tokenizer, record["question"], fmt, contexts[i].text if contexts else None)
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        print(f"--- {record['question_id']} ({tokens} tokens) ---\n{text}")
    return 0


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    finish(lambda: show_prompts(to_container(cfg)))


if __name__ == "__main__":
    launch(main, composes=True)
