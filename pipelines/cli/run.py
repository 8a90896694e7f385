"""`make run`: one experiment on this machine, then a summary.

python -m pipelines.cli.run model=smollm2_135m dataset=qa_pairs dataset.path=FILE dataset.limit=100
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from components.memory import gib, highest_gpu_bytes
from components.storage import StorageError
from pipelines.clearml.tracking import run_tracked
from pipelines.cli import finish, launch
from pipelines.config import to_container
from pipelines.local import run_dir_of, run_local


def _gib(value: int | None) -> str:
    return "n/a" if not value else f"{gib(value):.2f} GiB"


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def format_summary(results: dict[str, Any], paths: list[str]) -> str:
    counts, recall, thr = results["counts"], results["token_recall"], results["throughput"]
    inf, mem = results["inference"], results["memory"]
    gpu_peak = highest_gpu_bytes(mem.get("peak_gpu_bytes"))
    lines = [
        f"== {results['experiment']} ({inf['backend']}, {inf['device']}, {inf['dtype']}) ==",
        f"examples        {counts['examples']} (scored {counts['scored']}, "
        f"unscorable {counts['unscorable']})",
        f"token recall    {_fmt(recall['mean'])} mean{_interval(recall.get('ci95'))}, "
        f"{_fmt(recall['median'])} median, {_fmt(recall['share_at_1'], '.1%')} at 1.0",
        *_verbosity_lines(results),
        f"exact match     {_fmt(results['exact_match'])}",
        *_category_lines(results.get("by_category") or {}),
        *_context_lines(results),
        f"speed           {_fmt(thr['questions_per_s'], '.2f')} questions/s, "
        f"{_fmt(thr['output_tokens_per_s'], '.1f')} output tokens/s "
        f"(model load {results['timing']['model_load_seconds']:.1f} s)",
        f"peak memory     {_gib(mem['peak_rss_bytes'])} RSS"
        + (f", {_gib(gpu_peak)} GPU" if gpu_peak else ""),
        "wrote",
        *(f"  {p}" for p in paths),
    ]
    return "\n".join(lines)


def _interval(ci95: list[float] | None) -> str:
    return f" (95% CI {ci95[0]:.3f}-{ci95[1]:.3f})" if ci95 else ""


def _verbosity_lines(results: dict[str, Any]) -> list[str]:
    """Precision, F1 and answer length: how much a high recall owes to long answers."""
    if "token_f1" not in results:
        return []
    return [
        f"token F1        {_fmt(results['token_f1']['mean'])} mean (precision "
        f"{_fmt(results['token_precision']['mean'])}); answers "
        f"{_fmt(results['answer_words']['mean'], '.1f')} words mean"
    ]


def _category_lines(by_category: dict[str, dict[str, Any]], shown: int = 10) -> list[str]:
    """Token recall per value of the dataset's ``category`` field, largest first."""
    rows = sorted(by_category.items(), key=lambda item: -item[1]["examples"])
    lines = [
        f"  {name[:24]:<24} {_fmt(row['token_recall'])} recall, {_fmt(row['token_f1'])} F1 "
        f"({row['examples']} questions)"
        for name, row in rows[:shown]
    ]
    more = [f"  ... {len(rows) - shown} more in results.json"] if len(rows) > shown else []
    return ["by category"] + lines + more if lines else []


def _context_lines(results: dict[str, Any]) -> list[str]:
    context, retrieval = results.get("context") or {}, results.get("retrieval")
    if context.get("mode", "no_context") == "no_context":
        return []
    tokens = context["context_tokens"]
    lines = [
        f"context         {context['mode']}: {_fmt(tokens['mean'], '.0f')} tokens mean, "
        f"{tokens['max']} max of {context['max_context_tokens']}; {context['truncated']} "
        f"cut; answer in context {_fmt(context['answer_in_context'], '.1%')}"
    ]
    if retrieval:
        lines.append(
            f"retrieval       {retrieval['retriever']} top {retrieval['k']}: gold recall "
            f"{_fmt(retrieval['gold_recall_at_k'])}, answer in top k "
            f"{_fmt(retrieval['answer_in_context_at_k'])}, "
            f"{_fmt(retrieval['questions_per_s'], ',.0f')} questions/s"
        )
    return lines


def run(cfg: DictConfig) -> int:
    container = to_container(cfg)
    session_zip = None
    try:
        if container["clearml"]["mode"] in ("offline", "server"):
            outputs, session_zip = run_tracked(cfg, container)
        else:
            outputs = run_local(container)
    except StorageError as exc:
        run_dir = run_dir_of(container)
        endpoint = container["storage"]["endpoint"]
        raise StorageError(
            f"{exc}\nevery file of the run is kept in {run_dir}/; once S3 answers: make publish "
            f'EXPERIMENT={run_dir.name} ARGS="storage.endpoint={endpoint}"'
        ) from exc
    publish = outputs["publish"]
    results = publish["results"]
    paths = [publish["results_path"], *(a["path"] for a in publish["artifacts"].values())]
    if publish["uploaded"]:
        kept = "deleted" if container["experiment"]["cleanup_local_artifacts"] else "kept"
        paths = [f"{i['url']}  (verified; local copy {kept})" for i in publish["uploaded"].values()]
    if session_zip:
        paths.append(
            f"{session_zip}  (ClearML offline session: clearml-task --import-offline-session)"
        )
    print(format_summary(results, paths), flush=True)
    return 0


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    finish(
        lambda: run(cfg),
        stopped_hint=lambda: (
            "finished answers are kept in the checkpoint under "
            f"{cfg.experiment.output_dir}/{cfg.experiment.name}/; run the same command again "
            "to resume"
        ),
    )


if __name__ == "__main__":
    launch(main, composes=True)
