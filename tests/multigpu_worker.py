"""One rank of the two-process GRPO proof that ``tests/test_multigpu.py`` starts with ``accelerate launch``.

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes 2 \\
        tests/multigpu_worker.py OUT_DIR [options of python -m sarashina_grpo.distributed]

It trains through the package's data-parallel entry point, then writes what the test compares into OUT_DIR:
``rank<R>.json`` (this rank's LoRA fingerprint and step) and ``prompts-rank<R>.txt`` (the prompts it scored).
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from pathlib import Path

from sarashina_grpo.distributed import lora_fingerprint, use_triton_interpreter_without_gpu

use_triton_interpreter_without_gpu()  # before transformers/TRL are imported

OUT_DIR = Path(sys.argv[1])
RANK = int(os.environ.get("RANK", "0"))


def text_hash_reward(prompts, completions, **kwargs) -> list[float]:
    """A reward in [0, 1) that changes with any change of the text, and a log of the prompts this rank scored.

    The format rewards are all zero on the random tiny model, so GRPO's advantages (and gradients) would be zero
    and identical weights on both ranks would prove nothing. This one makes every group's advantages non-zero."""
    from sarashina_grpo.rewards import completion_text

    with open(OUT_DIR / f"prompts-rank{RANK}.txt", "a", encoding="utf-8") as log:
        for prompt in prompts:
            log.write(completion_text(prompt).replace("\n", " ") + "\n")
    return [zlib.crc32(completion_text(c).encode()) % 1000 / 1000 for c in completions]


def main() -> None:
    argv = sys.argv[2:]
    if "--backend" in argv and argv[argv.index("--backend") + 1] == "unsloth":
        import unsloth  # noqa: F401  # patches transformers/TRL, so it goes first (as in distributed.main)
    from peft import get_peft_model_state_dict

    from sarashina_grpo.distributed import build_parser, settings_from_distributed_args, train_distributed
    from sarashina_grpo.rewards import REWARD_FUNCS

    REWARD_FUNCS["text_hash"] = text_hash_reward
    args = build_parser().parse_args(argv)
    settings = settings_from_distributed_args(args)
    trainer = train_distributed(settings, args.data, args.artifact_dir, backend=args.backend, run_name=args.run_name)
    model = trainer.accelerator.unwrap_model(trainer.model)
    record = {
        "rank": trainer.accelerator.process_index,
        "world_size": trainer.accelerator.num_processes,
        "global_step": trainer.state.global_step,
        "run": trainer.run_paths.name,
        **lora_fingerprint(get_peft_model_state_dict(model)),
    }
    (OUT_DIR / f"rank{record['rank']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
