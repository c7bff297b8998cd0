"""The `Host` header check that stops DNS rebinding.

A page on evil.example can make its own name resolve to the app's address (127.0.0.1, or the
server's), and the browser then lets that page read the app's API as same-origin. What gives it
away is the `Host` header: it still says evil.example. So the app answers only requests whose Host is
one of its own names, with 403 JSON for any other.

Allowed: any IP address literal (a browser sends one only when the user typed an address, which no
rebinding can fake, so opening http://<server-ip>:4040 from another machine just works), localhost,
the machine's own host names, and names given with `--allowed-hosts` (the DNS name people use for
the server, a reverse proxy's name). `--allowed-hosts='*'` turns the check off.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import tornado.httputil
import tornado.routing
import tornado.web

ANY = "*"


def machine_names() -> set[str]:
    """localhost and this machine's names: what a person on it, or who knows it by name, types."""
    names = {"localhost"}
    hostname = socket.gethostname()
    names.update({hostname, hostname.partition(".")[0]})
    with contextlib.suppress(OSError):  # no resolver: the names above still work
        names.add(socket.getfqdn())
    return {name.lower().rstrip(".") for name in names if name}


class AllowedHosts:
    """The names an app serves; `refused` counts requests for any other."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        extra = {name.strip().lower().rstrip(".") for name in extra if name.strip()}
        self.any = ANY in extra
        self.names = frozenset(machine_names() | extra)
        self.refused = 0

    def allows(self, host: str) -> bool:
        """Whether a Host header (name or address, with or without a port) is one the app serves."""
        if self.any:
            return True
        name = _without_port(host.strip().lower()).rstrip(".")
        if name in self.names or name.endswith(".localhost"):
            return True
        try:
            ipaddress.ip_address(name.partition("%")[0])
        except ValueError:
            return False
        return True


def _without_port(host: str) -> str:
    if host.startswith("["):  # [v6]:port
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host  # a name, an IPv4 address, or a bare IPv6 address


class HostMatcher(tornado.routing.Matcher):
    """Routes a request onwards only when its Host is allowed."""

    def __init__(self, allowed: AllowedHosts) -> None:
        self._allowed = allowed

    def match(self, request: tornado.httputil.HTTPServerRequest) -> dict[str, Any] | None:
        if self._allowed.allows(request.host):
            return {}
        self._allowed.refused += 1
        return None


class RefusedHostHandler(tornado.web.RequestHandler):
    """403 JSON for a request whose Host the app does not serve, whatever its method."""

    def prepare(self) -> None:
        self.set_status(403)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish({"error": f"host {self.request.host[:100]!r} is not one this app serves (see --allowed-hosts)"})


def host_checked(allowed: AllowedHosts, routes: list[Any]) -> list[Any]:
    """`routes`, answered only for allowed hosts; 403 JSON otherwise."""
    return [tornado.routing.Rule(HostMatcher(allowed), routes), (r".*", RefusedHostHandler)]
