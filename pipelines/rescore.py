"""`make rescore RUN=...`: a finished run scored again, without inference: with today's
metric code, and with corrected answers where ``rescore.dataset`` names a file (the same
question ids; their ``answer`` replaces the recorded one). The result is a run of its own,
``<experiment>_rescored`` under experiment.output_dir, that compare and leaderboard read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.atomic import file_info, write_json_atomic
from components.dataset import load_qa_dataset
from components.predictions import write_predictions
from components.provenance import utc_now
from components.scoring import SHOWN
from components.storage import safe_name
from pipelines.config import ConfigError
from pipelines.runs import TaskFetcher, resolve_run


def _answers(path: str | None, ids: list[str]) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Corrected answers by question id, and where they came from."""
    if not path:
        return {}, {}
    loaded = load_qa_dataset(path)
    answers = {e.question_id: list(e.answers) for e in loaded.examples}
    unknown = sorted(set(answers) - set(ids))
    if unknown:
        raise ConfigError(
            f"rescore.dataset: {path} has question ids the run never answered "
            f"({', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}); give a file of "
            "the run's own questions"
        )
    return answers, {"path": loaded.path, "sha256": loaded.sha256}


def rescore(ref: str, cfg: dict[str, Any], fetch_task: TaskFetcher | None = None) -> dict:
    run_dir = resolve_run(ref, cfg, fetch_task)
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    old = json.loads((run_dir / "predictions.json").read_text(encoding="utf-8"))
    settings = cfg.get("rescore") or {}
    corrected, source = _answers(settings.get("dataset"), [p["question_id"] for p in old])
    examples = [{**p, "answers": corrected.get(p["question_id"], p["answers"])} for p in old]
    generations = {
        p["question_id"]: {
            k: p[k] for k in ("prediction", "prompt_tokens", "output_tokens", *SHOWN) if k in p
        }
        for p in old
    }
    experiment = safe_name(f"{results['experiment']}_rescored")
    out = Path(cfg["experiment"]["output_dir"]) / experiment
    mode = (results.get("config") or {}).get("experiment_mode") or {"name": "no_context"}
    scored = write_predictions(examples, generations.__getitem__, out / "predictions.json", mode)
    predictions, metrics = Path(scored["predictions_path"]), scored["metrics"]
    rescored = {
        **results,
        "experiment": experiment,
        "counts": {**results["counts"], **metrics["counts"]},
        "token_recall": metrics["token_recall"],
        "exact_match": metrics["exact_match"],
        **{k: metrics[k] for k in ("token_precision", "token_f1", "answer_words")},
        "unscorable_ids": scored["unscorable_ids"],
        "context": scored["context"],
        "artifacts": {"predictions.json": file_info(predictions)},
        "rescored": {
            "from": f"{results['experiment']}.{results['run_id']}",
            "from_token_recall": results["token_recall"],
            "at": utc_now(),
            "answers_from": source or "the run's own",
            "answers_changed": sum(
                corrected.get(p["question_id"], p["answers"]) != p["answers"] for p in old
            ),
        },
    }
    path = write_json_atomic(out / "results.json", rescored)
    return {"results": rescored, "paths": {"results": path, "predictions": predictions}}
