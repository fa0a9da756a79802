"""Who may connect to the daemon's port: the token, the Origin and Host checks,
and the connection limits (``access`` in the config, SECURITY.md).

Every HTTP request and WebSocket handshake on the port passes
:meth:`AccessPolicy.check` first, in this order:

1. ``Host`` must name this daemon: an IP address, ``localhost``, the configured
   bind host or one of ``access.allowed_hosts``. A page that rebinds its own
   DNS name to this machine (DNS rebinding) sends its own name and gets 403.
2. A browser's ``Origin`` (WebSocket handshakes) must be the page the daemon
   served itself (same host and port) or one of ``access.allowed_origins``;
   anything else, ``null`` included, gets 403. Programs that send no
   ``Origin`` (watch, the robot client, ``send``, Twilio) pass.
3. When a token is configured, the event stream (``/ws``) needs it: in
   ``Authorization: Bearer <token>``, as the WebSocket subprotocol
   ``bearer.<token>`` (offered next to ``emotion-monitor``), or as
   ``?token=<token>`` (browsers cannot set headers); compared in constant
   time. Missing or wrong: 401. The ingest endpoints check the same token
   inside their protocols (close codes 4401, docs/ingest.md), Twilio also in
   the call's ``start`` message.
4. Open WebSocket connections are limited per client address and in all:
   503 beyond.

Pure functions of the request's path and headers, so they are tested without
sockets; :mod:`streamer.publishers.websocket` applies them.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from websockets.typing import Subprotocol

if TYPE_CHECKING:
    from websockets.datastructures import Headers

    from streamer.config import AccessConfig

log = logging.getLogger(__name__)

TOKEN_ENV = "EMOTION_MONITOR_TOKEN"
"""The environment variable holding the daemon's token (and its clients')."""
LEGACY_TOKEN_ENV = "EMOTION_MONITOR_INGEST_TOKEN"
"""Its name before the token guarded every endpoint; still read, with a warning."""
SUBPROTOCOL = "emotion-monitor"
"""The WebSocket subprotocol a client may offer next to ``bearer.<token>``."""
TOKEN_SUBPROTOCOL_PREFIX = "bearer."

_warned_legacy = False


def token_from_env() -> str | None:
    """The token from ``EMOTION_MONITOR_TOKEN`` (or its old name, with a warning); None = none."""
    global _warned_legacy
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and os.environ.get(LEGACY_TOKEN_ENV):
        if not _warned_legacy:
            _warned_legacy = True
            log.warning(
                "%s is deprecated: the token now guards every endpoint; rename it %s",
                LEGACY_TOKEN_ENV,
                TOKEN_ENV,
            )
        token = os.environ.get(LEGACY_TOKEN_ENV)
    return token


def _subprotocols(headers: Headers) -> list[str]:
    return [
        p.strip()
        for v in headers.get_all("Sec-WebSocket-Protocol")
        for p in v.split(",")
        if p.strip()
    ]


def request_token(path: str, headers: Headers) -> str | None:
    """The token a request presents: ``Authorization: Bearer X``, subprotocol ``bearer.X``, or ``?token=X``."""
    auth = headers.get("Authorization")
    if auth is not None and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    for proto in _subprotocols(headers):
        if proto.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return proto[len(TOKEN_SUBPROTOCOL_PREFIX) :]
    values = parse_qs(urlsplit(path).query).get("token")
    return values[0] if values else None


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def select_subprotocol(offered: Iterable[str]) -> Subprotocol | None:
    """The subprotocol the server answers with: ``emotion-monitor`` if offered (browsers
    that send ``bearer.<token>`` need an answer), else none. The token itself is never echoed."""
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


def host_name(host_header: str) -> str:
    """The name of a ``Host`` header without its port, lower case (``[::1]:8765`` -> ``::1``)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Refusal:
    """An HTTP answer instead of the request: ``status`` and a one-line ``reason``."""

    status: int
    reason: str


@dataclass(frozen=True)
class AccessPolicy:
    """The ``access`` rules of one port; see the module docstring."""

    token: str | None = None
    bind_host: str = "127.0.0.1"
    allowed_origins: frozenset[str] = frozenset()
    allowed_hosts: tuple[str, ...] = ()
    max_connections: int = 512
    max_connections_per_address: int = 64

    @classmethod
    def from_config(cls, access: AccessConfig, bind_host: str) -> AccessPolicy:
        """The policy of ``access`` for a server bound to ``bind_host``."""
        return cls(
            token=access.bearer_token(),
            bind_host=bind_host,
            allowed_origins=frozenset(access.allowed_origins),
            allowed_hosts=tuple(access.allowed_hosts),
            max_connections=access.max_connections,
            max_connections_per_address=access.max_connections_per_address,
        )

    def host_allowed(self, host_header: str | None) -> bool:
        """Whether the ``Host`` header names this daemon (see the module docstring)."""
        if "*" in self.allowed_hosts:
            return True
        if not host_header:
            return False
        name = host_name(host_header)
        if _is_ip(name) or name == "localhost" or name == self.bind_host.lower():
            return True
        for allowed in self.allowed_hosts:
            if name == allowed or (allowed.startswith("*.") and name.endswith(allowed[1:])):
                return True
        return False

    def origin_allowed(self, origin: str | None, host_header: str | None) -> bool:
        """Whether a browser page of ``origin`` may open a WebSocket (no Origin: not a browser)."""
        if origin is None:
            return True
        origin = origin.strip().lower()
        if origin in self.allowed_origins:
            return True
        if origin == "null" or not host_header:
            return False
        return urlsplit(origin).netloc == host_header.strip().lower()

    def authenticated(self, path: str, headers: Headers) -> bool:
        """Whether the request presents the token (always true when there is none)."""
        return self.token is None or token_matches(request_token(path, headers), self.token)

    def check(
        self,
        path: str,
        headers: Headers,
        *,
        websocket: bool,
        needs_token: bool,
        open_from_address: int = 0,
        open_total: int = 0,
    ) -> Refusal | None:
        """``None`` to serve the request, else how to refuse it.

        ``websocket``: a WebSocket handshake (Origin and the connection limits apply);
        ``needs_token``: the path needs the token at the handshake (``/ws``);
        ``open_from_address``/``open_total``: WebSocket connections already open.
        """
        host = headers.get("Host")
        if not self.host_allowed(host):
            return Refusal(
                403,
                f"Host {host!r} is not a name this monitor answers to; "
                "add it to access.allowed_hosts",
            )
        if not websocket:
            return None
        if not self.origin_allowed(headers.get("Origin"), host):
            return Refusal(
                403,
                f"pages from {headers.get('Origin')!r} may not connect; "
                "add the origin to access.allowed_origins",
            )
        if needs_token and not self.authenticated(path, headers):
            return Refusal(
                401,
                "missing or wrong token; send 'Authorization: Bearer <token>', "
                "the subprotocol bearer.<token>, or ?token=<token>",
            )
        if open_total >= self.max_connections:
            return Refusal(
                503,
                f"the monitor has {open_total} connections open "
                "(access.max_connections); try again later",
            )
        if open_from_address >= self.max_connections_per_address:
            return Refusal(
                503,
                f"{open_from_address} connections are open from your address "
                "(access.max_connections_per_address); close some",
            )
        return None
