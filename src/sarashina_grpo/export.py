"""Export a trained checkpoint for use outside this repo: the LoRA adapter, or one merged 16-bit model.

    sarashina-grpo export artifact/outputs/<run>/checkpoint-500 exported/sarashina-think            # adapter
    sarashina-grpo export artifact/outputs/<run>/checkpoint-500 exported/sarashina-think --merged   # full model

Both write the tokenizer and a model card ``README.md``; ``--merged`` uses plain transformers + PEFT (no Unsloth).
The checkpoint is verified as a resume verifies it; the export is staged in a hidden
``.OUT.partial-<host>-<pid>-<time>`` folder renamed at the end (one a killed export left is removed by the next).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

from .checkpoints import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHT_FILES,
    COMPLETE_MARKER,
    check_loadable,
    folder_kind,
    step_of,
)
from .errors import connection_failed
from .modeling import tiny_model_dir
from .preflight import (
    BASE_MODEL,
    RUN_INFO,
    check_hub_model,
    check_new_folder,
    hub_unusable,
    looks_like_path,
    missing_local_model,
    sibling_hint,
)
from .project import SYSTEM_PROMPT, SettingsError, project_dir
from .runs import pid_alive, process_started, read_json, trained_prompt
from .tables import folder_problem

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")  # any one loads a tokenizer
DTYPES = ("auto", "bfloat16", "float16", "float32")  # auto: float16 on a GPU without bf16, else bfloat16
# Settings shown in the model card, in this order; the full record is the run's run.json.
CARD_SETTINGS = ("model_name", "load_in_4bit", "lora_rank", "lora_alpha", "learning_rate", "num_generations",
                 "per_device_train_batch_size", "max_completion_length", "max_steps", "temperature", "rollout", "seed")
CARD_METRICS = ("n", "strict_format_rate", "soft_format_rate", "think_purity_mean", "response_purity_mean",
                "answer_accuracy")
# The staging folder of an export: .OUT.partial-<host>-<pid>-<time_ns> (exports before the host was added: no host)
PARTIAL_RE = re.compile(r"\..+\.partial-(?:(?P<host>.+)-)?(?P<pid>\d+)-(?P<ns>\d+)")


def check_checkpoint(checkpoint: str | Path) -> Path:
    """The checkpoint folder (``<run>/best``: the run's best one), or a ``SettingsError`` saying what to give."""
    from .best import resolve_best

    path = Path(resolve_best(str(checkpoint))).expanduser()
    if problem := folder_problem(path):  # a file or a FIFO there is no "no such folder"
        raise SettingsError(f"Checkpoint {checkpoint} {problem}. Give a finished checkpoint folder such as "
                            "artifact/outputs/<run>/checkpoint-500.")
    if not path.is_dir():
        raise SettingsError(f"Checkpoint {checkpoint}: no such folder." + (sibling_hint(path) or " Give a finished "
                            "checkpoint such as artifact/outputs/<run>/checkpoint-500."))
    kind = folder_kind(path)
    if ADAPTER_CONFIG not in kind.files and kind.newest:
        raise SettingsError(f"{path} is a run folder; export one of its checkpoints, e.g. {kind.newest}.")
    if kind.half_written and kind.step is not None:
        raise SettingsError(f"{path} is a half-written checkpoint (no {COMPLETE_MARKER} marker): the run was cut off "
                            "while saving it. Export an earlier checkpoint-N of the same run.")
    if kind.half_written:
        raise SettingsError(f"{path} was set aside by a resume as a half-written checkpoint (no {COMPLETE_MARKER} "
                            "marker). Export a checkpoint-N of the run instead.")
    if ADAPTER_CONFIG not in kind.files:
        raise SettingsError(f"{path} holds no LoRA adapter ({ADAPTER_CONFIG})" + (
            ": it is already a full model, which transformers loads as it is." if kind.model else
            ". Give a checkpoint folder written by training (artifact/outputs/<run>/checkpoint-N)."))
    missing = [what for what, names in (("adapter weights", ADAPTER_WEIGHT_FILES), ("tokenizer", TOKENIZER_FILES))
               if not kind.files & set(names)]
    if missing:
        raise SettingsError(f"{path} is incomplete: no {' and no '.join(missing)} ({', '.join(missing)} files are "
                            "saved with every checkpoint). Export another checkpoint of the run.")
    check_loadable(path)  # cut off, overwritten or NaN: the same checks as a resume, before anything is copied
    if step_of(path, set_aside=True) is not None:
        logger.warning("%s was set aside by a resume (it was replaced by the resumed run's own checkpoints); its "
                       "files are intact, so it is exported as it is.", path)
    return path


def base_model_of(checkpoint: Path, base_model: str | None = None, *, allow_other_base: bool = False) -> str:
    """Where the merge loads the base weights: ``base_model`` if given, else the adapter's recorded base (checked)."""
    name = base_model or json.loads((checkpoint / ADAPTER_CONFIG).read_text(encoding="utf-8")).get(
        "base_model_name_or_path")
    if not name:
        raise SettingsError(f"{checkpoint / ADAPTER_CONFIG} names no base model; pass it with --base-model.")
    source = "--base-model" if base_model else f"from {ADAPTER_CONFIG}, base_model_name_or_path"
    if missing_local_model(name):  # the same check infer and eval make (preflight.check_base_model)
        raise SettingsError(f"Base model folder {name} ({source}) does not exist here or has no config.json. Pass "
                            "the base model's folder or hub id with --base-model.")
    local = looks_like_path(name) or Path(name).is_absolute()
    if name != "tiny" and not local:  # a hub id: cached or downloadable now (not retried)
        check_hub_model(name, label=f"Base model {name!r} ({source})", instead="the base model's local folder with "
                        "--base-model")
    base = str(tiny_model_dir()) if name == "tiny" else str(Path(name).expanduser()) if local else name
    check_same_base(checkpoint, base, given=base_model is not None, allow=allow_other_base)
    return base


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, merged: bool = False, base_model: str | None = None,
                      dtype: str | None = None, push_to_hub: str | None = None, private: bool | None = None,
                      allow_other_base: bool | None = None) -> Path:
    """Write ``checkpoint``'s adapter (``merged``: the merged model in ``dtype``), tokenizer and model card to ``out``,
    every check first. None is "not given": dtype auto, the adapter's base, a private repo, no other base."""
    check_export_flags(merged=merged, base_model=base_model, dtype=dtype, push_to_hub=push_to_hub, private=private,
                       allow_other_base=allow_other_base)
    checkpoint, out = check_checkpoint(checkpoint), check_new_folder(out, "export OUT")
    if out.resolve().is_relative_to(checkpoint.resolve()):  # the checkpoint stays as training wrote it
        raise SettingsError(f"export OUT {out} is inside the checkpoint {checkpoint} being exported; give a folder "
                            "outside it, e.g. exported/<name>.")
    if dtype not in (None, *DTYPES):
        raise SettingsError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    dtype = export_dtype() if dtype in (None, "auto") else dtype
    base = base_model_of(checkpoint, base_model, allow_other_base=bool(allow_other_base)) if merged else None
    if push_to_hub and (why := hub_unusable()):  # the few-second check train makes: not after OUT is written
        raise SettingsError(f"--push-to-hub {push_to_hub}: {why}, so the upload would fail after the export; nothing "
                            "was written. Run the export again where the hub can be reached, or export without "
                            f"--push-to-hub and upload OUT later (hf upload {push_to_hub} OUT).")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out.parent)
    staging = out.parent / f".{out.name}.partial-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
    staging.mkdir()  # not tempfile.mkdtemp: its 0700 mode would stay on OUT
    try:
        if merged:
            write_merged(checkpoint, base, staging, dtype)
        else:
            write_adapter(checkpoint, staging)
        card = model_card(checkpoint, merged=merged, base=base, dtype=dtype, model=push_to_hub or str(out))
        (staging / "README.md").write_text(card, encoding="utf-8")
        share_files(staging)
        if out.exists():
            out.rmdir()  # empty (check_new_folder), so the rename below can take its place
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Exported %s to %s (%s).", checkpoint, out, "merged model" if merged else "LoRA adapter")
    if push_to_hub:
        try:
            upload(out, push_to_hub, private=private is not False)
        except Exception as err:  # no token, no network, a name taken: the export itself is done and kept
            fix = ("The hub could not be reached (the connection failed or dropped): upload OUT once it can be "
                   f"(hf upload {push_to_hub} {out})." if connection_failed(err) else "Log in (`hf auth login` or "
                   "HF_TOKEN) and run the export again into a new folder, or upload OUT yourself.")
            raise SettingsError(f"Exported to {out}, but the upload to {push_to_hub!r} failed "
                                f"({type(err).__name__}: {err}). {fix}") from None
    return out


def check_export_flags(*, merged: bool, base_model: str | None, dtype: str | None, push_to_hub: str | None,
                       private: bool | None, allow_other_base: bool | None) -> None:
    """Flags given (not None) that the export would ignore, an empty ``--base-model`` and a malformed hub repo id:
    a ``SettingsError`` before anything is read or written."""
    if not merged:
        given = [flag for flag, value in (("--base-model", base_model), ("--dtype", dtype),
                                          ("--allow-other-base", allow_other_base)) if value is not None]
        if given:
            raise SettingsError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} only to a merged "
                                "export (--merged); the adapter export copies the LoRA as training saved it. Add "
                                f"--merged, or leave {' and '.join(given)} out.")
    if base_model is not None and not str(base_model).strip():
        raise SettingsError("--base-model is an empty string (an unset variable?); give the base model's folder or "
                            "hub id, or leave it out to use the one in the checkpoint's adapter_config.json.")
    if push_to_hub is None and private is not None:
        raise SettingsError(f"--{'' if private else 'no-'}private applies only with --push-to-hub (it sets who can see "
                            "the hub repo the export is uploaded to). Add --push-to-hub user/name, or leave it out.")
    if push_to_hub is not None:  # its form, as huggingface_hub checks it (no network): not after OUT is written
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(push_to_hub)
        except HFValidationError as err:
            why = str(err).rstrip(".")
            raise SettingsError(f"--push-to-hub {push_to_hub!r} is not a hub repo id ({why}). Give user/name, e.g. "
                                "--push-to-hub me/sarashina-think.") from None


def check_same_base(checkpoint: Path, base: str, *, given: bool, allow: bool = False) -> None:
    """Raise ``SettingsError`` when ``base`` holds other weights than the run trained on (``run.json``'s
    fingerprint); a warning with ``allow``, or where the base cannot be checked."""
    from .preflight import weights_fingerprint

    info = read_json(checkpoint.parent / RUN_INFO) or {}
    record = info.get(BASE_MODEL) if isinstance(info.get(BASE_MODEL), dict) else {}
    source = f"--base-model {base}" if given else f"The base model {base} (from {ADAPTER_CONFIG})"
    if not record.get("fingerprint"):
        why = (f"{checkpoint.parent / RUN_INFO} records no fingerprint of the weights it trained on (a run from "
               "before it was recorded, or a base not readable then)") if (checkpoint.parent / RUN_INFO).is_file() \
            else f"there is no {RUN_INFO} beside {checkpoint}"
        logger.warning("The base model could not be checked: %s; merging into %s as given.", why, base)
        return
    found = weights_fingerprint(base)
    if found == record["fingerprint"]:
        return
    if found is None:
        logger.warning("The base model could not be checked: the weights of %s cannot be read here (not safetensors "
                       "files on this disk); merging into it as given.", base)
        return
    mismatch = (f"{source} holds other weights than {record.get('name') or 'its base'!r}, the base the adapter in "
                f"{checkpoint} was trained on (their fingerprints in {RUN_INFO} and now differ)")
    if allow:
        logger.warning("%s; merging anyway (--allow-other-base).", mismatch)
        return
    raise SettingsError(f"{mismatch}: merged, the adapter's changes would land on weights "
                        f"they were not learnt on. Give that base with --base-model, or add --allow-other-base to "
                        "merge into this one anyway (e.g. the same model saved in another dtype).")


def export_dtype() -> str:
    """``dtype="auto"``: float16 where the GPU lacks bf16 (what such a card trains and serves in), else bfloat16."""
    from .project import precision

    return "float16" if precision() == "fp16" else "bfloat16"


def remove_stale_partials(folder: Path) -> None:
    """Remove the staging folders that exports killed on this machine left (their process is gone, or its id now
    belongs to a later process). Another machine's may be running: they are left alone."""
    for partial in folder.glob(".*.partial-*"):
        match = PARTIAL_RE.fullmatch(partial.name)
        if not match or not partial.is_dir() or (match["host"] or socket.gethostname()) != socket.gethostname():
            continue
        pid = int(match["pid"])
        # still running (or its start unknown); 1 s: /proc's clock-tick rounding
        if pid_alive(pid) and (process_started(pid) or 0) <= int(match["ns"]) / 1e9 + 1:
            continue
        shutil.rmtree(partial, ignore_errors=True)
        logger.info("Removed %s, left by an export that was killed (pid %d).", partial, pid)


def write_adapter(checkpoint: Path, folder: Path) -> None:
    """The adapter files as training saved them (base made ``portable_base``), and the tokenizer re-saved."""
    from transformers import AutoTokenizer

    for name in (ADAPTER_CONFIG, *ADAPTER_WEIGHT_FILES):
        if (checkpoint / name).exists():
            shutil.copy2(checkpoint / name, folder / name)
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if config.get("base_model_name_or_path"):
        config["base_model_name_or_path"] = portable_base(config["base_model_name_or_path"])
        (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(folder)


def portable_base(name: str) -> str:
    """A base model as another machine can read it: a folder inside the project folder relative to it (an absolute
    path names this machine's disk); hub ids and other folders as they are."""
    path, root = Path(name).resolve(), project_dir().resolve()
    return path.relative_to(root).as_posix() if Path(name).is_absolute() and path.is_relative_to(root) else name


def share_files(folder: Path) -> None:
    """Files readable by everyone (0644): safetensors and ``copy2`` keep the 0600 mode training wrote."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o644)


def write_merged(checkpoint: Path, base: str, folder: Path, dtype: str) -> None:
    """Base + adapter merged into plain weights with transformers + PEFT (no Unsloth), saved with the tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(base)
    except OSError as err:
        raise SettingsError(f"Cannot load the base model {base!r} to merge into ({err}). Pass its local folder "
                            "with --base-model, or export the adapter alone (without --merged).") from None
    if getattr(config, "quantization_config", None):
        raise SettingsError(f"The base model {base!r} is stored quantized; a merged 16-bit model needs the "
                            "unquantized base. Pass it with --base-model, e.g. --base-model "
                            "sbintuitions/sarashina2.2-3b-instruct-v0.1.")
    from .preflight import check_finite_model

    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
    try:
        model = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        raise SettingsError(f"The adapter in {checkpoint} does not fit the base model {base!r} (its layers have other "
                            "sizes): give the base it was trained on with --base-model (adapter_config.json names "
                            "it).") from None
    check_finite_model(model, f"The merged model ({checkpoint} on {base!r})", f"Nothing was written to the export "
                       f"folder. Check the base model; in {dtype}, a value beyond its range becomes inf (try "
                       "--dtype float32).")
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.save_pretrained(folder)
    # generate() stops at the chat turn's end only if the saved generation config knows that token.
    if tokenizer.eos_token_id is not None and model.generation_config.eos_token_id is None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.save_pretrained(folder)


def upload(folder: Path, repo_id: str, *, private: bool = True) -> None:
    """Upload ``folder`` to the hub repo ``repo_id`` (created if missing). Needs a hub token."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload from sarashina-grpo export")
    logger.info("Uploaded %s to %s", folder, url)


def last_evaluation(checkpoint: Path) -> tuple[str, dict] | None:
    """(name, metrics) of the newest evaluation in ``artifact/eval/`` of this checkpoint, else of its run."""
    eval_dir = checkpoint.resolve().parent.parent.parent / "eval"
    run = checkpoint.resolve().parent.name
    found = []
    for path in eval_dir.glob("*/metrics.json"):
        metrics = read_json(path) or {}
        model = Path(str(metrics.get("meta", {}).get("model", "")))
        if model.parent.name == run and step_of(model) is not None:  # meta.model may be relative
            found.append((model.name == checkpoint.name, path.stat().st_mtime, path.parent.name, metrics))
    return max(found, key=lambda f: f[:2])[2:] if found else None


def model_card(checkpoint: Path, *, merged: bool, base: str | None, dtype: str, model: str = "OUT") -> str:
    """The README.md of an export: what it is, how to load it from ``model``, how it was trained and evaluated."""
    from .rewards import REWARD_FUNCS, TRL_REWARDS

    adapter = read_json(checkpoint / ADAPTER_CONFIG) or {}
    base = portable_base(base or adapter.get("base_model_name_or_path", "?"))
    run = read_json(checkpoint.parent / RUN_INFO) or {}
    state = read_json(checkpoint / "trainer_state.json") or {}
    settings = dict(run.get("settings", {}))
    # the rollouts that generated this checkpoint's steps (rollout='auto' resolved; a resume may have changed it)
    made = [h for h in run.get("rollouts", []) if h["from_step"] < (step_of(checkpoint) or 0)]
    if made:
        settings["rollout"] = made[0]["rollout"] if len(made) == 1 else ", ".join(
            f"{h['rollout']} from step {h['from_step'] + 1}" for h in made)
    rewards = settings.get("reward_names") or []
    hub_base = base if not looks_like_path(base) and not Path(base).is_absolute() else None
    lines = ["---", f"base_model: {hub_base}" if hub_base else None,
             f"library_name: {'transformers' if merged else 'peft'}", "language: [ja]",
             "tags: [grpo, trl, unsloth, sarashina-grpo]", "---", "",
             f"# {checkpoint.parent.name}/{checkpoint.name}" + (" (merged)" if merged else " (LoRA adapter)"), "",
             "GRPO-trained with sarashina-grpo (Unsloth + TRL) to think in `<think>` before answering in "
             f"`<response>`. Base model: `{base}`. "
             + (f"The LoRA adapter is merged into the weights ({dtype}): no PEFT needed." if merged else
                f"LoRA adapter (r={adapter.get('r')}, α={adapter.get('lora_alpha')}) for the base model."), ""]
    system_prompt = trained_prompt(run) or SYSTEM_PROMPT
    lines += ["## Use", "", "It was trained under this system prompt; use it (or one like it) to get the format:", "",
              "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f"MODEL = {model!r}  # this folder, or its hub repo id", f"SYSTEM_PROMPT = {system_prompt!r}"]
    lines += ["model = AutoModelForCausalLM.from_pretrained(MODEL)"] if merged else ["from peft import PeftModel", "",
              f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), MODEL)']
    lines += ["tokenizer = AutoTokenizer.from_pretrained(MODEL)",
              'messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "こんにちは"}]',
              "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
              "return_dict=True)",
              "reply = model.generate(**inputs, max_new_tokens=512)[0, inputs[\"input_ids\"].shape[1]:]",
              "print(tokenizer.decode(reply, skip_special_tokens=True))", "```", ""]
    lines += ["## Training", "", f"- steps: {state.get('global_step', '?')} (checkpoint `{checkpoint.name}`)"]
    if run:
        lines += [f"- data: `{Path(run['data']).name if run.get('data') else '?'}`", "", "| setting | value |",
                  "|---|---|"] + [f"| {k} | `{settings[k]}` |" for k in CARD_SETTINGS if k in settings]
    else:
        lines += ["- settings: not recorded (no run.json next to the checkpoint)"]
    if rewards:
        lines += ["", "Rewards:", ""]
    for name in rewards:
        doc = (REWARD_FUNCS[name].__doc__ or "").strip().splitlines() if name in REWARD_FUNCS else []
        lines.append(f"- `{name}`: " + (f"TRL's: {TRL_REWARDS[name]}" if name in TRL_REWARDS else
                                        doc[0] if doc else "(not described in this version's registry)"))
    lines += ["", "## Evaluation", ""]
    if evaluation := last_evaluation(checkpoint):
        name, metrics = evaluation
        meta = metrics.get("meta", {})
        lines += [f"`{name}` (model `{meta.get('model')}`, data `{Path(str(meta.get('data', '?'))).name}`):", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {f'{metrics[k]:.3f}' if isinstance(metrics[k], float) else metrics[k]} |"
                  for k in CARD_METRICS if metrics.get(k) is not None]
    else:
        lines += ["No evaluation of this run was found (`sarashina-grpo eval --model <checkpoint>` writes one)."]
    return "\n".join(line for line in lines if line is not None) + "\n"
