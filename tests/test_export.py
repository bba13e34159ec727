"""Exporting a checkpoint: clear errors before anything loads, a model card, and a merged model that plain
transformers loads and that answers exactly as the checkpoint does through the project's own inference.

The slow part builds a LoRA checkpoint on the tiny model with plain PEFT (non-zero LoRA B weights, so the adapter
changes the outputs), exports it merged in a subprocess, loads the result in a fresh subprocess that never imports
Unsloth or PEFT, and compares greedy tokens with ``inference.load_for_inference`` + ``generate`` (float32 on CPU:
random bf16 weights give near-ties that flip argmaxes), and runs the model card's usage snippet. A last test
trains one real GRPO step with the arithmetic recipe (Unsloth + TRL) and exports that checkpoint merged.
~7 minutes on 2 shared cores (fixture ~200 s, the training test ~200 s).

    uv run pytest tests/test_export.py -q               # add -m "not slow" for the checks and the model card only
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from checkpoint_files import write_adapter as write_adapter_weights

from sarashina_grpo.checkpoints import COMPLETE_MARKER
from sarashina_grpo.config import article_settings
from sarashina_grpo.export import (
    check_checkpoint,
    export_checkpoint,
    last_evaluation,
    model_card,
    portable_base,
    share_files,
)
from sarashina_grpo.project import SettingsError

PROMPTS = ["こんにちは", "週末は何をしよう？", "1個120円のりんごを3個買うといくらですか？"]
NEW_TOKENS = 24


def fake_checkpoint(run_dir: Path, step: int = 2, *, marker=True, weights=True, base="sbintuitions/x") -> Path:
    """A checkpoint folder's files without real weights: enough for every check made before a model loads."""
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if weights:
        write_adapter_weights(folder)  # a real (tiny) safetensors file: export verifies it as a resume would
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": 4,
                                                            "lora_alpha": 16}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if marker:
        (folder / COMPLETE_MARKER).write_text(f"{step}\n")
    return folder


def write_run(run_dir: Path, data: str = "datasets/arithmetic.csv", **settings) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"settings": article_settings(**settings).asked(), "data": data}
    (run_dir / "run.json").write_text(json.dumps(info, default=str))


def write_eval(artifact: Path, name: str, model: str, **metrics) -> Path:
    folder = artifact / "eval" / name
    folder.mkdir(parents=True)
    meta = {"model": model, "data": "datasets/arithmetic_eval.csv"}
    (folder / "metrics.json").write_text(json.dumps({**metrics, "meta": meta}))
    return folder


# --- errors, before anything loads -------------------------------------------------------------------------------


def test_missing_checkpoint_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="no such folder"):
        export_checkpoint(tmp_path / "nope", tmp_path / "out")


def test_a_missing_checkpoint_of_a_run_names_the_run_s_newest_finished_one(tmp_path):
    newest = fake_checkpoint(tmp_path / "run", step=100)
    with pytest.raises(SettingsError, match="no such folder") as info:
        export_checkpoint(tmp_path / "run" / "checkpoint-500", tmp_path / "out")
    assert str(newest) in str(info.value)


def test_a_run_folder_points_at_its_newest_finished_checkpoint(tmp_path):
    fake_checkpoint(tmp_path / "r", 9)
    newest = fake_checkpoint(tmp_path / "r", 10)
    fake_checkpoint(tmp_path / "r", 11, marker=False)
    with pytest.raises(SettingsError, match=f"is a run folder.*{newest}"):
        check_checkpoint(tmp_path / "r")


def test_half_written_checkpoint_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="half-written checkpoint"):
        check_checkpoint(fake_checkpoint(tmp_path / "r", marker=False))


def test_checkpoint_without_adapter_weights_is_incomplete(tmp_path):
    with pytest.raises(SettingsError, match="incomplete: no adapter weights"):
        check_checkpoint(fake_checkpoint(tmp_path / "r", weights=False))


def test_a_full_model_folder_needs_no_export(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"w")
    with pytest.raises(SettingsError, match="already a full model"):
        check_checkpoint(tmp_path)


def test_non_empty_out_is_never_overwritten(tmp_path):
    checkpoint = fake_checkpoint(tmp_path / "r")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SettingsError, match="exists and is not an empty folder"):
        export_checkpoint(checkpoint, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_out_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(SettingsError, match="is a file"):
        export_checkpoint(fake_checkpoint(tmp_path / "r"), tmp_path / "out")


def test_merging_onto_a_base_folder_that_is_gone_says_to_pass_base_model(tmp_path):
    checkpoint = fake_checkpoint(tmp_path / "r", base=str(tmp_path / "moved-away"))
    with pytest.raises(SettingsError, match="does not exist here.*--base-model"):
        export_checkpoint(checkpoint, tmp_path / "out", merged=True)


def test_cli_reports_a_bad_checkpoint_as_one_error_line(tmp_path, capsys):
    from sarashina_grpo.cli import main

    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: Checkpoint ")


def test_unknown_dtype_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="dtype must be one of"):
        export_checkpoint(fake_checkpoint(tmp_path / "r"), tmp_path / "out", merged=True, dtype="int8")


@pytest.mark.parametrize("flags, error", [("--dtype float16", "--dtype applies only to a merged export (--merged)"),
                                          ("--base-model /tmp/nonexist", "--base-model applies only to a merged"),
                                          ("--allow-other-base", "--allow-other-base applies only to a merged"),
                                          ("--merged false --dtype float32", "--dtype applies only to a merged"),
                                          ("--no-private", "--no-private applies only with --push-to-hub"),
                                          ("--private", "--private applies only with --push-to-hub")])
def test_a_flag_given_without_the_one_it_applies_with_is_one_error_line(tmp_path, capsys, monkeypatch, flags, error):
    # why: the adapter export ignored them (exit 0): a user asking for float16 weights got the adapter alone
    import sarashina_grpo.export as export
    from sarashina_grpo.cli import main

    monkeypatch.setattr(export, "write_adapter", lambda ckpt, folder: (folder / "adapter_model.safetensors").touch())
    checkpoint = fake_checkpoint(tmp_path / "r")
    assert main(["export", str(checkpoint), str(tmp_path / "out"), *flags.split()]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {error}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # nothing written
    assert main(["export", str(checkpoint), str(tmp_path / "out")]) == 0  # left out, their defaults are not "given"


def test_an_empty_base_model_is_refused_not_replaced_by_the_adapter_s(tmp_path):
    with pytest.raises(SettingsError, match="--base-model is an empty string"):
        export_checkpoint(fake_checkpoint(tmp_path / "r"), tmp_path / "out", merged=True, base_model="")


@pytest.mark.parametrize("out", ["exported", "link/exported"])
def test_out_inside_the_checkpoint_is_refused(tmp_path, monkeypatch, out):
    import sarashina_grpo.export as export

    monkeypatch.setattr(export, "write_adapter", lambda ckpt, folder: (folder / "adapter_model.safetensors").touch())
    checkpoint = fake_checkpoint(tmp_path / "r")
    (checkpoint / "link").symlink_to(checkpoint)  # the same folder under another name
    before = sorted(p.name for p in checkpoint.iterdir())
    with pytest.raises(SettingsError, match="is inside the checkpoint .*checkpoint-2 being exported"):
        export_checkpoint(checkpoint, checkpoint / out)
    assert sorted(p.name for p in checkpoint.iterdir()) == before


def test_a_failed_export_leaves_no_out_folder_behind(tmp_path, monkeypatch):
    import sarashina_grpo.export as export

    def broken(checkpoint, folder):
        (folder / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(export, "write_adapter", broken)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(fake_checkpoint(tmp_path / "r"), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # neither OUT nor a staging folder


def test_an_adapter_cut_off_is_an_error_and_nothing_is_written(tmp_path):
    checkpoint = fake_checkpoint(tmp_path / "r", 3)
    weights = checkpoint / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # the disk filled up while it was saved
    with pytest.raises(SettingsError, match=r"checkpoint-3 is damaged \(adapter_model.safetensors: cut off"):
        export_checkpoint(checkpoint, tmp_path / "out")  # was: copied, exit 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_nan_adapter_weights_are_not_exported(tmp_path):
    checkpoint = fake_checkpoint(tmp_path / "r", 3)
    write_adapter_weights(checkpoint, float("nan"))
    with pytest.raises(SettingsError, match="holds non-finite values"):
        check_checkpoint(checkpoint)


def test_a_damaged_checkpoint_a_resume_set_aside_is_an_error(tmp_path):
    fake_checkpoint(tmp_path / "r", 2)
    damaged = fake_checkpoint(tmp_path / "r", 3)
    (damaged / "adapter_config.json").write_text('{"r": 8, "lora_al')  # overwritten, then set aside by a resume
    aside = damaged.rename(tmp_path / "r" / "checkpoint-3.set-aside-20261126-101500")
    with pytest.raises(SettingsError, match=r"set-aside-20261126-101500 is damaged \(adapter_config.json: not valid "
                                            r"JSON.*e\.g\. .*checkpoint-2"):
        check_checkpoint(aside)


def test_a_half_written_checkpoint_a_resume_set_aside_is_an_error(tmp_path):
    aside = fake_checkpoint(tmp_path / "r", 3, marker=False).rename(tmp_path / "r" / "checkpoint-3.set-aside-x")
    with pytest.raises(SettingsError, match="was set aside by a resume as a half-written checkpoint"):
        check_checkpoint(aside)


def test_an_intact_set_aside_checkpoint_exports_with_a_warning(tmp_path, caplog):
    aside = fake_checkpoint(tmp_path / "r", 3).rename(tmp_path / "r" / "checkpoint-3.set-aside-x")
    assert check_checkpoint(aside) == aside  # why: a replaced branch is still a whole checkpoint
    assert "was set aside by a resume" in caplog.text


def test_staging_folders_of_killed_exports_are_removed_by_the_next_export(tmp_path, monkeypatch):
    import socket
    import subprocess

    import sarashina_grpo.export as export

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, host, now = int(dead.stdout), socket.gethostname(), time.time_ns()
    killed = tmp_path / f".out.partial-{host}-{dead_pid}-{now}"  # SIGKILL during `export --merged`
    older = tmp_path / f".other.partial-{dead_pid}-{now}"  # named before the host was part of the name
    running = tmp_path / f".x.partial-{host}-{os.getpid()}-{now}"  # an export running right now
    elsewhere = tmp_path / f".y.partial-another-host-{dead_pid}-{now}"  # its process is not visible from here
    for folder in (killed, older, running, elsewhere):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    monkeypatch.setattr(export, "write_adapter", lambda ckpt, folder: (folder / "adapter_model.safetensors").touch())
    export_checkpoint(fake_checkpoint(tmp_path / "r"), tmp_path / "out")
    assert not killed.exists() and not older.exists()
    assert running.exists() and elsewhere.exists()


def test_push_to_hub_creates_the_repo_and_uploads_out(tmp_path, monkeypatch):
    # A stand-in for huggingface_hub.HfApi: the real hub is never reached from tests (nor from this project).
    import huggingface_hub

    import sarashina_grpo.export as export

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs):
            files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
            calls.append(("upload_folder", kwargs["repo_id"], files))

    monkeypatch.setattr(export, "write_adapter", lambda ckpt, folder: (folder / "adapter_model.safetensors").touch())
    monkeypatch.setattr(export, "hub_unusable", lambda: None)  # the hub answers
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    export_checkpoint(fake_checkpoint(tmp_path / "r"), tmp_path / "out", push_to_hub="me/think")
    assert calls == [("create_repo", "me/think", {"private": True, "exist_ok": True}),
                     ("upload_folder", "me/think", ["README.md", "adapter_model.safetensors"])]


def test_a_failed_upload_keeps_the_export_and_says_so(tmp_path, monkeypatch):
    import sarashina_grpo.export as export

    def no_token(folder, repo_id, private):
        raise RuntimeError("401 Unauthorized")

    monkeypatch.setattr(export, "write_adapter", lambda checkpoint, folder: None)
    monkeypatch.setattr(export, "hub_unusable", lambda: None)  # the hub answers
    monkeypatch.setattr(export, "upload", no_token)
    with pytest.raises(SettingsError, match=r"Exported to .*out, but the upload to 'me/think' failed .*401.*Log in"):
        export_checkpoint(fake_checkpoint(tmp_path / "r"), tmp_path / "out", push_to_hub="me/think")
    assert (tmp_path / "out" / "README.md").exists()


def test_an_upload_cut_off_by_the_network_says_so_not_to_log_in(tmp_path, monkeypatch):
    import sarashina_grpo.export as export

    connect_error = type("ConnectError", (Exception,), {"__module__": "httpx"})  # httpx's, as the client raises it

    def dropped(folder, repo_id, private):
        raise connect_error("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(export, "write_adapter", lambda checkpoint, folder: None)
    monkeypatch.setattr(export, "hub_unusable", lambda: None)  # reachable when checked, gone by the upload
    monkeypatch.setattr(export, "upload", dropped)
    with pytest.raises(SettingsError) as info:
        export_checkpoint(fake_checkpoint(tmp_path / "r"), tmp_path / "out", push_to_hub="me/think")
    # why: a lost connection was reported as "Log in (`hf auth login` or HF_TOKEN)", the wrong cause
    assert "The hub could not be reached" in str(info.value) and "Log in" not in str(info.value)
    assert "hf upload me/think" in str(info.value) and (tmp_path / "out" / "README.md").exists()


@pytest.mark.parametrize(("offline", "why"), [
    (True, "HF_HUB_OFFLINE is set"),
    (False, "the hub cannot be reached (no network?)"),
])
def test_push_to_hub_without_a_hub_is_refused_before_anything_is_written(tmp_path, monkeypatch, offline, why):
    from huggingface_hub import constants

    import sarashina_grpo.export as export
    from sarashina_grpo import preflight

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(preflight, "hub_reachable", lambda endpoint: False)  # the few-second check train makes
    monkeypatch.setattr(export, "write_adapter", lambda ckpt, folder: pytest.fail("the export was written first"))
    with pytest.raises(SettingsError) as info:
        export_checkpoint(fake_checkpoint(tmp_path / "r"), tmp_path / "out", push_to_hub="me/think")
    # why: the export was written, then the upload failed with "ConnectError … Log in", naming the wrong cause
    assert str(info.value).startswith(f"--push-to-hub me/think: {why}, so the upload would fail")
    assert "nothing was written" in str(info.value) and sorted(p.name for p in tmp_path.iterdir()) == ["r"]


@pytest.mark.parametrize("given", [True, False])
def test_merging_into_an_unobtainable_hub_base_is_refused_in_seconds(tmp_path, monkeypatch, given):
    import huggingface_hub
    from huggingface_hub import constants

    import sarashina_grpo.export as export
    from sarashina_grpo import preflight

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(preflight, "hub_reachable", lambda endpoint: False)
    monkeypatch.setattr(export, "write_merged", lambda *args: pytest.fail("the base model was loaded"))
    checkpoint = fake_checkpoint(tmp_path / "r", base="someone/nonexistent-model")
    flags = {"base_model": "someone/nonexistent-model"} if given else {}
    with pytest.raises(SettingsError) as info:
        export_checkpoint(checkpoint, tmp_path / "out", merged=True, **flags)
    # why: the merge spent ~35 s in the hub client's retries after a warning, then failed
    source = "--base-model" if given else "from adapter_config.json, base_model_name_or_path"
    assert str(info.value).startswith(f"Base model 'someone/nonexistent-model' ({source}) is a hub id that is not in "
                                      "the Hugging Face cache")
    assert "cannot be reached (no network?)" in str(info.value) and "local folder with --base-model" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


@pytest.mark.parametrize("repo", ["not a repo id!!", "", "me/think/v2", "me/think.git"])
def test_a_malformed_hub_repo_id_is_refused_before_anything_is_written(tmp_path, monkeypatch, repo):
    # why: it failed only in the upload, after the export was written ("Exported to …, but the upload failed")
    import sarashina_grpo.export as export

    monkeypatch.setattr(export, "write_adapter", lambda ckpt, folder: (folder / "adapter_model.safetensors").touch())
    monkeypatch.setattr(export, "upload", lambda *args, **kwargs: pytest.fail("uploaded"))
    with pytest.raises(SettingsError, match=r"--push-to-hub .* is not a hub repo id \(.*\)\. Give user/name"):
        export_checkpoint(fake_checkpoint(tmp_path / "r"), tmp_path / "out", push_to_hub=repo)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


# --- the model card ----------------------------------------------------------------------------------------------


def test_model_card_names_base_settings_rewards_and_this_checkpoints_evaluation(tmp_path):
    artifact = tmp_path / "artifact"
    run = artifact / "outputs" / "r"
    write_run(run, model_name="sbintuitions/x", learning_rate=1e-5,
              reward_names=("soft_format", "correct_answer"))
    checkpoint = fake_checkpoint(run, 2)
    write_eval(artifact, "mine", "artifact/outputs/r/checkpoint-2", strict_format_rate=0.25, answer_accuracy=0.5)
    newer = write_eval(artifact, "other-ckpt", "artifact/outputs/r/checkpoint-1", answer_accuracy=0.1)
    os.utime(newer / "metrics.json", (4e9, 4e9))  # newer, but of another checkpoint
    card = model_card(checkpoint, merged=False, base=None, dtype="bfloat16")
    assert "base_model: sbintuitions/x" in card and "library_name: peft" in card
    assert "| learning_rate | `1e-05` |" in card and "- data: `arithmetic.csv`" in card
    assert "- `correct_answer`: 1.0 when the last number in <response>" in card
    assert "`mine`" in card and "| answer_accuracy | 0.500 |" in card and "| strict_format_rate | 0.250 |" in card


def test_the_model_card_names_the_rollouts_that_made_the_checkpoint(tmp_path):
    from sarashina_grpo.pipeline import record_rollout

    run = tmp_path / "outputs" / "r"
    write_run(run)
    early, late = fake_checkpoint(run, 2), fake_checkpoint(run, 5)
    assert "| rollout | `auto` |" in model_card(early, merged=False, base=None, dtype="bfloat16")  # as asked
    record_rollout(run, "default", 0)  # steps 1-2 on the default rollout,
    record_rollout(run, "fast", 2)  # resumed from checkpoint-2 with --rollout fast
    # why: 'auto' says what was asked, not which engine generated the completions the adapter learned from;
    # a resume that changed the engine does not relabel the checkpoints made before it
    assert "| rollout | `default` |" in model_card(early, merged=False, base=None, dtype="bfloat16")
    assert "| rollout | `default from step 1, fast from step 3` |" in model_card(late, merged=False, base=None,
                                                                               dtype="bfloat16")


def test_without_an_evaluation_of_this_checkpoint_the_runs_newest_is_used(tmp_path):
    artifact = tmp_path / "artifact"
    checkpoint = fake_checkpoint(artifact / "outputs" / "r", 2)
    old = write_eval(artifact, "old", "artifact/outputs/r/checkpoint-1", answer_accuracy=0.1)
    os.utime(old / "metrics.json", (1, 1))
    write_eval(artifact, "new", "/elsewhere/artifact/outputs/r/checkpoint-1", answer_accuracy=0.2)
    write_eval(artifact, "unrelated", "artifact/outputs/other-run/checkpoint-2", answer_accuracy=0.9)
    assert last_evaluation(checkpoint)[0] == "new"


def test_the_cards_snippet_loads_the_export_it_describes(tmp_path):
    card = model_card(fake_checkpoint(tmp_path / "r"), merged=True, base=None, dtype="bfloat16", model="exported/s2")
    assert "MODEL = 'exported/s2'" in card  # why: was MODEL = "OUT", literally


def test_a_base_folder_inside_the_project_is_recorded_relative_to_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SARASHINA_GRPO_HOME", str(tmp_path))
    # why: an absolute path names the exporting machine's disk
    assert portable_base(str(tmp_path / "artifact" / "models" / "tiny")) == "artifact/models/tiny"


@pytest.mark.parametrize("base", ["sbintuitions/x", "/models/elsewhere"])
def test_hub_ids_and_folders_outside_the_project_stay_as_they_are(tmp_path, monkeypatch, base):
    monkeypatch.setenv("SARASHINA_GRPO_HOME", str(tmp_path))
    assert portable_base(base) == base


def test_exported_files_are_readable_by_everyone(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"w")
    weights.chmod(0o600)  # what training's safetensors save leaves
    share_files(tmp_path)
    assert weights.stat().st_mode & 0o777 == 0o644


def test_card_of_a_run_without_records_says_so(tmp_path):
    card = model_card(fake_checkpoint(tmp_path / "r"), merged=True, base="/models/base", dtype="bfloat16")
    assert "not recorded" in card and "No evaluation" in card and "base_model:" not in card  # a path is no hub id


# --- the base the adapter was trained on ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory) -> Path:
    """The tiny shape with other weights (seed 7): an adapter of the seed-0 model fits it, and is wrong on it."""
    from sarashina_grpo.tiny import build_model

    return build_model(tmp_path_factory.mktemp("models") / "tiny_seed7", "tiny", seed=7)


@pytest.fixture
def merged_into(monkeypatch):
    """Stands in for the merge itself (these tests are about the check before it): the bases merged into."""
    from sarashina_grpo import export

    bases = []
    monkeypatch.setattr(export, "write_merged", lambda checkpoint, base, folder, dtype: bases.append(base))
    return bases


def trained_on(run_dir: Path, base: Path) -> Path:
    """A checkpoint of a run that trained on ``base``, with run.json's record of it as training writes it."""
    from sarashina_grpo.pipeline import record_base_model

    checkpoint = fake_checkpoint(run_dir, base=str(base))
    write_run(run_dir)
    record_base_model(run_dir, str(base))
    return checkpoint


def test_the_fingerprint_tells_other_weights_of_the_same_shape_apart(tiny_model_dir, other_tiny, tmp_path):
    import shutil

    from sarashina_grpo.preflight import weights_fingerprint

    copy = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere")
    assert weights_fingerprint(tiny_model_dir) == weights_fingerprint(copy)  # the same weights in another folder
    assert weights_fingerprint(tiny_model_dir) != weights_fingerprint(other_tiny)  # same shape, other seed
    assert weights_fingerprint(tmp_path / "nothing-here") is None  # not on this disk: cannot be told


def test_training_records_the_base_and_its_fingerprint_in_run_json(tiny_model_dir, tmp_path):
    from sarashina_grpo.preflight import weights_fingerprint

    checkpoint = trained_on(tmp_path / "r", tiny_model_dir)
    record = json.loads((checkpoint.parent / "run.json").read_text())["base_model"]
    assert record == {"name": str(tiny_model_dir), "fingerprint": weights_fingerprint(tiny_model_dir)}


def test_merging_into_a_base_with_other_weights_is_refused_naming_both(tiny_model_dir, other_tiny, tmp_path,
                                                                       merged_into):
    checkpoint = trained_on(tmp_path / "r", tiny_model_dir)
    with pytest.raises(SettingsError) as info:
        export_checkpoint(checkpoint, tmp_path / "out", merged=True, base_model=str(other_tiny))
    message = str(info.value)
    assert str(other_tiny) in message and str(tiny_model_dir) in message and "--allow-other-base" in message
    assert merged_into == [] and not (tmp_path / "out").exists()  # refused before anything loads or is written


def test_a_base_folder_whose_weights_changed_since_training_is_refused(tiny_model_dir, other_tiny, tmp_path,
                                                                       merged_into):
    checkpoint = trained_on(tmp_path / "r", tiny_model_dir)
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    (checkpoint / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(other_tiny)}))
    with pytest.raises(SettingsError, match="holds other weights"):  # no --base-model: the recorded folder's weights
        export_checkpoint(checkpoint, tmp_path / "out", merged=True)


def test_the_same_base_in_another_folder_merges(tiny_model_dir, tmp_path, merged_into):
    import shutil

    checkpoint = trained_on(tmp_path / "r", tiny_model_dir)
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    export_checkpoint(checkpoint, tmp_path / "out", merged=True, base_model=str(copy))
    assert merged_into == [str(copy)]


def test_allow_other_base_merges_into_other_weights_with_a_warning(tiny_model_dir, other_tiny, tmp_path, merged_into,
                                                                   caplog):
    checkpoint = trained_on(tmp_path / "r", tiny_model_dir)
    export_checkpoint(checkpoint, tmp_path / "out", merged=True, base_model=str(other_tiny), allow_other_base=True)
    assert merged_into == [str(other_tiny)] and "merging anyway (--allow-other-base)" in caplog.text


def test_a_run_from_before_the_record_merges_saying_the_base_was_not_checked(tiny_model_dir, other_tiny, tmp_path,
                                                                             merged_into, caplog):
    checkpoint = fake_checkpoint(tmp_path / "r", base=str(tiny_model_dir))
    write_run(tmp_path / "r")  # run.json without base_model
    export_checkpoint(checkpoint, tmp_path / "out", merged=True, base_model=str(other_tiny))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert merged_into == [str(other_tiny)] and len(warnings) == 1 and "could not be checked" in warnings[0]


def test_the_cli_refusal_is_one_error_line_and_the_flag_is_in_help(tiny_model_dir, other_tiny, tmp_path, capsys,
                                                                    merged_into):
    from sarashina_grpo.cli import main

    checkpoint = trained_on(tmp_path / "r", tiny_model_dir)
    code = main(["export", str(checkpoint), str(tmp_path / "out"), "--merged", "--base-model", str(other_tiny)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: --base-model")
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--allow-other-base" in capsys.readouterr().out


# --- a real export of the tiny model -----------------------------------------------------------------------------

FRESH = textwrap.dedent("""
    # Runs in a fresh interpreter: what a user outside this repo does with the merged folder.
    import contextlib, io, json, sys
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, base, prompts, system, n = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    tokenizer = AutoTokenizer.from_pretrained(out)

    def greedy(model):
        results = []
        for prompt in prompts:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
            inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True)
            ids = model.generate(**inputs, max_new_tokens=n, do_sample=False)[0, inputs["input_ids"].shape[1]:]
            results.append({"ids": ids.tolist(), "text": tokenizer.decode(ids, skip_special_tokens=True)})
        return results

    model = AutoModelForCausalLM.from_pretrained(out)
    report = {
        "class": type(model).__name__,
        "dtype": str(model.dtype),
        "lora_names": [name for name, _ in model.named_modules() if "lora" in name.lower()]
                      + [key for key in model.state_dict() if "lora" in key.lower()],
        "merged": greedy(model),
        "base": greedy(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)),
        "imported": sorted({m.split(".")[0] for m in sys.modules} & {"unsloth", "unsloth_zoo", "peft"}),
    }
    # The model card's own snippet, run as written (folder and length filled in): it asks "こんにちは".
    card = open(out + "/README.md", encoding="utf-8").read()
    snippet = card.split("```python\\n")[1].split("```")[0]
    snippet = snippet.replace("max_new_tokens=512", f"max_new_tokens={n}")  # MODEL already names the folder
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet, {})
    report["card_reply"] = printed.getvalue()[:-1]  # print's newline
    print("REPORT " + json.dumps(report))
""")


def run_python(code: str, *args) -> str:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def make_lora_checkpoint(base_dir: Path, run_dir: Path) -> Path:
    """What training saves, built directly: adapter + tokenizer + trainer state + marker, and the run's run.json.
    LoRA B starts at zero (the adapter would be a no-op); random B weights make the merge matter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sarashina_grpo.project import LORA_TARGET_MODULES

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # alpha != r, so a merge that ignored the LoRA scale (alpha / r) would give other tokens.
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(LORA_TARGET_MODULES),
                                             task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    checkpoint = run_dir / "checkpoint-2"
    model.save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(checkpoint)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (checkpoint / COMPLETE_MARKER).write_text("2\n")
    write_run(run_dir, model_name=str(base_dir), load_in_4bit=False, reward_names=("strict_format", "correct_answer"))
    return checkpoint


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    from sarashina_grpo.project import SYSTEM_PROMPT

    artifact = tmp_path_factory.mktemp("artifact")
    checkpoint = make_lora_checkpoint(tiny_model_dir, artifact / "outputs" / "r")
    out = artifact / "exported"
    # The command a user runs, in a process of its own, which must not import Unsloth.
    run_python("import sys\nfrom sarashina_grpo.cli import main\n"
               "code = main(['export', *sys.argv[1:], '--merged', '--dtype', 'float32'])\n"
               "assert 'unsloth' not in sys.modules, 'the export imported Unsloth'\nsys.exit(code)", checkpoint, out)
    stdout = run_python(FRESH, out, tiny_model_dir, json.dumps(PROMPTS, ensure_ascii=False), SYSTEM_PROMPT,
                        NEW_TOKENS)
    report = json.loads(stdout.split("REPORT ", 1)[1])
    return dict(checkpoint=checkpoint, out=out, report=report)


@pytest.mark.slow
def test_merged_folder_is_a_plain_transformers_model(exported):
    report = exported["report"]
    assert report["class"] == "LlamaForCausalLM" and report["dtype"] == "torch.float32"
    assert report["lora_names"] == []
    assert report["imported"] == []  # neither Unsloth nor PEFT was needed to load and generate
    assert not (exported["out"] / "adapter_config.json").exists()
    assert "library_name: transformers" in (exported["out"] / "README.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_model_cards_usage_snippet_runs_and_answers_like_the_checkpoint(exported):
    report = exported["report"]
    assert PROMPTS[0] == "こんにちは" and report["card_reply"] == report["merged"][0]["text"]


@pytest.mark.slow
def test_the_adapter_changes_the_answers(exported):
    merged, base = exported["report"]["merged"], exported["report"]["base"]
    assert [r["ids"] for r in merged] != [r["ids"] for r in base]  # else this test could not see a lost adapter


@pytest.mark.slow
def test_merged_model_gives_the_checkpoints_greedy_tokens_through_the_projects_inference(exported):
    import torch

    from sarashina_grpo.data import to_messages
    from sarashina_grpo.inference import GenerationSettings, generate, load_for_inference

    model, tokenizer = load_for_inference(article_settings(model_name=str(exported["checkpoint"]), load_in_4bit=False))
    assert model.dtype == torch.float32
    conversations = [to_messages(p) for p in PROMPTS]
    # batch_size=1: no padding, so both sides run the same matrix shapes.
    texts = generate(model, tokenizer, conversations, GenerationSettings(max_new_tokens=NEW_TOKENS, batch_size=1))
    ids = []
    for conversation in conversations:
        inputs = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        ids.append(out[0, inputs["input_ids"].shape[1]:].tolist())
    merged = exported["report"]["merged"]
    assert [r["ids"] for r in merged] == ids
    assert [r["text"] for r in merged] == texts


@pytest.mark.slow
def test_adapter_export_keeps_adapter_and_tokenizer_and_16_bit_is_the_default(exported, tmp_path):
    from safetensors import safe_open

    adapter = export_checkpoint(exported["checkpoint"], tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in adapter.iterdir()}
    merged = export_checkpoint(exported["checkpoint"], tmp_path / "merged16", merged=True)
    with safe_open(merged / "model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}


@pytest.mark.slow
def test_a_checkpoint_trained_with_the_arithmetic_recipe_exports_merged(tiny_model_dir, repo_root, tmp_path):
    """The real path: Unsloth + TRL train one step on the arithmetic data (TRL hands the answer column to
    correct_answer), then the CLI merges the checkpoint Unsloth saved."""
    from safetensors import safe_open

    def cli(*args):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        return subprocess.run([sys.executable, "-m", "sarashina_grpo.cli", *map(str, args)], capture_output=True,
                              text=True, cwd=repo_root, env=env, timeout=900)

    artifact = tmp_path / "artifact"
    train = cli("train", "--config", "configs/recipes/arithmetic.yaml", "--model", tiny_model_dir, "--max-steps", 1,
                "--save-steps", 1, "--max-completion-length", 8, "--num-generations", 2, "--batch-size", 2,
                "--artifact-dir", artifact, "--run-name", "arith")
    assert train.returncode == 0, train.stderr[-3000:]
    checkpoint = artifact / "outputs" / "arith" / "checkpoint-1"
    logged = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"][0]
    assert "rewards/correct_answer_reward/mean" in logged  # the reward ran on the answer column
    export = cli("export", checkpoint, tmp_path / "merged", "--merged")
    assert export.returncode == 0, export.stderr[-3000:]
    with safe_open(tmp_path / "merged" / "model.safetensors", "pt") as f:
        assert f.keys() and not [k for k in f.keys() if "lora" in k.lower()]
    card = (tmp_path / "merged" / "README.md").read_text(encoding="utf-8")
    assert "- data: `arithmetic.csv`" in card and "- `correct_answer`:" in card and "- steps: 1" in card


@pytest.mark.slow
def test_an_export_killed_mid_merge_is_cleaned_up_by_the_next_one(exported):
    checkpoint, out = exported["checkpoint"], exported["out"].parent / "killed"
    command = [sys.executable, "-m", "sarashina_grpo", "export", str(checkpoint), str(out), "--merged"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(".killed.partial-*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.kill()  # SIGKILL: no Python cleanup runs
    process.wait(30)
    assert list(out.parent.glob(".killed.partial-*")) and not out.exists()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "config.json").exists() and not list(out.parent.glob(".killed.partial-*"))
