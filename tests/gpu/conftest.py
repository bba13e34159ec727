"""Fixtures of the GPU suite: models built on the GPU, a reward that always varies, a runner for the CLI.

These tests run the production path (Unsloth's patched trainer, its kernels, the CUDA-graph rollout, 4-bit weights,
several processes), which a CPU never reaches. They skip without CUDA; ``scripts/gpu_suite.sh`` runs them on a GPU
machine in one go.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPTS = "prompt,lang\n" + "".join(f"今日の予定{i}について教えてください。,ja\n" for i in range(24))


def text_hash_reward(completions, **kwargs) -> list[float]:
    """A reward in [0, 1) that changes with any change of the text: random models score 0 on every format reward,
    and zero advantages would leave the LoRA weights where they started."""
    from sarashina_grpo.rewards import completion_text

    return [zlib.crc32(completion_text(c).encode()) % 1000 / 1000 for c in completions]


@pytest.fixture(scope="session")
def text_hash():
    """Register ``text_hash`` in the reward registry for in-process runs (the CLI runs use tests/multigpu_worker.py,
    which registers the same idea)."""
    from sarashina_grpo.rewards import REWARD_FUNCS

    REWARD_FUNCS["text_hash"] = text_hash_reward
    yield "text_hash"
    REWARD_FUNCS.pop("text_hash", None)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory) -> Path:
    """The suite's quick bf16 model (random weights, head_dim 64), built on the GPU."""
    from sarashina_grpo.tiny import build_model

    return build_model(tmp_path_factory.mktemp("models") / "small", "small")


@pytest.fixture(scope="session")
def model_3b_dir(tmp_path_factory) -> Path:
    """The Sarashina 2.2 3B shape (random weights): ``$SARASHINA_GRPO_3B`` when the suite script built it already."""
    given = os.environ.get("SARASHINA_GRPO_3B")
    if given and (Path(given) / "config.json").exists():
        return Path(given)
    from sarashina_grpo.tiny import build_model

    return build_model(tmp_path_factory.mktemp("models") / "sarashina-3b", "sarashina-3b")


@pytest.fixture(scope="session")
def prompts_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "prompts.csv"
    path.write_text(PROMPTS, encoding="utf-8")
    return path


def cli_env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture
def run_cli():
    """Run ``python -m sarashina_grpo ARGS`` (or a script) to the end; return the CompletedProcess."""

    def run(*args, timeout=300, script=None, env=None):
        command = [sys.executable, *( [str(script)] if script else ["-m", "sarashina_grpo"]), *map(str, args)]
        done = subprocess.run(command, cwd=REPO_ROOT, env=env or cli_env(), capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        return done

    return run
