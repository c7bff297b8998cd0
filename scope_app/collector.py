"""The latest report of every probe, and their merge.

Reports are full snapshots, so only the newest per probe matters. A probe that stops reporting is
forgotten after the window, taking its nodes with it. Merging happens once per arrival (several
arrivals in one loop iteration share one merge) and the result is handed to `on_merge`; requests
never merge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from scope_common.delta import ProbeNodes
from scope_common.report import Report, merge_reports
from scope_common.wire import Envelope

log = logging.getLogger(__name__)

#: More probes than any fleet scope is meant for; beyond this new probes are refused, so a flood of
#: made-up probe ids cannot exhaust memory.
MAX_PROBES = 2_000


@dataclass
class ProbeRecord:
    """What the app knows of one probe."""

    probe_id: str
    host_id: str
    version: str
    nodes: ProbeNodes
    report: Report
    last_seen: float  # wall clock, for the API
    received_at: float  # monotonic, for expiry


class Collector:
    def __init__(
        self,
        on_merge: Callable[[Report, int], None],
        *,
        window: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self._on_merge = on_merge
        self._clock = clock
        self.probes: dict[str, ProbeRecord] = {}
        self.version = 0
        self.rejected: dict[str, int] = {}
        self._merge_scheduled = False

    def add(self, envelope: Envelope) -> bool:
        """Keep `envelope` as its probe's latest report. Returns False when it is refused."""
        known = self.probes.get(envelope.probe_id)
        if known is None and len(self.probes) >= MAX_PROBES:
            self._reject("too_many_probes")
            return False
        if known is not None and envelope.seq <= known.nodes.seq:
            # ZeroMQ keeps order per connection, but a probe connected twice (two addresses of one
            # app) delivers each report twice: the older copy must not replace the newer.
            self._reject("stale")
            return False
        if known is None:
            log.info("probe %s on host %s connected", envelope.probe_id, envelope.host_id)
            known = ProbeRecord(envelope.probe_id, envelope.host_id, envelope.version, ProbeNodes(), Report(), 0, 0)
            self.probes[envelope.probe_id] = known
        known.last_seen = time.time()
        known.received_at = self._clock()
        applied = known.nodes.apply(envelope)
        if not applied.used:
            self._reject("missed_delta")
            return False
        if applied.before:
            known.report = known.nodes.report()
            self._schedule_merge()
        return True

    def expire(self) -> int:
        """Forget probes silent for longer than the window. Returns how many were forgotten."""
        deadline = self._clock() - self.window
        gone = [p for p in self.probes.values() if p.received_at < deadline]
        for probe in gone:
            log.info("probe %s on host %s expired", probe.probe_id, probe.host_id)
            del self.probes[probe.probe_id]
        if gone:
            self._schedule_merge()
        return len(gone)

    async def expire_forever(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.expire()

    def merge_now(self) -> None:
        """Merge the latest reports and hand the result on."""
        self._merge_scheduled = False
        self.version += 1
        self._on_merge(merge_reports(p.report for p in self.probes.values()), self.version)

    def _schedule_merge(self) -> None:
        if self._merge_scheduled:
            return
        self._merge_scheduled = True
        try:
            asyncio.get_running_loop().call_soon(self.merge_now)
        except RuntimeError:  # no loop: called from plain code (tests, benchmarks)
            self.merge_now()

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
