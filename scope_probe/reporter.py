"""The interface every data source of the probe implements.

One reporter per source (host, processes, endpoints, Docker, conntrack), as glances has one plugin
per source: each can fail, be missing or be slow on its own without taking the others down. The probe
asks each for a report every spy tick and merges them; a reporter that learns of a change between
ticks (a Docker event) calls `wake` so that a report goes out at once.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from scope_common.report import Report
from scope_common.supervise import Supervisor

#: Called by a reporter with its own name to ask for a report to be published now.
Wake = Callable[[str], None]


@dataclass(frozen=True)
class ProbeContext:
    """What every reporter needs to know about where it runs."""

    host_id: str
    probe_id: str
    #: Where the host's /proc is: `/proc` normally, also in a `--pid=host` container.
    proc_root: str = "/proc"
    #: Where the host's cgroup file system is mounted.
    cgroup_root: str = "/sys/fs/cgroup"
    docker_url: str = field(default="unix:///var/run/docker.sock")
    #: Keeps every background thread of the probe running, and counts their restarts for /metrics.
    supervisor: Supervisor = field(
        default_factory=lambda: Supervisor(logging.getLogger("scope.probe")), compare=False, repr=False
    )


class Reporter(abc.ABC):
    """A source of one part of the report."""

    #: Short stable name, used in logs and counters.
    name: str = ""
    #: True for reporters that sample metric history and so want every spy tick; the others (processes,
    #: connections) are only gathered right before a report is published, when they are used.
    samples_every_tick: bool = False
    #: True for reporters whose wakes are published at once, within the probe's wake gap or not: they
    #: limit their own wakes, and what they report is awaited on the map (a new connection's edge).
    wakes_urgently: bool = False
    #: True for reporters whose nodes go when a clock says so (a connection's linger ran out), not on an
    #: event: a publish on a wake keeps such nodes until the next tick, when the reporters that report
    #: the same endpoints (conntrack's flows linger as long) let them go too, in one removal.
    removals_follow_clock: bool = False

    def start(self, wake: Wake) -> None:  # noqa: B027 - most reporters have nothing to start
        """Start background work (event streams). `wake(self.name)` requests an immediate report."""

    def stop(self) -> None:  # noqa: B027 - most reporters have nothing to stop
        """Stop background work; called once at exit."""

    @abc.abstractmethod
    def report(self, now: float) -> Report:
        """What this source knows now. Must not block for long: it runs on every spy tick."""
