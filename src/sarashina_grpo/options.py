"""The options of the commands other than the run's own ``Settings``, read from a parsed command line (``options``).
Each field is a flag (``cli.py`` hands the classes to ``HfArgumentParser``), or, with ``metadata["positional"]``, a
positional argument. Nothing here imports TRL.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from . import project
from .project import DEFAULT_MODEL_NAME, SYSTEM_PROMPT, OnOff, setting


@dataclass
class RunOptions:
    """Where a training run goes and what it continues; not part of its maths, so not in ``Settings``."""

    artifact_dir: str | None = setting(None, "where logs/<run>/ and outputs/<run>/checkpoint-N go; unset: artifact/ "
                                       "in the project folder")
    run_name: str | None = setting(None, "name of the run folders; unset: a timestamp")
    resume: str | None = setting(None, "continue a run from its last intact checkpoint: 'latest' (the flag alone), a "
                                 "run name, a run folder or a checkpoint-N folder", nargs="?", const="latest")
    allow_data_change: bool = setting(False, "resume even though the prompt file changed since the run started "
                                      "(run.json records its hash)")
    resume_weights_only: bool = setting(False, "resume from a checkpoint without optimizer.pt/scheduler.pt (a "
                                        "--save-only-model run): its weights, with a fresh optimizer and schedule")


@dataclass
class GenerateOptions:
    """How ``infer`` and ``eval`` generate (``inference.GenerationSettings``)."""

    max_new_tokens: int = setting(512, "tokens generated per answer at most")
    sample: bool = setting(False, "sample instead of greedy decoding")
    temperature: float = setting(0.7, "sampling temperature (with --sample)")
    top_p: float = setting(0.95, "nucleus sampling share (with --sample)")
    batch_size: int = setting(8, "prompts generated together")


@dataclass
class CpuOptions:
    threads: int | None = setting(None, "CPU threads for torch; unset: 1 without a CUDA GPU (faster for small "
                                  "models on a busy machine, docs/troubleshooting.md) unless OMP_NUM_THREADS is set")


@dataclass
class InferOptions:
    prompts: list[str] = field(default_factory=list, metadata={
        "help": "prompts to answer; none: an interactive chat (an empty line or Ctrl-D quits)", "positional": True})


@dataclass
class EvalOptions:
    name: str | None = setting(None, "evaluation name: results go to <artifact-dir>/eval/<name>/; unset: derived from "
                               "--model")
    data: str = setting("datasets/eval.csv", "held-out prompt file: CSV, JSONL or Parquet (columns prompt,lang)")
    artifact_dir: str | None = setting(None, "where eval/<name>/ goes; unset: artifact/ in the project folder")
    limit: int | None = setting(None, "evaluate only the first N prompts; unset: all")
    samples_per_prompt: int = setting(1, "outputs per prompt (with --sample)")
    compare: list[str] = setting(None, "earlier evaluations (names or folders) to compare with: writes "
                                 "comparison.md/.png", factory=list, metavar="NAME")
    compare_only: bool = setting(False, "generate nothing; compare the evaluations named by --compare")
    overwrite: bool = setting(False, "replace an earlier evaluation of the same --name (otherwise that is an error)")


@dataclass
class RoleOptions:
    """A persona or scenario added to the system prompt after its format instructions (``roles.with_role``)."""

    role: str | None = setting(None, "role added to the system prompt, e.g. 'あなたはサボテンを売る商人です。'; "
                               "eval: for rows without a role column; unset: none")
    role_file: str | None = setting(None, "read the role from this UTF-8 text file (wins over --role)")


@dataclass
class ExportOptions:
    """``export.export_checkpoint``'s arguments; only the flags given are passed, so a lone dependent one is refused."""

    checkpoint: str = field(default="", metadata={"help": "checkpoint folder to export (outputs/<run>/checkpoint-N)",
                                                  "positional": True})
    out: str = field(default="", metadata={"help": "new (or empty) folder to write the export to", "positional": True})
    merged: bool = setting(False, "merge the LoRA into the base weights: one model that plain transformers loads "
                           "(off: the LoRA adapter alone)")
    base_model: str | None = setting(None, "base model to merge into (hub id or folder); unset: the one named in "
                                     "the checkpoint's adapter_config.json")
    dtype: str = setting("auto", "weight type of the merged model; auto: bfloat16, or float16 on a GPU without bf16",
                         choices=("auto", "bfloat16", "float16", "float32"))
    allow_other_base: bool = setting(False, "merge even when the base model holds other weights than the one the "
                                     "run trained on (run.json's fingerprint; e.g. the same model saved in another "
                                     "dtype); off: that is an error")
    push_to_hub: str | None = setting(None, "also upload OUT to this hub repo (user/name; needs a hub token; "
                                      "untested here)")
    private: bool = setting(True, "create the hub repo private (with --push-to-hub); --no-private: public")


@dataclass
class ModelOptions:
    """The model of ``infer`` and ``eval``, and how it is prompted."""

    model_name: str = setting(DEFAULT_MODEL_NAME, "hub id, local model or checkpoint folder, or 'tiny' (the offline "
                              "test model)", flag="--model")
    system_prompt: str = setting(SYSTEM_PROMPT, "system prompt put before every prompt (it states the format)",
                                 shown_as="for a checkpoint, the one its run trained under (run.json); else the "
                                 "article's Japanese wording of the <think>/<response> layout")
    system_prompt_file: str | None = setting(None, "read the system prompt from this UTF-8 text file; unset: use "
                                             "--system-prompt")
    load_in_4bit: bool | None = setting(None, "4-bit loading; unset: on with a CUDA GPU, off without one",
                                        flag="--4bit", action=OnOff)
    use_vllm: bool = setting(False, "Unsloth fast_inference through vLLM (the 'vllm' extra, CUDA only)", flag="--vllm")
    max_seq_length: int = setting(4096, "Unsloth's context budget (prompt + answer)")
    # What loading asks of a training run's settings too: vLLM's LoRA budget and memory share (with --vllm).
    lora_rank = 32
    vllm_gpu_memory_utilization = 0.6

    def resolved(self) -> ModelOptions:
        """With what the machine and files decide: 4-bit loading (on with CUDA), the system prompt file's text."""
        changes = {"load_in_4bit": project.cuda_available()} if self.load_in_4bit is None else {}
        if self.system_prompt_file:
            changes["system_prompt"] = project.read_text_setting(self.system_prompt_file, "--system-prompt-file")
            if self.system_prompt not in (SYSTEM_PROMPT, changes["system_prompt"]):  # resolved already: the file's
                raise project.SettingsError("--system-prompt and --system-prompt-file are both given; the file would "
                                            "replace the prompt. Keep one.")
        return dataclasses.replace(self, **changes)


@dataclass
class BuildTinyOptions:
    out_dir: str = field(default="", metadata={"help": "folder to write the model to", "positional": True})
    shape: str = setting("tiny", "the tiny test model, a small GPU test model, or the exact Sarashina 2.2 3B shape "
                         "(random weights)", choices=("tiny", "small", "sarashina-3b"))
    seed: int = setting(0, "random seed of the weights")


DEMO_FIELDS = ("seed", "steps", "logging_steps", "eval_limit", "eval_steps", "threads")  # demo.DemoSettings' flags


def given(args: argparse.Namespace, cls, names=None) -> dict:
    """The fields of ``cls`` (or ``names``) that the command line set: flags left out are absent from ``args``."""
    wanted = {f.name for f in dataclasses.fields(cls)} if names is None else set(names)
    return {k: v for k, v in vars(args).items() if k in wanted}


def options(args: argparse.Namespace, cls):
    """An instance of ``cls`` with the command line's values over its defaults."""
    return cls(**given(args, cls))
