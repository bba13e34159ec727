"""Weights written or loaded are finite: a full model holding NaN or inf is one error when loaded (infer, eval,
train --model), a warm start that diverges writes nothing, and an export whose merge holds NaN/inf (or whose base has
other layer sizes) writes nothing. The fast tests check the weight scan; the slow ones load the tiny model.

    .venv/bin/pytest tests/test_finite_weights.py
"""

from __future__ import annotations

import shutil

import pytest
import torch

from sarashina_grpo.config import article_settings
from sarashina_grpo.preflight import check_finite_model, nonfinite_parameters
from sarashina_grpo.project import SettingsError


class Two(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(2, 2)
        self.b = torch.nn.Linear(2, 2)
        self.codes = torch.nn.Parameter(torch.zeros(4, dtype=torch.int8), requires_grad=False)  # quantised storage


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_parameter_is_named(bad):
    model = Two()
    with torch.no_grad():
        model.b.weight[0, 1] = bad
    assert nonfinite_parameters(model) == ["b.weight"]
    with pytest.raises(SettingsError, match=r"The model holds NaN or inf weights \(b.weight\)\. Make it again\."):
        check_finite_model(model, "The model", "Make it again.")


def test_finite_and_integer_parameters_pass():
    model = Two()
    assert nonfinite_parameters(model) == []
    check_finite_model(model, "The model", "")


def test_at_most_a_few_names_are_listed():
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(6)])
    with torch.no_grad():
        for layer in model:
            layer.bias.fill_(float("nan"))
    assert len(nonfinite_parameters(model)) == 3


# --- with the tiny model -------------------------------------------------------------------------------------------

@pytest.fixture
def nan_model(tiny_model_dir, tmp_path):
    """A copy of the tiny model with one NaN in a weight: what a diverged warm start leaves."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan_model"
    shutil.copytree(tiny_model_dir, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("q_proj.weight"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.mark.slow
def test_loading_a_model_with_nan_weights_is_an_error(nan_model):
    from sarashina_grpo.modeling import load_model_peft

    with pytest.raises(SettingsError, match="holds NaN or inf weights .*q_proj.weight"):
        load_model_peft(article_settings(model_name=str(nan_model), load_in_4bit=False), training=False)


@pytest.mark.slow
def test_a_finite_model_still_loads(tiny_model_dir):
    from sarashina_grpo.modeling import load_model_peft

    model, _ = load_model_peft(article_settings(model_name=str(tiny_model_dir), load_in_4bit=False), training=False)
    assert nonfinite_parameters(model) == []


@pytest.mark.slow
def test_a_diverging_warm_start_writes_nothing(tiny_model_dir, tmp_path):
    from sarashina_grpo.warmstart import WarmStart, warm_start

    out = tmp_path / "warm"
    recipe = WarmStart(model=str(tiny_model_dir), output=str(out), steps=2, batch_size=2, lora_rank=0, threads=1)
    # why: a learning rate above 1 is refused up front (check_warm_start); the NaN check stays for a pass that
    # diverges within the range, forced here past that check
    recipe.learning_rate = 1e30
    with pytest.raises(SettingsError, match="warm start of .* holds NaN or inf weights.*lower --learning-rate"):
        warm_start(recipe)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_a_merged_export_onto_a_nan_base_writes_nothing(tiny_model_dir, nan_model, tmp_path):
    from test_export import make_lora_checkpoint

    from sarashina_grpo.export import export_checkpoint

    checkpoint = make_lora_checkpoint(tiny_model_dir, tmp_path / "outputs" / "r")
    with pytest.raises(SettingsError, match="merged model .* holds NaN or inf weights"):
        export_checkpoint(checkpoint, tmp_path / "out", merged=True, base_model=str(nan_model), dtype="float32")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


@pytest.mark.slow
def test_a_merged_export_onto_a_base_of_another_shape_is_one_error(tiny_model_dir, tmp_path):
    from test_export import make_lora_checkpoint

    from sarashina_grpo.export import export_checkpoint
    from sarashina_grpo.tiny import build_model

    checkpoint = make_lora_checkpoint(tiny_model_dir, tmp_path / "outputs" / "r")
    small = build_model(tmp_path / "small", "small")
    with pytest.raises(SettingsError, match="does not fit the base model"):
        export_checkpoint(checkpoint, tmp_path / "out", merged=True, base_model=str(small), dtype="float32")
