"""Two hosts, a probe on each, one app: a connection seen from both ends becomes one edge.

Each host is a network namespace (the `netns` fixture) with its own PID namespace and /proc, so each
probe sees only its own host's processes and sockets, as on two machines. The app listens on the
bridge's gateway address in the root namespace, where both hosts reach it.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.fixtures.netns import Netns, NetnsHost
from tests.fixtures.ports import free_port
from tests.fixtures.scope import App, Scope, wait_for

SERVER_PORT = 7000

# Accepts and holds connections; writes its pid (as its host sees it) once listening.
_SERVER = """
import os, socket, sys, time
server = socket.socket()
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen()
open(sys.argv[3] + ".tmp", "w").write(str(os.getpid()))
os.rename(sys.argv[3] + ".tmp", sys.argv[3])
held = []
while True:
    held.append(server.accept()[0])
"""
# Connects (retrying until the server is up), writes its pid, holds the connection.
_CLIENT = """
import os, socket, sys, time
while True:
    try:
        client = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
        break
    except OSError:
        time.sleep(0.1)
open(sys.argv[3] + ".tmp", "w").write(str(os.getpid()))
os.rename(sys.argv[3] + ".tmp", sys.argv[3])
time.sleep(300)
"""


@dataclass
class Machine:
    """A namespace host running one workload process and one probe in its own PID namespace."""

    name: str
    shell: subprocess.Popen[bytes]
    pid_file: Path
    log_file: Path

    def workload_pid(self, timeout: float = 15) -> int:
        """The workload's pid as this machine's probe sees it (inside the PID namespace)."""

        def read() -> str | None:
            return self.pid_file.read_text() if self.pid_file.exists() else None

        return int(wait_for(read, timeout=timeout, what=f"{self.name}'s workload to start"))

    def probe_process(self) -> psutil.Process:
        """The probe, as seen from the test's PID namespace."""
        for child in psutil.Process(self.shell.pid).children(recursive=True):
            if "scope_probe" in child.cmdline():
                return child
        raise AssertionError(f"no probe running on {self.name}:\n{self.log()}")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def _machine(host: NetnsHost, name: str, app_bus: str, workload: list[str], tmp_path: Path) -> Machine:
    pid_file, log_file = tmp_path / f"{name}.pid", tmp_path / f"{name}.log"
    probe = [
        sys.executable,
        "-m",
        "scope_probe",
        f"--hostname={name}",
        "--spy-interval=500ms",
        "--publish-interval=1s",
        "--weave-dns-name=",
        app_bus,
    ]
    script = (
        f"{shlex.join([sys.executable, '-c', *workload, str(pid_file)])} &\n"
        f"{shlex.join(probe)} >{shlex.quote(str(log_file))} 2>&1 &\n"
        "wait\n"
    )
    # A PID namespace with its own /proc: the probe sees this machine's processes only.
    shell = host.popen(["unshare", "--pid", "--fork", "--mount-proc", "--", "sh", "-c", script])
    return Machine(name, shell, pid_file, log_file)


def _adjacent(app: App, topology: str, source: str, target: str) -> bool:
    node = app.nodes(topology).get(source)
    return node is not None and target in node["adjacency"]


def test_connection_between_two_hosts_joins_across_their_reports(scope: Scope, netns: Netns, tmp_path: Path) -> None:
    host_a, host_b = netns.create(), netns.create()
    port = free_port(netns.gateway)
    app = scope.app(window="3s", bus_port=port, extra=[f"--bus={netns.gateway}:{port}"])
    bus = f"{netns.gateway}:{port}"
    server = _machine(host_b, "hostB", bus, [_SERVER, host_b.ip, str(SERVER_PORT)], tmp_path)
    server_pid = server.workload_pid()
    client = _machine(host_a, "hostA", bus, [_CLIENT, host_b.ip, str(SERVER_PORT)], tmp_path)
    client_pid = client.workload_pid()
    try:
        wait_for(
            lambda: _adjacent(app, "hosts", "hostA;<host>", "hostB;<host>"),
            timeout=15,
            what="an edge hostA -> hostB in the hosts view",
        )
        client_node, server_node = f"hostA;{client_pid}", f"hostB;{server_pid}"
        wait_for(
            lambda: _adjacent(app, "processes", client_node, server_node),
            timeout=10,
            what="an edge from the client process to the server process",
        )
    except pytest.fail.Exception:
        print(f"--- hostA probe:\n{client.log()}\n--- hostB probe:\n{server.log()}")
        raise
    # Direction is client -> server, in both views.
    hosts = app.nodes("hosts")
    assert "hostA;<host>" not in hosts["hostB;<host>"]["adjacency"]
    processes = app.nodes("processes")
    assert client_node not in processes[server_node]["adjacency"]
    assert processes[client_node]["label_minor"] == f"hostA ({client_pid})"
    assert processes[server_node]["label_minor"] == f"hostB ({server_pid})"
    details = app.node("processes", client_node)
    assert [(c["id"], str(c["port"])) for c in details["connections"]["out"]] == [(server_node, str(SERVER_PORT))]
    assert sorted(p["hostname"] for p in app.get("/api/probes")) == ["hostA", "hostB"]

    # hostB's probe dies (its server keeps running): hostB leaves once the window has passed.
    server.probe_process().send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: "hostB;<host>" not in app.nodes("hosts"), timeout=10, what="hostB to leave")
    assert time.monotonic() - killed_at > 1.5, "hostB left before the window had passed"
    assert server.shell.poll() is None
    assert [p["hostname"] for p in app.get("/api/probes")] == ["hostA"]
    hosts = app.nodes("hosts")
    assert "hostA;<host>" in hosts
    assert "hostB;<host>" not in hosts["hostA;<host>"]["adjacency"]
    assert server_node not in app.nodes("processes")
