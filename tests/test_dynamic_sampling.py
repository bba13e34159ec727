"""DAPO's dynamic sampling (``dynamic_sampling.py``): flat groups dropped, the batch filled with fresh groups that
have a reward spread, within the bound on extra generation batches, and counted.

    .venv/bin/pytest tests/test_dynamic_sampling.py
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from sarashina_grpo.dynamic_sampling import DynamicSampling, flat_groups, merge

PAD = 0


def scored(advantages: list[float], prompt_width: int, completion_width: int, tag: int) -> dict:
    """A text batch as TRL's scoring step returns it; every token id is ``tag`` so rows can be traced."""
    rows = len(advantages)
    return {"prompt_ids": torch.full((rows, prompt_width), tag), "prompt_mask": torch.ones(rows, prompt_width),
            "completion_ids": torch.full((rows, completion_width), tag),
            "completion_mask": torch.ones(rows, completion_width),
            "advantages": torch.tensor(advantages), "num_items_in_batch": torch.tensor(rows * completion_width)}


class FakeTrainer:
    num_generations = 2
    train_dataset = [{"prompt": f"p{i}"} for i in range(5)]
    processing_class = type("Tok", (), {"pad_token_id": PAD})()

    def __init__(self):
        self.model = torch.nn.Linear(1, 1)  # in training mode
        self._metrics = {"train": defaultdict(list)}
        self.state = type("State", (), {"global_step": 3})()


def test_a_group_is_flat_when_all_its_advantages_are_equal():
    # why: normalize_then_sum gives a flat group a batch-wide constant advantage, not 0
    assert flat_groups(torch.tensor([0.0, 0.0, 0.7, -0.7, 0.3, 0.3]), 2) == [True, False, True]


def test_merge_pads_prompts_on_the_left_and_completions_on_the_right():
    merged = merge([(scored([1.0, -1.0], 2, 3, 7), [0]), (scored([1.0, -1.0], 4, 1, 8), [0])], 2, PAD)
    assert merged["prompt_ids"][0].tolist() == [0, 0, 7, 7] and merged["prompt_mask"][0].tolist() == [0, 0, 1, 1]
    assert merged["completion_ids"][2].tolist() == [8, 0, 0] and merged["completion_mask"][2].tolist() == [1, 0, 0]
    assert merged["num_items_in_batch"].item() == 2 * 3 + 2 * 1  # why: TRL's loss divides by the tokens it scores


def test_merge_keeps_unknown_per_row_tensors_and_the_first_batchs_other_values():
    first = {**scored([1.0, -1.0], 2, 3, 7), "extra_logps": torch.ones(2, 3), "flag": torch.tensor(True)}
    second = {**scored([1.0, -1.0], 2, 1, 8), "extra_logps": torch.ones(2, 1), "flag": torch.tensor(False)}
    merged = merge([(first, [0]), (second, [0])], 2, PAD)
    # why: Unsloth's compiled trainer may return more than TRL's keys; each row must keep its own values
    assert merged["extra_logps"].tolist()[2] == [1.0, 0.0, 0.0] and merged["flag"].item() is True
    assert list(merged) == list(first)  # why: TRL's shuffle reads the batch size from the first value


def sampler(batches: list[dict], max_rounds: int):
    trainer = FakeTrainer()
    calls = []

    def score(inputs):
        calls.append(inputs)
        return batches[len(calls) - 1]

    return DynamicSampling(trainer, score, max_rounds=max_rounds, seed=0), trainer, calls


def test_flat_groups_are_replaced_by_fresh_groups_with_a_spread():
    first = scored([0.0, 0.0, 1.0, -1.0], 2, 2, 1)  # group 0 flat
    fresh = scored([0.5, 0.5, 1.0, -1.0], 3, 2, 2)  # its group 1 has a spread
    ds, trainer, calls = sampler([first, fresh], max_rounds=2)
    batch = ds(["a", "a", "b", "b"])
    assert batch["completion_ids"][:, 0].tolist() == [1, 1, 2, 2] and len(calls) == 2
    assert [r["prompt"] for r in calls[1][::2]] == [calls[1][0]["prompt"], calls[1][2]["prompt"]]  # whole groups
    assert dict(trainer._metrics["train"]) == {"dynamic_sampling/flat_groups": [1.0],
                                               "dynamic_sampling/extra_rollouts": [4.0],
                                               "dynamic_sampling/flat_kept": [0.0]}


def test_the_fresh_prompts_depend_on_the_seed_and_the_step_only():
    first = scored([0.0, 0.0, 1.0, -1.0], 2, 2, 1)
    fresh = scored([0.5, 0.5, 1.0, -1.0], 3, 2, 2)
    drawn = []
    for _ in range(2):
        ds, _, calls = sampler([first, fresh], max_rounds=2)
        ds(["a", "a", "b", "b"])
        drawn.append([row["prompt"] for row in calls[1]])
    assert drawn[0] == drawn[1]  # why: a resumed run draws what an uninterrupted one would at that step


def test_the_bound_on_extra_batches_is_kept_and_the_batch_keeps_its_size():
    flat = scored([0.0, 0.0, 0.0, 0.0], 2, 2, 1)
    ds, trainer, calls = sampler([flat, flat, flat, flat], max_rounds=2)
    batch = ds(["a", "a", "b", "b"])
    assert len(calls) == 3 and batch is flat  # why: 2 extra batches at most, then the flat groups stay
    assert ds.totals == {"batches": 1, "flat_groups": 2, "extra_rollouts": 8, "flat_kept": 2}


def test_a_batch_without_flat_groups_costs_nothing_extra():
    spread = scored([1.0, -1.0, 1.0, -1.0], 2, 2, 1)
    ds, _, calls = sampler([spread], max_rounds=2)
    assert ds(["a", "a", "b", "b"]) is spread and len(calls) == 1


def test_dynamic_sampling_refuses_several_processes():
    from sarashina_grpo.dynamic_sampling import install
    from sarashina_grpo.project import SettingsError

    trainer = type("T", (), {"accelerator": type("A", (), {"num_processes": 2})()})()
    with pytest.raises(SettingsError, match="one process"):
        install(trainer, max_rounds=2, seed=0)


# Every first scoring of a step finds only flat groups, every second one only groups with a spread.
STAGED_REWARD = '''
CALLS = [0]


def staged_reward(completions, **kwargs):
    CALLS[0] += 1
    return [0.0 if CALLS[0] % 2 else float(i % 2) for i in range(len(completions))]
'''


@pytest.mark.slow
def test_a_tiny_run_trains_on_the_fresh_groups(tiny_model_dir, tmp_path):
    import contextlib
    import io

    import unsloth  # noqa: F401

    from sarashina_grpo.config import article_settings
    from sarashina_grpo.pipeline import train

    (tmp_path / "staged.py").write_text(STAGED_REWARD)
    settings = article_settings(model_name=str(tiny_model_dir), load_in_4bit=False, max_steps=2, save_steps=10,
                                max_completion_length=8, num_generations=2, per_device_train_batch_size=4,
                                reward_names=[f"{tmp_path / 'staged.py'}:staged_reward"], log_completions=False,
                                dynamic_sampling=True, dynamic_sampling_max_rounds=1)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = train(settings, artifact_dir=tmp_path / "artifact")
    # why: the merged batch (real TRL tensors: reference log-probs, masks, token counts) must train
    assert trainer.state.global_step == 2
    assert trainer.dynamic_sampling.totals == {"batches": 2, "flat_groups": 4, "extra_rollouts": 8, "flat_kept": 0}
    logged = [h for h in trainer.state.log_history if "dynamic_sampling/flat_groups" in h]
    assert [h["dynamic_sampling/extra_rollouts"] for h in logged] == [4.0, 4.0]


def test_dynamic_sampling_with_a_batch_wide_std_is_refused_before_anything_loads():
    from sarashina_grpo.config import article_settings
    from sarashina_grpo.project import SettingsError

    # why: a fresh batch's advantages are scaled by its own std, so the merged batch would mix two scales
    with pytest.raises(SettingsError, match="Use --scale-rewards group or none with it"):
        article_settings(dynamic_sampling=True, scale_rewards="batch")
    assert article_settings(dynamic_sampling=True, scale_rewards="group").dynamic_sampling
