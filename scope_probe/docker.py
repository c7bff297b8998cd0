"""The Docker reporter: containers and their images, mirrored from the engine's event stream.

Asking the engine on every spy tick would cost dockerd a list and an inspect per container per second,
and its stats API a stream per container (8.5 % of a core with 50 containers). Instead a background
thread follows the event stream and re-inspects a container only when an event says it changed, with a
cheap list every RESYNC_SECONDS as a safety net and a full re-inspection whenever the stream breaks.
`report()` then only builds nodes from that mirror and reads each running container's cgroup files for
its CPU and memory figures, which are the same numbers the stats API would have computed.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker
import docker.errors
import psutil

from scope_common import ids
from scope_common.report import (
    CONTAINER,
    CONTAINER_COMMAND,
    CONTAINER_CREATED,
    CONTAINER_HOSTNAME,
    CONTAINER_ID,
    CONTAINER_IMAGE,
    CONTAINER_IPS,
    CONTAINER_IPS_WITH_SCOPES,
    CONTAINER_NAME,
    CONTAINER_NETWORK_MODE,
    CONTAINER_NETWORKS,
    CONTAINER_PID,
    CONTAINER_PORTS,
    CONTAINER_RESTART_COUNT,
    CONTAINER_STARTED,
    CONTAINER_STATE,
    CONTAINER_STATE_HUMAN,
    CONTAINER_UPTIME,
    CPU_USAGE,
    HOST,
    HOST_NODE_ID,
    IMAGE_ID,
    IMAGE_NAME,
    IMAGE_SIZE,
    IMAGE_TAG,
    LABEL_PREFIX,
    MEMORY_USAGE,
    Metric,
    Node,
    Report,
)
from scope_probe.addresses import AddressScopes
from scope_probe.cgroup import CgroupFiles, CgroupLocator, read_cpu_usage_ns, read_memory
from scope_probe.claims import AddressClaims
from scope_probe.history import MetricHistory
from scope_probe.reporter import ProbeContext, Reporter, Wake

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
#: A report requested by a wake soon after a tick reuses the samples of the tick: CPU percentages
#: over a few milliseconds are noise.
MIN_SAMPLE_INTERVAL = 0.5
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
class _Container:
    """What the report shows of one container, as of its last inspection. Compared to spot changes."""

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
class _Image:
    id: str
    name: str | None
    tag: str | None
    size: int | None
    labels: Mapping[str, str]


@dataclass(slots=True)
class _History:
    """Where one running container's cgroup files are, and its last readings (samples: MetricHistory)."""

    pid: int
    files: CgroupFiles | None
    last_cpu: tuple[int, float] | None = None
    last_read: float = float("-inf")
    limit: int | None = None


class DockerReporter(Reporter):
    """Containers (running and stopped) and the images they run, with CPU and memory from cgroups.

    It also records in `claims` which container held which address when (see claims.py), for the
    conntrack reporter to attribute connections by the time it saw them.
    """

    name = "docker"
    samples_every_tick = True

    def __init__(
        self,
        ctx: ProbeContext,
        scopes: AddressScopes | None = None,
        *,
        resync_seconds: float = RESYNC_SECONDS,
        claims: AddressClaims | None = None,
    ) -> None:
        self._ctx = ctx
        self.claims = claims or AddressClaims()
        self._scopes = scopes or AddressScopes(ctx.host_id)
        self._resync_seconds = resync_seconds
        self._host_node = ids.host_id(ctx.host_id)
        self._cgroups = CgroupLocator(ctx.cgroup_root, ctx.proc_root)
        self._host_memory = psutil.virtual_memory().total

        self._lock = threading.Lock()  # guards the mirror and the engine state below
        self._containers: dict[str, _Container] = {}
        self._images: dict[str, _Image] = {}
        self._engine_up: bool | None = None
        self._stream: Any = None
        self._overflowed = False

        self._report_lock = threading.Lock()  # guards the metric histories and scoped IPs
        self._histories: dict[str, _History] = {}
        self._samples = MetricHistory()
        self._cgroup_missing_logged = False
        # `scope;ip` of container IPs, valid while the host's bridge networks stay the same.
        self._scoped: dict[str, str] = {}
        self._scoped_bridges: tuple[object, ...] = ()

        self._queue: queue.Queue[_Item] = queue.Queue(MAX_PENDING_EVENTS)
        self._fingerprints: dict[str, str] = {}  # worker thread only
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wake: Wake | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self, wake: Wake) -> None:
        """Follow the engine's events and keep the mirror current; `wake` is called on every change."""
        self._wake = wake
        self._threads = [
            threading.Thread(target=self._follow, name="docker-events", daemon=True),
            threading.Thread(target=self._work, name="docker-worker", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

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

    # --------------------------------------------------------------------------------------- report

    def report(self, now: float) -> Report:
        """Nodes from the mirror, stamped `now`: each report is a full snapshot replacing the last one.

        The mirror follows the engine's events, so every fact in it holds at `now` as far as anyone can
        tell; only the uptime and the human-readable state are derived from `now` itself.
        """
        with self._lock:
            containers = list(self._containers.values())
            images = dict(self._images)
        report = Report()
        with self._report_lock:
            metrics = self._sample_metrics(containers, now)
            scoped = self._scope_ips(containers)
        used_images: set[str] = set()
        for c in containers:
            used_images.add(c.image_id)
            latest: dict[str, object] = dict(c.latest)
            latest[CONTAINER_STATE_HUMAN] = _human_state(c, now)
            if c.running and c.started is not None:
                latest[CONTAINER_UPTIME] = max(0, int(now - c.started))
            report.add(
                Node.build(
                    ids.container_id(c.id),
                    CONTAINER,
                    timestamp=now,
                    latest=latest,
                    sets={
                        CONTAINER_IPS: c.ips,
                        CONTAINER_IPS_WITH_SCOPES: [scoped[ip] for ip in c.ips],
                        CONTAINER_PORTS: c.ports,
                        CONTAINER_NETWORKS: c.networks,
                    },
                    metrics=metrics.get(c.id),
                    parents={HOST: [self._host_node], CONTAINER_IMAGE: [ids.image_id(c.image_id)]},
                )
            )
        for image_id in used_images:
            image = images.get(image_id)
            latest = {IMAGE_ID: image_id, HOST_NODE_ID: self._host_node}
            if image is not None:
                latest.update({IMAGE_NAME: image.name, IMAGE_TAG: image.tag, IMAGE_SIZE: image.size})
                latest.update({LABEL_PREFIX + k: v for k, v in image.labels.items()})
            report.add(
                Node.build(
                    ids.image_id(image_id),
                    CONTAINER_IMAGE,
                    timestamp=now,
                    latest=latest,
                    parents={HOST: [self._host_node]},
                )
            )
        return report

    def _scope_ips(self, containers: Iterable[_Container]) -> dict[str, str]:
        """`scope;ip` for every container IP, remembered until the bridges change (parsing IPs and
        matching networks for every container every tick adds up)."""
        bridges = self._scopes.bridge_networks()
        known = self._scoped if bridges == self._scoped_bridges else {}
        self._scoped_bridges = bridges
        self._scoped = {
            ip: known.get(ip) or ids.scoped_address(self._scopes.scope(ip), ip) for c in containers for ip in c.ips
        }
        return self._scoped

    def _sample_metrics(self, containers: Iterable[_Container], now: float) -> dict[str, dict[str, Metric]]:
        """CPU and memory of every running container from its cgroup files, with recent history."""
        mono = time.monotonic()
        result: dict[str, dict[str, Metric]] = {}
        live: set[str] = set()
        for c in containers:
            if not c.running or c.pid <= 0:
                continue
            live.add(c.id)
            history = self._histories.get(c.id)
            if history is None or history.pid != c.pid:
                history = self._histories[c.id] = _History(c.pid, None)
                self._samples.forget(c.id)
            if mono - history.last_read >= MIN_SAMPLE_INTERVAL:
                self._read_cgroup(c, history, now, mono)
            limit = history.limit if history.limit is not None else self._host_memory
            found = {
                CPU_USAGE: self._samples.metric(c.id, CPU_USAGE, 100.0),
                MEMORY_USAGE: self._samples.metric(c.id, MEMORY_USAGE, float(min(limit, self._host_memory))),
            }
            result[c.id] = {key: metric for key, metric in found.items() if metric is not None}
        for gone in set(self._histories) - live:
            del self._histories[gone]
        self._samples.forget_except(live)
        return result

    def _read_cgroup(self, c: _Container, history: _History, now: float, mono: float) -> None:
        history.last_read = mono
        if history.files is None:
            history.files = self._cgroups.find(c.pid, c.id)
            if history.files is None:
                if not _alive(self._ctx.proc_root, c.pid):
                    return  # it stopped since the mirror saw it running: its cgroup went with it
                if not self._cgroup_missing_logged:
                    self._cgroup_missing_logged = True
                    log.warning(
                        "docker: no cgroup files for container %s (pid %d) under %s: no CPU or memory figures",
                        c.id[:12],
                        c.pid,
                        self._ctx.cgroup_root,
                    )
                return
        usage = read_cpu_usage_ns(history.files)
        memory = read_memory(history.files)
        if usage is None or memory is None:
            history.files = None  # gone or moved (a restart makes a new cgroup): look again next time
            history.last_cpu = None
            return
        if history.last_cpu is not None:
            last_usage, last_mono = history.last_cpu
            if usage >= last_usage and mono > last_mono:
                cpu = 100.0 * (usage - last_usage) / ((mono - last_mono) * 1e9)
                self._samples.record(c.id, CPU_USAGE, now, cpu)
        history.last_cpu = (usage, mono)
        self._samples.record(c.id, MEMORY_USAGE, now, float(memory.usage))
        history.limit = memory.limit

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
            log.warning("docker: no engine at %s, retrying (%s)", self._ctx.docker_url, _describe(error))
        elif was is False:
            log.info("docker: engine at %s answers again", self._ctx.docker_url)
        else:
            log.info("docker: following engine at %s", self._ctx.docker_url)
        return True

    def _follow(self) -> None:
        """Event thread: read the stream, queue what changed; reconnect with backoff when it breaks."""
        backoff = BACKOFF_FIRST
        while not self._stopping.is_set():
            try:
                client = docker.DockerClient(base_url=self._ctx.docker_url, timeout=API_TIMEOUT)
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
                        log.info("docker: event stream from %s ended; reconnecting", self._ctx.docker_url)
                except (docker.errors.DockerException, OSError) as exc:
                    log.info("docker: event stream from %s failed (%s)", self._ctx.docker_url, _describe(exc))
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

    def _work(self) -> None:
        """Worker thread: the only one calling the API for state; applies events and resyncs."""
        client: Any = None
        next_resync = time.monotonic() + self._resync_seconds
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
                        client = docker.DockerClient(base_url=self._ctx.docker_url, timeout=API_TIMEOUT)
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
            if changed and self._wake is not None:
                self._wake(self.name)
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
        container = _container_from_inspect(info, self._host_node)
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

    def _update_claims(self, old: _Container | None, new: _Container, pending: _Pending) -> None:
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


def _container_from_inspect(info: Mapping[str, Any], host_node: str) -> _Container:
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
        HOST_NODE_ID: host_node,
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
    return _Container(
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


def _image_from_summary(summary: Mapping[str, Any]) -> _Image:
    name, tag = _repo_tag(summary.get("RepoTags") or [])
    return _Image(summary["Id"], name, tag, summary.get("Size"), dict(summary.get("Labels") or {}))


def _image_from_inspect(info: Mapping[str, Any]) -> _Image:
    name, tag = _repo_tag(info.get("RepoTags") or [])
    labels = (info.get("Config") or {}).get("Labels") or {}
    return _Image(info["Id"], name, tag, info.get("Size"), dict(labels))


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


def _human_state(c: _Container, now: float) -> str:
    """The state as `docker ps` words it: "Up 3 minutes", "Exited (0) 2 minutes ago", ..."""
    if c.running:
        up = human_duration(now - c.started) if c.started is not None else "Less than a second"
        if c.paused:
            return f"Up {up} (Paused)"
        if c.restarting:
            ago = human_duration(now - c.finished) if c.finished is not None else "Less than a second"
            return f"Restarting ({c.exit_code}) {ago} ago"
        return f"Up {up} ({c.health})" if c.health else f"Up {up}"
    if c.removing:
        return "Removal In Progress"
    if c.dead:
        return "Dead"
    if c.started is None:
        return "Created"
    if c.finished is None:
        return ""
    return f"Exited ({c.exit_code}) {human_duration(now - c.finished)} ago"


def human_duration(seconds: float) -> str:
    """A duration in the words Docker uses (go-units HumanDuration)."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{s // 3600 // 24 // 365} years"


def _alive(proc_root: str, pid: int) -> bool:
    """Whether a process is there and not a zombie (a container's ends before the engine says so)."""
    try:
        with open(os.path.join(proc_root, str(pid), "stat")) as f:
            state = f.read().rpartition(")")[2].split()[:1]
    except OSError:
        return False
    return state not in (["Z"], ["X"])


def _event_time(event: Mapping[str, Any]) -> float:
    """When the engine says an event happened (wall clock); now if it does not say."""
    nanos = event.get("timeNano")
    if isinstance(nanos, int) and nanos > 0:
        return nanos / 1e9
    seconds = event.get("time")
    return float(seconds) if isinstance(seconds, int | float) and seconds > 0 else time.time()


def _describe(error: BaseException | None) -> str:
    return "unknown error" if error is None else f"{type(error).__name__}: {error}"
