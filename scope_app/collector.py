"""Every probe's report, rebuilt from its full reports and deltas, and their merge.

A probe that stops reporting is forgotten after the window, taking its nodes with it. Each message
changes the merged picture only where it changed the probe's report (`MergedReport`); the changes of
all messages that arrive in one loop iteration are handed on together to `on_merge`, with the keys of
the nodes they changed. Requests never merge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from scope_app.merged import MergedReport
from scope_common.delta import NodeKey, ProbeNodes
from scope_common.report import Report
from scope_common.wire import Envelope

log = logging.getLogger(__name__)

#: More probes than any fleet scope is meant for; beyond this new probes are refused, so a flood of
#: made-up probe ids cannot exhaust memory.
MAX_PROBES = 2_000

#: Told of every new merged picture: the report (updated in place), its version, the changed nodes.
OnMerge = Callable[[Report, int, set[NodeKey]], None]


@dataclass
class ProbeRecord:
    """What the app knows of one probe."""

    probe_id: str
    host_id: str
    version: str
    last_seen: float  # wall clock, for the API
    received_at: float  # monotonic, for expiry
    nodes: ProbeNodes = field(default_factory=ProbeNodes)


class Collector:
    def __init__(
        self,
        on_merge: OnMerge,
        *,
        window: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self._on_merge = on_merge
        self._clock = clock
        self.probes: dict[str, ProbeRecord] = {}
        self.merged = MergedReport()
        self.version = 0
        self.rejected: dict[str, int] = {}
        self._changed: set[NodeKey] = set()
        self._merge_scheduled = False

    def add(self, envelope: Envelope) -> bool:
        """Apply `envelope` to its probe's report. Returns False when it is refused."""
        known = self.probes.get(envelope.probe_id)
        if known is None:
            if len(self.probes) >= MAX_PROBES:
                self._reject("too_many_probes")
                return False
            log.info("probe %s on host %s connected", envelope.probe_id, envelope.host_id)
            known = self.probes[envelope.probe_id] = ProbeRecord(
                envelope.probe_id, envelope.host_id, envelope.version, time.time(), self._clock()
            )
        applied = known.nodes.apply(envelope)
        if applied.refused != "stale":
            # Alive, even when waiting for a full report after a lost delta.
            known.last_seen = time.time()
            known.received_at = self._clock()
        if applied.refused:
            self._reject(applied.refused)
            return False
        changed = self.merged.update(envelope.probe_id, known.nodes.nodes, applied.before)
        if changed:
            self._changed |= changed
            self._schedule_merge()
        return True

    def expire(self) -> int:
        """Forget probes silent for longer than the window. Returns how many were forgotten."""
        deadline = self._clock() - self.window
        gone = [p for p in self.probes.values() if p.received_at < deadline]
        for probe in gone:
            log.info("probe %s on host %s expired", probe.probe_id, probe.host_id)
            del self.probes[probe.probe_id]
            self._changed |= self.merged.remove_probe(probe.probe_id, probe.nodes.nodes.keys())
        if gone:
            self._schedule_merge()
        return len(gone)

    async def expire_forever(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.expire()

    def merge_now(self) -> None:
        """Hand the merged picture and what changed since the last call on."""
        self._merge_scheduled = False
        self.version += 1
        changed, self._changed = self._changed, set()
        self._on_merge(self.merged.report, self.version, changed)

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
