"""Whole commands on a GPU, as a user runs them: train is killed and resumed, its checkpoint exported merged and
loaded by plain transformers; a card without bf16 trains in fp16; with two GPUs, two processes on the Unsloth
backend keep identical LoRA weights, survive a kill and resume, and their checkpoint serves on one GPU.

The fp16 run starts with the kill-and-resume runs and trains beside them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from .conftest import REPO_ROOT, Started, cli_env

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_suite.sh)")]

WORKER = REPO_ROOT / "tests" / "multigpu_worker.py"  # sarashina-grpo train + a varying reward + a LoRA record
COMPLETE = "checkpoint_complete"
def two_gpus(test):
    return pytest.mark.two_gpus(pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")(test))


def train_args(model_dir, data, artifact_dir, run_name, steps, *extra):
    return ["--model", model_dir, "--no-4bit", "--data", data, "--artifact-dir", artifact_dir, "--run-name", run_name,
            "--max-steps", steps, "--save-steps", 2, "--max-completion-length", 32, "--num-generations", 2,
            "--batch-size", 4, "--learning-rate", 1e-4, "--rewards", "xmlcount,text_hash", *extra]


def launcher(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO_ROOT / "configs" / "accelerate" / "multi_gpu.yaml"), "--num_processes", str(processes),
            "--main_process_port", str(port)]


def start(processes, out_dir, args) -> subprocess.Popen:
    out_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([*launcher(processes), str(WORKER), str(out_dir), *map(str, args)], cwd=REPO_ROOT,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(process, timeout=400) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-6000:]
    return output


def kill_after_checkpoint(process, run_dir: Path, step: int, timeout=400) -> None:
    """SIGKILL the whole process group as soon as checkpoint-``step`` is complete: no chance to save."""
    deadline = time.time() + timeout
    while not (run_dir / f"checkpoint-{step}" / COMPLETE).exists():
        assert process.poll() is None, process.stdout.read()[-6000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def ranks(out_dir: Path, n: int) -> list[dict]:
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(n)]


def kill_and_resume(processes, tmp_path, small_model_dir, prompts_csv):
    artifact, run_dir = tmp_path / "artifact", tmp_path / "artifact" / "outputs" / "run"
    args = train_args(small_model_dir, prompts_csv, artifact, "run", 6)
    kill_after_checkpoint(start(processes, tmp_path / "first", args), run_dir, 2)
    output = finish(start(processes, tmp_path / "resumed", [*args, "--resume", "run"]))
    return run_dir, ranks(tmp_path / "resumed", processes), output


@pytest.fixture(scope="module")
def fp16_run(tmp_path_factory, small_model_dir, prompts_csv) -> tuple[Started, Path, Path]:
    """``train`` for 2 steps with ``$SARASHINA_GRPO_PRECISION=fp16``, started now; (the command, its record folder,
    its artifact folder)."""
    tmp_path = tmp_path_factory.mktemp("fp16")
    out_dir, artifact = tmp_path / "fp16", tmp_path / "artifact"
    out_dir.mkdir()
    # Unsloth's generated source for an fp16 model may differ from the bf16 runs' beside it: a folder of its own.
    env = cli_env(SARASHINA_GRPO_PRECISION="fp16", UNSLOTH_COMPILE_LOCATION=str(tmp_path / "unsloth_compiled_cache"))
    command = [sys.executable, WORKER, out_dir, *train_args(small_model_dir, prompts_csv, artifact, "fp16", 2)]
    return Started(command, env=env), out_dir, artifact


@pytest.fixture(scope="module")
def ctrl_c_run(tmp_path_factory, small_model_dir, prompts_csv) -> tuple[subprocess.Popen, Path]:
    """``train`` for up to 40 steps, started now; a thread presses Ctrl-C (SIGINT to the process group, as a
    terminal does) once checkpoint-2 is complete. (the command, its run folder)"""
    tmp_path = tmp_path_factory.mktemp("ctrl_c")
    artifact = tmp_path / "artifact"
    env_dir = tmp_path / "unsloth_compiled_cache"  # a folder of its own, as the fp16 run has
    (tmp_path / "out").mkdir()
    process = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "out"),
                                *map(str, train_args(small_model_dir, prompts_csv, artifact, "run", 40))],
                               cwd=REPO_ROOT, env=cli_env(UNSLOTH_COMPILE_LOCATION=str(env_dir)),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run_dir = artifact / "outputs" / "run"

    def press_ctrl_c():
        deadline = time.time() + 400
        while process.poll() is None and time.time() < deadline:
            if (run_dir / "checkpoint-2" / COMPLETE).exists():
                os.killpg(process.pid, signal.SIGINT)
                return
            time.sleep(0.2)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    return process, run_dir


@pytest.fixture(scope="module")
def one_gpu_resumed(tmp_path_factory, small_model_dir, prompts_csv, fp16_run, ctrl_c_run):
    return kill_and_resume(1, tmp_path_factory.mktemp("one"), small_model_dir, prompts_csv)


def test_ctrl_c_on_unsloths_trainer_saves_the_running_step_and_says_so(ctrl_c_run):
    process, run_dir = ctrl_c_run
    output, _ = process.communicate(timeout=400)
    saved = sorted(int(c.name.split("-")[1]) for c in run_dir.glob("checkpoint-*") if (c / COMPLETE).exists())
    # why: the CPU tests stop TRL's plain trainer; this is the compiled trainer a user's Ctrl-C meets. The handler's
    # line must be printed (a GPU run of the Japanese proof once ended without it) and the step it names saved.
    assert process.returncode == 130 and "SIGINT: stopping after step" in output, output[-6000:]
    assert saved and 2 < saved[-1] < 40, (saved, output[-3000:])
    assert f"Stopped by SIGINT at step {saved[-1]}" in output, output[-3000:]


def test_a_killed_run_resumes_to_its_last_step(one_gpu_resumed):
    run_dir, (rank0,), _ = one_gpu_resumed
    # why: SIGKILL leaves no chance to save; the resume must start from checkpoint-2 (or later) and reach step 6
    assert rank0["global_step"] == 6 and (run_dir / "checkpoint-6" / COMPLETE).exists()
    assert rank0["lora_b_abs_sum"] > 0


def test_a_gpu_checkpoint_exports_merged_and_loads_in_plain_transformers(one_gpu_resumed, run_cli, tmp_path,
                                                                         small_model_dir):
    run_dir, _, _ = one_gpu_resumed
    out = tmp_path / "merged"
    run_cli("export", run_dir / "checkpoint-6", out, "--merged")
    check = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "merged = AutoModelForCausalLM.from_pretrained(sys.argv[1]).cuda()\n"
        "base = AutoModelForCausalLM.from_pretrained(sys.argv[2]).cuda()\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = tok('こんにちは', return_tensors='pt').input_ids.cuda()\n"
        "out = merged.generate(ids, max_new_tokens=8, do_sample=False)\n"
        "w = lambda m: m.model.layers[0].self_attn.q_proj.weight.float()\n"
        "print(out.shape[1] - ids.shape[1], merged.dtype, (w(merged) - w(base)).abs().max().item())\n"
    )
    # a fresh interpreter that never imported Unsloth: what a user of the exported model has
    done = subprocess.run([sys.executable, "-c", check, str(out), str(small_model_dir)], capture_output=True,
                          text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    new_tokens, dtype, moved = done.stdout.split()[-3:]
    # why: the merged model generates on its own, in the card's 16-bit type, with the trained LoRA inside
    assert (int(new_tokens) > 0, dtype, float(moved) > 0) == (True, "torch.bfloat16", True)


def test_a_card_without_bf16_trains_in_fp16(fp16_run):
    # This card has bf16: $SARASHINA_GRPO_PRECISION=fp16 takes the path a T4 takes (tests/test_precision.py checks
    # that such a card's compute capability leads there).
    run, out_dir, artifact = fp16_run
    run.ok()
    state = json.loads((artifact / "outputs" / "fp16" / "checkpoint-2" / "trainer_state.json").read_text())
    args = json.loads((artifact / "outputs" / "fp16" / "run.json").read_text())
    record = ranks(out_dir, 1)[0]
    # why: bf16 is what fails on a T4/V100; the run must take fp16 from the card and still learn
    assert (state["global_step"], record["lora_b_abs_sum"] > 0) == (2, True), args
    assert (record["mixed_precision"], record["base_dtype"]) == ("fp16", "torch.float16")


def test_a_card_with_bf16_trains_in_bf16(one_gpu_resumed):
    _, (rank0,), _ = one_gpu_resumed
    assert (rank0["mixed_precision"], rank0["base_dtype"]) == ("bf16", "torch.bfloat16")


@pytest.fixture(scope="module")
def two_gpus_resumed(tmp_path_factory, small_model_dir, prompts_csv):
    return kill_and_resume(2, tmp_path_factory.mktemp("two"), small_model_dir, prompts_csv)


@two_gpus
def test_two_processes_on_the_unsloth_backend_keep_identical_lora_weights(two_gpus_resumed):
    _, (rank0, rank1), _ = two_gpus_resumed
    # why: each rank scored other prompts; equal digests mean the gradients were averaged every step
    assert (rank0["world_size"], rank0["sha256"], rank0["global_step"]) == (2, rank1["sha256"], 6)
    assert rank0["lora_b_abs_sum"] > 0


@two_gpus
def test_the_default_backend_under_two_processes_is_unsloth(two_gpus_resumed):
    _, records, _ = two_gpus_resumed
    # why: `accelerate launch ... train` without --backend must train with Unsloth's patched trainer on every rank
    assert [r["trainer_class"] for r in records] == ["UnslothGRPOTrainer"] * 2


@two_gpus
def test_a_two_gpu_checkpoint_serves_on_one_gpu(two_gpus_resumed, run_cli):
    run_dir, _, _ = two_gpus_resumed
    done = run_cli("infer", "--model", run_dir / "checkpoint-6", "--max-new-tokens", 8, "こんにちは")
    assert done.stdout.strip()  # why: a DDP checkpoint is an ordinary adapter that one process loads


@two_gpus
def test_the_fast_rollout_runs_under_ddp(tmp_path, small_model_dir, prompts_csv):
    out_dir = tmp_path / "fast"
    args = train_args(small_model_dir, prompts_csv, tmp_path / "artifact", "fast", 2, "--rollout", "fast")
    finish(start(2, out_dir, args))
    rank0, rank1 = ranks(out_dir, 2)
    # why: the CUDA-graph engine in each rank, DDP around the update: weights still identical
    assert (rank0["global_step"], rank0["sha256"]) == (2, rank1["sha256"])
