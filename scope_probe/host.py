"""The host itself: facts, load, CPU and memory, and the networks it is on."""

from __future__ import annotations

import os
import platform
import time

import psutil

from scope_common import ids
from scope_common.report import (
    CPU_USAGE,
    HOST,
    HOST_NODE_ID,
    HOSTNAME,
    KERNEL_VERSION,
    LOAD1,
    LOCAL_NETWORKS,
    MEMORY_USAGE,
    OS,
    UPTIME,
    Node,
    Report,
)
from scope_common.templates import HOST_TEMPLATES
from scope_probe.addresses import AddressScopes
from scope_probe.history import MetricHistory
from scope_probe.reporter import ProbeContext, Reporter


class HostReporter(Reporter):
    name = "host"
    samples_every_tick = True

    def __init__(self, ctx: ProbeContext, addresses: AddressScopes) -> None:
        self._ctx = ctx
        self._addresses = addresses
        self._node_id = ids.host_id(ctx.host_id)
        self._history = MetricHistory()
        # The first cpu_percent() call only primes psutil's counters.
        psutil.cpu_percent(interval=None)

    def report(self, now: float) -> Report:
        memory = psutil.virtual_memory()
        cores = os.cpu_count() or 1
        metrics = {
            CPU_USAGE: self._history.add(self._node_id, CPU_USAGE, now, psutil.cpu_percent(interval=None), 100.0),
            MEMORY_USAGE: self._history.add(
                self._node_id, MEMORY_USAGE, now, float(memory.total - memory.available), float(memory.total)
            ),
            LOAD1: self._history.add(self._node_id, LOAD1, now, os.getloadavg()[0], float(cores)),
        }
        report = Report()
        report.topology(HOST).templates = HOST_TEMPLATES
        report.add(
            Node.build(
                self._node_id,
                "host",
                timestamp=now,
                latest={
                    HOSTNAME: self._ctx.host_id,
                    HOST_NODE_ID: self._node_id,
                    OS: platform.system().lower(),
                    KERNEL_VERSION: platform.release(),
                    UPTIME: int(time.time() - psutil.boot_time()),
                    "cpu_count": cores,
                },
                sets={LOCAL_NETWORKS: [str(i) for i in self._addresses.local_interfaces()]},
                metrics=metrics,
            )
        )
        return report
