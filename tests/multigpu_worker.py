"""One rank of the two-process GRPO proof that ``tests/test_multigpu.py`` starts with ``accelerate launch``.

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes 2 \\
        tests/multigpu_worker.py OUT_DIR [options of sarashina-grpo train]

It runs ``sarashina-grpo train`` itself (``cli.main``), with two test-only additions: a ``text_hash`` reward
registered before the command starts, and a record of what the test compares, written into OUT_DIR when training
ends: ``rank<R>.json`` (this rank's LoRA fingerprint and step; once the command returns, its exit code and whether
the process group is still open) and ``prompts-rank<R>.txt`` (the prompts it scored).
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from pathlib import Path

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


def record_after_training(run_training):
    """Wrap ``pipeline.run_training`` so that each rank writes its LoRA fingerprint once training returns."""

    def wrapped(trainer, run, **options):
        from peft import get_peft_model_state_dict

        from sarashina_grpo.compat import library_class
        from sarashina_grpo.modeling import lora_fingerprint

        trainer = run_training(trainer, run, **options)
        model = trainer.accelerator.unwrap_model(trainer.model)
        record = {
            "rank": trainer.accelerator.process_index,
            "world_size": trainer.accelerator.num_processes,
            "global_step": trainer.state.global_step,
            "run": run.paths.name,
            "trainer_class": library_class(trainer).__name__,
            "mixed_precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "no",
            "base_dtype": str(next(p.dtype for p in model.parameters() if not p.requires_grad)),
            **lora_fingerprint(get_peft_model_state_dict(model)),
        }
        (OUT_DIR / f"rank{record['rank']}.json").write_text(json.dumps(record))
        return trainer

    return wrapped


def main() -> int:
    from sarashina_grpo import cli, pipeline
    from sarashina_grpo.rewards import REWARD_FUNCS

    REWARD_FUNCS["text_hash"] = text_hash_reward
    pipeline.run_training = record_after_training(pipeline.run_training)
    code = cli.main(["train", *sys.argv[2:]])
    record_path = OUT_DIR / f"rank{RANK}.json"
    if record_path.exists():  # what the command left behind: an open process group can abort the exit
        import torch.distributed as dist

        record = json.loads(record_path.read_text())
        record.update(exit_code=code, process_group_open=dist.is_initialized())
        record_path.write_text(json.dumps(record))
    return code


if __name__ == "__main__":
    sys.exit(main())
