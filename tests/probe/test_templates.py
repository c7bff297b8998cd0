"""What a real probe sends of its templates: all of them, and none again in a delta that changes no
template, also in the message a Docker event wakes (built from only some of the reporters)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from scope_common import ids
from scope_common.controls import HOST_EXEC, STOP
from scope_common.delta import ProbeNodes
from scope_common.report import CONTAINER, HOST, PROCESS
from scope_common.templates import CONTAINER_TEMPLATES, HOST_TEMPLATES, PROCESS_TEMPLATES
from tests.fixtures.docker import Containers
from tests.fixtures.ports import free_port
from tests.fixtures.scope import ScopeProcess, start_probe
from tests.probe.test_main import _receive, _subscriber


@pytest.fixture
def subscriber() -> Iterator[tuple[zmq.Socket[bytes], int]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    port = free_port()
    try:
        yield _subscriber(context, port), port
    finally:
        context.destroy(linger=0)


def test_the_probe_sends_its_templates_in_full_reports_and_again_only_when_they_change(
    subscriber: tuple[zmq.Socket[bytes], int], containers: Containers
) -> None:
    socket, port = subscriber
    running = ids.container_id(containers.run("sleep 300", name="templated").id)
    extra = ["--publish-interval=1h", "--full-report-interval=10h"]
    probe: ScopeProcess = start_probe([f"127.0.0.1:{port}"], hostname="templates-host", extra=extra)
    receiver = ProbeNodes()
    try:
        # The first report may come before the probe's mirror of the engine has the container.
        while (CONTAINER, running) not in receiver.nodes:
            (envelope,) = _receive(socket, 1)
            assert not receiver.apply(envelope).refused
        templates = receiver.report()
        assert templates.templates(CONTAINER).metadata == CONTAINER_TEMPLATES.metadata
        assert templates.templates(CONTAINER).metrics == CONTAINER_TEMPLATES.metrics
        assert STOP in templates.templates(CONTAINER).controls, "the buttons of the controls it offers"
        assert templates.templates(HOST).metadata == HOST_TEMPLATES.metadata
        assert HOST_EXEC in templates.templates(HOST).controls
        assert templates.templates(PROCESS) == PROCESS_TEMPLATES
        # A Docker event wakes the probe: its delta carries the new container, and no templates.
        started = ids.container_id(containers.run("sleep 300", name="templated-2").id)
        while (CONTAINER, started) not in receiver.nodes:
            (envelope,) = _receive(socket, 1)
            assert not receiver.apply(envelope).refused
        assert not envelope.full
        assert envelope.templates == {}
        assert receiver.report().templates(CONTAINER) == templates.templates(CONTAINER), "none went missing"
    finally:
        probe.terminate()
