"""Every probe's report, rebuilt from its full reports and deltas, and their merge.

A probe that stops reporting is forgotten after the window, taking its nodes with it. Each message
changes the merged picture only where it changed the probe's report (`MergedReport`); the changes of
all messages that arrive in one loop iteration are handed on together to `on_merge`, with the keys of
the nodes they changed. Requests never merge.

Probe ids are public (`/api/probes`), so a message's id alone proves nothing. Each message comes with
its source (the address of the connection it arrived on): a probe id belongs to the first source it
is seen from until the probe expires, and messages for it from anywhere else are dropped
(`foreign_probe_id`), so one sender cannot erase or replace another probe's data. Each source may
hold only so many probes and nodes, so a flood of made-up ids or nodes from one address cannot lock
others out, and all probes together hold at most `max_nodes` nodes: the app's memory has a bound.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from scope_app.merged import MergedReport
from scope_common import wire
from scope_common.delta import NodeKey, ProbeNodes
from scope_common.report import Report
from scope_common.supervise import RateLimitedLog
from scope_common.wire import Envelope

log = logging.getLogger(__name__)

#: More probes than any fleet scope is meant for; beyond this new probes are refused, so a flood of
#: made-up probe ids cannot exhaust memory.
MAX_PROBES = 2_000
#: Probes one source address may hold. A host runs one probe, two while a restarted probe's old id
#: has not expired yet; a few more for hosts behind one NAT address.
MAX_PROBES_PER_SOURCE = 16
#: Nodes all probes together may hold: the bound on the memory stored reports take. Measured: 1.7 KB a
#: node stored, 3.5 KB with the views' graph and caches, so about 1.8 GB for the app at the limit. A
#: fleet of 100 hosts of 500 processes and 2,000 connections each is 255,000 nodes.
MAX_NODES = 500_000
#: Nodes the probes of one source address may hold: two of the largest report the wire allows.
MAX_NODES_PER_SOURCE = 2 * wire.MAX_NODES

#: Reasons a message is not used that happen in a healthy fleet (a copy, a lost message): counted, not logged.
ROUTINE = frozenset({"stale", "missed_delta"})

#: Told of every new merged picture: the report (updated in place), its version, the changed nodes.
OnMerge = Callable[[Report, int, set[NodeKey]], None]

#: Young collections between two full ones of Python's cyclic garbage collector (its default: 10).
FULL_COLLECTION_EVERY = 1_000


def collect_fully_less_often() -> None:
    """Make the cyclic garbage collector go over the whole heap seldom (the app calls this at start).

    The fleet's reports are millions of objects, and every report replaces many of them: at the default
    thresholds the collector went over all of them every few seconds, each time for seconds of CPU
    (up to 3.2 s at 1,000 hosts in bench.fleet_cpu, stopping everything else meanwhile), and got no
    memory back: reports hold no cycles, and are freed by reference counting as they are replaced. After
    1,000 young collections instead of 10: 3 full ones in that run instead of 39, ingest 9 % less CPU,
    the same memory. Young objects are collected as before, so short-lived cycles (a request's) still go
    at once; long-lived ones wait longer."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


@dataclass
class ProbeRecord:
    """What the app knows of one probe."""

    probe_id: str
    host_id: str
    version: str
    last_seen: float  # wall clock, for the API
    received_at: float  # monotonic, for expiry
    #: The address its messages come from; messages for this probe from any other are dropped.
    source: str = ""
    nodes: ProbeNodes = field(default_factory=ProbeNodes)


@dataclass
class Limits:
    """How much the collector keeps (see the module constants for why these figures)."""

    max_probes: int = MAX_PROBES
    max_probes_per_source: int = MAX_PROBES_PER_SOURCE
    max_nodes: int = MAX_NODES
    max_nodes_per_source: int = MAX_NODES_PER_SOURCE


@dataclass
class Source:
    """What one source address holds."""

    probes: int = 0
    nodes: int = 0


class Collector:
    def __init__(
        self,
        on_merge: OnMerge,
        *,
        window: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        limits: Limits | None = None,
    ) -> None:
        self.window = window
        self.limits = limits or Limits()
        self._on_merge = on_merge
        self._clock = clock
        self.probes: dict[str, ProbeRecord] = {}
        self.sources: dict[str, Source] = {}
        #: Nodes held by all probes together.
        self.node_count = 0
        #: Messages applied to a probe's report.
        self.applied = 0
        self.merged = MergedReport()
        self.version = 0
        self.rejected: dict[str, int] = {}
        self._changed: set[NodeKey] = set()
        self._merge_scheduled: asyncio.Handle | None = None
        self._log = RateLimitedLog(log)
        #: Told the id of a probe whose delta could not be applied (one before it was lost), so that the
        #: probe can be asked for a full report at once (ControlRouter.ask_full_report).
        self.on_missed_delta: Callable[[str], object] | None = None

    def add(self, envelope: Envelope, source: str = "") -> bool:
        """Apply `envelope`, which arrived from `source`, to its probe's report. Returns False when it
        is refused."""
        known = self.probes.get(envelope.probe_id)
        if known is None:
            known = self._new_probe(envelope, source)
            if known is None:
                return False
        elif known.source != source:
            self._reject("foreign_probe_id", envelope.probe_id, source)
            return False
        held = self.sources[source]
        # What the probe will hold at most once the message is applied: a full report replaces its
        # nodes, a delta adds at most its own.
        incoming = envelope.report.node_count()
        after = incoming if envelope.full else len(known.nodes.nodes) + incoming
        growth = after - len(known.nodes.nodes)
        if growth > 0 and (
            held.nodes + growth > self.limits.max_nodes_per_source or self.node_count + growth > self.limits.max_nodes
        ):
            known.received_at = self._clock()  # alive, if over its share
            self._reject("over_node_budget", envelope.probe_id, source)
            return False
        before = len(known.nodes.nodes)
        applied = known.nodes.apply(envelope)
        if applied.refused != "stale":
            # Alive, even when waiting for a full report after a lost delta.
            known.last_seen = time.time()
            known.received_at = self._clock()
        if applied.refused:
            self._reject(applied.refused)
            if applied.refused == "missed_delta" and self.on_missed_delta is not None:
                self.on_missed_delta(envelope.probe_id)
            return False
        self.applied += 1
        grown = len(known.nodes.nodes) - before
        held.nodes += grown
        self.node_count += grown
        changed = self.merged.update(envelope.probe_id, known.nodes.nodes, applied.before)
        if applied.templates_changed and self.merged.update_templates(envelope.probe_id, known.nodes.templates):
            self._schedule_merge()  # the views see the templates change by their merged report's version
        if changed:
            self._changed |= changed
            self._schedule_merge()
        return True

    def _new_probe(self, envelope: Envelope, source: str) -> ProbeRecord | None:
        held = self.sources.get(source)
        if held is not None and held.probes >= self.limits.max_probes_per_source:
            self._reject("too_many_probes_from_source", envelope.probe_id, source)
            return None
        if len(self.probes) >= self.limits.max_probes:
            self._reject("too_many_probes", envelope.probe_id, source)
            return None
        if held is None:
            held = self.sources[source] = Source()
        held.probes += 1
        log.info("probe %s on host %s connected from %s", envelope.probe_id, envelope.host_id, source or "?")
        probe = self.probes[envelope.probe_id] = ProbeRecord(
            envelope.probe_id, envelope.host_id, envelope.version, time.time(), self._clock(), source
        )
        return probe

    def expire(self) -> int:
        """Forget probes silent for longer than the window. Returns how many were forgotten."""
        deadline = self._clock() - self.window
        gone = [p for p in self.probes.values() if p.received_at < deadline]
        for probe in gone:
            log.info("probe %s on host %s expired", probe.probe_id, probe.host_id)
            del self.probes[probe.probe_id]
            held = self.sources[probe.source]
            held.probes -= 1
            held.nodes -= len(probe.nodes.nodes)
            self.node_count -= len(probe.nodes.nodes)
            if not held.probes:
                del self.sources[probe.source]
            self._changed |= self.merged.remove_probe(probe.probe_id, probe.nodes.nodes.keys())
        if gone:
            self._schedule_merge()
        return len(gone)

    async def expire_forever(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.expire()
            self.flush()

    def merge_now(self) -> None:
        """Hand the merged picture and what changed since the last call on."""
        self._merge_scheduled = None
        self.version += 1
        changed, self._changed = self._changed, set()
        self._on_merge(self.merged.report, self.version, changed)

    def flush(self) -> None:
        """Merge now if a merge is waiting. The merged report changes in place while the views' graph
        follows only at the merge: a caller about to give the loop to others (an `await`) flushes
        first, so that no request ever renders a half-followed report."""
        if self._merge_scheduled is not None:
            self._merge_scheduled.cancel()
            self.merge_now()

    def _schedule_merge(self) -> None:
        if self._merge_scheduled is not None:
            return
        try:
            self._merge_scheduled = asyncio.get_running_loop().call_soon(self.merge_now)
        except RuntimeError:  # no loop: called from plain code (tests, benchmarks)
            self.merge_now()

    def _reject(self, reason: str, probe_id: str = "", source: str = "") -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if reason not in ROUTINE:
            self._log.log(
                reason,
                logging.WARNING,
                "dropped a report of probe %s from %s (%s); %d so far for this reason",
                probe_id[:40],
                source or "?",
                reason,
                self.rejected[reason],
            )
