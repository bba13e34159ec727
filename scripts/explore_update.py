"""Why is the LoRA update slower after a fast rollout? Times fast-rollout GRPO steps with the engine's memory policy
switched variant by variant, in one process (the first variant pays the cold compile step).

    uv run python -m scripts.explore_update --model-dir /tmp/models --out OUT_DIR     # one GPU; writes explore.json

Variants (``fast-6`` unless named): ``legacy`` = the previous engine's policy (weights dequantized every rollout,
nothing kept, graphs captured with ``torch.cuda.graph``, which empties the CUDA and pinned-host caches);
``no-empty`` = the same without emptying; ``keep`` = the engine as it is (weights, and the small cache and graphs,
kept); ``keep+empty`` = the engine plus ``torch.cuda.empty_cache()`` after every rollout.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch
import unsloth  # noqa: F401  (patches transformers and TRL: before them)

from sarashina_grpo.project import project_path
from sarashina_grpo.rollout import FastRollout

from . import bench

ORIGINAL = dict(capture=FastRollout._capture, layers=FastRollout.layers, generate=FastRollout.generate)


def legacy_capture(self, fn):
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # empty_cache() + host empty_cache() on entry
        fn()
    return graph


def set_variant(name: str) -> None:
    FastRollout._capture = legacy_capture if name == "legacy" else ORIGINAL["capture"]
    FastRollout.layers = FastRollout.snapshot if name in ("legacy", "no-empty") else ORIGINAL["layers"]
    if name == "keep+empty":
        def generate(self, *args, **kwargs):
            out = ORIGINAL["generate"](self, *args, **kwargs)
            torch.cuda.empty_cache()
            return out
        FastRollout.generate = generate
    else:
        FastRollout.generate = ORIGINAL["generate"]


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default="/tmp/models")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--runs", default="legacy:fast-6,no-empty:fast-6,keep:fast-6,keep+empty:fast-6,"
                                          "keep:fast-36,keep:fast-36x2")
    args = parser.parse_args()
    model = bench.resolve_bench_model(None, Path(args.model_dir), cuda=True)
    data = str(project_path("datasets/smalltalk.csv"))
    rows, loaded = [], {}
    with tempfile.TemporaryDirectory() as work:
        for item in args.runs.split(","):
            variant, config = item.split(":")
            set_variant(variant)
            cfg = bench.parse_configs(config, cuda=True)[0]
            spg = cfg.steps_per_generation
            steps = 1 + -(-max(args.steps - 1, spg) // spg) * spg
            try:
                row = bench.run_config(cfg, model, data, steps, 512, Path(work), loaded)
            except Exception as err:  # keep measuring the others
                logging.exception("%s failed", item)
                row = dict(config=config, error=f"{type(err).__name__}: {err}")
            row["variant"] = variant
            rows.append(row)
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "explore.json").write_text(json.dumps(rows, indent=2) + "\n")
            keys = ("variant", "config", "step_s", "generation_s", "scoring_s", "update_s", "step_times_s",
                    "generation_times_s", "completion_tokens_per_s", "peak_reserved_gib", "error")
            print("EXPLORE", json.dumps({k: row.get(k) for k in keys}), flush=True)


if __name__ == "__main__":
    main()
