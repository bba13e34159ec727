"""A hub model that cannot be downloaded: found in seconds on the route the download would take (straight, or
through the proxy that HTTPS_PROXY/ALL_PROXY names), and a download that fails anyway is one line naming the model.
No network: the "proxies" are local sockets, closed or answering as a proxy would."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from sarashina_grpo import errors, preflight
from sarashina_grpo.cli import main
from sarashina_grpo.errors import proxy_for, user_error_message
from sarashina_grpo.preflight import ModelNotFoundError, check_hub_model, hub_reachable
from sarashina_grpo.project import SettingsError

HUB_ID = "sbintuitions/sarashina2.2-3b-instruct-v0.1"
HUB = "https://huggingface.co"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
def fake_proxy():
    """A local proxy that answers every CONNECT with ``status`` (None: accepts and never answers); its URL."""
    servers = []

    def start(status: bytes | None) -> str:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        servers.append(server)

        def serve():
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                if status is not None:
                    conn.sendall(b"HTTP/1.1 " + status + b"\r\n\r\n")
                else:
                    time.sleep(3)

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{server.getsockname()[1]}"

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def proxy_env(monkeypatch):
    for name in (*errors.PROXY_VARIABLES, "no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def empty_hub_cache(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_a_proxy_on_a_closed_port_makes_the_hub_unreachable_at_once(proxy_env):
    proxy_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    assert not hub_reachable(HUB)  # before: any proxy variable counted as "reachable", and the download retried
    assert time.monotonic() - started < 2


def test_a_proxy_that_refuses_the_tunnel_makes_the_hub_unreachable(proxy_env, fake_proxy):
    proxy_env.setenv("HTTPS_PROXY", fake_proxy(b"403 Forbidden"))
    assert not hub_reachable(HUB)


def test_a_proxy_that_never_answers_makes_the_hub_unreachable_within_the_timeout(proxy_env, fake_proxy):
    proxy_env.setenv("ALL_PROXY", fake_proxy(None))
    started = time.monotonic()
    assert not hub_reachable(HUB, timeout=0.5)
    assert time.monotonic() - started < 2


def test_a_proxy_that_opens_the_tunnel_counts_as_reaching_the_hub(proxy_env, fake_proxy):
    proxy_env.setenv("https_proxy", fake_proxy(b"200 Connection established"))
    assert hub_reachable(HUB)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),  # no proxy: the download goes straight to the hub
    ({"HTTPS_PROXY": "http://p:3128"}, ("HTTPS_PROXY", "http://p:3128")),
    ({"https_proxy": "p:3128", "HTTPS_PROXY": "http://q:1"}, ("https_proxy", "http://p:3128")),  # lower case first
    ({"ALL_PROXY": "socks5://p:1080"}, ("ALL_PROXY", "socks5://p:1080")),
    ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "huggingface.co"}, None),  # the hub is not proxied
    ({"HTTP_PROXY": "http://p:3128"}, None),  # for http:// URLs only; the hub is https
])
def test_the_proxy_a_hub_download_takes(env, expected):
    assert proxy_for(HUB, env) == expected


def test_an_uncached_hub_id_behind_a_dead_proxy_names_the_model_the_proxy_and_the_fixes(proxy_env, empty_hub_cache):
    proxy_env.setenv("HTTPS_PROXY", f"http://user:secret@127.0.0.1:{closed_port()}")
    with pytest.raises(ModelNotFoundError) as info:
        check_hub_model(HUB_ID)
    message = str(info.value)
    assert HUB_ID in message and "through the proxy" in message and "(HTTPS_PROXY)" in message
    assert "secret" not in message  # the proxy's password is not printed
    assert "--model" in message and "HF_HUB_OFFLINE" in message and "Fix or unset HTTPS_PROXY" in message



@pytest.mark.parametrize("proxy", ["http://user:secret@proxy.example:bad", "http://user:secret@[::1]:3128"])
def test_a_proxy_with_a_password_and_an_odd_port_or_ipv6_host_is_named_without_the_password(proxy_env,
                                                                                          empty_hub_cache, proxy):
    proxy_env.setenv("HTTPS_PROXY", proxy)
    with pytest.raises(ModelNotFoundError) as info:  # a malformed port once raised ValueError here: a traceback
        check_hub_model(HUB_ID)
    message = str(info.value)
    assert "secret" not in message and f"through the proxy {proxy.replace('secret', '***')} (HTTPS_PROXY)" in message


def test_push_to_hub_offline_is_refused_whatever_proxy_is_set(proxy_env, monkeypatch):
    from huggingface_hub import constants

    from sarashina_grpo.preflight import check_push_to_hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    proxy_env.setenv("HTTPS_PROXY", "http://user:secret@proxy.example:bad")
    with pytest.raises(SettingsError, match="push_to_hub is on but HF_HUB_OFFLINE is set"):
        check_push_to_hub(True)

def hub_download_failure(repo: str = HUB_ID) -> OSError:
    """The chain a download through a refused proxy raises (transformers 5, huggingface_hub 1.x, httpx), built
    without a request: httpx's ConnectError inside huggingface_hub's LocalEntryNotFoundError inside
    transformers' errno-less OSError."""
    import httpx
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        try:
            try:
                raise ConnectionRefusedError(111, "Connection refused")
            except ConnectionRefusedError as refused:
                request = httpx.Request("HEAD", f"{HUB}/{repo}/resolve/main/config.json")
                raise httpx.ConnectError("[Errno 111] Connection refused", request=request) from refused
        except httpx.ConnectError as err:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub and we "
                                          "cannot find the requested files in the local cache.") from err
    except LocalEntryNotFoundError as err:
        try:
            raise OSError(f"We couldn't connect to '{HUB}' to load the files, and couldn't find them in the cached "
                          "files.") from err
        except OSError as outer:
            return outer


def test_a_hub_download_that_fails_for_want_of_a_connection_is_one_line_naming_the_model(proxy_env):
    proxy_env.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    message = user_error_message(hub_download_failure())
    assert message.startswith(f"Model {HUB_ID!r}") and "through the proxy http://127.0.0.1:9 (HTTPS_PROXY)" in message
    assert "ConnectError" in message and "--model" in message and "HF_HUB_OFFLINE" in message


def test_a_missing_repo_is_not_taken_for_an_unreachable_hub():
    assert user_error_message(OSError("sbintuitions/typo is not a local folder and is not a valid model "
                                      "identifier")) is None  # a bug or a typo keeps its own message


def test_infer_whose_download_fails_after_the_check_ends_in_one_line(proxy_env, empty_hub_cache, no_unsloth_load,
                                                                      monkeypatch, capsys):
    from sarashina_grpo import inference

    monkeypatch.setattr(preflight, "hub_reachable", lambda endpoint: True)  # the proxy failed only later

    def fail(*args, **kwargs):
        raise hub_download_failure()

    monkeypatch.setattr(inference, "load_for_inference", fail)
    code = main(["infer", "--model", HUB_ID, "--max-new-tokens", "4", "こんにちは"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: Model {HUB_ID!r}")
