"""After a control, the change it makes is published as soon as the reporter sees it, whatever the wake gap.

A real Probe (its loop in a thread) publishes over a real PUB socket to the test's SUB on loopback; its one
reporter stands in for the Docker mirror: its report changes when the test says, and it wakes the probe
then, as the mirror does once it has the engine's event. The wake gap is an hour, so that a wake it holds
back stays held for the whole test unless a control expedites it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from scope_common import ids, wire
from scope_common.bus import configure_subscriber
from scope_common.delta import ProbeNodes
from scope_common.report import HOST, Node, Report
from scope_probe.main import Probe
from scope_probe.peers import PeerResolver, parse_peer
from scope_probe.publisher import Publisher
from scope_probe.reporter import ProbeContext, Reporter, Wake
from tests.fixtures.ports import free_port

HOST_ID = "expedite-host"
HOUR = 3600.0


class Mirror(Reporter):
    """One host node whose `state` the test sets; each change wakes the probe."""

    name = "docker"

    def __init__(self) -> None:
        self.state = "first"
        self._wake: Wake | None = None

    def start(self, wake: Wake) -> None:
        self._wake = wake

    def change(self, state: str) -> None:
        self.state = state
        assert self._wake is not None
        self._wake(self.name)

    def report(self, now: float) -> Report:
        report = Report()
        report.add(Node.build(ids.host_id(HOST_ID), HOST, timestamp=now, latest={"state": self.state}))
        return report


@pytest.fixture
def running() -> Iterator[tuple[Probe, Mirror, zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    port = free_port()
    subscriber = context.socket(zmq.SUB)
    configure_subscriber(subscriber)
    subscriber.bind(f"tcp://127.0.0.1:{port}")
    handshakes = subscriber.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    mirror = Mirror()
    probe = Probe(
        ProbeContext(host_id=HOST_ID, probe_id="expedite-probe"),
        [mirror],
        Publisher(context),
        PeerResolver([parse_peer(f"127.0.0.1:{port}")], weave_name=None),
        spy_interval=HOUR,
        publish_interval=HOUR,
        full_report_interval=HOUR,
        wake_gap=HOUR,
    )
    loop = threading.Thread(target=probe.run, daemon=True)
    loop.start()
    try:
        # The probe's first publish goes before its connection is up; what it sends once the subscription
        # has reached it arrives. A bound socket takes a new connection in (and subscribes on it) only
        # when its owner calls it: the poll does that, and the sleep lets the subscription travel.
        assert handshakes.poll(15_000), "the probe did not connect"
        recv_monitor_message(handshakes)
        subscriber.disable_monitor()
        subscriber.poll(100)
        time.sleep(0.5)
        _received.clear()
        yield probe, mirror, subscriber
    finally:
        probe.stop()
        loop.join(10)
        subscriber.close(0)
        context.destroy(linger=0)


#: What each subscriber has been sent, rebuilt as an app does (a changed node may come as a patch).
_received: dict[int, ProbeNodes] = {}


def _states(subscriber: zmq.Socket[bytes], timeout: float) -> list[str]:
    """The host's state after each message that carries the host node (whole or patched) and arrives
    within `timeout` s of the first wait (then none)."""
    nodes = _received.setdefault(id(subscriber), ProbeNodes())
    key = (HOST, ids.host_id(HOST_ID))
    states = []
    while subscriber.poll(int(timeout * 1000)):
        envelope = wire.decode(subscriber.recv())
        assert not nodes.apply(envelope).refused
        if key in nodes.nodes and (
            key[1] in envelope.report.nodes(HOST) or any((p.topology, p.id) == key for p in envelope.patches)
        ):
            states.append(nodes.nodes[key].get("state") or "")
        timeout = 0.2
    return states


def _next_state(subscriber: zmq.Socket[bytes]) -> str:
    states = _states(subscriber, 15)
    assert states, "nothing published"
    return states[-1]


def test_a_control_releases_the_change_the_wake_gap_holds_back(
    running: tuple[Probe, Mirror, zmq.Socket[bytes]],
) -> None:
    probe, mirror, subscriber = running
    mirror.change("second")  # the first wake after a quiet spell goes out at once
    assert _next_state(subscriber) == "second"
    mirror.change("third")  # within the gap: held back
    assert _states(subscriber, 1.5) == []
    probe.expedite("docker")  # a control: what the reporter has seen goes out now...
    assert _next_state(subscriber) == "third"
    mirror.change("fourth")  # ...and so does what it sees next, for a while
    assert _next_state(subscriber) == "fourth"
