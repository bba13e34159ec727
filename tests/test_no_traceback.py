"""No traceback reaches a user: the environment (stale WORLD_SIZE, SARASHINA_GRPO_HOME a file), TRL fields (seed
range, report_to without its package, push_to_hub offline), a closed stdin, huge --threads, model folders that
cannot load (no tokenizer, garbage config.json, a .gguf file), GGUFs without a tokenizer, Shift_JIS warm-start
examples, a file-size limit (EFBIG): each is one named error before loading, or handled. No model is loaded.

    .venv/bin/pytest tests/test_no_traceback.py
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil

import pytest
from gguf_files import write_gguf

from sarashina_grpo import errors
from sarashina_grpo.data import DataError
from sarashina_grpo.errors import user_error_message
from sarashina_grpo.inference import chat_loop
from sarashina_grpo.preflight import (
    ModelNotFoundError,
    check_model_name,
    check_push_to_hub,
    check_report_to,
    check_threads,
)
from sarashina_grpo.project import SettingsError, check_home_folder, check_launch_environment

# --- TRL's fields ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_a_seed_numpy_refuses_is_refused(seed):
    from sarashina_grpo.config import article_settings

    with pytest.raises(SettingsError, match=r"Settings.seed \(CLI --seed\) must be"):
        article_settings(seed=seed)


@pytest.mark.parametrize("seed", [0, 42, 2**32 - 1])
def test_seeds_numpy_takes_pass(seed):
    from sarashina_grpo.config import article_settings

    assert article_settings(seed=seed).seed == seed


def test_a_report_to_backend_that_is_not_installed_is_refused(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SettingsError, match="report_to 'wandb' needs the wandb package"):
        check_report_to(["tensorboard", "wandb"])


@pytest.mark.parametrize("value", ["none", "tensorboard", ["tensorboard"], [], None, "all"])
def test_report_to_values_that_need_nothing_missing_pass(value):
    check_report_to(value)


def test_push_to_hub_offline_is_refused(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SettingsError, match="push_to_hub is on but HF_HUB_OFFLINE is set"):
        check_push_to_hub(True)
    check_push_to_hub(False)


def test_push_to_hub_with_the_hub_unreachable_is_refused(monkeypatch):
    from huggingface_hub import constants

    from sarashina_grpo import preflight

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(preflight, "hub_reachable", lambda endpoint: False)
    with pytest.raises(SettingsError, match="cannot be reached"):
        check_push_to_hub(True)


def test_the_run_check_refuses_report_to_before_any_model_loads(monkeypatch, tmp_path, write_csv):
    import importlib.util

    from sarashina_grpo.config import article_settings
    from sarashina_grpo.preflight import check_run

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    data = str(write_csv("prompt,lang\nこんにちは,ja\n"))
    settings = article_settings(model_name="tiny", load_in_4bit=False, data_path=data, report_to="wandb")
    with pytest.raises(SettingsError, match="wandb"):
        check_run(settings, artifact_dir=tmp_path, check_model_files=False)


# --- the environment ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0"}, "no launcher started this process"),  # left over in a shell
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' in the environment is not a whole number"),
        ({"RANK": "x"}, "RANK='x'"),
        ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "h"}, "do not fit"),
        ({"WORLD_SIZE": "0"}, "do not fit"),
    ],
)
def test_stale_or_junk_launcher_variables_are_named(env, expected):
    with pytest.raises(SettingsError, match=expected):
        check_launch_environment(env)


@pytest.mark.parametrize("env", [{}, {"WORLD_SIZE": "1", "RANK": "0"}, {"WORLD_SIZE": "2", "RANK": "1",
                                                                         "MASTER_ADDR": "127.0.0.1"},
                                 {"WORLD_SIZE": ""}])
def test_a_launcher_or_no_launcher_passes(env):
    check_launch_environment(env)


def test_train_with_a_stale_world_size_is_one_line(monkeypatch, tmp_path):
    from contextlib import redirect_stderr

    from sarashina_grpo.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["train", "--model", "tiny", "--artifact-dir", str(tmp_path)])
    assert code == 2 and err.getvalue().startswith("error: WORLD_SIZE=2 is set") and "Traceback" not in err.getvalue()


def test_a_home_variable_naming_a_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SettingsError, match="SARASHINA_GRPO_HOME=.*a_file is a file"):
        check_home_folder({"SARASHINA_GRPO_HOME": str(tmp_path / "a_file")})
    monkeypatch.setenv("SARASHINA_GRPO_HOME", str(tmp_path / "a_file"))
    with pytest.raises(SettingsError, match="SARASHINA_GRPO_HOME"):
        check_model_name("tiny")  # before the tiny model would be built under it
    check_home_folder({"SARASHINA_GRPO_HOME": str(tmp_path)})


def test_a_mistyped_home_variable_is_refused_before_a_run_folder_is_made(tmp_path, monkeypatch):
    from contextlib import redirect_stderr

    from sarashina_grpo.cli import main

    monkeypatch.setenv("SARASHINA_GRPO_HOME", str(tmp_path / "typo_home"))
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["train", "--model", "tiny", "--max-steps", "1"])
    # why: it made /tmp/typo_home/artifact/ and trained there, exit 0
    assert code == 2 and "typo_home is not there (mistyped?)" in err.getvalue()
    assert not (tmp_path / "typo_home").exists()


@pytest.mark.parametrize("flag", ["--artifact-dir", "--resume", "--run-name"])
def test_an_empty_run_flag_is_refused_not_read_as_left_out(tmp_path, monkeypatch, flag):
    from contextlib import redirect_stderr

    from sarashina_grpo.cli import main

    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["train", "--model", "tiny", "--max-steps", "1", flag, ""])
    # why: --artifact-dir "$OUT" with OUT unset trained into ./artifact; --resume "" started a new run
    assert code == 2 and f"{flag} (notebook:" in err.getvalue() and "is empty" in err.getvalue()
    assert not (tmp_path / "artifact").exists()


def test_a_file_in_the_way_under_the_home_variable_names_it(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("SARASHINA_GRPO_HOME", str(tmp_path / "a_file"))
    err = NotADirectoryError(errno.ENOTDIR, "Not a directory", str(tmp_path / "a_file" / "artifact"))
    assert "point SARASHINA_GRPO_HOME" in user_error_message(err)
    monkeypatch.delenv("SARASHINA_GRPO_HOME")
    assert "choose another --artifact-dir" in user_error_message(err)


# --- a file-size limit (EFBIG) -----------------------------------------------------------------------------------

def test_efbig_from_python_is_named_as_a_size_limit():
    message = user_error_message(OSError(errno.EFBIG, "File too large", "/a/optimizer.pt"))
    assert message.startswith("File too large (/a/optimizer.pt)") and "ulimit -f" in message
    assert "No space left" not in message


def test_efbig_from_safetensors_is_named_as_a_size_limit():
    # why: safetensors' Rust writer raises its own error whose text carries "File too large (os error 27)"
    class SafetensorError(Exception):
        pass

    assert user_error_message(SafetensorError("Error while serializing: IoError(File too large (os error 27))")) \
        .startswith("File too large")


def test_a_short_torch_write_under_a_size_limit_mentions_the_limit(monkeypatch):
    monkeypatch.setattr(errors, "file_size_limit", lambda: 409_600)
    message = user_error_message(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"))
    assert "file-size limit of 409,600 bytes (ulimit -f)" in message


def test_a_short_torch_write_without_a_limit_still_says_disk_full(monkeypatch):
    monkeypatch.setattr(errors, "file_size_limit", lambda: None)
    assert "disk is most likely full" in user_error_message(RuntimeError("unexpected pos 704 vs 598"))


# --- commands -----------------------------------------------------------------------------------------------------

def test_a_closed_stdin_ends_the_chat_like_end_of_input():
    def closed(prompt):
        raise RuntimeError("input(): lost sys.stdin")

    chat_loop(chat=None, read=closed, write=lambda *a: None)  # returns, no traceback


def test_a_bad_file_descriptor_ends_the_chat():
    def closed(prompt):
        raise OSError(errno.EBADF, "Bad file descriptor")

    chat_loop(chat=None, read=closed, write=lambda *a: None)


def test_other_errors_in_the_chat_are_not_swallowed():
    def broken(prompt):
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        chat_loop(chat=None, read=broken, write=lambda *a: None)


def test_huge_thread_counts_are_refused():
    with pytest.raises(SettingsError, match="--threads 100000 is far more than this machine's"):
        check_threads(100_000)
    assert check_threads(os.cpu_count() or 1) == (os.cpu_count() or 1)


# --- model folders ------------------------------------------------------------------------------------------------

@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def test_a_model_folder_without_tokenizer_files_is_refused(model_copy):
    for path in list(model_copy.glob("tokenizer*")) + list(model_copy.glob("chat_template*")):
        path.unlink()
    with pytest.raises(ModelNotFoundError, match="has no tokenizer files"):
        check_model_name(str(model_copy))


@pytest.mark.parametrize(("change", "expected"), [
    ({"hidden_size": "sixty-four"}, "hidden_size = 'sixty-four', not a positive whole number"),
    ({"num_hidden_layers": 0}, "num_hidden_layers = 0"),
    ({"vocab_size": 1.5}, "vocab_size = 1.5"),
])
def test_a_model_config_with_garbage_counts_is_refused(model_copy, change, expected):
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ModelNotFoundError, match=expected):
        check_model_name(str(model_copy))


def test_a_model_config_that_is_a_list_is_refused(model_copy):
    (model_copy / "config.json").write_text("[]")
    with pytest.raises(ModelNotFoundError, match="holds a JSON list"):
        check_model_name(str(model_copy))


def test_an_intact_model_copy_passes(model_copy):
    check_model_name(str(model_copy))


def test_a_gguf_file_as_model_says_convert_it_first(tmp_path):
    gguf = tmp_path / "m.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError, match="is a GGUF file; convert it to a model folder first: sarashina-grpo "
                                                 "convert-gguf"):
        check_model_name(str(gguf))


def test_a_plain_file_as_model_is_called_a_file(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file, not a model folder"):
        check_model_name(str(tmp_path / "weights.bin"))


# --- GGUF files and warm-start examples ---------------------------------------------------------------------------

@pytest.mark.parametrize(("tokens", "scores", "expected"), [
    (False, False, "holds no tokenizer \\(tokenizer.ggml.tokens\\)"),
    (True, False, "holds a llama tokenizer without tokenizer.ggml.scores"),
])
def test_a_gguf_without_its_tokenizer_is_refused(tmp_path, tokens, scores, expected):
    from sarashina_grpo.realmodel import check_gguf

    with pytest.raises(SettingsError, match=expected):
        check_gguf(write_gguf(tmp_path / "m.gguf", tokens=tokens, scores=scores))


def test_a_gguf_with_tokens_and_scores_passes_the_tokenizer_check(tmp_path):
    from sarashina_grpo.realmodel import check_gguf

    assert check_gguf(write_gguf(tmp_path / "m.gguf", tokens=True, scores=True))["tokenizer.ggml.tokens.count"] \
        == 2


def test_a_folder_named_like_a_gguf_is_called_a_folder(tmp_path):
    from sarashina_grpo.realmodel import check_gguf

    (tmp_path / "a_folder.gguf").mkdir()
    with pytest.raises(SettingsError, match="is a folder; give the .gguf file itself"):
        check_gguf(tmp_path / "a_folder.gguf")


def test_shift_jis_warm_start_examples_are_read_with_a_warning(tmp_path, caplog):
    from sarashina_grpo.warmstart import read_format_examples

    row = {"prompt": "明日の予定は？", "think": "考える", "response": "休みです"}
    path = tmp_path / "examples.jsonl"
    path.write_bytes((json.dumps(row, ensure_ascii=False) + "\n").encode("cp932"))
    with caplog.at_level(logging.WARNING):
        assert read_format_examples(path) == [row]
    assert "decoded it as Shift_JIS" in caplog.text


def test_undecodable_warm_start_examples_are_one_data_error(tmp_path):
    from sarashina_grpo.warmstart import read_format_examples

    path = tmp_path / "examples.jsonl"
    path.write_bytes(b'{"prompt": "\xff\xfe\xfd"}\n')
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_format_examples(path)


# --- host memory -------------------------------------------------------------------------------------------------


def test_running_out_of_host_memory_is_one_line_naming_the_limit_or_the_machine(monkeypatch):
    import resource

    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (3 * 2**30, 3 * 2**30) if kind == resource.RLIMIT_AS
                        else real(kind))
    assert user_error_message(MemoryError()).startswith("Out of memory: this process may use at most 3.0 GiB")
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    wrapped = RuntimeError("while importing")
    wrapped.__cause__ = MemoryError()
    assert "the machine ran out of RAM" in user_error_message(wrapped)


@pytest.mark.slow
def test_train_under_an_address_space_limit_too_small_for_the_stack_is_refused_in_one_line(tmp_path):
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))

    command = [sys.executable, "-m", "sarashina_grpo", "train", "--model", "tiny", "--max-steps", "1",
               "--artifact-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=limit,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    # why: importing Unsloth, torchao and transformers under `ulimit -v` failed with a MemoryError traceback, or a
    # SyntaxError where Python's parser ran out; the limit is now refused before anything is imported
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [done.stderr.strip().splitlines()[-1]]
    assert done.stderr.startswith("error: This process may use at most 3.0 GiB of address space (ulimit -v)")


@pytest.mark.parametrize("value", ["abc", "0", "-2"])
def test_an_omp_num_threads_that_is_no_count_is_refused(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    # why: torch ignored it and the run silently took its own thread count
    with pytest.raises(SettingsError, match=f"OMP_NUM_THREADS='{value}' is not a number of threads"):
        check_threads(None)


@pytest.mark.parametrize("value", ["4", "4,2", ""])
def test_an_omp_num_threads_that_is_a_count_or_empty_is_taken(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert check_threads(2) == 2
