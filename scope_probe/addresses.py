"""Which addresses only mean something on this host, and so get the host id in their endpoint ids.

Loopback and link-local addresses, and the subnets of Docker's bridges (`docker0`, `br-<id>`), are
reused on every host: 172.17.0.2 here is not 172.17.0.2 there. Endpoints on them are scoped with the
host id. Every other address is scoped with nothing, so a connection's far end seen from two hosts
becomes one node when their reports are merged.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import threading
import time

import psutil

from scope_common import ids

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_DOCKER_BRIDGE = re.compile(r"^(docker\d+|br-[0-9a-f]{12})$")
#: Interfaces change rarely; re-reading them every few seconds catches a new Docker network soon
#: enough without a syscall storm per connection.
_REFRESH_SECONDS = 5.0
#: Scopes remembered, by address and namespace: every report scopes each connection's two ends again, and
#: parsing an address costs more than the rest of an endpoint id (thousands of lingering connections).
_MAX_SCOPES = 65_536


class AddressScopes:
    """Scopes endpoint addresses and lists this host's networks. Safe to share between threads."""

    def __init__(self, host_id: str, sys_class_net: str = "/sys/class/net") -> None:
        self.host_id = host_id
        self._sys_class_net = sys_class_net
        self._lock = threading.Lock()
        self._bridges: tuple[IPNetwork, ...] = ()
        self._local: tuple[IPInterface, ...] = ()
        self._read_at = -_REFRESH_SECONDS
        #: (address, netns) -> (the bridges it was scoped against, its scope).
        self._scopes: dict[tuple[str, str], tuple[tuple[IPNetwork, ...], str]] = {}

    def scope(self, addr: str, netns: str = "") -> str:
        """The scope part of the endpoint id of `addr`: the host id, or empty.

        `netns` names the network namespace the address was seen in when it is not the host's own:
        every container has its own loopback, so a loopback address there is scoped to the
        namespace too, or the 127.0.0.1:80 of two containers would be one node.
        """
        bridges = self._current()[0]
        known = self._scopes.get((addr, netns))
        if known is not None and known[0] is bridges:  # (a race of two threads only computes it twice)
            return known[1]
        ip = parse_ip(addr)
        if ip is None:
            scope = self.host_id
        elif ip.is_loopback:
            scope = ids.namespace_scope(self.host_id, netns) if netns else self.host_id
        elif ip.is_link_local or ip.is_unspecified:
            scope = self.host_id
        else:
            scope = self.host_id if any(ip in net for net in bridges) else ""
        if len(self._scopes) >= _MAX_SCOPES:
            self._scopes.clear()
        self._scopes[(addr, netns)] = (bridges, scope)
        return scope

    def endpoint_id(self, addr: str, port: int, netns: str = "") -> str:
        return ids.endpoint_id(self.scope(addr, netns), addr, port)

    def local_interfaces(self) -> tuple[IPInterface, ...]:
        """Every address of this host with its network (`10.0.0.5/24`), loopback excepted."""
        return self._current()[1]

    def bridge_networks(self) -> tuple[IPNetwork, ...]:
        return self._current()[0]

    def _current(self) -> tuple[tuple[IPNetwork, ...], tuple[IPInterface, ...]]:
        now = time.monotonic()
        with self._lock:
            if now - self._read_at >= _REFRESH_SECONDS:
                self._bridges, self._local = self._read()
                self._read_at = now
            return self._bridges, self._local

    def _read(self) -> tuple[tuple[IPNetwork, ...], tuple[IPInterface, ...]]:
        bridges: list[IPNetwork] = []
        local: list[IPInterface] = []
        for name, addrs in psutil.net_if_addrs().items():
            is_bridge = _DOCKER_BRIDGE.match(name) is not None and os.path.isdir(
                os.path.join(self._sys_class_net, name, "bridge")
            )
            for addr in addrs:
                if addr.family not in (socket.AF_INET, socket.AF_INET6) or not addr.netmask:
                    continue
                try:
                    interface = ipaddress.ip_interface(f"{addr.address.split('%')[0]}/{addr.netmask}")
                except ValueError:
                    continue
                if interface.ip.is_loopback or interface.ip.is_link_local:
                    continue
                local.append(interface)
                if is_bridge:
                    bridges.append(interface.network)
        return tuple(bridges), tuple(local)


def parse_ip(addr: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
