"""Shared fixtures. Nothing here touches the network: models are the project's own offline tiny Llama."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A freshly built tiny Llama + Sarashina-format tokenizer, shared by the whole session."""
    from sarashina_grpo.tiny import build_model

    return build_model(tmp_path_factory.mktemp("models") / "tiny", "tiny")


@pytest.fixture
def write_csv(tmp_path):
    """Write text (str) or bytes to a CSV file in tmp_path and return its path."""

    def write(content, name: str = "prompts.csv") -> Path:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return write


GUARDED = ("eval", "logs", "outputs")  # run results; artifact/models/ is a cache the tests may fill


def _artifact_entries() -> set[Path]:
    return {p for name in GUARDED if (REPO_ROOT / "artifact" / name).is_dir()
            for p in (REPO_ROOT / "artifact" / name).iterdir() if p.name != ".gitkeep"}


@pytest.fixture(scope="session", autouse=True)
def repository_artifacts_untouched():
    """Tests write into tmp folders only: a test that forgets to pass one fails here instead of leaving results
    in the user's own artifact/ (where a later `eval --compare` or `--resume latest` would pick them up)."""
    before = _artifact_entries()
    yield
    new = sorted(str(p.relative_to(REPO_ROOT)) for p in _artifact_entries() - before)
    assert not new, f"tests wrote into the repository's artifact folder: {new}; pass a tmp_path artifact dir"


@pytest.fixture
def no_unsloth_load(monkeypatch):
    """A stand-in for Unsloth that fails the test if a model is loaded (and saves importing the real one), on a
    machine that looks GPU-less to every check."""
    import sys
    import types

    from sarashina_grpo import modeling, project

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    fake = types.ModuleType("unsloth")
    fake.FastLanguageModel = types.SimpleNamespace(from_pretrained=refuse, for_inference=refuse)
    monkeypatch.setitem(sys.modules, "unsloth", fake)
    monkeypatch.setattr(project, "cuda_available", lambda: False)  # what preflight.check_device asks
    monkeypatch.setattr(modeling, "cuda_available", lambda: False)
