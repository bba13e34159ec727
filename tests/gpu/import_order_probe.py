"""Run ``sarashina-grpo train`` (``cli.main``) up to its trainer and record what Unsloth patched, for
``test_gpu_import_order.py``.

    python tests/gpu/import_order_probe.py cli-first|unsloth-first OUT.json [options of sarashina-grpo train]

``cli-first`` is the command line's own import order: the command is found, the recipe read for its backend, then
``noise.import_unsloth`` runs, and only then are the flags read with TRL's ``TrlParser``.
``unsloth-first`` imports Unsloth before anything else, as Unsloth
asks. Once the trainer is built, OUT.json records which class ``trl.GRPOTrainer`` is, the trainer's class, and where
every function of transformers' Llama classes, ``Trainer``, PEFT's and TRL's classes is defined (Unsloth's own
modules and compiled cache for those it replaced), and the process ends there with exit code 0: training would
change nothing recorded, and its first step (compiling the loss) is most of a minute.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

MODE, OUT = sys.argv[1], Path(sys.argv[2])
if MODE == "unsloth-first":
    import unsloth  # noqa: F401  (first, as Unsloth asks)

LIBRARY_CLASSES = {
    "transformers.models.llama.modeling_llama": ("LlamaForCausalLM", "LlamaModel", "LlamaAttention",
                                                 "LlamaDecoderLayer", "LlamaMLP", "LlamaRMSNorm",
                                                 "LlamaRotaryEmbedding"),
    "transformers": ("Trainer", "PreTrainedModel", "TrainingArguments"),
    "peft": ("PeftModel", "PeftModelForCausalLM"),
    "trl": ("GRPOTrainer", "GRPOConfig"),
}


def origin(value) -> str | None:
    """Where a function, method or property of a class is defined: ``module.qualname @ file``; None for data."""
    function = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
    code = getattr(function, "__code__", None)
    if code is None:
        return None
    return f"{function.__module__}.{function.__qualname__} @ {Path(code.co_filename).name}"


def by_unsloth(where: str | None) -> bool:
    """Defined by Unsloth: in an unsloth/unsloth_zoo module or in the code it compiles into its cache."""
    return where is not None and "unsloth" in where.lower()


def functions() -> dict[str, str]:
    """``module.Class.attribute`` → ``origin`` for every function of the classes above, and ``module.name`` for the
    module-level functions of their modules: what Unsloth replaces and what it leaves, in one map."""
    import importlib

    found = {}
    for module_name, classes in LIBRARY_CLASSES.items():
        module = importlib.import_module(module_name)
        for class_name in classes:
            for attribute, value in vars(getattr(module, class_name)).items():
                if where := origin(value):
                    found[f"{module_name}.{class_name}.{attribute}"] = where
        if module_name != "transformers":  # the lazy root: its names would be imported by asking
            for name, value in vars(module).items():
                if not isinstance(value, type) and (where := origin(value)):
                    found[f"{module_name}.{name}"] = where
    return found


def record(trainer) -> None:
    import trl

    OUT.write_text(json.dumps({
        "mode": MODE,
        "loaded_before_unsloth": LOADED_BEFORE_UNSLOTH,
        "trl.GRPOTrainer": f"{trl.GRPOTrainer.__module__}.{trl.GRPOTrainer.__qualname__}",
        "trainer_class": [f"{c.__module__}.{c.__qualname__}" for c in type(trainer).__mro__[1:4]],  # under ours
        "model_forward": origin(type(getattr(trainer.model, "get_base_model", lambda: trainer.model)()).forward),
        "functions": functions(),
    }, indent=1, sort_keys=True))


def main() -> int:
    from sarashina_grpo import cli, noise, pipeline

    import_unsloth = noise.import_unsloth

    def import_unsloth_recorded():
        global LOADED_BEFORE_UNSLOTH
        if "unsloth" not in sys.modules:
            LOADED_BEFORE_UNSLOTH = sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "trl", "peft"))
        return import_unsloth()

    def run_training_recorded(trainer, run, **options):
        record(trainer)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # the record is complete; nothing after this point is compared

    noise.import_unsloth, pipeline.run_training = import_unsloth_recorded, run_training_recorded
    return cli.main(["train", *sys.argv[3:]])


LOADED_BEFORE_UNSLOTH: list[str] = []
if __name__ == "__main__":
    sys.exit(main())
