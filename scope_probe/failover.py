"""Publishing to one app of several (the replicas of one service): which one, and when to move on.

Replicas share what each ingests (scope_app.replicas), so a probe reports to one of them: sending every
report to all of them would have each ingest it and write it to the shared store again. The probe's
control channel says whether the chosen app is alive: apps heartbeat every rpc.HEARTBEAT_INTERVAL, and
one silent for rpc.PEER_TIMEOUT is gone (killed, cut off, its host down). The probe then moves to the
next address it knows; the new app subscribes, which brings it a full report at the next publish, so
the probe's nodes are whole there within seconds, well inside the window after which the apps would
drop them.

An app that never answers once chosen (down, or refusing this probe: a wrong token or key) is left after
`patience`. After a whole round of addresses without an answer, patience doubles up to `max_patience`,
so a probe that no app accepts tries them again with a back-off rather than every few seconds.

Without a control channel (--no-controls) there are no heartbeats: an app's subscription to the
reports is the only sign of life, so such a probe leaves an app that never subscribed or is no longer
found, but not one that dies later (ZeroMQ reconnects to it if it comes back).

The main loop chooses (`choose`), the control channel's thread reports (`answered`, `silent`): the state
is behind a lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from scope_common import rpc

log = logging.getLogger(__name__)

#: How long a newly chosen app has to answer: the channel says hello quickly at first, so an app that is
#: up answers within a heartbeat or two; twice the peer timeout leaves room for a slow handshake.
PATIENCE = 2 * rpc.PEER_TIMEOUT
#: Longest patience, after rounds of apps that never answer (the service's back-off ceiling).
MAX_PATIENCE = 60.0


class Failover:
    """Which one of the addresses found the probe publishes to now."""

    def __init__(
        self,
        *,
        patience: float = PATIENCE,
        max_patience: float = MAX_PATIENCE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._first_patience = patience
        self._max_patience = max_patience
        self._clock = clock
        self._lock = threading.Lock()
        self._candidates: list[str] = []
        #: The app published to now, when it was chosen, and whether it has answered since.
        self._active: str | None = None
        self._chosen_at = 0.0
        self._answered = False
        #: Whether the active app answered and then stopped: it is left at the next `choose`.
        self._silent = False
        self._patience = patience
        #: Apps left in a row without ever answering: a whole round of them doubles the patience.
        self._unanswered = 0
        #: Times the probe moved to another app.
        self.moves = 0

    @property
    def active(self) -> str | None:
        with self._lock:
            return self._active

    def choose(self, found: set[str]) -> set[str]:
        """The app to publish to, of the addresses `found` now: the same as before while it is found and
        alive (or still has time to answer), else the next one. Empty when nothing is found."""
        with self._lock:
            self._candidates = sorted(found)
            if self._active not in found:
                self._move("it is no longer found" if self._active is not None else "")
            elif self._silent:
                self._move("it stopped answering")
            elif not self._answered and self._clock() - self._chosen_at > self._patience:
                self._unanswered += 1
                self._move(f"it did not answer within {self._patience:.0f} s")
            return {self._active} if self._active is not None else set()

    def answered(self, address: str) -> None:
        """The app at `address` (a bus address) answered: it is alive."""
        with self._lock:
            if address == self._active and not self._answered:
                self._answered = True
                self._unanswered = 0
                self._patience = self._first_patience

    def silent(self, address: str) -> None:
        """The app at `address` stopped answering: move on at the next `choose`."""
        with self._lock:
            if address == self._active and self._answered:
                self._silent = True  # `choose` moves on

    def _move(self, why: str) -> None:
        """Choose the address after the active one (in sorted order, round and round). Holds the lock."""
        previous = self._active
        if not self._candidates:
            self._active = None
            return
        if previous is None or previous not in self._candidates:
            following = [c for c in self._candidates if previous is None or c > previous]
            self._active = following[0] if following else self._candidates[0]
        else:
            self._active = self._candidates[(self._candidates.index(previous) + 1) % len(self._candidates)]
        if self._unanswered >= len(self._candidates):
            # A whole round and nobody answered: back off before the next round.
            self._unanswered = 0
            self._patience = min(self._max_patience, self._patience * 2)
        self._chosen_at = self._clock()
        self._answered = self._silent = False
        if previous is not None and self._active != previous:
            self.moves += 1
            log.warning("leaving the app at %s (%s): publishing to %s now", previous, why, self._active)
        elif previous is None:
            log.info("publishing to the app at %s (one of %d found)", self._active, len(self._candidates))
