"""Whether a model can be loaded here, checked before anything heavy is imported: a model or checkpoint folder (its
files, its base model), a hub id (cached, or the hub reachable), the device it needs, and LoRA targets that name
layers of it. Plain values in, one ``SettingsError`` (``ModelNotFoundError``) out; ``preflight.check_run`` and
``check_model`` call these with a run's settings, ``export`` and ``warmstart`` with their own.

    from sarashina_grpo.model_checks import check_model_name
    check_model_name("artifact/outputs/r1/checkpoint-500")   # or an error saying what to give instead
"""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path
from urllib.parse import unquote, urlparse

from . import project
from .checkpoints import check_loadable, folder_kind, step_of
from .errors import hub_unreachable_message, proxy_for, shown_url
from .project import SettingsError, field_label

HUB_PROBE_SECONDS = 3.0  # a reachable hub answers a TCP connect in well under a second; an offline one fails at DNS


class ModelNotFoundError(SettingsError):
    """MODEL_NAME names a folder that is missing or holds no model/adapter files."""


def model_label(name: str) -> str:
    """How an error names the model setting: the value and the two places it is given."""
    return f"Model {name!r} (--model, notebook MODEL_NAME)"


def looks_like_path(name: str) -> bool:
    """A local folder rather than a hub id ("org/name", exactly one slash)."""
    return (
        name.startswith((".", "/", "~", "artifact/")) or "\\" in name or name.count("/") > 1
        or Path(name).expanduser().exists() or any(step_of(part) is not None for part in Path(name).parts)
    )


def hub_reachable(endpoint: str, timeout: float = HUB_PROBE_SECONDS) -> bool:
    """The hub's host answers within ``timeout`` on the route a download takes: a TCP connection straight to it,
    or, behind a proxy (``HTTPS_PROXY``, ``ALL_PROXY``; ``errors.proxy_for``), to the proxy and a tunnel through it
    (``CONNECT``, what huggingface_hub's client asks an HTTP proxy for) that the proxy grants."""
    url = urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    proxy = proxy_for(endpoint)
    try:
        if proxy is None:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        via = urlparse(proxy[1])
        with socket.create_connection((via.hostname, via.port or PROXY_PORTS.get(via.scheme, 1080)),
                                      timeout=timeout) as sock:
            return via.scheme != "http" or tunnel_granted(sock, f"{host}:{port}", via, timeout)
    except (OSError, ValueError):  # no DNS, no route, refused, timed out; a proxy URL with a bad port
        return False


PROXY_PORTS = {"http": 80, "https": 443}  # a proxy URL without a port (socks: 1080)


def tunnel_granted(sock: socket.socket, target: str, proxy, timeout: float) -> bool:
    """An HTTP proxy on ``sock`` answers ``CONNECT target`` with a 2xx status within ``timeout``."""
    import base64

    auth = ""
    if proxy.username is not None:
        token = base64.b64encode(f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()).decode()
        auth = f"Proxy-Authorization: Basic {token}\r\n"
    sock.settimeout(timeout)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
    answer = b""
    while b"\r\n" not in answer and len(answer) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    status = answer.split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[0].startswith(b"HTTP/") and status[1][:1] == b"2"


def check_push_to_hub(push_to_hub) -> None:
    """Raise ``SettingsError`` when ``push_to_hub`` (a GRPOConfig field) is on but the hub cannot be reached from
    here: the upload would fail with a connection traceback after the model loads and trains."""
    if not push_to_hub:
        return
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or not hub_reachable(constants.ENDPOINT):
        proxy = proxy_for(constants.ENDPOINT)
        why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else
               f"the hub cannot be reached through the proxy {shown_url(proxy[1])} ({proxy[0]})" if proxy else
               "the hub cannot be reached (no network?)")
        raise SettingsError(f"push_to_hub is on but {why}. Turn it off and upload later with sarashina-grpo export "
                            "CHECKPOINT OUT --push-to-hub REPO.")


def check_hub_model(name: str) -> None:
    """Raise ``ModelNotFoundError`` when hub id ``name`` is neither in the Hugging Face cache nor downloadable now
    (``HF_HUB_OFFLINE`` set, or the hub unreachable, directly or through the proxy set): one line in seconds,
    instead of the loader's traceback after minutes of retries."""
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # cached: the loader reads it offline
    if constants.HF_HUB_OFFLINE:
        raise ModelNotFoundError(
            f"{model_label(name)} is a hub id that is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            "HF_HUB_OFFLINE is set. Use the offline tiny model (CLI --model tiny, notebook MODEL_NAME = 'tiny'), a "
            "local model folder, or unset HF_HUB_OFFLINE where the hub can be reached to download it once.")
    if not hub_reachable(constants.ENDPOINT):
        raise ModelNotFoundError(hub_unreachable_message(name, constants.ENDPOINT, cache=constants.HF_HUB_CACHE))


def check_model_name(name: str) -> None:
    """Raise ``ModelNotFoundError`` saying what to give instead when ``name`` is a folder that cannot load, or a hub
    id that cannot be had here (``check_hub_model``)."""
    from .project import check_home_folder

    check_home_folder()  # `tiny` and every default path live under $SARASHINA_GRPO_HOME
    if name == "tiny":
        return
    if not looks_like_path(name):
        check_hub_model(name)
        return
    path = Path(name).expanduser()
    examples = ("Give a hub id such as 'sbintuitions/sarashina2.2-3b-instruct-v0.1', a finished checkpoint like "
                "'artifact/outputs/<run>/checkpoint-500', or 'tiny'.")
    if path.is_file() and path.suffix.lower() == ".gguf":
        raise ModelNotFoundError(f"{model_label(name)} is a GGUF file; convert it to a model folder first: "
                                 f"sarashina-grpo convert-gguf {path} OUT, then give --model OUT.")
    if path.is_file():
        raise ModelNotFoundError(f"{model_label(name)} is a file, not a model folder. {examples}")
    if not path.is_dir():
        raise ModelNotFoundError(f"{model_label(name)}: no such folder. {examples}")
    kind = folder_kind(path)
    if kind.adapter or kind.model:
        check_loadable(path)  # files cut off, overwritten or NaN: one message now, not a traceback after loading
        if kind.model and not kind.adapter and (problem := model_folder_problem(path)):
            raise ModelNotFoundError(f"{model_label(name)}: {problem}")
        if kind.adapter:
            check_base_model(path)
        return
    if kind.newest:  # a run folder: point at its newest finished checkpoint
        hint = f"It is a run folder; its newest finished checkpoint is {kind.newest}."
    elif kind.step is not None:
        hint = ("It looks like a half-written checkpoint (no checkpoint_complete marker): the run was cut off "
                "while saving. Use an earlier checkpoint-N of the same run.")
    else:
        hint = examples
    raise ModelNotFoundError(
        f"{model_label(name)} holds neither model files (config.json + model.safetensors) "
        "nor LoRA adapter files "
        f"(adapter_config.json + adapter_model.safetensors). {hint}"
    )


# Files a tokenizer loads from: the fast tokenizer's JSON, a SentencePiece model, or a BPE/WordPiece vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
                   "vocab.txt")
# config.json fields that are counts for every architecture this project loads: text or a fraction there means the
# file was edited or overwritten, and transformers would fail with a traceback after importing everything.
CONFIG_COUNTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings")


def model_folder_problem(folder: Path) -> str | None:
    """What keeps a full model folder from loading, read from its small files: no tokenizer files, or a
    ``config.json`` that is not an object with whole, positive counts."""
    files = {p.name for p in folder.iterdir()}
    if not files & set(TOKENIZER_FILES):
        return (f"{folder} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, …): the model cannot read or "
                "write text. Copy them from the model it came from (they are saved with every checkpoint).")
    try:
        model_config = json.loads((folder / "config.json").read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{folder / 'config.json'} is not valid JSON ({err}); restore it."
    if not isinstance(model_config, dict):
        return f"{folder / 'config.json'} holds a JSON {type(model_config).__name__}, not a model configuration."
    for key in CONFIG_COUNTS:
        value = model_config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            return f"{folder / 'config.json'} has {key} = {value!r}, not a positive whole number; restore the file."
    return None


def nonfinite_parameters(model, limit: int = 3) -> list[str]:
    """Names of (up to ``limit``) floating-point parameters of ``model`` holding NaN or inf; quantised weights
    (integer storage) are skipped. One pass over the weights where they are (fast on a GPU)."""
    import torch

    bad = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.is_floating_point() and not bool(torch.isfinite(param).all()):
                bad.append(name)
                if len(bad) >= limit:
                    break
    return bad


def check_finite_model(model, what: str, fix: str) -> None:
    """Raise ``SettingsError`` naming the first parameters of ``model`` that hold NaN or inf: such a model answers
    with empty text or fails at its first sampled token, and written out it would pass the fault on."""
    bad = nonfinite_parameters(model)
    if bad:
        raise SettingsError(f"{what} holds NaN or inf weights ({', '.join(bad)}). {fix}")


def missing_local_model(name: str) -> bool:
    """``name`` is a local folder (not a hub id, not 'tiny') that holds no model (no config.json) here."""
    if name == "tiny" or not (looks_like_path(name) or Path(name).is_absolute()):
        return False
    return not (Path(name).expanduser() / "config.json").is_file()


def check_base_model(adapter_dir: Path) -> None:
    """An adapter's base model, when it is a local folder, must still be there (the loader would go looking for it
    on the hub and fail with an unrelated message). ``export --merged`` makes the same check
    (``missing_local_model``)."""
    try:
        base = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # check_loadable reports a damaged adapter; a missing entry is the loader's default
    if isinstance(base, str) and missing_local_model(base):
        raise ModelNotFoundError(f"{adapter_dir}: its base model folder {base} (adapter_config.json, "
                                 "base_model_name_or_path) does not exist here or has no config.json. Put the base "
                                 "model back there, or write its new place (a folder or hub id) into "
                                 f"{adapter_dir / 'adapter_config.json'}.")


def check_device(model_name: str, *, load_in_4bit: bool, use_vllm: bool, training: bool) -> None:
    """Fail before loading when the request cannot run on this machine, naming the route that can."""
    if use_vllm and importlib.util.find_spec("vllm") is None:
        raise SettingsError(
            "USE_VLLM is on but vLLM is not installed. Install the extra (`uv sync --extra vllm`, CUDA only) "
            "or set USE_VLLM=False / drop --vllm."
        )
    if project.cuda_available():
        project.precision()  # a bad $SARASHINA_GRPO_PRECISION is one error now, not after the model loaded
        return
    if load_in_4bit:
        raise SettingsError(
            "4-bit loading (LOAD_IN_4BIT=True) needs a CUDA GPU and none is visible. On CPU set LOAD_IN_4BIT=False "
            "(CLI: --no-4bit) and use a small model, e.g. --model tiny (inference notebook: MODEL_NAME = 'tiny'; "
            "finetuning notebook: SETTINGS = {'model_name': 'tiny', 'load_in_4bit': False})."
        )
    if use_vllm:
        raise SettingsError("USE_VLLM needs a CUDA GPU and none is visible; set USE_VLLM=False (drop --vllm).")
    if training and not looks_like_path(model_name) and model_name != "tiny":
        raise SettingsError(
            f"Training {model_name} needs a CUDA GPU and none is visible. On CPU, train the offline tiny "
            "model instead: sarashina-grpo train --model tiny --max-steps 5 (finetuning notebook: SETTINGS = "
            "{'model_name': 'tiny', 'max_steps': 5})."
        )


# The linear layers of a Llama-architecture block (Sarashina 2.2, SmolLM2, the tiny model), what LoRA can target:
# the seven projections the project targets by default.
LLAMA_LINEAR_MODULES = project.LORA_TARGET_MODULES
# Each architecture's decoder projections (project.json's model_type), what the default LoRA targets mean for it.
# Gemma 3 (text: gemma3_text) names its seven projections as Llama does; its extra q_norm/k_norm are norms, not
# linear layers. An architecture not listed keeps the targets as given and is not checked here.
PROJECTIONS = {"llama": LLAMA_LINEAR_MODULES, "mistral": LLAMA_LINEAR_MODULES, "gemma3_text": LLAMA_LINEAR_MODULES}


def model_type_of(name: str) -> str | None:
    """``model_type`` of the model to train: from its config.json (a checkpoint's: its base model's), "llama" for
    'tiny' and the default hub id; None where it cannot be read without loading (another hub id)."""
    if name in ("tiny", project.DEFAULT_MODEL_NAME):
        return "llama"
    folder = Path(name).expanduser()
    if not (folder / "config.json").is_file() and (folder / "adapter_config.json").is_file():
        try:
            base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return model_type_of(base) if base and base != name else None
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def check_lora_targets(model_name: str, targets: tuple[str, ...]) -> None:
    """LoRA targets that name no layer of the model: PEFT skips them without a word (or fails after loading)."""
    kind = model_type_of(model_name)
    if kind not in PROJECTIONS:
        return
    unknown = [t for t in targets if t not in PROJECTIONS[kind]]
    if unknown:
        raise SettingsError(
            f"{field_label('lora_target_modules')}: {', '.join(unknown)} match no layer of this {kind} model"
            f"{project.did_you_mean(unknown[0], PROJECTIONS[kind])}. Its layers are "
            f"{', '.join(PROJECTIONS[kind])}.")


def lora_targets(model_name: str, targets: tuple[str, ...]) -> list[str]:
    """The modules LoRA wraps in ``model_name``: ``targets`` as given, except the project's default
    (``project.LORA_TARGET_MODULES``), which means "this architecture's projections" (``PROJECTIONS``)."""
    kind = model_type_of(model_name)
    if tuple(targets) == project.LORA_TARGET_MODULES and kind in PROJECTIONS:
        return list(PROJECTIONS[kind])
    return list(targets)


# --- which base weights an adapter was trained on -------------------------------------------------------------

# A base model's fingerprint: sha256 over a sample of its tensors, read from its safetensors files without loading
# them. 16 tensors spread over the sorted names, 64 KiB from each end of each: ~2 MiB read however large the model,
# so it costs milliseconds. Tensor names, dtypes, shapes and bytes, not files: a copy of the model in another folder,
# the hub cache, or resharded has the same fingerprint; other weights of the same shape (another seed, another
# fine-tune) do not, nor the same weights saved in another dtype.
FINGERPRINT_TENSORS = 16
FINGERPRINT_BYTES = 1 << 16


def weights_folder(name: str) -> Path | None:
    """The local folder holding the full weights ``name`` stands for: a model folder, a cached hub id's snapshot,
    or, for an adapter (a checkpoint), its base model's; None where they are not on this disk."""
    folder = Path(name).expanduser()
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        try:
            base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return weights_folder(base) if isinstance(base, str) and base and base != name else None
    if folder.is_dir():
        return folder
    if looks_like_path(name):
        return None
    from huggingface_hub import try_to_load_from_cache

    for index in ("model.safetensors.index.json", "model.safetensors"):
        cached = try_to_load_from_cache(name, index)
        if isinstance(cached, str):
            return Path(cached).parent
    return None


def weights_fingerprint(name: str | Path) -> str | None:
    """The fingerprint (``FINGERPRINT_TENSORS``) of the full weights ``name`` stands for (``weights_folder``); None
    where they cannot be read here (not on this disk, not safetensors, damaged)."""
    import hashlib

    folder = weights_folder(str(name))
    if folder is None:
        return None
    try:
        index = folder / "model.safetensors.index.json"
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())) \
            if index.is_file() else ["model.safetensors"]
        tensors = {}
        for file in files:
            with open(folder / file, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(length))
            tensors.update({key: (folder / file, 8 + length, entry) for key, entry in header.items()
                            if key != "__metadata__"})
        names = sorted(tensors)
        if not names:
            return None
        picked = sorted({names[i * (len(names) - 1) // max(FINGERPRINT_TENSORS - 1, 1)]
                         for i in range(min(FINGERPRINT_TENSORS, len(names)))})
        digest = hashlib.sha256(f"{len(names)} tensors\n".encode())
        for key in picked:
            path, data_start, entry = tensors[key]
            start, end = (data_start + offset for offset in entry["data_offsets"])
            digest.update(f"{key} {entry['dtype']} {entry['shape']}\n".encode())
            with open(path, "rb") as f:
                f.seek(start)
                digest.update(f.read(min(FINGERPRINT_BYTES, end - start)))
                f.seek(max(start, end - FINGERPRINT_BYTES))
                digest.update(f.read(end - max(start, end - FINGERPRINT_BYTES)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return digest.hexdigest()[:32]
