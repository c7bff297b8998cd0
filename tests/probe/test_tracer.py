"""ConnectionTracer against the kernel's real tracepoint, its parser on captured lines, and the probe with
the tracer on, off and unavailable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from scope_common.report import CONTAINER, ENDPOINT, PROCESS, EdgeMetadata, Node, Report
from scope_probe.addresses import AddressScopes
from scope_probe.reporter import ProbeContext
from scope_probe.tracer import (
    TRACED,
    Address,
    ConnectionTracer,
    Fork,
    StateChange,
    find_tracefs,
    parse_line,
    remove_stale_instances,
)
from tests.fixtures.docker import Containers
from tests.fixtures.ports import free_port, wait_for_port
from tests.fixtures.scope import App, Scope, wait_for

HOST = "tracerhost"

# Lines as Linux 6.18 prints them in trace_pipe.
CONNECT = (
    "            wget-20565   [000] .....  3384.693137: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP "
    "sport=0 dport=80 saddr=172.17.0.48 daddr=172.17.0.23 saddrv6=::ffff:172.17.0.48 daddrv6=::ffff:172.17.0.23 "
    "oldstate=TCP_CLOSE newstate=TCP_SYN_SENT"
)
ESTABLISHED = (
    "            wget-20565   [000] .N...  3384.693334: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP "
    "sport=39606 dport=80 saddr=172.17.0.48 daddr=172.17.0.23 saddrv6=::ffff:172.17.0.48 "
    "daddrv6=::ffff:172.17.0.23 oldstate=TCP_SYN_SENT newstate=TCP_ESTABLISHED"
)
ESTABLISHED_IN_SOFTIRQ = ESTABLISHED.replace(" .N... ", " ..s2. ").replace("wget-20565", "httpd-99")
SERVER_CLOSES = (
    "           httpd-20566   [001] .....  3384.694354: inet_sock_set_state: family=AF_INET6 protocol=IPPROTO_TCP "
    "sport=80 dport=39606 saddr=172.17.0.23 daddr=172.17.0.48 saddrv6=::ffff:172.17.0.23 "
    "daddrv6=::ffff:172.17.0.48 oldstate=TCP_ESTABLISHED newstate=TCP_FIN_WAIT1"
)
IPV6 = (
    " my-worker thread-77   (     70) [001] .....  12.5: inet_sock_set_state: family=AF_INET6 protocol=IPPROTO_TCP "
    "sport=40000 dport=443 saddr=0.0.0.0 daddr=0.0.0.0 saddrv6=2001:db8::1 daddrv6=2001:db8::2 "
    "oldstate=TCP_SYN_SENT newstate=TCP_ESTABLISHED"
)
FORK = "  bash-2773    [000] .....  3517.960539: sched_process_fork: comm=bash pid=2773 child_comm=bash child_pid=42"


def test_a_connect_line_names_the_client_process_and_both_ends() -> None:
    client, server = Address("172.17.0.48", 39606), Address("172.17.0.23", 80)
    assert parse_line(ESTABLISHED) == StateChange(20565, client, server, 2, 1)


def test_a_line_that_ran_in_an_interrupt_names_no_process() -> None:
    change = parse_line(ESTABLISHED_IN_SOFTIRQ)
    assert isinstance(change, StateChange)
    assert change.pid == 0


def test_ipv6_and_ipv4_mapped_addresses() -> None:
    assert parse_line(IPV6) == StateChange(77, Address("2001:db8::1", 40000), Address("2001:db8::2", 443), 2, 1)
    change = parse_line(SERVER_CLOSES)
    assert isinstance(change, StateChange)
    assert change.src == Address("172.17.0.23", 80), "an IPv4-mapped address reads as IPv4"


def test_fork_lines_give_parent_and_child() -> None:
    assert parse_line(FORK) == Fork(2773, 42)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "CPU:1 [LOST 12 EVENTS]",
        "garbage-1 [000] ..... 1.0: inet_sock_set_state: family=AF_INET",
        ESTABLISHED.replace("sport=39606", "sport=99999"),
        ESTABLISHED.replace("saddr=172.17.0.48", "saddr=not-an-address"),
        ESTABLISHED.replace("newstate=TCP_ESTABLISHED", "newstate=TCP_WHATEVER"),
        ESTABLISHED.replace("IPPROTO_TCP", "IPPROTO_SCTP"),
    ],
)
def test_lines_that_are_not_a_tcp_state_change_are_refused(line: str) -> None:
    assert parse_line(line) is None


def test_an_interrupt_context_connect_takes_the_pid_of_its_syn_sent_line() -> None:
    tracer = ConnectionTracer(ProbeContext(HOST, "p"), AddressScopes(HOST))
    documentation = {"172.17.0.48": "192.0.2.48", "172.17.0.23": "192.0.2.23"}  # no bridge's: unscoped
    for line in (CONNECT.replace("wget-20565", f"python-{os.getpid()}"), ESTABLISHED_IN_SOFTIRQ):
        for old, new in documentation.items():
            line = line.replace(old, new)
        event = parse_line(line)
        assert event is not None
        tracer.handle(event)
    client = tracer.report(time.time()).nodes(ENDPOINT)[";192.0.2.48;39606"]
    assert client.parents[PROCESS] == (f"{HOST};{os.getpid()}",), "not httpd-99, which ran the interrupt"
    assert client.adjacency == (";192.0.2.23;80",)


def test_only_a_connection_that_draws_a_new_edge_asks_for_a_publish_now() -> None:
    tracer = ConnectionTracer(ProbeContext(HOST, "p"), AddressScopes(HOST))

    def connect(client_port: int, server: str) -> bool:
        line = ESTABLISHED.replace("wget-20565", f"python-{os.getpid()}").replace("172.17.0.48", "192.0.2.48")
        event = parse_line(line.replace("sport=39606", f"sport={client_port}").replace("172.17.0.23", server))
        assert event is not None
        return tracer.handle(event)

    assert connect(40001, "192.0.2.23"), "a first connection: an edge the map does not have"
    assert not connect(40002, "192.0.2.23"), "the same client to the same server: the edge is there"
    assert connect(40003, "192.0.2.99"), "another server"
    assert len(tracer.report(time.time()).nodes(ENDPOINT)) == 5, "every connection is reported all the same"


# ----------------------------------------------------------------------------------- real kernel


@pytest.fixture
def tracer() -> Iterator[ConnectionTracer]:
    started = ConnectionTracer(ProbeContext(HOST, f"test{os.getpid()}"), AddressScopes(HOST), linger=2.0)
    wakes: list[str] = []
    started.start(wakes.append)
    try:
        wait_for(lambda: started.running, what="the tracer to read its instance")
        yield started
    finally:
        started.stop()


def endpoint(tracer: ConnectionTracer, node_id: str) -> Node | None:
    return tracer.report(time.time()).nodes(ENDPOINT).get(node_id)


@pytest.mark.root
def test_the_instance_is_the_probes_own_and_goes_at_stop() -> None:
    tracer = ConnectionTracer(ProbeContext(HOST, "instancetest"), AddressScopes(HOST))
    tracer.start(lambda name: None)
    tracefs = find_tracefs()
    assert tracefs is not None
    instance = os.path.join(tracefs, "instances", f"scope-{os.getpid()}-instancetest")
    try:
        wait_for(lambda: tracer.running, what="the tracer to read its instance")
        assert os.path.isdir(instance)
        with open(os.path.join(tracefs, "tracing_on")) as f:
            global_on = f.read()
    finally:
        tracer.stop()
    assert not os.path.exists(instance)
    with open(os.path.join(tracefs, "tracing_on")) as f:
        assert f.read() == global_on, "the global buffer is not the probe's to touch"


@pytest.mark.root
def test_the_instance_of_a_killed_probe_is_removed_by_the_next(app: App) -> None:
    tracefs = find_tracefs()
    assert tracefs is not None
    killed = subprocess.Popen(_probe_argv(app, "tracepoint"))
    try:
        wait_for(
            lambda: [n for n in os.listdir(os.path.join(tracefs, "instances")) if n.startswith(f"scope-{killed.pid}-")],
            what="the probe's instance",
        )
    finally:
        killed.kill()
        killed.wait()
    [left] = [n for n in os.listdir(os.path.join(tracefs, "instances")) if n.startswith(f"scope-{killed.pid}-")]
    tracer = ConnectionTracer(ProbeContext(HOST, "next"), AddressScopes(HOST))
    tracer.start(lambda name: None)
    try:
        assert left not in os.listdir(os.path.join(tracefs, "instances"))
    finally:
        tracer.stop()


@pytest.mark.root
def test_the_instance_of_a_killed_probe_of_another_process_namespace_is_removed(app: App) -> None:
    # A probe in a container of its own process namespace names its instance by its pid there (often
    # 3), which on the host is some other process's: only that nobody reads the instance tells it is left.
    tracefs = find_tracefs()
    assert tracefs is not None
    instances = os.path.join(tracefs, "instances")
    before = set(os.listdir(instances))
    contained = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", *_probe_argv(app, "tracepoint")]
    )
    try:
        wait_for(lambda: set(os.listdir(instances)) - before, what="the contained probe's instance")
    finally:
        contained.kill()  # --kill-child: the probe (the namespace's first process) is killed with it
        contained.wait()
    [left] = set(os.listdir(instances)) - before
    pid = left.split("-")[1]
    assert os.path.exists(f"/proc/{pid}"), "its pid is another process's on the host"
    tracer = ConnectionTracer(ProbeContext(HOST, "reader"), AddressScopes(HOST))
    tracer.start(lambda name: None)
    try:
        wait_for(lambda: tracer.running, what="the live tracer reading its instance")
        removed = remove_stale_instances(instances, stale_after=0)
        assert left in removed and left not in os.listdir(instances)
        assert [n for n in os.listdir(instances) if n.endswith("-reader")], "a read instance is kept"
    finally:
        tracer.stop()


@pytest.mark.root
def test_a_short_lived_process_on_loopback_is_an_edge_from_its_parent_to_the_server(
    tracer: ConnectionTracer,
) -> None:
    port = free_port()
    server = subprocess.Popen(["busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/tmp"])
    try:
        wait_for_port("127.0.0.1", port)
        # busybox wget connects, fetches and exits within milliseconds: only the tracer sees it, and
        # by the time it is reported its process is gone, so the edge starts at its parent: us.
        started = time.monotonic()
        subprocess.run(["busybox", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}/"], check=False)
        server_id = f"{HOST};127.0.0.1;{port}"

        def client() -> Node | None:
            for node in tracer.report(time.time()).nodes(ENDPOINT).values():
                if server_id in node.adjacency:
                    return node
            return None

        found = wait_for(client, timeout=5, interval=0.01, what=f"an edge to {server_id}")
        print(f"edge in the tracer's report {time.monotonic() - started:.3f} s after wget started")
        assert found.parents[PROCESS] == (f"{HOST};{os.getpid()}",)
        assert found.get(TRACED) == "true"
        assert found.edges == {server_id: EdgeMetadata(connection_count=1)}
        server_node = endpoint(tracer, server_id)
        assert server_node is not None
        assert server_node.parents[PROCESS] == (f"{HOST};{server.pid}",), "the listener's owner serves it"
        assert not server_node.adjacency
        # Closed, it lingers (2 s here) and goes.
        wait_for(lambda: client() is None, timeout=5, what="the closed connection to go")
    finally:
        server.kill()
        server.wait()


@pytest.mark.root
def test_ipv6_loopback_connection_held_open(tracer: ConnectionTracer) -> None:
    with socket.socket(socket.AF_INET6) as listener:
        listener.bind(("::1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("::1", port)) as conn:
            accepted, _ = listener.accept()
            client_id = f"{HOST};::1;{conn.getsockname()[1]}"
            wait_for(lambda: endpoint(tracer, client_id), timeout=5, what=client_id)
            time.sleep(2.5)  # past the linger: an open connection stays
            node = endpoint(tracer, client_id)
            assert node is not None
            assert node.adjacency == (f"{HOST};::1;{port}",)
            assert node.parents[PROCESS] == (f"{HOST};{os.getpid()}",)
            accepted.close()


def container_pid(container: Any) -> int:
    container.reload()
    return int(container.attrs["State"]["Pid"])


def netns_hex(pid: int) -> str:
    return format(os.stat(f"/proc/{pid}/ns/net").st_ino, "x")


SHARED_CLIENT = "while :; do wget -q -O /dev/null http://127.0.0.1:8080/ 2>/dev/null; sleep 0.3; done"


@pytest.mark.docker
@pytest.mark.root
def test_containers_sharing_a_namespace_connect_over_its_loopback(
    tracer: ConnectionTracer, containers: Containers
) -> None:
    server = containers.run(["httpd", "-f", "-p", "127.0.0.1:8080"], name="web")
    client = containers.run(["sh", "-c", SHARED_CLIENT], name="client", network_mode=f"container:{server.id}")
    server_id = f"{HOST}/{netns_hex(container_pid(server))};127.0.0.1;8080"

    def clients() -> list[Node]:
        report = tracer.report(time.time())
        return [n for n in report.nodes(ENDPOINT).values() if server_id in n.adjacency]

    found = wait_for(clients, timeout=10, what=f"connections to {server_id}")
    # Several connections, each the loop's: wget is gone by the time it is reported.
    wait_for(lambda: len(clients()) >= 3, timeout=10, what="three connections")
    found = clients()
    assert {n.parents[PROCESS] for n in found} == {(f"{HOST};{container_pid(client)}",)}
    assert {n.parents[CONTAINER] for n in found} == {(f"{client.id};<container>",)}
    report: Report = tracer.report(time.time())
    server_node = report.nodes(ENDPOINT)[server_id]
    assert server_node.parents[PROCESS] == (f"{HOST};{container_pid(server)}",)
    assert server_node.parents[CONTAINER] == (f"{server.id};<container>",)


# ------------------------------------------------------------------------------------ whole probe


@pytest.fixture
def app(scope: Scope) -> Iterator[App]:
    yield scope.app()


def _adjacent(app: App, view: str, source: str, target: str) -> bool:
    node = app.nodes(view).get(source)
    return node is not None and target in node["adjacency"]


#: Docker turns IPv6 off in a container whose networks have none; loopback's ::1 needs it on.
WITH_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.lo.disable_ipv6": "0"}


@pytest.mark.docker
@pytest.mark.root
@pytest.mark.parametrize("loopback", ["127.0.0.1", "::1"])
def test_shared_namespace_edges_in_the_containers_and_processes_views(
    scope: Scope, app: App, containers: Containers, loopback: str
) -> None:
    scope.probe([app.bus], hostname=HOST, extra=["--conn-tracer=tracepoint"])
    address = f"[{loopback}]" if ":" in loopback else loopback
    server = containers.run(["httpd", "-f", "-p", f"{address}:8080"], name="web", sysctls=WITH_IPV6)
    command = SHARED_CLIENT.replace("127.0.0.1", address)
    client = containers.run(["sh", "-c", command], name="client", network_mode=f"container:{server.id}")
    wait_for(
        lambda: _adjacent(app, "containers", f"{client.id};<container>", f"{server.id};<container>"),
        timeout=15,
        what="the containers edge client -> web",
    )
    client_process, server_process = f"{HOST};{container_pid(client)}", f"{HOST};{container_pid(server)}"
    wait_for(
        lambda: _adjacent(app, "processes", client_process, server_process),
        timeout=10,
        what="the processes edge sh -> httpd",
    )
    assert not _adjacent(app, "containers", f"{server.id};<container>", f"{client.id};<container>")


def _without_tracefs(argv: list[str]) -> list[str]:
    """`argv` in a mount namespace of its own without tracefs or debugfs, unable to mount them."""
    script = (
        "for m in /sys/kernel/tracing /sys/kernel/debug; do while umount -l $m 2>/dev/null; do :; done; done; "
        'exec setpriv --bounding-set=-sys_admin "$@"'
    )
    return ["unshare", "--mount", "--propagation=private", "sh", "-c", script, "sh", *argv]


def _probe_argv(app: App, mode: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scope_probe",
        f"--hostname={HOST}",
        "--publish-interval=1s",
        "--weave-dns-name=",
        "--reverse-dns=off",
        f"--conn-tracer={mode}",
        app.bus,
    ]


@pytest.mark.root
def test_without_tracefs_the_probe_says_so_once_and_carries_on(app: App) -> None:
    probe = subprocess.Popen(_without_tracefs(_probe_argv(app, "auto")), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: f"{HOST};<host>" in app.nodes("hosts"), timeout=15, what="the probe's first report")
    finally:
        probe.terminate()
        _, log = probe.communicate(timeout=10)
    assert log.count("tracer: the tracepoint cannot be used") == 1, log
    assert probe.returncode == 0, log


@pytest.mark.root
def test_a_required_tracer_that_cannot_run_stops_the_probe(app: App) -> None:
    done = subprocess.run(
        _without_tracefs(_probe_argv(app, "tracepoint")), capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert "--conn-tracer=tracepoint" in done.stderr
