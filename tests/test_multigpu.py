"""Data-parallel GRPO on CPU: two processes (gloo) run ``sarashina-grpo train`` under ``accelerate launch``.

The proof of DDP: both ranks ran, they scored different prompts, their LoRA weights moved away from the
initialisation and are bit-identical at the end (so gradients were averaged), and only one run's folders exist.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from sarashina_grpo.checkpoints import COMPLETE_MARKER
from sarashina_grpo.config import article_settings
from sarashina_grpo.project import SettingsError

STEPS = 2
PROMPTS = "prompt,lang\n" + "".join(f"今日の予定{i}を教えてください。,ja\n" for i in range(8))


def free_port() -> int:
    """A free TCP port for the rendezvous, so parallel test runs never meet on accelerate's default 29500."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_ranks(repo_root, tmp_path, model_dir, data_path, backend: str):
    out_dir, artifact_dir = tmp_path / "ranks", tmp_path / "artifact"
    out_dir.mkdir()
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(repo_root / "configs" / "accelerate" / "multi_gpu.yaml"),
        "--num_processes", "2", "--main_process_port", str(free_port()),
        str(repo_root / "tests" / "multigpu_worker.py"), str(out_dir),
        "--backend", backend, "--model", str(model_dir), "--no-4bit", "--data", str(data_path),
        "--artifact-dir", str(artifact_dir), "--run-name", "ddp",
        "--max-steps", str(STEPS), "--save-steps", str(STEPS), "--num-generations", "2", "--batch-size", "2",
        "--max-prompt-length", "256", "--max-completion-length", "16", "--max-seq-length", "512",
        "--learning-rate", "1e-3", "--rewards", "xmlcount,soft_format,strict_format,text_hash",
    ]
    # One thread per rank (two ranks on CI's two cores); no GPU even where one exists, so gloo is what is tested.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TRITON_INTERPRET": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]
    prompts = [set((out_dir / f"prompts-rank{r}.txt").read_text(encoding="utf-8").splitlines()) for r in range(2)]
    return ranks, prompts, artifact_dir


@pytest.fixture(scope="module", params=["trl-peft", "unsloth"])
def ddp_run(request, repo_root, tmp_path_factory, tiny_model_dir):
    tmp_path = tmp_path_factory.mktemp(f"ddp-{request.param}")
    data_path = tmp_path / "prompts.csv"
    data_path.write_text(PROMPTS, encoding="utf-8")
    return launch_two_ranks(repo_root, tmp_path, tiny_model_dir, data_path, request.param)


@pytest.mark.slow
def test_both_ranks_ran_every_step(ddp_run):
    ranks, _, _ = ddp_run
    # why: each rank reports itself in a world of two, at the last step
    assert [(r["rank"], r["world_size"], r["global_step"]) for r in ranks] == [(0, 2, STEPS), (1, 2, STEPS)]


@pytest.mark.slow
def test_ranks_trained_on_different_prompts(ddp_run):
    _, prompts, _ = ddp_run
    # why: data parallelism shards the prompts; same data on both ranks would make identical weights trivial
    assert prompts[0] and prompts[1] and prompts[0] != prompts[1]


@pytest.mark.slow
def test_lora_weights_moved_from_initialisation(ddp_run):
    ranks, _, _ = ddp_run
    # why: lora_B starts at zero, so a non-zero sum means optimizer steps with real gradients happened
    assert all(r["lora_b_abs_sum"] > 0 for r in ranks)


@pytest.mark.slow
def test_lora_weights_identical_across_ranks(ddp_run):
    ranks, _, _ = ddp_run
    # why: different prompts give different local gradients; equal weights mean DDP averaged them every step
    assert ranks[0]["sha256"] == ranks[1]["sha256"]


@pytest.mark.slow
def test_one_run_with_one_complete_checkpoint(ddp_run):
    _, _, artifact_dir = ddp_run
    outputs, logs = artifact_dir / "outputs", artifact_dir / "logs"
    checkpoints = sorted(p.name for p in (outputs / "ddp").iterdir() if p.name.startswith("checkpoint-"))
    found = (
        sorted(p.name for p in outputs.iterdir()),
        sorted(p.name for p in logs.iterdir()),
        checkpoints,
        (outputs / "ddp" / f"checkpoint-{STEPS}" / COMPLETE_MARKER).exists(),
        len(list((logs / "ddp").glob("events.out.tfevents.*"))),
    )
    # why: ranks agree on one run folder; one checkpoint (marked complete once) and one TensorBoard writer (rank 0)
    assert found == (["ddp"], ["ddp"], [f"checkpoint-{STEPS}"], True, 1)


@pytest.mark.slow
def test_checkpoint_holds_the_synchronised_weights(ddp_run):
    from safetensors.torch import load_file

    from sarashina_grpo.modeling import lora_fingerprint

    ranks, _, artifact_dir = ddp_run
    saved = load_file(artifact_dir / "outputs" / "ddp" / f"checkpoint-{STEPS}" / "adapter_model.safetensors")
    # why: what rank 0 saved is exactly what every rank ends with
    assert lora_fingerprint(saved)["sha256"] == ranks[0]["sha256"]


@pytest.mark.slow
def test_each_rank_closed_its_process_group_before_exiting(ddp_run):
    ranks, _, _ = ddp_run
    # why: a process that exits with the gloo/NCCL group still open can abort in a C++ destructor (exit -6) after
    # training succeeded, failing the launch at random
    assert [(r["exit_code"], r["process_group_open"]) for r in ranks] == [(0, False), (0, False)]


@pytest.mark.slow
def test_the_main_process_alone_locked_the_run_and_released_it(ddp_run):
    run = ddp_run[2] / "outputs" / "ddp"
    # why: one lock file, taken by the main process only (a second rank locking would have failed the run) and
    # emptied when training ended
    assert (run / "run.lock").read_text() == ""


@pytest.mark.slow
def test_resuming_the_finished_run_on_two_processes_trains_nothing(ddp_run, repo_root):
    artifact_dir = ddp_run[2]
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(repo_root / "configs" / "accelerate" / "multi_gpu.yaml"),
               "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "sarashina_grpo", "train",
               "--no-4bit", "--artifact-dir", str(artifact_dir), "--resume", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count(f"Run ddp is finished: checkpoint-{STEPS} is step {STEPS}") == 1  # said once
    assert not (artifact_dir / "outputs" / "ddp" / f"checkpoint-{STEPS + 1}").exists()


def test_auto_backend_is_unsloth_across_processes(monkeypatch):
    from sarashina_grpo.modeling import resolve_backend

    settings = article_settings()  # built in this one process: TRL would start the process group of WORLD_SIZE
    monkeypatch.setenv("WORLD_SIZE", "2")
    # why: on two H100s Unsloth stepped ~7x faster than trl-peft, with identical weights across ranks (GPU suite)
    assert resolve_backend(settings.backend) == "unsloth"


def test_trl_peft_stays_a_choice_across_processes(monkeypatch):
    from sarashina_grpo.modeling import resolve_backend

    settings = article_settings(backend="trl-peft")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_backend(settings.backend) == "trl-peft"


def test_auto_backend_is_unsloth_in_one_process(monkeypatch):
    from sarashina_grpo.modeling import resolve_backend

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_backend(article_settings().backend) == "unsloth"  # why: the article's path


def test_vllm_server_mode_without_vllm_is_refused():
    # why: server mode alone would silently train with generation inside each rank
    with pytest.raises(SettingsError, match="--use-vllm"):
        article_settings(backend="trl-peft", vllm_mode="server")


def test_vllm_server_mode_is_refused_for_unsloth():
    # why: Unsloth generates through its own colocated vLLM (fast_inference), not TRL's server client
    with pytest.raises(SettingsError, match="trl-peft"):
        article_settings(use_vllm=True, backend="unsloth", vllm_mode="server")


@pytest.mark.parametrize(("name", "kind"), [("multi_gpu.yaml", "MULTI_GPU"), ("deepspeed_zero2.yaml", "DEEPSPEED")])
def test_accelerate_configs_load(repo_root, name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(repo_root / "configs" / "accelerate" / name))
    # why: a typo in a config file would only show on a multi-GPU machine
    assert (config.distributed_type.name, config.num_machines) == (kind, 1)
