"""The Docker engine mirror: containers and their images, kept current from the engine's event stream.

Asking the engine on every spy tick would cost dockerd a list and an inspect per container per second.
Instead a background thread follows the event stream and re-inspects a container only when an event says
it changed, with a cheap list every RESYNC_SECONDS as a safety net and a full re-inspection whenever the
stream breaks. The reporter (docker.py) only reads snapshots of this mirror and never waits on the engine.

The mirror also records in `claims` which container held which address when (see claims.py): only here
are the event times known that bound when an address changed hands.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker
import docker.errors

from scope_common.report import (
    CONTAINER_COMMAND,
    CONTAINER_CREATED,
    CONTAINER_HOSTNAME,
    CONTAINER_ID,
    CONTAINER_NAME,
    CONTAINER_NETWORK_MODE,
    CONTAINER_PID,
    CONTAINER_RESTART_COUNT,
    CONTAINER_STARTED,
    CONTAINER_STATE,
    IMAGE_ID,
    IMAGE_NAME,
    LABEL_PREFIX,
)
from scope_common.supervise import Supervisor
from scope_probe.claims import AddressClaims

log = logging.getLogger(__name__)

#: Container event actions after which the container is inspected again (or dropped, for destroy).
#: Others (exec_*, attach, top, ...) change nothing the report shows.
CHANGE_ACTIONS = frozenset(
    {
        "create",
        "start",
        "die",
        "destroy",
        "pause",
        "unpause",
        "rename",
        "restart",
        "kill",
        "stop",
        "update",
        "oom",
        "health_status",
    }
)
#: Network event actions that change a container's addresses; the container is inspected again.
NETWORK_ACTIONS = frozenset({"connect", "disconnect"})
#: A container's process runs (and may connect) a moment before the engine stamps its start time, and
#: its addresses were given out before that: its claims start this much earlier. Safe, since a claim
#: never starts before the end of the address's previous one (claims.py).
CLAIM_SLACK_SECONDS = 1.0
#: The list of containers is compared with the mirror this often, in case an event went missing.
RESYNC_SECONDS = 10.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
#: Events waiting for the worker; beyond this a full resync replaces them.
MAX_PENDING_EVENTS = 10_000
API_TIMEOUT = 10.0


class _Marker(enum.Enum):
    RESYNC = "resync"
    STOP = "stop"


#: Work for the worker thread: (action, container id, event time) from the event stream, or a marker.
_Item = tuple[str, str, float] | _Marker


@dataclass(slots=True)
class _Pending:
    """The events of one container since the worker last looked at it: the last action, and the times
    of the first and last event (wall clock), which bound when its addresses changed."""

    action: str
    first: float
    last: float


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    """What the report shows of one container, as of its last inspection. Compared to spot changes.

    `latest` holds the facts that go into the container's node as they are; the rest feed what the
    reporter derives (the human-readable state, metrics) and the address claims."""

    id: str
    image_id: str
    pid: int
    running: bool
    paused: bool
    restarting: bool
    dead: bool
    removing: bool
    exit_code: int
    health: str | None
    started: float | None
    finished: float | None
    latest: Mapping[str, str]
    ips: tuple[str, ...]
    ports: tuple[str, ...]
    networks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image as the engine lists it: what its node shows."""

    id: str
    name: str | None
    tag: str | None
    size: int | None
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """The mirror at one moment: every container, and the images the engine listed or was asked about."""

    containers: list[ContainerRecord]
    images: dict[str, ImageRecord]


class EngineMirror:
    """Containers and images as the engine at `docker_url` has them, followed by two threads once started.

    The event thread only reads the stream and queues what changed; the worker thread is the only one
    asking the API for state, so a slow inspect never makes the stream fall behind.
    """

    def __init__(
        self,
        docker_url: str,
        claims: AddressClaims,
        *,
        resync_seconds: float = RESYNC_SECONDS,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.docker_url = docker_url
        self.claims = claims
        self._resync_seconds = resync_seconds

        self._lock = threading.Lock()  # guards the mirror and the engine state below
        self._containers: dict[str, ContainerRecord] = {}
        self._images: dict[str, ImageRecord] = {}
        self._engine_up: bool | None = None
        self._stream: Any = None
        self._overflowed = False

        self._queue: queue.Queue[_Item] = queue.Queue(MAX_PENDING_EVENTS)
        self._fingerprints: dict[str, str] = {}  # worker thread only
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._on_change: Callable[[], None] | None = None
        self._supervisor = supervisor or Supervisor(log)

    def start(self, on_change: Callable[[], None]) -> None:
        """Follow the engine's events and keep the mirror current; `on_change` is called on every change."""
        self._on_change = on_change
        self._threads = [
            self._supervisor.start_thread("docker-events", self._follow, self._stopping),
            self._supervisor.start_thread("docker-worker", self._work_from_scratch, self._stopping),
        ]

    def stop(self) -> None:
        self._stopping.set()
        self._request(_Marker.STOP)
        with self._lock:
            stream = self._stream
        if stream is not None:
            with contextlib.suppress(docker.errors.DockerException, OSError, AttributeError):
                stream.close()  # unblocks the event thread's read
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def engine_up(self) -> bool | None:
        """True once the mirror is in sync with the engine, False while it does not answer, None before
        the first attempt."""
        with self._lock:
            return self._engine_up

    def container_states(self) -> dict[str, str]:
        """Container id -> state (running, exited...) of every container in the mirror."""
        with self._lock:
            return {cid: c.latest[CONTAINER_STATE] for cid, c in self._containers.items()}

    def snapshot(self) -> EngineSnapshot:
        """A copy of the mirror, for the reporter to build nodes from without holding the lock."""
        with self._lock:
            return EngineSnapshot(list(self._containers.values()), dict(self._images))

    # ------------------------------------------------------------------------------------- threads

    def _request(self, item: _Item) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self._overflowed = True

    def _note_engine(self, up: bool, error: BaseException | None = None) -> bool:
        """Record whether the engine answers; log transitions only. True when it changed."""
        with self._lock:
            if self._engine_up == up:
                return False
            was, self._engine_up = self._engine_up, up
        if not up:
            log.warning("docker: no engine at %s, retrying (%s)", self.docker_url, _describe(error))
        elif was is False:
            log.info("docker: engine at %s answers again", self.docker_url)
        else:
            log.info("docker: following engine at %s", self.docker_url)
        return True

    def _follow(self) -> None:
        """Event thread: read the stream, queue what changed; reconnect with backoff when it breaks."""
        backoff = BACKOFF_FIRST
        while not self._stopping.is_set():
            try:
                client = docker.DockerClient(base_url=self.docker_url, timeout=API_TIMEOUT)
            except (docker.errors.DockerException, OSError) as exc:
                if self._note_engine(False, exc):
                    self._request(_Marker.RESYNC)  # so the worker drops what it knew
            else:
                try:
                    stream = client.events(decode=True, filters={"type": ["container", "network"]})
                    with self._lock:
                        self._stream = stream
                    if self._stopping.is_set():
                        break
                    # Only now that no event can be missed is the mirror rebuilt.
                    self._request(_Marker.RESYNC)
                    backoff = BACKOFF_FIRST
                    for event in stream:
                        self._on_event(event)
                    if not self._stopping.is_set():
                        log.info("docker: event stream from %s ended; reconnecting", self.docker_url)
                except (docker.errors.DockerException, OSError) as exc:
                    log.info("docker: event stream from %s failed (%s)", self.docker_url, _describe(exc))
                    self._request(_Marker.RESYNC)
                finally:
                    with self._lock:
                        self._stream = None
                    client.close()
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _on_event(self, event: Mapping[str, Any]) -> None:
        action = str(event.get("Action") or event.get("status") or "").split(":", 1)[0]
        actor: Mapping[str, Any] = event.get("Actor") or {}
        if event.get("Type") == "network":
            if action not in NETWORK_ACTIONS:
                return
            container = (actor.get("Attributes") or {}).get("container")
        elif action in CHANGE_ACTIONS:
            container = actor.get("ID") or event.get("id")
        else:
            return
        if isinstance(container, str):
            self._request((action, container, _event_time(event)))

    def _work_from_scratch(self) -> None:
        """The worker, resynchronising first: one restarted after a failure lost the events it was
        applying, and the mirror may be half-updated."""
        self._request(_Marker.RESYNC)
        self._work()

    def _work(self) -> None:
        """Worker thread: the only one calling the API for state; applies events and resyncs."""
        client: Any = None
        next_resync = time.monotonic() + self._resync_seconds
        try:
            while not self._stopping.is_set():
                batch: list[_Item] = []
                try:
                    batch.append(self._queue.get(timeout=max(0.0, next_resync - time.monotonic())))
                    while True:
                        batch.append(self._queue.get_nowait())
                except queue.Empty:
                    pass
                if _Marker.STOP in batch or self._stopping.is_set():
                    return
                with self._lock:
                    overflowed, self._overflowed = self._overflowed, False
                full = overflowed or _Marker.RESYNC in batch
                periodic = time.monotonic() >= next_resync
                events: dict[str, _Pending] = {}
                for item in batch:
                    if isinstance(item, tuple):
                        action, cid, when = item
                        pending = events.get(cid)
                        if pending is None:
                            events[cid] = _Pending(action, when, when)
                        else:
                            pending.action, pending.last = action, max(pending.last, when)
                # A client kept from before an engine restart may fail once on a dead connection: the
                # second attempt, with a new client, tells that apart from an engine that is gone.
                for attempt in range(2):
                    try:
                        if client is None:
                            client = docker.DockerClient(base_url=self.docker_url, timeout=API_TIMEOUT)
                        changed = self._resync(client, full) if full or periodic else False
                        changed = self._apply_events(client, events) or changed
                        self._note_engine(True)
                        break
                    except (docker.errors.DockerException, OSError) as exc:
                        if client is not None:
                            client.close()
                            client = None
                        if attempt == 1:
                            self._note_engine(False, exc)
                            changed = self._forget_all()
                if full or periodic:
                    next_resync = time.monotonic() + self._resync_seconds
                if changed and self._on_change is not None:
                    self._on_change()
        finally:
            # Also when the worker fails: its restart makes a new client.
            if client is not None:
                client.close()

    def _forget_all(self) -> bool:
        self._fingerprints.clear()
        with self._lock:
            had = bool(self._containers)
            self._containers.clear()
            self._images.clear()
        return had

    def _resync(self, client: Any, full: bool) -> bool:
        """Bring the mirror in line with the engine's list. Only changed containers are inspected,
        unless `full` (after the stream broke: events may have been missed)."""
        summaries: list[dict[str, Any]] = client.api.containers(all=True)
        images = {i["Id"]: _image_from_summary(i) for i in client.api.images()}
        with self._lock:
            self._images = images
            known = set(self._containers)
        changed = False
        listed: set[str] = set()
        for summary in summaries:
            cid = summary["Id"]
            listed.add(cid)
            fingerprint = _fingerprint(summary)
            if not full and cid in known and self._fingerprints.get(cid) == fingerprint:
                continue
            changed = self._inspect(client, cid) or changed
            self._fingerprints[cid] = fingerprint
        for cid in set(self._fingerprints) - listed:
            del self._fingerprints[cid]
        now = time.time()
        with self._lock:
            gone = set(self._containers) - listed
            for cid in gone:
                del self._containers[cid]
        # Also those the mirror had forgotten (while the engine did not answer) but that held addresses.
        for cid in gone | (self.claims.holders() - listed):
            self.claims.remove(cid, now)
        return changed or bool(gone)

    def _apply_events(self, client: Any, events: Mapping[str, _Pending]) -> bool:
        changed = False
        for cid, pending in events.items():
            # Invalidate the list fingerprint: the next resync inspects it again, in case the list saw
            # it in a state between two events.
            self._fingerprints.pop(cid, None)
            if pending.action == "destroy":
                self.claims.remove(cid, pending.last)
                with self._lock:
                    changed = self._containers.pop(cid, None) is not None or changed
            else:
                changed = self._inspect(client, cid, pending) or changed
        return changed

    def _inspect(self, client: Any, cid: str, pending: _Pending | None = None) -> bool:
        """Inspect one container into the mirror (dropping it if gone); True when that changed it.

        `pending`: the events that asked for it; None for a resync's look."""
        try:
            info = client.api.inspect_container(cid)
        except docker.errors.NotFound:
            self.claims.remove(cid, pending.last if pending is not None else time.time())
            with self._lock:
                return self._containers.pop(cid, None) is not None
        container = _container_from_inspect(info)
        with self._lock:
            need_image = container.image_id not in self._images
        if need_image:
            try:
                image = _image_from_inspect(client.api.inspect_image(container.image_id))
            except docker.errors.NotFound:
                image = None
            if image is not None:
                with self._lock:
                    self._images[image.id] = image
        with self._lock:
            old = self._containers.get(cid)
            if old == container:
                return False
            self._containers[cid] = container
        now = time.time()
        self._update_claims(old, container, pending or _Pending("", now, now))
        return True

    def _update_claims(self, old: ContainerRecord | None, new: ContainerRecord, pending: _Pending) -> None:
        """Record the addresses `new` gained and lost since `old` (None: first seen).

        A container that (re)started claims its addresses from its start time (less CLAIM_SLACK_SECONDS);
        one connected to a network while running, from the event. A stopped container let go of them when it exited; one
        disconnected, at the latest event (an end too early would leave its last connections to no one,
        and so to whoever the app finds holding the address)."""
        restarted = old is None or old.started != new.started
        kept = set() if restarted or old is None else set(old.ips)
        if old is not None:
            if not new.running and new.finished is not None:
                end = new.finished
            elif restarted and new.started is not None:
                end = new.started if new.finished is None else min(new.finished, new.started)
            else:
                end = pending.last
            for ip in set(old.ips) - (set(new.ips) & kept):
                self.claims.release(ip, new.id, end)
        start = new.started - CLAIM_SLACK_SECONDS if restarted and new.started is not None else pending.first
        for ip in set(new.ips) - kept:
            self.claims.claim(ip, new.id, start)


# ------------------------------------------------------------------------------------------ parsing


def _container_from_inspect(info: Mapping[str, Any]) -> ContainerRecord:
    state: Mapping[str, Any] = info.get("State") or {}
    config: Mapping[str, Any] = info.get("Config") or {}
    host_config: Mapping[str, Any] = info.get("HostConfig") or {}
    settings: Mapping[str, Any] = info.get("NetworkSettings") or {}
    networks: Mapping[str, Any] = settings.get("Networks") or {}
    running = bool(state.get("Running"))
    pid = int(state.get("Pid") or 0)
    hostname = config.get("Hostname") or ""
    if config.get("Domainname"):
        hostname = f"{hostname}.{config['Domainname']}"
    command = " ".join([info.get("Path") or "", *(info.get("Args") or [])]).strip()
    started_text = state.get("StartedAt") or ""
    started = _parse_time(started_text)
    latest: dict[str, str] = {
        CONTAINER_ID: info["Id"],
        CONTAINER_NAME: str(info.get("Name") or "").lstrip("/"),
        IMAGE_ID: info.get("Image") or "",
        IMAGE_NAME: config.get("Image") or "",
        CONTAINER_COMMAND: command,
        CONTAINER_CREATED: info.get("Created") or "",
        CONTAINER_HOSTNAME: hostname,
        CONTAINER_STATE: state.get("Status") or "",
        CONTAINER_RESTART_COUNT: str(info.get("RestartCount") or 0),
        CONTAINER_NETWORK_MODE: host_config.get("NetworkMode") or "",
    }
    if started is not None:
        latest[CONTAINER_STARTED] = started_text
    if running and pid > 0:
        latest[CONTAINER_PID] = str(pid)
    for key, value in (config.get("Labels") or {}).items():
        latest[LABEL_PREFIX + key] = str(value)
    ips = [
        ip
        for net in networks.values()
        for ip in ((net or {}).get("IPAddress"), (net or {}).get("GlobalIPv6Address"))
        if ip
    ]
    return ContainerRecord(
        id=info["Id"],
        image_id=info.get("Image") or "",
        pid=pid if running else 0,
        running=running,
        paused=bool(state.get("Paused")),
        restarting=bool(state.get("Restarting")),
        dead=bool(state.get("Dead")),
        removing=bool(state.get("RemovalInProgress")),
        exit_code=int(state.get("ExitCode") or 0),
        health=((state.get("Health") or {}).get("Status")) or None,
        started=started,
        finished=_parse_time(state.get("FinishedAt") or ""),
        latest=latest,
        ips=tuple(sorted(set(ips))),
        ports=_ports(settings.get("Ports") or {}, config.get("ExposedPorts") or {}),
        networks=tuple(sorted(networks)),
    )


def _ports(bound: Mapping[str, Any], exposed: Mapping[str, Any]) -> tuple[str, ...]:
    """`hostIP:hostPort->port/proto` for published ports, `port/proto` for exposed-only ones."""
    ports: set[str] = set()
    for port, bindings in bound.items():
        if not bindings:
            ports.add(port)
        for binding in bindings or ():
            ports.add(f"{binding.get('HostIp', '')}:{binding.get('HostPort', '')}->{port}")
    ports.update(port for port in exposed if port not in bound)
    return tuple(sorted(ports))


def _image_from_summary(summary: Mapping[str, Any]) -> ImageRecord:
    name, tag = _repo_tag(summary.get("RepoTags") or [])
    return ImageRecord(summary["Id"], name, tag, summary.get("Size"), dict(summary.get("Labels") or {}))


def _image_from_inspect(info: Mapping[str, Any]) -> ImageRecord:
    name, tag = _repo_tag(info.get("RepoTags") or [])
    labels = (info.get("Config") or {}).get("Labels") or {}
    return ImageRecord(info["Id"], name, tag, info.get("Size"), dict(labels))


def _repo_tag(repo_tags: Iterable[str]) -> tuple[str | None, str | None]:
    """(repository, tag) of an image's first real tag; a registry's `host:port/` is not a tag."""
    for repo_tag in repo_tags:
        if repo_tag == "<none>:<none>":
            continue
        repo, sep, tag = repo_tag.rpartition(":")
        if sep and "/" not in tag:
            return repo, tag
        return repo_tag, None
    return None, None


def _fingerprint(summary: Mapping[str, Any]) -> str:
    """What in a list entry would show a change the mirror missed. Not `Status`: it says "Up 3 minutes"."""
    ports = sorted(repr(p) for p in summary.get("Ports") or ())
    return repr(
        (
            summary.get("State"),
            summary.get("Names"),
            summary.get("ImageID"),
            summary.get("Labels"),
            ports,
            summary.get("NetworkSettings"),
        )
    )


def _parse_time(text: str) -> float | None:
    """Epoch seconds of one of Docker's RFC 3339 times; None for its zero time or nonsense."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return None if parsed.year <= 1 else parsed.timestamp()


def _event_time(event: Mapping[str, Any]) -> float:
    """When the engine says an event happened (wall clock); now if it does not say."""
    nanos = event.get("timeNano")
    if isinstance(nanos, int) and nanos > 0:
        return nanos / 1e9
    seconds = event.get("time")
    return float(seconds) if isinstance(seconds, int | float) and seconds > 0 else time.time()


def _describe(error: BaseException | None) -> str:
    return "unknown error" if error is None else f"{type(error).__name__}: {error}"
