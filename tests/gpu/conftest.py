"""Fixtures of the GPU suite: models built on the GPU, a reward that always varies, a runner for the CLI.

These tests run the production path (Unsloth's patched trainer, its kernels, the CUDA-graph rollout, 4-bit weights,
several processes), which a CPU never reaches. They skip without CUDA; ``scripts/gpu_suite.sh`` runs them on a GPU
machine in one go, its groups (tools/gpu_suite.py) side by side.

Models are built and converted in processes of their own: a test process then imports Unsloth before any of
transformers' model code, as ``sarashina-grpo train`` does. Commands that a test only waits for are started early
(``Started``), so that they run beside the test's own work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Two logits closer than this share of the larger one are a near-tie: 2^-6 is four bf16 ulps (8 mantissa bits).
NEAR_TIE = 2.0**-6
PROMPTS = "prompt,lang\n" + "".join(f"今日の予定{i}について教えてください。,ja\n" for i in range(24))


def text_hash_reward(completions, **kwargs) -> list[float]:
    """A reward in [0, 1) that changes with any change of the text: random models score 0 on every format reward,
    and zero advantages would leave the LoRA weights where they started."""
    from sarashina_grpo.rewards import completion_text

    return [zlib.crc32(completion_text(c).encode()) % 1000 / 1000 for c in completions]


@pytest.fixture(scope="session")
def text_hash():
    """Register ``text_hash`` in the reward registry for in-process runs (the CLI runs use tests/multigpu_worker.py,
    which registers the same idea)."""
    from sarashina_grpo.rewards import REWARD_FUNCS

    REWARD_FUNCS["text_hash"] = text_hash_reward
    yield "text_hash"
    REWARD_FUNCS.pop("text_hash", None)


class Started:
    """A command started now and waited for later (``result``), its output in files (a pipe nobody reads while the
    test works would fill and stop it). One nobody waited for (its test failed first) is killed at the session's end."""

    unfinished: list[Started] = []

    def __init__(self, command, *, env=None, timeout: float = 400):
        self.command = [str(c) for c in command]
        self.timeout, self.started = timeout, time.monotonic()
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, env=env or cli_env(), stdout=self.out,
                                        stderr=self.err, text=True)
        self.done: subprocess.CompletedProcess | None = None
        Started.unfinished.append(self)

    def result(self) -> subprocess.CompletedProcess:
        """The finished command (killed when it outlives its timeout, counted from its start)."""
        if self.done is None:
            try:
                self.process.wait(timeout=max(1.0, self.timeout - (time.monotonic() - self.started)))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.out.seek(0)
            self.err.seek(0)
            self.done = subprocess.CompletedProcess(self.command, self.process.returncode, self.out.read(),
                                                    self.err.read())
            self.seconds = time.monotonic() - self.started
            Started.unfinished.remove(self)
        return self.done

    def ok(self) -> subprocess.CompletedProcess:
        done = self.result()
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        return done


@pytest.fixture(scope="session", autouse=True)
def no_command_left_running():
    yield
    for started in list(Started.unfinished):
        started.process.kill()
        started.result()


def build(out: Path, shape: str) -> Path:
    """A random-weight model of ``shape`` built on the GPU by ``sarashina-grpo build-tiny`` (seed 0)."""
    Started([sys.executable, "-m", "sarashina_grpo", "build-tiny", out, "--shape", shape], timeout=300).ok()
    return out


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory) -> Path:
    """The suite's quick bf16 model (random weights, head_dim 64), built on the GPU."""
    return build(tmp_path_factory.mktemp("models") / "small", "small")


@pytest.fixture(scope="session")
def model_3b_dir(tmp_path_factory) -> Path:
    """The Sarashina 2.2 3B shape (random weights), kept in ``$SARASHINA_GRPO_3B`` when that is set."""
    given = os.environ.get("SARASHINA_GRPO_3B")
    if given and (Path(given) / "config.json").exists():
        return Path(given)
    if given and not Path(given).exists():
        return build(Path(given), "sarashina-3b")
    return build(tmp_path_factory.mktemp("models") / "sarashina-3b", "sarashina-3b")


@pytest.fixture(scope="session")
def real_model_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as ``convert-gguf`` writes it: ``$SARASHINA_GRPO_REAL_MODEL``, or converted here from
    ``$SARASHINA_GRPO_REAL_GGUF``; the test skips without either (scripts/gpu_suite.sh finds the GGUF)."""
    given, gguf = os.environ.get("SARASHINA_GRPO_REAL_MODEL"), os.environ.get("SARASHINA_GRPO_REAL_GGUF")
    if given:
        return Path(given)
    if not gguf:
        pytest.skip("needs SARASHINA_GRPO_REAL_MODEL (a convert-gguf folder) or SARASHINA_GRPO_REAL_GGUF")
    out = tmp_path_factory.mktemp("real") / "smollm2"
    Started([sys.executable, "-m", "sarashina_grpo", "convert-gguf", gguf, out], timeout=300).ok()
    return out


@pytest.fixture(scope="session")
def prompts_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "prompts.csv"
    path.write_text(PROMPTS, encoding="utf-8")
    return path


def cli_env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="session")
def run_cli():
    """Run ``python -m sarashina_grpo ARGS`` (or a script) to the end; return the CompletedProcess."""

    def run(*args, timeout=300, script=None, env=None):
        command = [sys.executable, *( [str(script)] if script else ["-m", "sarashina_grpo"]), *map(str, args)]
        done = subprocess.run(command, cwd=REPO_ROOT, env=env or cli_env(), capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        return done

    return run


def prompt_ids(trainer, n=6):
    tok = trainer.processing_class
    rows = sorted(trainer.train_dataset.select(range(60))["prompt"], key=lambda p: len(p[-1]["content"]))
    picked = [rows[i * (len(rows) - 1) // (n - 1)] for i in range(n)]  # short to long: left padding matters
    return [tok(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
                add_special_tokens=False)["input_ids"] for p in picked]


def margins(trainer, prompts, completions) -> list[list[float]]:
    """Per completion token: (top-1 − top-2) / |top-1| of the default model's logits, teacher-forced."""
    import torch

    model = trainer.model
    out = []
    # Unsloth's GRPO path may leave its forward returning hidden states instead of logits: ask for logits.
    os.environ["UNSLOTH_RETURN_HIDDEN_STATES"] = "0"
    vocab = model.get_base_model().lm_head.weight.shape[0]
    with torch.no_grad():
        for prompt, completion in zip(prompts, completions, strict=True):
            ids = torch.tensor([prompt + completion], device=model.device)
            logits = model(input_ids=ids).logits[0, len(prompt) - 1: len(prompt) + len(completion) - 1].float()
            assert logits.shape[-1] == vocab
            top = logits.topk(2, dim=-1).values
            out.append(((top[:, 0] - top[:, 1]) / top[:, 0].abs().clamp(min=1e-6)).tolist())
    return out


def agree_up_to_near_ties(default, fast, gaps) -> tuple[int, int]:
    """Check two greedy decodes of the same prompts: token for token equal, or parting only where the default path's
    own top-2 logits are a near-tie (rounding, not a bug). Returns (tokens compared before any parting, tokens)."""
    agreed = total = 0
    for row, (d, f, gap) in enumerate(zip(default, fast, gaps, strict=True)):
        first = next((i for i, (a, b) in enumerate(zip(d, f, strict=False)) if a != b), None)
        if first is None:
            assert len(d) == len(f), f"row {row}: one path stopped early without a differing token"
            agreed += len(d)
        else:
            # why: parting at a clear winner is a bug in the engine, not rounding
            assert gap[first] < NEAR_TIE, f"row {row} parts at token {first}, where the margin is {gap[first]:.4f}"
            agreed += first
        total += len(d)
    return agreed, total


def greedy_trainer(settings, artifact_dir, prepare_model=None):
    """The project's trainer for ``settings``, decoding greedily; ``prepare_model(model)`` runs before it is built."""
    from sarashina_grpo.pipeline import build_trainer, load_model, prepare

    run = prepare(settings, artifact_dir=artifact_dir, run_name="r")
    model, tokenizer = load_model(run)
    if prepare_model is not None:
        prepare_model(model)
    trainer = build_trainer(run, model, tokenizer, report_to="none")
    trainer.generation_config.do_sample = False
    trainer.generation_kwargs["do_sample"] = False
    return trainer


def greedy_default_and_fast(trainer, prompts, new_tokens):
    """Greedy tokens of the default rollout (Unsloth's generate inside TRL) and of the fast engine for ``prompts``,
    and the engine (its CUDA graphs and Triton split-K attention checked live)."""
    import torch

    from sarashina_grpo.rollout import FastRollout

    assert trainer.model.get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16
    assert trainer.rollout == "default"  # why: "auto" would have put the engine in the default path's place
    default = [list(map(int, ids)) for ids in trainer._generate_single_turn(prompts, None, {}, 1)[0]]
    engine = FastRollout(trainer.model, eos_token_ids=trainer.eos_token_ids,
                         pad_token_id=trainer.processing_class.pad_token_id, max_new_tokens=new_tokens,
                         temperature=0.0)
    fast = engine.generate(prompts)
    assert engine._split_k_ok is True and engine._decoder is not None and engine._decoder.graphs
    return default, fast, engine
