"""Counting what a receiver drops, and saying so without flooding the log.

Everything from the network is hostile until checked; what fails a check is dropped, counted by a
short stable reason (the counters are what an operator or a test reads) and logged, at most once per
reason every `supervise.LOG_EVERY` seconds: a broken sender repeating itself must not bury the log.
"""

from __future__ import annotations

import logging

from scope_common.supervise import RateLimitedLog


class Drops:
    """Dropped messages by reason (`counts`), each reason logged at most once per interval."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.counts: dict[str, int] = {}
        self._log = RateLimitedLog(log)
        self._what = what

    def add(self, reason: str, detail: str, level: int = logging.WARNING) -> None:
        """Count a drop; `level` lower than WARNING for drops that are the normal course of things."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self._log.log(reason, level, "%s (%s); %d so far for this reason", self._what, detail, self.counts[reason])
