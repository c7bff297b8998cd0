"""N fake probes in one process, for bench.fleet: each its own ZeroMQ PUB connection to the app.

    PYTHONPATH=CHECKOUT python bench/fleet_probes.py --bus 127.0.0.1:PORT --probes N [--profile real|synthetic]

Run as a script, by path, so that `scope_common` (and bench.synthetic) come from the checkout under test,
not from the tree this file is in: the same publisher then speaks whichever wire format that checkout
has. With `scope_common.delta` (wire v2) each probe sends through a `DeltaEncoder` (a full report every
FULL_REPORT_SECONDS, deltas in between), as the new probe does; without it, a full report every time, as
the old probe did. Each probe also has the control channel's DEALER to the app (where the checkout has
`rpc.FULL_REPORT`), says hello on it before each message, and makes its next message a full report when
the app asks for one after a lost message (ControlRouter.ask_full_report), as a real probe does.

Reports: `real` replays bench/data/report-50.json (one real probe's report, bench/fleet_capture.py)
with the host's name and address and every container id rewritten per probe, plus a few connections
to other probes' hosts; `synthetic` is bench.synthetic's host_report (500 processes, 2,000 endpoints,
50 containers). Every cycle each probe's host, its containers and a tenth of its processes get a new
metric sample, and in one probe in `--churn-every` a container is replaced by a new one (new id: the old
one goes from the view, the new one comes). Probe 0 also swaps in a marked container (a new, unique
name) every `--mark-every` cycles and prints `MARK <name> <time.monotonic() after the send>`, which
bench.fleet watches for in the API and on a websocket.

Probes publish every `--interval`, spread evenly over it. Every interval the process prints
`STAT <monotonic> <messages sent> <seconds behind schedule, worst in the interval> <CPU seconds used>`.
It stops on SIGTERM, when its parent goes, or after `--seconds`.

With `--service-tokens FILE` (a JSON array of probe tokens) and `--service-key KEY`, the probes feed the
multi-tenant service (bench.service): probe i as the tenant of token i modulo their number, over CURVE,
as `scope probe --service-token` does.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import zmq

from scope_common import ids, wire
from scope_common.bus import configure_publisher
from scope_common.report import (
    CONTAINER_NAME,
    HOST_NODE_ID,
    MAX_SAMPLES,
    EdgeMetadata,
    Metric,
    Node,
    Report,
    Sample,
)

try:
    from scope_common import delta
except ImportError:  # the design before wire v2: every message is a full report
    delta = None  # type: ignore[assignment]
try:
    from scope_common import rpc
except ImportError:  # the design before the control channel
    rpc = None  # type: ignore[assignment]

DATA = Path(__file__).resolve().parent / "data" / "report-50.json"
VERSION = "bench-fleet"
#: Connections each probe of the real profile makes to other probes' hosts (the capture has none: it is
#: one host), so the app has cross-host edges to join.
CROSS_HOST = 3
#: Hosts the marked container connects to. Views over the app's node cap keep the most connected nodes;
#: this keeps the marked container among them at 1,000 hosts.
MARK_PEERS = 10
#: Of the processes, the share whose metrics move each cycle (the idle majority reports the same values).
MOVING_PROCESSES = 10
#: A full report this often, deltas in between: the probe's default `--full-report-interval`.
FULL_REPORT_SECONDS = 60.0

NodeKey = tuple[str, str]
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
Encode = Callable[[Report, float], bytes]


def host_name(index: int) -> str:
    """The name of probe `index`'s host, as bench.synthetic names them."""
    return f"host-{index}"


def host_address(index: int) -> str:
    """The address of probe `index`'s host, as bench.synthetic has it."""
    return f"10.{index // 250}.{index % 250}.10"


def new_container_id(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def rename(node: Node, sub: Callable[[str], str]) -> Node:
    """`node` with `sub` applied to every string that can name a host, container or address."""
    return Node(
        sub(node.id),
        node.topology,
        {k: (ts, sub(v)) for k, (ts, v) in node.latest.items()},
        {k: tuple(sorted(sub(v) for v in vs)) for k, vs in node.sets.items()},
        tuple(sorted(sub(a) for a in node.adjacency)),
        {sub(k): e for k, e in node.edges.items()},
        node.metrics,
        {k: tuple(sorted(sub(v) for v in vs)) for k, vs in node.parents.items()},
    )


def replacer(mapping: dict[str, str]) -> Callable[[str], str]:
    """One pass over a string replacing every key of `mapping` (longest first) by its value."""
    pattern = re.compile("|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)))
    return lambda text: pattern.sub(lambda m: mapping[m.group(0)], text)


def load_template(path: Path, containers: int, now: float) -> tuple[list[Node], str, list[str]]:
    """The captured nodes (timestamps moved to `now`), keeping the first `containers` containers; with the
    captured host's name and addresses."""
    data = json.loads(path.read_text())
    shift = now - float(data["captured_at"])
    records: list[list[Any]] = data["nodes"]
    names = sorted(
        (str(r[2]["docker_container_name"][1]), str(r[1])) for r in records if r[0] == "container"
    )  # srv-0.., cli-0..: dropping from the end keeps pairs where it can
    dropped = {ids.parse_container_id(node_id) or "" for _, node_id in _interleave(names)[containers:]}
    nodes = []
    for topology, node_id, latest, sets, adjacency, edges, metrics, parents in records:
        text = json.dumps([node_id, latest, parents])
        if any(d in text for d in dropped):
            continue
        nodes.append(
            Node(
                node_id,
                topology,
                {k: (ts + shift, v) for k, (ts, v) in latest.items()},
                {k: tuple(v) for k, v in sets.items()},
                tuple(adjacency),
                {k: EdgeMetadata(*e) for k, e in edges.items()},
                {
                    k: Metric(tuple(Sample(flat[i] + shift, flat[i + 1]) for i in range(0, len(flat), 2)), low, high)
                    for k, (low, high, flat) in metrics.items()
                },
                {k: tuple(v) for k, v in parents.items()},
            )
        )
    return nodes, str(data["host"]), list(data["host_addresses"])


def _interleave(names: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Containers in the order srv-0, cli-0, srv-1, cli-1...: a cut keeps whole server/client pairs."""

    def key(item: tuple[str, str]) -> tuple[int, str]:
        name = item[0]
        number = name.rpartition("-")[2]
        return (int(number) if number.isdigit() else 0, name)

    return sorted(names, key=key)


class FakeProbe:
    """One probe: its own PUB socket, its current report, and how it changes from cycle to cycle."""

    def __init__(
        self,
        index: int,
        probes: int,
        nodes: Iterable[Node],
        context: zmq.Context[zmq.Socket[bytes]],
        bus: str,
        rng: random.Random,
        secure: Callable[[zmq.Socket[bytes]], None] | None = None,
        *,
        full_every: int = 20,
        control: bool = False,
        source: str = "",
    ) -> None:
        """`full_every`: a full report every this many messages (FULL_REPORT_SECONDS over the interval);
        `control`: open the control channel to the app, to be asked for full reports; `source`: the
        address the bus connection comes from (empty: the system's choice)."""
        self.index = index
        self.host = host_name(index)
        self.rng = rng
        self.nodes: dict[NodeKey, Node] = {(n.topology, n.id): n for n in nodes}
        self.socket = context.socket(zmq.PUB)
        configure_publisher(self.socket)
        if secure is not None:
            secure(self.socket)
        self.socket.connect(f"tcp://{source}:0;{bus}" if source else f"tcp://{bus}")
        probe_id = f"{self.host}-{os.getpid()}"
        self.encode: Encode
        self.probe_id = probe_id
        self.request_full: Callable[[], None] | None = None
        if delta is not None:
            encoder = delta.DeltaEncoder(probe_id, self.host, VERSION, full_every=full_every)
            self.encode = lambda report, now: encoder.encode(report, sent_at=now)
            self.request_full = getattr(encoder, "request_full", None)
        else:
            seq = iter(range(1, 1 << 62))
            self.encode = lambda report, now: wire.encode(
                wire.Envelope(probe_id, self.host, next(seq), now, report, VERSION)
            )
        self.control: zmq.Socket[bytes] | None = None
        if control and rpc is not None and hasattr(rpc, "FULL_REPORT") and self.request_full is not None:
            self.control = context.socket(zmq.DEALER)
            rpc.configure_dealer(self.control, probe_id)
            if secure is not None:
                secure(self.control)
            self.control.connect(rpc.control_address(f"tcp://{bus}"))
        self.generation = 0
        self.dropped = 0
        self.marked: list[NodeKey] = []
        #: container id -> the nodes that name it (the container, its processes, its endpoints...).
        self.mentions: dict[str, set[NodeKey]] = {}
        for key, node in self.nodes.items():
            self._index(key, node)
        #: The nodes whose metrics move each cycle.
        self.moving = {key for key in self.nodes if key[0] in ("host", "container")}
        processes = [key for key in self.nodes if key[0] == "process"]
        self.moving.update(processes[index % MOVING_PROCESSES :: MOVING_PROCESSES])

    def _index(self, key: NodeKey, node: Node) -> None:
        text = f"{node.id} {node.latest} {node.parents}"
        for container in _CONTAINER_ID.findall(text):
            self.mentions.setdefault(container, set()).add(key)

    def containers(self) -> list[str]:
        return sorted(i for t, n in self.nodes if t == "container" and (i := ids.parse_container_id(n)))

    def close(self) -> None:
        self.socket.close(linger=0)
        if self.control is not None:
            self.control.close(linger=0)

    def answer_app(self) -> None:
        """Make the next message a full report if the app asked for one, and say hello (before each
        message: the app asks only probes it heard from within rpc.PEER_TIMEOUT)."""
        if self.control is None:
            return
        assert self.request_full is not None
        while True:
            try:
                raw = self.control.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                message = rpc.decode(raw, rpc.PROBE_RECEIVES)
            except rpc.RpcError:
                continue
            if message.kind == rpc.FULL_REPORT:
                self.request_full()
        hello = rpc.Message.make(rpc.HELLO, probe_id=self.probe_id, host_id=self.host, version=VERSION)
        with contextlib.suppress(zmq.ZMQError):  # not connected yet (IMMEDIATE)
            self.control.send(rpc.encode(hello), zmq.NOBLOCK)

    def publish(self, now: float) -> None:
        self.answer_app()
        report = Report()
        for node in self.nodes.values():
            report.add(node)
        try:
            self.socket.send(self.encode(report, now), zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def move_metrics(self, now: float) -> None:
        for key in self.moving:
            node = self.nodes.get(key)
            if node is None or not node.metrics:
                continue
            metrics = {k: self._next(m, now) for k, m in node.metrics.items()}
            self.nodes[key] = Node(
                node.id, node.topology, node.latest, node.sets, node.adjacency, node.edges, metrics, node.parents
            )

    def _next(self, metric: Metric, now: float) -> Metric:
        last = metric.samples[-1].value if metric.samples else 1.0
        value = max(0.0, last * self.rng.uniform(0.8, 1.2) + self.rng.uniform(0.0, 0.1))
        if metric.max:
            value = min(value, metric.max)
        kept = metric.samples[-(MAX_SAMPLES - 1) :] if len(metric.samples) > 1 else ()
        return Metric((*kept, Sample(now, value)), metric.min, metric.max)

    def replace_container(self, old: str, new: str, now: float) -> None:
        """The container `old` gone, and `new` in its place with the same processes and connections."""
        for key in self.mentions.pop(old, set()):
            node = rename(self.nodes.pop(key), lambda text: text.replace(old, new).replace(old[:12], new[:12]))
            if key[0] == "container":
                node = _with_latest(node, now, {CONTAINER_NAME: f"{node.get(CONTAINER_NAME)}-{self.generation}"})
            new_key = (node.topology, node.id)
            self.nodes[new_key] = node
            self.mentions.setdefault(new, set()).add(new_key)
            if key in self.moving:
                self.moving.discard(key)
                self.moving.add(new_key)

    def churn(self, now: float) -> None:
        """One container replaced by another: as `docker rm` then `docker run` of the same service."""
        containers = self.containers()
        if containers:
            self.generation += 1
            old = containers[self.generation % len(containers)]
            self.replace_container(old, new_container_id(self.host, old, self.generation), now)

    def add_marked(self, name: str, peers: list[int], now: float) -> None:
        """Drop the last marked container, add one named `name` with connections to `peers`' servers."""
        for key in self.marked:
            del self.nodes[key]
        container = new_container_id("mark", name)
        model = self.nodes[("container", ids.container_id(self.containers()[0]))]
        model_id = ids.parse_container_id(model.id) or ""
        node = _with_latest(rename(model, lambda text: text.replace(model_id, container)), now, {CONTAINER_NAME: name})
        self.marked = [("container", node.id)]
        self.nodes[("container", node.id)] = node
        for j, peer in enumerate(peers):
            client = ids.endpoint_id("", host_address(self.index), 41000 + j)
            target = ids.endpoint_id("", host_address(peer), 80)
            self.nodes[("endpoint", client)] = cross_host_endpoint(
                client, target, self.host, {"container": node.id}, now
            )
            self.marked.append(("endpoint", client))


def _with_latest(node: Node, now: float, values: dict[str, str]) -> Node:
    latest = dict(node.latest)
    latest.update({k: (now, v) for k, v in values.items()})
    return Node(node.id, node.topology, latest, node.sets, node.adjacency, node.edges, node.metrics, node.parents)


def cross_host_endpoint(endpoint: str, target: str | None, host: str, parents: dict[str, str], now: float) -> Node:
    parsed = ids.parse_endpoint_id(endpoint)
    assert parsed is not None
    return Node.build(
        endpoint,
        "endpoint",
        timestamp=now,
        latest={HOST_NODE_ID: ids.host_id(host), "addr": parsed.addr, "port": parsed.port, "conntracked": "true"},
        adjacency=[target] if target else [],
        edges={target: EdgeMetadata(1)} if target else None,
        parents={k: [v] for k, v in parents.items()},
    )


def real_probe_nodes(
    template: list[Node], captured_host: str, addresses: list[str], index: int, probes: int, now: float
) -> list[Node]:
    """The captured report as probe `index`'s: its own host name, address and container ids, and a few
    connections from its client containers to other probes' servers (port 80 of their address)."""
    mapping = {captured_host: host_name(index), **{a: host_address(index) for a in addresses}}
    for node in template:
        if node.topology == "container" and (container := ids.parse_container_id(node.id)):
            renamed = new_container_id(host_name(index), container)
            mapping[container] = renamed
            mapping[container[:12]] = renamed[:12]
    sub = replacer(mapping)
    nodes = [rename(node, sub) for node in template]
    by_name = {n.get(CONTAINER_NAME) or "": n.id for n in nodes if n.topology == "container"}
    servers = sorted(i for name, i in by_name.items() if "-srv-" in name)
    clients = sorted(i for name, i in by_name.items() if "-cli-" in name)
    if probes > 1 and servers:
        me = host_address(index)
        nodes.append(
            cross_host_endpoint(ids.endpoint_id("", me, 80), None, host_name(index), {"container": servers[0]}, now)
        )
        for k, client in enumerate(clients[:CROSS_HOST]):
            peer = (index + 1 + k) % probes
            if peer != index:
                endpoint = ids.endpoint_id("", me, 40000 + k)
                target = ids.endpoint_id("", host_address(peer), 80)
                nodes.append(cross_host_endpoint(endpoint, target, host_name(index), {"container": client}, now))
    return nodes


def synthetic_probe_nodes(index: int, probes: int, containers: int, now: float) -> list[Node]:
    from bench.synthetic import host_report  # the checkout's, for its report model

    report = host_report(index, probes, containers=containers, now=now)
    return [n for t in report.topologies.values() for n in t.nodes.values()]


def service_credentials(token: str, service_key: str) -> Callable[[zmq.Socket[bytes]], None]:
    """What makes a socket a probe of the service with `token` (the checkout's own CURVE set-up)."""
    from scope_probe.service import ServiceCredentials

    return ServiceCredentials.from_flags(token, service_key).apply


def full_every(interval: float) -> int:
    """Messages from one full report to the next, publishing every `interval` seconds."""
    return max(1, round(FULL_REPORT_SECONDS / interval))


class Stop(Exception):
    pass


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bus", required=True, help="the app's bus, host:port")
    parser.add_argument("--probes", type=int, required=True)
    parser.add_argument("--profile", choices=["real", "synthetic"], default="real")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--containers", type=int, default=50, help="containers per probe")
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--churn-every", type=int, default=5, help="one probe in this many replaces a container")
    parser.add_argument("--mark-every", type=int, default=1, help="cycles between marked changes of probe 0")
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--senders", type=int, default=1, help="processes sharing the probes")
    parser.add_argument("--sender", type=int, default=0, help="which of them this is: probes i with i %% senders")
    parser.add_argument("--service-tokens", type=Path, help="JSON array of probe tokens: feed the service")
    parser.add_argument("--service-key", default="", help="the service's public key (with --service-tokens)")
    parser.add_argument(
        "--loopback-sources",
        action="store_true",
        help="each probe connects from a loopback address of its own (127.2.x.y), as hosts would: the service "
        "caps the probes of one source address whatever its per-source flags",
    )
    args = parser.parse_args()
    tokens: list[str] = json.loads(args.service_tokens.read_text()) if args.service_tokens else []
    signal.signal(signal.SIGTERM, _stop)
    parent = os.getppid()
    started = time.monotonic()
    now = time.time()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    context.set(zmq.MAX_SOCKETS, 2 * (args.probes // args.senders) + 64)
    probes: list[FakeProbe] = []
    try:
        template: list[Node] = []
        captured_host, addresses = "", list[str]()
        if args.profile == "real":
            template, captured_host, addresses = load_template(args.data, args.containers, now)
        for i in range(args.sender, args.probes, args.senders):
            nodes = (
                real_probe_nodes(template, captured_host, addresses, i, args.probes, now)
                if args.profile == "real"
                else synthetic_probe_nodes(i, args.probes, args.containers, now)
            )
            secure = service_credentials(tokens[i % len(tokens)], args.service_key) if tokens else None
            probes.append(
                FakeProbe(
                    i,
                    args.probes,
                    nodes,
                    context,
                    args.bus,
                    random.Random(i),
                    secure,
                    full_every=full_every(args.interval),
                    control=True,
                    source=f"127.2.{i // 250 % 250}.{i % 250 + 1}" if args.loopback_sources else "",
                )
            )
        kind = "delta" if delta is not None else "full"
        size = sum(len(p.nodes) for p in probes) // max(1, len(probes))
        print(f"READY {kind} {time.monotonic() - started:.1f} {size}", flush=True)
        time.sleep(2.0)  # connections up before the first (full) reports, which IMMEDIATE would drop
        run(probes, args, parent)
    except Stop:
        pass
    finally:
        for probe in probes:
            probe.close()
        context.term()


def run(probes: list[FakeProbe], args: argparse.Namespace, parent: int) -> None:
    interval: float = args.interval
    step = interval / args.probes
    start = time.monotonic() + 0.1
    end = time.monotonic() + args.seconds
    sent = 0
    behind = 0.0
    marks = 0
    token = f"{os.getpid():x}"
    peers = sorted({(j * args.probes) // (MARK_PEERS + 1) for j in range(1, MARK_PEERS + 1)} - {0})
    cycle = 0
    while time.monotonic() < end:
        for probe in probes:
            due = start + cycle * interval + probe.index * step
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            behind = max(behind, -wait)
            now = time.time()
            probe.move_metrics(now)
            if (probe.index + cycle) % args.churn_every == 0 and cycle > 0:
                probe.churn(now)
            mark = probe.index == 0 and cycle > 2 and cycle % args.mark_every == 0
            if mark:
                marks += 1
                name = f"fleetmark-{token}-{marks}"
                probe.add_marked(name, peers, now)
            probe.publish(now)
            sent += 1
            if mark:
                print(f"MARK {name} {time.monotonic():.4f}", flush=True)
        print(f"STAT {time.monotonic():.4f} {sent} {behind:.3f} {time.process_time():.2f}", flush=True)
        behind = 0.0
        cycle += 1
        if os.getppid() != parent:
            return


if __name__ == "__main__":
    main()
