"""Join the per-GPU-count benchmark runs of ``scripts/multi_gpu_bench.sh`` into one table.

    uv run python -m scripts.multi_gpu_table docs/benchmarks/multi_gpu      # reads gpus-*/results.json

Writes ``multi_gpu.json`` (every row, with ``num_gpus``, ``speedup`` and ``efficiency`` against the one-GPU row of
the same configuration) and ``multi_gpu.md`` (the table README and docs/multi-gpu.md quote).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load_rows(folder: Path) -> tuple[list[dict], list[dict]]:
    rows, metas = [], []
    for path in sorted(folder.glob("gpus-*/results.json"), key=lambda p: int(p.parent.name.split("-")[1])):
        data = json.loads(path.read_text())
        metas.append(data["meta"])
        rows += [r for r in data["results"] if "error" not in r]
    return rows, metas


def with_scaling(rows: list[dict]) -> list[dict]:
    one = {r["config"]: r["completions_per_s"] for r in rows if r["num_gpus"] == 1}
    for r in rows:
        base = one.get(r["config"])
        r["speedup"] = round(r["completions_per_s"] / base, 2) if base else None
        r["efficiency"] = round(r["speedup"] / r["num_gpus"], 2) if base else None
    return sorted(rows, key=lambda r: (r["config"], r["num_gpus"]))


def markdown(rows: list[dict]) -> str:
    head = ("| config | GPUs | completions/step (all GPUs) | steady s/step | completions/s | completion tok/s "
            "| speedup | per-GPU efficiency | peak reserved GiB (per GPU) |\n|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {r['config']} | {r['num_gpus']} | {r['completions_per_step'] * r['num_gpus']} | {r['step_s']:.2f} "
        f"| {r['completions_per_s']:.2f} | {r['completion_tokens_per_s']:,.0f} | {r['speedup']} "
        f"| {r['efficiency']} | {r['peak_reserved_gib']} |" for r in rows) + "\n"


def main(folder: str) -> None:
    out = Path(folder)
    rows, metas = load_rows(out)
    rows = with_scaling(rows)
    meta = {k: metas[0][k] for k in ("device", "model", "max_completion_length", "torch", "transformers", "trl",
                                     "unsloth", "loss_type", "beta")} if metas else {}
    meta["dates"] = [m["date"] for m in metas]
    (out / "multi_gpu.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    (out / "multi_gpu.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks/multi_gpu")
