"""The KL reference the project's trainer scores is TRL's own, to the last bit (``compat.choose_reference``).

TRL 1.15 scores the reference of a PEFT policy through ``"ref"``, a frozen copy of the starting adapter. For a fresh
LoRA (B = 0) the project drops that copy and TRL scores the same forward with the adapter disabled; for any other
start it keeps (or, where Unsloth removed it, adds) the copy. Here one scoring step of each path runs on the tiny
model against a trainer built the way TRL alone builds it, on the same completions:

- fresh LoRA, policy moved: the reference log-probs agree exactly, and so do the loss and the logged KL;
- the same comparison with a non-zero "ref" adapter on TRL's side finds the gap (the test can fail);
- a trained start (a LoRA checkpoint as the model): the copy is kept and agrees exactly, the base model would not;
- the same with the copy removed first, as Unsloth's trainer removes it: choose_reference's copy agrees exactly;
- resuming a run whose checkpoints hold a "ref/" copy loads the trained policy, not only the copy (transformers
  alone would not), for a trained start and for checkpoints saved before the copy of a fresh LoRA was dropped.

The run happens in its own process on the trl-peft backend (plain TRL, TRL's fused LM head under Triton's
interpreter), like tests/test_algorithm.py.

    .venv/bin/pytest tests/test_reference.py
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys
import torch
from sarashina_grpo.modeling import use_triton_interpreter_without_gpu

use_triton_interpreter_without_gpu()  # TRL's fused LM head on CPU
from sarashina_grpo import compat, rewards
from sarashina_grpo.config import article_settings
from sarashina_grpo.modeling import lora_config
from sarashina_grpo.pipeline import build_trainer, load_model, prepare, run_training
from peft import get_peft_model
from transformers import set_seed

model_dir, data, artifact = sys.argv[1:4]
rewards.REWARD_FUNCS["fixed"] = lambda completions, **kwargs: [0.0, 1.0, 3.0, 2.0] * (len(completions) // 4)
SETTINGS = dict(data_path=data, load_in_4bit=False, backend="trl-peft", save_steps=1, num_generations=4,
                per_device_train_batch_size=4, max_completion_length=8, max_prompt_length=128, max_seq_length=256,
                learning_rate=0.05, beta=0.04, warmup_steps=0.0, reward_names=("fixed",), log_completions=False,
                seed=0)
choose = compat.choose_reference


def move(model, adapter, seed, scale=0.3):
    # a policy that training has moved: the same seeded lora_B in every trainer
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if f"lora_B.{adapter}." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def loaded(run):
    # the model with its adapter already on, as Unsloth's load returns it (the plain backend leaves the LoRA to TRL's
    # peft_config=, where TRL keeps no copy and the base model is the reference: what choose_reference picks)
    policy, tokenizer = load_model(run)
    set_seed(0)
    return get_peft_model(policy, lora_config(run.settings)), tokenizer


def trainer(name, how="ours", warm=False):
    run = prepare(article_settings(model_name=model_dir, max_steps=1, **SETTINGS), artifact_dir=artifact, run_name=name)
    policy, tokenizer = loaded(run)
    if warm:
        move(policy, "default", seed=2)  # a trained start, as a LoRA checkpoint given as the model
    compat.choose_reference = {"ours": choose, "trl": lambda t: None,  # TRL alone: its "ref" copy, as it made it
                               "unsloth": lambda t: (t.model.delete_adapter("ref"), choose(t))[1]}[how]
    built = build_trainer(run, policy, tokenizer, report_to="none")
    compat.choose_reference = choose
    return built


def score(t, disabled=False):
    t.model.train()
    move(t.model, "default", seed=1)
    torch.manual_seed(0)
    rows = [t.train_dataset[0]] * 4
    out = getattr(t, compat.SCORE_METHOD)(rows)
    t.current_gradient_accumulation_steps = 1  # what Trainer's loop sets before compute_loss (no accumulation here)
    loss = t.compute_loss(t.model, out).item()
    t.log({})
    kl = t.state.log_history[-1]["kl"]
    base = None
    if disabled:  # the adapter-disabled log-probs of the same completions, by hand
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        n = out["completion_ids"].shape[1]
        with torch.no_grad(), t.model.disable_adapter():
            logits = t.model(input_ids=ids, attention_mask=mask).logits[:, -n - 1:-1].float() / t.temperature
        base = torch.log_softmax(logits, -1).gather(-1, out["completion_ids"].unsqueeze(-1)).squeeze(-1)
    return {"ids": out["completion_ids"], "mask": out["completion_mask"], "ref": out["ref_per_token_logps"],
            "loss": loss, "kl": kl, "base": base, "reference": getattr(t, "kl_reference", None),
            "adapters": list(t.model.peft_config)}


def gap(a, b, key="ref"):
    assert torch.equal(a["ids"], b["ids"]), "the two trainers sampled different completions"
    return ((a[key] - b["ref"]).abs() * a["mask"]).max().item()


def summary(a, b, **extra):
    return {"gap": gap(a, b), "loss": [a["loss"], b["loss"]], "kl": [a["kl"], b["kl"]],
            "reference": [a["reference"], b["reference"]], "adapters": [a["adapters"], b["adapters"]], **extra}


result = {}
ours, trl = score(trainer("fresh-ours")), score(trainer("fresh-trl", how="trl"))
result["fresh"] = summary(ours, trl)
off = trainer("fresh-trl-moved-ref", how="trl")
move(off.model, "ref", seed=3, scale=0.05)  # a reference that is not the base model
result["wrong_reference"] = summary(ours, score(off))
warm_ours = score(trainer("warm-ours", warm=True), disabled=True)
warm_trl = score(trainer("warm-trl", how="trl", warm=True))
result["warm"] = summary(warm_ours, warm_trl, base_gap=gap(warm_ours, warm_trl, key="base"))
result["unsloth_like"] = summary(score(trainer("warm-unsloth", how="unsloth", warm=True)), warm_trl)


def resumed_kl(name, fixed=True, warm=True):
    # a run checkpointed with its "ref/" copy (a warm start; or a fresh one as TRL alone, and this project before,
    # saved it), then resumed: step 2 starts from the step-1 policy
    first = prepare(article_settings(model_name=model_dir, max_steps=1, **SETTINGS), artifact_dir=artifact,
                    run_name=name)
    policy, tokenizer = loaded(first)
    if warm:
        move(policy, "default", seed=2)
    compat.choose_reference = choose if warm else lambda t: None
    built = build_trainer(first, policy, tokenizer, report_to="none")
    compat.choose_reference = choose
    run_training(built, first)
    saved = sorted(p.name for p in (first.paths.output_dir / "checkpoint-1").iterdir() if p.is_dir())
    again = prepare(article_settings(model_name=model_dir, max_steps=2, **SETTINGS), artifact_dir=artifact, resume=name)
    policy, tokenizer = loaded(again)
    if warm:
        move(policy, "default", seed=2)
    fix = compat.resume_loads_the_policy
    compat.resume_loads_the_policy = fix if fixed else lambda trainer: None  # transformers alone
    resumed = build_trainer(again, policy, tokenizer, report_to="none")
    compat.resume_loads_the_policy = fix
    run_training(resumed, again)
    return {"subfolders": saved, "kl": [h["kl"] for h in resumed.state.log_history if "kl" in h],
            "adapters": list(resumed.model.peft_config)}


result["resume"] = resumed_kl("resumed")
result["resume_unfixed"] = resumed_kl("resumed-unfixed", fixed=False)
result["resume_old_checkpoint"] = resumed_kl("resumed-old", warm=False)
print("RESULT", json.dumps(result))
"""


@pytest.fixture(scope="module")
def compared(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    data = tmp / "prompts.csv"
    data.write_text("prompt,lang\nこんにちは,ja\n元気ですか？,ja\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir), str(data), str(tmp / "artifact")],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_a_fresh_lora_scores_the_base_model_without_the_reference_copy(compared):
    fresh = compared["fresh"]
    assert fresh["reference"] == ["base", None] and fresh["adapters"] == [["default"], ["default", "ref"]]


def test_the_base_model_reference_is_trls_reference_to_the_last_bit(compared):
    fresh = compared["fresh"]
    assert fresh["gap"] <= 1e-6  # why: B = 0 makes the adapter add exact zeros; both paths run the same forward
    assert fresh["loss"][0] == pytest.approx(fresh["loss"][1], abs=1e-7)
    assert fresh["kl"][0] == pytest.approx(fresh["kl"][1], abs=1e-7) and fresh["kl"][0] > 1e-4  # the policy moved


def test_the_comparison_finds_a_reference_that_is_not_the_base_model(compared):
    wrong = compared["wrong_reference"]
    # why: the check above must be able to fail: a non-zero "ref" adapter on TRL's side shows up as a gap
    assert wrong["gap"] > 1e-3 and wrong["kl"][0] != pytest.approx(wrong["kl"][1], abs=1e-6)


def test_a_trained_start_keeps_trls_copy_and_the_base_model_would_be_wrong(compared):
    warm = compared["warm"]
    assert warm["reference"][0] == "ref" and warm["gap"] <= 1e-6
    assert warm["kl"][0] == pytest.approx(warm["kl"][1], abs=1e-7)
    assert warm["base_gap"] > 1e-3  # why: here the adapter-disabled forward is not the reference


def test_where_unsloth_removed_the_copy_the_one_added_back_is_trls(compared):
    like = compared["unsloth_like"]
    assert like["reference"][0] == "ref" and like["gap"] <= 1e-6
    assert like["kl"][0] == pytest.approx(like["kl"][1], abs=1e-7)


def test_resuming_a_run_with_the_reference_copy_continues_from_its_trained_policy(compared):
    resume = compared["resume"]
    assert resume["subfolders"] == ["ref"]  # why: transformers alone would then load ref/ and not the policy
    # step 1 starts at the reference (KL 0); step 2, resumed, starts from the moved policy
    assert resume["kl"][0] == pytest.approx(0.0, abs=1e-7) and resume["kl"][1] > 1e-4


def test_a_checkpoint_saved_with_a_copy_of_a_fresh_lora_resumes_its_trained_policy(compared):
    old = compared["resume_old_checkpoint"]
    # why: checkpoints written before the copy was dropped hold ref/ too; the resumed run now scores the base model
    assert old["subfolders"] == ["ref"] and old["kl"][0] == pytest.approx(0.0, abs=1e-7) and old["kl"][1] > 1e-4
    assert old["adapters"] == ["default"]  # the reloaded copy of the fresh LoRA is dropped again


def test_without_the_fix_the_resumed_run_restarts_from_its_starting_policy(compared):
    # why: the check above must be able to fail: transformers alone reloads ref/ only, so step 2 has KL 0 again
    assert compared["resume_unfixed"]["kl"] == pytest.approx([0.0, 0.0], abs=1e-7)
