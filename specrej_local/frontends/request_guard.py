"""Which requests the server reads at all: the checks that keep a web page the user happens to
visit from driving a server on this machine, with or without an API key.

A browser sends a page's requests to any address, the user's own loopback included. Three things
tell such a request apart, and each check answers in OpenAI's error shape:

- `Host`: with DNS rebinding a page's own name (attacker.example) comes to point at this machine,
  so the browser treats the server as the page's own origin and lets it read the answers. The
  Host header still carries that name. Accepted are `localhost` and its subdomains, IP
  addresses, the `--host` served, and the names given with `--allow-host` ("*": any); anything
  else gets 403. An address is safe to accept: no DNS answer can change what it names, so a page
  whose origin it is was served by whatever listens there, this server, which serves no pages (a
  page elsewhere that calls it by address sends its Origin, checked next). That keeps a server on
  0.0.0.0 reachable by any of its addresses, behind NAT or a container's port mapping too.
- `Origin`: browsers send it with every cross-origin request (and with a same-origin POST). The
  server serves no pages, so no origin is its own: only those given with `--cors-origin` pass;
  a request without one (curl, the SDKs, scripts) is not from a page. Anything else gets 403.
- `Content-Type`: a POST whose body is text/plain or a form is a "simple" request, which a browser
  sends without asking first (no preflight). Every body this server reads is JSON, so a POST must
  say `application/json` (a charset parameter is fine), which no page can send unasked; else 415.

`HostAndOrigin` runs outside the CORS middleware, so a refused page gets no CORS headers (and a
preflight from a refused origin gets the same 403); `JsonBody` runs inside it, so an allowed page
can read its 415.
"""
import ipaddress
from typing import Iterable, Optional

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from .openai_schema import RequestError

LOOPBACK = "localhost"  # and its subdomains, which browsers resolve to loopback themselves
ANY = "*"
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})  # a listening address that is every address


def host_name(value: str) -> Optional[str]:
    """The name in a Host header (or an --allow-host value): lower case, without the port, the
    IPv6 brackets or a final dot; None when it is not a valid host[:port]."""
    v = value.strip().lower()
    if v.startswith("["):  # [v6] or [v6]:port
        name, bracket, rest = v[1:].partition("]")
        if not bracket or rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return None
        try:
            ipaddress.IPv6Address(name.split("%")[0])
        except ValueError:
            return None
        return name
    name, colon, port = v.partition(":")
    if colon and not port.isdigit():  # also refuses a bare IPv6 address, which must be bracketed
        return None
    name = name[:-1] if name.endswith(".") else name
    if not name or any(not (c.isalnum() or c in "-._") for c in name) or not name.isascii():
        return None
    return name


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%")[0])  # an IPv6 address may carry a zone (%eth0)
    except ValueError:
        return False
    return True


def _refuse(status: int, message: str, code: str):
    return JSONResponse(RequestError(status, message, code=code).body(), status_code=status)


class HostAndOrigin:
    """ASGI middleware: 403 for a request whose Host is not this server's or whose Origin is not
    allowed (see the module's docstring)."""

    def __init__(self, app, hosts: Iterable[str] = (), origins: Iterable[str] = ()):
        self.app = app
        hosts = {h if h == ANY else host_name(h) for h in hosts} - {None}
        self.any_host = ANY in hosts
        self.hosts = frozenset(hosts)
        self.origins = frozenset(origins)
        self.any_origin = ANY in self.origins

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        refusal = self.host_refusal(headers.getlist("host")) or self.origin_refusal(headers.getlist("origin"))
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    def host_refusal(self, given: list) -> Optional[JSONResponse]:
        if self.any_host:
            return None
        if len(given) != 1:
            return _refuse(403, "a request must have one Host header", "host_not_allowed")
        name = host_name(given[0])
        if name is not None and self.allowed_host(name):
            return None
        shown = given[0][:100]
        return _refuse(403, f"Host {shown!r} is not a name of this server (it answers to localhost, IP "
                            "addresses, and names allowed with --allow-host)", "host_not_allowed")

    def allowed_host(self, name: str) -> bool:
        return name in self.hosts or name == LOOPBACK or name.endswith("." + LOOPBACK) or _is_address(name)

    def origin_refusal(self, given: list) -> Optional[JSONResponse]:
        for origin in given:
            if not (self.any_origin or origin in self.origins):
                return _refuse(403, f"requests from web pages at {origin[:100]!r} are not allowed (the server "
                                    "allows the origins given with --cors-origin)", "origin_not_allowed")
        return None


def is_json(content_type: Optional[str]) -> bool:
    """application/json, with any parameters (charset=utf-8, ...)."""
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == "application/json"


class JsonBody:
    """ASGI middleware: 415 for a POST whose Content-Type is not application/json."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            types = Headers(scope=scope).getlist("content-type")
            if len(types) != 1 or not is_json(types[0]):
                shown = f"{types[0][:100]!r}" if len(types) == 1 else "none" if not types else "several"
                refusal = _refuse(415, f"the request body must be JSON, sent with 'Content-Type: application/json' "
                                       f"(got {shown})", "unsupported_media_type")
                return await refusal(scope, receive, send)
        await self.app(scope, receive, send)


def allowed_hosts(host: str, allow: Iterable[str]) -> tuple:
    """The names a server listening on `host` answers to beyond localhost and IP addresses: `host`
    itself unless it is every address, and the --allow-host values (a bad one raises ValueError)."""
    names = []
    for value in allow:
        if value.strip() == ANY:
            names.append(ANY)
            continue
        name = host_name(value)
        if name is None:
            raise ValueError(f"--allow-host {value!r} is not a host name or address (give it without a scheme "
                             "or path, e.g. myserver.lan, or '*' for any)")
        names.append(name)
    if host.strip("[]") not in WILDCARD_ADDRESSES:
        names.append(host_name(f"[{host}]" if ":" in host and not host.startswith("[") else host) or host.lower())
    return tuple(names)
