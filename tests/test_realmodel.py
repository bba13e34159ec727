"""convert-gguf: a wrong request fails in a second with one `error:` line; the packaged SmolLM2 GGUF becomes a model
folder that the project's own commands (greedy answer, GRPO steps, evaluation) take as --model."""

import json
import subprocess
import sys

import pytest
from gguf_files import write_gguf

from sarashina_grpo.realmodel import DEFAULT_PACKAGE, PACKAGES, packaged_gguf


def cli(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "sarashina_grpo.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def test_the_smollm2_gguf_is_found_in_the_installed_package():
    # why: the default source needs no path, and the package's own __init__ (which imports `llm`) is never run
    assert packaged_gguf().name == PACKAGES[DEFAULT_PACKAGE].file and packaged_gguf().stat().st_size > 90_000_000


def test_a_missing_gguf_file_is_one_error_line(tmp_path):
    result = cli("convert-gguf", str(tmp_path / "nothing.gguf"), str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.strip().startswith("error: GGUF file not found")


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    result = cli("convert-gguf", str(fake), str(tmp_path / "out"))
    assert result.returncode == 2 and "is not a GGUF file" in result.stderr.strip().splitlines()[-1]


def test_an_unsupported_architecture_is_refused_before_loading(tmp_path):
    result = cli("convert-gguf", str(write_gguf(tmp_path / "gpt2.gguf", "gpt2")), str(tmp_path / "out"))
    assert result.returncode == 2 and "architecture 'gpt2' is not supported" in result.stderr


def test_a_cut_off_gguf_is_refused_naming_the_cause(tmp_path):
    from sarashina_grpo.project import SettingsError
    from sarashina_grpo.realmodel import check_gguf

    cut = tmp_path / "cut.gguf"
    with packaged_gguf().open("rb") as source:
        cut.write_bytes(source.read(100_000))  # inside the header: the token list alone is megabytes
    with pytest.raises(SettingsError, match="the file may be cut off"):
        check_gguf(cut)


def test_a_non_empty_output_folder_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = cli("convert-gguf", str(tmp_path / "out"))
    assert result.returncode == 2 and "is not an empty folder" in result.stderr


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct converted by the project's command (about 35 s on 2 cores)."""
    out = tmp_path_factory.mktemp("real") / "smollm2"
    result = cli("convert-gguf", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_converted_folder_is_a_plain_llama_that_stops_at_its_own_end_token(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm2_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    # why: transformers reads the GGUF's eos as <|im_start|>; the header's id 2 (<|im_end|>) is what ChatML ends with
    assert (config["architectures"], tokenizer.eos_token, config["eos_token_id"]) == (
        ["LlamaForCausalLM"], "<|im_end|>", 2)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:])
    assert "Paris" in answer and answer.endswith("<|im_end|>")  # real weights: a right answer, then it stops


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_grpo_step_and_an_evaluation_run_on_the_converted_model(smollm2_dir, tmp_path, repo_root):
    artifact, system = tmp_path / "artifact", str(repo_root / "configs" / "prompts" / "system_en.txt")
    # One GRPO step of 2 completions of 8 tokens: 135M parameters on 2 CPU cores, so the smallest real step.
    train = cli("train", "--model", str(smollm2_dir), "--no-4bit", "--system-prompt-file", system, "--rewards",
                "xmlcount,soft_format,strict_format", "--max-steps", "1", "--num-generations", "2", "--batch-size",
                "2", "--max-completion-length", "8", "--save-steps", "1", "--no-log-completions", "--artifact-dir",
                str(artifact), "--run-name", "real", cwd=repo_root)
    assert train.returncode == 0, train.stderr[-3000:]
    checkpoint = artifact / "outputs" / "real" / "checkpoint-1"
    evaluation = cli("eval", "--model", str(checkpoint), "--no-4bit", "--system-prompt-file", system, "--limit", "4",
                     "--max-new-tokens", "8", "--artifact-dir", str(artifact), "--name", "real", cwd=repo_root)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert json.loads((artifact / "eval" / "real" / "metrics.json").read_text())["n"] == 4
