"""Precision comes from the card: bf16 where the GPU has it, fp16 on older GPUs (T4, V100, RTX 20xx), fp32 on CPU.

No such card is here, so the capability is faked; the GPU suite (tests/gpu) trains in the real card's precision.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sarashina_grpo.config import Settings, article_settings
from sarashina_grpo.project import precision, torch_dtype


@pytest.fixture
def card(monkeypatch):
    """Pretend a CUDA GPU of the given compute capability is visible."""

    def fake(capability: tuple[int, int]):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)

    return fake


@pytest.mark.parametrize(("capability", "expected"), [
    ((7, 5), "fp16"),  # why: T4 / RTX 20xx have no bf16 units
    ((7, 0), "fp16"),  # why: V100
    ((8, 0), "bf16"),  # why: A100, the first with bf16
    ((9, 0), "bf16"),  # why: H100
])
def test_precision_follows_the_compute_capability(card, capability, expected):
    card(capability)
    assert precision() == expected


def test_cpu_trains_in_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (precision(), torch_dtype()) == ("fp32", torch.float32)  # why: bf16 matmuls are slow on a CPU


def decided_by_the_machine(**asked) -> SimpleNamespace:
    """What ``Settings`` fills in from the machine, for values asked as TRL's defaults leave them (TRL's own checks
    of the faked card would need a real one)."""
    fields = SimpleNamespace(**{"load_in_4bit": None, "use_cpu": False, "bf16": None, "fp16": False,
                                "optim": "paged_adamw_8bit", "rollout": "default", **asked})
    Settings._decide_machine(fields)
    return fields


def test_the_settings_ask_for_fp16_mixed_precision_on_a_t4(card):
    card((7, 5))
    decided = decided_by_the_machine()
    # why: bf16=True on a card without bf16 stops TRL/transformers before the first step
    assert (decided.bf16, decided.fp16, decided.use_cpu, decided.load_in_4bit) == (False, True, False, True)


def test_the_settings_ask_for_bf16_on_an_h100(card):
    card((9, 0))
    decided = decided_by_the_machine()
    assert (decided.bf16, decided.fp16, decided.optim) == (True, False, "paged_adamw_8bit")


def test_cpu_run_uses_neither_16_bit_type():
    settings = article_settings()
    # why: given neither, TRL's GRPOConfig turns bf16 on, and a CPU that has bf16 then trains in it
    assert (settings.bf16, settings.fp16, settings.use_cpu) == (False, False, True)


def test_an_explicit_16_bit_type_is_kept():
    # why: the machine decides only what the settings leave open
    assert article_settings(fp16=False, bf16=False).bf16 is False


def test_export_auto_dtype_is_float16_on_a_t4(card):
    from sarashina_grpo.export import export_dtype

    card((7, 5))
    assert export_dtype() == "float16"  # why: what such a card can serve the merged model in


def test_export_auto_dtype_is_bfloat16_elsewhere(card):
    from sarashina_grpo.export import export_dtype

    card((8, 6))
    assert export_dtype() == "bfloat16"


def test_peft_backend_loads_in_the_cards_dtype(card, monkeypatch):
    import peft  # noqa: F401  (imported before the fake card: PEFT probes CUDA on import)
    import transformers

    from sarashina_grpo import modeling

    card((7, 5))
    seen = {}

    class Stop(Exception):
        pass

    def fake_from_pretrained(name, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    with pytest.raises(Stop):
        modeling.load_model_peft(article_settings(model_name="tiny", load_in_4bit=False))
    assert seen["dtype"] == torch.float16  # why: the transformers + PEFT path must not force bf16 either


def test_the_precision_variable_takes_the_fp16_path_on_a_bf16_card(card, monkeypatch):
    card((9, 0))
    monkeypatch.setenv("SARASHINA_GRPO_PRECISION", "fp16")
    assert precision() == "fp16"  # why: the GPU suite trains as a T4 would on an H100


def test_the_precision_variable_cannot_ask_a_t4_for_bf16(card, monkeypatch):
    from sarashina_grpo.project import SettingsError

    card((7, 5))
    monkeypatch.setenv("SARASHINA_GRPO_PRECISION", "bf16")
    with pytest.raises(SettingsError, match="no bf16"):
        precision()


def test_the_precision_variable_keeps_cpu_weights_in_bf16_when_asked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SARASHINA_GRPO_PRECISION", "bf16")
    # why: the learning proof reproduces its recorded runs, whose weights were bf16 on the CPU
    assert (precision(), torch_dtype()) == ("bf16", torch.bfloat16)
