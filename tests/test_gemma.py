"""Gemma 3 270M, a multilingual base model that is not a Llama, through every command on the CPU: `convert-gguf gemma3`
writes a folder whose tokenizer and template are Gemma's, and warmstart, train, eval, infer and export (adapter and
merged) all take it. Tiny numbers: 268M parameters on 2 CPU cores (docs/real-model.md has the times)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# The commands after the conversion run in one interpreter (cli.main once per command): each process would spend
# most of its time importing Unsloth, TRL and transformers again.
COMMANDS = """
import json, sys
from sarashina_grpo.cli import main
for argv in json.loads(sys.argv[1]):
    print("== " + " ".join(argv), file=sys.stderr, flush=True)
    code = main(argv)
    if code:
        sys.exit(f"{argv[0]} exited with {code}")
"""


def run(*args, timeout=900, cwd=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    """Gemma 3 270M converted by the project's command from the installed package (about 100 s on 2 cores)."""
    out = tmp_path_factory.mktemp("gemma") / "gemma3"
    result = run("-m", "sarashina_grpo.cli", "convert-gguf", "gemma3", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.timeout(600)
def test_the_converted_folder_is_gemma_with_its_bos_template_and_end_tokens(gemma_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sarashina_grpo.purity import japanese_purity

    config = json.loads((gemma_dir / "config.json").read_text())
    generation = json.loads((gemma_dir / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    # why: the header's ids (bos 2, eos 1, pad 0); a turn ends at <eos> or at Gemma's <end_of_turn> (106)
    assert (config["architectures"], config["bos_token_id"], config["eos_token_id"], config["pad_token_id"],
            generation["eos_token_id"]) == (["Gemma3ForCausalLM"], 2, 1, 0, [1, 106])
    ids = tokenizer("Hello world").input_ids
    # why: <bos> first (without it the base model answers junk), and whole words as Gemma's BPE merges them
    assert tokenizer.convert_ids_to_tokens(ids) == ["<bos>", "Hello", "▁world"]
    text = tokenizer.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                                         add_generation_prompt=True, tokenize=False)
    assert text == "<bos><start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\n"
    model = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32)
    inputs = tokenizer("今日はとても疲れたので、", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert japanese_purity(answer) > 0.8, answer  # real multilingual weights: it goes on in Japanese


@pytest.mark.timeout(1500)
def test_warmstart_train_eval_infer_and_export_take_the_gemma_folder(gemma_dir, tmp_path, repo_root):
    artifact, warm = tmp_path / "artifact", tmp_path / "warm"
    checkpoint = artifact / "outputs" / "gemma" / "checkpoint-1"
    tiny = ["--max-new-tokens", "8", "--no-4bit"]
    commands = [
        ["warmstart", "--model", str(gemma_dir), "--output", str(warm), "--data",
         "datasets/format_examples_mixed.jsonl", "--steps", "1", "--batch-size", "2", "--lora-rank", "4"],
        # One GRPO step of 2 completions of 8 tokens with the Japanese rewards; --rollout fast on a Gemma model
        ["train", "--model", str(warm), "--no-4bit", "--rewards", "xmlcount,soft_format,strict_format,japanese_purity",
         "--rollout", "fast", "--max-steps", "1", "--num-generations", "2", "--batch-size", "2",
         "--max-completion-length", "8", "--save-steps", "1", "--no-log-completions", "--artifact-dir",
         str(artifact), "--run-name", "gemma"],
        ["eval", "--model", str(checkpoint), *tiny, "--limit", "2", "--artifact-dir", str(artifact), "--name", "g"],
        ["infer", "--model", str(checkpoint), *tiny, "日本の首都はどこですか？"],
        ["export", str(checkpoint), str(tmp_path / "adapter")],
        ["export", str(checkpoint), str(tmp_path / "merged"), "--merged"],
    ]
    result = run("-c", COMMANDS, json.dumps(commands), timeout=1400, cwd=repo_root)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "rollout='fast' decodes llama/mistral models only; this gemma3_text model uses the default rollout." \
        in result.stderr  # why: the fast engine is Llama's; the run says so in one line and goes on
    adapter = json.loads((checkpoint / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])  # Gemma 3's projections
    metrics = json.loads((artifact / "eval" / "g" / "metrics.json").read_text())
    assert metrics["n"] == 2 and "think_japanese_rate" in metrics
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    merged = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert (merged["architectures"], merged["dtype"]) == (["Gemma3ForCausalLM"], "bfloat16")
