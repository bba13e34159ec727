"""The benchmark (``python -m scripts.bench``) runs on CPU (tiny model) and writes its three result files; numbers are
meaningless here. Its patches (``scripts/bench_patches.py``) do what they say on a CPU model."""

from __future__ import annotations

import json

import pytest

from sarashina_grpo.project import SettingsError
from scripts.bench import main, markdown_table, parse_configs


def test_config_names_parse_into_rollout_batch_and_generation_reuse():
    cfg = parse_configs("fast-6x6-bf16", cuda=True)[0]
    assert (cfg.rollout, cfg.completions, cfg.steps_per_generation, cfg.load_in_4bit) == ("fast", 6, 6, False)


def test_a_plain_row_trusts_packing_as_training_does_and_a_recheck_row_leaves_unsloth_rechecking():
    plain, recheck = parse_configs("fast-36-real,fast-36-real-recheck", cuda=True)
    assert (plain.recheck, recheck.recheck, recheck.realistic, recheck.completions) == (False, True, True, 36)


def test_a_row_may_say_where_checkpointed_activations_are_kept_or_leave_it_to_the_machine():
    rows = parse_configs("fast-36,fast-36-offload,fast-36-real-ongpu-recheck", cuda=True)
    assert [r.offload_activations for r in rows] == [None, True, False]
    assert rows[2].recheck and rows[2].realistic


def test_a_varlen_row_is_a_plain_row_with_packed_attention_through_torchs_varlen_kernel():
    plain, varlen = parse_configs("fast-36-real,fast-36-real-varlen", cuda=True)
    assert (plain.varlen, varlen.varlen, varlen.realistic, varlen.recheck) == (False, True, True, False)
    with pytest.raises(SettingsError, match="peer-36-varlen"):
        parse_configs("peer-36-varlen", cuda=True)  # why: the peer runs without Unsloth, whose attention this patches


def test_gqa_varlen_repeats_key_and_value_heads_for_a_varlen_kernel_without_enable_gqa():
    import torch

    from scripts.bench_patches import gqa_varlen

    seen = []

    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
        seen.append((key.shape, window_size))
        return query

    key = torch.arange(2 * 3).reshape(1, 2, 3).float()  # (tokens, kv heads, head_dim)
    attend = gqa_varlen(varlen_attn)
    attend(torch.zeros(1, 4, 3), key, key, None, None, 1, 1, enable_gqa=True, window_size=(-1, 0))
    attend(torch.zeros(1, 2, 3), key, key, None, None, 1, 1, enable_gqa=False)
    assert seen == [((1, 4, 3), (-1, 0)), ((1, 2, 3), (-1, -1))]


def test_the_varlen_patch_lasts_for_its_row_and_is_a_no_op_where_torch_takes_enable_gqa(monkeypatch):
    import sys
    import types

    import torch.nn.attention.varlen as torch_varlen

    from scripts.bench_patches import torch_varlen_with_gqa

    dispatch = types.ModuleType("unsloth.utils.attention_dispatch")
    dispatch._TORCH_VARLEN_ATTN, dispatch._LEAN_VARLEN = None, False  # as Unsloth leaves them on torch 2.11
    utils = types.ModuleType("unsloth.utils")
    utils.attention_dispatch = dispatch
    for name, module in (("unsloth", types.ModuleType("unsloth")), ("unsloth.utils", utils),
                         ("unsloth.utils.attention_dispatch", dispatch)):
        monkeypatch.setitem(sys.modules, name, module)
    with torch_varlen_with_gqa() as how:
        assert how == "native"  # this torch (the lock's) takes enable_gqa: Unsloth chose the kernel itself
        assert dispatch._TORCH_VARLEN_ATTN is None

    def old_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
        return query

    monkeypatch.setattr(torch_varlen, "varlen_attn", old_varlen_attn)
    with torch_varlen_with_gqa() as how:
        assert how == "shim" and dispatch._TORCH_VARLEN_ATTN is not None and dispatch._LEAN_VARLEN is False
    assert dispatch._TORCH_VARLEN_ATTN is None


def test_configs_load_in_4bit_only_with_cuda():
    assert parse_configs("default-6", cuda=False)[0].load_in_4bit is False  # why: bitsandbytes 4-bit needs CUDA


def test_unknown_bench_config_is_rejected():
    with pytest.raises(SettingsError, match="turbo-6"):
        parse_configs("turbo-6", cuda=False)


@pytest.mark.slow
def test_bench_smoke_run_writes_json_markdown_and_plot(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    code = main(["--model", str(tiny_model_dir), "--configs", "default-6,fast-6", "--steps", "2",
                 "--max-completion-length", "8", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["command"].startswith("python -m scripts.bench --model")
    rows = results["results"]
    assert [r["config"] for r in rows] == ["default-6", "fast-6"]
    for row in rows:
        assert row["steps"] == 2 and row["step_s"] > 0 and row["completion_tokens_per_s"] > 0
        assert 0 < row["generation_s"] <= row["step_s"]  # why: the rollout is timed inside the step
        assert len(row["gc_times_s"]) == 2 and row["model"] == tiny_model_dir.name
        # why: the second row reuses the loaded model; it must start from a fresh LoRA, whose KL reference is the
        # base model, as a real run's is (a LoRA moved by the first row would bring TRL's copy back)
        assert row["kl_reference"] == "base"
    assert markdown_table(rows) in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eos_configs_run_on_the_real_model_and_need_its_folder(tmp_path):
    from scripts.bench import BenchOptions, check_options

    cfg = parse_configs("fast-36-bf16-eos", cuda=True)[0]
    assert (cfg.real_model, cfg.realistic, cfg.load_in_4bit) == (True, False, False)
    with pytest.raises(SettingsError, match="--real-model"):
        check_options(BenchOptions(configs="fast-6,fast-36-eos"))
    with pytest.raises(SettingsError, match="config.json"):
        check_options(BenchOptions(configs="fast-36-eos", real_model=str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    check_options(BenchOptions(configs="fast-36-eos", real_model=str(tmp_path)))


def test_without_a_gpu_the_gpu_defaults_become_a_smoke_run_and_given_options_stay():
    from scripts.bench import CPU_SMOKE, BenchOptions, cpu_smoke

    # why: the GPU defaults (seven configurations, the peer, 512 tokens) took 17 minutes on two CPU cores
    assert {k: getattr(cpu_smoke(BenchOptions()), k) for k in CPU_SMOKE} == CPU_SMOKE
    given = cpu_smoke(BenchOptions(configs="fast-6", steps=3))
    assert (given.configs, given.steps, given.max_completion_length) == ("fast-6", 3, 16)


def test_realistic_lengths_follow_the_stated_distribution_within_the_cap():
    import random

    from scripts.bench import REALISTIC_LENGTHS, realistic_lengths

    lengths = realistic_lengths(4000, random.Random(0), 512)
    mean = sum(lengths) / len(lengths)
    # why: docs/speed.md states this distribution next to the numbers it produced
    assert REALISTIC_LENGTHS["low"] <= min(lengths) and max(lengths) <= 512
    assert abs(mean - REALISTIC_LENGTHS["mean"]) < 10
    assert max(realistic_lengths(100, random.Random(0), 64)) == 64  # capped at max_completion_length


def test_peer_config_parses_without_4bit_and_rejects_generation_reuse():
    assert parse_configs("peer-36", cuda=True)[0].load_in_4bit is False  # why: the peer is bf16 LoRA
    with pytest.raises(SettingsError, match="peer"):
        parse_configs("peer-6x2", cuda=True)


def _row(num_gpus: int, step_s: float = 2.0):
    from scripts.bench import BenchConfig, _result_row

    cfg = BenchConfig("fast-36-real", "fast", 36, realistic=True)
    return _result_row(cfg, [9.0, step_s, step_s], [1.0] * 3, [1.5] * 3, [200.0] * 3, 512, device="H100",
                       peak_allocated=None, peak_reserved=None, num_generations=6, load_in_4bit=True,
                       num_gpus=num_gpus)


def test_a_data_parallel_row_counts_every_gpus_completions():
    one, two = _row(1), _row(2)
    # why: each of two GPUs ran 36 completions in the same 2 s step, so throughput doubles
    assert (two["completions_per_s"], two["completion_tokens_per_s"]) == (
        2 * one["completions_per_s"], 2 * one["completion_tokens_per_s"])


def test_the_peer_cannot_run_under_accelerate(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SettingsError, match="one process"):
        parse_configs("fast-36,peer-36", cuda=True)  # why: the peer is a child process of one parent


def test_the_scaling_table_compares_each_count_with_one_gpu():
    from scripts.multi_gpu_table import with_scaling

    rows = with_scaling([_row(4, step_s=4.0), _row(1), _row(2, step_s=2.5)])
    found = [(r["num_gpus"], r["speedup"], r["efficiency"]) for r in rows]
    # why: 4 GPUs at twice the step time give 2x the completions/s of one, i.e. half the per-GPU efficiency
    assert found == [(1, 1.0, 1.0), (2, 1.6, 0.8), (4, 2.0, 0.5)]


@pytest.mark.parametrize(("flags", "named"), [
    (["--steps", "0"], "--steps"),  # why: no step, nothing to time (it used to run every configuration anyway)
    (["--max-completion-length", "0"], "--max-completion-length"),
    (["--beta", "-0.1"], "--beta"),
    (["--profile-step", "9", "--steps", "4"], "--profile-step"),
    (["--configs", "turbo-6"], "turbo-6"),
])
def test_bad_bench_options_fail_before_anything_loads(flags, named, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "unsloth", None)  # importing it would raise: the check must come first
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert named in err and err.startswith("error: ") and err.count("\n") == 1  # why: one line, as the CLI's


def test_an_unknown_flag_is_one_error_line_naming_the_command(capsys):
    assert main(["--config", "fast-6"]) == 2  # why: a prefix of --configs is a typo, not a guess
    err = capsys.readouterr().err
    assert err.startswith("error: python -m scripts.bench: ") and "--config" in err and err.count("\n") == 1


def test_the_bench_runs_as_a_module_of_the_repository_and_is_no_longer_a_cli_command(repo_root):
    import subprocess
    import sys

    from sarashina_grpo.commands import COMMANDS

    assert "bench" not in COMMANDS  # why: a research harness, outside the installed package (scripts/)
    done = subprocess.run([sys.executable, "-m", "scripts.bench", "--help"], cwd=repo_root, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--profile-step" in done.stdout and "python -m scripts.bench" in done.stdout


# --- scripts/bench_patches.py: each patch does what the benchmark relies on ----------------------------------------


def test_a_reused_model_gets_a_fresh_lora_as_a_new_run_starts_with():
    import peft
    import torch

    from scripts.bench_patches import reset_lora

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

    model = peft.get_peft_model(Net(), peft.LoraConfig(r=2, target_modules=["lin"]))
    layer = model.base_model.model.lin
    with torch.no_grad():
        layer.lora_B["default"].weight.fill_(0.5)  # what an earlier row's training left
        before_a = layer.lora_A["default"].weight.clone()
    reset_lora(model)
    # why: B = 0 is PEFT's start (the adapter adds nothing), A is drawn afresh
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    assert not torch.equal(layer.lora_A["default"].weight, before_a)


def test_the_chunking_watch_records_each_choice_and_puts_the_original_back(monkeypatch):
    import sys
    import types

    from scripts.bench_patches import UNSLOTH_CHUNKING_FUNCTION, watch_unsloth_chunking

    module = types.ModuleType("fake_unsloth_compiled_trainer")
    original = lambda rows, *args, **kwargs: (rows // 2, 2)  # noqa: E731
    setattr(module, UNSLOTH_CHUNKING_FUNCTION, original)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    trainer = type("UnslothGRPOTrainer", (), {"__module__": module.__name__})()
    seen = []
    restore = watch_unsloth_chunking(trainer, lambda rows, result: seen.append((rows, result)))
    assert getattr(module, UNSLOTH_CHUNKING_FUNCTION)(36) == (18, 2) and seen == [(36, (18, 2))]
    restore()
    assert getattr(module, UNSLOTH_CHUNKING_FUNCTION) is original
    plain = type("GRPOTrainer", (), {"__module__": "math"})()  # why: without Unsloth there is nothing to watch
    watch_unsloth_chunking(plain, seen.append)()


def test_timed_calls_are_booked_to_the_step_they_run_in():
    from types import SimpleNamespace

    from scripts.bench_patches import time_method

    trainer = SimpleNamespace(state=SimpleNamespace(global_step=0), rollout=lambda x: x + 1)
    per_step = time_method(trainer, "rollout")
    assert trainer.rollout(1) == 2 and trainer.rollout(2) == 3  # why: the wrap returns what the method returns
    trainer.state.global_step = 1
    trainer.rollout(3)
    assert sorted(per_step) == [0, 1] and all(t >= 0 for t in per_step.values())


def test_forced_lengths_on_the_default_path_end_each_row_at_its_own_length():
    import torch

    from scripts.bench_patches import ForceEOS

    force = ForceEOS([2, 3], eos=7, prompt_len=4)
    scores = force(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 10))  # choosing the 2nd completion token
    assert scores[0].argmax() == 7 and scores[0].isinf().sum() == 9  # why: row 0 ends as its 2nd token
    assert not scores[1].isinf().any()  # row 1 goes on


@pytest.mark.parametrize("script", ["bench.py", "learning_proof.py"])
def test_the_harness_patches_libraries_only_in_bench_patches(script, repo_root):
    import ast

    tree = ast.parse((repo_root / "scripts" / script).read_text(encoding="utf-8"))
    calls = [node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
    # why: every replaced method or dropped attribute of a library object is in one place, with its reason
    assert not {"setattr", "delattr"} & set(calls)
