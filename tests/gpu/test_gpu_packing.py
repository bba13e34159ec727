"""Asked for (``SARASHINA_GRPO_PACKING_CHECK=1``), Unsloth's sequence packing is checked once, before the first step,
not again on each longer batch (``modeling.check_packing``; the CPU version of its logic is tests/test_packing.py).

Unsloth's compiled trainer compares its packed forward with one forward per row whenever a batch is longer than any
it compared before, and prints each comparison under ``UNSLOTH_ENABLE_LOGGING=1``. Two short runs of
``sarashina-grpo train`` in that mode: by default (the check left to Unsloth) the comparisons show up (so counting
them can fail); with the check, none does,
the run says it checked once, and it trains to the end. (Unsloth's prefix grouping, when it engages, verifies its own
layout separately; that is not counted here.)

    pytest -m gpu tests/gpu/test_gpu_packing.py
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from sarashina_grpo.modeling import PACKING_CHECK_VARIABLE

from .conftest import REPO_ROOT, cli_env
from .test_gpu_runs import WORKER, train_args

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_suite.sh)")]

UNSLOTH_CHECK = re.compile(r"\[Unsloth\] GRPO seq-packing \((no-)?grad\) verify")


def train_logged(tmp_path, small_model_dir, prompts_csv, name, *extra, packing_check: str | None = None) -> str:
    env = cli_env(UNSLOTH_ENABLE_LOGGING="1")
    env.pop(PACKING_CHECK_VARIABLE, None)  # None: the default, whatever the calling shell set
    if packing_check is not None:
        env[PACKING_CHECK_VARIABLE] = packing_check
    out_dir = tmp_path / name
    out_dir.mkdir()
    done = subprocess.run([sys.executable, str(WORKER), str(out_dir),
                           *map(str, train_args(small_model_dir, prompts_csv, tmp_path / "artifact", name, 3, *extra))],
                          cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout + done.stderr


def test_by_default_unsloth_checks_packing_on_its_own(tmp_path, small_model_dir, prompts_csv):
    log = train_logged(tmp_path, small_model_dir, prompts_csv, "unsloth-checks")
    assert UNSLOTH_CHECK.search(log), log[-4000:]
    assert "Sequence packing checked once" not in log


def test_with_the_upfront_check_unsloth_never_checks_during_training(tmp_path, small_model_dir, prompts_csv):
    # two optimizer steps per generation: TRL scores 8 rows at once, the loss packs 4 (both are checked)
    log = train_logged(tmp_path, small_model_dir, prompts_csv, "checked-once", "--gradient-accumulation-steps", 2,
                       packing_check="1")
    assert "Sequence packing checked once" in log, log[-4000:]
    assert not UNSLOTH_CHECK.search(log), UNSLOTH_CHECK.search(log).group(0)
    assert "fell back" not in log  # packing stayed on: the check trusted what Unsloth would have trusted
