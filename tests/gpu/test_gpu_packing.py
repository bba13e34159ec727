"""Asked for (``SARASHINA_GRPO_PACKING_CHECK=1``), Unsloth's sequence packing is checked once, before the first step,
not again on each longer batch (``modeling.check_packing``; the CPU version of its logic is tests/test_packing.py).

Unsloth's compiled trainer compares its packed forward with one forward per row whenever a batch is longer than any
it compared before, and prints each comparison under ``UNSLOTH_ENABLE_LOGGING=1``. Two short runs of
``sarashina-grpo train`` in that mode, side by side: by default (the check left to Unsloth) the comparisons show up
(so counting them can fail); with the check, none does,
the run says it checked once, and it trains to the end. (Unsloth's prefix grouping, when it engages, verifies its own
layout separately; that is not counted here.)

    pytest -m gpu tests/gpu/test_gpu_packing.py
"""

from __future__ import annotations

import re
import sys

import pytest
import torch

from sarashina_grpo.modeling import PACKING_CHECK_VARIABLE

from .conftest import Started, cli_env
from .test_gpu_runs import WORKER, train_args

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_suite.sh)")]

UNSLOTH_CHECK = re.compile(r"\[Unsloth\] GRPO seq-packing \((no-)?grad\) verify")


def train_logged(tmp_path, small_model_dir, prompts_csv, name, *extra, packing_check: str | None = None) -> Started:
    """``sarashina-grpo train`` for 3 steps with Unsloth's logging on, started now."""
    env = cli_env(UNSLOTH_ENABLE_LOGGING="1")
    env.pop(PACKING_CHECK_VARIABLE, None)  # None: the default, whatever the calling shell set
    if packing_check is not None:
        env[PACKING_CHECK_VARIABLE] = packing_check
    out_dir = tmp_path / name
    out_dir.mkdir()
    return Started([sys.executable, WORKER, out_dir,
                    *train_args(small_model_dir, prompts_csv, out_dir / "artifact", name, 3, *extra)], env=env)


@pytest.fixture(scope="module")
def logs(tmp_path_factory, small_model_dir, prompts_csv) -> dict[str, str]:
    """The output of both runs, started together."""
    tmp_path = tmp_path_factory.mktemp("packing")
    started = {
        "unsloth-checks": train_logged(tmp_path, small_model_dir, prompts_csv, "unsloth-checks"),
        # two optimizer steps per generation: TRL scores 8 rows at once, the loss packs 4 (both are checked)
        "checked-once": train_logged(tmp_path, small_model_dir, prompts_csv, "checked-once",
                                     "--gradient-accumulation-steps", 2, packing_check="1"),
    }
    outputs = {}
    for name, run in started.items():
        done = run.ok()
        outputs[name] = done.stdout + done.stderr
    return outputs


def test_by_default_unsloth_checks_packing_on_its_own(logs):
    log = logs["unsloth-checks"]
    assert UNSLOTH_CHECK.search(log), log[-4000:]
    assert "Sequence packing checked once" not in log


def test_with_the_upfront_check_unsloth_never_checks_during_training(logs):
    log = logs["checked-once"]
    assert "Sequence packing checked once" in log, log[-4000:]
    assert not UNSLOTH_CHECK.search(log), UNSLOTH_CHECK.search(log).group(0)
    assert "fell back" not in log  # packing stayed on: the check trusted what Unsloth would have trusted
