"""Roles: a persona added to the system prompt keeps the format instructions, comes from text or a file, reaches
every chat and prompt row that asks for it; the leak metric measures thinking repeated verbatim in the response."""

from __future__ import annotations

import csv

import pytest

from sarashina_grpo.data import load_prompts
from sarashina_grpo.project import SYSTEM_PROMPT, SettingsError
from sarashina_grpo.roles import NOTHING, RoleError, leak_share, read_role, shown_turn, think_leak, with_role

MERCHANT = "あなたはサボテンを売る商人です。100円で仕入れたことは隠してください。"


def test_role_is_added_after_the_format_instructions():
    assert with_role(SYSTEM_PROMPT, MERCHANT).startswith(SYSTEM_PROMPT)  # the layout the rewards check stays


def test_role_text_is_in_the_system_prompt():
    assert with_role(SYSTEM_PROMPT, MERCHANT).endswith(MERCHANT)


def test_role_prompt_says_the_thinking_is_private():
    assert "相手には見えません" in with_role(SYSTEM_PROMPT, MERCHANT)  # the point of the article's role-play


def test_blank_role_leaves_the_system_prompt_unchanged():
    assert with_role(SYSTEM_PROMPT, "  \n") == SYSTEM_PROMPT and with_role(SYSTEM_PROMPT, None) == SYSTEM_PROMPT


def test_role_file_is_read_and_stripped(tmp_path):
    path = tmp_path / "role.txt"
    path.write_text("\ufeff" + MERCHANT + "\n", encoding="utf-8")  # a BOM, as Windows Notepad writes
    assert read_role(path) == MERCHANT


def test_missing_role_file_is_a_clear_error(tmp_path):
    with pytest.raises(RoleError, match="not found"):
        read_role(tmp_path / "nope.txt")


def test_empty_role_file_is_a_clear_error(tmp_path):
    (tmp_path / "role.txt").write_text(" \n", encoding="utf-8")
    with pytest.raises(RoleError, match="empty"):
        read_role(tmp_path / "role.txt")


def test_a_role_file_of_megabytes_is_refused_before_it_reaches_a_prompt(tmp_path):
    (tmp_path / "role.txt").write_text("商人" * 1_000_000, encoding="utf-8")
    with pytest.raises(RoleError, match="limited to 20,000"):  # why: it would go whole into every prompt
        read_role(tmp_path / "role.txt")


def test_chat_puts_the_role_into_its_system_message():
    from sarashina_grpo.inference import Chat

    chat = Chat(model=None, tokenizer=None, role=MERCHANT)  # nothing generated: no model needed
    assert chat.messages == [{"role": "system", "content": with_role(SYSTEM_PROMPT, MERCHANT)}]


def test_answer_sends_the_role_with_every_prompt(monkeypatch):
    from sarashina_grpo import inference

    seen = []
    monkeypatch.setattr(inference, "generate", lambda model, tok, convs, gen, progress: seen.extend(convs) or
                        ["x"] * len(convs))
    inference.answer(None, None, ["いくら？", "高い！"], role=MERCHANT)
    assert [c[0]["content"] for c in seen] == [with_role(SYSTEM_PROMPT, MERCHANT)] * 2


# The leak metric: share of the response's character 8-grams that occur in the thinking.
def completion(think: str, response: str) -> str:
    return f"<think>\n{think}\n</think>\n<response>\n{response}\n</response>"


def test_copied_thinking_leaks_fully():
    assert think_leak(completion("本当は百円で買いました。", "本当は百円で買いました。")) == 1.0


def test_separate_thinking_and_speech_do_not_leak():
    assert think_leak(completion("本当は百円で買いました。", "これは珍しい品種ですよ。")) == 0.0


def test_half_copied_response_leaks_partly():
    # 20 characters: 13 windows of 8, the first 3 lie inside the copied 10-character clause
    assert leak_share("安いことは絶対に隠す", "安いことは絶対に隠すけれど珍しい品種です") == 3 / 13


def test_leak_is_none_without_both_sections():
    assert think_leak("<think>\n考えます。\n</think>") is None  # no response to judge


def test_leak_is_none_for_a_response_shorter_than_the_ngram():
    assert think_leak("<think>\nはい\n</think>\n<response>\nはい\n</response>") is None  # no 8-gram in "はい"


def test_unclosed_think_does_not_count_the_response_as_thinking():
    assert think_leak("<think>\n値段を考える\n<response>\nこれは珍しい品種ですよ。\n</response>") == 0.0


# Prompt files with roles.
def test_role_column_goes_into_that_rows_system_prompt(write_csv):
    path = write_csv(f"prompt,lang,role\nいくら？,ja,{MERCHANT}\nこんにちは,ja,\n")
    systems = [row["prompt"][0]["content"] for row in load_prompts(path)]
    assert systems == [with_role(SYSTEM_PROMPT, MERCHANT), SYSTEM_PROMPT]  # blank role: the plain prompt


def test_system_column_is_read_as_the_role(write_csv):
    path = write_csv(f"prompt,lang,system\nいくら？,ja,{MERCHANT}\n")
    assert load_prompts(path)[0]["prompt"][0]["content"] == with_role(SYSTEM_PROMPT, MERCHANT)


def test_same_prompt_under_two_roles_is_not_a_duplicate(write_csv):
    path = write_csv(f"prompt,lang,role\nいくら？,ja,{MERCHANT}\nいくら？,ja,あなたは手品師です。\n")
    assert len(load_prompts(path)) == 2


def test_roleplay_dataset_has_100_rows_with_varied_roles(repo_root):
    with open(repo_root / "datasets" / "roleplay.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 100 and all(r["role"].strip() and r["lang"] == "ja" for r in rows)
    assert len({r["role"] for r in rows}) >= 10 and len({r["prompt"] for r in rows}) == len(rows)


def test_roleplay_dataset_loads_with_its_roles(repo_root):
    dataset = load_prompts(repo_root / "datasets" / "roleplay.csv")
    assert len(dataset) >= 100 and all(row["prompt"][0]["content"] != SYSTEM_PROMPT for row in dataset)


def test_roleplay_recipe_loads_and_trains_on_the_roleplay_data(repo_root):
    from sarashina_grpo.config import load_settings

    settings = load_settings(recipe=repo_root / "configs" / "recipes" / "roleplay.yaml")
    assert settings.data_path == "datasets/roleplay.csv" and "japanese_purity" in settings.reward_names


# The command line: an unreadable role file or a taken evaluation name fails before the model loads.
def test_infer_with_a_missing_role_file_is_an_error_line(tmp_path, capsys):
    from sarashina_grpo.cli import main

    assert main(["infer", "--model", "tiny", "--role-file", str(tmp_path / "nope.txt"), "こんにちは"]) == 2
    assert "error: Role file" in capsys.readouterr().err  # one error line (log lines may come before it)


def test_eval_refuses_an_existing_name_without_overwrite(tmp_path, capsys):
    from sarashina_grpo.cli import main
    from sarashina_grpo.evaluation import write_eval

    write_eval([{"prompt": "p", "completion": "はい"}], tmp_path / "eval" / "base")
    assert main(["eval", "--model", "tiny", "--name", "base", "--artifact-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: An evaluation named 'base' already exists" in err and "--overwrite" in err


# --- how the role-play cell shows a turn ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("<think>\n高く売る\n</think>\n<response>\n3万円\n</response>", ("高く売る", "3万円")),  # why: the layout
        ("いらっしゃいませ", (NOTHING, "いらっしゃいませ")),  # why: no tags: the raw reply is the speech, not hidden
        ("<think>作戦<response>3万円です", ("作戦", "3万円です")),  # why: unclosed think stops at <response>
        ("<response>3万円です</think></resp", (NOTHING, "3万円です")),  # why: stray and cut-off tags never show
        ("<think>作戦</think>3万円です", ("作戦", "3万円です")),  # why: text after </think> outside tags is speech
        ("<think></think>", (NOTHING, NOTHING)),  # why: empty parts say so
    ],
)
def test_a_roleplay_turn_shows_thinking_and_speech_without_tag_fragments(reply, expected):
    assert shown_turn(reply) == expected


@pytest.mark.parametrize("role, system_prompt, expected", [
    (5, SYSTEM_PROMPT, "The role (CLI --role; notebook: ROLE) must be text, got 5 (int); None: no role."),
    (MERCHANT, None, "The system prompt (CLI --system-prompt; notebook: SYSTEM_PROMPT) must be text, got None "
                     "(NoneType)."),
])
def test_a_role_or_system_prompt_that_is_not_text_is_one_error_naming_it(role, system_prompt, expected):
    # why: answer(..., role=5) was an AttributeError from str.strip
    with pytest.raises(SettingsError) as err:
        with_role(system_prompt, role)
    assert str(err.value) == expected


def test_an_evaluations_one_role_for_all_prompts_is_checked_as_text_too():
    from sarashina_grpo.evaluation import generate_outputs

    # why: a role that was neither text nor a list failed in zip() with a TypeError
    with pytest.raises(SettingsError, match=r"^The role \(CLI --role; notebook: ROLE\) must be text, got 5 \(int\)"):
        generate_outputs(None, None, ["こんにちは"], roles=5)
