"""Benchmark: what a probe on this host uploads, by kind of record, topology and field.

    python -m bench.probe_wire [--pairs 25] [--seconds 60] [--settle 15]

Starts issue 16's load (bench.host_e2e: --pairs web servers, as many clients fetching once a second;
--pairs 0 for none), then a probe with the default intervals publishing to a SUB socket of its own on
loopback, and decodes every message it sends over --seconds after --settle. Prints the upload split
into full reports and deltas, then, for the deltas, each kind of record (a new node, a patch, a
removal) by topology: records a second, bytes a second before compression, and bytes a second once
each group is compressed alone (what it costs on the wire, near enough), then the fields and keys
that weigh most. Where the bytes of bench.host_e2e's upload figure go, so that a cut aims right.
"""

from __future__ import annotations

import argparse
import signal
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import docker
import msgpack
import zmq

from bench.host_e2e import SOCKET, interrupt, start_load
from scope_common import wire
from scope_common.bus import configure_subscriber
from tests.fixtures.docker import BUSYBOX_IMAGE, Containers
from tests.fixtures.scope import start_probe

NODE_FIELDS = ("latest", "sets", "adjacency", "edges", "metrics", "parents")


def capture(seconds: float, settle: float) -> list[tuple[float, bytes]]:
    """The messages a new probe sends over `seconds`, after `settle`, with when each arrived."""
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    configure_subscriber(sub)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    probe = start_probe(
        [f"127.0.0.1:{port}"], hostname="bench-host", extra=["--spy-interval=1s", "--publish-interval=3s"]
    )
    messages: list[tuple[float, bytes]] = []
    try:
        start = time.monotonic()
        while time.monotonic() - start < settle + seconds:
            if sub.poll(200):
                message = sub.recv()
                if time.monotonic() - start >= settle:
                    messages.append((time.monotonic(), message))
    finally:
        probe.terminate()
        sub.close(linger=0)
    return messages


def records(body: bytes) -> Iterator[tuple[str, str, list[Any], bytes]]:
    """(kind, topology, fields, packed record) of each record in an uncompressed report body."""
    stream = msgpack.Unpacker(raw=False)
    stream.feed(body)
    for packed in stream:
        fields = msgpack.unpackb(packed, raw=False)
        if len(fields) == 2:
            yield "removal", fields[0], fields, packed
        elif len(fields) == wire.PATCH_RECORD_FIELDS:
            yield "patch", fields[0], fields, packed
        else:
            yield "new node", fields[0], fields, packed


def field_sizes(kind: str, fields: list[Any]) -> Iterator[tuple[str, int]]:
    """(field or `field:key`, packed bytes) of a node or patch record."""
    values = fields[2] if kind == "patch" else fields[2:]
    for name, value in zip(NODE_FIELDS, values, strict=True):
        yield name, len(msgpack.packb(value))
        if name in ("latest", "metrics") and value:
            for key, entry in value.items():
                yield f"{name}:{key}", len(msgpack.packb({key: entry}))


def tally(messages: list[tuple[float, bytes]]) -> None:
    span = max(messages[-1][0] - messages[0][0], 1.0) if messages else 1.0
    wire_bytes: Counter[str] = Counter()
    count: Counter[str] = Counter()
    groups: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    fields: Counter[tuple[str, str, str]] = Counter()
    for _, message in messages:
        head = msgpack.unpackb(message, raw=False)
        label = "full" if head["full"] else "delta"
        wire_bytes[label] += len(message)
        count[label] += 1
        if head["full"]:
            continue
        body = zlib.decompress(head["report"]) if head["encoding"] == wire.ENCODING_ZLIB else head["report"]
        for kind, topology, record, packed in records(body):
            groups[(kind, topology)].append(packed)
            if kind != "removal":
                for name, size in field_sizes(kind, record):
                    fields[(kind, topology, name)] += size
    total = sum(wire_bytes.values())
    print(f"{len(messages)} messages over {span:.0f} s: {total / span / 1000:.2f} KB/s on the wire")
    for label in ("full", "delta"):
        print(
            f"  {label:5}: {count[label]} messages, {wire_bytes[label] / span / 1000:.2f} KB/s, "
            f"{wire_bytes[label] / max(count[label], 1) / 1000:.1f} KB each"
        )
    print("deltas by record (per second: records, bytes raw, bytes compressed alone):")
    rows = sorted(groups.items(), key=lambda item: -len(zlib.compress(b"".join(item[1]), wire.COMPRESSION_LEVEL)))
    for (kind, topology), group in rows:
        raw = sum(len(one) for one in group)
        alone = len(zlib.compress(b"".join(group), wire.COMPRESSION_LEVEL))
        print(f"  {kind:8} {topology:16} {len(group) / span:7.1f} {raw / span:9.0f} {alone / span:8.0f}")
    print("heaviest fields and keys of new nodes and patches in deltas (raw bytes a second):")
    for (kind, topology, name), size in fields.most_common(20):
        print(f"  {kind:8} {topology:16} {name:40} {size / span:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=25, help="web servers, and as many clients; 0: no load")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to capture")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds a new probe runs before the capture")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    client = docker.DockerClient(base_url=f"unix://{SOCKET}", timeout=120)
    containers = Containers(client, BUSYBOX_IMAGE)
    try:
        if args.pairs:
            start_load(containers, args.pairs)
            print(f"{args.pairs} servers and {args.pairs} clients fetching once a second", flush=True)
        tally(capture(args.seconds, args.settle))
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        containers.cleanup()
        client.close()


if __name__ == "__main__":
    main()
