"""Once Unsloth's own sequence-packing checks pass, it never checks again mid-run (``callbacks.PackingTrust``; the
CPU side of its logic is tests/test_packing.py), and training runs with gradient checkpointing's saved inputs
offloaded (the default) and on the GPU (``--no-offload-activations``, ``Settings.offload_activations``).

Unsloth's compiled trainer compares its packed forward with one forward per row on its first batch and, left alone,
on every later batch longer than any before; under ``UNSLOTH_ENABLE_LOGGING=1`` it prints each comparison. Two short
runs of ``sarashina-grpo train`` side by side, each with stdout and stderr in one stream so that their order holds:
Unsloth's comparisons are printed (so counting them can fail), all before the run says the checks passed, none after.

    pytest -m gpu tests/gpu/test_gpu_packing.py
"""

from __future__ import annotations

import re
import shlex
import sys

import pytest
import torch

from .conftest import Started, cli_env
from .test_gpu_runs import WORKER, train_args

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_suite.sh)")]

UNSLOTH_CHECK = re.compile(r"\[Unsloth\] GRPO seq-packing \((no-)?grad\) verify")
TRUSTED = re.compile(r"Unsloth's sequence-packing checks passed at step (\d+)")
STEPS = 6


def train_logged(tmp_path, small_model_dir, prompts_csv, name, *extra) -> Started:
    """``sarashina-grpo train`` with Unsloth's logging on, started now, its two streams in one."""
    out_dir = tmp_path / name
    out_dir.mkdir()
    command = [sys.executable, WORKER, out_dir, *train_args(small_model_dir, prompts_csv, out_dir / "artifact", name,
                                                             STEPS, "--temperature", 1.5, *extra)]
    return Started(["bash", "-c", "exec " + shlex.join(map(str, command)) + " 2>&1"],
                   env=cli_env(UNSLOTH_ENABLE_LOGGING="1"))


@pytest.fixture(scope="module")
def logs(tmp_path_factory, small_model_dir, prompts_csv) -> dict[str, str]:
    tmp_path = tmp_path_factory.mktemp("packing")
    started = {
        "default": train_logged(tmp_path, small_model_dir, prompts_csv, "default"),
        # two optimizer steps per generation: TRL scores 8 rows at once, the loss packs 4
        "on-gpu": train_logged(tmp_path, small_model_dir, prompts_csv, "on-gpu", "--no-offload-activations",
                               "--gradient-accumulation-steps", 2),
    }
    return {name: run.ok().stdout for name, run in started.items()}


@pytest.mark.parametrize("run", ["default", "on-gpu"])
def test_unsloth_checks_packing_until_its_checks_pass_and_never_again(logs, run):
    log = logs[run]
    trusted = TRUSTED.search(log)
    assert trusted, log[-4000:]
    assert int(trusted.group(1)) < STEPS
    assert UNSLOTH_CHECK.search(log[:trusted.start()]), log[-4000:]  # Unsloth's comparisons are there to count
    later = UNSLOTH_CHECK.search(log[trusted.end():])
    assert later is None, later.group(0)
    assert "fell back" not in log  # packing stayed on
