"""The app's control channel against a hand-made probe: a real DEALER on loopback that says what the test
wants, including what no well-behaved probe would (garbage, lies, answers to nothing, too many bytes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from scope_common import rpc, wire
from scope_common.controls import CONTROL_PROBE_ID, CONTROLS, STOP
from scope_common.report import Node, Report
from tests.fixtures.scope import App, ReportSender, Scope, wait_for

PROBE = "handmade-probe"
NODE = "a" * 64 + ";<container>"


class HandmadeProbe:
    """A DEALER connected to the app's control port, with its identity set by the test."""

    def __init__(self, app: App, identity: str = PROBE) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.ROUTING_ID, identity.encode())
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(f"tcp://127.0.0.1:{app.bus_port + rpc.CONTROL_PORT_OFFSET}")
        self.identity = identity

    def hello(self, probe_id: str | None = None) -> None:
        self.send(rpc.Message.make(rpc.HELLO, probe_id=probe_id or self.identity, host_id="h", version="test"))

    def send(self, message: rpc.Message) -> None:
        self.socket.send(rpc.encode(message))

    def receive(self, kind: str, timeout: float = 10.0) -> rpc.Message:
        """The next message of `kind` (heartbeats in between are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.poll(100):
                message = rpc.decode(self.socket.recv(), rpc.PROBE_RECEIVES)
                if message.kind == kind:
                    return message
        pytest.fail(f"no {kind} from the app")

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


@pytest.fixture
def app(scope: Scope) -> Iterator[App]:
    app = scope.app()
    # A container node whose controls this probe offers, as a real probe's report would carry it.
    sender = ReportSender(app, probe_id=PROBE, host_id="h")
    report = Report()
    report.add(
        Node.build(
            NODE,
            "container",
            latest={"docker_container_state": "running", CONTROL_PROBE_ID: PROBE},
            sets={CONTROLS: [STOP]},
        )
    )
    sender.send_until(report, lambda: app.get("/api/report").get("container", {}).get(NODE))
    sender.close()
    yield app


@pytest.fixture
def probe(app: App) -> Iterator[HandmadeProbe]:
    made = HandmadeProbe(app)
    yield made
    made.close()


def _answering(probe: HandmadeProbe, reply: bool = True) -> threading.Thread:
    """A thread that takes one request (heartbeating meanwhile) and answers it unless told not to."""

    def serve() -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            probe.hello()
            if probe.socket.poll(200):
                message = rpc.decode(probe.socket.recv(), rpc.PROBE_RECEIVES)
                if message.kind == rpc.REQUEST and reply:
                    probe.send(
                        rpc.Message.make(
                            rpc.RESPONSE,
                            id=message.number("id"),
                            status=rpc.OK,
                            value="done",
                            error="",
                            pipe="",
                            removed_node="",
                        )
                    )
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _connected(app: App) -> bool:
    return app.control(PROBE, NODE, "none")[0] == 400  # 404 while the probe is not connected


def test_garbage_and_lies_are_dropped_and_the_channel_serves_on(app: App, probe: HandmadeProbe) -> None:
    for raw in (b"", b"\xc1", b"\x93\xa5hello\x80\xc4\x00", rpc.encode(rpc.Message.make(rpc.HEARTBEAT))):
        probe.socket.send(raw)
    probe.hello(probe_id="somebody-else")  # claims another id than its own: refused
    # An answer to a request never made is dropped.
    probe.send(rpc.Message.make(rpc.RESPONSE, id=99, status=rpc.OK, value="", error="", pipe="", removed_node=""))
    time.sleep(0.5)
    assert app.control(PROBE, NODE, STOP)[0] == 404, "a probe that has not said hello is not connected"
    probe.hello()
    wait_for(lambda: _connected(app), timeout=5, what="the probe to be connected")
    thread = _answering(probe)
    status, body = app.control(PROBE, NODE, STOP)
    thread.join(5)
    assert (status, body["value"]) == (200, "done")


def test_a_probe_that_never_answers_is_a_504_after_ten_seconds(app: App, probe: HandmadeProbe) -> None:
    probe.hello()
    wait_for(lambda: _connected(app), timeout=5, what="the probe to be connected")
    thread = _answering(probe, reply=False)
    started = time.monotonic()
    status, body = app.control(PROBE, NODE, STOP)
    elapsed = time.monotonic() - started
    thread.join(10)
    assert status == 504, body
    assert elapsed >= rpc.REQUEST_TIMEOUT - 0.5, "it waited for the answer"


def test_a_probe_gone_before_the_window_expired_it_is_a_404_at_once_and_no_warning(app: App) -> None:
    gone = HandmadeProbe(app)
    gone.hello()
    wait_for(lambda: _connected(app), timeout=5, what="the probe to be connected")
    gone.close()  # stopped, or its host cut off: the app still lists it until the window passes
    time.sleep(0.5)
    started = time.monotonic()
    status, body = app.control(PROBE, NODE, STOP)
    assert status == 404, body
    assert time.monotonic() - started < rpc.REQUEST_TIMEOUT / 2, "it did not wait for an answer that cannot come"
    lines = app.log().splitlines()
    assert [line for line in lines if "control channel dropped a message" in line and " INFO " in line]
    assert not [line for line in lines if " WARNING " in line or " ERROR " in line]


def test_an_oversized_message_costs_the_sender_its_connection(app: App, probe: HandmadeProbe) -> None:
    probe.hello()
    wait_for(lambda: _connected(app), timeout=5, what="the probe to be connected")
    probe.socket.send(b"\x00" * (rpc.MAX_RPC_MESSAGE_BYTES + 1024))
    # ZeroMQ drops the connection before the app buffers the message; the probe reconnects and is heard again.
    probe.hello()
    wait_for(lambda: _connected(app), timeout=10, what="the probe to be connected again")
    assert app.get("/api")["version"]


def test_an_app_that_missed_a_delta_asks_the_probe_for_a_full_report(app: App) -> None:
    asker = HandmadeProbe(app, identity="asker")
    sender = ReportSender(app, probe_id="asker", host_id="asker-host")
    try:
        asker.hello()
        wait_for(lambda: app.get("/api/control/asker")["connected"], timeout=10, what="the asker's hello")
        report = Report()
        report.add(Node.build("asker-host;<host>", "host", latest={"host_name": "asker-host"}))
        sender.send_until(report, lambda: "asker" in {p["id"] for p in app.get("/api/probes")})
        # A delta on a message the app never had: refused, and the probe is asked for a full report.
        lost = wire.Envelope("asker", "asker-host", 1000, time.time(), Report(), "test", full=False, base_seq=999)
        sender.send_raw(wire.encode(lost))
        asker.receive(rpc.FULL_REPORT)
    finally:
        sender.close()
        asker.close()
