"""Known-harmless library messages are hidden (docs/troubleshooting.md, "Messages we hide"); others pass."""

from __future__ import annotations

import logging

import pytest

from sarashina_grpo.noise import hide_known_messages, without_known_lines

UNSLOTH_IMPORT = ("Unsloth 2026.10.9: no GPU found, training on CPU (x86_64, 1 threads, bfloat16 = True). CPU training "
                  "is much slower than GPU training; supported: text LoRA / full finetuning with SFTTrainer. Set "
                  "UNSLOTH_DISABLE_CPU_FALLBACK=1 to raise instead.\n")


def test_unsloths_cpu_note_is_dropped_and_other_lines_kept():
    assert without_known_lines("before\n" + UNSLOTH_IMPORT + "after\n") == "before\nafter\n"


def test_torch_pytree_enum_warnings_are_hidden(caplog):
    hide_known_messages()
    pytree = logging.getLogger("torch.utils._pytree")
    # caplog's handler and level on the logger itself, and only there: once torch sets up its own logging
    # (torch.compile, _dynamo, as earlier tests do), "torch" may stop propagating to the root logger that caplog
    # listens on, or raise its level.
    pytree.addHandler(caplog.handler)
    propagate, pytree.propagate = pytree.propagate, False
    try:
        with caplog.at_level(logging.WARNING, logger=pytree.name):
            pytree.warning("%s is an Enum subclass and is now natively supported by torch.compile as an opaque value "
                           "type.", "<enum 'KernelPreference'>")
            pytree.warning("something else")
    finally:
        pytree.removeHandler(caplog.handler)
        pytree.propagate = propagate
    assert [r.getMessage() for r in caplog.records] == ["something else"]  # why: only the known text is dropped


def test_hiding_twice_installs_one_filter():
    hide_known_messages()
    hide_known_messages()
    assert len(logging.getLogger("torch.utils._pytree").filters) == 1


@pytest.mark.slow  # two fresh imports of torchao
def test_torchaos_syntax_warning_is_hidden():
    import os
    import subprocess
    import sys

    def stderr_of(hide: bool) -> str:
        code = ("from sarashina_grpo.noise import hide_known_messages; hide_known_messages(); " if hide else "") + \
            "import torchao.quantization.quant_api"
        # why: without written bytecode Python compiles the file, and warns, on every import
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stderr

    assert "SyntaxWarning" in stderr_of(hide=False) and "SyntaxWarning" not in stderr_of(hide=True)
