"""``infer`` and ``eval`` check what they can before a model loads, and the chat ends the way a shell user ends it.

Nothing here loads a model: Unsloth is replaced by a stand-in that fails the test if anything is loaded, or the
loading function by one that returns placeholders.

    .venv/bin/pytest tests/test_command_guards.py
"""

from __future__ import annotations

import io
import json
import sys

import pytest
from checkpoint_files import make_checkpoint

from sarashina_grpo import inference, preflight
from sarashina_grpo.cli import main
from sarashina_grpo.evaluation import eval_rows, evaluate, write_eval
from sarashina_grpo.inference import chat_loop
from sarashina_grpo.project import SettingsError


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


# --- the chat -------------------------------------------------------------------------------------------------


class EchoChat:
    def say(self, text: str) -> str:
        return f"<response>{text}</response>"


def scripted(*lines):
    """``input`` reading ``lines``, then what ends them (EOFError: Ctrl-D; KeyboardInterrupt: Ctrl-C)."""
    feed = iter(lines)

    def read(prompt: str) -> str:
        item = next(feed)
        if isinstance(item, type) and issubclass(item, BaseException):
            raise item
        return item

    return read


@pytest.mark.parametrize("end", [EOFError, KeyboardInterrupt, ""])
def test_the_chat_ends_cleanly_on_ctrl_d_ctrl_c_or_an_empty_line(end):
    said = []
    chat_loop(EchoChat(), read=scripted("こんにちは", end), write=said.append)  # was: EOFError traceback
    assert said[0] == "<response>こんにちは</response>" and len(said) <= 2


def test_infer_without_prompts_ends_at_the_end_of_its_input(monkeypatch, capsys):
    monkeypatch.setattr(inference, "load_for_inference", lambda settings, threads=None: (object(), object()))
    monkeypatch.setattr(inference, "generate", lambda model, tokenizer, conversations, gen: ["はい"])
    monkeypatch.setattr(sys, "stdin", io.StringIO("こんにちは\n"))  # then end of input, as `echo … |` or Ctrl-D
    assert main(["infer", "--model", "tiny"]) == 0
    captured = capsys.readouterr()
    assert "はい" in captured.out and "Traceback" not in captured.err


# --- the base model of a checkpoint ---------------------------------------------------------------------------


def checkpoint_on_moved_base(tmp_path):
    base = tmp_path / "models" / "base"  # trained on this folder, which was moved away since
    checkpoint = make_checkpoint(tmp_path / "outputs" / "r", 5)
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    (checkpoint / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    return checkpoint, base


@pytest.mark.parametrize("command", ["infer", "eval"])
def test_a_checkpoint_whose_base_model_moved_is_one_error_before_loading(no_unsloth_load, capsys, tmp_path, command):
    checkpoint, base = checkpoint_on_moved_base(tmp_path)
    extra = ["こんにちは"] if command == "infer" else ["--artifact-dir", str(tmp_path / "a")]
    code = main([command, "--model", str(checkpoint), *extra])  # was: OSError from the hub code after loading
    err = capsys.readouterr().err
    assert code == 2 and last_line(err) == (
        f"error: {checkpoint}: its base model folder {base} (adapter_config.json, base_model_name_or_path) does "
        "not exist here or has no config.json. Put the base model back there, or write its new place (a folder or "
        f"hub id) into {checkpoint / 'adapter_config.json'}.")


def test_a_base_model_named_by_hub_id_is_the_loaders_business(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "outputs" / "r", 5)
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    (checkpoint / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "org/model"}))
    preflight.check_model_name(str(checkpoint))


# --- an empty evaluation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_an_evaluation_of_no_prompts_is_an_error_before_loading(no_unsloth_load, capsys, tmp_path, limit):
    code = main(["eval", "--model", "tiny", "--limit", limit, "--artifact-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and last_line(err) == (f"error: --limit (notebook: EVAL_LIMIT) must be at least 1 (prompts to "
                                            f"evaluate), got {limit}; leave it out (notebook: None) to evaluate all.")
    assert not (tmp_path / "eval").exists()  # was: an empty evaluation saved with exit 0


def test_the_library_refuses_an_empty_evaluation_too(tmp_path, write_csv):
    data = write_csv("prompt,lang\nこんにちは,ja\n")
    with pytest.raises(SettingsError, match=r"--limit \(notebook: EVAL_LIMIT\) must be at least 1"):
        evaluate(None, None, "e", data_path=data, artifact_dir=tmp_path, limit=0)
    with pytest.raises(SettingsError, match="Nothing was generated for e; no evaluation was saved"):
        write_eval([], tmp_path / "eval" / "e")
    assert not (tmp_path / "eval").exists()


def test_a_limit_keeps_the_first_prompts(write_csv):
    data = write_csv("prompt,lang\n一,ja\n二,ja\n三,ja\n")
    assert [r.prompt for r in eval_rows(data, 2)] == ["一", "二"]


def test_an_evaluation_name_is_a_plain_folder_name_too(no_unsloth_load, capsys, tmp_path):
    code = main(["eval", "--model", "tiny", "--name", "../../x", "--artifact-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and last_line(err) == ("error: --name '../../x' is not a plain folder name (it holds a path "
                                            "separator). An evaluation lives in eval/<name>/; use letters, digits, "
                                            "'-', '_' and '.', e.g. 'lr5e-6-seed1'.")
    assert not (tmp_path / "x").exists()


# --- the context: prompt and answer together ------------------------------------------------------------------

CONTEXT_TOO_SMALL = ("error: --max-new-tokens (notebook: MAX_NEW_TOKENS) 100000 does not fit within --max-seq-length "
                     "64: that context holds the prompt and the answer together, so the prompt needs room too. Lower "
                     "--max-new-tokens well below 64, or raise --max-seq-length to 100000 plus the prompt's length "
                     "(e.g. 101024).")



@pytest.mark.parametrize("argv", [["infer", "こんにちは"], ["eval", "--limit", "1"]])
def test_answers_longer_than_the_context_are_refused_before_loading(no_unsloth_load, capsys, tmp_path, argv):
    code = main([*argv, "--model", "tiny", "--max-new-tokens", "100000", "--max-seq-length", "64", "--threads", "1",
                 *(["--artifact-dir", str(tmp_path)] if argv[0] == "eval" else [])])
    # why: generation does not stop at the context's end (transformers only warns); this ran on past 150 s
    assert code == 2 and last_line(capsys.readouterr().err) == CONTEXT_TOO_SMALL
    assert not (tmp_path / "eval").exists()


def test_an_answer_as_long_as_the_context_leaves_no_room_for_the_prompt(no_unsloth_load, capsys):
    assert main(["infer", "--model", "tiny", "--max-new-tokens", "64", "--max-seq-length", "64", "hi"]) == 2
    assert "64 does not fit within --max-seq-length 64" in last_line(capsys.readouterr().err)
    preflight.check_context(63, 64)  # one token of room: the least that can hold a prompt


@pytest.mark.parametrize("argv", [["infer", "hi"], ["eval", "--limit", "1"]])
@pytest.mark.parametrize("length", ["0", "-5"])
def test_the_context_is_a_positive_number_of_tokens(no_unsloth_load, capsys, tmp_path, argv, length):
    code = main([*argv, "--model", "tiny", "--max-new-tokens", "4", "--max-seq-length", length,
                 *(["--artifact-dir", str(tmp_path)] if argv[0] == "eval" else [])])
    assert code == 2 and last_line(capsys.readouterr().err) == (
        f"error: --max-seq-length must be a positive integer (the tokens of prompt and answer together), got "
        f"{length}; leave it out for 4096.")


def test_the_library_checks_the_context_before_loading_too(no_unsloth_load, tmp_path):
    from sarashina_grpo.evaluation import evaluate_model
    from sarashina_grpo.inference import GenerationSettings
    from sarashina_grpo.options import ModelOptions

    with pytest.raises(SettingsError, match="--max-seq-length must be a positive integer"):
        evaluate_model(ModelOptions(model_name="tiny", max_seq_length=0), "e", artifact_dir=tmp_path)
    with pytest.raises(SettingsError, match="does not fit within --max-seq-length 64"):
        evaluate_model(ModelOptions(model_name="tiny", max_seq_length=64), "e", artifact_dir=tmp_path,
                       gen=GenerationSettings(max_new_tokens=512))


# --- folders that are files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("file, expected", [
    ("artifact", "error: Artifact folder {root} is a file. Choose another with --artifact-dir, or move the file."),
    ("artifact/eval", "error: {root}/eval is a file, but it must be the folder of the evaluations. Move or rename "
                      "the file, or choose another --artifact-dir."),
    ("artifact/eval/e", "error: {root}/eval/e is a file, but it must be the folder of evaluation 'e'. Move or rename "
                        "the file, or choose another name (CLI --name, notebook EVAL_NAME)."),
])
def test_a_file_where_the_evaluation_needs_a_folder_is_refused_before_loading(no_unsloth_load, capsys, tmp_path, file,
                                                                              expected):
    root = tmp_path / "artifact"
    (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file).write_text("mine")
    # why: the model loaded and generated before the evaluation found it could not be saved
    assert main(["eval", "--model", "tiny", "--name", "e", "--limit", "1", "--artifact-dir", str(root)]) == 2
    assert last_line(capsys.readouterr().err) == expected.format(root=root)
    assert (tmp_path / file).read_text() == "mine"


# --- empty values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blank", ["", "  ", "\u3000"])
def test_a_blank_prompt_is_refused_naming_which_one(no_unsloth_load, capsys, blank):
    assert main(["infer", "--model", "tiny", "こんにちは", blank, "おはよう"]) == 2
    # why: it was answered as if something had been asked
    assert last_line(capsys.readouterr().err).startswith("error: The 2nd prompt is empty")


def test_an_empty_evaluation_name_is_refused_not_taken_for_none(no_unsloth_load, capsys, tmp_path):
    assert main(["eval", "--model", "tiny", "--name", "", "--limit", "1", "--artifact-dir", str(tmp_path)]) == 2
    # why: it was read as "no --name" and the evaluation went to eval/tiny
    assert last_line(capsys.readouterr().err) == ("error: --name '' is not a plain folder name (it is empty). An "
                                                  "evaluation lives in eval/<name>/; use letters, digits, '-', '_' and "
                                                  "'.', e.g. 'lr5e-6-seed1'.")
    assert not (tmp_path / "eval").exists()



def test_a_blank_chat_turn_is_refused_by_the_library():
    chat = inference.Chat(None, None)
    with pytest.raises(SettingsError, match=r"^The chat turn is empty \(only spaces or invisible characters\): say "
                                            r"something, or end the chat\.$"):
        chat.say(" ")
    assert [m["role"] for m in chat.messages] == ["system"]  # nothing half-added to the history


# --- the library's generation settings ------------------------------------------------------------------------


@pytest.mark.parametrize("given, expected", [
    (dict(max_new_tokens=0), "--max-new-tokens (notebook: MAX_NEW_TOKENS) must be at least 1 (a whole number), got 0."),
    (dict(max_new_tokens="512"), "--max-new-tokens (notebook: MAX_NEW_TOKENS) must be at least 1 (a whole number), "
                                 "got '512'."),
    (dict(do_sample="False"), "--sample (notebook: DO_SAMPLE) must be True or False, got 'False' (str)."),  # sampled
    (dict(top_p=0), "--top-p must be in (0, 1] (it applies with --sample), got 0."),
])
def test_generation_settings_check_themselves_by_the_flags_rule(given, expected):
    # why: built in code they skipped preflight.check_generation and failed late, or sampled when told "False"
    with pytest.raises(SettingsError) as err:
        inference.GenerationSettings(**given)
    assert str(err.value) == f"GenerationSettings: {expected}"
