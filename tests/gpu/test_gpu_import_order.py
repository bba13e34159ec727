"""The command line reads its flags with transformers' ``HfArgumentParser`` before Unsloth is imported; Unsloth's
patches must come out the same as when Unsloth is imported first (``cli.py``'s docstring says why they should).

Two processes, side by side, run ``sarashina-grpo train`` on the small model through ``cli.main`` up to the built
trainer (``import_order_probe.py``): one in the command line's own order, one with ``import unsloth`` first. Both
record which trainer class ``trl.GRPOTrainer`` is and every function of transformers' Llama classes, ``Trainer``,
PEFT's and TRL's classes, and where it is defined, then stop: what is compared is fixed once the trainer exists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from .conftest import Started

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_suite.sh)")]

PROBE = Path(__file__).with_name("import_order_probe.py")


@pytest.fixture(scope="module")
def recorded(small_model_dir, prompts_csv, tmp_path_factory):
    started = {}
    for mode in ("cli-first", "unsloth-first"):
        out = tmp_path_factory.mktemp(mode)
        command = [sys.executable, PROBE, mode, out / "patched.json", "--model", small_model_dir, "--data",
                   prompts_csv, "--max-steps", "1", "--save-steps", "1000", "--max-completion-length", "16",
                   "--no-log-completions", "--report-to", "none", "--artifact-dir", out, "--run-name", mode]
        started[mode] = (Started(command), out)
    found = {}
    for mode, (probe, out) in started.items():
        done = probe.ok()
        found[mode] = json.loads((out / "patched.json").read_text(encoding="utf-8"))
        found[mode]["stderr"] = done.stderr
    return found


def test_the_command_line_imports_unsloth_before_trl_peft_and_transformers_model_code(recorded):
    # why: Unsloth patches TRL, PEFT and transformers' model classes as they are imported; `train` reads its flags with
    # TRL's parser (a transformers HfArgumentParser), so that parser too comes only after Unsloth
    loaded = recorded["cli-first"]["loaded_before_unsloth"]
    assert not [m for m in loaded if m.split(".")[0] in ("trl", "peft")], loaded
    assert "transformers.modeling_utils" not in loaded and "transformers.hf_argparser" not in loaded, loaded
    assert recorded["unsloth-first"]["loaded_before_unsloth"] == []


def test_unsloth_patched_something_to_compare(recorded):
    # why: two empty records would compare equal; Unsloth replaces TRL's trainer and Llama's forward passes
    first = recorded["unsloth-first"]
    patched = [key for key, where in first["functions"].items() if "unsloth" in where.lower()]
    assert "UnslothGRPOTrainer" in first["trl.GRPOTrainer"] and len(patched) >= 5, first


def test_reading_the_flags_first_leaves_unsloths_patches_as_they_are(recorded):
    cli_first, unsloth_first = recorded["cli-first"], recorded["unsloth-first"]
    for key in ("trl.GRPOTrainer", "trainer_class", "model_forward"):
        assert cli_first[key] == unsloth_first[key], key
    # why: every function of the patched classes, defined in the same place either way (Unsloth's or the library's)
    differ = {k: (cli_first["functions"].get(k), v) for k, v in unsloth_first["functions"].items()
              if cli_first["functions"].get(k) != v}
    assert differ == {} and set(cli_first["functions"]) == set(unsloth_first["functions"])


def test_unsloths_order_warning_is_hidden_only_for_the_parser(recorded):
    # why: noise.import_unsloth hides "imported before [transformers]" when only the parser came first
    assert "Unsloth should be imported before" not in recorded["cli-first"]["stderr"]
