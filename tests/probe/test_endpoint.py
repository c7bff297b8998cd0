"""TCP connections from /proc: the table parser on the kernel's own text, and the endpoint reporter
against real client and server processes, on this host and in network namespaces."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from scope_common import ids
from scope_common.report import Node, Report
from scope_probe.addresses import AddressScopes
from scope_probe.endpoint import Connection, EndpointReporter, SocketTable, decode_address, parse_tcp_table
from scope_probe.reporter import ProbeContext
from tests.fixtures.netns import Netns, NetnsHost

HOST = "endpoint-host"

# Serves one connection: prints its port, then the pid that accepted (its own).
_SERVER = """
import socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
server = socket.socket(family)
if family == socket.AF_INET6:
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
server.bind((sys.argv[1], 0))
server.listen()
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
print("accepted", flush=True)
time.sleep(120)
"""
# Connects, prints the local port of its socket.
_CLIENT = """
import socket, sys, time
client = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print(client.getsockname()[1], flush=True)
time.sleep(120)
"""


def _reporter() -> EndpointReporter:
    ctx = ProbeContext(host_id=HOST, probe_id="test")
    return EndpointReporter(ctx, AddressScopes(HOST))


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, f"helper process {proc.args!r} exited early (code {proc.poll()})"
    return line


@contextmanager
def _connected_pair(
    listen: str, connect: str, host: NetnsHost | None = None, client_host: NetnsHost | None = None
) -> Iterator[tuple[subprocess.Popen[str], int, subprocess.Popen[str], int]]:
    """(server, server port, client, client port): two processes holding one connection."""
    server_host = host
    client_host = client_host or host
    procs: list[subprocess.Popen[str]] = []

    def start(where: NetnsHost | None, argv: list[str]) -> subprocess.Popen[str]:
        if where is None:
            proc: subprocess.Popen[str] = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        else:
            proc = where.popen(argv, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    try:
        server = start(server_host, [sys.executable, "-c", _SERVER, listen])
        server_port = int(_line(server))
        client = start(client_host, [sys.executable, "-c", _CLIENT, connect, str(server_port)])
        client_port = int(_line(client))
        assert _line(server) == "accepted"
        yield server, server_port, client, client_port
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _endpoint(report: Report, node_id: str) -> Node:
    nodes = report.nodes("endpoint")
    assert node_id in nodes, f"{node_id} not among {len(nodes)} endpoints: {sorted(nodes)[:20]}"
    return nodes[node_id]


def _netns_inode(pid: int) -> str:
    return format(os.stat(f"/proc/{pid}/ns/net").st_ino, "x")


# ------------------------------------------------------------------------------------ parsing


def test_decode_address_of_each_family() -> None:
    assert decode_address("0100007F") == "127.0.0.1"
    assert decode_address("0202000A") == "10.0.2.2"
    assert decode_address("00000000000000000000000001000000") == "::1"
    assert decode_address("B80D0120000000000000000001000000") == "2001:db8::1"
    # IPv4-mapped IPv6 (a dual-stack socket talking IPv4) comes back as plain IPv4.
    assert decode_address("0000000000000000FFFF00000100007F") == "127.0.0.1"
    assert decode_address("0000000000000000FFFF00000202000A") == "10.0.2.2"


def _kernel_table() -> SocketTable:
    table = SocketTable([], set())
    for name in ("tcp", "tcp6"):
        with open(f"/proc/self/net/{name}") as f:
            parse_tcp_table(f.read(), table)
    return table


@pytest.mark.parametrize(
    ("listen", "connect", "seen_as"),
    [("127.0.0.1", "127.0.0.1", "127.0.0.1"), ("::1", "::1", "::1"), ("::", "127.0.0.1", "127.0.0.1")],
    ids=["v4", "v6", "v4-mapped"],
)
def test_parse_tcp_table_on_the_kernels_text(listen: str, connect: str, seen_as: str) -> None:
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    with socket.socket(family) as server:
        if family == socket.AF_INET6:
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind((listen, 0))
        server.listen()
        server_port = server.getsockname()[1]
        with socket.create_connection((connect, server_port)) as client:
            accepted, _ = server.accept()
            with accepted:
                client_port = client.getsockname()[1]
                table = _kernel_table()
                assert server_port in table.listening_ports
                assert client_port not in table.listening_ports
                assert (
                    Connection(seen_as, client_port, seen_as, server_port, os.fstat(client.fileno()).st_ino)
                    in table.connections
                )
                # The accepted socket: on the dual-stack listener it is in tcp6 as ::ffff:127.0.0.1.
                assert (
                    Connection(seen_as, server_port, seen_as, client_port, os.fstat(accepted.fileno()).st_ino)
                    in table.connections
                )
        # The listening socket itself is not a connection.
        assert not any(c.inode == os.fstat(server.fileno()).st_ino for c in table.connections)


def test_parse_tcp_table_skips_other_states_and_short_lines() -> None:
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0  0 111 1 0 100 0 0 10 0\n"
        "   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  0  0 222 1 0 20 4 30 10 -1\n"
        "   2: 0100007F:C351 0100007F:1F90 06 00000000:00000000 03:00000000 00000000  0  0 0 3 0\n"
        "   3: truncated\n"
    )
    table = SocketTable([], set())
    parse_tcp_table(text, table)
    assert table.listening_ports == {8080}
    assert table.connections == [Connection("127.0.0.1", 50000, "127.0.0.1", 8080, 222)]


# ---------------------------------------------------------------------------------- this host


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"], ids=["v4", "v6"])
def test_loopback_connection_goes_from_client_to_server_with_owning_processes(addr: str) -> None:
    with _connected_pair(addr, addr) as (server, server_port, client, client_port):
        report = _reporter().report(time.time())
    client_id = ids.endpoint_id(HOST, addr, client_port)
    server_id = ids.endpoint_id(HOST, addr, server_port)
    client_node = _endpoint(report, client_id)
    server_node = _endpoint(report, server_id)
    assert client_node.adjacency == (server_id,)
    assert client_id not in server_node.adjacency
    assert client_node.parents["process"] == (ids.process_id(HOST, client.pid),)
    assert server_node.parents["process"] == (ids.process_id(HOST, server.pid),)
    assert client_node.get("pid") == str(client.pid)
    assert client_node.get("host_node_id") == ids.host_id(HOST)


def test_dual_stack_server_joins_its_ipv4_client() -> None:
    """The server's socket is in tcp6 as ::ffff:127.0.0.1, the client's in tcp as 127.0.0.1: one node each."""
    with _connected_pair("::", "127.0.0.1") as (server, server_port, _, client_port):
        report = _reporter().report(time.time())
    server_id = ids.endpoint_id(HOST, "127.0.0.1", server_port)
    client_node = _endpoint(report, ids.endpoint_id(HOST, "127.0.0.1", client_port))
    assert client_node.adjacency == (server_id,)
    assert _endpoint(report, server_id).parents["process"] == (ids.process_id(HOST, server.pid),)
    assert not any("ffff" in node_id for node_id in report.nodes("endpoint"))


def test_closed_connections_leave_the_next_report() -> None:
    reporter = _reporter()
    with _connected_pair("127.0.0.1", "127.0.0.1") as (_, _, _, client_port):
        assert ids.endpoint_id(HOST, "127.0.0.1", client_port) in reporter.report(time.time()).nodes("endpoint")
    # Both ends are killed: the kernel closes their sockets at once.
    gone = ids.endpoint_id(HOST, "127.0.0.1", client_port)
    deadline = time.monotonic() + 5
    while gone in reporter.report(time.time()).nodes("endpoint"):
        assert time.monotonic() < deadline, f"{gone} still reported after its processes died"
        time.sleep(0.1)


# ------------------------------------------------------------------------------ network namespaces


def test_loopback_inside_a_namespace_is_scoped_to_that_namespace(netns: Netns) -> None:
    host = netns.create()
    with _connected_pair("127.0.0.1", "127.0.0.1", host) as (server, server_port, client, client_port):
        report = _reporter().report(time.time())
        ns = _netns_inode(client.pid)
    assert ns != _netns_inode(os.getpid())
    scope = f"{HOST}/{ns}"
    client_node = _endpoint(report, ids.endpoint_id(scope, "127.0.0.1", client_port))
    server_id = ids.endpoint_id(scope, "127.0.0.1", server_port)
    assert client_node.adjacency == (server_id,)
    assert client_node.parents["process"] == (ids.process_id(HOST, client.pid),)
    assert _endpoint(report, server_id).parents["process"] == (ids.process_id(HOST, server.pid),)
    # Not mistaken for the host's own loopback.
    for port in (client_port, server_port):
        assert ids.endpoint_id(HOST, "127.0.0.1", port) not in report.nodes("endpoint")


def test_connection_between_namespaces_has_unscoped_endpoints(netns: Netns) -> None:
    a, b = netns.create(), netns.create()
    with _connected_pair(b.ip, b.ip, b, a) as (server, server_port, client, client_port):
        report = _reporter().report(time.time())
    # 10.231.x.y is on a bridge, but not a Docker one: any host could see these addresses.
    client_id = ids.endpoint_id("", a.ip, client_port)
    server_id = ids.endpoint_id("", b.ip, server_port)
    client_node = _endpoint(report, client_id)
    server_node = _endpoint(report, server_id)
    assert client_node.adjacency == (server_id,)
    assert client_id not in server_node.adjacency
    assert client_node.parents["process"] == (ids.process_id(HOST, client.pid),)
    assert server_node.parents["process"] == (ids.process_id(HOST, server.pid),)


def test_a_quiet_namespace_is_not_read_again_but_a_new_connection_in_it_is_seen(netns: Netns) -> None:
    host = netns.create()
    reporter = _reporter()
    with _connected_pair("127.0.0.1", "127.0.0.1", host) as (_, _, first_client, first_port):
        ns = os.stat(f"/proc/{first_client.pid}/ns/net").st_ino
        scope = f"{HOST}/{format(ns, 'x')}"
        assert ids.endpoint_id(scope, "127.0.0.1", first_port) in reporter.report(time.time()).nodes("endpoint")
        reads = reporter.reads[ns]
        report = reporter.report(time.time())
        assert reporter.reads[ns] == reads, "the namespace's counters did not move: its cached table is used"
        assert ids.endpoint_id(scope, "127.0.0.1", first_port) in report.nodes("endpoint"), "cached table kept"
        with _connected_pair("127.0.0.1", "127.0.0.1", host) as (_, _, _, second_port):
            report = reporter.report(time.time())
            assert ids.endpoint_id(scope, "127.0.0.1", second_port) in report.nodes("endpoint")
        assert reporter.reads[ns] > reads


# Makes short connections to itself, each closed by the client first (which keeps its end in
# TIME_WAIT), then closes its listening socket too and waits.
_SHORT_CONNECTIONS = """
import socket, time
server = socket.create_server(("127.0.0.1", 0))
for _ in range(5):
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    client.close()
    time.sleep(0.05)
    conn.close()
server.close()
print("done", flush=True)
time.sleep(120)
"""


def test_a_namespace_left_with_only_time_wait_sockets_is_not_read(netns: Netns) -> None:
    """Like a container whose short connections have all closed: nothing in its tables to report."""
    host = netns.create()
    proc = host.popen([sys.executable, "-c", _SHORT_CONNECTIONS], stdout=subprocess.PIPE, text=True)
    try:
        assert _line(proc) == "done"
        with open(f"/proc/{proc.pid}/net/sockstat") as f:
            assert " tw 0 " not in f.read(), "the namespace should hold TIME_WAIT sockets"
        ns = os.stat(f"/proc/{proc.pid}/ns/net").st_ino
        reporter = _reporter()
        report = reporter.report(time.time())
        reporter.report(time.time())
    finally:
        proc.kill()
        proc.wait()
    assert reporter.reads[ns] == 0
    assert not [n for n in report.nodes("endpoint") if format(ns, "x") in n]
