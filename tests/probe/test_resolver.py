"""ReverseResolver against a real dnsmasq on loopback: names arrive in the background, nothing blocks."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from scope_probe.resolver import ReverseResolver
from tests.fixtures.dns import DnsServer
from tests.fixtures.waiting import wait_for


@pytest.fixture
def silent_nameserver() -> Iterator[int]:
    """A UDP port on loopback that receives queries and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_ptr_name_arrives_in_the_background(weavedns: DnsServer) -> None:
    weavedns.set_records(["192.0.2.10"], name="db.weave.local")
    resolver = ReverseResolver(["127.0.0.1"], port=weavedns.port)
    try:
        assert resolver.lookup("192.0.2.10") is None, "a miss answers None at once"
        wait_for(lambda: resolver.lookup("192.0.2.10") == "db.weave.local", what="the PTR name")
        assert resolver.lookups == 1, "a cached name is not asked again"
    finally:
        resolver.stop()


def test_failures_are_cached_until_their_ttl(weavedns: DnsServer) -> None:
    resolver = ReverseResolver(["127.0.0.1"], port=weavedns.port, failure_ttl=1.5)
    try:
        assert resolver.lookup("192.0.2.99") is None
        wait_for(lambda: resolver.lookups == 1 and len(resolver) == 1, what="the failed lookup")
        weavedns.set_records(["192.0.2.99"], name="late.weave.local")
        for _ in range(10):
            assert resolver.lookup("192.0.2.99") is None
            time.sleep(0.05)
        assert resolver.lookups == 1, "the failure was not retried while cached"
        wait_for(lambda: resolver.lookup("192.0.2.99") == "late.weave.local", what="the retry after the TTL")
        assert resolver.lookups == 2
    finally:
        resolver.stop()


def test_lookup_never_blocks_and_the_queue_is_bounded(silent_nameserver: int) -> None:
    resolver = ReverseResolver(["127.0.0.1"], port=silent_nameserver, timeout=2.0, max_pending=10)
    try:
        began = time.perf_counter()
        for i in range(200):
            assert resolver.lookup(f"198.51.100.{i}") is None
        assert time.perf_counter() - began < 0.5, "lookups waited on DNS"
        assert resolver.lookup("not an address") is None
        time.sleep(0.5)
        assert resolver.lookups == 1, "one query at a time, stuck on the silent server"
    finally:
        began = time.perf_counter()
        resolver.stop()
    assert time.perf_counter() - began < 3.0


def test_rate_limit_and_bounded_cache(weavedns: DnsServer) -> None:
    resolver = ReverseResolver(["127.0.0.1"], port=weavedns.port, rate=5.0, max_entries=4)
    try:
        for i in range(20):
            resolver.lookup(f"192.0.2.{100 + i}")
        time.sleep(1.0)
        assert 4 <= resolver.lookups <= 7, f"{resolver.lookups} lookups in 1s at 5/s"
        assert len(resolver) <= 4
    finally:
        resolver.stop()
