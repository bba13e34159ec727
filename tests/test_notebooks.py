"""Both notebooks run end to end on the tiny model on CPU, with parameters injected as papermill would."""

import json

import pytest

pytestmark = pytest.mark.slow

TINY = dict(MODEL_NAME="tiny", LOAD_IN_4BIT=False)


def execute(repo_root, name, tmp_path, **parameters):
    import papermill
    from jupyter_client import KernelManager

    out = tmp_path / name
    # IPC sockets in tmp_path: TCP ports picked at random can collide with other kernels started at the same time.
    kernel = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel"))
    papermill.execute_notebook(
        str(repo_root / "notebooks" / name), str(out), parameters=parameters,
        cwd=str(repo_root / "notebooks"), kernel_name="python3", progress_bar=False, km=kernel,
    )
    return json.loads(out.read_text())


def outputs_text(notebook) -> str:
    texts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            texts.append("".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


@pytest.fixture(scope="module")
def finetuned(repo_root, tmp_path_factory):
    """Run the finetuning notebook once; return (artifact dir, executed notebook)."""
    tmp = tmp_path_factory.mktemp("finetuning")
    artifact = tmp / "artifact"
    settings = dict(model_name="tiny", max_steps=2, save_steps=2, num_generations=2, per_device_train_batch_size=2,
                    max_completion_length=16, max_seq_length=2048)
    nb = execute(repo_root, "finetuning.ipynb", tmp, SETTINGS=settings, ARTIFACT_DIR=str(artifact), RUN_NAME="nbtest",
                 EVAL_STEPS=2, EVAL_LIMIT=2)
    return artifact, nb


def test_finetuning_writes_a_complete_checkpoint(finetuned):
    artifact, _ = finetuned
    checkpoint = artifact / "outputs" / "nbtest" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").exists() and (checkpoint / "checkpoint_complete").exists()


def test_finetuning_writes_tensorboard_events(finetuned):
    artifact, _ = finetuned
    assert list((artifact / "logs" / "nbtest").glob("events.out.tfevents.*"))


def test_finetuning_evaluates_held_out_prompts_during_training(finetuned):
    artifact, _ = finetuned
    assert (artifact / "outputs" / "nbtest" / "eval" / "step-2" / "metrics.json").exists()  # EVAL_STEPS=2


def test_finetuning_reports_finished_step(finetuned):
    _, nb = finetuned
    assert "finished at step 2" in outputs_text(nb)


def test_finetuning_hides_the_messages_the_command_line_hides(finetuned):
    _, nb = finetuned
    # why: the notebooks imported Unsloth before the package's filter, so torch's and bitsandbytes' known-harmless
    # warnings (one inviting a useless `pip install kernels`) showed in the first cell
    assert "is an Enum subclass" not in outputs_text(nb) and "kernels-community" not in outputs_text(nb)


def test_finetuning_shows_the_algorithm_the_trainer_runs(finetuned):
    _, nb = finetuned
    # why: the article recipe's algorithm, read back from the trainer (not the libraries' defaults)
    assert "'loss_type': 'grpo', 'beta': 0.04" in outputs_text(nb)


def test_inference_chats_with_the_checkpoint(finetuned, repo_root, tmp_path):
    artifact, _ = finetuned
    nb = execute(
        repo_root, "inference.ipynb", tmp_path, **{**TINY, "MODEL_NAME": str(artifact / "outputs" / "nbtest" /
                                                                                "checkpoint-2")},
        MAX_NEW_TOKENS=8, CHAT_TURNS=["こんにちは", "元気？"], ROLEPLAY_TURNS=[], EVAL_LIMIT=3,
        ARTIFACT_DIR=str(tmp_path / "artifact"),  # never the repository's own artifact/
        TRAINING_RUN=str(artifact / "outputs" / "nbtest"),
    )
    # replies are stored as assistant turns, not system ones
    assert "['system', 'user', 'assistant', 'user', 'assistant']" in outputs_text(nb)
    # the completions the finetuning run sampled at its last step, as the table TensorBoard shows
    assert "Completions sampled at step 2" in outputs_text(nb)
    assert "| prompt | completion | xmlcount_reward |" in markdown_outputs(nb)


def markdown_outputs(notebook) -> str:
    return "\n".join("".join(output.get("data", {}).get("text/markdown", "")) for cell in notebook["cells"]
                     for output in cell.get("outputs", []))


def test_inference_notebook_refuses_an_existing_eval_name_before_generating(repo_root, tmp_path):
    from papermill.exceptions import PapermillExecutionError

    from sarashina_grpo.evaluation import write_eval

    artifact = tmp_path / "artifact"
    write_eval([{"prompt": "p", "completion": "<think>\nはい\n</think>"}], artifact / "eval" / "notebook-tiny")
    with pytest.raises(PapermillExecutionError) as failed:  # why: it used to fail in its last cell, after every answer
        execute(repo_root, "inference.ipynb", tmp_path, **TINY, MAX_NEW_TOKENS=8, PROMPTS=["おはよう"],
                ARTIFACT_DIR=str(artifact))
    assert failed.value.ename == "EvalExistsError" and "check_eval_name" in failed.value.source
    # shown as the command line shows it: one error line naming the evaluation, no traceback into the package
    assert len(failed.value.traceback) == 1 and failed.value.traceback[0].startswith("error: ")
    assert "notebook-tiny" in failed.value.traceback[0]


def test_inference_notebook_refuses_a_parameter_of_the_wrong_kind_before_loading(repo_root, tmp_path):
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as failed:  # why: a bare string was one prompt per character
        execute(repo_root, "inference.ipynb", tmp_path, **TINY, PROMPTS="こんにちは", ARTIFACT_DIR=str(tmp_path / "a"))
    assert failed.value.ename == "SettingsError" and "check_inference_notebook" in failed.value.source
    assert len(failed.value.traceback) == 1 and failed.value.traceback[0].startswith("error: PROMPTS must be a list")
    assert failed.value.exec_count == 3  # parameters, papermill's injected ones, then the first code cell: no model


def test_inference_runs_on_the_base_tiny_model(repo_root, tmp_path):
    nb = execute(repo_root, "inference.ipynb", tmp_path, **TINY, MAX_NEW_TOKENS=8, PROMPTS=["おはよう"],
                 ROLEPLAY_TURNS=[], EVAL_LIMIT=3, ARTIFACT_DIR=str(tmp_path / "artifact"))
    assert "### おはよう" in outputs_text(nb)


@pytest.fixture(scope="module")
def roleplay_notebook(repo_root, tmp_path_factory):
    """The inference notebook with its defaults (LOAD_IN_4BIT=None, the merchant role-play) on the tiny model."""
    tmp = tmp_path_factory.mktemp("roleplay")
    return execute(repo_root, "inference.ipynb", tmp, MODEL_NAME="tiny", MAX_NEW_TOKENS=8, PROMPTS=["おはよう"],
                   CHAT_TURNS=[], EVAL_LIMIT=2, ARTIFACT_DIR=str(tmp / "artifact"))


def test_inference_notebook_runs_on_cpu_with_its_default_load_in_4bit(roleplay_notebook):
    assert "'mean_tokens'" in outputs_text(roleplay_notebook)  # LOAD_IN_4BIT=None: 16-bit here, reached the end


def test_inference_notebook_shows_the_package_log_lines(roleplay_notebook):
    # the CLI prints it too
    assert "INFO sarashina_grpo.evaluation: eval notebook-tiny" in outputs_text(roleplay_notebook)


def test_inference_notebook_plays_the_merchant_over_several_turns(roleplay_notebook):
    text = outputs_text(roleplay_notebook)
    assert text.count("客:") >= 3 and text.count("商人の心の声 <think>:") == text.count("客:")


def test_inference_notebook_answers_under_a_role(repo_root, tmp_path):
    role = tmp_path / "role.txt"
    role.write_text("あなたはパン屋の店主です。", encoding="utf-8")
    nb = execute(repo_root, "inference.ipynb", tmp_path, **TINY, MAX_NEW_TOKENS=4, PROMPTS=[],
                 CHAT_TURNS=["こんにちは"], ROLEPLAY_TURNS=[], EVAL_LIMIT=1, ROLE_FILE=str(role),
                 ARTIFACT_DIR=str(tmp_path / "artifact"))
    metrics = tmp_path / "artifact" / "eval" / "notebook-tiny" / "metrics.json"
    meta = json.loads(metrics.read_text(encoding="utf-8"))["meta"]
    assert meta["role"] == "あなたはパン屋の店主です。" and "['system', 'user', 'assistant']" in outputs_text(nb)


def test_inference_evaluates_and_compares_with_an_earlier_evaluation(repo_root, tmp_path):
    from sarashina_grpo.evaluation import write_eval

    artifact = tmp_path / "artifact"
    write_eval([{"prompt": "p", "completion": "<think>\nはい\n</think>"}], artifact / "eval" / "earlier")
    execute(repo_root, "inference.ipynb", tmp_path, **TINY, MAX_NEW_TOKENS=8, PROMPTS=["おはよう"], CHAT_TURNS=[],
            ROLEPLAY_TURNS=[], EVAL_NAME="now", EVAL_LIMIT=3, COMPARE_WITH=["earlier"], ARTIFACT_DIR=str(artifact))
    assert (artifact / "eval" / "now" / "metrics.json").exists()  # the evaluation ran on the held-out prompts
    assert (artifact / "eval" / "compare-now-vs-earlier" / "comparison.png").exists()  # and was compared


def test_notebooks_are_committed_without_outputs(repo_root):
    for name in ("finetuning.ipynb", "inference.ipynb"):
        cells = json.loads((repo_root / "notebooks" / name).read_text())["cells"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in cells if c["cell_type"] == "code")


def test_first_code_cell_is_tagged_parameters(repo_root):
    for name in ("finetuning.ipynb", "inference.ipynb"):
        cells = json.loads((repo_root / "notebooks" / name).read_text())["cells"]
        first_code = next(c for c in cells if c["cell_type"] == "code")
        assert "parameters" in first_code["metadata"].get("tags", [])
