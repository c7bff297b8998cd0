"""DockerReporter against the real engine: containers, images, events, cgroup metrics, a missing engine."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from scope_common import ids
from scope_common.report import (
    CONTAINER,
    CONTAINER_IMAGE,
    CONTAINER_IPS,
    CONTAINER_IPS_WITH_SCOPES,
    CONTAINER_NAME,
    CONTAINER_NETWORKS,
    CONTAINER_PID,
    CONTAINER_PORTS,
    CONTAINER_STARTED,
    CONTAINER_STATE,
    CONTAINER_STATE_HUMAN,
    CPU_USAGE,
    HOST_NODE_ID,
    IMAGE_ID,
    IMAGE_NAME,
    IMAGE_TAG,
    LABEL_PREFIX,
    MAX_SAMPLES,
    MEMORY_USAGE,
    Node,
)
from scope_probe.docker import DockerReporter, human_duration
from scope_probe.docker_engine import CLAIM_SLACK_SECONDS
from scope_probe.reporter import ProbeContext
from tests.fixtures.docker import Containers
from tests.fixtures.ports import free_port
from tests.fixtures.waiting import wait_for

HOST = "testhost"
DOCKER_SOCKET = "/var/run/docker.sock"


class Wakes:
    """Records wake calls with their monotonic times."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, name: str) -> None:
        assert name == "docker"
        self.times.append(time.monotonic())


def start_reporter(url: str = f"unix://{DOCKER_SOCKET}") -> tuple[DockerReporter, Wakes]:
    reporter = DockerReporter(ProbeContext(host_id=HOST, probe_id="probe", docker_url=url))
    wakes = Wakes()
    reporter.start(wakes)
    return reporter, wakes


@pytest.fixture
def reporter(docker_client: Any) -> Iterator[tuple[DockerReporter, Wakes]]:
    """A started reporter on the real engine, past its first resync."""
    started, wakes = start_reporter()
    try:
        wait_for(lambda: started.mirror.engine_up, what="the mirror in sync with the engine")
        yield started, wakes
    finally:
        started.stop()


def container_node(reporter: DockerReporter, container_id: str) -> Node | None:
    return reporter.report(time.time()).nodes(CONTAINER).get(ids.container_id(container_id))


def fact(reporter: DockerReporter, container_id: str, key: str) -> str | None:
    node = container_node(reporter, container_id)
    return None if node is None else node.get(key)


@pytest.mark.docker
def test_running_container_is_reported(reporter: tuple[DockerReporter, Wakes], containers: Containers) -> None:
    docker_reporter, _ = reporter
    host_port = free_port()
    web = containers.run(
        "httpd -f -p 80",
        name="web",
        labels={"app": "shop", "tier": "front"},
        ports={"80/tcp": ("127.0.0.1", host_port)},
    )
    ip = containers.ip(web)
    wait_for(lambda: docker_reporter.mirror.container_states().get(web.id) == "running", what="the container running")
    web.reload()

    node = container_node(docker_reporter, web.id)
    assert node is not None
    assert node.get(CONTAINER_NAME) == containers.prefix + "web"
    assert node.get(IMAGE_NAME) == containers.image
    assert node.get(IMAGE_ID) == web.image.id
    assert node.get(CONTAINER_STATE) == "running"
    assert (node.get(CONTAINER_STATE_HUMAN) or "").startswith("Up ")
    assert node.get(CONTAINER_PID) == str(web.attrs["State"]["Pid"])
    assert node.get(CONTAINER_STARTED) == web.attrs["State"]["StartedAt"]
    assert node.get(HOST_NODE_ID) == ids.host_id(HOST)
    assert node.get(LABEL_PREFIX + "app") == "shop"
    assert node.get(LABEL_PREFIX + "tier") == "front"
    assert node.sets[CONTAINER_IPS] == (ip,)
    assert node.sets[CONTAINER_IPS_WITH_SCOPES] == (f"{HOST};{ip}",), "a docker bridge IP is host-scoped"
    assert f"127.0.0.1:{host_port}->80/tcp" in node.sets[CONTAINER_PORTS]
    assert node.sets[CONTAINER_NETWORKS] == ("bridge",)
    assert node.parents["host"] == (ids.host_id(HOST),)
    assert node.parents["container_image"] == (ids.image_id(web.image.id),)

    image = docker_reporter.report(time.time()).nodes(CONTAINER_IMAGE)[ids.image_id(web.image.id)]
    repo, _, tag = containers.image.rpartition(":")
    assert image.get(IMAGE_NAME) == repo
    assert image.get(IMAGE_TAG) == tag
    assert image.parents["host"] == (ids.host_id(HOST),)


@pytest.mark.docker
def test_running_container_facts_stay_the_same_between_reports(
    reporter: tuple[DockerReporter, Wakes], containers: Containers
) -> None:
    """Nothing in a running container's node counts up with time, so delta reports leave it out when it
    did not change. Only the human-readable state ("Up 3 seconds") follows the clock."""
    docker_reporter, _ = reporter
    sleeper = containers.run("sleep 300", name="sleeper")
    wait_for(lambda: docker_reporter.mirror.container_states().get(sleeper.id) == "running", what="it running")
    now = time.time()
    nodes = [docker_reporter.report(when).nodes(CONTAINER)[ids.container_id(sleeper.id)] for when in (now, now + 5)]
    values = [{k: v for k, (_, v) in node.latest.items() if k != CONTAINER_STATE_HUMAN} for node in nodes]
    assert values[0] == values[1]


@pytest.mark.docker
def test_stopped_container_is_reported_exited(reporter: tuple[DockerReporter, Wakes], containers: Containers) -> None:
    docker_reporter, _ = reporter
    done = containers.run(["sh", "-c", "exit 3"], name="done")
    done.wait(timeout=30)

    def exited() -> Node | None:
        node = container_node(docker_reporter, done.id)
        return node if node is not None and node.get(CONTAINER_STATE) == "exited" else None

    wait_for(exited, what="the container reported exited")
    node = exited()
    assert node is not None
    assert (node.get(CONTAINER_STATE_HUMAN) or "").startswith("Exited (3) ")
    assert CONTAINER_PID not in node.latest
    assert not node.metrics


@pytest.mark.docker
def test_wake_follows_docker_run_within_seconds(reporter: tuple[DockerReporter, Wakes], containers: Containers) -> None:
    docker_reporter, wakes = reporter
    before = len(wakes.times)
    sleeper = containers.run("sleep 300", name="sleeper")
    returned = time.monotonic()

    def woken_with_it_running() -> bool:
        if len(wakes.times) == before:
            return False
        node = container_node(docker_reporter, sleeper.id)
        return node is not None and node.get(CONTAINER_STATE) == "running"

    wait_for(woken_with_it_running, timeout=2.0, what="a wake with the container running")
    assert wakes.times[before] - returned < 2.0

    # Pausing, renaming and removing are events too, each followed by a report.
    sleeper.pause()
    wait_for(lambda: fact(docker_reporter, sleeper.id, CONTAINER_STATE) == "paused", what="paused")
    node = container_node(docker_reporter, sleeper.id)
    assert node is not None and (node.get(CONTAINER_STATE_HUMAN) or "").endswith("(Paused)")
    sleeper.unpause()
    sleeper.rename(containers.prefix + "renamed")
    wait_for(
        lambda: fact(docker_reporter, sleeper.id, CONTAINER_NAME) == containers.prefix + "renamed",
        what="the new name",
    )
    count = len(wakes.times)
    sleeper.remove(force=True)
    wait_for(lambda: container_node(docker_reporter, sleeper.id) is None, timeout=2.0, what="removal")
    assert len(wakes.times) > count


@pytest.mark.docker
def test_cpu_and_memory_from_cgroups(reporter: tuple[DockerReporter, Wakes], containers: Containers) -> None:
    docker_reporter, _ = reporter
    busy = containers.run(["sh", "-c", "while :; do :; done"], name="busy")
    wait_for(lambda: docker_reporter.mirror.container_states().get(busy.id) == "running", what="the container running")

    node = None
    for _ in range(4):
        node = container_node(docker_reporter, busy.id)
        time.sleep(0.6)
    node = container_node(docker_reporter, busy.id)
    assert node is not None
    cpu = node.metrics[CPU_USAGE]
    assert len(cpu.samples) >= 3
    assert max(s.value for s in cpu.samples) > 20.0, cpu
    assert cpu.max >= 100.0
    memory = node.metrics[MEMORY_USAGE]
    last = memory.last
    assert last is not None and last.value > 0
    assert memory.max > 0

    # History is kept per container and bounded.
    for _ in range(MAX_SAMPLES + 3):
        docker_reporter.report(time.time())
    node = container_node(docker_reporter, busy.id)
    assert node is not None and len(node.metrics[MEMORY_USAGE].samples) <= MAX_SAMPLES


def test_no_engine_reports_nothing_and_logs_once(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="scope_probe.docker_engine")
    docker_reporter, _ = start_reporter(f"unix://{tmp_path}/missing.sock")
    try:
        wait_for(lambda: docker_reporter.mirror.engine_up is False, what="the engine to be found missing")
        for _ in range(20):
            report = docker_reporter.report(time.time())
            assert not report.nodes(CONTAINER) and not report.nodes(CONTAINER_IMAGE)
            time.sleep(0.1)
    finally:
        docker_reporter.stop()
    missing = [r for r in caplog.records if "no engine at" in r.getMessage()]
    assert len(missing) == 1, [r.getMessage() for r in caplog.records]
    assert missing[0].exc_info is None, "no traceback"


class SocketProxy:
    """Forwards connections on a unix socket to the Docker socket: an engine that can come and go."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(DOCKER_SOCKET)
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Close everything: the engine is gone, its socket too."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


@pytest.mark.docker
def test_engine_appearing_and_going_away(
    containers: Containers, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="scope_probe.docker_engine")
    sleeper = containers.run("sleep 300", name="sleeper")
    proxy = SocketProxy(str(tmp_path / "docker.sock"))
    docker_reporter, _ = start_reporter(f"unix://{proxy.path}")
    try:
        wait_for(lambda: docker_reporter.mirror.engine_up is False, what="the engine to be found missing")
        assert not docker_reporter.report(time.time()).nodes(CONTAINER)

        proxy.start()
        wait_for(lambda: docker_reporter.mirror.engine_up, timeout=15, what="the engine picked up")
        assert sleeper.id in docker_reporter.mirror.container_states()

        proxy.stop()
        wait_for(lambda: not docker_reporter.mirror.container_states(), timeout=15, what="the containers dropped")
        assert not docker_reporter.report(time.time()).nodes(CONTAINER)

        proxy.start()
        wait_for(lambda: sleeper.id in docker_reporter.mirror.container_states(), timeout=15, what="the engine back")
    finally:
        docker_reporter.stop()
        proxy.stop()
    missing = [r for r in caplog.records if "no engine at" in r.getMessage()]
    assert len(missing) == 2, "one line per outage: " + "; ".join(r.getMessage() for r in caplog.records)


def test_human_duration_words_it_like_docker() -> None:
    assert human_duration(0.5) == "Less than a second"
    assert human_duration(1) == "1 second"
    assert human_duration(59) == "59 seconds"
    assert human_duration(60) == "About a minute"
    assert human_duration(3 * 60 + 5) == "3 minutes"
    assert human_duration(3600) == "About an hour"
    assert human_duration(5 * 3600) == "5 hours"
    assert human_duration(3 * 86400) == "3 days"
    assert human_duration(20 * 86400) == "2 weeks"
    assert human_duration(90 * 86400) == "3 months"
    assert human_duration(800 * 86400) == "2 years"


@pytest.mark.docker
def test_addresses_are_claimed_while_held(reporter: tuple[DockerReporter, Wakes], containers: Containers) -> None:
    """Start, network connect and disconnect, stop and removal each move the container's address claims."""
    claims = reporter[0].mirror.claims
    sleeper = containers.run("sleep 300", name="sleeper")
    ip = containers.ip(sleeper)
    wait_for(lambda: claims.holder(ip) == sleeper.id, what="the address claimed")
    claim = claims.owner(ip, time.time())
    assert claim is not None
    started = datetime.fromisoformat(sleeper.attrs["State"]["StartedAt"]).timestamp()
    assert claim.start == started - CLAIM_SLACK_SECONDS, "claimed from (just before) the container's start"

    network = containers.client.networks.create(containers.prefix + "net")
    try:
        network.connect(sleeper)
        extra = containers.ip(sleeper, network.name)
        wait_for(lambda: claims.holder(extra) == sleeper.id, what="the address on the connected network claimed")
        extra_claim = claims.owner(extra, time.time())
        assert extra_claim is not None and extra_claim.start > started, "claimed from the connection, not the start"
        network.disconnect(sleeper)
        wait_for(lambda: claims.holder(extra) is None, what="the disconnected address let go")
    finally:
        network.remove()

    sleeper.kill()
    wait_for(lambda: claims.holder(ip) is None, what="the address let go at the stop")
    sleeper.reload()
    assert claim.end == datetime.fromisoformat(sleeper.attrs["State"]["FinishedAt"]).timestamp()
    assert not claims.removed(sleeper.id)
    sleeper.remove()
    wait_for(lambda: claims.removed(sleeper.id), what="the removal noted")
