"""One GRPO step of the project's trainer, recomputed by hand from TRL 1.15's formulas (``GRPOTrainer._compute_loss``).

A reward that returns fixed values per completion gives known advantages; the loss the trainer returns is compared
with the article's loss computed here from the model's own log-probabilities:

    A_i  = (r_i − mean of its group) / (std of its group + 1e-4)             (scale_rewards="group", unbiased std)
    KL_t = exp(ref_t − logp_t) − (ref_t − logp_t) − 1                        (k3 estimator, per token)
    loss = mean_i [ Σ_t (−A_i · exp(logp_t − logp_t.detach()) + β · KL_t) · m_t / Σ_t m_t ]   (loss_type="grpo")

The run happens in its own process on the trl-peft backend (plain TRL, no Unsloth patches), two steps: at step 1
policy and reference are the same weights (KL 0), at step 2 the policy has moved.

    .venv/bin/pytest tests/test_algorithm.py
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REWARDS = [0.0, 1.0, 3.0, 2.0]  # one group of four completions per step
BETA = 0.04

SCRIPT = """
import json, sys
import torch
from sarashina_grpo.modeling import use_triton_interpreter_without_gpu

use_triton_interpreter_without_gpu()  # TRL's fused LM head on CPU
from sarashina_grpo import rewards
from sarashina_grpo.config import article_settings
from sarashina_grpo.pipeline import build_trainer, load_model, prepare, run_training

model_dir, data, artifact = sys.argv[1:4]
values, beta = json.loads(sys.argv[4]), float(sys.argv[5])
given = []


def fixed_reward(completions, **kwargs):
    given.append(list(values))
    return list(values)


rewards.REWARD_FUNCS["fixed"] = fixed_reward
settings = article_settings(model_name=model_dir, data_path=data, load_in_4bit=False, backend="trl-peft", max_steps=2,
                    save_steps=100, num_generations=4, per_device_train_batch_size=4, max_completion_length=6,
                    max_prompt_length=128, max_seq_length=256, system_prompt="短く答えてください。",
                    learning_rate=0.05, beta=beta, warmup_steps=0.0,
                    reward_names=("fixed",), log_completions=False, seed=0)
run = prepare(settings, artifact_dir=artifact)
model, tokenizer = load_model(run)
trainer = build_trainer(run, model, tokenizer)
steps = []
compute_loss = trainer.compute_loss


def by_hand(model, inputs):
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    n = inputs["completion_ids"].shape[1]
    logits = logits[:, -n - 1:-1] / trainer.temperature
    logp = torch.log_softmax(logits, -1).gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
    ref, m, adv = inputs["ref_per_token_logps"], inputs["completion_mask"].float(), inputs["advantages"]
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    per_token = -adv.unsqueeze(1) + beta * kl  # the ratio exp(logp - logp.detach()) is 1 in value
    loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    return loss.item(), ((kl * m).sum() / m.sum()).item()


def watched(model, inputs, *args, **kwargs):
    loss = compute_loss(model, inputs, *args, **kwargs)
    hand_loss, hand_kl = by_hand(model, inputs)
    steps.append({"advantages": inputs["advantages"].tolist(), "loss": loss.item(), "hand_loss": hand_loss,
                  "hand_kl": hand_kl})
    return loss


trainer.compute_loss = watched
run_training(trainer, run)
print("RESULT", json.dumps({"steps": steps, "rewards": given, "logs": trainer.state.log_history}))
"""


@pytest.fixture(scope="module")
def one_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("algorithm")
    data = tmp / "prompts.csv"
    data.write_text("prompt,lang\nこんにちは,ja\n元気ですか？,ja\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_model_dir), str(data), str(tmp / "artifact"), json.dumps(REWARDS),
         str(BETA)], capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_advantages_are_the_group_normalised_rewards(one_run):
    rewards = one_run["rewards"][0]
    mean = sum(rewards) / len(rewards)
    std = (sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1)) ** 0.5  # unbiased, as TRL's nanstd
    expected = sorted((r - mean) / (std + 1e-4) for r in rewards)
    for step in one_run["steps"]:
        # sorted: TRL shuffles the scored completions before it splits them into optimizer steps
        assert sorted(step["advantages"]) == pytest.approx(expected, rel=1e-5)


def test_the_first_step_has_no_kl_and_a_loss_of_minus_the_mean_advantage(one_run):
    first = one_run["steps"][0]
    # why: policy, old policy and reference are the same weights before the first update; advantages sum to 0
    assert first["hand_kl"] == pytest.approx(0.0, abs=1e-6)
    assert first["loss"] == pytest.approx(first["hand_loss"], abs=1e-6) == pytest.approx(0.0, abs=1e-6)


def test_the_second_step_adds_beta_times_the_kl_to_the_moved_policy(one_run):
    second = one_run["steps"][1]
    assert second["hand_kl"] > 0  # the update moved the LoRA away from the reference adapter
    assert second["loss"] == pytest.approx(second["hand_loss"], rel=1e-4, abs=1e-7)


def test_the_logged_kl_is_the_masked_mean_of_the_per_token_kl(one_run):
    logged = [entry["kl"] for entry in one_run["logs"] if "kl" in entry]
    hand = [step["hand_kl"] for step in one_run["steps"]]
    assert logged == pytest.approx(hand, rel=1e-3, abs=1e-7)
