"""The whole pipeline with real processes: probe -> ZeroMQ -> app -> JSON API."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import msgpack
import zmq

from scope_common import wire
from scope_common.report import Node, Report
from tests.fixtures.ports import free_port
from tests.fixtures.scope import ReportSender, Scope, wait_for

HOST = "pipeline-host"

_SERVER = """
import socket, sys, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
time.sleep(120)
"""
_CLIENT = """
import socket, sys, time
client = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("connected", flush=True)
time.sleep(120)
"""


def _start_pair() -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
    server = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = server.stdout.readline().strip()
    client = subprocess.Popen([sys.executable, "-c", _CLIENT, port], stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None
    assert client.stdout.readline().strip() == "connected"
    return server, client


def test_processes_view_shows_an_edge_from_client_to_server(scope: Scope) -> None:
    app = scope.app()
    scope.probe([app.bus], hostname=HOST)
    server, client = _start_pair()
    try:
        client_id, server_id = f"{HOST};{client.pid}", f"{HOST};{server.pid}"

        def edge() -> dict[str, Any] | None:
            nodes = app.nodes("processes")
            node = nodes.get(client_id)
            return node if node and server_id in node["adjacency"] else None

        node = wait_for(edge, timeout=10, what="an edge client -> server in the processes view")
        assert node["label_major"] == "python" or node["label_major"].startswith("python")
        # The server has no edge back: direction is client -> server.
        assert client_id not in app.nodes("processes")[server_id]["adjacency"]
        details = app.node("processes", client_id)
        assert [c["id"] for c in details["connections"]["out"]] == [server_id]
        hosts = app.nodes("hosts")
        assert f"{HOST};<host>" in hosts
    finally:
        client.kill()
        server.kill()


def test_a_killed_probe_leaves_after_the_window(scope: Scope) -> None:
    app = scope.app(window="3s")
    probe = scope.probe([app.bus], hostname="doomed-host")
    wait_for(lambda: "doomed-host;<host>" in app.nodes("hosts"), timeout=10, what="the probe's host node")
    assert [p["hostname"] for p in app.get("/api/probes")] == ["doomed-host"]
    probe.kill()
    wait_for(lambda: not app.nodes("hosts"), timeout=10, what="the host node to leave")
    assert app.get("/api/probes") == []


def test_malformed_messages_are_dropped_and_counted_while_the_app_keeps_serving(scope: Scope) -> None:
    app = scope.app()
    scope.probe([app.bus], hostname="good-host")
    wait_for(lambda: "good-host;<host>" in app.nodes("hosts"), timeout=10, what="the good probe")
    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    publisher.connect(f"tcp://{app.bus}")
    bad_messages = [
        b"not msgpack at all \xff\xfe",
        msgpack.packb({"v": 99, "probe_id": "x", "host_id": "y"}),
        msgpack.packb({"v": 1, "probe_id": "x", "host_id": "y", "seq": 1, "sent_at": 1.0, "encoding": "zlib",
                       "report": b"garbage"}),
    ]  # fmt: skip
    try:

        def dropped() -> dict[str, int] | None:
            for message in bad_messages:
                publisher.send(message)
            counts: dict[str, int] = app.get("/api/stats")["reports_dropped"]
            return counts if counts.get("malformed", 0) >= 2 and counts.get("unknown_version", 0) >= 1 else None

        wait_for(dropped, timeout=10, interval=0.3, what="bad messages to be counted as dropped")
    finally:
        publisher.close(linger=0)
        context.term()
    assert app.get("/api")["version"]
    assert "good-host;<host>" in app.nodes("hosts")
    assert "app starting, version" in app.log()


def test_sigterm_ends_both_processes_cleanly(scope: Scope) -> None:
    app = scope.app()
    probe = scope.probe([app.bus], hostname="term-host")
    wait_for(lambda: "term-host;<host>" in app.nodes("hosts"), timeout=10, what="the probe")
    assert probe.terminate(signal.SIGTERM) == 0
    assert "probe starting, version" in probe.log() and "probe exiting" in probe.log()
    assert app.terminate(signal.SIGINT) == 0
    assert "app exiting" in app.log()
    assert "Traceback" not in app.log() + probe.log()


def test_probe_reaches_an_app_started_after_it(scope: Scope) -> None:
    port = free_port()
    probe = scope.probe([f"127.0.0.1:{port}"], hostname="early-host", extra=["--resolve-interval=1s"])
    app = scope.app(bus_port=port)
    wait_for(lambda: "early-host;<host>" in app.nodes("hosts"), timeout=15, what="the probe to reach the late app")
    assert probe.process.poll() is None


def test_a_report_over_the_node_limit_is_dropped_and_the_app_keeps_its_picture(scope: Scope) -> None:
    app = scope.app()
    scope.probe([app.bus], hostname="steady-host")
    wait_for(lambda: "steady-host;<host>" in app.nodes("hosts"), timeout=10, what="the steady probe")
    huge = Report()
    for i in range(wire.MAX_NODES + 1):
        huge.add(Node.build(f"huge;{i}", "process", latest={"name": "x"}))
    sender = ReportSender(app, probe_id="huge-probe", host_id="huge")
    body = wire.report_records(huge.nodes("process").values())
    envelope = {
        "v": wire.FORMAT_VERSION, "probe_id": "huge-probe", "host_id": "huge", "seq": 1, "sent_at": 1.0,
        "full": True, "base_seq": 0, "encoding": "none",
    }  # fmt: skip
    message = msgpack.packb({**envelope, "report": body}, use_bin_type=True)
    try:

        def dropped() -> bool:
            sender.send_raw(message)
            return bool(app.get("/api/stats")["reports_dropped"].get("too_many_nodes"))

        wait_for(dropped, timeout=20, interval=1.0, what="the oversized report to be dropped")
    finally:
        sender.close()
    assert [p["hostname"] for p in app.get("/api/probes")] == ["steady-host"]
    assert "steady-host;<host>" in app.nodes("hosts")
