"""Evaluate a model or checkpoint on held-out prompts and compare runs: format compliance and Japanese purity.

    sarashina-grpo eval --model tiny --name tiny-base                 # CPU, offline
    sarashina-grpo eval --model artifact/outputs/<run>/checkpoint-500 --name step500 --compare tiny-base
    sarashina-grpo eval --compare-only --compare base step500         # table + chart of earlier evals

Each evaluation writes ``artifact/eval/<name>/metrics.json`` (keys in ``METRIC_KEYS``, plus ``meta``) and
``generations.jsonl`` (one line per output with its per-output scores). ``compare_runs`` writes
``comparison.md`` and ``comparison.png`` side by side for two or more evaluations.

Metrics (rates and means over all outputs unless said otherwise; purity is defined in ``purity.py``):
``strict_format_rate``/``soft_format_rate`` share passing the strict/soft format check of ``rewards.py``;
``xmlcount_mean``; ``think_purity_mean``/``response_purity_mean`` Japanese purity of the ``<think>``/``<response>``
contents, averaged over outputs that have that section with letters in it (``think_judged_rate`` says how many);
``purity_mean`` purity of the whole output (tags ignored) over outputs with letters; ``latin_run_rate`` share with
≥3 consecutive Latin words; ``mean_chars``/``mean_think_chars``/``mean_response_chars`` and ``mean_tokens``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

from .config import SettingsError, default_artifact_dir, project_path
from .purity import has_latin_run, japanese_purity, split_sections
from .rewards import is_soft_format, is_strict_format, xmlcount_score

logger = logging.getLogger(__name__)

DEFAULT_EVAL_DATA = "datasets/eval.csv"  # relative to the project folder (config.project_path)
METRIC_KEYS = (
    "n", "strict_format_rate", "soft_format_rate", "xmlcount_mean", "think_purity_mean", "response_purity_mean",
    "purity_mean", "think_judged_rate", "latin_run_rate", "mean_chars", "mean_think_chars", "mean_response_chars",
    "mean_tokens",
)
# Shown in the comparison chart: the figures on a 0–1 scale, so that one axis fits them all.
CHART_KEYS = (
    "strict_format_rate", "soft_format_rate", "xmlcount_mean", "think_purity_mean", "response_purity_mean",
    "latin_run_rate",
)


def score_text(text: str) -> dict:
    """Per-output scores; purity fields are ``None`` where there was nothing to judge."""
    think, response = split_sections(text)
    return {
        "strict_format": is_strict_format(text),
        "soft_format": is_soft_format(text),
        "xmlcount": xmlcount_score(text),
        "think_purity": japanese_purity(think) if think is not None else None,
        "response_purity": japanese_purity(response) if response is not None else None,
        "purity": japanese_purity(text),
        "latin_run": has_latin_run(text),
        "chars": len(text),
        "think_chars": len(think.strip()) if think is not None else 0,
        "response_chars": len(response.strip()) if response is not None else 0,
    }


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(scores: list[dict], token_counts: list[int] | None = None) -> dict:
    """The figures of ``METRIC_KEYS`` over per-output ``scores`` (from ``score_text``)."""
    n = len(scores)
    column = lambda key: [s[key] for s in scores]  # noqa: E731
    return {
        "n": n,
        "strict_format_rate": _mean(column("strict_format")),
        "soft_format_rate": _mean(column("soft_format")),
        "xmlcount_mean": _mean(column("xmlcount")),
        "think_purity_mean": _mean(column("think_purity")),
        "response_purity_mean": _mean(column("response_purity")),
        "purity_mean": _mean(column("purity")),
        "think_judged_rate": _mean([s["think_purity"] is not None for s in scores]),
        "latin_run_rate": _mean(column("latin_run")),
        "mean_chars": _mean(column("chars")),
        "mean_think_chars": _mean(column("think_chars")),
        "mean_response_chars": _mean(column("response_chars")),
        "mean_tokens": _mean(token_counts) if token_counts else None,
    }


def score_texts(texts: list[str], token_counts: list[int] | None = None) -> dict:
    return summarize([score_text(t) for t in texts], token_counts)


def generate_outputs(model, tokenizer, prompts: list[str], gen=None, samples_per_prompt: int = 1,
                     progress: bool = True) -> list[dict]:
    """Generate for every prompt (``samples_per_prompt`` times when sampling); one record per output."""
    from .data import to_messages
    from .inference import GenerationSettings, generate

    gen = gen or GenerationSettings()
    if not gen.do_sample and samples_per_prompt > 1:
        raise ValueError("samples_per_prompt > 1 needs sampling (do_sample=True): greedy outputs would repeat.")
    conversations = [to_messages(p) for p in prompts for _ in range(samples_per_prompt)]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only batches must be left-padded
    try:
        texts = generate(model, tokenizer, conversations, gen, progress=progress)
    finally:
        tokenizer.padding_side = side
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    return [{"prompt": c[-1]["content"], "completion": t, "tokens": count(t)}
            for c, t in zip(conversations, texts, strict=True)]


def write_eval(outputs: list[dict], eval_dir: str | Path, meta: dict | None = None) -> dict:
    """Score ``outputs`` (from ``generate_outputs``); write metrics.json and generations.jsonl; return metrics."""
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    scores = [score_text(o["completion"]) for o in outputs]
    metrics = summarize(scores, [o["tokens"] for o in outputs if "tokens" in o])
    with open(eval_dir / "generations.jsonl", "w", encoding="utf-8") as f:
        for output, score in zip(outputs, scores, strict=True):
            f.write(json.dumps({**output, **score}, ensure_ascii=False) + "\n")
    document = {**metrics, "meta": meta or {}}
    (eval_dir / "metrics.json").write_text(json.dumps(document, ensure_ascii=False, indent=2), encoding="utf-8")
    logger.info("eval %s: strict %.3f, think purity %s", eval_dir.name, metrics["strict_format_rate"] or 0,
                metrics["think_purity_mean"])
    return metrics


def evaluate(model, tokenizer, name: str, *, data_path: str | Path = DEFAULT_EVAL_DATA,
             artifact_dir: str | Path | None = None, gen=None, samples_per_prompt: int = 1,
             limit: int | None = None, meta: dict | None = None, progress: bool = True) -> dict:
    """Generate for the prompts of ``data_path`` and write ``<artifact_dir>/eval/<name>/``; return the metrics."""
    from .data import read_rows, select_rows
    from .inference import GenerationSettings

    gen = gen or GenerationSettings()
    data_path = project_path(data_path)
    prompts = [r.prompt for r in select_rows(read_rows(data_path), data_path, "ja")][:limit]
    started = time.monotonic()
    outputs = generate_outputs(model, tokenizer, prompts, gen, samples_per_prompt, progress)
    meta = {"data": str(data_path), "prompts": len(prompts), "samples_per_prompt": samples_per_prompt,
            "generation": asdict(gen), "seconds": round(time.monotonic() - started, 1), **(meta or {})}
    return write_eval(outputs, Path(artifact_dir or default_artifact_dir()) / "eval" / name, meta)


def evaluate_model(settings, name: str, **kwargs) -> dict:
    """Load ``settings.model_name`` (a hub id, folder, checkpoint or ``tiny``) for inference and ``evaluate`` it."""
    from .inference import load_for_inference

    model, tokenizer = load_for_inference(settings)
    return evaluate(model, tokenizer, name, meta={"model": settings.model_name}, **kwargs)


def load_metrics(run: str | Path, artifact_dir: str | Path | None = None) -> tuple[str, dict]:
    """(name, metrics) of an earlier evaluation, given its name or its folder."""
    path = Path(run)
    if not (path / "metrics.json").exists():
        path = Path(artifact_dir or default_artifact_dir()) / "eval" / str(run)
    if not (path / "metrics.json").exists():
        raise SettingsError(f"No evaluation named {run!r} (no metrics.json in {path}); run `sarashina-grpo eval "
                            f"--name {run}` first, or give the folder of an earlier evaluation.")
    return path.name, json.loads((path / "metrics.json").read_text(encoding="utf-8"))


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def comparison_table(runs: dict[str, dict]) -> str:
    """A Markdown table: one row per metric, one column per run."""
    names = list(runs)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {key} | " + " | ".join(_cell(runs[n].get(key)) for n in names) + " |" for key in METRIC_KEYS]
    return "\n".join(lines) + "\n"


def comparison_chart(runs: dict[str, dict], path: str | Path) -> Path:
    """A grouped bar chart of ``CHART_KEYS`` for each run, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed: CI and notebooks alike
    import matplotlib.pyplot as plt

    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(CHART_KEYS), 4))
    for i, (name, metrics) in enumerate(runs.items()):
        values = [metrics.get(k) or 0.0 for k in CHART_KEYS]
        ax.bar([x + i * width for x in range(len(CHART_KEYS))], values, width, label=name)
    ax.set_xticks([x + width * (len(runs) - 1) / 2 for x in range(len(CHART_KEYS))])
    ax.set_xticklabels([k.replace("_", "\n") for k in CHART_KEYS], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("evaluation comparison")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def compare_runs(runs: list[str | Path], out_dir: str | Path | None = None,
                 artifact_dir: str | Path | None = None) -> tuple[str, Path]:
    """Write ``comparison.md`` and ``comparison.png`` for two or more evaluations; return (markdown, png path).
    ``out_dir`` defaults to ``<artifact_dir>/eval/compare-<name1>-vs-<name2>…``."""
    if len(runs) < 2:
        raise ValueError("Comparing needs at least two evaluations.")
    loaded = dict(load_metrics(r, artifact_dir) for r in runs)
    eval_root = Path(artifact_dir or default_artifact_dir()) / "eval"
    out_dir = Path(out_dir or eval_root / ("compare-" + "-vs-".join(loaded)))
    out_dir.mkdir(parents=True, exist_ok=True)
    table = comparison_table(loaded)
    (out_dir / "comparison.md").write_text(table, encoding="utf-8")
    return table, comparison_chart(loaded, out_dir / "comparison.png")
