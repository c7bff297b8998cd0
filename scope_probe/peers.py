"""Finding apps: peers named on the command line, and every A record of a DNS name (WeaveDNS).

Both are resolved again and again, so apps can come and go: the probe reconnects to whatever the
last resolution found.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass

import dns.exception
import dns.resolver

from scope_common.bus import DEFAULT_BUS_PORT
from scope_common.config import split_host_port

log = logging.getLogger(__name__)

WEAVE_DNS_NAME = "scope.weave.local"


@dataclass(frozen=True, slots=True)
class Peer:
    """An app as named by the user: a host name or address, and a port."""

    host: str
    port: int


def parse_peer(text: str) -> Peer:
    """`host`, `ip`, `host:port`, `ip:port`, `[v6]:port` or a bare IPv6 address; port 4030 by default."""
    if not text.strip():
        raise ValueError("empty peer")
    try:
        host, port = split_host_port(text, DEFAULT_BUS_PORT)
    except ValueError as exc:
        raise ValueError(f"invalid peer {text.strip()!r}: {exc}") from None
    if not host:
        raise ValueError(f"invalid peer {text.strip()!r}: no host")
    return Peer(host, port)


def bus_address(ip: str, port: int) -> str:
    """The ZeroMQ address of an app's bus."""
    return f"tcp://[{ip}]:{port}" if ":" in ip else f"tcp://{ip}:{port}"


class PeerResolver:
    """Turns the configured peers and the WeaveDNS name into the set of bus addresses to connect to."""

    def __init__(
        self,
        peers: list[Peer],
        *,
        weave_name: str | None = WEAVE_DNS_NAME,
        weave_port: int = DEFAULT_BUS_PORT,
        nameserver: str | None = None,
        nameserver_port: int = 53,
    ) -> None:
        self._peers = peers
        self._weave_name = weave_name
        self._weave_port = weave_port
        self._resolver = dns.resolver.Resolver(configure=nameserver is None)
        if nameserver is not None:
            self._resolver.nameservers = [nameserver]
            self._resolver.port = nameserver_port
        # WeaveDNS answers in microseconds; a missing one must not stall discovery of the others.
        self._resolver.lifetime = 2.0
        self._unresolvable: set[str] = set()

    def resolve(self) -> set[str]:
        """Every bus address known now. Names that do not resolve are logged once and skipped."""
        addresses: set[str] = set()
        for peer in self._peers:
            for ip in self._resolve_host(peer.host):
                addresses.add(bus_address(ip, peer.port))
        if self._weave_name:
            for ip in self._lookup_a(self._weave_name):
                addresses.add(bus_address(ip, self._weave_port))
        return addresses

    def _resolve_host(self, host: str) -> list[str]:
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            self._note_unresolvable(host, str(exc))
            return []
        self._unresolvable.discard(host)
        return sorted({str(info[4][0]) for info in infos})

    def _lookup_a(self, name: str) -> list[str]:
        try:
            answer = self._resolver.resolve(name, "A")
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.exception.DNSException, OSError) as exc:
            self._note_unresolvable(name, type(exc).__name__)
            return []
        self._unresolvable.discard(name)
        return sorted(rdata.to_text() for rdata in answer)

    def _note_unresolvable(self, name: str, why: str) -> None:
        if name not in self._unresolvable:
            log.info("cannot resolve %s (%s); will keep trying", name, why)
            self._unresolvable.add(name)
