"""Capture the real report bench.fleet replays: one probe on this host with 50 busybox containers.

    python -m bench.fleet_capture [--out bench/data/report-50.json] [--seconds 40]

Starts 25 httpd servers and 25 clients fetching from them once a second (label scope.bench.fleet=1),
runs a real probe (`python -m scope_probe 127.0.0.1:PORT --conntrack=on --reverse-dns=off`) publishing
to a ZeroMQ SUB bound here on loopback, decodes its reports with scope_common.wire, and saves the last
one once the clients' connections are in it. Needs root and a Docker engine. The containers are removed
at the end, also on Ctrl-C.

Other people's containers on this machine are left out of the saved report (with their processes and
endpoints), so are endpoints that no kept process or container holds (conntrack's view of other sessions'
loopback traffic: hundreds of test connections no real host of 50 containers would have), and the
host's own processes keep their name but not their command line: the report is committed, and other
sessions' command lines have no place in it. The file is design-neutral JSON, a
list of nodes (`NODE_FIELDS`), so that both wire formats can be made from it (bench/fleet_probes.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import docker
import zmq

from scope_common import ids, wire
from scope_common.bus import configure_subscriber
from scope_common.report import (
    CMDLINE,
    CONTAINER_NAME,
    LOCAL_NETWORKS,
    NAME,
    Node,
    Report,
)
from tests.fixtures.docker import BUSYBOX_IMAGE

DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "report-50.json"
LABEL = {"scope.bench.fleet": "1"}
PREFIX = "fleet-cap-"
HOSTNAME = "capture-host"
#: What each saved node is, by position (the shape of wire format v1's nodes, with the topology first).
NODE_FIELDS = ["topology", "id", "latest", "sets", "adjacency", "edges", "metrics", "parents"]
SHIM = "containerd-shim"


def remove_containers(client: Any) -> None:
    for container in client.containers.list(all=True, filters={"label": "scope.bench.fleet=1"}):
        container.remove(force=True)


def start_containers(client: Any, pairs: int) -> None:
    """`pairs` httpd servers and as many clients, each fetching from its server once a second."""
    servers = [
        client.containers.run(
            BUSYBOX_IMAGE, ["httpd", "-f", "-p", "80", "-h", "/etc"], detach=True, labels=LABEL, name=f"{PREFIX}srv-{i}"
        )
        for i in range(pairs)
    ]
    for i, server in enumerate(servers):
        server.reload()
        address = server.attrs["NetworkSettings"]["IPAddress"]
        loop = f"while true; do wget -q -O /dev/null http://{address}/passwd; sleep 1; done"
        client.containers.run(BUSYBOX_IMAGE, ["sh", "-c", loop], detach=True, labels=LABEL, name=f"{PREFIX}cli-{i}")


def ours(report: Report) -> Report:
    """`report` without other people's containers, their processes and endpoints, and without the host
    processes' command lines (containerd shims excepted: theirs name our containers' ids)."""
    containers = {
        node.id for node in report.nodes("container").values() if (node.get(CONTAINER_NAME) or "").startswith(PREFIX)
    }
    container_ids = {c for c in (ids.parse_container_id(i) for i in containers) if c}
    kept = Report()
    for node in report.nodes("host").values():
        kept.add(node)
    images: set[str] = set()
    for node_id in containers:
        node = report.nodes("container")[node_id]
        kept.add(node)
        images.update(node.parents.get("container_image", ()))
    for node in report.nodes("container_image").values():
        if node.id in images:
            kept.add(node)
    processes: set[str] = set()
    for node in report.nodes("process").values():
        parent = node.parents.get("container", ())
        if parent:
            if parent[0] not in containers:
                continue
        elif node.get(NAME) == SHIM:
            if not any(c in (node.get(CMDLINE) or "") for c in container_ids):
                continue
        else:
            latest = {k: v for k, v in node.latest.items() if k != CMDLINE}
            node = Node(
                node.id, node.topology, latest, node.sets, node.adjacency, node.edges, node.metrics, node.parents
            )
        processes.add(node.id)
        kept.add(node)
    for node in report.nodes("endpoint").values():
        parent_containers = node.parents.get("container", ())
        parent_processes = node.parents.get("process", ())
        if not any(c in containers for c in parent_containers) and not any(p in processes for p in parent_processes):
            continue
        kept.add(node)
    return kept


def edges_between_ours(report: Report) -> int:
    """Client endpoints of ours with a connection: the sign conntrack has seen the fetches."""
    return sum(1 for node in report.nodes("endpoint").values() if node.adjacency and node.parents)


def host_addresses(report: Report) -> list[str]:
    """The host's own addresses (not the docker bridge's), from its local networks."""
    found: Iterable[str] = (
        network.partition("/")[0]
        for node in report.nodes("host").values()
        for network in node.sets.get(LOCAL_NETWORKS, ())
    )
    return sorted(a for a in found if not a.startswith("172.17."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--pairs", type=int, default=25, help="servers, and as many clients")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long the probe runs before the capture")
    args = parser.parse_args()
    client = docker.from_env()
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    configure_subscriber(sub)
    sub.bind("tcp://127.0.0.1:0")
    address = sub.getsockopt_string(zmq.LAST_ENDPOINT).removeprefix("tcp://")
    probe: subprocess.Popen[bytes] | None = None
    try:
        remove_containers(client)
        start_containers(client, args.pairs)
        probe = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scope_probe",
                address,
                f"--hostname={HOSTNAME}",
                "--conntrack=on",
                "--reverse-dns=off",
                "--weave-dns-name=",
            ]
        )
        last: Report | None = None
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            if sub.poll(1000):
                envelope = wire.decode(sub.recv())
                if envelope.full:
                    last = envelope.report
        if last is None:
            raise SystemExit("no full report from the probe")
        report = ours(last)
        containers = len(report.nodes("container"))
        if containers != 2 * args.pairs:
            raise SystemExit(f"the report has {containers} of our containers, not {2 * args.pairs}")
        captured = {
            "about": "one real report of a probe on a host with 50 busybox containers, made by bench/fleet_capture.py",
            "host": HOSTNAME,
            "host_addresses": host_addresses(report),
            "captured_at": max(ts for n in report.nodes("host").values() for ts, _ in n.latest.values()),
            "node_fields": NODE_FIELDS,
            "nodes": [wire.node_record(n) for t in report.topologies.values() for n in t.nodes.values()],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(captured, separators=(",", ":")))
        counts = {name: len(t.nodes) for name, t in report.topologies.items()}
        print(f"saved {args.out} ({args.out.stat().st_size // 1024} KiB): {counts}, {edges_between_ours(report)} edges")
    finally:
        if probe is not None:
            probe.terminate()
            probe.wait(10)
        sub.close(linger=0)
        context.term()
        remove_containers(client)


if __name__ == "__main__":
    main()
