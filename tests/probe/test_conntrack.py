"""ConntrackReporter against the kernel's real connection tracker, and its flow table on captured lines."""

from __future__ import annotations

import logging
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from scope_common import ids
from scope_common.report import ADDR, CONNTRACKED, CONTAINER, ENDPOINT, PORT, REVERSE_DNS, EdgeMetadata, Node, Report
from scope_probe.addresses import AddressScopes
from scope_probe.claims import AddressClaims
from scope_probe.conntrack import (
    ACCOUNTING_SECONDS,
    STARTUP_GRACE_SECONDS,
    Address,
    ConntrackReporter,
    FlowEvent,
    parse_flow,
)
from scope_probe.reporter import ProbeContext
from scope_probe.resolver import ReverseResolver
from tests.fixtures.dns import DnsServer
from tests.fixtures.docker import Containers
from tests.fixtures.netns import Netns
from tests.fixtures.ports import free_port, wait_for_port
from tests.fixtures.waiting import wait_for

HOST = "testhost"
CONNTRACK = "/usr/sbin/conntrack"

# Lines as conntrack 1.4.7 prints them (`conntrack -E` and `conntrack -L`).
SYN = (
    "    [NEW] tcp      6 120 SYN_SENT src=172.17.0.3 dst=172.17.0.2 sport=56110 dport=80 [UNREPLIED] "
    "src=172.17.0.2 dst=172.17.0.3 sport=80 dport=56110"
)
ESTABLISHED = (
    " [UPDATE] tcp      6 432000 ESTABLISHED src=172.17.0.3 dst=172.17.0.2 sport=56110 dport=80 "
    "src=172.17.0.2 dst=172.17.0.3 sport=80 dport=56110 [ASSURED]"
)
FIN_WAIT = (
    " [UPDATE] tcp      6 120 FIN_WAIT src=172.17.0.3 dst=172.17.0.2 sport=56110 dport=80 "
    "src=172.17.0.2 dst=172.17.0.3 sport=80 dport=56110 [ASSURED]"
)
DNAT = (
    " [UPDATE] ipv4     2 tcp      6 432000 ESTABLISHED src=172.17.0.1 dst=172.17.0.1 sport=48118 "
    "dport=18080 src=172.17.0.2 dst=172.17.0.1 sport=80 dport=48118 [ASSURED] id=2580222000"
)
DUMPED_TIME_WAIT = (
    "tcp      6 47 TIME_WAIT src=192.0.2.2 dst=203.0.113.80 sport=52906 dport=80 packets=103 bytes=5503 "
    "src=203.0.113.80 dst=192.0.2.2 sport=80 dport=52906 packets=112 bytes=2627126 [ASSURED] mark=0 use=1"
)
DUMPED_IPV6 = (
    "tcp      6 431999 ESTABLISHED src=2001:db8::1 dst=2001:db8::2 sport=40000 dport=443 "
    "src=2001:db8::2 dst=2001:db8::1 sport=443 dport=40000 [ASSURED] mark=0 use=1"
)
REFUSED = (
    " [UPDATE] tcp      6 10 CLOSE src=127.0.0.1 dst=127.0.0.1 sport=41000 dport=9 "
    "src=127.0.0.1 dst=127.0.0.1 sport=9 dport=41000"
)


def new_reporter(
    *,
    linger: float = 15.0,
    max_flows: int = 50_000,
    binary: str = "conntrack",
    resolver: ReverseResolver | None = None,
    claims: AddressClaims | None = None,
) -> ConntrackReporter:
    ctx = ProbeContext(host_id=HOST, probe_id="probe")
    return ConntrackReporter(
        ctx,
        AddressScopes(HOST),
        linger=linger,
        max_flows=max_flows,
        binary=binary,
        resolver=resolver,
        claims=claims,
    )


@pytest.fixture
def reporter() -> Iterator[ConntrackReporter]:
    """A reporter following the real conntrack event stream."""
    started = new_reporter()
    started.start(lambda name: None)
    try:
        wait_for(lambda: started.following, what="conntrack to follow events")
        yield started
    finally:
        started.stop()


def edges_from(report: Report, addr: str) -> dict[str, EdgeMetadata]:
    """Every edge leaving an endpoint at `addr` (any port)."""
    found: dict[str, EdgeMetadata] = {}
    for node in report.nodes(ENDPOINT).values():
        if node.get(ADDR) == addr:
            found.update(node.edges)
    return found


def loopback_connection() -> tuple[int, int]:
    """Open and close one TCP connection on loopback; return (client port, server port)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            accepted.close()
            return client.getsockname()[1], server.getsockname()[1]


def docker0_address() -> str:
    for addr in psutil.net_if_addrs().get("docker0", []):
        if addr.family == socket.AF_INET:
            return addr.address
    raise AssertionError("no docker0 bridge with an IPv4 address")


# ----------------------------------------------------------------------------------- real kernel


@pytest.mark.docker
@pytest.mark.root
def test_short_lived_connection_between_containers(reporter: ConntrackReporter, containers: Containers) -> None:
    web = containers.run("httpd -f -p 80 -h /www", name="web")
    web_ip = containers.ip(web)
    # The client waits for /tmp/go, so that its address can be read before it fetches once and exits.
    fetch = (
        "while [ ! -e /tmp/go ]; do sleep 0.05; done; "
        f"for i in $(seq 50); do wget -q -O /dev/null http://{web_ip}/ && exit 0; sleep 0.1; done; exit 1"
    )
    client = containers.run(["sh", "-c", fetch], name="client")
    client_ip = containers.ip(client)
    client.exec_run("touch /tmp/go")
    assert client.wait(timeout=30)["StatusCode"] == 0, client.logs()
    server_id = f"{HOST};{web_ip};80"

    wait_for(
        lambda: server_id in edges_from(reporter.report(time.time()), client_ip),
        timeout=5,
        what=f"an edge {client_ip} -> {server_id}",
    )
    report = reporter.report(time.time())
    assert edges_from(report, client_ip)[server_id].connection_count >= 1
    server = report.nodes(ENDPOINT)[server_id]
    assert server.get(CONNTRACKED) == "true"
    assert server.get(PORT) == "80"
    assert not server.adjacency


#: IPv6 addresses of the two namespaces (a unique-local prefix: nothing outside this machine).
IPV6_CLIENT, IPV6_SERVER = "fd00:5c0e::2", "fd00:5c0e::3"
#: One connection, made and closed at once, with a little traffic each way.
IPV6_EXCHANGE = """
import socket, sys
with socket.create_connection((sys.argv[1], 8080)) as conn:
    conn.sendall(b"x" * 3000)
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(65536):
        pass
"""
IPV6_SERVE = """
import socket, sys
with socket.create_server((sys.argv[1], 8080), family=socket.AF_INET6) as listener:
    print("listening", flush=True)
    conn, _ = listener.accept()
    while conn.recv(65536):
        pass
    conn.sendall(b"y" * 1000)
    conn.close()
"""


@pytest.mark.root
def test_a_short_lived_ipv6_connection_between_namespaces(netns: Netns, tmp_path: Path) -> None:
    # conntrack follows the client's namespace (where the probe would run), told to track IPv6 too.
    client, server = netns.create(), netns.create()
    for host, address in ((client, IPV6_CLIENT), (server, IPV6_SERVER)):
        host.run(["ip", "-6", "addr", "add", f"{address}/64", "dev", "eth0", "nodad"])
    client.run(["ip6tables", "-w", "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"])
    in_client = tmp_path / "conntrack"
    in_client.write_text(f'#!/bin/sh\nexec ip netns exec {client.name} conntrack "$@"\n')
    in_client.chmod(0o755)
    reporter = new_reporter(binary=str(in_client))
    reporter.start(lambda name: None)
    try:
        wait_for(lambda: reporter.following, what="conntrack to follow events")
        serving = server.popen([sys.executable, "-c", IPV6_SERVE, IPV6_SERVER], stdout=subprocess.PIPE, text=True)
        assert serving.stdout is not None and serving.stdout.readline() == "listening\n"
        client.run([sys.executable, "-c", IPV6_EXCHANGE, IPV6_SERVER], timeout=10)
        serving.wait(timeout=10)
        server_id = f";{IPV6_SERVER};8080"  # another host's address: unscoped

        def edge() -> EdgeMetadata | None:
            return edges_from(reporter.report(time.time()), IPV6_CLIENT).get(server_id)

        wait_for(edge, timeout=5, what=f"an edge {IPV6_CLIENT} -> {server_id}")

        # Its counters (the namespace has accounting on) come with the next dump of the table.
        def counted() -> EdgeMetadata | None:
            found = edge()
            return found if found is not None and found.egress_packets is not None else None

        found = wait_for(counted, timeout=ACCOUNTING_SECONDS + 5, what="the connection's counters")
    finally:
        reporter.stop()
    assert found.connection_count == 1
    # The payload each way and the headers of every packet, the handshake's and the ACKs' too.
    assert (found.egress_bytes or 0) > 3000 and (found.ingress_bytes or 0) > 1000, found
    assert (found.egress_packets or 0) >= 3 and (found.ingress_packets or 0) >= 3, found


@pytest.mark.docker
@pytest.mark.root
def test_published_port_is_mapped_to_the_container(reporter: ConntrackReporter, containers: Containers) -> None:
    gateway = docker0_address()
    host_port = free_port(gateway)
    web = containers.run("httpd -f -p 80 -h /www", name="web", ports={"80/tcp": (gateway, host_port)})
    web_ip = containers.ip(web)
    wait_for_port(gateway, host_port)
    with socket.create_connection((gateway, host_port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        client_port = conn.getsockname()[1]
        conn.recv(1024)

    client_id = f"{HOST};{gateway};{client_port}"
    server_id = f"{HOST};{web_ip};80"

    def client_node() -> Node | None:
        return reporter.report(time.time()).nodes(ENDPOINT).get(client_id)

    wait_for(lambda: client_node() is not None, timeout=5, what=f"endpoint {client_id}")
    node = client_node()
    assert node is not None
    assert node.adjacency == (server_id,), "the edge goes to the container, not the published port"


MB = 1_000_000
#: The most one packet conntrack counts can hold (a segmentation-offload super-packet on loopback, up to
#: the kernel's GSO_MAX_SIZE: 512 KiB with BIG TCP), and the least (its IPv4 and TCP headers).
MAX_PACKET = 512 << 10
HEADERS = 40


def _exchange(sock: socket.socket, send: int, receive: int) -> None:
    """Send `send` bytes and read `receive`, at once (both ends' buffers are far smaller than 10 MB)."""
    out = bytes(send)
    sender = threading.Thread(target=sock.sendall, args=(out,))
    sender.start()
    got = 0
    while got < receive:
        chunk = sock.recv(1 << 20)
        assert chunk, "closed early"
        got += len(chunk)
    sender.join()


@pytest.mark.root
@pytest.mark.parametrize("held_open", [True, False])
def test_an_edge_carries_the_bytes_sent_each_way(reporter: ConntrackReporter, held_open: bool) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        server_id = f"{HOST};127.0.0.1;{listener.getsockname()[1]}"
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        client_id = f"{HOST};127.0.0.1;{client.getsockname()[1]}"
        serving = threading.Thread(target=_exchange, args=(accepted, 1 * MB, 10 * MB))
        serving.start()
        _exchange(client, 10 * MB, 1 * MB)
        serving.join()
        if not held_open:
            client.close()
            accepted.close()

        def counted() -> EdgeMetadata | None:
            node = reporter.report(time.time()).nodes(ENDPOINT).get(client_id)
            edge = node.edges.get(server_id) if node is not None else None
            return edge if edge is not None and (edge.egress_bytes or 0) >= 10 * MB else None

        # An open flow's counters come with the next dump (every ACCOUNTING_SECONDS); a closed one's at once.
        edge = wait_for(counted, timeout=ACCOUNTING_SECONDS + 5, what="10 MB on the edge")
        client.close()
        accepted.close()
    assert edge.egress_bytes is not None and edge.ingress_bytes is not None
    assert 10 * MB <= edge.egress_bytes <= 11 * MB, "what the client sent, headers included"
    assert 1 * MB <= edge.ingress_bytes <= 1.1 * MB, "what the server sent back"
    assert edge.egress_packets is not None and edge.ingress_packets is not None
    print(f"packets: {edge.egress_packets} out, {edge.ingress_packets} back")
    for packets, carried in ((edge.egress_packets, edge.egress_bytes), (edge.ingress_packets, edge.ingress_bytes)):
        assert carried / MAX_PACKET <= packets <= carried / HEADERS, (packets, carried)


@pytest.mark.root
def test_closed_flow_lingers_then_goes() -> None:
    reporter = new_reporter(linger=1.5)
    reporter.start(lambda name: None)
    try:
        wait_for(lambda: reporter.following, what="conntrack to follow events")
        client_port, server_port = loopback_connection()
        client_id = f"{HOST};127.0.0.1;{client_port}"
        server_id = f"{HOST};127.0.0.1;{server_port}"
        wait_for(lambda: client_id in reporter.report(time.time()).nodes(ENDPOINT), timeout=5, what=client_id)
        node = reporter.report(time.time()).nodes(ENDPOINT)[client_id]
        assert node.edges == {server_id: EdgeMetadata(connection_count=1)}
        wait_for(lambda: client_id not in reporter.report(time.time()).nodes(ENDPOINT), timeout=5, what="expiry")
    finally:
        reporter.stop()


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


LOST = "WARNING: We have hit ENOBUFS! We are losing events."


@pytest.mark.root
def test_events_lost_at_start_are_counted_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The event stream reports ENOBUFS as it starts (the initial dump racing it): no warning, the
    stream goes on, the loss is counted."""
    caplog.set_level(logging.DEBUG, logger="scope_probe.conntrack")
    binary = _script(tmp_path / "conntrack", f'if [ "$1" = -E ]; then echo "{LOST}"; fi\nexec {CONNTRACK} "$@"\n')
    reporter = new_reporter(binary=binary)
    reporter.start(lambda name: None)
    try:
        wait_for(lambda: reporter.following and reporter.losses == 1, what="the loss counted")
        client_port, _ = loopback_connection()
        client_id = f"{HOST};127.0.0.1;{client_port}"
        wait_for(lambda: client_id in reporter.report(time.time()).nodes(ENDPOINT), timeout=5, what=client_id)
    finally:
        reporter.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("at start" in r.getMessage() for r in caplog.records), "said at debug level"


@pytest.mark.root
def test_events_lost_later_are_warned_of_once_and_mended(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ENOBUFS well after the start: one warning however often it happens; the table is dumped again,
    so connections open by then are kept, and the stream goes on."""
    caplog.set_level(logging.INFO, logger="scope_probe.conntrack")
    later = STARTUP_GRACE_SECONDS + 1
    binary = _script(
        tmp_path / "conntrack",
        f'if [ "$1" = -E ]; then (sleep {later}; echo "{LOST}"; sleep 1; echo "{LOST}") & fi\nexec {CONNTRACK} "$@"\n',
    )
    reporter = new_reporter(binary=binary)
    reporter.start(lambda name: None)
    try:
        wait_for(lambda: reporter.following, what="the stream up")
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            with socket.create_connection(server.getsockname()) as client:
                accepted, _ = server.accept()
                client_id = f"{HOST};127.0.0.1;{client.getsockname()[1]}"
                wait_for(lambda: reporter.losses == 2, timeout=later + 10, what="both losses counted")
                assert client_id in reporter.report(time.time()).nodes(ENDPOINT), "the open connection kept"
                accepted.close()
        client_port, _ = loopback_connection()
        later_id = f"{HOST};127.0.0.1;{client_port}"
        wait_for(lambda: later_id in reporter.report(time.time()).nodes(ENDPOINT), timeout=5, what=later_id)
    finally:
        reporter.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "events lost" in warnings[0], warnings


@pytest.mark.root
def test_conntrack_dying_is_restarted(reporter: ConntrackReporter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="scope_probe.conntrack")
    followers = [
        p for p in psutil.Process().children(recursive=True) if p.name() == "conntrack" and "-E" in p.cmdline()
    ]
    assert len(followers) == 1
    followers[0].kill()
    wait_for(lambda: any("restarting" in r.getMessage() for r in caplog.records), what="the restart logged")
    wait_for(lambda: reporter.following, what="the stream back")
    client_port, _ = loopback_connection()
    client_id = f"{HOST};127.0.0.1;{client_port}"
    wait_for(lambda: client_id in reporter.report(time.time()).nodes(ENDPOINT), timeout=5, what=client_id)


def test_missing_tool_reports_nothing(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="scope_probe.conntrack")
    reporter = new_reporter(binary=str(tmp_path / "no-conntrack"))
    reporter.start(lambda name: None)
    reporter.stop()
    assert not reporter.report(time.time()).topologies.get(ENDPOINT)
    assert len([r for r in caplog.records if "not found" in r.getMessage()]) == 1


@pytest.mark.root
def test_without_permission_logs_once_and_gives_up(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="scope_probe.conntrack")
    binary = _script(
        tmp_path / "conntrack", f'exec setpriv --reuid=65534 --regid=65534 --clear-groups {CONNTRACK} "$@"\n'
    )
    reporter = new_reporter(binary=binary)
    reporter.start(lambda name: None)
    try:
        wait_for(lambda: any("no permission" in r.getMessage() for r in caplog.records), what="the log line")
        time.sleep(1.5)
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
        assert not reporter.report(time.time()).nodes(ENDPOINT)
    finally:
        reporter.stop()


# ---------------------------------------------------------------------------------- flow table


def test_parse_flow() -> None:
    syn = parse_flow(SYN)
    assert syn == FlowEvent(
        "new", "SYN_SENT", Address("172.17.0.3", 56110), Address("172.17.0.2", 80), Address("172.17.0.2", 80), False
    )
    dnat = parse_flow(DNAT)
    assert dnat is not None
    assert dnat.kind == "update" and dnat.assured
    assert dnat.dst == Address("172.17.0.1", 18080)
    assert dnat.reply_src == Address("172.17.0.2", 80)
    dumped = parse_flow(DUMPED_IPV6)
    assert dumped is not None and dumped.kind == "" and dumped.src == Address("2001:db8::1", 40000)
    assert dumped.sent is None and dumped.received is None, "no accounting, no figures"
    assert dumped.sent_packets is None and dumped.received_packets is None
    counted = parse_flow(DUMPED_TIME_WAIT)
    assert counted is not None and (counted.sent, counted.received) == (5503, 2627126)
    assert (counted.sent_packets, counted.received_packets) == (103, 112)
    assert parse_flow("conntrack v1.4.7 (conntrack-tools): 26 flow events have been shown.") is None
    assert parse_flow("WARNING: We have hit ENOBUFS! We are losing events.") is None


def handle(reporter: ConntrackReporter, line: str, mono: float) -> bool:
    event = parse_flow(line)
    assert event is not None, line
    return reporter.handle(event, mono)


def test_flow_table_rules() -> None:
    reporter = new_reporter(linger=60.0)
    now = time.monotonic()
    assert not handle(reporter, SYN, now), "not answered yet"
    assert not handle(reporter, REFUSED, now), "never answered"
    assert not handle(reporter, DUMPED_TIME_WAIT, now), "closed before we looked, nobody knows when"
    assert handle(reporter, ESTABLISHED, now)
    assert handle(reporter, FIN_WAIT, now)
    assert handle(reporter, DNAT, now)
    assert handle(reporter, DUMPED_IPV6, now)

    nodes = reporter.report(1000.0).nodes(ENDPOINT)
    assert nodes[f"{HOST};172.17.0.3;56110"].adjacency == (f"{HOST};172.17.0.2;80",)
    assert nodes[f"{HOST};172.17.0.1;48118"].adjacency == (f"{HOST};172.17.0.2;80",), "DNAT undone"
    assert nodes[";2001:db8::1;40000"].adjacency == (";2001:db8::2;443",), "remote addresses are unscoped"
    assert nodes[f"{HOST};172.17.0.2;80"].latest[CONNTRACKED] == (1000.0, "true")
    assert nodes[f"{HOST};172.17.0.2;80"].latest[ADDR] == (1000.0, "172.17.0.2")
    assert nodes[f"{HOST};172.17.0.2;80"].edges == {}

    expired = new_reporter(linger=1.0)
    assert handle(expired, ESTABLISHED, now - 10)
    assert handle(expired, FIN_WAIT, now - 5)
    assert not expired.report(1000.0).nodes(ENDPOINT), "closed longer ago than the linger time"


def test_flow_table_is_bounded() -> None:
    reporter = new_reporter(max_flows=100)
    for port in range(1000, 1250):
        line = ESTABLISHED.replace("sport=56110", f"sport={port}").replace("dport=56110", f"dport={port}")
        handle(reporter, line, time.monotonic())
    assert reporter.dropped == 150
    nodes = reporter.report(0.0).nodes(ENDPOINT)
    assert len(nodes) == 101  # 100 clients and their one server
    assert f"{HOST};172.17.0.3;1249" in nodes and f"{HOST};172.17.0.3;1000" not in nodes, "oldest dropped"


def test_remote_endpoints_get_reverse_dns_names(weavedns: DnsServer) -> None:
    weavedns.set_records(["203.0.113.80"], name="web.weave.local")
    resolver = ReverseResolver(["127.0.0.1"], port=weavedns.port)
    reporter = new_reporter(resolver=resolver)
    remote = DUMPED_TIME_WAIT.replace("TIME_WAIT", "ESTABLISHED").replace("192.0.2.2", "127.0.0.1")
    try:
        handle(reporter, remote, time.monotonic())
        server_id = ";203.0.113.80;80"

        def name() -> str | None:
            return reporter.report(time.time()).nodes(ENDPOINT)[server_id].get(REVERSE_DNS)

        wait_for(lambda: name() == "web.weave.local", what="the PTR name on the server endpoint")
        client = reporter.report(time.time()).nodes(ENDPOINT)[f"{HOST};127.0.0.1;52906"]
        assert REVERSE_DNS not in client.latest, "local addresses are not looked up"
    finally:
        resolver.stop()


CLIENT_ID = f"{HOST};172.17.0.3;56110"
SERVER_ID = f"{HOST};172.17.0.2;80"


def owners(reporter: ConntrackReporter) -> dict[str, tuple[str, ...]]:
    """Endpoint id -> the containers the report names as its parent."""
    return {node.id: node.parents.get(CONTAINER, ()) for node in reporter.report(time.time()).nodes(ENDPOINT).values()}


def test_flows_belong_to_the_container_that_held_the_address_when_they_were_seen() -> None:
    claims = AddressClaims()
    reporter = new_reporter(claims=claims)
    wall = time.time()
    claims.claim("172.17.0.2", "web", wall - 100)
    claims.claim("172.17.0.3", "old", wall - 100)
    handle(reporter, ESTABLISHED, time.monotonic() - 5)
    handle(reporter, FIN_WAIT, time.monotonic() - 4)
    assert owners(reporter) == {CLIENT_ID: (ids.container_id("old"),), SERVER_ID: (ids.container_id("web"),)}

    # The old client stops: its ended flow lingers, still its own.
    claims.release("172.17.0.3", "old", wall - 2)
    assert owners(reporter)[CLIENT_ID] == (ids.container_id("old"),)
    # Another container gets the address: the old flow goes rather than become the new one's.
    claims.claim("172.17.0.3", "new", wall - 1)
    assert owners(reporter) == {}

    # The same addresses and ports again, now: a new connection, the new container's.
    handle(reporter, ESTABLISHED, time.monotonic())
    assert owners(reporter)[CLIENT_ID] == (ids.container_id("new"),)
    # A removed container's flows go with it.
    claims.remove("new", time.time())
    assert owners(reporter) == {}


def test_a_flow_seen_before_its_container_was_known_is_attributed_once_it_is() -> None:
    """The engine's start event may be handled after conntrack saw the container's first connection."""
    claims = AddressClaims()
    reporter = new_reporter(claims=claims)
    handle(reporter, ESTABLISHED, time.monotonic())
    assert owners(reporter) == {CLIENT_ID: (), SERVER_ID: ()}
    claims.claim("172.17.0.3", "client", time.time() - 1)  # its start time, learnt late
    assert owners(reporter)[CLIENT_ID] == (ids.container_id("client"),)


def test_a_flow_seen_while_nobody_held_the_address_is_not_the_next_holders() -> None:
    claims = AddressClaims()
    reporter = new_reporter(claims=claims)
    claims.claim("172.17.0.3", "old", time.time() - 100)
    claims.release("172.17.0.3", "old", time.time() - 10)
    handle(reporter, ESTABLISHED, time.monotonic() - 5)
    assert owners(reporter)[CLIENT_ID] == (), "nobody's, as far as the probe knows"
    claims.claim("172.17.0.3", "new", time.time() - 1)
    assert owners(reporter) == {}, "dropped: the app would give it to the new holder by its address"


def test_an_open_flow_of_a_stopped_container_ends() -> None:
    """A killed container's connections may never show a FIN to conntrack: its stop ends them."""
    claims = AddressClaims()
    reporter = new_reporter(linger=0.5, claims=claims)
    claims.claim("172.17.0.3", "client", time.time() - 10)
    handle(reporter, ESTABLISHED, time.monotonic())
    assert CLIENT_ID in owners(reporter)
    claims.release("172.17.0.3", "client", time.time())
    assert CLIENT_ID in owners(reporter), "it lingers like any ended flow"
    time.sleep(0.6)
    assert CLIENT_ID not in owners(reporter)
