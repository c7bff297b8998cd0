"""Which addresses get the host id in their endpoint ids, against this host's real interfaces.

The Docker-like interfaces are made for the test: a real bridge named like a user-defined Docker
network (`br-<12 hex>`), and a veth named like Docker's default bridge that is not a bridge at all.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from scope_probe.addresses import AddressScopes, parse_ip

HOST = "addr-host"


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    used = [
        ipaddress.IPv4Network(route["dst"], strict=False)
        for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]")
        if route.get("dst", "default") != "default"
    ]
    free = []
    for index in range(1, 255):
        net = ipaddress.IPv4Network(f"10.232.{index}.0/24")
        if not any(net.overlaps(u) for u in used):
            free.append(net)
        if len(free) == count:
            return free
    raise RuntimeError("no free /24 in 10.232.0.0/16")


@dataclass
class FakeDocker:
    bridge: str
    bridge_ip: str  # on a real bridge named like a Docker network
    impostor: str
    impostor_ip: str  # on a veth named like docker0 but not a bridge


@pytest.fixture
def fake_docker() -> Iterator[FakeDocker]:
    if os.geteuid() != 0:
        pytest.fail("creating interfaces needs root", pytrace=False)
    token = secrets.token_hex(6)
    bridge, impostor, peer = f"br-{token}", f"docker{secrets.randbelow(9000) + 1000}", f"sct{token[:8]}"
    bridge_net, impostor_net = _free_subnets(2)
    made: list[str] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        made.append(bridge)
        _ip("addr", "add", f"{bridge_net.network_address + 1}/24", "dev", bridge)
        _ip("link", "add", impostor, "type", "veth", "peer", "name", peer)
        made.append(impostor)
        _ip("addr", "add", f"{impostor_net.network_address + 1}/24", "dev", impostor)
        yield FakeDocker(bridge, str(bridge_net.network_address + 7), impostor, str(impostor_net.network_address + 7))
    finally:
        for name in made:
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30, check=False)


def test_host_local_addresses_are_scoped_with_the_host() -> None:
    scopes = AddressScopes(HOST)
    for addr in ["127.0.0.1", "127.3.4.5", "::1", "169.254.10.20", "fe80::1", "0.0.0.0", "::", "::ffff:127.0.0.1"]:
        assert scopes.scope(addr) == HOST, addr
    assert scopes.endpoint_id("127.0.0.1", 80) == f"{HOST};127.0.0.1;80"


def test_loopback_in_another_network_namespace_is_scoped_to_it() -> None:
    scopes = AddressScopes(HOST)
    assert scopes.scope("127.0.0.1", netns="4026532001") == f"{HOST}/4026532001"
    assert scopes.scope("::1", netns="4026532001") == f"{HOST}/4026532001"
    assert scopes.endpoint_id("127.0.0.1", 8080, netns="abc") == f"{HOST}/abc;127.0.0.1;8080"
    # Only loopback differs per namespace: other addresses are scoped as on the host.
    assert scopes.scope("8.8.8.8", netns="abc") == ""
    assert scopes.scope("169.254.1.1", netns="abc") == HOST


def test_routable_addresses_are_not_scoped() -> None:
    scopes = AddressScopes(HOST)
    for addr in ["8.8.8.8", "192.0.2.2", "10.1.2.3", "2001:db8::1", "fd00::2", "::ffff:8.8.8.8"]:
        assert scopes.scope(addr) == "", addr
    assert scopes.endpoint_id("8.8.8.8", 443) == ";8.8.8.8;443"


def test_docker_bridge_networks_are_host_local_and_look_alikes_are_not(fake_docker: FakeDocker) -> None:
    scopes = AddressScopes(HOST)
    assert scopes.scope(fake_docker.bridge_ip) == HOST
    assert scopes.scope(f"::ffff:{fake_docker.bridge_ip}") == HOST
    assert scopes.endpoint_id(fake_docker.bridge_ip, 80) == f"{HOST};{fake_docker.bridge_ip};80"
    # Named like docker0, but a veth: its network is as routable as any.
    assert scopes.scope(fake_docker.impostor_ip) == ""
    bridges = {str(n) for n in scopes.bridge_networks()}
    assert str(ipaddress.ip_interface(f"{fake_docker.bridge_ip}/24").network) in bridges
    assert str(ipaddress.ip_interface(f"{fake_docker.impostor_ip}/24").network) not in bridges


def test_local_interfaces_list_the_hosts_networks_without_loopback(fake_docker: FakeDocker) -> None:
    interfaces = {str(i) for i in AddressScopes(HOST).local_interfaces()}
    bridge_interface = str(ipaddress.ip_interface(f"{fake_docker.bridge_ip}/24").network.network_address + 1) + "/24"
    assert bridge_interface in interfaces
    assert not any(ipaddress.ip_interface(i).ip.is_loopback for i in interfaces)
    assert not any(ipaddress.ip_interface(i).ip.is_link_local for i in interfaces)


def test_parse_ip_unwraps_ipv4_mapped_addresses() -> None:
    assert parse_ip("::ffff:10.0.0.1") == ipaddress.IPv4Address("10.0.0.1")
    assert parse_ip("::ffff:a00:1") == ipaddress.IPv4Address("10.0.0.1")
    assert parse_ip("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1")
    assert parse_ip("10.0.0.1") == ipaddress.IPv4Address("10.0.0.1")
    assert parse_ip("not-an-ip") is None
    # An address that cannot be parsed cannot be placed: it stays on this host.
    assert AddressScopes(HOST).scope("not-an-ip") == HOST
