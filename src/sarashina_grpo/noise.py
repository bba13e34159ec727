"""Known-harmless messages of the libraries, filtered so that the ones that matter stand out (``--verbose`` keeps
them; docs/troubleshooting.md, "Messages we hide", says why each is harmless). Unsloth's "should be imported before
[transformers]" is hidden only when the command line's parser alone came first (no model code): Unsloth patches the
classes it imports itself (``tests/gpu/test_gpu_import_order.py`` checks it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings

logger = logging.getLogger(__name__)

# (logger name, text in the message) of log records that are dropped.
HIDDEN_LOGS = (
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported by torch.compile"),
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    ("datasets", "Disabling Tensorflow because USE_TORCH is set"),
)
UNSLOTH_CPU_NOTE = "supported: text LoRA / full finetuning with SFTTrainer"
UNSLOTH_ORDER_WARNING = r"WARNING: Unsloth should be imported before \[transformers\] "
# Compile-time warnings name the source file as their module: any file of torchao.
TORCHAO_FILES = r".*[/\\]torchao[/\\]"
# Loaded by any transformers model code (and by TRL and PEFT): then Unsloth's order warning is a real one.
MODEL_CODE = "transformers.modeling_utils"


class _DropText(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def hide_known_messages() -> None:
    """Drop the ``HIDDEN_LOGS`` records (once per logger, however often it is called)."""
    for name, text in HIDDEN_LOGS:
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropText) and f.text == text for f in target.filters):
            target.addFilter(_DropText(text))
    warnings.filterwarnings("ignore", category=SyntaxWarning, module=TORCHAO_FILES)


def without_known_lines(printed: str) -> str:
    """``printed`` without Unsloth's CPU note (other lines kept, in order)."""
    return "".join(line for line in printed.splitlines(keepends=True) if UNSLOTH_CPU_NOTE not in line)


def import_unsloth():
    """``import unsloth`` (which must come before TRL and transformers' model code), its CPU note (which reads as "GRPO
    is not supported") replaced by one INFO line and its order warning hidden where only the parser came first."""
    if "unsloth" in sys.modules:
        return sys.modules["unsloth"]
    if MODEL_CODE not in sys.modules:  # only the command line's parser came first (module docstring)
        # Not inside catch_warnings: that would also undo the filters Unsloth installs while it is imported.
        warnings.filterwarnings("ignore", message=UNSLOTH_ORDER_WARNING, category=UserWarning)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            import unsloth
    finally:
        sys.stdout.write(without_known_lines(printed.getvalue()))
    if UNSLOTH_CPU_NOTE in printed.getvalue():
        logger.info("Unsloth %s found no CUDA GPU: models run on the CPU, slowly (small ones such as the tiny "
                    "model are practical there).", unsloth.__version__)
    return unsloth
