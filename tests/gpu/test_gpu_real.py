"""Real weights on a GPU (docs/real-model.md): SmolLM2-135M-Instruct as ``convert-gguf`` writes it. Random weights
never stop and have many bf16 near-ties; a trained model stops at its own end-of-sequence and mostly has clear
winners, so these checks see what the random-weight ones cannot.

They need the converted folder: ``SARASHINA_GRPO_REAL_MODEL=<folder>`` (``sarashina-grpo convert-gguf <folder>``),
or ``SARASHINA_GRPO_REAL_GGUF=<file.gguf>`` to convert it here; they skip without one. The export check's training
command starts before the rollout check loads its model, and runs beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import (
    NEAR_TIE,
    REPO_ROOT,
    Started,
    agree_up_to_near_ties,
    cli_env,
    greedy_default_and_fast,
    greedy_trainer,
    margins,
    prompt_ids,
)

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_suite.sh)"),
              pytest.mark.skipif(not (os.environ.get("SARASHINA_GRPO_REAL_MODEL")
                                      or os.environ.get("SARASHINA_GRPO_REAL_GGUF")),
                                 reason="needs SARASHINA_GRPO_REAL_MODEL (a convert-gguf folder) or _REAL_GGUF")]

SYSTEM_EN = REPO_ROOT / "configs" / "prompts" / "system_en.txt"
NEW_TOKENS = 96


@pytest.fixture(scope="module")
def real_training(real_model_dir, tmp_path_factory) -> tuple[Started, Path]:
    """``sarashina-grpo train`` for 2 steps (lr 1e-3, so that the LoRA moves) with a checkpoint at step 2, started
    now; (the command, its artifact folder)."""
    artifact = tmp_path_factory.mktemp("real-train")
    command = [sys.executable, "-m", "sarashina_grpo", "train", "--model", real_model_dir, "--no-4bit",
               "--system-prompt-file", SYSTEM_EN, "--rewards", "xmlcount,soft_format,strict_format",
               "--artifact-dir", artifact, "--run-name", "real", "--max-steps", 2, "--save-steps", 2,
               "--max-completion-length", 64, "--learning-rate", 1e-3]
    return Started(command, timeout=600), artifact


@pytest.fixture(scope="module")
def real_trainer(real_model_dir, real_training, tmp_path_factory):
    from sarashina_grpo.config import article_settings

    settings = article_settings(model_name=str(real_model_dir), load_in_4bit=False, max_completion_length=NEW_TOKENS,
                        max_steps=1, save_steps=1000, system_prompt_file=str(SYSTEM_EN), rollout="default",
                        reward_names=("xmlcount", "soft_format", "strict_format"))
    return greedy_trainer(settings, tmp_path_factory.mktemp("real-rollout"))


def test_fast_and_default_greedy_tokens_agree_on_real_weights(real_trainer):
    trainer = real_trainer
    prompts = prompt_ids(trainer, n=8)
    default, fast, _ = greedy_default_and_fast(trainer, prompts, NEW_TOKENS)
    agreed, total = agree_up_to_near_ties(default, fast, margins(trainer, prompts, default))
    # Sharper than the top-2 gap: where the paths part, the fast path's token must itself be a near-winner of the
    # default model's logits after the common prefix (a wrong mask or LoRA term picks a clearly worse token).
    os.environ["UNSLOTH_RETURN_HIDDEN_STATES"] = "0"
    for row, (prompt, d, f) in enumerate(zip(prompts, default, fast, strict=True)):
        at = next((i for i, (x, y) in enumerate(zip(d, f, strict=False)) if x != y), None)
        if at is None:
            continue
        with torch.no_grad():
            logits = trainer.model(input_ids=torch.tensor([prompt + d[:at]], device="cuda")).logits[0, -1].float()
        behind = float((logits.max() - logits[f[at]]) / logits.max().abs())
        print(f"row {row}: parts at token {at}; the fast token is {behind:.4f} of the top logit behind")
        assert behind < NEAR_TIE, f"row {row}: the fast path chose a token {behind:.4f} behind the top logit"
    identical = sum(d == f for d, f in zip(default, fast, strict=True))
    print(f"real weights: {identical}/{len(default)} completions identical, {agreed}/{total} tokens before a parting")
    assert agreed >= total // 4  # why: most of the decode must be compared, or the test proves little
    assert any(ids[-1] in trainer.eos_token_ids for ids in default), "no greedy answer ended at the model's EOS"


MERGED_CHECK = """
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
merged_dir, checkpoint, base_dir, out = sys.argv[1:]
tok = AutoTokenizer.from_pretrained(merged_dir)
system = open("configs/prompts/system_en.txt", encoding="utf-8").read().strip()
prompts = ["今日の天気について教えてください。", "好きな食べ物は何ですか？", "What is 12 + 30?",
           "日本の首都はどこですか？"]
ids = [tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": p}],
                               add_generation_prompt=True, tokenize=True, return_dict=False) for p in prompts]
def greedy(model):
    rows, gaps = [], []
    for prompt in ids:
        x = torch.tensor([prompt], device="cuda")
        y = model.generate(x, max_new_tokens=48, do_sample=False, pad_token_id=tok.pad_token_id)[0, len(prompt):]
        rows.append(y.tolist())
    return rows
def margins(model, rows):
    out = []
    with torch.no_grad():
        for prompt, row in zip(ids, rows):
            x = torch.tensor([prompt + row], device="cuda")
            logits = model(input_ids=x).logits[0, len(prompt) - 1: len(prompt) + len(row) - 1].float()
            top = logits.topk(2, dim=-1).values
            out.append(((top[:, 0] - top[:, 1]) / top[:, 0].abs().clamp(min=1e-6)).tolist())
    return out
merged = AutoModelForCausalLM.from_pretrained(merged_dir).cuda().eval()
base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=merged.dtype).cuda()
adapter = PeftModel.from_pretrained(base, checkpoint).eval()
reference = greedy(adapter)
json.dump(dict(dtype=str(merged.dtype), merged=greedy(merged), adapter=reference,
               margins=margins(adapter, reference)), open(out, "w"))
"""


def test_a_real_checkpoint_exports_merged_and_generates_what_the_adapter_generates(real_model_dir, real_training,
                                                                                  run_cli, tmp_path):
    training, artifact = real_training
    training.ok()
    checkpoint = artifact / "outputs" / "real" / "checkpoint-2"
    merged = tmp_path / "merged"
    run_cli("export", checkpoint, merged, "--merged")
    result = tmp_path / "greedy.json"
    # a fresh interpreter that never imported Unsloth: the merged model against base + adapter in plain PEFT
    done = subprocess.run([sys.executable, "-c", MERGED_CHECK, str(merged), str(checkpoint), str(real_model_dir),
                           str(result)], cwd=REPO_ROOT, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    got = json.loads(result.read_text())
    assert got["dtype"] == "torch.bfloat16"
    agreed, total = agree_up_to_near_ties(got["adapter"], got["merged"], got["margins"])
    identical = sum(a == m for a, m in zip(got["adapter"], got["merged"], strict=True))
    print(f"merged export: {identical}/{len(got['merged'])} completions identical, {agreed}/{total} tokens")
    # why: merging moves each weight by one bf16 rounding at most; the greedy answers must be the adapter's
    assert agreed >= total // 2
