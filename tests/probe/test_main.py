"""What the probe publishes, seen through real ZeroMQ sockets: full reports with deltas between, and a
full report for every app that (re)subscribes, so a restarted app has the whole picture at once."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterator

import pytest
import zmq

from scope_common import ids, rpc, wire
from scope_common.bus import configure_subscriber
from scope_common.report import ENDPOINT, Node, Report
from scope_probe.main import events_only
from scope_probe.publisher import Publisher
from tests.fixtures.docker import Containers
from tests.fixtures.ports import free_port, free_port_pair
from tests.fixtures.scope import Scope, ScopeProcess, start_probe, wait_for


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


def _subscriber(context: zmq.Context[zmq.Socket[bytes]], port: int) -> zmq.Socket[bytes]:
    """An app's end of the bus: a SUB socket bound to `port`, as `scope app` has it. The port of one
    just closed is released by ZeroMQ's I/O thread a moment later: binding is retried meanwhile."""
    socket = context.socket(zmq.SUB)
    configure_subscriber(socket)
    wait_for(lambda: _bound(socket, port), timeout=5, what=f"port {port} to be free again")
    return socket


def _bound(socket: zmq.Socket[bytes], port: int) -> bool:
    try:
        socket.bind(f"tcp://127.0.0.1:{port}")
    except zmq.ZMQError:
        return False
    return True


def _subscribed(publisher: Publisher, subscriber: zmq.Socket[bytes]) -> int:
    # A bound socket takes in a new connection only when its owner calls it, as an app's receive loop does.
    subscriber.poll(20)
    return publisher.new_subscribers()


def _receive_for(socket: zmq.Socket[bytes], seconds: float) -> list[wire.Envelope]:
    """Every message that arrives within `seconds`."""
    envelopes: list[wire.Envelope] = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if socket.poll(int(remaining * 1000)):
            envelopes.append(wire.decode(socket.recv()))
    return envelopes


def _receive(socket: zmq.Socket[bytes], count: int, timeout: float = 15.0) -> list[wire.Envelope]:
    envelopes: list[wire.Envelope] = []
    deadline = time.monotonic() + timeout
    while len(envelopes) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(envelopes)} of {count} messages arrived in {timeout}s"
        if socket.poll(int(remaining * 1000)):
            envelopes.append(wire.decode(socket.recv()))
    return envelopes


@pytest.fixture
def probe_on_port() -> Iterator[tuple[int, list[ScopeProcess]]]:
    """A port for the test's subscriber, and a list the test puts its probe in (terminated at the end)."""
    probes: list[ScopeProcess] = []
    try:
        yield free_port(), probes
    finally:
        for probe in probes:
            probe.terminate()


def test_publisher_counts_each_subscription_also_of_an_app_back_on_the_same_port(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    port = free_port()
    publisher = Publisher(context)
    try:
        publisher.set_apps({f"tcp://127.0.0.1:{port}"})
        first = _subscriber(context, port)
        assert wait_for(lambda: _subscribed(publisher, first), timeout=10, what="the first app's subscription") == 1
        assert _subscribed(publisher, first) == 0, "each subscription is counted once"
        first.close(linger=0)
        second = _subscriber(context, port)
        wait_for(lambda: _subscribed(publisher, second), timeout=10, what="the restarted app's subscription")
        second.close(linger=0)
    finally:
        publisher.close()


def _carried(envelope: wire.Envelope, topology: str) -> set[str]:
    """The ids of the nodes of `topology` a message carries: whole, or as patches of what changed."""
    return set(envelope.report.nodes(topology)) | {p.id for p in envelope.patches if p.topology == topology}


def test_probe_sends_a_full_report_first_then_deltas_and_a_full_one_every_interval(
    context: zmq.Context[zmq.Socket[bytes]], probe_on_port: tuple[int, list[ScopeProcess]]
) -> None:
    port, probes = probe_on_port
    subscriber = _subscriber(context, port)
    # Publish every second (the fixture's interval), a full report every 3 s.
    probes.append(start_probe([f"127.0.0.1:{port}"], hostname="delta-host", extra=["--full-report-interval=3s"]))
    envelopes = _receive_for(subscriber, 9)
    assert envelopes[0].full, "the first message an app gets is a full report"
    fulls = [e for e in envelopes if e.full]
    assert len(fulls) >= 2
    # Timed, not counted: messages on Docker events in between do not bring a full report forward.
    assert all(2.9 <= b.sent_at - a.sent_at <= 6 for a, b in itertools.pairwise(fulls)), [e.sent_at for e in fulls]
    for previous, envelope in itertools.pairwise(envelopes):
        assert envelope.seq == previous.seq + 1
        if not envelope.full:
            assert envelope.base_seq == previous.seq
    # From the second full report on, every process has had its first CPU reading.
    settled = envelopes[envelopes.index(fulls[1]) :]
    full_processes = len(settled[0].report.nodes("process"))
    delta_processes = [len(_carried(e, "process")) for e in settled if not e.full]
    # Most processes are the same from one second to the next: deltas carry only those that changed
    # (and now and then all of them, whose unchanged metrics are sent again: hence the median).
    assert statistics.median(delta_processes) < full_processes / 2, (delta_processes, full_processes)


def test_a_subscriber_back_on_the_same_port_gets_a_full_report_within_seconds(
    context: zmq.Context[zmq.Socket[bytes]], probe_on_port: tuple[int, list[ScopeProcess]]
) -> None:
    port, probes = probe_on_port
    first = _subscriber(context, port)
    # No periodic full report within the test: only the new subscription can bring one.
    probes.append(start_probe([f"127.0.0.1:{port}"], hostname="resub-host", extra=["--full-report-interval=1h"]))
    envelopes = _receive(first, 3)
    assert envelopes[0].full and not envelopes[1].full and not envelopes[2].full
    first.close(linger=0)
    second = _subscriber(context, port)
    began = time.monotonic()
    # A message being encoded as the subscription arrives reaches the new subscriber as a delta, which
    # an app sets aside: the full report is the next one.
    envelope = _receive(second, 1)[0]
    if not envelope.full:
        envelope = _receive(second, 1)[0]
    assert envelope.full
    assert envelope.report.nodes("host"), "the full report holds the probe's whole picture"
    assert time.monotonic() - began < 5


def test_an_app_restarted_on_the_same_port_shows_the_probes_nodes_within_seconds(scope: Scope) -> None:
    app = scope.app()
    scope.probe([app.bus], hostname="restart-host", extra=["--full-report-interval=1h"])
    wait_for(lambda: "restart-host;<host>" in app.nodes("hosts"), timeout=15, what="the probe's host node")
    port = app.bus_port
    app.terminate()
    restarted = scope.app(bus_port=port)
    began = time.monotonic()
    wait_for(lambda: "restart-host;<host>" in restarted.nodes("hosts"), timeout=10, what="the host in the new app")
    processes = restarted.nodes("processes", unconnected="show")
    assert len(processes) > 10, "the full picture, not only what changed since the restart"
    assert time.monotonic() - began < 5


def test_a_container_that_starts_is_sent_at_once_without_the_others_new_samples(
    context: zmq.Context[zmq.Socket[bytes]], probe_on_port: tuple[int, list[ScopeProcess]], containers: Containers
) -> None:
    port, probes = probe_on_port
    subscriber = _subscriber(context, port)
    running = {ids.container_id(containers.run("sleep 300", name=f"old-{i}").id) for i in range(2)}
    # No publish tick after the first: every later message is a wake's.
    extra = ["--publish-interval=1h", "--full-report-interval=10h"]
    probes.append(start_probe([f"127.0.0.1:{port}"], hostname="wake-host", extra=extra))
    seen: set[str] = set()
    while not running <= seen:
        (envelope,) = _receive(subscriber, 1)
        seen.update(envelope.report.nodes("container"))
    time.sleep(2)  # the running containers have new CPU and memory samples, and a longer uptime
    started = ids.container_id(containers.run("sleep 300", name="new").id)
    while True:
        (envelope,) = _receive(subscriber, 1)
        sent = _carried(envelope, "container")
        if started in sent:
            break
    assert not envelope.full
    assert not sent & running, "the wake's message carries what the event changed, not every new sample"


def test_events_in_a_burst_are_sent_together_at_most_once_a_second(
    context: zmq.Context[zmq.Socket[bytes]], probe_on_port: tuple[int, list[ScopeProcess]], containers: Containers
) -> None:
    port, probes = probe_on_port
    subscriber = _subscriber(context, port)
    # The tracer's wakes (new edges anywhere on this shared host) are published as they come, up to four a
    # second (tracer.MIN_WAKE_SECONDS): they are not what is counted here.
    extra = ["--publish-interval=1h", "--full-report-interval=10h", "--conn-tracer=off"]
    probes.append(start_probe([f"127.0.0.1:{port}"], hostname="burst-host", extra=extra))
    _receive(subscriber, 1)
    began = time.monotonic()
    # Each start is a few events (create, network connect, start): a burst of wakes.
    started = {ids.container_id(containers.run("sleep 300", name=f"burst-{i}").id) for i in range(6)}
    seen: set[str] = set()
    envelopes = []
    while not started <= seen:
        envelopes.extend(_receive(subscriber, 1))
        seen.update(envelopes[-1].report.nodes("container"))
    elapsed = time.monotonic() - began
    assert len(envelopes) <= elapsed + 1, f"{len(envelopes)} messages in {elapsed:.1f}s"


def test_an_app_that_missed_a_delta_gets_a_full_report_when_it_asks(
    context: zmq.Context[zmq.Socket[bytes]], probe_on_port: tuple[int, list[ScopeProcess]]
) -> None:
    """The app's end of both the bus and the control channel: after the probe's first full report only
    deltas come (the periodic full report is an hour away), until the control channel asks for one."""
    _, probes = probe_on_port
    port = free_port_pair()
    subscriber = _subscriber(context, port)
    router = context.socket(zmq.ROUTER)
    rpc.configure_router(router)
    router.bind(f"tcp://127.0.0.1:{port + rpc.CONTROL_PORT_OFFSET}")
    try:
        probes.append(start_probe([f"127.0.0.1:{port}"], hostname="asked-host", extra=["--full-report-interval=1h"]))
        assert _receive(subscriber, 1)[0].full
        assert not any(e.full for e in _receive_for(subscriber, 3)), "deltas only, before anyone asks"
        assert router.poll(15_000), "no hello on the control channel"
        identity = router.recv_multipart()[0]
        router.send_multipart([identity, rpc.encode(rpc.Message.make(rpc.FULL_REPORT))])
        envelopes = _receive_for(subscriber, 4)
        assert any(e.full for e in envelopes), [e.full for e in envelopes]
    finally:
        router.close(0)


def _endpoints(*node_ids: str) -> Report:
    report = Report()
    for node_id in node_ids:
        report.add(Node.build(node_id, ENDPOINT, timestamp=1.0, latest={"traced": "true"}))
    return report


def test_a_wake_keeps_connections_whose_linger_ran_out_until_the_next_tick() -> None:
    """The tracer woke for a new connection; one whose linger ran out meanwhile goes at the next publish
    tick, with conntrack's view of it, in one removal rather than a patch now and a removal then."""
    sent = _endpoints("h;10.0.0.1;1000", "h;10.0.0.1;1001")
    now = _endpoints("h;10.0.0.1;1001", "h;10.0.0.1;1002")
    kept = events_only(now, sent, keep_gone=True)
    assert set(kept.nodes(ENDPOINT)) == {"h;10.0.0.1;1000", "h;10.0.0.1;1001", "h;10.0.0.1;1002"}
    assert set(events_only(now, sent).nodes(ENDPOINT)) == {"h;10.0.0.1;1001", "h;10.0.0.1;1002"}, (
        "a reporter whose nodes go on events (a container removed) sends the removal at once"
    )
