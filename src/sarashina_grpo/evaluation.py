"""Evaluate a model or checkpoint on held-out prompts and compare runs: format compliance and Japanese purity.

    sarashina-grpo eval --model tiny --name tiny-base                 # CPU, offline
    sarashina-grpo eval --model artifact/outputs/<run>/checkpoint-500 --name step500 --compare tiny-base
    sarashina-grpo eval --compare-only --compare base step500         # table + chart of earlier evals
    sarashina-grpo eval --model tiny --name merchant --data datasets/roleplay.csv   # under each row's role

Each evaluation writes ``artifact/eval/<name>/metrics.json`` (``METRIC_KEYS`` plus ``meta``) and
``generations.jsonl``; a name is never reused without ``overwrite``, or ``--compare`` would mislead. Metrics are
shares or means over all outputs, except that purity means skip outputs with nothing to judge (``think_judged_rate``
counts those judged), ``think_leak_mean`` needs both sections and ``answer_accuracy`` an ``answer`` column.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from dataclasses import asdict
from pathlib import Path

from .arithmetic import is_correct
from .data import read_rows, select_rows, to_messages
from .inference import GenerationSettings, generate_counted
from .preflight import check_eval_limit, check_model, check_writable, metrics_problem
from .project import SYSTEM_PROMPT, SettingsError, artifact_root, project_path
from .purity import has_latin_run, japanese_purity, split_sections
from .rewards import is_soft_format, is_strict_format, xmlcount_score
from .roles import think_leak, with_role
from .runs import MAX_RUN_NAME, check_plain_name

logger = logging.getLogger(__name__)

DEFAULT_EVAL_DATA = "datasets/eval.csv"  # relative to the project folder (project.project_path)
METRIC_KEYS = ("n", "strict_format_rate", "soft_format_rate", "xmlcount_mean", "think_purity_mean",
               "response_purity_mean", "purity_mean", "think_judged_rate", "think_japanese_rate", "latin_run_rate",
               "think_leak_mean", "mean_chars", "mean_think_chars", "mean_response_chars", "mean_tokens",
               "answer_accuracy")
# summarize's means over the outputs: metric -> per-output score of ``score_text``
MEANS = {"strict_format_rate": "strict_format", "soft_format_rate": "soft_format", "xmlcount_mean": "xmlcount",
         "think_purity_mean": "think_purity", "response_purity_mean": "response_purity", "purity_mean": "purity",
         "latin_run_rate": "latin_run", "think_leak_mean": "think_leak", "mean_chars": "chars",
         "mean_think_chars": "think_chars", "mean_response_chars": "response_chars"}
LONG_EVAL_SECONDS = 60  # beyond this a CPU evaluation warns and says how to shorten it
MAX_COMPARE_NAME_BYTES = 200  # a comparison folder's name; file names are limited to 255 bytes
MOSTLY_JAPANESE = 0.5  # think purity from which the thinking counts as Japanese (think_japanese_rate)
# The comparison chart's figures: those on a 0–1 scale, so that one axis fits them all.
CHART_KEYS = ("strict_format_rate", "soft_format_rate", "xmlcount_mean", "think_purity_mean", "response_purity_mean",
              "latin_run_rate", "think_leak_mean")


def score_text(text: str, answer: str | None = None) -> dict:
    """Per-output scores; ``None`` where there was nothing to judge."""
    think, response = split_sections(text)
    return {"answer_correct": is_correct(text, answer) if answer not in (None, "") else None,
            "strict_format": is_strict_format(text), "soft_format": is_soft_format(text),
            "xmlcount": xmlcount_score(text), "think_purity": japanese_purity(think) if think is not None else None,
            "response_purity": japanese_purity(response) if response is not None else None,
            "purity": japanese_purity(text), "latin_run": has_latin_run(text), "think_leak": think_leak(text),
            "chars": len(text), "think_chars": len(think.strip()) if think is not None else 0,
            "response_chars": len(response.strip()) if response is not None else 0}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def rounded(value, digits: int = 3, missing: str = "n/a") -> str:
    """A figure as people read it: floats to ``digits`` decimals, integers as they are, ``missing`` for none."""
    return missing if _missing(value) else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(scores: list[dict], token_counts: list[int] | None = None) -> dict:
    """The figures of ``METRIC_KEYS`` over per-output ``scores`` (from ``score_text``)."""
    figures = {key: _mean([s[score] for s in scores]) for key, score in MEANS.items()}
    figures.update(n=len(scores), think_judged_rate=_mean([s["think_purity"] is not None for s in scores]),
                   think_japanese_rate=_mean([(s["think_purity"] or 0.0) >= MOSTLY_JAPANESE for s in scores]),
                   mean_tokens=_mean(token_counts) if token_counts else None,
                   answer_accuracy=_mean([s.get("answer_correct") for s in scores]))
    return {key: figures[key] for key in METRIC_KEYS}


def score_texts(texts: list[str], token_counts: list[int] | None = None) -> dict:
    return summarize([score_text(t) for t in texts], token_counts)


def generate_outputs(model, tokenizer, prompts: list[str], gen=None, samples_per_prompt: int = 1,
                     progress: bool = True, roles: list[str | None] | str | None = None, *,
                     system_prompt: str | None = None) -> list[dict]:
    """One record per output, ``samples_per_prompt`` per prompt; ``roles``: one for all prompts, or one each."""
    gen = gen or GenerationSettings()
    if not gen.do_sample and samples_per_prompt > 1:
        raise ValueError("samples_per_prompt > 1 needs sampling (do_sample=True): greedy outputs would repeat.")
    if not isinstance(roles, list | tuple):  # one role for all (roles.with_role checks that it is text)
        roles = [roles] * len(prompts)
    pairs = [(p, r) for p, r in zip(prompts, roles, strict=True) for _ in range(samples_per_prompt)]
    conversations = [to_messages(p, with_role(system_prompt or SYSTEM_PROMPT, r)) for p, r in pairs]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # decoder-only batches must be left-padded
    try:
        replies = generate_counted(model, tokenizer, conversations, gen, progress=progress)
    finally:
        tokenizer.padding_side = side
    return [{"prompt": p, **({"role": r} if r else {}), "completion": text, "tokens": tokens}
            for (p, r), (text, tokens) in zip(pairs, replies, strict=True)]


def write_eval(outputs: list[dict], eval_dir: str | Path, meta: dict | None = None) -> dict:
    """Score ``outputs`` (from ``generate_outputs``); write metrics.json and generations.jsonl; return metrics."""
    if not outputs:  # e.g. samples_per_prompt 0: nothing was generated, and an empty result is no result
        raise SettingsError(f"Nothing was generated for {Path(eval_dir).name}; no evaluation was saved.")
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    scores = [score_text(o["completion"], o.get("answer")) for o in outputs]
    metrics = summarize(scores, [o["tokens"] for o in outputs if "tokens" in o])
    with open(eval_dir / "generations.jsonl", "w", encoding="utf-8") as f:
        for output, score in zip(outputs, scores, strict=True):
            f.write(json.dumps({**output, **score}, ensure_ascii=False) + "\n")
    (eval_dir / "metrics.json").write_text(json.dumps({**metrics, "meta": meta or {}}, ensure_ascii=False, indent=2),
                                           encoding="utf-8")
    logger.info("eval %s: strict %.3f, think purity %s", eval_dir.name, metrics["strict_format_rate"] or 0,
                rounded(metrics["think_purity_mean"]))
    return metrics


class EvalExistsError(SettingsError):
    """An evaluation of that name exists and ``overwrite`` was not asked for."""


def eval_name_for(model_name: str, prefix: str = "notebook") -> str:
    """``notebook-<run>-checkpoint-500`` for a checkpoint, else ``notebook-`` and the last part of the path or id."""
    path = Path(str(model_name).rstrip("/"))
    parts = [path.parent.name, path.name] if path.name.startswith("checkpoint-") and path.parent.name else [path.name]
    return "-".join([prefix, *(part.replace(" ", "-") for part in parts if part)])[:MAX_RUN_NAME]


def check_eval_name(name: str, artifact_dir: str | Path | None = None, overwrite: bool = False) -> Path:
    """The writable folder for evaluation ``name``; ``EvalExistsError`` if one lives there (unless ``overwrite``)."""
    check_plain_name(name, "--name", "An evaluation lives in eval/<name>/")
    root = artifact_root(artifact_dir)
    check_writable(root)
    eval_dir = root / "eval" / name
    if eval_dir.exists() and not eval_dir.is_dir():
        raise SettingsError(f"{eval_dir} is a file, but it must be the folder of evaluation {name!r}. Move or rename "
                            "the file, or choose another name (CLI --name, notebook EVAL_NAME).")
    if (eval_dir / "metrics.json").exists() and not overwrite:
        raise EvalExistsError(f"An evaluation named {name!r} already exists in {eval_dir}. Choose another name "
                              "(CLI --name, notebook EVAL_NAME) or replace it (CLI --overwrite, notebook "
                              "EVAL_OVERWRITE = True).")
    return eval_dir


def eval_data_file(data_path: str | Path) -> Path:
    """The held-out prompt file ``data_path`` names; empty is refused here (as a path it is the project folder)."""
    if not str(data_path).strip():
        raise SettingsError(f"The held-out prompt file (CLI eval --data; evaluate's data_path) is empty: give the "
                            f"path of a CSV, JSONL or Parquet file with columns prompt,lang, e.g. {DEFAULT_EVAL_DATA}.")
    return project_path(data_path)


def eval_rows(data_path: Path, limit: int | None) -> list:
    """The held-out rows to evaluate (Japanese, usable, the first ``limit``); an error when none would be."""
    check_eval_limit(limit)
    return select_rows(read_rows(data_path), data_path, "ja")[:limit]  # select_rows: an error when none is left


def evaluate(model, tokenizer, name: str, *, data_path: str | Path = DEFAULT_EVAL_DATA,
             artifact_dir: str | Path | None = None, gen=None, samples_per_prompt: int = 1,
             limit: int | None = None, meta: dict | None = None, progress: bool = True, role: str | None = None,
             overwrite: bool = False, system_prompt: str | None = None) -> dict:
    """Generate for the prompts of ``data_path`` and write ``<artifact_dir>/eval/<name>/``; return the metrics."""
    eval_dir = check_eval_name(name, artifact_dir, overwrite)
    gen = gen or GenerationSettings()
    data_path = eval_data_file(data_path)
    rows = eval_rows(data_path, limit)
    started = time.monotonic()
    prompts, roles = [r.prompt for r in rows], [r.role or role for r in rows]
    first = max(1, gen.batch_size // samples_per_prompt)  # prompts of the first batch, timed on a CPU
    timed = str(getattr(model, "device", "cpu")) == "cpu" and len(prompts) > first
    outputs = generate_outputs(model, tokenizer, prompts[:first] if timed else prompts, gen, samples_per_prompt,
                               progress and not timed, roles[:first] if timed else roles, system_prompt=system_prompt)
    if timed:
        log_cpu_estimate(time.monotonic() - started, first, len(prompts))
        outputs += generate_outputs(model, tokenizer, prompts[first:], gen, samples_per_prompt, progress,
                                    roles[first:], system_prompt=system_prompt)
    attach_answers(outputs, rows, samples_per_prompt)
    meta = {"data": str(data_path), "prompts": len(rows), "samples_per_prompt": samples_per_prompt,
            "generation": asdict(gen), "role": role, "seconds": round(time.monotonic() - started, 1),
            **(meta or {})}
    return write_eval(outputs, eval_dir, meta)


def attach_answers(outputs: list[dict], rows, samples_per_prompt: int) -> None:
    """Give each output its row's ``answer`` (when the data has that column), so ``answer_accuracy`` is scored."""
    if any("answer" in r.extra for r in rows):  # outputs come samples_per_prompt per row, in row order
        for output, row in zip(outputs, [r for r in rows for _ in range(samples_per_prompt)], strict=True):
            output["answer"] = row.extra.get("answer")


def log_cpu_estimate(seconds: float, done: int, total: int) -> None:
    """After the first batch on a CPU: how long the rest will take, and (when long) how to shorten it."""
    left = seconds / done * (total - done)
    shown = f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s"
    if left < LONG_EVAL_SECONDS:
        logger.info("Generating on a CPU: the other %d prompt(s) need about %s.", total - done, shown)
        return
    logger.warning("Generating on a CPU: the first %d prompt(s) took %.0f s, so the other %d need about %s. "
                   "Evaluate fewer with --limit N (notebook EVAL_LIMIT) or shorter answers with --max-new-tokens.",
                   done, seconds, total - done, shown)


def evaluate_model(settings, name: str, *, threads: int | None = None, **kwargs) -> dict:
    """Load ``settings.model_name`` (a hub id, folder, checkpoint or ``tiny``) for inference and ``evaluate`` it."""
    from .inference import load_for_inference

    gen = kwargs.get("gen") or GenerationSettings()
    settings = check_model(settings, training=False, max_new_tokens=gen.max_new_tokens)
    check_eval_name(name, kwargs.get("artifact_dir"), kwargs.get("overwrite", False))
    eval_rows(eval_data_file(kwargs.get("data_path", DEFAULT_EVAL_DATA)), kwargs.get("limit"))  # before loading
    model, tokenizer = load_for_inference(settings, threads=threads)
    kwargs.setdefault("system_prompt", getattr(settings, "system_prompt", None))
    return evaluate(model, tokenizer, name, meta={"model": settings.model_name}, **kwargs)


def eval_folder(run: str | Path, artifact_dir: str | Path | None = None) -> Path:
    if (Path(run) / "metrics.json").exists():
        return Path(run)
    return artifact_root(artifact_dir) / "eval" / str(run)


def load_metrics(run: str | Path, artifact_dir: str | Path | None = None) -> tuple[str, dict]:
    """(name, metrics) of an earlier evaluation, given its name or its folder."""
    path = eval_folder(run, artifact_dir)
    if not (path / "metrics.json").exists():
        raise SettingsError(f"No evaluation named {run!r} (no metrics.json in {path}); run `sarashina-grpo eval "
                            f"--name {run}` first, or give the folder of an earlier evaluation.")
    metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    if problem := metrics_problem(metrics):
        raise SettingsError(f"{path / 'metrics.json'} {problem}. Run that evaluation again (sarashina-grpo eval "
                            "--name …).")
    return path.name, metrics


def comparison_labels(paths: list[Path]) -> list[str]:
    """One distinct label per folder (``name``, ``parent/name``, ``name (2)``): no evaluation is dropped."""
    names = [p.name for p in paths]
    labels = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    for i in range(len(labels)):
        n, base = 1, labels[i]
        while labels[i] in labels[:i]:
            n += 1
            labels[i] = f"{base} ({n})"
    return labels


def comparison_folder_name(labels: list[str]) -> str:
    """``compare-<a>-vs-<b>…``, shortened with a hash of the full name where it would not fit a file name."""
    name = "compare-" + "-vs-".join(re.sub(r"[/\\]", "_", label) for label in labels)  # parent/name labels
    if len(name.encode()) <= MAX_COMPARE_NAME_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return name.encode()[:MAX_COMPARE_NAME_BYTES - 13].decode(errors="ignore") + "-" + digest


def chart_value(value) -> float | None:
    return None if _missing(value) else float(value)


def chart_legend(name: str, metrics: dict) -> str:
    # The number of outputs: a rate over 20 outputs beside one over 135 is less sure.
    return f"{name} (n={metrics.get('n', '?')})"


def comparison_table(runs: dict[str, dict]) -> str:
    """A Markdown table, one row per metric and one column per run, and a note when the runs decoded differently."""
    names = list(runs)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key in METRIC_KEYS:
        lines.append(f"| {key} | " + " | ".join(rounded(runs[n].get(key), missing="–") for n in names) + " |")
    decoded, scored = {}, {}
    for name, metrics in runs.items():
        meta = metrics.get("meta") or {}
        if meta.get("prompts") is not None:
            scored[name] = f"{meta['prompts']} of {meta.get('data', '?')}"
        gen, samples = meta.get("generation"), meta.get("samples_per_prompt", 1)
        if isinstance(gen, dict):
            how = (f"sampled at temperature {gen.get('temperature')}, top_p {gen.get('top_p')}" if gen.get("do_sample")
                   else "greedy")
            decoded[name] = (f"{how}, up to {gen.get('max_new_tokens')} new tokens"
                             + (f", {samples} per prompt" if samples != 1 else ""))
    table = "\n".join(lines) + "\n"
    for differs, why in ((decoded, "decoded differently, so part of any difference comes from that"),
                         (scored, "scored different prompts, so their rates are not of the same questions")):
        if len(set(differs.values())) > 1:
            table += f"\nNote: these evaluations {why}: " + "; ".join(f"{n}: {d}" for n, d in differs.items()) + ".\n"
    return table


def comparison_chart(runs: dict[str, dict], path: str | Path) -> Path:
    """A grouped bar chart of ``CHART_KEYS`` for each run, saved as PNG."""
    from matplotlib.figure import Figure  # not pyplot: no display or backend needed, no figure left open

    # Accuracy only where some run has answers: a bar of 0 would read as "always wrong".
    keys = CHART_KEYS + (("answer_accuracy",) if any(m.get("answer_accuracy") is not None for m in runs.values())
                         else ())
    width = 0.8 / len(runs)
    fig = Figure(figsize=(2 + 1.6 * len(keys), 4.5), layout="tight")
    ax = fig.subplots()
    for i, (name, metrics) in enumerate(runs.items()):
        values = [chart_value(metrics.get(k)) for k in keys]
        xs = [x + i * width for x in range(len(keys))]
        bars = ax.bar(xs, [0.0 if v is None else v for v in values], width, label=chart_legend(name, metrics))
        # A missing figure (nothing to judge) is not a zero: label it "n/a" instead of drawing an empty bar as 0.
        ax.bar_label(bars, labels=[rounded(v, 2) for v in values], fontsize=7, padding=2)
    ax.set_xticks([x + width * (len(runs) - 1) / 2 for x in range(len(keys))])
    ax.set_xticklabels([k.replace("_", "\n") for k in keys], fontsize=8)
    ax.set(ylim=(0, 1.15), ylabel="rate or mean (0–1)", title="evaluation comparison")  # room for labels above 1.0
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    return Path(path)


def compare_runs(runs: list[str | Path], out_dir: str | Path | None = None,
                 artifact_dir: str | Path | None = None) -> tuple[str, Path]:
    """Write comparison.md and .png (by default in ``eval/compare-<a>-vs-<b>…``); return (markdown, png path)."""
    if len(runs) < 2:
        raise ValueError("Comparing needs at least two evaluations.")
    folders = [eval_folder(r, artifact_dir) for r in runs]
    loaded = dict(zip(comparison_labels(folders), [load_metrics(r, artifact_dir)[1] for r in runs], strict=True))
    eval_root = artifact_root(artifact_dir) / "eval"
    out_dir = Path(out_dir or eval_root / comparison_folder_name(list(loaded)))
    out_dir.mkdir(parents=True, exist_ok=True)
    table = comparison_table(loaded)
    (out_dir / "comparison.md").write_text(table, encoding="utf-8")
    return table, comparison_chart(loaded, out_dir / "comparison.png")
