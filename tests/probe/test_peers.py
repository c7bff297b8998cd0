"""Finding apps: peers from the command line, WeaveDNS records from a real dnsmasq, and real probes
publishing to every app they find."""

from __future__ import annotations

import logging
import re
import socket
import time
from functools import partial

import pytest

from scope_probe.peers import WEAVE_DNS_NAME, Peer, PeerResolver, bus_address, parse_peer
from tests.fixtures.dns import DnsServer
from tests.fixtures.scope import App, Scope, wait_for


@pytest.mark.parametrize(
    ("text", "peer"),
    [
        ("scope-app", Peer("scope-app", 4030)),
        ("10.0.0.7", Peer("10.0.0.7", 4030)),
        ("scope-app:5000", Peer("scope-app", 5000)),
        ("10.0.0.7:5000", Peer("10.0.0.7", 5000)),
        ("[fd00::7]:5000", Peer("fd00::7", 5000)),
        ("[fd00::7]", Peer("fd00::7", 4030)),
        ("fd00::7", Peer("fd00::7", 4030)),
        ("::1", Peer("::1", 4030)),
        ("  10.0.0.7:1  ", Peer("10.0.0.7", 1)),
        ("10.0.0.7:65535", Peer("10.0.0.7", 65535)),
    ],
)
def test_parse_peer(text: str, peer: Peer) -> None:
    assert parse_peer(text) == peer


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty peer"),
        ("   ", "empty peer"),
        ("10.0.0.7:0", "bad port '0'"),
        ("10.0.0.7:65536", "bad port '65536'"),
        ("10.0.0.7:http", "bad port 'http'"),
        ("10.0.0.7:-1", "bad port '-1'"),
        ("[fd00::7]:x", "bad port 'x'"),
        (":4030", "no host"),
        ("[]:4030", "no host"),
        ("[fd00::7", "invalid peer '[fd00::7'"),
        ("[fd00::7]5000", "invalid peer '[fd00::7]5000'"),
    ],
)
def test_bad_peers_are_rejected_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        parse_peer(text)
    if text.strip():
        assert str(error.value).startswith(f"invalid peer {text.strip()!r}")


def test_bus_address_brackets_ipv6() -> None:
    assert bus_address("10.0.0.7", 4030) == "tcp://10.0.0.7:4030"
    assert bus_address("fd00::7", 4030) == "tcp://[fd00::7]:4030"


def _resolver(dns: DnsServer, peers: list[Peer] | None = None, weave_port: int = 4030) -> PeerResolver:
    return PeerResolver(peers or [], weave_port=weave_port, nameserver=dns.listen, nameserver_port=dns.port)


def test_resolver_returns_every_weavedns_record_and_follows_changes(weavedns: DnsServer) -> None:
    resolver = _resolver(weavedns, [Peer("127.0.0.1", 5000), Peer("localhost", 5001)])
    localhost = {bus_address(str(info[4][0]), 5001) for info in socket.getaddrinfo("localhost", None)}
    assert "tcp://127.0.0.1:5001" in localhost
    cli = {"tcp://127.0.0.1:5000", *localhost}
    assert resolver.resolve() == cli  # no records yet: NXDOMAIN is not an error

    weavedns.set_records(["10.32.0.1", "10.32.0.2"])
    assert resolver.resolve() == cli | {"tcp://10.32.0.1:4030", "tcp://10.32.0.2:4030"}

    # An app leaves, another arrives.
    weavedns.set_records(["10.32.0.2", "10.32.0.3"])
    assert resolver.resolve() == cli | {"tcp://10.32.0.2:4030", "tcp://10.32.0.3:4030"}

    weavedns.set_records([])
    assert resolver.resolve() == cli


def test_resolver_uses_the_weave_port_for_dns_records(weavedns: DnsServer) -> None:
    weavedns.set_records(["10.32.0.9"])
    assert _resolver(weavedns, weave_port=14030).resolve() == {"tcp://10.32.0.9:14030"}


def test_resolver_survives_the_dns_server_being_down(weavedns: DnsServer, caplog: pytest.LogCaptureFixture) -> None:
    weavedns.set_records(["10.32.0.1"])
    resolver = _resolver(weavedns, [Peer("127.0.0.1", 5000)])
    assert resolver.resolve() == {"tcp://127.0.0.1:5000", "tcp://10.32.0.1:4030"}
    weavedns.stop()
    caplog.set_level(logging.INFO, logger="scope_probe.peers")
    for _ in range(2):
        started = time.monotonic()
        assert resolver.resolve() == {"tcp://127.0.0.1:5000"}
        assert time.monotonic() - started < 5, "a dead DNS server stalled discovery"
    complaints = [r for r in caplog.records if WEAVE_DNS_NAME in r.getMessage()]
    assert len(complaints) == 1, [r.getMessage() for r in caplog.records]
    assert "cannot resolve scope.weave.local" in complaints[0].getMessage()


# ------------------------------------------------------------------------------------ end to end


def _has_host(app: App, hostname: str) -> bool:
    return f"{hostname};<host>" in app.nodes("hosts")


def test_probe_publishes_to_every_app_named_on_the_command_line(scope: Scope) -> None:
    first, second = scope.app(), scope.app()
    probe = scope.probe([first.bus, second.bus], hostname="two-apps-host")
    for app in (first, second):
        wait_for(partial(_has_host, app, "two-apps-host"), timeout=15, what=f"the probe's host in {app.bus}")
        assert [p["hostname"] for p in app.get("/api/probes")] == ["two-apps-host"]
    assert "Traceback" not in probe.log()


def test_probe_follows_apps_found_through_weavedns(scope: Scope, weavedns: DnsServer) -> None:
    app = scope.app(window="2s")
    probe = scope.probe(
        [],
        hostname="dns-host",
        extra=[
            f"--weave-dns-name={WEAVE_DNS_NAME}",
            f"--weave-dns-server={weavedns.listen}:{weavedns.port}",
            f"--weave-port={app.bus_port}",
            "--resolve-interval=300ms",
        ],
    )
    weavedns.set_records(["127.0.0.1"])
    wait_for(lambda: _has_host(app, "dns-host"), timeout=15, what="the probe to find the app through DNS")

    # The app's record goes: the probe disconnects and the app forgets it after its window.
    weavedns.set_records([])
    wait_for(lambda: not _has_host(app, "dns-host"), timeout=15, what="the probe to stop publishing")

    weavedns.set_records(["127.0.0.1"])
    wait_for(lambda: _has_host(app, "dns-host"), timeout=15, what="the probe to find the app again")
    assert probe.process.poll() is None
    log = probe.log()
    assert f"publishing to app at tcp://127.0.0.1:{app.bus_port}" in log
    assert f"app at tcp://127.0.0.1:{app.bus_port} is gone" in log
    assert "Traceback" not in log
