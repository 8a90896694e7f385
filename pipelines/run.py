"""`make run` entry point: compose the Hydra config, run the pipeline locally, print a summary.

python -m pipelines.run model=smollm2_135m dataset=qa_pairs dataset.path=FILE dataset.limit=100
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from components.memory import highest_gpu_bytes
from pipelines.config import ConfigError, to_container

log = logging.getLogger("pipelines.run")


def _gib(value: int | None) -> str:
    return "n/a" if not value else f"{value / 2**30:.2f} GiB"


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
        f"token recall    {_fmt(recall['mean'])} mean, {_fmt(recall['median'])} median, "
        f"{_fmt(recall['share_at_1'], '.1%')} at 1.0",
        f"exact match     {_fmt(results['exact_match'])}",
        f"speed           {_fmt(thr['questions_per_s'], '.2f')} questions/s, "
        f"{_fmt(thr['output_tokens_per_s'], '.1f')} output tokens/s "
        f"(model load {results['timing']['model_load_seconds']:.1f} s)",
        f"peak memory     {_gib(mem['peak_rss_bytes'])} RSS"
        + (f", {_gib(gpu_peak)} GPU" if gpu_peak else ""),
        "wrote",
        *(f"  {p}" for p in paths),
    ]
    return "\n".join(lines)


class Stopped(Exception):
    """SIGTERM (an agent stopping the task, `kill`): leave cleanly, checkpoint intact."""


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


def execute(cfg: DictConfig) -> int:
    import json

    from components.model_files import ModelFilesError
    from components.storage import StorageError
    from pipelines.clearml_server import ServerNotConfigured
    from pipelines.local import run_local

    session_zip = None
    try:
        container = to_container(cfg)
        mode = str(container["clearml"].get("mode") or "off")  # YAML reads a bare off as false
        if mode == "off":
            outputs = run_local(container)
        elif mode in ("offline", "server"):
            from pipelines.clearml_tracking import run_tracked

            outputs, session_zip = run_tracked(cfg, container)
        else:
            raise ConfigError(f"clearml.mode: {mode!r} is not one of off, offline, server")
    except (ValueError, ModelFilesError, StorageError, ServerNotConfigured) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (Stopped, KeyboardInterrupt) as exc:
        name = str(exc) or "interrupt"
        print(
            f"stopped ({name}): finished answers are kept in the checkpoint under "
            f"{cfg.experiment.output_dir}/{cfg.experiment.name}/; run the same command again "
            "to resume",
            file=sys.stderr,
        )
        return 143 if isinstance(exc, Stopped) else 130
    publish = outputs["publish"]
    with open(publish["results_path"], encoding="utf-8") as fh:
        results = json.load(fh)
    paths = [publish["results_path"], *(a["path"] for a in publish["artifacts"].values())]
    uploaded = publish.get("uploaded") or {}
    if uploaded:
        kept = (
            "kept" if not results["config"]["experiment"]["cleanup_local_artifacts"] else "deleted"
        )
        paths = [f"{info['url']}  (verified; local copy {kept})" for info in uploaded.values()]
    if session_zip:
        paths.append(
            f"{session_zip}  (ClearML offline session: clearml-task --import-offline-session)"
        )
    print(format_summary(results, paths), flush=True)
    return 0


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    code = execute(cfg)
    if code:
        sys.exit(code)


def main() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _raise_stopped)
    _hydra_main()


if __name__ == "__main__":
    main()
