"""The Docker reporter: containers and the images they run, as the report's nodes.

Three modules, one concern each: the engine mirror (docker_engine.py) follows the engine's event stream,
the metrics (docker_metrics.py) read running containers' cgroup files, and this one builds nodes from
both. `report()` never waits on the engine: it reads a snapshot of the mirror, samples the cgroups and
builds the nodes. What a node shows (and anything later added to it per node) belongs with
`container_node` and `image_node`, not in the mirror.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Mapping

from scope_common import ids
from scope_common.report import (
    CONTAINER,
    CONTAINER_IMAGE,
    CONTAINER_IPS,
    CONTAINER_IPS_WITH_SCOPES,
    CONTAINER_NETWORKS,
    CONTAINER_PORTS,
    CONTAINER_STATE,
    CONTAINER_STATE_HUMAN,
    HOST,
    HOST_NODE_ID,
    IMAGE_ID,
    IMAGE_NAME,
    IMAGE_SIZE,
    IMAGE_TAG,
    LABEL_PREFIX,
    Metric,
    Node,
    Report,
)
from scope_common.templates import CONTAINER_TEMPLATES
from scope_probe.addresses import AddressScopes
from scope_probe.claims import AddressClaims
from scope_probe.docker_engine import RESYNC_SECONDS, ContainerRecord, EngineMirror, ImageRecord
from scope_probe.docker_metrics import ContainerMetrics
from scope_probe.reporter import ProbeContext, Reporter, Wake


class DockerReporter(Reporter):
    """Containers (running and stopped) and the images they run, with CPU and memory from cgroups.

    Its `mirror` also records in `claims` which container held which address when (see
    claims.py), for the conntrack reporter to attribute connections by the time it saw them.
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
        self.mirror = EngineMirror(
            ctx.docker_url, claims or AddressClaims(), resync_seconds=resync_seconds, supervisor=ctx.supervisor
        )
        self._scopes = scopes or AddressScopes(ctx.host_id)
        self._host_node = ids.host_id(ctx.host_id)

        self._report_lock = threading.Lock()  # guards the metrics and scoped IPs
        self._metrics = ContainerMetrics(ctx.cgroup_root, ctx.proc_root)
        # `scope;ip` of container IPs, valid while the host's bridge networks stay the same.
        self._scoped: dict[str, str] = {}
        self._scoped_bridges: tuple[object, ...] = ()

    def start(self, wake: Wake) -> None:
        """Follow the engine's events; `wake` is called on every change the mirror sees."""
        self.mirror.start(functools.partial(wake, self.name))

    def stop(self) -> None:
        self.mirror.stop()

    def report(self, now: float) -> Report:
        """Nodes from the mirror, stamped `now`: each report is a full snapshot replacing the last one.

        The mirror follows the engine's events, so every fact in it holds at `now` as far as anyone can
        tell; only the human-readable state is derived from `now` itself. There is no uptime counter: it
        would change every report and so make every running container a changed node in every delta
        (scope_common/delta.py); the node carries its start time (CONTAINER_STARTED) instead.
        """
        snapshot = self.mirror.snapshot()
        with self._report_lock:
            metrics = self._metrics.sample(snapshot.containers, now)
            scoped = self._scope_ips(snapshot.containers)
        report = Report()
        report.topology(CONTAINER).templates = CONTAINER_TEMPLATES
        for c in snapshot.containers:
            report.add(container_node(c, self._host_node, now, scoped, metrics.get(c.id)))
        for image_id in {c.image_id for c in snapshot.containers}:
            report.add(image_node(image_id, snapshot.images.get(image_id), self._host_node, now))
        return report

    def _scope_ips(self, containers: Iterable[ContainerRecord]) -> dict[str, str]:
        """`scope;ip` for every container IP, remembered until the bridges change (parsing IPs and
        matching networks for every container every tick adds up)."""
        bridges = self._scopes.bridge_networks()
        known = self._scoped if bridges == self._scoped_bridges else {}
        self._scoped_bridges = bridges
        self._scoped = {
            ip: known.get(ip) or ids.scoped_address(self._scopes.scope(ip), ip) for c in containers for ip in c.ips
        }
        return self._scoped


def container_node(
    c: ContainerRecord,
    host_node: str,
    now: float,
    scoped_ips: Mapping[str, str],
    metrics: Mapping[str, Metric] | None,
) -> Node:
    """The node of one container on host `host_node`, stamped `now`.

    `scoped_ips`: `scope;ip` of (at least) each of its IPs; `metrics`: its CPU and memory, if running.
    """
    latest: dict[str, object] = dict(c.latest)
    latest[HOST_NODE_ID] = host_node
    # The details show the state as `docker ps` words it, or the engine's word when that has none.
    latest[CONTAINER_STATE_HUMAN] = _human_state(c, now) or c.latest.get(CONTAINER_STATE)
    return Node.build(
        ids.container_id(c.id),
        CONTAINER,
        timestamp=now,
        latest=latest,
        sets={
            CONTAINER_IPS: c.ips,
            CONTAINER_IPS_WITH_SCOPES: [scoped_ips[ip] for ip in c.ips],
            CONTAINER_PORTS: c.ports,
            CONTAINER_NETWORKS: c.networks,
        },
        metrics=metrics,
        parents={HOST: [host_node], CONTAINER_IMAGE: [ids.image_id(c.image_id)]},
    )


def image_node(image_id: str, image: ImageRecord | None, host_node: str, now: float) -> Node:
    """The node of an image that containers on host `host_node` run; `image`: what the engine said of
    it, None when it could not (the node then has the id alone)."""
    latest: dict[str, object] = {IMAGE_ID: image_id, HOST_NODE_ID: host_node}
    if image is not None:
        latest.update({IMAGE_NAME: image.name, IMAGE_TAG: image.tag, IMAGE_SIZE: image.size})
        latest.update({LABEL_PREFIX + k: v for k, v in image.labels.items()})
    return Node.build(
        ids.image_id(image_id), CONTAINER_IMAGE, timestamp=now, latest=latest, parents={HOST: [host_node]}
    )


def _human_state(c: ContainerRecord, now: float) -> str:
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
