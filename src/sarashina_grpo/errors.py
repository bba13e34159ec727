"""Failures a user can cause or fix become one ``error: …`` line and exit code 2; bugs keep their traceback.

``cli.main`` hands every exception to ``report``; ``--debug`` (or ``SARASHINA_GRPO_DEBUG=1``) prints the traceback
as well. docs/troubleshooting.md lists every message.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import traceback
from pathlib import Path
from urllib.parse import urlparse

from .data import DataError
from .project import HOME_VARIABLE, SettingsError
from .reward_guard import RewardError
from .tables import debug_enabled

USER_ERROR_EXIT = 2
DISK_FULL_FIX = ("Free some space, or choose --artifact-dir on a disk with room. A checkpoint cut off by this is "
                 "never resumed from: --resume continues from the last complete one.")
WRITE_FIX = "Choose a writable --artifact-dir, or fix the permissions."
# What PyTorch's C++ writer says when a write comes up short; a full disk is by far the usual cause, and torch
# itself never mentions it (torch.save to /dev/full raises exactly these).
TORCH_SHORT_WRITE = ("unexpected pos", "PytorchStreamWriter failed writing", "file write failed",
                     "basic_ios::clear", "iostream error")
# Writers that raise no OSError but name its errno in their text (safetensors' Rust writer: "os error 27"); a full
# disk is named first, as it comes first here.
ERRNO_TEXT = {"No space left on device": errno.ENOSPC, "os error 28": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
              "File too large": errno.EFBIG, "os error 27": errno.EFBIG}
FILE_SIZE_FIX = ("Raise the limit (ulimit -f unlimited) or choose --artifact-dir on a file system that takes large "
                 "files. A checkpoint cut off by this is never resumed from.")
# An OSError's errno and its message ({where}: the file named, {limit}: file_size_limit_text()).
OS_ERROR_TEXT = {**dict.fromkeys((errno.ENOSPC, errno.EDQUOT), "No space left on device{where}. " + DISK_FULL_FIX),
                 errno.EFBIG: "File too large{where}: {limit}. " + FILE_SIZE_FIX,
                 errno.EROFS: "Cannot write{where}: it is on a read-only file system. " + WRITE_FIX,
                 **dict.fromkeys((errno.EACCES, errno.EPERM), "Permission denied{where}. " + WRITE_FIX),
                 errno.EISDIR: "Expected a file but found a folder{where}.",
                 errno.ENOENT: "No such file or folder{where}."}


def _chain(exc: BaseException):
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _os_error_message(err: OSError) -> str | None:
    where = f" ({err.filename})" if err.filename else ""
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        parts = [Path(err.filename), *Path(err.filename).parents] if err.filename else []
        blocker = next((part for part in parts if part.exists()), None)  # the nearest existing part of the path
        if blocker is not None and not blocker.is_dir():
            return f"{blocker} is a file where a folder is needed. Move or rename it, or {home_fix(blocker)}."
        return f"A file is in the way where a folder is needed{where}. Move or rename it."
    text = OS_ERROR_TEXT.get(err.errno)  # the file-size limit read only for the message that shows it
    return text and text.format(where=where, limit=file_size_limit_text() if "{limit}" in text else "")


def home_fix(blocker: Path) -> str:
    """How to choose another place for ``blocker``: the variable that chose it, when it did."""
    home = os.environ.get(HOME_VARIABLE)
    if home and Path(home).expanduser().absolute() in [blocker.absolute(), *blocker.absolute().parents]:
        return f"point {HOME_VARIABLE} (now {home}) at a folder"
    return "choose another --artifact-dir"


def file_size_limit() -> int | None:
    """This process's file-size limit in bytes (``ulimit -f``), None when there is none."""
    import resource  # POSIX only: imported where a message needs it

    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def file_size_limit_text() -> str:
    if (limit := file_size_limit()) is None:
        return "the file system's largest file size was reached"
    return f"it reached this process's file-size limit of {limit:,} bytes (ulimit -f)"


# --- the Hugging Face hub

# The proxy variables huggingface_hub's HTTP client (httpx) reads for an https:// hub, in the order it reads them.
PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
# A hub download that failed for want of a connection: transformers' OSError, huggingface_hub's, and the HTTP
# client's own (a refused or silent proxy, no DNS, a timeout). A 404 or a gated repo is none of these.
HUB_CONNECTION_TEXT = ("We couldn't connect to", "cannot find the requested files in the local cache")
HUB_CONNECTION_ERRORS = {("huggingface_hub.errors", "LocalEntryNotFoundError"),
                         ("huggingface_hub.errors", "OfflineModeIsEnabled")}
HUB_CLIENT_MODULES = ("httpx", "httpcore", "requests", "urllib3")
HUB_CLIENT_FAILURES = ("Connect", "Proxy", "Timeout", "Network", "Connection")
HUB_REPO_RE = re.compile(r"^/(?:api/models/)?([^/]+/[^/]+?)(?:/|$)")


def proxy_for(endpoint: str, env=None) -> tuple[str, str] | None:
    """(variable, proxy URL) that a download from ``endpoint`` goes through; None: direct (``NO_PROXY`` may say so)."""
    import urllib.request  # http.client, ssl, email: only when a download's route is asked

    env = os.environ if env is None else env
    url = urlparse(endpoint)
    names = PROXY_VARIABLES if url.scheme == "https" else ("http_proxy", "HTTP_PROXY", *PROXY_VARIABLES[2:])
    variable = next((name for name in names if env.get(name, "").strip()), None)
    no_proxy = {"no": env.get("no_proxy") or env.get("NO_PROXY") or ""}
    if variable is None or no_proxy["no"] and urllib.request.proxy_bypass_environment(url.hostname or "", no_proxy):
        return None
    proxy = env[variable].strip()
    return variable, proxy if "://" in proxy else f"http://{proxy}"


def shown_url(url: str) -> str:
    """``url`` without its password (proxy URLs may carry one)."""
    if (parts := urlparse(url)).password is None:
        return url
    # host[:port] as written: an IPv6 host keeps its brackets, and a malformed port is shown, not parsed (raising)
    return parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}").geturl()


def hub_route(proxy: tuple[str, str] | None) -> str:
    """How a hub request goes (``proxy_for``'s answer), as the words after "cannot be reached": the proxy, or none."""
    return f" through the proxy {shown_url(proxy[1])} ({proxy[0]})" if proxy else " (no network?)"


def hub_unreachable_message(model: str | None, endpoint: str, cache: str | None = None, detail: str = "", *,
                            label: str | None = None, instead: str | None = None) -> str:
    """The one line for hub id ``model`` (None: not known) that cannot be had, and the ways to go on without it;
    ``label`` names the setting (default: --model's) and ``instead`` what to give in its place."""
    host = urlparse(endpoint).hostname or endpoint
    proxy = proxy_for(endpoint)
    route = hub_route(proxy)
    label = label or f"Model {model!r} (--model, notebook MODEL_NAME)"
    what = f"{label} is a hub id that" if model else "A model from the hub"
    cached = f"is not in the Hugging Face cache ({cache}) and " if cache else "could not be downloaded: "
    fix = f"Fix or unset {proxy[0]}, or give" if proxy else "Give"
    instead = instead or ("a local model folder with --model (notebook MODEL_NAME) or the offline tiny model "
                          "(--model tiny)")
    return (f"{what} {cached}{host} cannot be reached{route}{f' ({detail})' if detail else ''}. {fix} {instead}, or "
            "download it once where the hub can be reached and set HF_HUB_OFFLINE=1 to use the cached copy.")


def connection_errors(exc: BaseException) -> list[BaseException]:
    """The errors in ``exc``'s chain that say a hub request failed for want of a connection (no DNS, refused, a dead
    proxy, a timeout, offline mode); [] for any other failure (a 401, a 404, a name taken)."""
    return [err for err in _chain(exc) if (type(err).__module__, type(err).__name__) in HUB_CONNECTION_ERRORS
            or (type(err).__module__.split(".")[0] in HUB_CLIENT_MODULES
                and any(word in type(err).__name__ for word in HUB_CLIENT_FAILURES))
            or (isinstance(err, OSError) and any(text in str(err) for text in HUB_CONNECTION_TEXT))]


def connection_failed(exc: BaseException) -> bool:
    """A hub request failed for want of a connection (``connection_errors``)."""
    return bool(connection_errors(exc))


def hub_connection_failure(exc: BaseException) -> str | None:
    """The one line for a hub download that failed for want of a connection, naming the model from its URL; or None."""
    if not (failed := connection_errors(exc)):
        return None
    from huggingface_hub import constants

    chain = list(_chain(exc))
    model = None
    for err in chain:
        try:
            url = urlparse(str(err.request.url or ""))  # httpx's errors raise RuntimeError when they carry no request
        except (AttributeError, RuntimeError):
            continue
        if url.hostname and (match := HUB_REPO_RE.match(url.path)):
            model = match[1]
            break
    client = next((err for err in reversed(chain) if type(err).__module__.split(".")[0] in HUB_CLIENT_MODULES),
                  failed[0])
    detail = f"{type(client).__name__}: {str(client).splitlines()[0][:120]}" if str(client) else ""
    return hub_unreachable_message(model, constants.ENDPOINT, detail=detail)


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for a failure the user can cause or fix; None for anything else (a bug)."""
    if isinstance(exc, SettingsError | DataError | RewardError):
        return str(exc)
    if message := hub_connection_failure(exc):  # before the OSError family: transformers' is one, errno-less
        return message
    if any(isinstance(err, MemoryError) for err in _chain(exc)):  # the address-space limit if one is set, else RAM
        import resource

        if (soft := resource.getrlimit(resource.RLIMIT_AS)[0]) != resource.RLIM_INFINITY:
            return (f"Out of memory: this process may use at most {soft / 2**30:.1f} GiB of address space (ulimit -v), "
                    "and loading the training stack and a model takes more. Raise the limit (ulimit -v unlimited), or "
                    "run where it is higher.")
        return ("Out of memory: the machine ran out of RAM. Close other programs, use a smaller model, batch or "
                "generation count (--batch-size, --num-generations, --max-completion-length), or run on a machine "
                "with more memory.")
    for err in _chain(exc):
        if isinstance(err, OSError) and (message := _os_error_message(err)):
            return message
    text = " ".join(str(err) for err in _chain(exc))
    if code := next((code for marker, code in ERRNO_TEXT.items() if marker in text), None):
        return _os_error_message(OSError(code, text))
    if isinstance(exc, RuntimeError) and any(marker in text for marker in TORCH_SHORT_WRITE):
        # torch says the same for both; a limit set here is the likelier cause
        why = (f"the disk is full, or {file_size_limit_text()}. {FILE_SIZE_FIX}" if file_size_limit() is not None
               else f"the disk is most likely full (no space left on device). {DISK_FULL_FIX}")
        return f"Writing a file failed inside PyTorch ({str(exc).strip()[:80]}): {why}"
    if isinstance(exc, json.JSONDecodeError):
        return (f"A JSON file is cut off or damaged ({exc}). Run again with --debug to see which one, then restore "
                "or delete it.")
    return None


def report(exc: BaseException, *, debug: bool = False, stream=None) -> int | None:
    """Print ``error: …`` (the traceback first with ``debug``) and return 2 for a user-caused failure; None: a bug."""
    if (message := user_error_message(exc)) is None:
        return None
    stream = stream or sys.stderr
    if debug_enabled(debug):
        traceback.print_exception(exc, file=stream)
    print(f"error: {message}", file=stream)
    return USER_ERROR_EXIT
