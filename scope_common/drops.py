"""Counting what a receiver drops, and saying so without flooding the log.

Everything from the network is hostile until checked; what fails a check is dropped, counted by a
short stable reason (the counters are what an operator or a test reads) and logged, at most once per
reason every `LOG_EVERY` seconds: a broken sender repeating itself must not bury the log.
"""

from __future__ import annotations

import logging
import time

#: At most one log line per reason in this many seconds.
LOG_EVERY = 10.0


class Drops:
    """Dropped messages by reason (`counts`), each reason logged at most once per LOG_EVERY."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.counts: dict[str, int] = {}
        self._log = log
        self._what = what
        self._logged_at: dict[str, float] = {}

    def add(self, reason: str, detail: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged_at.get(reason, -LOG_EVERY) >= LOG_EVERY:
            self._logged_at[reason] = now
            self._log.warning("%s (%s); %d so far for this reason", self._what, detail, self.counts[reason])
