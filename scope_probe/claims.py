"""Which container held which address, and when: the time-aware owner of a connection's end.

The engine hands a removed container's IP to the next container it starts, often within a second. A
connection seen while the first one held the address is the first one's, even if it is still in the
tables (conntrack keeps ended flows a while) when the second one holds it. So every address is claimed
for an interval [start, end): the Docker reporter records a claim from the container's start (or the
network connect that gave it the address) to its death (or the disconnect), and the conntrack reporter
asks who held an address at the moment it saw the flow, not who holds it now.

Ended claims are kept for RETENTION_SECONDS, longer than any flow that could still refer to them
without having been attributed already; removed containers are remembered as long, so their flows can
be dropped instead of drifting to whoever holds the address next.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

#: How long an ended claim (and a removed container) is remembered.
RETENTION_SECONDS = 600.0


@dataclass(slots=True)
class Claim:
    """One container holding one address from `start` until `end` (wall clock; None while held)."""

    container_id: str
    start: float
    end: float | None = None

    def covers(self, when: float) -> bool:
        return self.start <= when and (self.end is None or when < self.end)


class AddressClaims:
    """Address claims of this host's containers. Written by the Docker reporter, read by conntrack;
    safe to share between threads."""

    def __init__(self, retention: float = RETENTION_SECONDS) -> None:
        self._retention = retention
        self._lock = threading.Lock()
        self._by_addr: dict[str, list[Claim]] = {}  # oldest first
        self._removed: dict[str, float] = {}  # container id -> when it was removed

    def claim(self, addr: str, container_id: str, start: float) -> None:
        """`container_id` holds `addr` from `start` on. A start before the end of the address's previous
        claim is moved to that end: two containers never hold one address at once, and a start time
        that is too early (a container's start time, for an address it got later) must not take over
        the previous holder's connections."""
        with self._lock:
            claims = self._by_addr.setdefault(addr, [])
            for held in claims:
                if held.container_id == container_id and held.end is None:
                    return
            ended = [c.end for c in claims if c.end is not None]
            if ended:
                start = max(start, *ended)
            claims.append(Claim(container_id, start))

    def release(self, addr: str, container_id: str, end: float) -> None:
        """`container_id` no longer holds `addr` from `end` on."""
        with self._lock:
            for held in self._by_addr.get(addr, ()):
                if held.container_id == container_id and held.end is None:
                    held.end = max(end, held.start)
            self._prune(end)

    def remove(self, container_id: str, when: float) -> None:
        """The container is gone: its claims end (if they had not) and its connections go with it."""
        with self._lock:
            self._removed[container_id] = when
            for claims in self._by_addr.values():
                for held in claims:
                    if held.container_id == container_id and held.end is None:
                        held.end = max(when, held.start)
            self._prune(when)

    def holders(self) -> set[str]:
        """Containers that hold an address now."""
        with self._lock:
            return {c.container_id for claims in self._by_addr.values() for c in claims if c.end is None}

    def owner(self, addr: str, when: float) -> Claim | None:
        """The claim on `addr` covering `when`, if any; of overlapping ones (an end learnt late), the
        latest to start."""
        with self._lock:
            found = None
            for held in self._by_addr.get(addr, ()):
                if held.covers(when) and (found is None or held.start >= found.start):
                    found = held
            return found

    def current(self, addr: str) -> Claim | None:
        """The claim on `addr` that has not ended, if any (the latest, should an end have been missed)."""
        with self._lock:
            for held in reversed(self._by_addr.get(addr, ())):
                if held.end is None:
                    return held
            return None

    def holder(self, addr: str) -> str | None:
        """The container holding `addr` now, if any."""
        held = self.current(addr)
        return held.container_id if held is not None else None

    def addresses(self) -> frozenset[str]:
        """Every address with a claim: the only ones worth asking `owner` about."""
        with self._lock:
            return frozenset(self._by_addr)

    def removed(self, container_id: str) -> bool:
        with self._lock:
            return container_id in self._removed

    def _prune(self, now: float) -> None:
        cutoff = now - self._retention
        for addr in list(self._by_addr):
            kept = [c for c in self._by_addr[addr] if c.end is None or c.end >= cutoff]
            if kept:
                self._by_addr[addr] = kept
            else:
                del self._by_addr[addr]
        for container_id in [c for c, when in self._removed.items() if when < cutoff]:
            del self._removed[container_id]
