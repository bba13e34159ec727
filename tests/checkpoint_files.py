"""Checkpoint folders written by hand, file for file like transformers' Trainer writes them, in milliseconds.

Used by tests/test_checkpoints.py and tests/test_resume.py (tests/ is on sys.path under pytest).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

COMPLETE_MARKER = "checkpoint_complete"  # spelled out: the tests check the module's constant against it


def find_resume_checkpoint(artifact_dir, resume) -> tuple[Path, Path]:
    """(run folder, checkpoint) a resume continues from, as ``pipeline.prepare`` finds them (without the lock)."""
    from sarashina_grpo.checkpoints import choose_resume_checkpoint, locate_resume

    run_dir, named = locate_resume(artifact_dir, resume)
    return run_dir, choose_resume_checkpoint(run_dir, named)


def write_adapter(folder: Path, value: float = 0.01) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.full((4, 8), value),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(8, 4)}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))


def write_trainer_files(folder: Path, step: int) -> None:
    """optimizer.pt, scheduler.pt and rng_state.pth with the shapes and types the Trainer saves."""
    import numpy as np
    import torch

    torch.save({"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.zeros(4, 8)}},
                "param_groups": [{"lr": 5e-6, "betas": (0.9, 0.99), "params": [0]}]}, folder / "optimizer.pt")
    torch.save({"last_epoch": step, "base_lrs": [5e-6], "_last_lr": [5e-6]}, folder / "scheduler.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()},
               folder / "rng_state.pth")


def make_checkpoint(run_dir: Path, step: int, *, marker=True, state=True, weights=True, trainer_files=True,
                    value: float = 0.01) -> Path:
    folder = Path(run_dir) / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if weights:
        write_adapter(folder, value)
    if trainer_files:
        write_trainer_files(folder, step)
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    if marker:
        (folder / COMPLETE_MARKER).write_text(f"{step}\n")
    return folder
