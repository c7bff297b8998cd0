"""CPU and memory of running containers, read from their cgroup files, with recent history.

The engine's stats API would cost dockerd a stream per container (8.5 % of a core with 50 containers);
the cgroup's accounting files (cgroup.py) give the same numbers the stats API computes for a few file
reads per container per tick.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from scope_common.report import CPU_USAGE, MEMORY_USAGE, Metric
from scope_probe.cgroup import CgroupFiles, CgroupLocator, read_cpu_usage_ns, read_memory
from scope_probe.docker_engine import ContainerRecord
from scope_probe.history import MetricHistory

log = logging.getLogger(__name__)

#: A report requested by a wake soon after a tick reuses the samples of the tick: CPU percentages
#: over a few milliseconds are noise.
MIN_SAMPLE_INTERVAL = 0.5


@dataclass(slots=True)
class _History:
    """Where one running container's cgroup files are, and its last readings (samples: MetricHistory)."""

    pid: int
    files: CgroupFiles | None
    last_cpu: tuple[int, float] | None = None
    last_read: float = float("-inf")
    limit: int | None = None


class ContainerMetrics:
    """CPU and memory metrics of running containers, with the last MAX_SAMPLES samples of each.

    Not thread-safe: the reporter calls `sample` under its own lock.
    """

    def __init__(self, cgroup_root: str, proc_root: str) -> None:
        self._cgroups = CgroupLocator(cgroup_root, proc_root)
        self._host_memory = psutil.virtual_memory().total
        self._histories: dict[str, _History] = {}
        self._samples = MetricHistory()
        self._cgroup_missing_logged = False

    def sample(self, containers: Iterable[ContainerRecord], now: float) -> dict[str, dict[str, Metric]]:
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

    def _read_cgroup(self, c: ContainerRecord, history: _History, now: float, mono: float) -> None:
        history.last_read = mono
        if history.files is None:
            history.files = self._cgroups.find(c.pid, c.id)
            if history.files is None:
                if not _alive(self._cgroups.proc_root, c.pid):
                    return  # it stopped since the mirror saw it running: its cgroup went with it
                if not self._cgroup_missing_logged:
                    self._cgroup_missing_logged = True
                    log.warning(
                        "docker: no cgroup files for container %s (pid %d) under %s: no CPU or memory figures",
                        c.id[:12],
                        c.pid,
                        self._cgroups.cgroup_root,
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
                # Two decimals, as `docker stats` and the process reporter show it: the digits past
                # those are noise, which no compression can take out of a report.
                self._samples.record(c.id, CPU_USAGE, now, round(cpu, 2))
        history.last_cpu = (usage, mono)
        self._samples.record(c.id, MEMORY_USAGE, now, float(memory.usage))
        history.limit = memory.limit


def _alive(proc_root: str, pid: int) -> bool:
    """Whether a process is there and not a zombie (a container's ends before the engine says so)."""
    try:
        with open(os.path.join(proc_root, str(pid), "stat")) as f:
            state = f.read().rpartition(")")[2].split()[:1]
    except OSError:
        return False
    return state not in (["Z"], ["X"])
