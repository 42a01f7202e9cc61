"""The server's Host, Origin and Content-Type checks on their own, without a model: which names a
server answers to for each address it listens on and each --allow-host (tests/test_server.py runs
them on a live server). Each request goes through the middleware as ASGI messages, to a small app
that answers 200."""
import asyncio
import json

import pytest

pytest.importorskip("starlette")

from specrej_local.frontends.request_guard import (HostAndOrigin, JsonBody, allowed_hosts,  # noqa: E402
                                                   host_name, is_json)


async def _ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def call(app, headers, method="GET"):
    """(status, error code or None) of one request through `app`."""
    scope = {"type": "http", "method": method, "path": "/v1/models", "headers":
             [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    status = sent[0]["status"]
    return status, (json.loads(body)["error"]["code"] if status != 200 else None)


def guard(listen="127.0.0.1", allow=(), origins=()):
    return HostAndOrigin(_ok, hosts=allowed_hosts(listen, allow), origins=origins)


@pytest.mark.parametrize("host, allowed", [
    ("localhost", True), ("localhost:8080", True), ("LOCALHOST.", True), ("app.localhost:8080", True),
    ("127.0.0.1", True), ("127.0.0.1:9", True), ("[::1]", True), ("[::1]:8080", True),
    # an address: no DNS answer changes what it names (a page calling it from elsewhere sends its Origin)
    ("10.0.0.7", True), ("192.168.1.5:8080", True), ("0.0.0.0:8080", True), ("[fd00::5]:8080", True),
    ("[fe80::1%eth0]", True),
    ("attacker.test", False), ("attacker.test:8080", False), ("localhost.attacker.test", False),
    ("127.0.0.1.attacker.test", False), ("evillocalhost", False), ("gpubox.lan", False), ("2130706433", False),
    ("", False), ("::1", False), ("[::1", False), ("[gpubox]", False), ("localhost:http", False),
    ("local host", False), ("lócalhost", False),
])
def test_a_server_answers_to_localhost_and_addresses_by_default(host, allowed):
    status, code = call(guard(), [("host", host)])
    assert (status, code) == ((200, None) if allowed else (403, "host_not_allowed"))


@pytest.mark.parametrize("listen, allow, host, allowed", [
    ("0.0.0.0", (), "gpubox.lan:8080", False),  # on every address, a name must be given
    ("0.0.0.0", ("gpubox.lan",), "gpubox.lan:8080", True),
    ("0.0.0.0", ("gpubox.lan",), "GpuBox.Lan.", True),
    ("0.0.0.0", ("gpubox.lan",), "other.lan", False),
    ("::", ("gpubox.lan", "[fd00::5]:80"), "gpubox.lan", True),
    ("0.0.0.0", ("*",), "anything.test", True),
    ("gpubox.lan", (), "gpubox.lan:8080", True),  # the name given as --host is the server's
    ("gpubox.lan", (), "other.lan:8080", False),
])
def test_a_server_answers_to_the_names_allowed(listen, allow, host, allowed):
    status, _ = call(guard(listen, allow), [("host", host)])
    assert status == (200 if allowed else 403)


def test_a_request_with_no_host_or_two_is_refused():
    assert call(guard(), []) == (403, "host_not_allowed")
    assert call(guard(), [("host", "localhost"), ("host", "attacker.test")]) == (403, "host_not_allowed")


@pytest.mark.parametrize("origins, origin, allowed", [
    ((), None, True),  # no Origin: not a browser page
    ((), "http://localhost:8080", False),  # the server serves no pages: not even its own origin
    ((), "null", False),  # a sandboxed frame or a file:// page
    (("http://localhost:3000",), "http://localhost:3000", True),
    (("http://localhost:3000",), "http://localhost:3001", False),
    (("*",), "http://anywhere.test", True),
])
def test_only_the_origins_given_pass(origins, origin, allowed):
    headers = [("host", "localhost")] + ([("origin", origin)] if origin else [])
    assert call(guard(origins=origins), headers) == ((200, None) if allowed else (403, "origin_not_allowed"))


@pytest.mark.parametrize("content_type, ok", [
    ("application/json", True), ("application/json; charset=utf-8", True), ("Application/JSON ;charset=UTF-8", True),
    (None, False), ("text/plain", False), ("application/x-www-form-urlencoded", False),
    ("multipart/form-data; boundary=x", False), ("application/json-seq", False),
    ("text/plain; application/json", False),
])
def test_a_post_must_be_json(content_type, ok):
    assert is_json(content_type) is ok
    headers = [("content-type", content_type)] if content_type else []
    assert call(JsonBody(_ok), headers, method="POST") == ((200, None) if ok else (415, "unsupported_media_type"))
    assert call(JsonBody(_ok), headers, method="GET") == (200, None)  # a GET has no body to read


@pytest.mark.parametrize("value, name", [("gpubox.lan", "gpubox.lan"), ("GPUBOX.lan:8080", "gpubox.lan"),
                                         ("[fd00::5]:80", "fd00::5"), ("10.0.0.7", "10.0.0.7"),
                                         ("http://gpubox.lan", None), ("gpubox.lan/v1", None), ("", None)])
def test_host_names_are_read_as_browsers_send_them(value, name):
    assert host_name(value) == name


def test_allowed_hosts_refuses_a_url():
    with pytest.raises(ValueError, match="--allow-host 'http://gpubox.lan' is not a host name"):
        allowed_hosts("127.0.0.1", ["http://gpubox.lan"])
    assert allowed_hosts("0.0.0.0", []) == () and allowed_hosts("::", ["*"]) == ("*",)
